"""What exact Gauss–Newton steps cost along a run: factorizations and seconds per outer iteration.

    python benchmarks/exact_steps.py                                   # Heat and Burgers, TR and APTS D = 4
    python benchmarks/exact_steps.py --problems heat --methods tr --iterations 200

Least-squares TR and APTS (``configs/least_squares``: exact steps in both stages, damping 0) from
seed 0, with the package's sampler and curriculum (switch at 30% of ``--iterations``), float64, one
thread, on the Lightning-free core.  Prints per method the root find's factorizations (or
eigenbasis iterations) per solve-bearing step: TR's or Stage II's per outer iteration, and the
replicas' per local step; the median seconds per outer iteration (first left out); and the final
loss.  Run it from two checkouts side by side (``PYTHONPATH=<tree>``) to compare versions.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from pinn_apts import PINNObjective, TrustRegion
from pinn_apts.core.apts import APTS
from pinn_apts.pde.model import MLP
from pinn_apts.pde.problems import get_problem
from pinn_apts.pde.sampling import CollocationSampler

EXACT = dict(damping=0.0, curvature="gauss_newton", subproblem="exact")
LOCAL_EXACT = dict(local_curvature="gauss_newton", local_subproblem="exact")


def run(problem_name: str, method: str, iterations: int) -> str:
    problem = get_problem(problem_name)
    sampler = CollocationSampler(problem, total_iterations=iterations, seed=0)
    net = MLP(seed=0)
    if method == "tr":
        optimizer = TrustRegion(net.parameters(), **EXACT)
        subdomains = 1
    else:
        subdomains = int(method.removeprefix("apts_d"))
        optimizer = APTS(net.parameters(), num_subdomains=subdomains, **EXACT, **LOCAL_EXACT)
    seconds, global_solves, local_solves, local_steps = [], 0, 0, 0
    for k in range(iterations):
        objective = PINNObjective(net, problem, sampler.batch(k), subdomains)
        start = time.perf_counter()
        if method == "tr":
            optimizer.step(objective, objective=objective)
            global_solves += optimizer.last_step.cg_iterations
        else:
            optimizer.step(objective)
            info = optimizer.last_step
            global_solves += info.stage2.cg_iterations
            local_solves += info.local_cg_iterations
            local_steps += info.local_steps
        seconds.append(time.perf_counter() - start)
    step = optimizer.last_step
    loss = step.new_loss
    local = f"{local_solves / local_steps:.2f}" if local_steps else "-"
    return (f"| {problem_name} | {method} | {global_solves / iterations:.2f} | {local} "
            f"| {statistics.median(seconds[1:]):.3f} | {loss:.3e} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--problems", nargs="+", default=["heat", "burgers"])
    parser.add_argument("--methods", nargs="+", default=["tr", "apts_d4"])
    parser.add_argument("--iterations", type=int, default=60)
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.set_default_dtype(torch.float64)
    print(f"exact Gauss-Newton steps, {args.iterations} outer iterations from seed 0, float64, one thread")
    print("| PDE | method | factorizations per TR / Stage II step | per local step | s per iteration (median) "
          "| final loss |")
    print("|---|---|---|---|---|---|")
    for problem in args.problems:
        for method in args.methods:
            print(run(problem, method, args.iterations), flush=True)


if __name__ == "__main__":
    main()
