"""What one least-squares trust-region step costs: the residual Jacobian, its decomposition, a solve.

    python benchmarks/least_squares_cost.py                  # Burgers, Heat, Laplace, both curriculum phases
    python benchmarks/least_squares_cost.py --problems burgers --repeats 20

For the full objective (every point) and one replica's local objective (D = 4) at the paper's
point counts, float64, one thread: the seconds of ``residuals_and_jacobian`` (per-point reverse
mode, ``vmap`` of ``grad``), of ``GaussNewtonModel.of`` (``J^T J`` where there are more residuals
than parameters, else the eigendecomposition of ``J J^T``), of the model and its first ``solve`` at
``--radius`` (the Cholesky factorizations of the secular equation's root find, or the root in the
eigenbasis), and
for comparison one Hessian-vector product (``torch.func``, eager) and, with ``--jacrev``,
``torch.func.jacrev`` of the residual vector (once: it is slow). Median over ``--repeats``.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch.nn.utils import parameters_to_vector

from pinn_apts import PINNObjective
from pinn_apts.core.least_squares import GaussNewtonModel
from pinn_apts.pde.model import MLP
from pinn_apts.pde.problems import get_problem
from pinn_apts.pde.sampling import CollocationSampler, Curriculum


def seconds(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--problems", nargs="+", default=["burgers", "heat", "laplace"])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--jacrev", action="store_true", help="also time torch.func.jacrev of the residual vector")
    parser.add_argument("--radius", type=float, default=0.5, help="the radius of the timed solve")
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.set_default_dtype(torch.float64)
    curriculum = Curriculum((1000, 800, 50), (1000, 100, 100), 0.3)
    print("| problem | phase | objective | rows x P | Jacobian ms | model ms | model and one solve ms | HVP ms |"
          + (" jacrev ms |" if args.jacrev else ""))
    print("|---|---|---|---|---|---|---|---|" + ("---|" if args.jacrev else ""))
    for name in args.problems:
        problem = get_problem(name)
        sampler = CollocationSampler(problem, total_iterations=10, curriculum=curriculum, seed=0)
        for phase, iteration in (("early", 0), ("late", 9)):
            net = MLP(seed=0)
            objective = PINNObjective(net, problem, sampler.batch(iteration), num_subdomains=4)
            theta = parameters_to_vector(net.parameters()).detach()
            v = torch.randn_like(theta)
            for label, part in (("full", None), ("replica", 0)):
                flat = objective.compiled(part, curvature="gauss_newton", compiled=False)
                hessian = objective.compiled(part, compiled=False)
                residuals, jacobian = flat.residuals_and_jacobian(theta)
                radius = args.radius  # on the boundary of the region: a root find

                row = [seconds(lambda: flat.residuals_and_jacobian(theta), args.repeats),
                       seconds(lambda: GaussNewtonModel.of(residuals, jacobian), args.repeats),
                       seconds(lambda: GaussNewtonModel.of(residuals, jacobian).solve(radius), args.repeats),
                       seconds(lambda: hessian.hvp(theta, v), args.repeats)]
                if args.jacrev:
                    of = lambda x: flat.functions._residuals(x, *flat.data)  # noqa: E731
                    row.append(seconds(lambda: torch.func.jacrev(of)(theta), 1))
                print(f"| {name} | {phase} | {label} | {jacobian.shape[0]} x {jacobian.shape[1]} | "
                      + " | ".join(f"{1000 * t:.1f}" for t in row) + " |", flush=True)


if __name__ == "__main__":
    main()
