"""Compiled trust-region steps (issue "Fast steps"): the same derivatives and iterates as eager ones.

Compiling takes tens of seconds per process on the CPU; the tests share one compiled loss
(Heat, the package's MLP, float64) through :func:`~pinn_apts.pde.compiled.compiled_pinn_loss`.
"""

import traceback
import warnings

import pytest
import torch
from torch.nn.utils import parameters_to_vector

from pinn_apts import APTS, APTSPINN, PINNObjective, TrustRegion, TrustRegionPINN
from pinn_apts.core.optim import check_compile, resolve_compile
from pinn_apts.core.trust_region import flat_hvp
from pinn_apts.pde.compiled import CompiledPINNLoss, _mend_guard_locations
from pinn_apts.pde.jet import Jet
from pinn_apts.pde.model import MLP
from pinn_apts.pde.problems import Heat, PDEProblem, get_problem
from pinn_apts.pde.sampling import CollocationSampler, Curriculum
from pinn_apts.training.data import PINNDataModule

from .conftest import FakeRank, fast_trainer

SMALL = Curriculum((120, 40, 20), (120, 30, 30), 0.3)


def objective_at(iteration=3, num_subdomains=3, communicator=None, problem="heat"):
    torch.set_default_dtype(torch.float64)
    problem = get_problem(problem)
    batch = CollocationSampler(problem, total_iterations=10, curriculum=SMALL, seed=0).batch(iteration)
    net = MLP(seed=0)
    return net, PINNObjective(net, problem, batch, num_subdomains, communicator)


def eager_derivatives(net, loss_fn, v):
    params = list(net.parameters())
    loss = loss_fn()
    grads = torch.autograd.grad(loss, params, create_graph=True)
    return loss.detach(), torch.cat([g.detach().reshape(-1) for g in grads]), flat_hvp(grads, params)(v)


@pytest.mark.slow
@pytest.mark.parametrize("iteration", [1, 8])  # both curriculum phases: other shapes, one compilation
@pytest.mark.parametrize("part", [None, 0, 2])  # the full loss and replicas' local losses
def test_compiled_loss_gradient_and_products_are_the_eager_ones(iteration, part):
    net, objective = objective_at(iteration)
    theta = parameters_to_vector(net.parameters()).detach()
    v = torch.randn(theta.shape, generator=torch.Generator().manual_seed(1))
    compiled = objective.compiled(part)
    loss, grad, product = eager_derivatives(net, objective.full if part is None else lambda: objective.local(part), v)
    value, compiled_grad = compiled.loss_and_grad(theta)
    assert compiled.loss(theta) == pytest.approx(float(loss), rel=1e-13)
    assert float(value) == pytest.approx(float(loss), rel=1e-13)
    assert torch.allclose(compiled_grad, grad, rtol=0, atol=1e-12 * float(grad.norm()))
    assert torch.allclose(compiled.hvp(theta, v), product, rtol=0, atol=1e-11 * float(product.norm()))


@pytest.mark.slow
@pytest.mark.parametrize("iteration", [1, 8])
def test_compiled_stacked_losses_gradients_and_products_are_the_eager_ones(iteration):
    net, objective = objective_at(iteration, num_subdomains=3)
    theta = parameters_to_vector(net.parameters()).detach()
    rows = theta + 0.01 * torch.randn(3, theta.numel(), generator=torch.Generator().manual_seed(2))  # three replicas
    v = torch.randn(rows.shape, generator=torch.Generator().manual_seed(3))
    leaf = rows.clone().requires_grad_(True)
    losses = objective.stacked_local(leaf)
    (grad,) = torch.autograd.grad(losses.sum(), leaf, create_graph=True)
    (product,) = torch.autograd.grad(grad, leaf, grad_outputs=v)
    compiled = objective.compiled_stacked()
    values, compiled_grad = compiled.loss_and_grad(rows)
    assert torch.allclose(values, losses.detach(), rtol=1e-13, atol=0)
    assert torch.allclose(compiled.loss(rows), losses.detach(), rtol=1e-13, atol=0)
    assert torch.allclose(compiled_grad, grad.detach(), rtol=0, atol=1e-12 * float(grad.norm()))
    assert torch.allclose(compiled.hvp(rows, v), product, rtol=0, atol=1e-11 * float(product.norm()))


@pytest.mark.slow
@pytest.mark.parametrize("part", [None, 1])
def test_gauss_newton_products_are_those_of_the_residuals_jacobian(part):
    """``curvature="gauss_newton"``: the loss is the sum of squares of the weighted residual vector,
    and the product is ``2 J^T J v``, positive semi-definite, unlike the Hessian's."""
    net, objective = objective_at(8)
    theta = parameters_to_vector(net.parameters()).detach()
    v = torch.randn(theta.shape, generator=torch.Generator().manual_seed(4))
    hessian, gauss_newton = objective.compiled(part), objective.compiled(part, curvature="gauss_newton")
    functions, data = gauss_newton.functions, gauss_newton.data
    residuals = functions._residuals
    assert float(residuals(theta, *data).square().sum()) == pytest.approx(float(hessian.loss(theta)), rel=1e-13)
    jacobian = torch.func.jacrev(lambda x: residuals(x, *data))(theta)
    expected = 2 * jacobian.T @ (jacobian @ v)
    product = gauss_newton.hvp(theta, v)
    assert torch.allclose(product, expected, rtol=0, atol=1e-11 * float(expected.norm()))
    assert not torch.allclose(product, hessian.hvp(theta, v), rtol=1e-3, atol=0)  # the Hessian differs
    assert gauss_newton.loss_and_grad(theta)[1].equal(hessian.loss_and_grad(theta)[1])
    assert functions.failed is None  # compiled, not the eager fallback
    with pytest.raises(ValueError, match="curvature must be one of 'hessian', 'gauss_newton', got 'newton'"):
        objective.compiled(part, curvature="newton")


@pytest.mark.slow
def test_stacked_gauss_newton_products_are_each_replicas_own():
    net, objective = objective_at(8, num_subdomains=3)
    theta = parameters_to_vector(net.parameters()).detach()
    rows = theta + 0.01 * torch.randn(3, theta.numel(), generator=torch.Generator().manual_seed(2))
    v = torch.randn(rows.shape, generator=torch.Generator().manual_seed(3))
    stacked = objective.compiled_stacked(curvature="gauss_newton").hvp(rows, v)
    for i, d in enumerate(objective.replicas):
        own = objective.compiled(d, curvature="gauss_newton").hvp(rows[i], v[i])
        assert torch.allclose(stacked[i], own, rtol=0, atol=1e-11 * float(own.norm()))


@pytest.mark.slow
def test_gauss_newton_local_curvature_solves_the_replicas_subproblems_with_it():
    """``local_curvature="gauss_newton"``: with D = J = 1 Stage I is one trust-region step on the full
    loss with Gauss-Newton products; batched replicas take the same steps as sequential ones."""
    from pinn_apts.core.optim import trust_region_step
    from pinn_apts.core.trust_region import TrustRegionConfig

    def stage1(curvature):
        net, objective = objective_at(8, num_subdomains=1)
        opt = APTS(net.parameters(), num_subdomains=1, local_steps=1, radius=0.3, compile=True,
                   local_curvature=curvature)
        opt.step(objective)
        return opt.last_step

    twin, reference_objective = objective_at(8, num_subdomains=1)
    reference, _ = trust_region_step(reference_objective.full, list(twin.parameters()), 0.3, TrustRegionConfig(),
                                     max_radius=0.3, retry=False,
                                     derivatives=reference_objective.compiled(curvature="gauss_newton"))
    gauss_newton, hessian = stage1("gauss_newton"), stage1("hessian")
    assert gauss_newton.stage1_loss == pytest.approx(reference.new_loss, rel=1e-12)
    assert gauss_newton.correction_norm == pytest.approx(reference.step_norm, rel=1e-10)
    assert gauss_newton.local_cg_iterations == reference.cg_iterations
    assert gauss_newton.correction_norm != pytest.approx(hessian.correction_norm, rel=1e-3)
    # batched replicas: the same iterates, to rounding
    thetas = {}
    for replicas in ("sequential", "batched"):
        net, _ = objective_at(num_subdomains=3)
        problem = get_problem("heat")
        sampler = CollocationSampler(problem, 10, curriculum=SMALL, seed=0)
        opt = APTS(net.parameters(), num_subdomains=3, radius=0.5, compile=True, replicas=replicas,
                   local_curvature="gauss_newton")
        for k in range(3):
            opt.step(PINNObjective(net, problem, sampler.batch(k), 3))
        thetas[replicas] = parameters_to_vector(net.parameters()).detach()
    assert (thetas["sequential"] - thetas["batched"]).abs().max() <= 1e-10


@pytest.mark.slow
def test_gauss_newton_local_curvature_runs_eagerly_without_compilation():
    """Gauss–Newton products were compiled functions only (compile 'off' was refused); the same
    functions now run eagerly too, with the compiled iterates to rounding."""
    thetas = {}
    for compile in (False, True):
        net, objective = objective_at(num_subdomains=2)
        opt = APTS(net.parameters(), num_subdomains=2, radius=0.5, local_curvature="gauss_newton", compile=compile)
        opt.step(objective)
        thetas[compile] = parameters_to_vector(net.parameters()).detach()
    assert (thetas[False] - thetas[True]).abs().max() <= 1e-10
    assert APTSPINN(problem="heat", local_curvature="gauss_newton", compile="off").compile_mode == "off"
    with pytest.raises(ValueError, match="local_curvature must be 'hessian' or 'gauss_newton', got 'newton'"):
        APTSPINN(problem="heat", local_curvature="newton")


def test_compiled_share_sums_to_the_full_loss():
    shares = [objective_at(communicator=FakeRank(rank, 3))[1].compiled() for rank in range(3)]
    net, objective = objective_at(num_subdomains=3)
    theta = parameters_to_vector(net.parameters()).detach()
    total = sum(float(share.loss(theta)) for share in shares)
    assert total == pytest.approx(float(objective.full().detach()), rel=1e-13)


def run(optimizer, compile, iterations=10, device="cpu", replicas="sequential", coherent=False):
    """The parameters after each of ``iterations`` outer iterations, and the optimizer's totals."""
    torch.set_default_dtype(torch.float64)
    problem = get_problem("heat")
    sampler = CollocationSampler(problem, total_iterations=iterations, curriculum=SMALL, seed=0)
    net = MLP(seed=0).to(device)
    if optimizer == "apts":
        opt = APTS(net.parameters(), num_subdomains=3, replicas=replicas, compile=compile, coherent=coherent)
    else:
        opt = TrustRegion(net.parameters(), compile=compile)
    iterates = []
    for k in range(iterations):
        objective = PINNObjective(net, problem, sampler.batch(k).to(device=device), 3 if optimizer == "apts" else 1)
        if optimizer == "apts":
            opt.step(objective)
        else:
            opt.step(objective.full, objective=objective)
        iterates.append(parameters_to_vector(net.parameters()).detach().clone())
    return iterates, opt.totals


# Each APTS iteration (36 local and a global CG solve on an ill-conditioned Hessian) amplifies a
# rounding difference about 50-fold: measured on Heat, max |d theta| 1e-16, 6e-15, 9e-12, 2e-8
# after 1, 4, 7, 10 iterations; any change of summation order does the same.  Hence 1e-10 after
# six iterations for APTS, and the same decisions (acceptances, tries, CG iterations) over ten.
CUDA = pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device"))


@pytest.mark.parametrize("device", ["cpu", CUDA])
@pytest.mark.parametrize("optimizer, agree_for, replicas, coherent", [
    ("apts", 6, "sequential", False), pytest.param("apts", 6, "batched", False, marks=pytest.mark.slow),
    ("tr", 10, None, False), ("apts", 6, "sequential", True),
    pytest.param("apts", 6, "batched", True, marks=pytest.mark.slow)])  # batched: 30 s of compilation
def test_compiled_and_eager_iterates_agree_over_ten_outer_iterations(optimizer, agree_for, replicas, coherent, device):
    eager, eager_totals = run(optimizer, compile=False, device=device, replicas=replicas, coherent=coherent)
    compiled, compiled_totals = run(optimizer, compile=True, device=device, replicas=replicas, coherent=coherent)
    assert compiled_totals == eager_totals  # the same acceptances, tries and CG iterations
    assert float((compiled[agree_for - 1] - eager[agree_for - 1]).abs().max()) <= 1e-10
    assert not torch.equal(compiled[-1], eager[-1])  # really another computation


class GraphBreakingHeat(Heat):
    """Heat whose residual breaks a compiled graph (as an unsupported operation would)."""

    def residual(self, jet: Jet) -> torch.Tensor:
        torch._dynamo.graph_break()
        return super().residual(jet)


def test_a_loss_that_cannot_be_compiled_runs_eagerly_with_one_warning():
    torch.set_default_dtype(torch.float64)
    problem = GraphBreakingHeat()
    batch = CollocationSampler(problem, total_iterations=10, curriculum=SMALL, seed=0).batch(3)
    net = MLP(seed=0)
    objective = PINNObjective(net, problem, batch)
    theta = parameters_to_vector(net.parameters()).detach()
    with pytest.warns(RuntimeWarning, match="could not compile the loss of GraphBreakingHeat.*running eagerly"):
        value = objective.compiled().loss(theta)
    assert float(value) == pytest.approx(float(objective.full()), rel=1e-13)
    assert objective.compiled() is None  # from now on the optimizers take the graph path
    opt = APTS(net.parameters(), num_subdomains=2, replicas="sequential", compile=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # warned once only
        opt.step(PINNObjective(net, problem, batch, 2))
    assert opt.last_step.new_loss < opt.last_step.loss


def test_compile_choices():
    assert resolve_compile("on", 10, 100) and not resolve_compile("off", 10**6, 100)
    assert resolve_compile("auto", 100, 100) and not resolve_compile("auto", 99, 100)
    assert not resolve_compile("auto", None, 100)
    assert TrustRegionPINN.compile_min_iterations > APTSPINN.compile_min_iterations  # a TR iteration saves less
    with pytest.raises(ValueError, match="compile must be 'auto', 'on' or 'off', got 'yes'"):
        APTSPINN(compile="yes")
    with pytest.raises(ValueError, match="compile must be True or False for an optimizer, got 'on'"):
        TrustRegion(MLP().parameters(), compile="on")
    assert check_compile(True)


@pytest.mark.parametrize("mode, min_iterations, expected", [("auto", None, False), ("auto", 3, True), ("off", 3, False)])
def test_modules_settle_compile_at_the_start_of_training(tmp_path, mode, min_iterations, expected):
    module = TrustRegionPINN(problem="heat", compile=mode, eval_points=(5, 5))
    if min_iterations is not None:
        module.compile_min_iterations = min_iterations  # a 3-iteration run is then long enough
    data = PINNDataModule("heat", early_sizes=(60, 20, 10), late_sizes=(60, 20, 10))
    fast_trainer(3, tmp_path).fit(module, data)
    assert module.optimizers().optimizer.compile is expected


def test_compiled_module_trains_like_the_eager_one(tmp_path):
    thetas = []
    for mode in ("off", "on"):
        module = APTSPINN(problem="heat", num_subdomains=2, replicas="sequential", compile=mode, eval_points=(5, 5))
        data = PINNDataModule("heat", early_sizes=(60, 20, 10), late_sizes=(60, 20, 10))
        fast_trainer(3, tmp_path).fit(module, data)
        assert module.optimizers().optimizer.compile is (mode == "on")
        thetas.append(parameters_to_vector(module.net.parameters()).detach())
    assert float((thetas[0] - thetas[1]).abs().max()) <= 1e-10


def test_compiled_functions_are_shared_by_equal_problems():
    from pinn_apts.pde.compiled import compiled_pinn_loss

    first = compiled_pinn_loss(get_problem("heat"), (2, 20, 20, 20, 1))
    assert compiled_pinn_loss(get_problem("heat"), (2, 20, 20, 20, 1)) is first
    assert compiled_pinn_loss(get_problem("heat", kappa=0.5), (2, 20, 20, 20, 1)) is not first
    assert isinstance(first, CompiledPINNLoss) and isinstance(get_problem("heat"), PDEProblem)


def test_losses_past_torch_compiles_recompile_limit_still_compile():
    # Every loss compiles the same code objects, so the losses of several problems in one process
    # share torch.compile's per-code-object recompile limit; a limit of 1 makes the second loss reach it.
    net, objective = objective_at()
    theta, data = parameters_to_vector(net.parameters()).detach(), objective.compiled().data
    problems = [type(f"Heat{i}", (Heat,), {})() for i in range(3)]  # new classes: new compilations
    with torch._dynamo.config.patch(recompile_limit=1):
        for problem in problems:
            functions = CompiledPINNLoss(problem, (2, 20, 20, 20, 1))
            value = functions.call("loss", theta, *data)
            assert functions.failed is None  # compiled, not fallen back to eager
            assert functions.derivatives(data, curvature="gauss_newton") is not None
            assert float(value) == pytest.approx(float(objective.full()), rel=1e-13)
        assert torch._dynamo.config.recompile_limit == 1  # raised for the losses' calls only


def test_a_torch_that_cannot_print_an_unknown_guard_location_is_mended(monkeypatch):
    """torch 2.11's ``SLoc.__str__`` formats an unknown framework location (``None``) as a frame, and
    every compilation on CUDA failed on it; the mend gives it torch 2.13's rule, and leaves a torch
    that has the rule alone."""
    from torch._guards import SLoc
    from torch.utils._traceback import format_frame

    def torch_2_11_str(self):
        floc = self.framework_loc if isinstance(self.framework_loc, str) else format_frame(self.framework_loc)
        return f"({floc})" if self.maybe_user_loc is None else f"{self.maybe_user_loc} ({floc})"

    own = SLoc.__str__
    assert not _mend_guard_locations() and SLoc.__str__ is own  # this torch prints it already
    monkeypatch.setattr(SLoc, "__str__", torch_2_11_str)
    with pytest.raises(AttributeError, match="'NoneType' object has no attribute 'filename'"):
        str(SLoc(None, "x.py:3"))
    assert _mend_guard_locations()
    assert str(SLoc(None, "x.py:3")) == "x.py:3 ()" and str(SLoc(None, None)) == "()"
    frame = traceback.FrameSummary("pinn_apts/pde/loss.py", 7, "residual_of")
    assert str(SLoc(frame, None)) == torch_2_11_str(SLoc(frame, None)) == f"({format_frame(frame)})"
    assert not _mend_guard_locations()  # mended once
