"""Summarize finished runs from their TensorBoard logs: final errors, loss, timing, APTS/TR counters.

Usage::

    python benchmarks/summarize_runs.py lightning_logs/benchmarks/lightning_logs/version_*

Prints one Markdown table row per run folder.
"""

from __future__ import annotations

import sys
from pathlib import Path

import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator


def last(events: EventAccumulator, tag: str) -> float | None:
    return events.Scalars(tag)[-1].value if tag in events.Tags()["scalars"] else None


def mean(events: EventAccumulator, tag: str) -> float | None:
    if tag not in events.Tags()["scalars"]:
        return None
    values = [e.value for e in events.Scalars(tag)]
    return sum(values) / len(values)


def fmt(value: float | None, spec: str) -> str:
    return "—" if value is None else format(value, spec)


def main() -> None:
    print("| problem | method | iterations | rel. L2 | RMSE | final loss | s / iteration | Stage I acceptance | mean Stage II tries | run |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for folder in map(Path, sys.argv[1:]):
        events = EventAccumulator(str(folder), size_guidance={"scalars": 0}).Reload()
        if "loss/total" not in events.Tags()["scalars"]:
            continue
        hparams = yaml.unsafe_load((folder / "hparams.yaml").read_text()) if (folder / "hparams.yaml").exists() else {}
        config = yaml.safe_load((folder / "config.yaml").read_text()) if (folder / "config.yaml").exists() else {}
        method = config.get("model", {}).get("class_path", "?").rsplit(".", 1)[-1]
        if method == "APTSPINN":
            method += f" D={hparams.get('num_subdomains')}"
        if method == "LBFGSPINN" and hparams.get("line_search_fn"):
            method += " (strong Wolfe)"
        problem = getattr(hparams.get("problem"), "name", "?")
        tries = last(events, "apts/stage2_mean_tries")
        if tries is None:
            tries = mean(events, "tr/tries")
        print(
            f"| {problem} | {method} | {len(events.Scalars('loss/total'))} | {fmt(last(events, 'error/rel_l2'), '.3g')} "
            f"| {fmt(last(events, 'error/rmse'), '.3g')} | {fmt(last(events, 'loss/total'), '.3g')} "
            f"| {fmt(mean(events, 'time/iteration'), '.3f')} | {fmt(last(events, 'apts/stage1_acceptance_rate'), '.3f')} "
            f"| {fmt(tries, '.3f')} | {folder} |"
        )


if __name__ == "__main__":
    main()
