"""The exact Gauss–Newton trust-region descent (core/least_squares.py), on small dense problems first."""

import math

import pytest
import torch

from pinn_apts.core.least_squares import (
    GaussNewtonModel,
    NormalEquationsModel,
    solve_in_eigenbasis,
)
from pinn_apts.core.trust_region import StopReason


@pytest.fixture(autouse=True)
def float64():
    before = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(before)


def boundary_reference(matrix, gradient, radius):
    """The step of ``min g^T s + 1/2 s^T B s, |s| = radius`` by bisection on lambda with dense solves
    (independent of the eigendecomposition): |(B + lambda I)^{-1} g| falls from +inf to 0 past -min eig."""
    n = len(gradient)
    low = max(0.0, -float(torch.linalg.eigvalsh(matrix)[0])) + 1e-15
    high = low + float(gradient.norm()) / radius + 1.0

    def step(lam):
        return torch.linalg.solve(matrix + lam * torch.eye(n), -gradient)

    for _ in range(200):
        mid = 0.5 * (low + high)
        low, high = (mid, high) if float(step(mid).norm()) > radius else (low, mid)
    return step(0.5 * (low + high))


def model(matrix, gradient, s):
    return float(gradient @ s + 0.5 * s @ matrix @ s)


def solve_dense(matrix, gradient, radius):
    theta, vectors = torch.linalg.eigh(matrix)
    found = solve_in_eigenbasis(theta, vectors.T @ gradient, radius)
    return vectors @ found.coefficients, found


def random_spd(n, generator, low=0.1, high=10.0):
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=generator))
    return q @ torch.diag(torch.linspace(low, high, n)) @ q.T, q


@pytest.mark.parametrize("seed", range(5))
def test_an_interior_solution_is_the_newton_step(seed):
    generator = torch.Generator().manual_seed(seed)
    matrix, _ = random_spd(12, generator)
    gradient = torch.randn(12, generator=generator)
    newton = torch.linalg.solve(matrix, -gradient)
    s, found = solve_dense(matrix, gradient, 2 * float(newton.norm()))
    assert not found.boundary and found.multiplier == 0.0
    assert torch.allclose(s, newton, atol=1e-12, rtol=0)
    assert found.predicted_reduction == pytest.approx(-model(matrix, gradient, s), rel=1e-12)


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("definite", [True, False])
def test_a_boundary_solution_matches_a_dense_reference(seed, definite):
    generator = torch.Generator().manual_seed(seed)
    matrix, _ = random_spd(12, generator, low=-3.0 if not definite else 0.1)
    gradient = torch.randn(12, generator=generator)
    radius = 0.3
    s, found = solve_dense(matrix, gradient, radius)
    reference = boundary_reference(matrix, gradient, radius)
    assert found.boundary and not found.hard_case
    assert float(s.norm()) == pytest.approx(radius, rel=1e-12)
    assert float((s - reference).norm()) <= 1e-10
    # optimality (Moré & Sorensen): (B + lambda I) s = -g with B + lambda I positive semi-definite
    shifted = matrix + found.multiplier * torch.eye(12)
    assert float((shifted @ s + gradient).norm()) <= 1e-10
    assert float(torch.linalg.eigvalsh(shifted)[0]) >= -1e-12


def test_the_hard_case_is_completed_along_the_smallest_eigenvector():
    generator = torch.Generator().manual_seed(3)
    matrix, q = random_spd(10, generator, low=-2.0, high=5.0)  # smallest eigenvalue -2, eigenvector q[:, 0]
    gradient = 0.1 * (q[:, 1:] @ torch.randn(9, generator=generator))  # no component along q[:, 0]
    radius = 5.0
    s, found = solve_dense(matrix, gradient, radius)
    assert found.hard_case and found.boundary and found.multiplier == pytest.approx(2.0, rel=1e-12)
    assert float(s.norm()) == pytest.approx(radius, rel=1e-12)
    shifted = matrix + 2.0 * torch.eye(10)
    assert float((shifted @ s + gradient).norm()) <= 1e-10
    # the reference: the least-norm solution of (B + 2 I) s = -g, completed along q[:, 0]
    base = -torch.linalg.pinv(shifted, hermitian=True) @ gradient
    reference = base + math.sqrt(radius**2 - float(base.norm()) ** 2) * q[:, 0]
    assert model(matrix, gradient, s) == pytest.approx(model(matrix, gradient, reference), abs=1e-10)
    # on a sphere through no better point: a small rotation of s within the sphere raises the model
    for _ in range(20):
        other = s + 1e-3 * torch.randn(10, generator=generator)
        other = radius * other / other.norm()
        assert model(matrix, gradient, other) >= model(matrix, gradient, s) - 1e-12


@pytest.mark.parametrize("rows, cols", [(30, 12), (8, 20)])  # more residuals than parameters, and fewer
def test_gauss_newton_steps_of_a_rank_deficient_jacobian_match_dense_references(rows, cols):
    generator = torch.Generator().manual_seed(rows)
    rank = 5
    jacobian = torch.randn(rows, rank, generator=generator) @ torch.randn(rank, cols, generator=generator)
    residuals = torch.randn(rows, generator=generator)
    gn = GaussNewtonModel.of(residuals, jacobian, rtol=1e-12)  # more rows: Cholesky factorizations; fewer: an eigenbasis
    assert isinstance(gn, NormalEquationsModel if rows >= cols else GaussNewtonModel)
    # a large radius: the least-norm Gauss–Newton step, -pinv(J) r
    least_norm = -torch.linalg.pinv(jacobian) @ residuals
    inside = gn.solve(10 * float(least_norm.norm()))
    assert inside.reason == StopReason.CONVERGED
    assert float((inside.step - least_norm).norm()) <= 1e-10
    full = residuals + jacobian @ inside.step
    assert inside.predicted_reduction == pytest.approx(float(residuals @ residuals - full @ full), rel=1e-10)
    # a small radius: the dense reference on B = 2 J^T J
    radius = 0.2 * float(least_norm.norm())
    on_edge = gn.solve(radius)
    reference = boundary_reference(2 * jacobian.T @ jacobian, 2 * jacobian.T @ residuals, radius)
    assert on_edge.reason == StopReason.BOUNDARY
    assert float((on_edge.step - reference).norm()) <= 1e-10


@pytest.mark.parametrize("damping", [0.0, 0.3])
def test_cholesky_factorizations_and_the_eigenbasis_give_one_step(damping):
    generator = torch.Generator().manual_seed(7)
    jacobian = torch.randn(50, 20, generator=generator) * torch.logspace(0, -4, 20)  # ill-conditioned, full rank
    residuals = torch.randn(50, generator=generator)
    normal = GaussNewtonModel.of(residuals, jacobian, damping, rtol=1e-12)
    eigen = normal.eigen()
    for radius in (10.0, 0.1, 1e-3, 1e6):  # a smaller radius starts from the larger one's mu
        a, b = normal.solve(radius), eigen.solve(radius)
        assert a.reason == b.reason
        assert float((a.step - b.step).norm()) <= 1e-9 * max(float(b.step.norm()), 1.0)
        assert a.predicted_reduction == pytest.approx(b.predicted_reduction, rel=1e-9)
    # the default tolerance: a step within 1% below the radius, the model's exact minimizer within its own norm
    loose = GaussNewtonModel.of(residuals, jacobian, damping)
    for radius in (1.0, 0.1, 1e-3):  # all below the Gauss–Newton step's norm (1.8 and 1.4)
        step = loose.solve(radius)
        assert step.reason == StopReason.BOUNDARY and 0.99 * radius <= float(step.step.norm()) <= radius
        exact = eigen.solve(float(step.step.norm()))
        assert float((step.step - exact.step).norm()) <= 1e-8 * float(exact.step.norm())


@pytest.mark.parametrize("guess", [0.1, 1.0, 10.0])  # carried multiplier / the root's: below it, at it, above it
def test_a_carried_multiplier_gives_the_same_step(guess):
    generator = torch.Generator().manual_seed(3)
    jacobian = torch.randn(60, 20, generator=generator) * torch.logspace(0, -3, 20)
    residuals = torch.randn(60, generator=generator)
    eigen = GaussNewtonModel.of(residuals, jacobian).eigen()
    radius = 0.05
    fresh = GaussNewtonModel.of(residuals, jacobian)
    first = fresh.solve(radius)
    carried = GaussNewtonModel.of(residuals, jacobian)
    carried.multiplier = guess * fresh.multiplier
    found = carried.solve(radius)
    assert found.reason == StopReason.BOUNDARY and 0.99 * radius <= float(found.step.norm()) <= radius
    exact = eigen.solve(float(found.step.norm()))  # the exact minimizer within the step's own norm
    assert float((found.step - exact.step).norm()) <= 1e-8 * float(exact.step.norm())
    if guess == 1.0:  # the root itself: one factorization, against the fresh search's several
        assert found.iterations == 1 < first.iterations
    # the root lies far above mu = 0: the Gauss–Newton step is never factorized
    assert not carried._tried
    # the multiplier met this radius; for half of it the search starts at twice the multiplier
    assert carried.multiplier_radius == radius
    shorter = carried.solve(radius / 2)
    assert 0.99 * radius / 2 <= float(shorter.step.norm()) <= radius / 2 and carried.multiplier > fresh.multiplier
    # a radius the Gauss–Newton step fits in: the carried multiplier does not hide it
    inside = GaussNewtonModel.of(residuals, jacobian)
    inside.multiplier = fresh.multiplier
    newton = inside.solve(1e6)
    assert newton.reason == StopReason.CONVERGED
    assert torch.allclose(newton.step, eigen.solve(1e6).step, rtol=0, atol=1e-9)


def test_on_a_linear_least_squares_problem_one_step_lands_on_the_minimizer():
    generator = torch.Generator().manual_seed(0)
    a, y = torch.randn(40, 9, generator=generator), torch.randn(40, generator=generator)
    theta = torch.randn(9, generator=generator)
    gn = GaussNewtonModel.of(a @ theta - y, a)
    step = gn.solve(1e6)
    minimizer = torch.linalg.lstsq(a, y.unsqueeze(1)).solution.squeeze(1)
    assert float((theta + step.step - minimizer).norm()) <= 1e-10


def test_damping_and_non_finite_models():
    jacobian, residuals = torch.eye(3), torch.ones(3)
    damped = GaussNewtonModel.of(residuals, jacobian, damping=2.0).solve(100.0)
    assert torch.allclose(damped.step, -torch.ones(3) * 2 / (2 + 2))  # (2 J^T J + 2 I) s = -2 J^T r
    broken = GaussNewtonModel.of(torch.tensor([1.0, math.nan, 0.0]), jacobian).solve(1.0)
    assert broken.reason == StopReason.NON_FINITE and float(broken.step.abs().sum()) == 0.0
    with pytest.raises(ValueError, match="damping must be finite and >= 0, got -1"):
        GaussNewtonModel.of(residuals, jacobian, damping=-1.0)
    with pytest.raises(ValueError, match=r"jacobian must be \(M, P\) and residuals \(M,\)"):
        GaussNewtonModel.of(torch.ones(4), jacobian)


def pinn_objective(communicator=None, problem="burgers", num_subdomains=4):
    from pinn_apts import PINNObjective
    from pinn_apts.pde.model import MLP
    from pinn_apts.pde.problems import get_problem
    from pinn_apts.pde.sampling import CollocationSampler, Curriculum

    problem = get_problem(problem)
    batch = CollocationSampler(problem, total_iterations=10, curriculum=Curriculum((60, 20, 10), (60, 10, 10), 0.3),
                               seed=0).batch(3)
    net = MLP(seed=0)
    return net, PINNObjective(net, problem, batch, num_subdomains, communicator)


@pytest.mark.parametrize("problem", ["heat", "burgers", "laplace"])
@pytest.mark.parametrize("part", [None, 1, "share"])  # the full objective, a replica's, a process's share
def test_the_residual_jacobian_is_torch_funcs_and_its_squares_the_loss(problem, part):
    from torch.nn.utils import parameters_to_vector

    from .conftest import FakeRank

    net, objective = pinn_objective(FakeRank(1, 2) if part == "share" else None, problem)
    flat = objective.compiled(None if part == "share" else part, curvature="gauss_newton", compiled=False)
    theta = parameters_to_vector(net.parameters()).detach()
    residuals, jacobian = flat.residuals_and_jacobian(theta)
    reference = torch.func.jacrev(lambda x: flat.functions._residuals(x, *flat.data))(theta)
    assert jacobian.shape == reference.shape == (len(residuals), len(theta))
    assert float((jacobian - reference).abs().max()) <= 1e-12 * float(reference.abs().max())
    assert float(residuals @ residuals) == pytest.approx(float(flat.loss(theta)), rel=1e-13)
    # 2 J^T r is the loss's gradient
    assert torch.allclose(2 * residuals @ jacobian, flat.loss_and_grad(theta)[1], rtol=0, atol=1e-12)


@pytest.mark.parametrize("problem", ["heat", "burgers"])
def test_stacked_jacobians_are_torch_funcs_row_by_row(problem):
    from torch.nn.utils import parameters_to_vector

    from pinn_apts.pde.sampling import CollocationSampler, Curriculum

    net, objective = pinn_objective(problem=problem, num_subdomains=4)
    # 62 interior points in 4 parts: two of 16 and two of 15, padded to 16
    objective.batch = CollocationSampler(objective.problem, total_iterations=10,
                                         curriculum=Curriculum((62, 20, 10), (62, 10, 10), 0.3), seed=0).batch(3)
    stacked = objective.compiled_stacked(curvature="gauss_newton", compiled=False)
    theta = parameters_to_vector(net.parameters()).detach()
    flat = theta + 0.05 * torch.randn(4, len(theta), generator=torch.Generator().manual_seed(0))
    residuals, jacobian, rows = stacked.stacked_residuals_and_jacobian(flat)
    edges = len(objective.batch.initial) + len(objective.batch.boundary)
    assert rows.sum(dim=1).tolist() == [16 + edges, 16 + edges, 15 + edges, 15 + edges]
    losses = stacked.loss(flat)
    for i in range(4):
        reference = torch.func.jacrev(lambda x: stacked.functions._stacked_residuals(x, *stacked.data))(flat)[i, :, i]
        assert float((jacobian[i] - reference).abs().max()) <= 1e-12 * float(reference.abs().max())
        assert not bool(jacobian[i][~rows[i]].any())  # the padding's rows are zero
        assert float(residuals[i] @ residuals[i]) == pytest.approx(float(losses[i]), rel=1e-13)
        # a replica's own rows are those of its sequential objective
        own_residuals, own_jacobian = objective.compiled(i, curvature="gauss_newton",
                                                         compiled=False).residuals_and_jacobian(flat[i])
        assert torch.allclose(residuals[i][rows[i]], own_residuals, rtol=0, atol=1e-14)
        assert torch.allclose(jacobian[i][rows[i]], own_jacobian, rtol=0, atol=1e-13)


def test_least_squares_settings_are_checked_with_clear_messages():
    from pinn_apts import APTSPINN, TrustRegionPINN

    with pytest.raises(ValueError, match="subproblem='exact' solves the Gauss–Newton model exactly: set "
                                         "curvature='gauss_newton' \\(got 'hessian'\\)"):
        TrustRegionPINN(problem="heat", subproblem="exact")
    with pytest.raises(ValueError, match="local_subproblem='exact' .* set local_curvature='gauss_newton'"):
        APTSPINN(problem="heat", local_subproblem="exact")
    with pytest.raises(ValueError, match="subproblem must be one of 'cg', 'exact', got 'dogleg'"):
        TrustRegionPINN(problem="heat", curvature="gauss_newton", subproblem="dogleg")
    with pytest.raises(ValueError, match="curvature must be one of 'hessian', 'gauss_newton', got 'bfgs'"):
        APTSPINN(problem="heat", curvature="bfgs")
    exact = dict(local_curvature="gauss_newton", local_subproblem="exact")
    with pytest.raises(ValueError, match="coherent=True .* use local_subproblem='cg' with it"):
        APTSPINN(problem="heat", coherent=True, **exact)


def test_exact_steps_need_an_objective_with_residuals():
    from pinn_apts import TrustRegion

    w = torch.zeros(3, requires_grad=True)
    opt = TrustRegion([w], curvature="gauss_newton", subproblem="exact")
    with pytest.raises(ValueError, match="curvature='gauss_newton' needs an objective that gives its residuals"):
        opt.step(lambda: (w - 1).square().sum())


@pytest.mark.parametrize("rows, cols", [(50, 30), (1850, 921), (450, 921)])
def test_gram_is_the_symmetric_product_of_the_column_blocks(rows, cols):
    from pinn_apts.core.least_squares import gram

    matrix = torch.randn(rows, cols, generator=torch.Generator().manual_seed(rows), dtype=torch.float64)
    product = gram(matrix)
    reference = matrix.T @ matrix
    assert torch.equal(product, product.T)  # exactly symmetric, unlike a plain product
    assert float((product - reference).abs().max()) <= 1e-13 * float(reference.abs().max())
    outer = matrix @ matrix.T
    assert float((gram(matrix.T) - outer).abs().max()) <= 1e-13 * float(outer.abs().max())
