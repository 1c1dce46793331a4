"""Stage I diagnostics along the start of a run: acceptance, replica coherence, replica step length.

Usage::

    python benchmarks/stage1_diagnostics.py PROBLEM ITERATIONS [OPTION=VALUE ...]
    python benchmarks/stage1_diagnostics.py burgers 150 coherent=True stage1_search=3

APTS D = 4, sequential replicas, eager, seed 0, on the schedule of a 2000-iteration run (the
paper's curriculum). For the first 20 iterations, up to half of them and the rest, prints the
Stage I acceptance, the median ``apts/replica_coherence`` (``|sum_d s_d|^2 / (D sum_d |s_d|^2)``:
1 when the replicas' corrections agree, 1/D = 0.25 when orthogonal) over all, accepted and
rejected iterations, and the median of the longest replica correction over ``Delta_k``.
``OPTION=VALUE`` pairs are APTS settings (Python literals), e.g. ``stage1_radius='own'``;
``terms=True`` also solves Stage I once more before each iteration to evaluate the three loss
terms at ``theta_k + s_bar`` (the step the iteration then tests), and prints, over the rejected
trial steps, how often each term rose and the median change of each over ``L(theta_k)``.
"""
import ast, sys, statistics, torch
from torch.nn.utils import parameters_to_vector, vector_to_parameters
from pinn_apts.core.apts import APTS
from pinn_apts.core.replicas import local_solves
from pinn_apts.pde.loss import pinn_loss
from pinn_apts.pde.model import MLP
from pinn_apts.pde.objective import PINNObjective
from pinn_apts.pde.problems import get_problem
from pinn_apts.pde.sampling import CollocationSampler
torch.set_num_threads(1); torch.set_default_dtype(torch.float64)
name, n = sys.argv[1], int(sys.argv[2])  # problem, outer iterations
problem = get_problem(name); sampler = CollocationSampler(problem, total_iterations=2000, seed=0)
options = {k: ast.literal_eval(v) for k, v in (a.split("=", 1) for a in sys.argv[3:])}
terms = options.pop("terms", False)
net = MLP(seed=0); opt = APTS(net.parameters(), num_subdomains=4, replicas="sequential", **options)
rows, changes = [], []


def term_changes(objective):
    """(interior, initial, boundary) at theta_k + s_bar minus at theta_k, over L(theta_k)."""
    params, config = list(net.parameters()), opt.config
    theta = parameters_to_vector(params).detach().clone()
    with torch.no_grad():
        before = pinn_loss(net, problem, objective.batch)
    solved = local_solves(params, objective.local, range(4), opt.radius, config.trust_region, config.local_steps,
                          full_gradient=opt._full_gradient(objective.full(), params, theta, None) if config.coherent else None)
    with torch.no_grad():
        vector_to_parameters(theta + solved.correction_sum / 4, params)
        after = pinn_loss(net, problem, objective.batch)
        vector_to_parameters(theta, params)
    return [float(a - b) / float(before.total) for a, b in zip(after[1:], before[1:])]


for k in range(n):
    radius = opt.radius  # Delta_k
    objective = PINNObjective(net, problem, sampler.batch(k), 4)
    change = term_changes(objective) if terms else None
    opt.step(objective)
    i = opt.last_step
    rows.append((i.replica_coherence, i.stage1_accepted, i.max_replica_norm / radius))
    if change is not None and not i.stage1_accepted:
        changes.append(change)
for lo, hi in ((0, min(20, n)), (min(20, n), max(20, n // 2)), (max(20, n // 2), n)):
    part = rows[lo:hi]
    if not part:
        continue
    acc = [r for r in part if r[1]]; rej = [r for r in part if not r[1]]
    print(f"{name} it {lo}-{hi - 1}: acceptance {len(acc) / len(part):.2f}, coherence median {statistics.median(r[0] for r in part):.3f} "
          f"(accepted {statistics.median(r[0] for r in acc) if acc else float('nan'):.3f}, rejected {statistics.median(r[0] for r in rej) if rej else float('nan'):.3f}), "
          f"max replica norm / radius median {statistics.median(r[2] for r in part):.3f}")
if changes:
    for t, term in enumerate(("interior", "initial", "boundary")):
        print(f"rejected trial steps ({len(changes)}): {term} rose in {sum(c[t] > 0 for c in changes) / len(changes):.2f} "
              f"of them, median change {statistics.median(c[t] for c in changes):+.3f} L(theta_k)")
