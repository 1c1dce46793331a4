"""The example of docs/extending.md: a user-defined PDE in a few lines, trained with every optimizer."""

import math

import pytest
import torch

from pinn_apts import (
    APTSPINN,
    LBFGSPINN,
    AdamPINN,
    PDEProblem,
    PINNDataModule,
    TrustRegionPINN,
    get_problem,
    register_problem,
)
from pinn_apts.pde.problems import check_finite, resolve_problem

from .conftest import fast_trainer


@register_problem
class Advection(PDEProblem):
    """u_t + c u_x = 0 on (0, 1] x [0, 1], exact u = sin(2 pi (x - c t))."""

    name = "advection"

    def __init__(self, c: float = 0.5) -> None:
        super().__init__(bounds=((0.0, 1.0), (0.0, 1.0)))
        self.c = check_finite("c", c)

    def residual(self, jet):
        return jet.d(0) + self.c * jet.d(1)  # u_t + c u_x

    def exact_solution(self, points):
        t, x = points[:, 0:1], points[:, 1:2]
        return torch.sin(2 * math.pi * (x - self.c * t))


def test_user_problem_is_registered():
    assert isinstance(get_problem("advection", c=0.25), Advection)
    assert get_problem("advection", c=0.25).c == 0.25


@pytest.mark.parametrize(
    "make_module, steps",
    [
        (lambda p: AdamPINN(problem=p), 60),
        (lambda p: LBFGSPINN(problem=p, line_search_fn="strong_wolfe"), 8),
        (lambda p: TrustRegionPINN(problem=p), 40),
    ],
)
def test_user_problem_trains(make_module, steps):
    problem = Advection()
    module = make_module(problem)
    before = float(module.solution_errors()["error/rel_l2"])
    fast_trainer(steps).fit(module, PINNDataModule(problem, early_sizes=(500, 200, 50), late_sizes=(500, 100, 50)))
    assert float(module.solution_errors()["error/rel_l2"]) < 0.7 * before


@register_problem
class Poisson(PDEProblem):
    """-(u_xx + u_yy) = 2 pi^2 sin(pi x) sin(pi y) on [0, 1]^2, exact u = sin(pi x) sin(pi y): a steady problem."""

    name = "poisson"
    steady = True  # columns (y, x); Dirichlet data on all four edges

    def __init__(self, amplitude: float = 1.0) -> None:
        super().__init__(bounds=((0.0, 1.0), (0.0, 1.0)))
        self.amplitude = check_finite("amplitude", amplitude)

    def residual(self, jet):
        y, x = jet.coordinate(0), jet.coordinate(1)  # a source term: the coordinates come from the jet
        source = 2 * math.pi**2 * self.amplitude * torch.sin(math.pi * x) * torch.sin(math.pi * y)
        return jet.d2(0) + jet.d2(1) + source

    def exact_solution(self, points):
        y, x = points[:, 0:1], points[:, 1:2]
        return self.amplitude * torch.sin(math.pi * x) * torch.sin(math.pi * y)


class PointsIndexedByHand(Poisson):
    """The same PDE with the source written on jet.points[:, i:i+1]: wrong under batched replicas."""

    def residual(self, jet):
        y, x = jet.points[:, 0:1], jet.points[:, 1:2]
        return jet.d2(0) + jet.d2(1) + 2 * math.pi**2 * torch.sin(math.pi * x) * torch.sin(math.pi * y)


def test_steady_problem_has_dirichlet_data_on_every_edge():
    problem = Poisson()
    assert problem.input_names == ("y", "x") and problem.boundary_edges == 3
    initial, boundary = problem.initial_points(10), problem.boundary_points(30)
    assert torch.all(initial[:, 0] == 0.0)
    far = boundary[boundary[:, 0] == 1.0]  # the far edge y = 1, and the corners of the sides
    assert len(far) == 12 and len(far[(far[:, 1] > 0) & (far[:, 1] < 1)]) == 8
    assert (boundary[:, 1] == 0.0).sum() == 11 and (boundary[:, 1] == 1.0).sum() == 11
    assert problem.boundary_values(boundary).abs().max() < 1e-12


def _apts_run(problem, replicas, steps=6):
    module = APTSPINN(problem=problem, num_subdomains=4, replicas=replicas, seed=3)
    data = PINNDataModule(problem, seed=3, early_sizes=(300, 60, 30), late_sizes=(300, 40, 45))
    fast_trainer(steps).fit(module, data)
    return module


@pytest.mark.slow
def test_source_term_from_the_jet_trains_alike_with_batched_and_sequential_replicas():
    batched, sequential = _apts_run(Poisson(), "batched"), _apts_run(Poisson(), "sequential")
    for a, b in zip(batched.parameters(), sequential.parameters()):
        assert torch.allclose(a, b, rtol=0, atol=1e-10)
    start = APTSPINN(problem=Poisson(), seed=3)
    assert float(batched.solution_errors()["error/rel_l2"]) < 0.7 * float(start.solution_errors()["error/rel_l2"])


def test_residual_of_another_shape_is_a_clear_error():
    _apts_run(PointsIndexedByHand(), "sequential", steps=1)  # (N, 2) points: fine
    with pytest.raises(ValueError, match=r"PointsIndexedByHand.residual must return a tensor shaped like jet.u, "
                                         r"\(4, 75, 1\), got \(4, 75, 2\).*jet.coordinate\(i\)"):
        _apts_run(PointsIndexedByHand(), "batched", steps=1)


def test_user_problem_is_stored_as_data():
    spec = Advection(c=0.25).spec()
    assert spec == {"class_path": f"{__name__}.Advection", "init_args": {"c": 0.25}}
    assert resolve_problem(spec) == Advection(c=0.25) != Advection(c=0.5)
    with pytest.raises(ValueError, match="cannot import the problem class 'nowhere.Wave'"):
        resolve_problem({"class_path": "nowhere.Wave", "init_args": {}})
