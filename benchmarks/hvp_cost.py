"""How the cost of a trust-region step's pieces grows with the collocation set: eager against compiled.

Usage::

    python benchmarks/hvp_cost.py [--problem burgers] [--interior 1000 10000 100000] [--threads 1]
                                  [--device cpu] [--repeats 5]

For each interior size ``N`` (with the late curriculum phase's 100 initial and 100 boundary
points) and the full loss of the paper's network, prints the median seconds of: the loss; the
loss with the gradient's graph (eager: what a trust-region step builds once, ``create_graph``;
compiled: ``loss_and_grad``); one Hessian-vector product (eager: a double backward through that
graph; compiled: ``hvp``), and the process's peak memory so far.  A trust-region step costs one
gradient, about 4 (local) to 10 (global) products and a trial loss per try; an APTS iteration on
the paper's Burgers set-up does about 48 local and 10 global products (``benchmarks/apts_speed.py``).
The compiled functions are compiled once (dynamic shapes), before the first size is timed.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import time

import torch

from pinn_apts.core.trust_region import flat_hvp
from pinn_apts.pde.model import MLP
from pinn_apts.pde.objective import PINNObjective
from pinn_apts.pde.problems import get_problem
from pinn_apts.pde.sampling import CollocationSampler, Curriculum


def median_seconds(fn, repeats: int, device: torch.device) -> float:
    fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--problem", default="burgers")
    parser.add_argument("--interior", type=int, nargs="+", default=[1000, 10000, 100000])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.set_default_dtype(torch.float64)
    device = torch.device(args.device)
    problem = get_problem(args.problem)
    net = MLP(seed=0).to(device)
    params = list(net.parameters())
    theta = torch.nn.utils.parameters_to_vector(params).detach()
    v = torch.randn(theta.shape, generator=torch.Generator().manual_seed(0)).to(device)
    print(f"{args.problem}, full loss, {device}, float64, {args.threads} thread(s), torch {torch.__version__}: "
          f"median seconds of {args.repeats}\n")
    print("| interior N | loss eager | loss compiled | gradient (graph) eager | loss+gradient compiled | "
          "HVP eager | HVP compiled | HVP speed-up | peak RSS MiB |")
    print("|---|---|---|---|---|---|---|---|---|")
    for n in args.interior:
        sampler = CollocationSampler(problem, total_iterations=10, seed=0,
                                     curriculum=Curriculum((n, 100, 100), (n, 100, 100), 0.3))
        batch = sampler.batch(0).to(device=device, dtype=torch.float64)
        objective = PINNObjective(net, problem, batch)
        compiled = objective.compiled()
        compiled.hvp(theta, v)  # compile (the first size) before timing

        def graph():
            loss = objective.full()
            return torch.autograd.grad(loss, params, create_graph=True)

        with torch.no_grad():
            loss_eager = median_seconds(objective.full, args.repeats, device)
        grad_eager = median_seconds(graph, args.repeats, device)
        hvp = flat_hvp(graph(), params)
        hvp_eager = median_seconds(lambda: hvp(v), args.repeats, device)
        loss_compiled = median_seconds(lambda: compiled.loss(theta), args.repeats, device)
        grad_compiled = median_seconds(lambda: compiled.loss_and_grad(theta), args.repeats, device)
        hvp_compiled = median_seconds(lambda: compiled.hvp(theta, v), args.repeats, device)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(f"| {n} | {loss_eager:.4f} | {loss_compiled:.4f} | {grad_eager:.4f} | {grad_compiled:.4f} | "
              f"{hvp_eager:.4f} | {hvp_compiled:.4f} | {hvp_eager / hvp_compiled:.2f}x | {peak:.0f} |", flush=True)


if __name__ == "__main__":
    main()
