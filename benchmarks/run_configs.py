"""Train one or more configs through the ``pinn-apts`` CLI and print a summary line each.

Usage::

    python benchmarks/run_configs.py configs/heat_adam.yaml configs/burgers_lbfgs.yaml \
        [--threads 1] [--root lightning_logs/benchmarks] [--json results.jsonl] [-- EXTRA CLI ARGS]

For each config: final relative L2 error and RMSE on the evaluation grid, final loss,
and seconds per outer iteration (wall time of the training loop / iterations run).
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from pinn_apts.training.cli import cli_main


def run(config: str, root: str, extra: list[str]) -> dict:
    args = ["fit", "--config", config, "--trainer.enable_progress_bar=false",
            "--trainer.enable_model_summary=false", f"--trainer.default_root_dir={root}", *extra]
    start = time.perf_counter()
    cli = cli_main(args)
    wall = time.perf_counter() - start
    model, trainer = cli.model, cli.trainer
    errors = {k: float(v) for k, v in model.solution_errors().items()}
    iterations = trainer.global_step
    return {
        "config": config,
        "problem": model.problem.name,
        "method": type(model).__name__,
        "iterations": iterations,
        "rel_l2": errors.get("error/rel_l2"),
        "rmse": errors.get("error/rmse"),
        "final_loss": float(trainer.callback_metrics.get("loss", float("nan"))),
        "seconds_per_iteration": wall / max(iterations, 1),
        "threads": torch.get_num_threads(),
        "log_dir": trainer.log_dir,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("configs", nargs="+")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--root", default="lightning_logs/benchmarks")
    parser.add_argument("--json", default=None, help="append one JSON line per run to this file")
    args, extra = parser.parse_known_args()
    extra = [a for a in extra if a != "--"]
    torch.set_num_threads(args.threads)
    for config in args.configs:
        summary = run(config, args.root, extra)
        print(json.dumps(summary), flush=True)
        if args.json:
            with open(args.json, "a") as fh:
                fh.write(json.dumps(summary) + "\n")


if __name__ == "__main__":
    main()
