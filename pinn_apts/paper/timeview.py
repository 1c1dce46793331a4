"""Time to accuracy: the results files against wall-clock seconds instead of outer iterations.

    python -m pinn_apts.paper.report --results results --time results results/budget --figures docs/figures

For each PDE and method: the seconds each run needs to reach a few error levels (a run that never
reaches one counts as never, it is not dropped), the error each run has at a few budgets, and a
figure of error against seconds (median and interquartile band over seeds, log axes).

Where the seconds come from, so that nothing is left out silently:

- files with a ``time/elapsed`` curve (runs since the budget study) measure wall-clock seconds from
  the start of the training loop: compilation, the first iteration, error evaluations, logging and
  checkpoints all count;
- older files only hold ``time/iteration``, the optimizer's own work per iteration (compilation and
  the first iteration included, Lightning's per-step overhead and the error evaluation not); their
  seconds are its running sum, marked ``≈`` in the tables.  For APTS and TR (0.1-1 s per
  iteration) the difference is a few percent; for Adam and L-BFGS it is up to half.

The warm-up (the seconds until the first iteration has finished, compilation included) is shown in
a column of its own.  A run is seen only where its error was evaluated: every iteration in the
matrix, every ``log_every`` iterations in a budget run (0.3-5 s apart), which bounds how finely
the seconds to reach an error are resolved.  Seconds depend on the machine and on what else it runs, so the runs set side
by side must come from one machine and one thread count (:func:`check_one_machine`).
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = [
    "BUDGETS", "THRESHOLDS", "Trace", "budget_tests", "catch_up_table", "check_one_machine", "error_at", "plot_time",
    "quantiles", "seconds_to_reach", "time_series", "time_tables", "trace",
]

#: error levels (relative L2) of the time-to-accuracy tables, by PDE: from where every second-order
#: method arrives quickly down to the best medians of the paper's configurations, then the
#: least-squares steps' targets (issue 28: Heat 3e-6, Laplace 1e-5, Burgers 0.01) and one level between
THRESHOLDS = {"heat": (1e-2, 3e-3, 1e-3, 6e-4, 1e-4, 1e-5, 3e-6),
              "laplace": (2e-2, 1e-2, 6e-3, 4e-3, 1e-4, 1e-5),
              "burgers": (0.3, 0.1, 0.06, 0.03, 0.01, 1e-3)}
#: wall-clock budgets (seconds) at which the tables give each run's error
BUDGETS = (10, 60, 300, 600)

Series = dict[tuple[str, str], list[dict]]
"""Results files by ``(problem, label)``; the label names the method and the folder it comes from."""


@dataclass(frozen=True)
class Trace:
    """A run's relative L2 error at the seconds it was evaluated (both ascending in time)."""

    seconds: np.ndarray
    errors: np.ndarray
    #: ``True``: wall-clock seconds (``time/elapsed``); ``False``: the sum of ``time/iteration``
    measured: bool

    @property
    def warm_up(self) -> float:
        """Seconds until the first error point: the first iteration, compilation included."""
        return float(self.seconds[0])

    @property
    def end(self) -> float:
        return float(self.seconds[-1])


def time_series(folders: list[Path], beside: list[Path] = ()) -> Series:
    """The results of ``folders`` by problem and method, labelled with the method and its folder; where
    two folders hold one problem and method, the later one's runs are taken (e.g. ``results`` then
    ``results/budget``: APTS from the matrix, the baselines from their budget runs).  The runs of the
    ``beside`` folders (another configuration of the same methods, e.g. ``results/least_squares``)
    replace none: they come after the others, labelled with their folder too."""
    from .report import LABELS, load_results

    chosen: dict[tuple[str, int, str], tuple[str, list[dict]]] = {}
    for group, folder in [*((0, f) for f in folders), *((i + 1, f) for i, f in enumerate(beside))]:
        for (problem, method), records in load_results(folder).items():
            chosen[problem, group, method] = (f"{LABELS.get(method, method)}, {Path(folder).name}", records)
    order = {method: i for i, method in enumerate(LABELS)}
    ordered = sorted(chosen.items(), key=lambda c: (c[0][0], c[0][1], order.get(c[0][2], 99)))
    return {(problem, label): records for (problem, _, _), (label, records) in ordered}


def trace(record: dict) -> Trace:
    """The error of a results file against seconds (see the module's docstring for which seconds)."""
    curves = record["curves"]
    errors = dict(curves["error/rel_l2"])
    if curves.get("time/elapsed"):
        seconds = dict(curves["time/elapsed"])
        steps = sorted(k for k in errors if k in seconds)
        return Trace(np.array([seconds[k] for k in steps]), np.array([errors[k] for k in steps]), True)
    per_iteration = dict(curves["time/iteration"])
    steps = sorted(per_iteration)
    if any(b != a + 1 for a, b in zip(steps, steps[1:])) or steps[:1] != [0]:
        raise ValueError(f"{_name(record)}: its time/iteration curve skips iterations, and it has no time/elapsed "
                         "curve, so its seconds cannot be told")
    total = np.cumsum([per_iteration[k] for k in steps])
    kept = [k for k in steps if k in errors]
    return Trace(total[kept], np.array([errors[k] for k in kept]), False)


def _traces(series: Series, problem: str) -> list[tuple[str, list[Trace]]]:
    """The runs of ``problem`` as traces, by label, in the series' order."""
    return [(label, [trace(r) for r in records]) for (p, label), records in series.items() if p == problem]


def seconds_to_reach(run: Trace, threshold: float) -> float:
    """The first second at which the run's error is at or below ``threshold``; ``inf`` if never."""
    hits = np.nonzero(run.errors <= threshold)[0]
    return float(run.seconds[hits[0]]) if len(hits) else math.inf


def error_at(run: Trace, budget: float) -> float | None:
    """The run's error after ``budget`` seconds (that of the last point at or before it); ``inf``
    while it is still in its warm-up (no iteration finished); ``None`` if it ended before ``budget``."""
    if run.end < budget:
        return None
    done = np.nonzero(run.seconds <= budget)[0]
    return float(run.errors[done[-1]]) if len(done) else math.inf


def quantiles(values: list[float]) -> tuple[float, float, float]:
    """Median and quartiles, interpolated linearly between the sorted values (``statistics.quantiles``'
    inclusive method); values of ``inf`` (never reached) sort last, and a quantile that falls on or
    beside one is ``inf``."""
    ordered = sorted(values)
    out = []
    for q in (0.5, 0.25, 0.75):
        position = q * (len(ordered) - 1)
        low, high = math.floor(position), math.ceil(position)
        if low == high:
            out.append(ordered[low])
        elif math.isinf(ordered[high]):
            out.append(math.inf)
        else:
            out.append(ordered[low] + (ordered[high] - ordered[low]) * (position - low))
    return out[0], out[1], out[2]


def _g(value: float, never: str = "never") -> str:
    return never if math.isinf(value) else f"{value:.3g}"


def _cell(values: list[float], never: str = "never") -> str:
    """``median [q1, q3]`` (from 4 runs on; the median alone below) and, where some are ``inf``, how many
    of the runs are finite; ``inf`` is written ``never``."""
    median, q1, q3 = quantiles(values)
    finite = sum(not math.isinf(v) for v in values)
    if len(values) < 4 or finite == 0:
        text = _g(median, never)
    else:
        text = f"{_g(median, never)} [{_g(q1, never)}, {_g(q3, never)}]"
    return text if finite == len(values) else f"{text} ({finite}/{len(values)})"


def _name(record: dict) -> str:
    return f"{record['problem']} {record['method']} seed {record['seed']}"


def check_one_machine(series: Series) -> None:
    """Refuse runs of different machines (the ``cpu`` of their provenance) or thread counts: their
    seconds do not compare.  ``ValueError`` naming one run of each."""
    seen: dict[tuple, dict] = {}
    for records in series.values():
        for record in records:
            source = record.get("provenance") or {}
            seen.setdefault((source.get("cpu"), source.get("device"), source.get("threads")), record)
    if len(seen) > 1:
        (a, ra), (b, rb) = list(seen.items())[:2]
        raise ValueError(f"the runs come from different machines or thread counts, whose seconds do not compare: "
                         f"{_name(ra)} (cpu {a[0]}, device {a[1]}, {a[2]} threads) and {_name(rb)} (cpu {b[0]}, "
                         f"device {b[1]}, {b[2]} threads)")


def capability_note(series: Series) -> str:
    """A line naming the CPUs' vector capabilities (AVX2, AVX512, ...) where the runs' differ: the
    same CPU model string hides machines of both kinds here, whose seconds may differ."""
    kinds: dict[str, set[str]] = defaultdict(set)
    for (problem, label), records in series.items():
        for record in records:
            kinds[str((record.get("provenance") or {}).get("cpu_capability"))].add(label)
    if len(kinds) < 2:
        return ""
    return ("Runs of CPUs with different vector capabilities are set side by side here: "
            + "; ".join(f"{kind}: {', '.join(sorted(labels))}" for kind, labels in sorted(kinds.items())) + ".\n")


def time_tables(series: Series, thresholds: dict[str, tuple[float, ...]] = THRESHOLDS,
                budgets: tuple[float, ...] = BUDGETS) -> str:
    """Per PDE, two Markdown tables: seconds to reach each error level, and the error at each budget,
    median [IQR] over seeds.  ``never``: the run (or the quantile) does not reach the level; ``(n/N)``:
    n of the N runs do; ``≈``: seconds summed from ``time/iteration`` (see the module's docstring)."""
    check_one_machine(series)
    note = capability_note(series)
    lines = [note] if note else []
    for problem in sorted({p for p, _ in series}):
        levels = thresholds.get(problem, ())
        rows = _traces(series, problem)
        lines += [f"#### {problem}: seconds to reach a relative L2 error", "",
                  "| method | runs | warm-up s | run length s | " + " | ".join(f"≤ {t:g}" for t in levels) + " |",
                  "|---|---|---|---|" + "---|" * len(levels)]
        for label, runs in rows:
            mark = "" if all(run.measured for run in runs) else "≈ "
            lines.append(f"| {label} | {len(runs)} | {mark}{_cell([run.warm_up for run in runs])} "
                         f"| {mark}{_cell([run.end for run in runs])} | "
                         + " | ".join(mark + _cell([seconds_to_reach(run, t) for run in runs]) for t in levels) + " |")
        lines += ["", f"#### {problem}: relative L2 error after a budget of seconds", "",
                  "| method | " + " | ".join(f"{b:g} s" for b in budgets) + " |", "|---|" + "---|" * len(budgets)]
        for label, runs in rows:
            cells = []
            for budget in budgets:
                values = [e for e in (error_at(run, budget) for run in runs) if e is not None]
                if not values:
                    cells.append(f"ended (by {max(run.end for run in runs):.0f} s)")
                    continue
                cell = _cell(values, never="warm-up")
                cells.append(cell if len(values) == len(runs) else f"{cell}, {len(values)} of {len(runs)} ran this long")
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def budget_tests(series: Series, budgets: tuple[float, ...] = BUDGETS, level: float = 0.05) -> str:
    """Per PDE, the pairs of methods whose errors after a budget differ beyond the spread over seeds: the
    two-sided Mann-Whitney p of the runs' errors at that budget below ``level``, lower method first,
    with both medians.  A pair is tested only where every run of both ran that long (a run still in
    its warm-up counts as the highest error); the line under each table says how many were."""
    from .report import _mann_whitney

    lines = []
    for problem in sorted({p for p, _ in series}):
        rows = _traces(series, problem)
        lines += [f"#### {problem}: errors after a budget, beyond the spread (p < {level:g})", "",
                  "| budget | lower | higher | medians | p |", "|---|---|---|---|---|"]
        tested = 0
        for budget in budgets:
            errors = {label: [error_at(run, budget) for run in runs] for label, runs in rows}
            alive = [label for label, _ in rows if None not in errors[label]]
            median = {label: quantiles(errors[label])[0] for label in alive}  # as the tables' medians
            for i, a in enumerate(alive):
                for b in alive[i + 1:]:
                    p = _mann_whitney(errors[a], errors[b])
                    if p is None:
                        continue
                    tested += 1
                    if p < level:
                        low, high = (a, b) if median[a] < median[b] else (b, a)
                        lines.append(f"| {budget:g} s | {low} | {high} | {_g(median[low], 'warm-up')} / "
                                     f"{_g(median[high], 'warm-up')} | {p:.2g} |")
        lines += ["", f"{tested} pairs tested at {', '.join(f'{b:g}' for b in budgets)} s; about "
                  f"{tested * level:.1f} would fall below p = {level:g} by chance if no two methods differed.", ""]
    return "\n".join(lines)


def catch_up_table(series: Series, reference: str) -> str:
    """Per PDE, how soon each method reaches the error the ``reference`` configuration ends at (its
    runs' median final error, e.g. the paper's APTS D = 4): median [IQR] seconds over seeds, and the
    reference's median run length divided by that median (how many times sooner; issue 28's target
    for the least-squares steps is 20).  PDEs without the reference are left out."""
    lines = []
    for problem in sorted({p for p, _ in series}):
        base = series.get((problem, reference))
        if not base:
            continue
        reference_runs = [trace(r) for r in base]
        target = quantiles([float(run.errors[-1]) for run in reference_runs])[0]
        length = quantiles([run.end for run in reference_runs])[0]
        lines += [f"#### {problem}: seconds to {reference}'s median final error ({target:.3g}; its median run: "
                  f"{length:.0f} s)", "", "| method | runs | seconds: median [IQR] | times sooner |", "|---|---|---|---|"]
        for (p, label), records in series.items():
            if p != problem:
                continue
            runs = [trace(r) for r in records]
            mark = "" if all(run.measured for run in runs) else "≈ "
            seconds = [seconds_to_reach(run, target) for run in runs]
            median = quantiles(seconds)[0]
            sooner = "—" if math.isinf(median) or median <= 0 else f"{length / median:.3g}"
            lines.append(f"| {label} | {len(runs)} | {mark}{_cell(seconds)} | {sooner} |")
        lines.append("")
    return "\n".join(lines)


def plot_time(series: Series, problem: str, path: Path | None = None):
    """Error against seconds for every method of ``problem``: median over seeds and interquartile band,
    log axes; a method's line starts after its warm-up and stops where its runs stop."""
    from matplotlib.figure import Figure

    check_one_machine(series)
    rows = _traces(series, problem)
    start = min(run.warm_up for _, runs in rows for run in runs)
    stop = max(run.end for _, runs in rows for run in runs)
    grid = np.geomspace(start, stop, 400)
    fig = Figure(figsize=(7.5, 4.8), layout="constrained")
    ax = fig.subplots()
    for i, (label, runs) in enumerate(rows):
        values = np.full((len(runs), len(grid)), np.nan)
        for row, run in zip(values, runs):
            alive = (grid >= run.warm_up) & (grid <= run.end)
            row[alive] = run.errors[np.searchsorted(run.seconds, grid[alive], side="right") - 1]
        shown = np.sum(~np.isnan(values), axis=0) * 2 > len(runs)  # where most runs have a value
        if not shown.any():
            continue
        low, median, high = np.nanpercentile(values[:, shown], [25, 50, 75], axis=0)
        mark = "" if all(run.measured for run in runs) else " (≈ s)"
        # ten colours in matplotlib's cycle: past ten methods the line style tells them apart
        ax.plot(grid[shown], median, lw=1.2, color=f"C{i % 10}", ls=("-", "--", ":")[i // 10 % 3],
                label=f"{label}{mark}")
        ax.fill_between(grid[shown], low, high, color=f"C{i % 10}", alpha=0.2, lw=0)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("wall-clock seconds")
    ax.set_ylabel("relative L2 error")
    ax.set_title(f"{problem}: error against seconds (median, interquartile band)")
    ax.legend(fontsize=7)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=110)
    return fig
