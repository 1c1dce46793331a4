import math

import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from pinn_apts import APTS, APTSPINN, PINNDataModule
from pinn_apts.core.apts import Objective
from pinn_apts.core.optim import trust_region_step
from pinn_apts.core.trust_region import TrustRegionConfig
from pinn_apts.pde.loss import pinn_loss
from pinn_apts.pde.model import MLP
from pinn_apts.pde.objective import PINNObjective
from pinn_apts.pde.problems import get_problem
from pinn_apts.pde.sampling import CollocationSampler, Curriculum

from .conftest import fast_trainer

SMALL = Curriculum((200, 60, 20), (200, 30, 30), 0.3)


def pinn_objective(problem="burgers", num_parts=4, iteration=0, seed=0):
    torch.set_default_dtype(torch.float64)
    problem = get_problem(problem)
    batch = CollocationSampler(problem, total_iterations=20, curriculum=SMALL, seed=seed).batch(iteration)
    net = MLP(seed=seed)
    return net, PINNObjective(net, problem, batch, num_parts)


@pytest.mark.parametrize("num_parts, combine", [(1, "average"), (4, "average"), (8, "average"), (4, "sum")])
def test_invariants_over_iterations(num_parts, combine):
    net, objective = pinn_objective(num_parts=num_parts)
    opt = APTS(net.parameters(), num_subdomains=num_parts, radius=0.5, combine=combine)
    for _ in range(6):
        radius_k = opt.radius
        theta_k = torch.nn.utils.parameters_to_vector(net.parameters()).detach().clone()
        opt.step(objective)
        info = opt.last_step
        assert info.max_replica_norm <= radius_k * (1 + 1e-9)  # |s_k^d| <= Delta_k
        assert 1e-10 <= info.radius <= 10.0 and 1e-10 <= info.stage1_radius <= 10.0
        assert info.new_loss <= info.loss  # Stage II never ends above L(theta_k)
        # Stage II starts where Stage I left it: theta_k + s_bar if accepted, else theta_k
        assert info.stage2.loss == (info.stage1_loss if info.stage1_accepted else info.loss)
        assert info.stage1_accepted == (info.stage1_loss < info.loss)
        moved = torch.nn.utils.parameters_to_vector(net.parameters()).detach() - theta_k
        bound = info.stage2.step_norm + (info.correction_norm if info.stage1_accepted else 0.0)
        assert float(moved.norm()) <= bound * (1 + 1e-9)  # theta_{k+1} = theta_k (+ s_bar) + s_k
        assert float(objective.full().detach()) == pytest.approx(info.new_loss, rel=1e-12)
    assert opt.totals.iterations == 6 and 0 <= opt.totals.stage1_accepted <= 6


def test_rejected_stage1_leaves_theta_unchanged():
    x = torch.tensor([1.0, 1.0], dtype=torch.float64, requires_grad=True)
    closure = lambda: x.square().sum()  # full loss: minimum at 0
    local = lambda d: (x - 5.0).square().sum()  # every replica is pulled away from it
    opt = APTS([x], num_subdomains=2, local_steps=2, radius=1.0, damping=0.0)
    start = x.detach().clone()
    opt.step(Objective(closure, local))
    info = opt.last_step
    assert not info.stage1_accepted and info.stage1_loss > info.loss
    assert info.stage2.loss == info.loss == float(start.square().sum())
    # the final point is exactly a global TR step from theta_k with the Stage I radius
    y = start.clone().requires_grad_(True)
    reference, _ = trust_region_step(lambda: y.square().sum(), [y], info.stage1_radius, TrustRegionConfig(damping=0.0))
    assert torch.equal(x.detach(), y.detach()) and reference.new_loss == info.new_loss


def test_non_finite_trial_step_is_rejected():
    x = torch.tensor([1.0, 1.0], dtype=torch.float64, requires_grad=True)

    def closure():  # NaN beyond x0 = 1.5, where the replicas go
        value = x.square().sum()
        return value * math.nan if float(x[0].detach()) > 1.5 else value

    local = lambda d: (x - 3.0).square().sum()
    opt = APTS([x], num_subdomains=2, local_steps=1, radius=2.0, damping=0.0)
    opt.step(Objective(closure, local))
    info = opt.last_step
    assert not info.stage1_accepted and math.isnan(info.stage1_loss)
    assert torch.isfinite(x).all() and info.new_loss < info.loss


def test_one_replica_one_step_is_one_trust_region_step():
    net, objective = pinn_objective(num_parts=1)
    twin = MLP(seed=0)
    twin.load_state_dict(net.state_dict())
    opt = APTS(net.parameters(), num_subdomains=1, local_steps=1, radius=0.3)
    # Stage I with D = J = 1 on L^1 = L: one TR step of radius Delta on the full loss
    problem = get_problem("burgers")
    batch = CollocationSampler(problem, total_iterations=20, curriculum=SMALL, seed=0).batch(0)
    reference, _ = trust_region_step(lambda: pinn_loss(twin, problem, batch).total, list(twin.parameters()), 0.3,
                                  TrustRegionConfig(), max_radius=0.3, retry=False)
    opt.step(objective)
    info = opt.last_step
    assert reference.accepted
    assert info.stage1_loss == pytest.approx(reference.new_loss, rel=1e-12)  # the same sums, in another order
    assert info.correction_norm == pytest.approx(reference.step_norm, rel=1e-12)
    assert info.local_steps == 1 and info.local_cg_iterations == reference.cg_iterations


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(num_subdomains=0), "num_subdomains must be an integer >= 1"),
        (dict(local_steps=0), "local_steps must be an integer >= 1"),
        (dict(combine="max"), "combine must be 'average' or 'sum'"),
        (dict(min_radius=1.0, max_radius=0.1), "max_radius must be >= min_radius"),
        (dict(radius=20.0), r"radius must lie in \[min_radius, max_radius\]"),
        (dict(eta1=0.5, eta2=0.5), r"eta2 must lie in \(eta1, 1\)"),
        (dict(shrink=2.0), r"shrink must lie in \(0, 1\)"),
        (dict(grow=0.9), "grow must be > 1"),
    ],
)
def test_bad_input(kwargs, message):
    x = torch.zeros(2, requires_grad=True)
    with pytest.raises(ValueError, match=message):
        APTS([x], **kwargs)
    with pytest.raises(ValueError, match=message):
        APTSPINN(problem="heat", **kwargs)


def test_more_replicas_than_points_is_a_clear_error():
    module = APTSPINN(problem="heat", num_subdomains=64)
    data = PINNDataModule("heat", early_sizes=(32, 20, 10), late_sizes=(32, 20, 10))
    with pytest.raises(ValueError, match=r"num_parts \(D\) must not exceed the number of interior points, got D=64 > 32"):
        fast_trainer(2).fit(module, data)


@pytest.mark.parametrize("problem", ["heat", "burgers", "laplace"])
def test_short_run_lowers_error(problem):
    module = APTSPINN(problem=problem)
    before = float(module.solution_errors()["error/rel_l2"])
    trainer = fast_trainer(6)
    trainer.fit(module, PINNDataModule(problem, early_sizes=(400, 200, 40), late_sizes=(400, 100, 100)))
    assert trainer.global_step == 6
    assert float(module.solution_errors()["error/rel_l2"]) < 0.7 * before
    assert module.optimizers().optimizer.totals.iterations == 6


def _data():
    return PINNDataModule("burgers", seed=2, total_iterations=12, early_sizes=(200, 60, 20), late_sizes=(200, 30, 30))


@pytest.mark.slow
def test_same_seed_twice_and_resume_equal_uninterrupted(tmp_path):
    runs = []
    for _ in range(2):
        module = APTSPINN(problem="burgers", seed=2)
        fast_trainer(12).fit(module, _data())
        runs.append(module)
    for a, b in zip(runs[0].parameters(), runs[1].parameters()):
        assert torch.equal(a, b)

    first = APTSPINN(problem="burgers", seed=2)
    ckpt = ModelCheckpoint(dirpath=tmp_path, save_last=True, save_top_k=0)
    fast_trainer(5, tmp_path, enable_checkpointing=True, callbacks=[ckpt]).fit(first, _data())
    resumed = APTSPINN(problem="burgers", seed=2)
    trainer = fast_trainer(12, tmp_path)
    trainer.fit(resumed, _data(), ckpt_path=str(tmp_path / "last.ckpt"))
    assert trainer.global_step == 12
    for a, b in zip(runs[0].parameters(), resumed.parameters()):
        assert torch.equal(a, b)
    straight = runs[0].optimizers().optimizer.state["apts"]
    again = resumed.optimizers().optimizer.state["apts"]
    assert {k: v for k, v in straight.items() if k != "last"} == {k: v for k, v in again.items() if k != "last"}
    assert straight["last"]["new_loss"] == again["last"]["new_loss"]


def test_non_finite_local_loss_at_current_point_is_an_error_and_theta_is_restored():
    x = torch.tensor([1.0, 1.0], dtype=torch.float64, requires_grad=True)
    calls = {"n": 0}

    def local(d):  # replica 1's objective is undefined once replica 0 has moved
        calls["n"] += 1
        value = (x - 3.0).square().sum()
        return value * math.nan if d == 1 else value

    opt = APTS([x], num_subdomains=2, local_steps=2, radius=1.0, damping=0.0)
    with pytest.raises(FloatingPointError, match="Stage I, replica 1, local step 1: non-finite loss nan"):
        opt.step(Objective(lambda: x.square().sum(), local))
    assert torch.equal(x.detach(), torch.tensor([1.0, 1.0], dtype=torch.float64))


EXACT = dict(damping=0.0, curvature="gauss_newton", subproblem="exact", local_curvature="gauss_newton",
             local_subproblem="exact")


@pytest.mark.parametrize("problem, num_parts, coherent, exact", [
    ("burgers", 4, False, False), ("heat", 3, False, False), ("laplace", 8, False, False), ("burgers", 4, True, False),
    ("heat", 3, False, True), ("burgers", 8, False, True),  # least-squares steps in both stages
])
def test_batched_replicas_equal_sequential(problem, num_parts, coherent, exact):
    runs = {}
    for replicas in ("sequential", "batched", "auto"):
        torch.set_default_dtype(torch.float64)
        prob = get_problem(problem)
        sampler = CollocationSampler(prob, total_iterations=20, curriculum=SMALL, seed=1)
        net = MLP(seed=1)
        opt = APTS(net.parameters(), num_subdomains=num_parts, radius=0.5, replicas=replicas, coherent=coherent,
                   **(EXACT if exact else {}))
        infos = []
        for k in range(4):
            opt.step(PINNObjective(net, prob, sampler.batch(k), num_parts))
            infos.append(opt.last_step)
        runs[replicas] = (torch.nn.utils.parameters_to_vector(net.parameters()).detach(), infos)
    (theta_s, infos_s), (theta_b, infos_b) = runs["sequential"], runs["batched"]
    assert torch.equal(runs["auto"][0], theta_s)  # on a CPU "auto" runs the replicas one after another
    assert (theta_s - theta_b).abs().max() <= 1e-10
    for a, b in zip(infos_s, infos_b):
        assert a.stage1_accepted == b.stage1_accepted and a.local_accepted == b.local_accepted
        assert a.local_cg_iterations == b.local_cg_iterations and a.local_reasons == b.local_reasons
        assert a.radius == pytest.approx(b.radius, rel=1e-9)


def test_batched_replicas_reject_local_retry():
    with pytest.raises(ValueError, match="local_retry must be False with replicas='batched'"):
        APTS([torch.zeros(2, requires_grad=True)], replicas="batched", local_retry=True)
    with pytest.raises(ValueError, match="replicas must be 'sequential', 'batched' or 'auto'"):
        APTSPINN(problem="heat", replicas="vmap")


def test_auto_replicas_batch_on_a_gpu_with_two_replicas_or_more():
    from pinn_apts.core.apts import resolve_replicas

    cpu, gpu = torch.device("cpu"), torch.device("cuda", 0)
    assert resolve_replicas("auto", gpu, 4) == "batched"
    assert resolve_replicas("auto", gpu, 1) == "sequential"  # one replica: batching only costs
    assert resolve_replicas("auto", gpu, 4, local_retry=True) == "sequential"
    assert resolve_replicas("auto", cpu, 8) == "sequential"
    assert resolve_replicas("batched", cpu, 1) == "batched" and resolve_replicas("sequential", gpu, 8) == "sequential"
    assert APTSPINN(problem="heat").optimizer_kwargs["replicas"] == "auto"


def test_stage1_radius_rules():
    from pinn_apts.core.apts import stage1_radius_update

    config = TrustRegionConfig()
    # "ratio": the trust-region rule on rho_I, whatever the acceptance test said
    assert stage1_radius_update("ratio", 1.0, True, 0.05, True, config) == 0.5
    assert stage1_radius_update("ratio", 1.0, True, 0.7, True, config) == 2.0
    assert stage1_radius_update("ratio", 1.0, True, 0.7, False, config) == 1.0
    # "decrease": shrink on rejection only
    assert stage1_radius_update("decrease", 1.0, True, 0.05, True, config) == 1.0
    assert stage1_radius_update("decrease", 1.0, False, -math.inf, True, config) == 0.5
    assert stage1_radius_update("decrease", 1.5e-10, False, -1.0, True, config) == 1e-10
    # "own" (Delta_I): shrink on rejection, grow on an acceptance at the boundary
    assert stage1_radius_update("own", 1.0, False, 0.9, True, config) == 0.5
    assert stage1_radius_update("own", 1.0, True, 0.01, True, config) == 2.0
    assert stage1_radius_update("own", 1.0, True, 0.9, False, config) == 1.0
    assert stage1_radius_update("own", 8.0, True, 0.9, True, config) == 10.0
    # "keep": Stage I leaves it alone
    assert stage1_radius_update("keep", 1.0, False, -1.0, True, config) == 1.0
    with pytest.raises(ValueError, match="stage1_radius must be 'ratio', 'decrease', 'keep' or 'own'"):
        APTSPINN(problem="heat", stage1_radius="grow")


@pytest.mark.parametrize("rule", ["decrease", "keep"])
def test_stage1_radius_rule_is_followed(rule):
    x = torch.tensor([1.0, 1.0], dtype=torch.float64, requires_grad=True)
    opt = APTS([x], num_subdomains=2, local_steps=2, radius=1.0, damping=0.0, stage1_radius=rule)
    opt.step(Objective(lambda: x.square().sum(), lambda d: (x - 5.0).square().sum()))  # Stage I rejected
    info = opt.last_step
    assert not info.stage1_accepted
    assert info.stage1_radius == (0.5 if rule == "decrease" else 1.0)


def test_stage1_own_radius_moves_alone_and_bounds_the_replicas():
    x = torch.tensor([1.0, 1.0], dtype=torch.float64, requires_grad=True)
    full = lambda: x.square().sum()
    away = Objective(full, lambda d: (x - 5.0).square().sum())  # Stage I rejected: rho_I < 0
    opt = APTS([x], num_subdomains=2, local_steps=2, radius=1.0, damping=0.0, stage1_radius="own")
    assert opt.stage1_own_radius == 1.0
    opt.step(away)
    info = opt.last_step
    assert not info.stage1_accepted and info.stage1_radius == 1.0  # Stage II's radius left alone
    assert opt.stage1_own_radius == 0.5 == info.stage1_own_radius  # Delta_I shrunk by rho_I
    assert info.metrics()["apts/stage1_own_radius"] == 0.5
    delta = opt.radius  # Stage II's, after its step
    opt.step(away)
    assert opt.last_step.stage1_radius == delta  # Stage I left it alone again
    assert opt.last_step.max_replica_norm <= 0.5 * (1 + 1e-12) < delta  # |s^d| <= Delta_I, not Delta
    # Delta_I is in the checkpoint, and a checkpoint from before it existed starts it at Delta
    state = opt.state_dict()
    twin = APTS([x], num_subdomains=2, local_steps=2, damping=0.0, stage1_radius="own")
    twin.load_state_dict(state)
    assert twin.stage1_own_radius == opt.stage1_own_radius == 0.25
    del state["state"]["apts"]["stage1_own_radius"]
    twin.load_state_dict(state)
    assert twin.stage1_own_radius == twin.radius
    # replicas that agree with the full loss: accepted, rho_I = 1 at the boundary, Delta_I grows
    y = torch.tensor([1.0, 1.0], dtype=torch.float64, requires_grad=True)
    toward = APTS([y], num_subdomains=2, local_steps=1, radius=0.5, damping=0.0, stage1_radius="own")
    toward.step(Objective(lambda: y.square().sum(), lambda d: y.square().sum()))
    assert toward.last_step.stage1_accepted and toward.stage1_own_radius == 1.0
    keep = APTS([y], num_subdomains=2, damping=0.0)
    keep.step(Objective(lambda: y.square().sum(), lambda d: y.square().sum()))
    assert "apts/stage1_own_radius" not in keep.last_step.metrics()  # only where Stage I has its own


def test_a_state_saved_before_a_setting_existed_loads_with_its_default():
    """An optimizer state from an older version lacks the settings added since (``coherent``,
    ``stage1_search``, ``local_curvature``): it loads, and they take their defaults, the behaviour
    of the code that saved it (once a KeyError on resume)."""
    x = torch.zeros(2, dtype=torch.float64, requires_grad=True)
    state = APTS([x], num_subdomains=2, local_steps=2).state_dict()
    for name in ("coherent", "stage1_search", "local_curvature"):
        del state["param_groups"][0][name]
    twin = APTS([x], num_subdomains=3, coherent=True, stage1_search=2)
    twin.load_state_dict(state)
    config = twin.config
    assert (config.num_subdomains, config.local_steps) == (2, 2)  # from the state
    assert (config.coherent, config.stage1_search, config.local_curvature) == (False, 0, "hessian")


def test_stage1_search_halves_an_overshooting_correction():
    def run(search):
        x = torch.tensor([1.0], dtype=torch.float64, requires_grad=True)
        opt = APTS([x], num_subdomains=2, local_steps=1, radius=3.0, damping=0.0, stage1_search=search)
        # each replica's minimum is at -2: s_bar = -3 overshoots the full loss's minimum at 0
        opt.step(Objective(lambda: x.square().sum(), lambda d: (x + 2.0).square().sum()))
        return opt.last_step

    paper = run(0)
    assert not paper.stage1_accepted and paper.stage1_loss == 4.0 and paper.stage1_step == 0.0
    halved = run(2)
    assert halved.stage1_accepted and halved.stage1_loss == 0.25 and halved.stage1_step == 0.5
    assert halved.correction_norm == paper.correction_norm == 3.0  # the same s_bar, half of it taken
    assert halved.metrics()["apts/stage1_step"] == 0.5
    for bad in (-1, 1.5, True, 31):
        with pytest.raises(ValueError, match=r"stage1_search must be an integer in \[0, 30\]"):
            APTSPINN(problem="heat", stage1_search=bad)


def test_coherent_local_objectives_start_from_the_full_gradient():
    def run(coherent):
        x = torch.tensor([1.0, 1.0], dtype=torch.float64, requires_grad=True)
        opt = APTS([x], num_subdomains=2, local_steps=1, radius=3.0, damping=0.0, coherent=coherent)
        # the replicas' own minimum is at 5; made coherent, (x - 5)^2 + 10 (x - 1) has its minimum at 0
        opt.step(Objective(lambda: x.square().sum(), lambda d: (x - 5.0).square().sum()))
        return opt.last_step

    paper, coherent = run(False), run(True)
    assert not paper.stage1_accepted
    assert coherent.stage1_accepted and coherent.stage1_loss == pytest.approx(0.0, abs=1e-24)
    assert coherent.replica_coherence == pytest.approx(1.0)
    with pytest.raises(ValueError, match="coherent must be True or False"):
        APTSPINN(problem="heat", coherent="yes")


def test_replica_coherence_measures_how_the_corrections_agree():
    from pinn_apts.core.apts import replica_coherence

    e = torch.eye(4, dtype=torch.float64)
    assert replica_coherence(e[0] * 4, [1.0] * 4) == pytest.approx(1.0)  # four equal corrections
    assert replica_coherence(e.sum(dim=0), [1.0] * 4) == pytest.approx(0.25)  # orthogonal: 1/D
    assert replica_coherence(e[0] - e[0], [1.0, 1.0]) == 0.0  # opposite: they cancel
    assert math.isnan(replica_coherence(torch.zeros(3), [0.0, 0.0]))  # no replica moved


def test_apts_logs_the_coherence_of_its_replicas():
    net, objective = pinn_objective(num_parts=4)
    twin = MLP(seed=0)
    twin.load_state_dict(net.state_dict())
    same = Objective(full=lambda: pinn_loss(twin, get_problem("burgers"), objective.batch).total,
                     local=lambda d: pinn_loss(twin, get_problem("burgers"), objective.batch).total)
    identical = APTS(twin.parameters(), num_subdomains=4, replicas="sequential")
    identical.step(same)  # four replicas on one objective: the same correction four times
    assert identical.last_step.replica_coherence == pytest.approx(1.0, rel=1e-12)
    opt = APTS(net.parameters(), num_subdomains=4, replicas="sequential")
    opt.step(objective)
    coherence = opt.last_step.metrics()["apts/replica_coherence"]
    assert 0.0 < coherence < 1.0  # four parts of the interior: close, not equal, corrections (0.999 here)
    state = opt.last_step.to_state()
    del state["replica_coherence"]  # a record from before the field: loads, with NaN
    assert math.isnan(type(opt.last_step).from_state(state).replica_coherence)
