import math

import numpy as np
import pytest
import torch
from scipy.optimize import minimize, rosen, rosen_der, rosen_hess_prod

from pinn_apts.core.optim import TrustRegion, trust_region_step
from pinn_apts.core.trust_region import StopReason, TrustRegionConfig, flat_hvp
from pinn_apts.pde.loss import pinn_loss
from pinn_apts.pde.model import MLP
from pinn_apts.pde.problems import get_problem
from pinn_apts.pde.sampling import CollocationSampler

SCIPY_LIKE = dict(radius=1.0, max_radius=1000.0, eta1=0.15, eta2=0.75, shrink=0.25, grow=2.0, cg_max_iter=10, damping=0.0)


def minimize_tr(x, f, tol=1e-8, max_steps=500, **kwargs):
    opt = TrustRegion([x], **kwargs)
    for _ in range(max_steps):
        if torch.autograd.grad(f(), x)[0].norm() < tol:
            break
        opt.step(f)
    return opt


@pytest.mark.parametrize("x0", [(-1.2, 1.0), (0.0, 0.0), (-1.5, 2.0), (2.0, -1.0)])
def test_rosenbrock_matches_scipy_trust_ncg(x0):
    reference = minimize(rosen, np.array(x0), method="trust-ncg", jac=rosen_der, hessp=rosen_hess_prod,
                         options=dict(initial_trust_radius=1.0, max_trust_radius=1000.0, eta=0.15, gtol=1e-8))
    x = torch.tensor(x0, dtype=torch.float64, requires_grad=True)
    opt = minimize_tr(x, lambda: 100 * (x[1] - x[0] ** 2) ** 2 + (1 - x[0]) ** 2, **SCIPY_LIKE)
    assert reference.success
    assert np.allclose(x.detach().numpy(), reference.x, atol=1e-7)
    assert np.allclose(x.detach().numpy(), [1.0, 1.0], atol=1e-7)
    # scipy counts every subproblem, accepted or not; so do our tries
    assert abs(opt.totals.tries - reference.nit) <= 2


def test_rosenbrock_with_paper_constants_converges():
    x = torch.tensor([-1.2, 1.0], dtype=torch.float64, requires_grad=True)
    minimize_tr(x, lambda: 100 * (x[1] - x[0] ** 2) ** 2 + (1 - x[0]) ** 2, tol=1e-7, max_steps=2000)
    assert torch.allclose(x.detach(), torch.ones(2, dtype=torch.float64), atol=1e-5)


def test_nonlinear_least_squares():
    t = torch.linspace(0, 2, 30, dtype=torch.float64)
    y = 2.0 * torch.exp(-1.5 * t) + 0.3 * torch.sin(3 * t)
    theta = torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64, requires_grad=True)

    def loss():
        model = theta[0] * torch.exp(theta[1] * t) + theta[2] * torch.sin(3 * t)
        return 0.5 * (model - y).square().sum()

    minimize_tr(theta, loss, tol=1e-10, max_steps=200, damping=0.0, cg_max_iter=10)
    assert torch.allclose(theta.detach(), torch.tensor([2.0, -1.5, 0.3], dtype=torch.float64), atol=1e-7)


def test_non_finite_trial_is_rejected_and_parameters_stay_finite():
    x = torch.tensor([1.0, 1.0], dtype=torch.float64, requires_grad=True)
    target = torch.tensor([-3.0, 0.0], dtype=torch.float64)

    def loss():  # undefined (NaN) left of x0 = -1
        value = (x - target).square().sum()
        return value if float(x[0].detach()) >= -1 else value * math.nan

    opt = TrustRegion([x], radius=10.0, damping=0.0)
    opt.step(loss)
    info = opt.last_step
    assert info.accepted and info.tries > 1
    assert torch.isfinite(x).all() and float(x[0]) >= -1
    assert info.new_loss < info.loss


class _OnesWithNaNDerivative(torch.autograd.Function):
    """Forward: ones. Backward: NaN. Makes a finite gradient whose Hessian-vector product is NaN."""

    @staticmethod
    def forward(ctx, x):
        return torch.ones_like(x)

    @staticmethod
    def backward(ctx, grad):
        return grad * math.nan


class _QuadraticWithNaNCurvature(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return (x - 2).square().sum()

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return grad * 2 * (x - 2) * _OnesWithNaNDerivative.apply(x)


def test_non_finite_hvp_is_rejected():
    x = torch.tensor([1.0], dtype=torch.float64, requires_grad=True)
    opt = TrustRegion([x], radius=0.5, min_radius=1e-3, damping=0.0)
    opt.step(lambda: _QuadraticWithNaNCurvature.apply(x))
    info = opt.last_step
    assert info.reason == StopReason.NON_FINITE and not info.accepted
    assert info.radius == 1e-3 and info.tries == 10  # 0.5 halved down to the floor, one try each
    assert float(x) == 1.0


def test_non_finite_gradient_at_current_point_is_an_error():
    x = torch.tensor([0.0], dtype=torch.float64, requires_grad=True)
    with pytest.raises(FloatingPointError, match="non-finite gradient at the current point"):
        TrustRegion([x]).step(lambda: x.abs().sqrt().sum())
    with pytest.raises(FloatingPointError, match="non-finite loss nan at the current point"):
        TrustRegion([x]).step(lambda: (x * math.nan).sum())
    with pytest.raises(ValueError, match="needs a closure"):
        TrustRegion([x]).step(None)
    with pytest.raises(ValueError, match=r"radius must lie in \[min_radius, max_radius\]"):
        TrustRegion([x], radius=100.0)


def test_radius_floor_stops_without_a_step():
    x = torch.tensor([1.0], dtype=torch.float64, requires_grad=True)
    # the model predicts a decrease but the loss never decreases: every try is rejected
    loss = lambda: (x - 2).square().sum() + 10 * (x - 1).abs().sum()
    opt = TrustRegion([x], radius=1e-3, min_radius=1e-6)
    opt.step(loss)
    info = opt.last_step
    assert not info.accepted and info.radius == 1e-6 and float(x) == 1.0


def test_state_dict_carries_radius_and_counters():
    def make():
        x = torch.tensor([-1.2, 1.0], dtype=torch.float64, requires_grad=True)
        return x, (lambda: 100 * (x[1] - x[0] ** 2) ** 2 + (1 - x[0]) ** 2)

    x, f = make()
    opt = TrustRegion([x])
    for _ in range(5):
        opt.step(f)
    saved = opt.state_dict()
    y, g = make()
    with torch.no_grad():
        y.copy_(x)
    restored = TrustRegion([y])
    restored.load_state_dict(saved)
    assert restored.radius == opt.radius and restored.totals.steps == 5
    assert restored.last_step == opt.last_step
    opt.step(f)
    restored.step(g)
    assert torch.equal(x, y) and restored.radius == opt.radius


def test_hvp_matches_finite_differences_on_pinn_loss():
    torch.set_default_dtype(torch.float64)
    problem = get_problem("burgers")
    batch = CollocationSampler(problem, total_iterations=10, seed=0).batch(0)
    net = MLP(seed=0)
    params = list(net.parameters())
    loss = pinn_loss(net, problem, batch).total
    grads = torch.autograd.grad(loss, params, create_graph=True)
    hvp = flat_hvp(grads, params)
    theta = torch.nn.utils.parameters_to_vector(params).detach().clone()
    twin = MLP(seed=0)  # the finite differences move a twin's parameters, never the graph's

    def flat_gradient(vector):
        torch.nn.utils.vector_to_parameters(vector, twin.parameters())
        g = torch.autograd.grad(pinn_loss(twin, problem, batch).total, list(twin.parameters()))
        return torch.cat([x.reshape(-1) for x in g])

    rng = torch.Generator().manual_seed(0)
    for _ in range(3):
        v = torch.randn(theta.shape, generator=rng)
        eps = 1e-5
        fd = (flat_gradient(theta + eps * v) - flat_gradient(theta - eps * v)) / (2 * eps)
        exact = hvp(v)  # the graph at theta is reused across products
        assert torch.linalg.norm(exact - fd) <= 1e-6 * torch.linalg.norm(exact)


def test_local_radius_cap_and_no_retry():
    x = torch.tensor([-1.2, 1.0], dtype=torch.float64, requires_grad=True)
    f = lambda: 100 * (x[1] - x[0] ** 2) ** 2 + (1 - x[0]) ** 2
    config = TrustRegionConfig()
    info, loss = trust_region_step(f, [x], 0.2, config, max_radius=0.2, retry=False)
    assert float(loss.detach()) == info.new_loss
    assert info.tries == 1 and info.radius <= 0.2 and info.step_norm <= 0.2 + 1e-12
