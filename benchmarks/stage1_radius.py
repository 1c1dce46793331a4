"""Compare the Stage I radius rules of APTS on short runs over several seeds.

Usage::

    python benchmarks/stage1_radius.py --problems burgers laplace heat --seeds 1 2 \
        --rules keep decrease ratio --iterations 500 [--subdomains 4] [--json out.jsonl]

Each (problem, seed, rule) trains APTS from ``configs/<problem>_apts_d<D>.yaml`` for
``--iterations`` outer iterations (the curriculum switch scales with the run: 30% of it) with
``--model.init_args.stage1_radius <rule>``, one thread, and prints the final relative L2 error,
the Stage I acceptance rate, the mean Stage II tries and the wall time; then a table of the
error per rule (one column per seed). ``--json`` appends one line per run.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections import defaultdict

import torch

from pinn_apts.training.cli import CONFIG_DIR, cli_main
from pinn_apts.paper.experiments import batch_run_args


def run(problem: str, seed: int, rule: str, iterations: int, subdomains: int, root: str) -> dict:
    config = CONFIG_DIR / f"{problem}_apts_d{subdomains}.yaml"
    cli = cli_main(
        [*batch_run_args(config, seed, iterations, root), "--trainer.logger=false",
         f"--model.init_args.stage1_radius={rule}"],
        run=False,
    )
    start = time.perf_counter()
    cli.trainer.fit(cli.model, cli.datamodule)
    wall = time.perf_counter() - start
    apts = cli.trainer.optimizers[0]
    state = apts.state["apts"]
    return {
        "problem": problem, "seed": seed, "rule": rule, "iterations": iterations, "subdomains": subdomains,
        "rel_l2": float(cli.model.solution_errors()["error/rel_l2"]),
        "stage1_acceptance": state["stage1_accepted"] / state["iterations"],
        "stage2_tries": state["stage2_tries"] / state["iterations"], "final_radius": apts.radius, "wall": wall,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--problems", nargs="+", default=["burgers", "laplace", "heat"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--rules", nargs="+", default=["keep", "decrease", "ratio"],
                        choices=["keep", "decrease", "ratio"])
    parser.add_argument("--iterations", type=int, default=500)
    parser.add_argument("--subdomains", type=int, default=4)
    parser.add_argument("--json", default=None, help="append one JSON line per run to this file")
    args = parser.parse_args()
    torch.set_num_threads(1)
    table: dict[tuple[str, str], dict[int, float]] = defaultdict(dict)
    for problem in args.problems:
        for seed in args.seeds:
            for rule in args.rules:
                with tempfile.TemporaryDirectory() as root:  # the CLI's config.yaml goes there
                    record = run(problem, seed, rule, args.iterations, args.subdomains, root)
                print(json.dumps(record), flush=True)
                if args.json:
                    with open(args.json, "a") as f:
                        f.write(json.dumps(record) + "\n")
                table[problem, rule][seed] = record["rel_l2"]
    print(f"\nrelative L2 error after {args.iterations} outer iterations, APTS D={args.subdomains}")
    print("| problem | rule | " + " | ".join(f"seed {s}" for s in args.seeds) + " |")
    print("|---|---|" + "---|" * len(args.seeds))
    for (problem, rule), errors in table.items():
        print(f"| {problem} | {rule} | " + " | ".join(f"{errors[s]:.3g}" for s in args.seeds) + " |")


if __name__ == "__main__":
    main()
