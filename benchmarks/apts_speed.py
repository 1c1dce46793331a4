"""Seconds per APTS outer iteration, split by stage, and peak memory.

Usage::

    python benchmarks/apts_speed.py [--problem burgers] [--subdomains 4] [--iterations 40]
                                    [--warmup 5] [--threads 1] [--dtype float64]
                                    [--replicas sequential|batched] [--compile on|off]
                                    [--interior N] [--local-curvature hessian|gauss_newton]

Runs the Lightning-free core (``pinn_apts.core.apts.APTS``) on the paper's set-up for a run of
``warmup + iterations`` outer iterations: the curriculum's first 30% with (1000, 800, 50)
interior/initial/boundary points, then (1000, 100, 100), resampling every 10 iterations
(``--interior N`` replaces the 1000 interior points of both phases, to see how a step's cost
grows with the collocation set).
Prints the median wall time of Stage I, Stage II and the whole iteration in each phase,
the mean over the measured iterations, the warm-up's time (with ``--compile on``, the default,
it includes compiling the loss, gradient and Hessian-vector products: steady state is measured
after it) and the process's peak resident memory.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import time

import torch

from pinn_apts.core.apts import APTS
from pinn_apts.pde.model import MLP
from pinn_apts.pde.objective import PINNObjective
from pinn_apts.pde.problems import get_problem
from pinn_apts.pde.sampling import CollocationSampler, Curriculum


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--problem", default="burgers")
    parser.add_argument("--subdomains", type=int, default=4)
    parser.add_argument("--iterations", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--dtype", default="float64", choices=["float64", "float32"])
    parser.add_argument("--replicas", default="sequential", choices=["sequential", "batched"])
    parser.add_argument("--device", default="cpu", help="e.g. cpu or cuda")
    parser.add_argument("--interior", type=int, default=None, help="interior points (default: the paper's 1000)")
    parser.add_argument("--compile", default="on", choices=["on", "off"],
                        help="compiled loss, gradient and Hessian-vector products (default on)")
    parser.add_argument("--local-curvature", default="hessian", choices=["hessian", "gauss_newton"],
                        help="the replicas' subproblems' curvature (default the paper's Hessian)")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    torch.set_default_dtype(getattr(torch, args.dtype))
    problem = get_problem(args.problem)
    total = args.warmup + args.iterations
    curriculum = Curriculum()
    if args.interior is not None:
        curriculum = Curriculum((args.interior, *curriculum.early[1:]), (args.interior, *curriculum.late[1:]),
                                curriculum.fraction)
    sampler = CollocationSampler(problem, total_iterations=total, curriculum=curriculum, seed=0)
    switch = sampler.curriculum.switch_iteration(total)
    device = torch.device(args.device)
    net = MLP(seed=0).to(device)
    opt = APTS(net.parameters(), num_subdomains=args.subdomains, replicas=args.replicas, compile=args.compile == "on",
               local_curvature=args.local_curvature)
    stage1, stage2, whole, phase = [], [], [], []
    warmup_start = time.perf_counter()
    for k in range(total):
        if k == args.warmup:
            warmup_seconds = time.perf_counter() - warmup_start
        batch = sampler.batch(k).to(device=device, dtype=torch.get_default_dtype())
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        opt.step(PINNObjective(net, problem, batch, args.subdomains))
        if device.type == "cuda":
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - start
        if k >= args.warmup:
            info = opt.last_step
            stage1.append(info.stage1_seconds)
            stage2.append(info.stage2_seconds)
            whole.append(elapsed)
            phase.append("early" if k < switch else "late")
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"APTS D={args.subdomains} ({args.replicas}, compile {args.compile}, {args.local_curvature}) on {args.problem}, {args.device}, "
          f"{args.dtype}, {args.threads} thread(s), {args.iterations} iterations after {args.warmup} warm-up "
          f"({warmup_seconds:.1f} s)")
    for label, sizes in (("early", sampler.curriculum.early), ("late", sampler.curriculum.late)):
        picked = [i for i, p in enumerate(phase) if p == label]
        if not picked:
            continue
        print(f"  {label} phase {sizes}, {len(picked)} iterations:")
        for name, values in (("stage I", stage1), ("stage II", stage2), ("iteration", whole)):
            print(f"    {name:<10} median {statistics.median([values[i] for i in picked]):.4f} s")
    print(f"  whole run: mean {statistics.fmean(whole):.4f} s per iteration")
    record = opt.state["apts"]
    print(f"  stage I acceptance {opt.acceptance_rate:.3f}, mean stage II tries "
          f"{record['stage2_tries'] / record['iterations']:.2f}")
    print(f"  peak resident memory {peak_mib:.0f} MiB")
    if device.type == "cuda":
        print(f"  peak GPU memory {torch.cuda.max_memory_allocated() / 2**20:.0f} MiB")


if __name__ == "__main__":
    main()
