"""Per-rank balance of APTS Stage I with W = 1 and W = 2 processes (gloo, CPU).

    python benchmarks/rank_balance.py [--subdomains 4] [--iterations 12]

For each rank: the median Stage I wall time, the total time spent in its replicas' local
solves and their CG iterations (Burgers, early curriculum, float64, one thread per process).
A well-balanced W = 2 run halves the local-solve time on each rank.
"""

import argparse
import os
import statistics
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import pinn_apts.core.apts as A
from pinn_apts.core.apts import APTS
from pinn_apts.core.distributed import default_communicator
from pinn_apts.pde.model import MLP
from pinn_apts.pde.objective import PINNObjective
from pinn_apts.pde.problems import get_problem
from pinn_apts.pde.sampling import CollocationSampler

def measure(rank, world, D, iterations, port, q):
    torch.set_num_threads(1); torch.set_default_dtype(torch.float64)
    if world > 1:
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)); dist.init_process_group("gloo", rank=rank, world_size=world)
    orig = A.local_solves; rec = []
    def timed(*a, **k):
        t = time.perf_counter(); r = orig(*a, **k); rec.append((time.perf_counter() - t, r.cg_iterations)); return r
    A.local_solves = timed
    p = get_problem("burgers"); s = CollocationSampler(p, 200, seed=0); net = MLP(seed=0); comm = default_communicator()
    opt = APTS(net.parameters(), num_subdomains=D, communicator=comm)
    st1 = []
    for k in range(iterations + 2):
        opt.step(PINNObjective(net, p, s.batch(k), D, comm))
        st1.append(opt.last_step.stage1_seconds)
    q.put((rank, round(statistics.median(st1[2:]), 3), round(sum(t for t, _ in rec[2:]), 2), sum(c for _, c in rec[2:])))
    if world > 1: dist.destroy_process_group()

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--subdomains", type=int, default=4)
    parser.add_argument("--iterations", type=int, default=12)
    args = parser.parse_args()
    ctx = mp.get_context("spawn")
    for world in (1, 2):
        port = 29700 + world + os.getpid() % 500
        q = ctx.Queue(); ps = [ctx.Process(target=measure, args=(r, world, args.subdomains, args.iterations, port, q)) for r in range(world)]
        [p.start() for p in ps]; out = [q.get() for _ in ps]; [p.join() for p in ps]
        print("W", world, "(rank, median stage1 s, total local-solve s, local CG its):", sorted(out))
