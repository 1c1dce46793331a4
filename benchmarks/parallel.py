"""Stage I and whole-iteration wall time of APTS for D x W x {sequential, batched}.

Usage::

    python benchmarks/parallel.py [--problem burgers] [--subdomains 1 2 4 8] [--processes 1 2]
                                  [--iterations 8] [--warmup 2] [--device cpu] [--least-squares]
                                  [--phase early]

Every configuration runs the Lightning-free core (``pinn_apts.core.apts.APTS``) on the same
points (Burgers, the paper's early-curriculum sizes: 1000 interior, 800 initial, 50 boundary
points, or with ``--phase late`` 1000, 100, 100; float64, one thread per process), with ``W`` processes joined by a gloo (CPU) or
NCCL (GPU) process group, exactly as Lightning's DDP strategy sets it up for the
``APTSPINN`` module.  ``--least-squares``: both stages minimize the Gauss–Newton model exactly
(``configs/least_squares``), instead of the paper's Steihaug CG on the Hessian.  Prints a Markdown table of medians over the measured iterations and
ratios to the ``W = 1`` sequential run of the same ``D``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from pinn_apts.core.apts import APTS
from pinn_apts.core.distributed import default_communicator
from pinn_apts.pde.model import MLP
from pinn_apts.pde.objective import PINNObjective
from pinn_apts.pde.problems import get_problem
from pinn_apts.pde.sampling import CollocationSampler, Curriculum

#: the least-squares configuration's settings (``configs/least_squares/*_apts_d*.yaml``)
LEAST_SQUARES = dict(damping=0.0, curvature="gauss_newton", subproblem="exact", local_curvature="gauss_newton",
                     local_subproblem="exact")


def measure(rank: int, world: int, args: argparse.Namespace, subdomains: int, replicas: str, port: int, out) -> None:
    torch.set_num_threads(1)
    torch.set_default_dtype(torch.float64)
    device = torch.device(args.device if args.device == "cpu" else f"cuda:{rank}")
    if world > 1:
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        backend = "gloo" if device.type == "cpu" else "nccl"
        dist.init_process_group(backend, rank=rank, world_size=world)
    problem = get_problem(args.problem)
    total = args.warmup + args.iterations
    # one curriculum phase throughout: the switch far after the run, or at its start
    curriculum = Curriculum(fraction=1.0 if args.phase == "early" else 0.0)
    sampler = CollocationSampler(problem, total_iterations=10 * total, curriculum=curriculum, seed=0)
    net = MLP(seed=0).to(device)
    comm = default_communicator()
    least_squares = LEAST_SQUARES if args.least_squares else {}
    opt = APTS(net.parameters(), num_subdomains=subdomains, replicas=replicas, communicator=comm, **least_squares)
    stage1, whole = [], []
    for k in range(total):
        batch = sampler.batch(k).to(device=device)
        objective = PINNObjective(net, problem, batch, subdomains, comm)
        if world > 1:
            dist.barrier()
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        opt.step(objective)
        if device.type == "cuda":
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - start
        if k >= args.warmup:
            stage1.append(opt.last_step.stage1_seconds)
            whole.append(elapsed)
    if rank == 0:
        out.put((statistics.median(stage1), statistics.median(whole)))
    if world > 1:
        dist.destroy_process_group()


def run(world: int, args: argparse.Namespace, subdomains: int, replicas: str, port: int) -> tuple[float, float]:
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    procs = [ctx.Process(target=measure, args=(r, world, args, subdomains, replicas, port, out)) for r in range(world)]
    for p in procs:
        p.start()
    result = out.get()
    for p in procs:
        p.join()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--problem", default="burgers")
    parser.add_argument("--subdomains", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--iterations", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--least-squares", action="store_true", help="exact Gauss–Newton steps in both stages")
    parser.add_argument("--phase", choices=["early", "late"], default="early", help="the curriculum's sizes")
    args = parser.parse_args()
    steps = "exact Gauss-Newton steps" if args.least_squares else "the paper's steps"
    print(f"APTS on {args.problem} ({steps}, {args.phase} curriculum sizes), {args.device}, float64, one thread per process, "
          f"median of {args.iterations} iterations after {args.warmup} warm-up; "
          "ratio = time of (D, W=1, sequential) / time of the row")
    print("| D | W | replicas | Stage I (s) | iteration (s) | Stage I speed-up | iteration speed-up |")
    print("|---|---|---|---|---|---|---|")
    port = 29500 + os.getpid() % 1000
    for subdomains in args.subdomains:
        base = None
        for world in args.processes:
            if subdomains % world:
                continue
            for replicas in ("sequential", "batched"):
                port += 1
                stage1, whole = run(world, args, subdomains, replicas, port)
                base = base or (stage1, whole)
                print(f"| {subdomains} | {world} | {replicas} | {stage1:.3f} | {whole:.3f} "
                      f"| {base[0] / stage1:.2f} | {base[1] / whole:.2f} |", flush=True)


if __name__ == "__main__":
    main()
