"""Old code against new in one sitting: ``benchmarks/apts_speed.py`` run alternately from two trees.

Usage::

    git archive 39f1b19 | tar -x -C /tmp/old
    python benchmarks/compare_speed.py /tmp/old --repeats 3 --new-args "--compile on" -- \\
        --problem burgers --subdomains 4 --iterations 30 --warmup 15 --threads 1

Each repeat runs the old tree's script (``PYTHONPATH`` and working directory the old tree), then
this tree's, with the arguments after ``--`` (``--new-args`` only for this tree's: options the old
script lacks).  Prints every run's ``whole run: mean`` seconds per iteration, the medians, and
old / new, the speed-up; this machine's absolute timings swing by tens of percent, the ratio of
runs made side by side much less.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]


def mean_seconds(tree: Path, args: list[str]) -> float:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    out = subprocess.run([sys.executable, str(tree / "benchmarks" / "apts_speed.py"), *args], cwd=tree, env=env,
                         capture_output=True, text=True, check=True).stdout
    match = re.search(r"whole run: mean ([0-9.]+) s per iteration", out)
    if match is None:
        raise RuntimeError(f"no 'whole run: mean' line in the output of {tree}:\n{out}")
    return float(match.group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("old", type=Path, help="a tree of the old commit (git archive)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--new-args", default="", help="extra arguments for this tree's script only")
    argv = sys.argv[1:]
    split = argv.index("--") if "--" in argv else len(argv)
    args = parser.parse_args(argv[:split])  # after "--": the arguments of apts_speed.py
    common = argv[split + 1 :]
    old, new = [], []
    for repeat in range(args.repeats):
        old.append(mean_seconds(args.old.resolve(), common))
        new.append(mean_seconds(HERE, common + shlex.split(args.new_args)))
        print(f"repeat {repeat + 1}: old {old[-1]:.4f} s, new {new[-1]:.4f} s per iteration", flush=True)
    print(f"median: old {statistics.median(old):.4f} s, new {statistics.median(new):.4f} s per iteration; "
          f"speed-up old/new {statistics.median(old) / statistics.median(new):.2f}x "
          f"(per repeat {min(o / n for o, n in zip(old, new)):.2f}-{max(o / n for o, n in zip(old, new)):.2f}x)")


if __name__ == "__main__":
    main()
