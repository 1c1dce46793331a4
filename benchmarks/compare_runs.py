"""Compare two folders of results files (``python -m pinn_apts.paper.experiments`` or
``benchmarks/matrix_speed.py --out``) run by run: whether the decisions (Stage I acceptances,
Stage II and TR tries) are the same at every step, the largest relative difference of the
relative L2 curve, and the largest parameter difference of the final networks.

Usage::

    python benchmarks/compare_runs.py NEW_FOLDER OLD_FOLDER

Zero in the last two columns means the two codes gave the same iterates bit for bit.
"""

import json
import sys
from pathlib import Path

new_dir, old_dir = map(Path, sys.argv[1:3])
worst, differ = 0.0, 0
for new_file in sorted(new_dir.glob("*.json")):
    old_file = old_dir / new_file.name
    if not old_file.exists():
        continue
    new, old = json.loads(new_file.read_text()), json.loads(old_file.read_text())
    a, b = dict(new["curves"]["error/rel_l2"]), dict(old["curves"]["error/rel_l2"])
    rel = max(abs(a[k] - b[k]) / abs(b[k]) for k in b)
    decisions = [key for key in ("apts/stage1_accepted", "apts/stage2_tries", "tr/tries") if key in old["curves"]]
    same = all(new["curves"].get(key) == old["curves"][key] for key in decisions)
    differ += not same
    dtheta = max(abs(x - y) for x, y in zip(new["final_parameters"], old["final_parameters"]))
    worst = max(worst, rel)
    last = max(b)
    print(f"{new_file.stem:24s} decisions {'same' if same else 'DIFFER'}   rel. L2 at {last}: new {a[last]:.10g} "
          f"old {b[last]:.10g}   max rel. diff {rel:.2e}   max |dtheta| {dtheta:.2e}")
print(f"worst relative difference: {worst:.2e}; runs whose decisions differ: {differ}")
