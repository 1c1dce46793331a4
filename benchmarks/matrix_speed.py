"""Seconds per outer iteration of the paper's configs through ``Trainer.fit``, on this machine,
beside the first iterations of the committed full runs.

Usage::

    python benchmarks/matrix_speed.py [--problems heat burgers laplace] [--methods apts_d2 apts_d4 apts_d8]
                                      [--iterations 100] [--warmup 10] [--seed 0]
                                      [--results results] [--out matrix_speed_runs]
                                      [--config-dir configs]

Each cell runs ``python -m pinn_apts.paper.experiments --one PROBLEM METHOD SEED --iterations N
--schedule 2000`` (the first N iterations of a full run: same curriculum and resampling) in a
fresh process (the runner's own path: LightningCLI, the config in ``--config-dir``, the accelerator
Lightning picks, ``replicas: auto``), then prints one Markdown row: the median of the logged
``time/iteration`` over iterations ``warmup .. N-1``, the same median over the same iterations
of the committed run in ``--results`` (if there is one), and the relative L2 error at iteration
``N - 1`` of both. The committed runs were made on the 2-core CPU machine, two at a time.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from summarize_runs import fmt  # this folder's run-summary script

from pinn_apts.paper.experiments import ITERATIONS
from pinn_apts.paper.report import curve

ROOT = Path(__file__).resolve().parents[1]


def median_time(record: dict, start: int, stop: int) -> float:
    """Median logged ``time/iteration`` over outer iterations ``start <= k < stop``."""
    return statistics.median(v for k, v in curve(record, "time/iteration").items() if start <= k < stop)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--problems", nargs="+", default=["heat", "burgers", "laplace"])
    parser.add_argument("--methods", nargs="+", default=["apts_d2", "apts_d4", "apts_d8"])
    parser.add_argument("--iterations", type=int, default=100)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--results", type=Path, default=ROOT / "results")
    parser.add_argument("--out", type=Path, default=Path("matrix_speed_runs"))
    parser.add_argument("--config-dir", type=Path, default=ROOT / "configs",
                        help="the configs to run (e.g. configs/gauss_newton, with --results results/gauss_newton)")
    args = parser.parse_args()
    if not 0 <= args.warmup < args.iterations:
        parser.error("--warmup must be at least 0 and less than --iterations")

    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "CPU"
    print(f"The configs in {args.config_dir} through Trainer.fit on {device} (torch {torch.__version__}), seed {args.seed}, "
          f"median s / iteration over iterations {args.warmup}..{args.iterations - 1}; "
          f"'committed' = the same iterations of the full run in {args.results} (2-core CPU, two runs at a time)\n")
    print("| problem | method | s / it here | s / it committed | ratio | rel. L2 at it. "
          f"{args.iterations - 1} here | committed | wall s here |")
    print("|---|---|---|---|---|---|---|---|")
    for problem in args.problems:
        for method in args.methods:
            name = f"{problem}_{method}_s{args.seed}.json"
            (args.out / name).unlink(missing_ok=True)
            start = time.perf_counter()
            command = [sys.executable, "-m", "pinn_apts.paper.experiments", "--out", str(args.out),
                       "--iterations", str(args.iterations), "--schedule", str(ITERATIONS), "--config-dir", str(args.config_dir),
                       "--log-root", str(args.out / "logs"), "--one", problem, method, str(args.seed)]
            done = subprocess.run(command, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True)
            wall = time.perf_counter() - start
            if done.returncode != 0:
                print(f"| {problem} | {method} | failed (exit {done.returncode}): "
                      f"{done.stderr.strip().splitlines()[-1:]} |", flush=True)
                continue
            here = json.loads((args.out / name).read_text())
            committed_file = args.results / name
            committed = json.loads(committed_file.read_text()) if committed_file.exists() else None
            last = args.iterations - 1
            speed = median_time(here, args.warmup, args.iterations)
            base = median_time(committed, args.warmup, args.iterations) if committed else None
            print(f"| {problem} | {method} | {speed:.3f} | {fmt(base, '.3f')} | "
                  f"{fmt(base / speed if base else None, '.1f')} | {fmt(curve(here, 'error/rel_l2').get(last), '.3g')} | "
                  f"{fmt(curve(committed, 'error/rel_l2').get(last) if committed else None, '.3g')} | {wall:.0f} |",
                  flush=True)


if __name__ == "__main__":
    main()
