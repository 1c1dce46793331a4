"""The PINN objective (full, local and stacked local losses) and the typed optimizer records."""

import math

import pytest
import torch
from torch.nn.utils import parameters_to_vector

from pinn_apts import APTS, PINNObjective, TrustRegion
from pinn_apts.core.apts import APTSStepInfo, Objective
from pinn_apts.core.optim import StepInfo
from pinn_apts.core.trust_region import StopReason, TrustRegionConfig, capped_radius
from pinn_apts.pde.loss import pinn_loss, pinn_loss_share
from pinn_apts.pde.model import MLP
from pinn_apts.pde.problems import get_problem
from pinn_apts.pde.sampling import CollocationSampler, Curriculum

from .conftest import FakeRank

SMALL = Curriculum((120, 40, 20), (120, 30, 30), 0.3)


def setup(problem="burgers", seed=0):
    torch.set_default_dtype(torch.float64)
    problem = get_problem(problem)
    batch = CollocationSampler(problem, total_iterations=10, curriculum=SMALL, seed=seed).batch(3)
    return MLP(seed=seed), problem, batch


def test_full_and_local_are_the_pinn_loss_on_the_batch_and_on_each_part():
    net, problem, batch = setup()
    objective = PINNObjective(net, problem, batch, num_subdomains=3)
    assert torch.equal(objective.full(), pinn_loss(net, problem, batch).total)
    parts = batch.partition(3)
    for d in range(3):
        assert torch.equal(objective.local(d), pinn_loss(net, problem, batch, batch.interior[parts[d]]).total)
    assert objective.entry_terms.total == pinn_loss(net, problem, batch).total


@pytest.mark.parametrize("problem, num_parts", [("burgers", 4), ("heat", 3), ("laplace", 1)])
def test_stacked_local_rows_are_the_replicas_losses_and_gradients(problem, num_parts):
    net, prob, batch = setup(problem)
    objective = PINNObjective(net, prob, batch, num_subdomains=num_parts)
    theta = parameters_to_vector(net.parameters()).detach()
    # each replica at other parameters: row d is theta + d * noise
    noise = 1e-2 * torch.randn(theta.numel(), generator=torch.Generator().manual_seed(0))
    flat = torch.stack([theta + d * noise for d in range(num_parts)]).requires_grad_(True)
    losses = objective.stacked_local(flat)
    (grads,) = torch.autograd.grad(losses.sum(), flat)
    for d in range(num_parts):
        twin = MLP(seed=0)
        torch.nn.utils.vector_to_parameters(flat[d].detach(), twin.parameters())
        reference = PINNObjective(twin, prob, batch, num_subdomains=num_parts).local(d)
        reference_grad = torch.cat([g.reshape(-1) for g in torch.autograd.grad(reference, list(twin.parameters()))])
        assert float(losses[d].detach()) == pytest.approx(float(reference.detach()), rel=1e-12)
        assert torch.allclose(grads[d], reference_grad, rtol=1e-10, atol=1e-14)


def test_shares_of_the_ranks_sum_to_the_full_loss_and_each_rank_owns_its_replicas():
    net, problem, batch = setup()
    full = float(pinn_loss(net, problem, batch).total)
    shares = []
    for rank in range(2):
        objective = PINNObjective(net, problem, batch, num_subdomains=4, communicator=FakeRank(rank, 2))
        assert list(objective.replicas) == [2 * rank, 2 * rank + 1]
        parts = batch.partition(4)
        own = torch.cat([batch.interior[parts[d]] for d in objective.replicas])
        share = objective.full()
        assert torch.equal(share, pinn_loss_share(net, problem, batch, own, rank, 2).total)
        shares.append(float(share))
    assert sum(shares) == pytest.approx(full, rel=1e-12)


def test_stacked_local_needs_the_package_mlp():
    _, problem, batch = setup()
    net = torch.nn.Sequential(torch.nn.Linear(2, 5), torch.nn.Tanh(), torch.nn.Linear(5, 1))
    objective = PINNObjective(net, problem, batch, num_subdomains=2)
    assert not objective.can_stack and torch.isfinite(objective.local(1))
    with pytest.raises(ValueError, match="batched replicas need the package's MLP network, got Sequential"):
        objective.stacked_local(torch.zeros(2, sum(p.numel() for p in net.parameters())))


def test_a_non_finite_loss_is_named_with_its_term_and_iteration():
    net, problem, batch = setup()
    with torch.no_grad():
        net.layers[-1].bias.fill_(math.inf)  # u is infinite everywhere, the interior term first
    objective = PINNObjective(net, problem, batch)
    with pytest.raises(FloatingPointError, match="non-finite loss at outer iteration 3: the interior term is inf"):
        objective.full()
    objective = PINNObjective(net, problem, batch, num_subdomains=2)
    with pytest.raises(FloatingPointError, match=r"outer iteration 3: the interior term is inf \(boom\); trial "
                                                 "losses were last non-finite at outer iteration 1"):
        with objective.naming_non_finite(earlier=1):
            objective.local(0)
            raise FloatingPointError("boom")


def test_apts_refuses_a_missing_objective_and_one_built_for_other_replicas():
    net, problem, batch = setup()
    opt = APTS(net.parameters(), num_subdomains=4, communicator=FakeRank(1, 2))
    with pytest.raises(ValueError, match=r"APTS.step needs objective=, an object with full\(\) and local\(d\)"):
        opt.step()
    with pytest.raises(ValueError, match=r"APTS.step needs objective="):
        opt.step(closure=lambda: pinn_loss(net, problem, batch).total)
    wrong = PINNObjective(net, problem, batch, num_subdomains=4)  # rank 0 of 1: replicas 0..3
    with pytest.raises(ValueError, match=r"the objective's replicas \[0, 1, 2, 3\] are not this process's \[2, 3\]"):
        opt.step(wrong)
    plain = APTS(net.parameters(), num_subdomains=2, replicas="batched")
    with pytest.raises(ValueError, match="with replicas='batched' needs an objective with"):
        plain.step(Objective(lambda: pinn_loss(net, problem, batch).total))


def test_records_round_trip_through_plain_state_and_give_their_metrics(tmp_path):
    net, problem, batch = setup()
    opt = APTS(net.parameters(), num_subdomains=2, radius=0.5)
    for k in range(2):
        opt.step(PINNObjective(net, problem, batch, 2))
    info = opt.last_step
    assert isinstance(info, APTSStepInfo) and isinstance(info.stage2, StepInfo)
    assert isinstance(info.stage2.reason, StopReason) and all(isinstance(r, StopReason) for r in info.local_reasons)
    # the optimizer state is plain data: it loads with weights_only=True and gives the same records back
    torch.save(opt.state_dict(), tmp_path / "opt.pt")
    restored = APTS(MLP(seed=0).parameters(), num_subdomains=2)
    restored.load_state_dict(torch.load(tmp_path / "opt.pt", weights_only=True))
    assert restored.last_step == info and restored.totals == opt.totals and restored.radius == opt.radius
    metrics = info.metrics()
    assert metrics["apts/stage2_tries"] == info.stage2.tries and metrics["apts/radius"] == info.radius
    assert metrics[f"apts/stage2_stop/{info.stage2.reason.value}"] == 1.0
    assert sum(metrics[f"apts/local_stop/{r.value}"] for r in StopReason) == pytest.approx(1.0)
    assert opt.totals.metrics()["apts/stage1_acceptance_rate"] == opt.totals.stage1_accepted / 2


def test_consecutive_trust_region_steps_sum_their_counts():
    net, problem, batch = setup()
    opt = TrustRegion(net.parameters())
    steps = []
    for _ in range(3):
        opt.step(PINNObjective(net, problem, batch))
        steps.append(opt.last_step)
    merged = StepInfo.of_steps(steps)
    assert merged.loss == steps[0].loss and merged.new_loss == steps[-1].new_loss
    assert merged.tries == sum(s.tries for s in steps) == opt.totals.tries
    assert merged.cg_iterations == opt.totals.cg_iterations and merged.reason == steps[-1].reason


def test_capped_radius_is_one_rule_for_floats_and_tensors():
    config = TrustRegionConfig()
    cases = [(2.0, True, 0.5), (2.0, False, 0.5), (0.25, True, 0.5), (1e-12, True, 0.5), (1.0, True, 1e-11)]
    for radius, accepted, cap in cases:
        expected = max(min(radius, cap) if accepted else radius, config.min_radius)
        assert capped_radius(radius, accepted, cap, config) == expected
    radii = torch.tensor([c[0] for c in cases], dtype=torch.float64)
    accepted = torch.tensor([c[1] for c in cases])
    for i, (radius, ok, cap) in enumerate(cases):
        stacked = capped_radius(radii, accepted, cap, config)
        assert float(stacked[i]) == capped_radius(radius, ok, cap, config)
