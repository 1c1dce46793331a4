"""Tables and figures from the experiment runner's results files: ``python -m pinn_apts.report``.

    python -m pinn_apts.report --results results --figures docs/figures

Prints one Markdown table per PDE (final relative L2 and RMSE as mean ± std over seeds, final
loss, Stage I acceptance rate, mean Stage II tries, seconds per iteration) and draws figures
like the paper's Figures 1-3: error and loss against outer iteration, mean over seeds with a
min-max band, one row per PDE, one figure per D.
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections import defaultdict
from pathlib import Path

import numpy as np

__all__ = ["curve_band", "load_results", "plot_curves", "summary_tables"]

LABELS = {
    "apts_d2": "APTS D=2", "apts_d4": "APTS D=4", "apts_d8": "APTS D=8", "adam": "Adam",
    "lbfgs": "L-BFGS", "lbfgs_wolfe": "L-BFGS (strong Wolfe, ours)", "tr": "TR",
}


def load_results(folder: Path) -> dict[tuple[str, str], list[dict]]:
    """Results files grouped by (problem, method), each group sorted by seed."""
    groups: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for path in sorted(Path(folder).glob("*.json")):
        record = json.loads(path.read_text())
        groups[record["problem"], record["method"]].append(record)
    for records in groups.values():
        records.sort(key=lambda r: r["seed"])
    return dict(groups)


def _mean_std(values: list[float | None]) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "—"
    if len(values) == 1:
        return f"{values[0]:.3g}"
    return f"{statistics.fmean(values):.3g} ± {statistics.stdev(values):.2g}"


def summary_tables(groups: dict[tuple[str, str], list[dict]]) -> str:
    """One Markdown table per problem; the order of methods follows :data:`LABELS`."""
    lines = []
    for problem in sorted({p for p, _ in groups}):
        lines += [f"### {problem}", "",
                  "| method | seeds | rel. L2 | RMSE | final loss | Stage I acceptance | Stage II tries | s / iteration |",
                  "|---|---|---|---|---|---|---|---|"]
        for method in LABELS:
            records = groups.get((problem, method))
            if not records:
                continue
            final_loss = [r["curves"]["loss/total"][-1][1] for r in records if r["curves"].get("loss/total")]
            lines.append(
                f"| {LABELS[method]} | {len(records)} | {_mean_std([r['final_rel_l2'] for r in records])} "
                f"| {_mean_std([r['final_rmse'] for r in records])} | {_mean_std(final_loss)} "
                f"| {_mean_std([r.get('stage1_acceptance_rate') for r in records])} "
                f"| {_mean_std([r.get('mean_stage2_tries') for r in records])} "
                f"| {_mean_std([r['seconds_per_iteration'] for r in records])} |"
            )
        lines.append("")
    return "\n".join(lines)


def curve_band(records: list[dict], key: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Steps, mean, min and max over seeds of one curve (on the steps all seeds share)."""
    series = [dict(r["curves"].get(key, [])) for r in records]
    steps = sorted(set.intersection(*(set(s) for s in series))) if series else []
    values = np.array([[s[k] for k in steps] for s in series], dtype=float)
    if not steps:
        empty = np.array([])
        return empty, empty, empty, empty
    return np.array(steps), values.mean(axis=0), values.min(axis=0), values.max(axis=0)


def plot_curves(groups: dict[tuple[str, str], list[dict]], apts_method: str, path: Path | None = None):
    """Figures 1-3 of the paper: for each PDE, error and loss vs outer iteration, mean with a min-max band."""
    from matplotlib.figure import Figure  # no pyplot: no backend or global figure state

    problems = sorted({p for p, _ in groups})
    methods = [apts_method, "adam", "lbfgs", "lbfgs_wolfe", "tr"]
    fig = Figure(figsize=(11, 3.2 * len(problems)), layout="constrained")
    axes = fig.subplots(len(problems), 2, squeeze=False)
    for row, problem in zip(axes, problems):
        for ax, key, label in ((row[0], "error/rel_l2", "relative L2 error"), (row[1], "loss/total", "loss")):
            for method in methods:
                records = groups.get((problem, method))
                if not records:
                    continue
                steps, mean, low, high = curve_band(records, key)
                if not len(steps):
                    continue
                (line,) = ax.plot(steps, mean, label=LABELS[method], lw=1.2)
                ax.fill_between(steps, low, high, color=line.get_color(), alpha=0.2, lw=0)
            ax.set_yscale("log")
            ax.set_xlabel("outer iteration")
            ax.set_ylabel(label)
            ax.set_title(f"{problem}: {label}")
        row[0].legend(fontsize=8)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=110)
    return fig


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", type=Path, default=Path("results"))
    parser.add_argument("--figures", type=Path, default=None, help="write apts_d{2,4,8}.png here")
    args = parser.parse_args(argv)
    groups = load_results(args.results)
    if not groups:
        raise SystemExit(f"no results files in {args.results}")
    print(summary_tables(groups))
    if args.figures is not None:
        for d in (2, 4, 8):
            if any(m == f"apts_d{d}" for _, m in groups):
                plot_curves(groups, f"apts_d{d}", args.figures / f"apts_d{d}.png")


if __name__ == "__main__":
    main()
