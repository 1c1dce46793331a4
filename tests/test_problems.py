import math

import numpy as np
import pytest
import torch

from pinn_apts.pde.jet import AutogradJet
from pinn_apts.pde.problems import (
    Burgers,
    Heat,
    Laplace,
    PDEProblem,
    available_problems,
    get_problem,
)


def _grid(problem, n=41):
    return problem.evaluation_grid(n, n)


@pytest.mark.parametrize("name", ["heat", "laplace"])
def test_exact_solution_satisfies_pde(name):
    problem = get_problem(name)
    points = problem.sample_interior(200, np.random.default_rng(0))
    residual = problem.residual(AutogradJet(problem.exact_solution, points))
    assert residual.abs().max() < 1e-10


def test_heat_initial_and_boundary_data():
    problem = Heat(kappa=0.4)
    x = torch.linspace(0, 1, 11, dtype=torch.float64)
    at_t0 = problem.exact_solution(torch.stack([torch.zeros_like(x), x], 1))
    assert torch.allclose(at_t0.squeeze(1), torch.sin(math.pi * x), atol=1e-15)
    edges = problem.boundary_points(50)
    assert problem.boundary_values(edges).abs().max() < 1e-12
    t = torch.tensor([[0.7, 0.3]], dtype=torch.float64)
    assert problem.exact_solution(t).item() == pytest.approx(math.exp(-0.4 * math.pi**2 * 0.7) * math.sin(0.3 * math.pi))


def test_laplace_boundary_data():
    problem = Laplace()
    initial = problem.initial_points(20)
    assert torch.all(initial[:, 0] == 0) and problem.initial_values(initial).abs().max() < 1e-15
    boundary = problem.boundary_points(100)
    top = boundary[boundary[:, 0] == 1.0]
    assert torch.allclose(problem.boundary_values(top).squeeze(1), torch.sin(math.pi * top[:, 1]), atol=1e-14)
    sides = boundary[(boundary[:, 1] == 0) | (boundary[:, 1] == 1)]
    assert problem.boundary_values(sides).abs().max() < 1e-14
    assert len(boundary) == 100


def test_burgers_quadrature_converged_to_1e8():
    grid = _grid(Burgers(), 101)
    # also points right beside the shock at x = 0, late in time where it is steepest
    x = torch.tensor([1e-4, -1e-4, 1e-3, -2e-3, 1e-2], dtype=torch.float64)
    near_shock = torch.stack([torch.ones_like(x), x], 1)
    points = torch.cat([grid, near_shock])
    low = Burgers(quadrature_order=200).exact_solution(points)
    high = Burgers(quadrature_order=800).exact_solution(points)
    assert (low - high).abs().max() < 1e-8


def test_burgers_initial_condition_symmetry_and_centre():
    problem = Burgers()
    x = torch.linspace(-1, 1, 51, dtype=torch.float64)
    at_t0 = problem.exact_solution(torch.stack([torch.zeros_like(x), x], 1)).squeeze(1)
    assert torch.allclose(at_t0, -torch.sin(math.pi * x), atol=1e-12)
    t = torch.linspace(0.05, 1, 20, dtype=torch.float64)
    centre = problem.exact_solution(torch.stack([t, torch.zeros_like(t)], 1))
    assert centre.abs().max() < 1e-10
    pts = problem.sample_interior(300, np.random.default_rng(1))
    mirrored = torch.stack([pts[:, 0], -pts[:, 1]], 1)
    assert torch.allclose(problem.exact_solution(pts), -problem.exact_solution(mirrored), atol=1e-10)
    edges = problem.boundary_points(50)
    assert problem.boundary_values(edges).abs().max() < 1e-10


def test_burgers_exact_solution_satisfies_pde_away_from_shock():
    problem = Burgers()
    h = 1e-4
    t = torch.tensor([0.2, 0.5, 0.9], dtype=torch.float64)
    x = torch.tensor([0.5, -0.4, 0.7], dtype=torch.float64)

    def u(dt, dx):
        return problem.exact_solution(torch.stack([t + dt, x + dx], 1)).squeeze(1)

    u0 = u(0, 0)
    u_t = (u(h, 0) - u(-h, 0)) / (2 * h)
    u_x = (u(0, h) - u(0, -h)) / (2 * h)
    u_xx = (u(0, h) - 2 * u0 + u(0, -h)) / h**2
    residual = u_t + u0 * u_x - problem.nu * u_xx
    assert residual.abs().max() < 1e-5


def test_burgers_shock_is_steep():
    problem = Burgers()
    pts = torch.tensor([[1.0, -0.01], [1.0, 0.01]], dtype=torch.float64)
    left, right = problem.exact_solution(pts).squeeze(1)
    assert left > 0.5 and right < -0.5  # a jump of more than 1 over 0.02


def test_sampling_in_domain_and_grids_on_edges():
    for name in available_problems():
        problem = get_problem(name)
        (lo0, hi0), (lo1, hi1) = problem.bounds
        pts = problem.sample_interior(500, np.random.default_rng(0))
        assert pts.dtype == torch.float64 and pts.shape == (500, 2)
        assert (pts[:, 0] > lo0).all() and (pts[:, 0] <= hi0).all()
        assert (pts[:, 1] >= lo1).all() and (pts[:, 1] <= hi1).all()
        initial = problem.initial_points(17)
        assert initial.shape == (17, 2) and (initial[:, 0] == lo0).all()
        assert (initial[:, 1] > lo1).all() and (initial[:, 1] < hi1).all()
        assert problem.boundary_points(50).shape == (50, 2)


def test_registry_and_bad_input():
    assert set(available_problems()) >= {"heat", "burgers", "laplace"}
    assert get_problem("HEAT", kappa=0.1).kappa == 0.1
    with pytest.raises(ValueError, match="unknown problem 'wave'.*burgers"):
        get_problem("wave")
    with pytest.raises(ValueError, match="its coefficients: kappa"):
        get_problem("heat", nu=0.1)
    with pytest.raises(ValueError, match="kappa must be positive"):
        Heat(kappa=-1)
    with pytest.raises(ValueError, match="nu must be a finite number"):
        Burgers(nu=float("nan"))
    with pytest.raises(ValueError, match="n_bc must be an integer >= 3"):
        Laplace().boundary_points(2)
    with pytest.raises(ValueError, match="n_coll must be an integer >= 1"):
        Heat().sample_interior(0, np.random.default_rng(0))


def test_problem_without_exact_solution():
    class NoExact(PDEProblem):
        name = "no-exact"

        def __init__(self):
            super().__init__(bounds=((0.0, 1.0), (0.0, 1.0)))

        def residual(self, jet):
            return jet.u

    problem = NoExact()
    assert not problem.has_exact_solution
    with pytest.raises(NotImplementedError, match="no exact solution"):
        problem.initial_values(problem.initial_points(3))
    with pytest.raises(ValueError, match=r"bounds\[0\] must satisfy low < high"):
        PDEProblem.__init__(problem, bounds=((1.0, 0.0), (0.0, 1.0)))
