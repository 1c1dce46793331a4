"""Stage I diagnostics along the start of a run: acceptance, replica coherence, replica step length.

Usage::

    python benchmarks/stage1_diagnostics.py PROBLEM ITERATIONS [OPTION=VALUE ...]
    python benchmarks/stage1_diagnostics.py burgers 150 coherent=True stage1_search=3

APTS D = 4, sequential replicas, eager, seed 0, on the schedule of a 2000-iteration run (the
paper's curriculum). For the first 20 iterations, up to half of them and the rest, prints the
Stage I acceptance, the median ``apts/replica_coherence`` (``|sum_d s_d|^2 / (D sum_d |s_d|^2)``:
1 when the replicas' corrections agree, 1/D = 0.25 when orthogonal) over all, accepted and
rejected iterations, and the median of the longest replica correction over ``Delta_k``.
``OPTION=VALUE`` pairs are APTS settings (Python literals), e.g. ``stage1_radius='own'``.
"""
import ast, sys, statistics, torch
from pinn_apts.core.apts import APTS
from pinn_apts.pde.model import MLP
from pinn_apts.pde.objective import PINNObjective
from pinn_apts.pde.problems import get_problem
from pinn_apts.pde.sampling import CollocationSampler
torch.set_num_threads(1); torch.set_default_dtype(torch.float64)
name, n = sys.argv[1], int(sys.argv[2])  # problem, outer iterations
problem = get_problem(name); sampler = CollocationSampler(problem, total_iterations=2000, seed=0)
options = {k: ast.literal_eval(v) for k, v in (a.split("=", 1) for a in sys.argv[3:])}
net = MLP(seed=0); opt = APTS(net.parameters(), num_subdomains=4, replicas="sequential", **options)
rows = []
for k in range(n):
    radius = opt.radius  # Delta_k
    opt.step(PINNObjective(net, problem, sampler.batch(k), 4))
    i = opt.last_step
    rows.append((i.replica_coherence, i.stage1_accepted, i.max_replica_norm / radius))
for lo, hi in ((0, min(20, n)), (min(20, n), max(20, n // 2)), (max(20, n // 2), n)):
    part = rows[lo:hi]
    if not part:
        continue
    acc = [r for r in part if r[1]]; rej = [r for r in part if not r[1]]
    print(f"{name} it {lo}-{hi - 1}: acceptance {len(acc) / len(part):.2f}, coherence median {statistics.median(r[0] for r in part):.3f} "
          f"(accepted {statistics.median(r[0] for r in acc) if acc else float('nan'):.3f}, rejected {statistics.median(r[0] for r in rej) if rej else float('nan'):.3f}), "
          f"max replica norm / radius median {statistics.median(r[2] for r in part):.3f}")
