"""What a checkpoint every 10 outer iterations costs: the seconds of one ``last.ckpt`` write of the
default run (APTS D = 4 on Burgers), atomic (:class:`~pinn_apts.training.faults.AtomicCheckpointIO`:
a temporary file, fsync, rename) and Lightning's own write, and its share of an outer iteration
of each method at the seconds per iteration measured for the budget runs (``budget.json``).

    python benchmarks/checkpoint_cost.py [--saves 200]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from pinn_apts.paper.experiments import BUDGET_FILE
from pinn_apts.training.cli import cli_main
from pinn_apts.training.faults import AtomicCheckpointIO


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--saves", type=int, default=200)
    parser.add_argument("--every", type=int, default=10)
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as work:
        folder = Path(work)
        cli = cli_main(["--trainer.max_steps=2", "--trainer.enable_progress_bar=false", "--trainer.logger=false",
                        f"--trainer.default_root_dir={folder}", "--trainer.enable_model_summary=false"], run=False)
        cli.trainer.fit(cli.model, cli.datamodule)
        checkpoint = cli.trainer._checkpoint_connector.dump_checkpoint(weights_only=False)
        seconds: dict[str, list[float]] = {"atomic (tmp, fsync, rename)": [], "Lightning's TorchCheckpointIO": []}
        ios = {"atomic (tmp, fsync, rename)": AtomicCheckpointIO(), "Lightning's TorchCheckpointIO": TorchCheckpointIO()}
        for _ in range(args.saves):  # interleaved, so that both see the same disk and load
            for name, io in ios.items():
                start = time.perf_counter()
                io.save_checkpoint(checkpoint, folder / "last.ckpt")
                seconds[name].append(time.perf_counter() - start)
        size = (folder / "last.ckpt").stat().st_size
    print(f"checkpoint of the default run: {size / 1024:.1f} KiB, {args.saves} saves each (median [IQR] ms)")
    for name, values in seconds.items():
        q = statistics.quantiles(values, n=4)
        print(f"  {name:32s} {1e3 * statistics.median(values):6.2f} [{1e3 * q[0]:.2f}, {1e3 * q[2]:.2f}]")
    atomic = statistics.median(seconds["atomic (tmp, fsync, rename)"])
    measured = json.loads(BUDGET_FILE.read_text())["measured_seconds_per_iteration"]
    print(f"share of an outer iteration, one atomic save every {args.every} (seconds per iteration from "
          f"{BUDGET_FILE.name}):")
    for problem, methods in measured.items():
        print(f"  {problem:8s} " + ", ".join(f"{method} {100 * atomic / args.every / per:.2f}%"
                                           for method, per in methods.items()))


if __name__ == "__main__":
    main()
