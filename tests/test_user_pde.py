"""The README's example: a user-defined PDE in a few lines, trained with every optimizer."""

import math

import pytest
import torch

from pinn_apts import AdamPINN, LBFGSPINN, PDEProblem, PINNDataModule, TrustRegionPINN, get_problem, register_problem
from pinn_apts.problems import check_finite

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
