"""Tables and figures from the experiment runner's results files: ``python -m pinn_apts.paper.report``.

    python -m pinn_apts.paper.report --results results --figures docs/figures

Prints one Markdown table per PDE (final relative L2 and RMSE as mean ± std over seeds, final
loss, Stage I acceptance rate, mean Stage II tries, seconds per iteration) and draws figures
like the paper's Figures 1-3: error and loss against outer iteration, median over seeds with an
interquartile band, one row per PDE, one figure per D; and like its Figure 4: the pointwise error of
the final networks of APTS D = 4, Adam and L-BFGS over each PDE's domain.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from collections import defaultdict
from pathlib import Path

import numpy as np

__all__ = [
    "PAPER_ACCEPTANCE", "acceptance_table", "comparison_table", "curve", "curve_band", "late_mean", "load_results", "plot_curves",
    "plot_heatmaps", "milestone_table", "provenance_table", "rank_tests", "render_document", "resampling_peaks", "resampling_table",
    "robust_tables", "summary_tables", "update_document", "variants_table",
]

LABELS = {
    "apts_d2": "APTS D=2", "apts_d4": "APTS D=4", "apts_d8": "APTS D=8", "adam": "Adam",
    "lbfgs": "L-BFGS", "lbfgs_wolfe": "L-BFGS (strong Wolfe, ours)", "tr": "TR",
}


#: the paper's reported Stage I (preconditioner) acceptance rates, by D and PDE
PAPER_ACCEPTANCE = {
    2: {"heat": 0.6993, "burgers": 0.7780, "laplace": 0.8795},
    4: {"heat": 0.4322, "burgers": 0.8857, "laplace": 0.6185},
    8: {"heat": 0.3057, "burgers": 0.8112, "laplace": 0.4507},
}
#: the paper's mean number of Stage II tries per outer iteration
PAPER_STAGE2_TRIES = 1.01
#: where :func:`update_document` writes the generated tables in a Markdown file
BEGIN, END = "<!-- report:begin (python -m pinn_apts.paper.report --update docs/RESULTS.md) -->", "<!-- report:end -->"
#: where it writes the time-to-accuracy tables (``--time``)
TIME_BEGIN, TIME_END = "<!-- report:time:begin (python -m pinn_apts.paper.report --time ...) -->", "<!-- report:time:end -->"
#: where it writes the other configurations' table (``--variants``)
VARIANTS_BEGIN = "<!-- report:variants:begin (python -m pinn_apts.paper.report --variants ...) -->"
VARIANTS_END = "<!-- report:variants:end -->"


def _length(record: dict) -> int | str:
    """What makes runs of one group samples of one experiment: their outer iterations, or for a budget
    run (stopped by its seconds, each seed after its own count) its budget and planned schedule."""
    if record.get("max_seconds"):
        return f"at most {record['schedule']} in {record['max_seconds']:g} s"
    return record["iterations"]


def load_results(folder: Path) -> dict[tuple[str, str], list[dict]]:
    """Results files grouped by (problem, method), each group sorted by seed.

    The statistics pool a group's runs as samples of one experiment, so a folder they would
    mislead on is refused (``ValueError`` naming the files): two files of one seed, runs of one
    group with different numbers of outer iterations (budget runs, which stop at their seconds: a
    different budget or schedule), or a file whose error curve stops before its ``iterations`` (a
    run cut short).
    """
    groups: dict[tuple[str, str], list[dict]] = defaultdict(list)
    names: dict[tuple[str, str, int], str] = {}
    for path in sorted(Path(folder).glob("*.json")):
        record = json.loads(path.read_text())
        key = record["problem"], record["method"], record["seed"]
        if key in names:
            raise ValueError(f"{path.name} and {names[key]} are both {key[0]} {key[1]} seed {key[2]}: "
                             "keep one, or the seed counts twice")
        names[key] = path.name
        last = max(curve(record, "error/rel_l2"), default=None)
        if last is not None and last != record["iterations"] - 1:
            raise ValueError(f"{path.name}: its error curve ends at outer iteration {last} of "
                             f"{record['iterations']} (a run cut short?)")
        groups[record["problem"], record["method"]].append(record)
    for (problem, method), records in groups.items():
        records.sort(key=lambda r: r["seed"])
        lengths = sorted({_length(r) for r in records}, key=lambda v: (type(v).__name__, v))
        if len(lengths) > 1:
            raise ValueError(f"{problem} {method}: runs of {', '.join(map(str, lengths))} outer iterations "
                             f"in {folder}; a group's statistics need runs of one length")
    return dict(groups)


def curve(record: dict, key: str) -> dict[int, float]:
    """One logged curve of a results file, ``{outer iteration: value}`` (empty if not logged)."""
    return dict(record["curves"].get(key, []))


def _problems(groups: dict[tuple[str, str], list[dict]]) -> list[str]:
    """The problems that have results, sorted."""
    return sorted({p for p, _ in groups})


def _rows(groups: dict[tuple[str, str], list[dict]], problem: str | None = None):
    """``(problem, method, records)`` for every group run, problems sorted, methods in :data:`LABELS` order."""
    for name in _problems(groups) if problem is None else [problem]:
        for method in LABELS:
            if groups.get((name, method)):
                yield name, method, groups[name, method]


def _mean_std(values: list[float | None], fmt: str = ".3g") -> str:
    values = [v for v in values if v is not None and v == v]  # None and NaN: not available
    if not values:
        return "—"
    if len(values) == 1:
        return f"{values[0]:{fmt}}"
    return f"{statistics.fmean(values):{fmt}} ± {statistics.stdev(values):.2g}"


def summary_tables(groups: dict[tuple[str, str], list[dict]]) -> str:
    """One Markdown table per problem; the order of methods follows :data:`LABELS`."""
    lines = []
    for problem in _problems(groups):
        lines += [f"#### {problem}", "",
                  "| method | seeds | rel. L2 | rel. L2 by seed | RMSE | final loss | Stage I acceptance "
                  "| Stage II tries | s / iteration |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for _, method, records in _rows(groups, problem):
            final_loss = [r["curves"]["loss/total"][-1][1] for r in records if r["curves"].get("loss/total")]
            by_seed = ", ".join(f"{r['final_rel_l2']:.2g} (s{r['seed']})" for r in records)
            lines.append(
                f"| {LABELS[method]} | {len(records)} | {_mean_std([r['final_rel_l2'] for r in records])} "
                f"| {by_seed} "
                f"| {_mean_std([r['final_rmse'] for r in records])} | {_mean_std(final_loss)} "
                f"| {_mean_std([r.get('stage1_acceptance_rate') for r in records])} "
                f"| {_mean_std([r.get('mean_stage2_tries') for r in records], '.3f')} "
                f"| {_mean_std([r['seconds_per_iteration'] for r in records])} |"
            )
        lines.append("")
    return "\n".join(lines)


def late_mean(record: dict, key: str = "error/rel_l2", fraction: float = 0.1) -> float | None:
    """The mean of a curve over the last ``fraction`` of the run's outer iterations (``None`` if not logged).

    On Burgers the error along one run swings 2-3x within a few hundred iterations, so the final
    value alone is a noisy summary of a run; this one averages the swings of its last stretch.
    """
    values = curve(record, key)
    if not values:
        return None
    start = record["iterations"] * (1 - fraction)
    late = [v for k, v in values.items() if k >= start]
    return statistics.fmean(late) if late else None


def _summaries(records: list[dict]) -> tuple[list[float], list[float | None]]:
    """The final relative L2 error and its last-10% mean (:func:`late_mean`) of each run."""
    return [r["final_rel_l2"] for r in records], [late_mean(r) for r in records]


def _p(p: float | None) -> str:
    return "—" if p is None else f"{p:.2g}"


def _median_iqr(values: list[float | None], fmt: str = ".3g") -> str:
    values = [v for v in values if v is not None and v == v]
    if not values:
        return "—"
    if len(values) < 4:
        return f"{statistics.median(values):{fmt}}"
    q1, _, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return f"{statistics.median(values):{fmt}} [{q1:{fmt}}, {q3:{fmt}}]"


def robust_tables(groups: dict[tuple[str, str], list[dict]]) -> str:
    """Per problem: the final relative L2 error and its mean over the last 10% of the run, as median
    [interquartile range] over seeds (from 4 seeds on) beside mean ± std."""
    lines = []
    for problem in _problems(groups):
        lines += [f"#### {problem}", "",
                  "| method | seeds | final rel. L2: median [IQR] | mean ± std | last 10%: median [IQR] | mean ± std |",
                  "|---|---|---|---|---|---|"]
        for _, method, records in _rows(groups, problem):
            final, late = _summaries(records)
            lines.append(f"| {LABELS[method]} | {len(records)} | {_median_iqr(final)} | {_mean_std(final)} "
                         f"| {_median_iqr(late)} | {_mean_std(late)} |")
        lines.append("")
    return "\n".join(lines)


def _mann_whitney(xa: list[float | None], xb: list[float | None]) -> float | None:
    """Two-sided Mann-Whitney U p-value (exact without ties up to 40 runs); ``None`` if a value is missing or NaN."""
    from scipy.stats import mannwhitneyu

    if any(v is None or v != v for v in xa + xb):
        return None
    exact = len(set(xa + xb)) == len(xa + xb) and len(xa + xb) <= 40  # no ties, small samples
    return float(mannwhitneyu(xa, xb, alternative="two-sided", method="exact" if exact else "asymptotic").pvalue)


def comparison_table(groups: dict[tuple[str, str], list[dict]], variant: dict[tuple[str, str], list[dict]],
                     label: str) -> str:
    """A variant's runs (another configuration in its own folder, e.g. ``results/gauss_newton/``) beside
    the matrix's: per PDE and method of the variant, its final error and last-10% mean as median [IQR],
    then each matrix method of that PDE with the same statistics and the two-sided Mann-Whitney p
    against the variant."""
    lines = ["| PDE | method | seeds | final rel. L2: median [IQR] | p against the variant "
             "| last 10%: median [IQR] | p against the variant |", "|---|---|---|---|---|---|---|"]
    for (problem, method), runs in sorted(variant.items()):
        final, late = _summaries(runs)
        lines.append(f"| {problem} | {LABELS[method]}, {label} | {len(runs)} | {_median_iqr(final)} | — "
                     f"| {_median_iqr(late)} | — |")
        for _, other, records in _rows(groups, problem):
            other_final, other_late = _summaries(records)
            lines.append(f"| {problem} | {LABELS[other]} | {len(records)} | {_median_iqr(other_final)} "
                         f"| {_p(_mann_whitney(final, other_final))} | {_median_iqr(other_late)} "
                         f"| {_p(_mann_whitney(late, other_late))} |")
    return "\n".join(lines) + "\n"


def variants_table(groups: dict[tuple[str, str], list[dict]], variants: dict[str, dict[tuple[str, str], list[dict]]],
                   against: tuple[str, ...] = ("apts_d4", "lbfgs_wolfe", "tr")) -> str:
    """Other configurations' runs (each a folder, e.g. ``results/least_squares``, under its label) in one
    table per PDE beside the matrix's ``against`` methods: outer iterations, final error and last-10%
    mean as median [IQR], and for each variant row the two-sided Mann-Whitney p against each
    ``against`` method, on the final error / on the last 10%.  The compact form of
    :func:`comparison_table` for several folders at once."""
    lines = []
    for problem in sorted({p for variant in variants.values() for p, _ in variant}):
        matrix = [(m, groups[problem, m]) for m in against if groups.get((problem, m))]
        lines += [f"#### {problem}", "",
                  "| configuration | seeds | outer iterations | final rel. L2: median [IQR] | last 10%: median [IQR] | "
                  + " | ".join(f"p against {LABELS[m]}: final / last 10%" for m, _ in matrix) + " |",
                  "|---" * (5 + len(matrix)) + "|"]
        rows = [(LABELS[m], records, None) for m, records in matrix]
        rows += [(f"{LABELS[m]}, {label}", records, True)
                 for label, variant in variants.items() for _, m, records in _rows(variant, problem)]
        for name, records, tested in rows:
            final, late = _summaries(records)
            lengths = sorted({str(_length(r)) for r in records})
            cells = [name, str(len(records)), ", ".join(lengths), _median_iqr(final), _median_iqr(late)]
            for _, other in matrix:
                other_final, other_late = _summaries(other)
                cells.append(f"{_p(_mann_whitney(final, other_final))} / {_p(_mann_whitney(late, other_late))}"
                             if tested else "—")
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def rank_tests(groups: dict[tuple[str, str], list[dict]], alpha: float = 0.05) -> str:
    """Which methods differ by more than the spread over seeds: per problem and pair of methods,
    the two-sided Mann-Whitney U test (exact without ties up to 40 runs) on the final relative L2 error and
    on its last-10% mean.  With 3 seeds per method the smallest possible p is 0.1: no pair can
    differ at ``alpha = 0.05``, which is the point of the test.  Each PDE's many pairs are also
    counted: how many verdicts chance alone would give, and how many survive the Benjamini-Hochberg
    correction of the final-error p-values."""
    from scipy.stats import false_discovery_control

    lines = ["| PDE | method A | method B | seeds | final rel. L2: p | last 10%: p | verdict |",
             "|---|---|---|---|---|---|---|"]
    tested: dict[str, list[float]] = {}
    for problem in _problems(groups):
        tested[problem] = p_values = []
        rows = list(_rows(groups, problem))
        for i, (_, a, ra) in enumerate(rows):
            for _, b, rb in rows[i + 1:]:
                if len(ra) < 2 or len(rb) < 2:
                    continue
                (final_a, late_a), (final_b, late_b) = _summaries(ra), _summaries(rb)
                p_final, p_late = _mann_whitney(final_a, final_b), _mann_whitney(late_a, late_b)
                verdict = "within the spread"
                if p_final is not None:
                    p_values.append(p_final)
                    if p_final < alpha:
                        lower = LABELS[a] if statistics.median(final_a) < statistics.median(final_b) else LABELS[b]
                        verdict = f"{lower} lower"
                lines.append(f"| {problem} | {LABELS[a]} | {LABELS[b]} | {len(ra)} / {len(rb)} | {_p(p_final)} "
                             f"| {_p(p_late)} | {verdict} |")
    lines.append("")
    for problem, p_values in tested.items():
        if not p_values:
            continue
        below = sum(p < alpha for p in p_values)
        held = int(sum(false_discovery_control(p_values) < alpha))
        lines.append(f"- {problem}: {len(p_values)} pairs tested, {below} with p < {alpha:g} on the final error; "
                     f"if no two methods differed, about {alpha * len(p_values):.2g} would by chance. "
                     f"{held} hold after the Benjamini-Hochberg correction (false discovery rate {alpha:g}).")
    return "\n".join(lines) + "\n"


def acceptance_table(groups: dict[tuple[str, str], list[dict]]) -> str:
    """Stage I acceptance and Stage II tries (mean ± std over seeds) beside the paper's, by D and PDE."""
    lines = [
        "| D | PDE | seeds | Stage I acceptance (ours) | paper | Stage II tries (ours) | paper |",
        "|---|---|---|---|---|---|---|",
    ]
    for d, by_problem in PAPER_ACCEPTANCE.items():
        for problem, paper in by_problem.items():
            records = groups.get((problem, f"apts_d{d}"), [])
            lines.append(
                f"| {d} | {problem} | {len(records)} | {_mean_std([r.get('stage1_acceptance_rate') for r in records], '.4f')} "
                f"| {paper:.4f} | {_mean_std([r.get('mean_stage2_tries') for r in records], '.3f')} | {PAPER_STAGE2_TRIES} |"
            )
    return "\n".join(lines) + "\n"


def stage1_share(record: dict) -> float | None:
    """The share of an APTS run's seconds that Stage I took (its local solves and the acceptance test,
    ``time/stage1``) in the optimizer's seconds (``time/stage1 + time/stage2``), the first iteration
    (compilation) left out; ``None`` for a file without those curves."""
    first, second = curve(record, "time/stage1"), curve(record, "time/stage2")
    steps = [k for k in first if k > 0 and k in second]
    if not steps:
        return None
    stage1 = sum(first[k] for k in steps)
    return stage1 / (stage1 + sum(second[k] for k in steps))


def stage1_table(groups: dict[tuple[str, str], list[dict]]) -> str:
    """Stage I's share of an APTS iteration (median [IQR] over seeds) and what that share would allow
    with the ``D`` replicas on ``D`` devices, one each: ``1 / ((1 - share) + share / D)``, a bound that
    leaves out communication and treats the acceptance test as split too; empty where no file has
    the curves."""
    lines = ["| PDE | method | seeds | Stage I share of an iteration | iteration speed-up on D devices, at most |",
             "|---|---|---|---|---|"]
    for (problem, method), records in sorted(groups.items()):
        shares = [share for share in map(stage1_share, records) if share is not None]
        if not method.startswith("apts_d") or not shares:
            continue
        d = int(method.removeprefix("apts_d"))
        bound = [1.0 / ((1.0 - share) + share / d) for share in shares]
        lines.append(f"| {problem} | {method} | {len(shares)} | {_median_iqr(shares, '.2f')} "
                     f"| {_median_iqr(bound, '.2f')} |")
    return "\n".join(lines) + "\n" if len(lines) > 2 else ""


def resampling_peaks(record: dict, key: str, period: int = 10, window: int = 5, offset: int = 0) -> float:
    """Median over resampling events of the peak of a curve just after the event, relative to before.

    For each outer iteration ``k > 0`` with ``k % period == offset`` (``offset = 0``: the
    iterations that start on freshly resampled points), the ratio ``max(c[k:k+window]) / c[k-1]``;
    its median over the run. Above 1: the curve jumps after resampling; ``offset = period // 2``
    gives the same statistic at iterations without resampling, as a control.
    """
    values = curve(record, key)
    ratios = []
    for k in sorted(values):
        if k > 0 and k % period == offset and k - 1 in values and values[k - 1] > 0:
            after = [values[j] for j in range(k, k + window) if j in values]
            ratios.append(max(after) / values[k - 1])
    return float(np.median(ratios)) if ratios else float("nan")


def resampling_table(groups: dict[tuple[str, str], list[dict]], period: int = 10) -> str:
    """How much loss and error jump after resampling (median peak ratio, mean over seeds), per PDE and method."""
    lines = [
        "| PDE | method | seeds | loss peak after resampling | without resampling | error peak after resampling "
        "| without resampling |",
        "|---|---|---|---|---|---|---|",
    ]
    for problem, method, records in _rows(groups):
        cells = [
            _mean_std([resampling_peaks(r, key, period, offset=offset) for r in records], ".3g")
            for key in ("loss/total", "error/rel_l2") for offset in (0, period // 2)
        ]
        lines.append(f"| {problem} | {LABELS[method]} | {len(records)} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def milestone_table(groups: dict[tuple[str, str], list[dict]], key: str = "error/rel_l2",
                    steps: tuple[int, ...] = (100, 500, 1000, 1999)) -> str:
    """A curve's geometric mean over seeds at a few outer iterations, per PDE and method."""
    lines = ["| PDE | method | seeds | " + " | ".join(f"k = {k}" for k in steps) + " |",
             "|---|---|---|" + "---|" * len(steps)]
    for problem, method, records in _rows(groups):
        series = [curve(r, key) for r in records]
        cells = []
        for k in steps:
            values = [s.get(k) for s in series]
            values = [v for v in values if v is not None and v > 0]
            cells.append(f"{math.exp(statistics.fmean(math.log(v) for v in values)):.3g}" if values else "—")
        lines.append(f"| {problem} | {LABELS[method]} | {len(records)} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def provenance_table(groups: dict[tuple[str, str], list[dict]]) -> str:
    """Where the results files come from: per PDE and distinct (commit, clean tree, torch, device,
    threads), how many files, which seeds, and how many were resumed after an interruption (their
    seconds per iteration count from there, with a second warm-up); files written before provenance
    was recorded say so."""
    made: dict[tuple, list[dict]] = defaultdict(list)
    for (problem, _), records in groups.items():
        for record in records:
            source = record.get("provenance") or {}
            commit = source.get("commit")
            key = (problem, commit[:10] if commit else "not recorded",
                   {True: "no", False: "yes"}.get(source.get("dirty"), "—"), source.get("torch", "—"),
                   source.get("device", "—"), str(source.get("threads", "—")))
            made[key].append(record)
    lines = ["| PDE | commit | clean tree | torch | device | threads | files | seeds | resumed |",
             "|---|---|---|---|---|---|---|---|---|"]
    for key in sorted(made):
        seeds = sorted({r["seed"] for r in made[key]})
        resumed = sum("resumed_at" in r for r in made[key])
        lines.append("| " + " | ".join(key) + f" | {len(made[key])} | {', '.join(map(str, seeds))} | {resumed} |")
    return "\n".join(lines) + "\n"


def render_document(text: str, groups: dict[tuple[str, str], list[dict]], period: int = 10) -> str:
    """``text`` with what lies between the report markers replaced by the current tables.

    ``period``: the resampling period of the runs (every config in ``configs/`` resamples every 10).
    """
    if BEGIN not in text or END not in text:
        raise ValueError(f"no report markers: put the lines {BEGIN!r} and {END!r} where the tables go")
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    runs = sum(len(v) for v in groups.values())
    body = (f"\n\n_Generated from {runs} results files in `results/`._\n\n"
            f"### Where the results files come from\n\n{provenance_table(groups)}\n"
            f"### Final errors, loss, acceptance, timing (mean ± std over seeds)\n\n{summary_tables(groups)}\n"
            f"### Final error and the last 10% of the run: median and interquartile range\n\n{robust_tables(groups)}\n"
            "### Which differences exceed the spread over seeds (two-sided Mann-Whitney U, final error; "
            "verdict at p < 0.05)\n\n"
            f"{rank_tests(groups)}\n"
            f"### Stage I acceptance and Stage II tries beside the paper's\n\n{acceptance_table(groups)}\n"
            f"### Relative L2 error and loss along the run (geometric mean over seeds)\n\n"
            f"{milestone_table(groups)}\n{milestone_table(groups, 'loss/total')}\n"
            f"### Jumps after resampling (every {period} outer iterations)\n\n"
            "Median over resampling events of max(c[k..k+4]) / c[k-1] for the loss and the relative L2 error; "
            f"the columns *without resampling* take the same statistic at k = {period // 2} mod {period}.\n\n"
            f"{resampling_table(groups, period)}\n")
    return head + BEGIN + body + END + tail


def time_document(series: dict[tuple[str, str], list[dict]], first_folder: str) -> str:
    """What RESULTS.md's time-to-accuracy section holds: the time view's tables, then how soon each method
    reaches the paper's APTS D = 4 (the runs of ``first_folder``, the first ``--time`` folder)."""
    from .timeview import catch_up_table, time_tables

    return time_tables(series) + "\n" + catch_up_table(series, f"{LABELS['apts_d4']}, {first_folder}")


def update_document(path: Path, groups: dict[tuple[str, str], list[dict]], timing: str | None = None,
                    variants: str | None = None) -> None:
    """Rewrite the tables between the report markers of a Markdown file (see :func:`render_document`),
    ``timing`` (the time-to-accuracy tables), if given, between the time markers, and ``variants``
    (:func:`variants_table`), if given, between the variants markers."""
    text = render_document(Path(path).read_text(), groups)
    for tables, name, begin, end, what in ((timing, "time", TIME_BEGIN, TIME_END, "time-to-accuracy tables"),
                                           (variants, "variants", VARIANTS_BEGIN, VARIANTS_END,
                                            "other configurations' table")):
        if tables is None:
            continue
        if begin not in text or end not in text:
            raise ValueError(f"no {name} markers in {path}: put the lines {begin!r} and {end!r} where the {what} go")
        head, rest = text.split(begin, 1)
        text = head + begin + "\n\n" + tables + "\n" + end + rest.split(end, 1)[1]
    Path(path).write_text(text)


def curve_band(records: list[dict], key: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Steps, median, lower and upper quartile over seeds of one curve (on the steps all seeds share).

    Median and quartiles, not mean and range: on Burgers one seed in ten can end an order of
    magnitude above the others, and a mean or a min-max band then shows that seed, not the method.
    Quartiles interpolate linearly between seeds (with two seeds they lie a quarter of the way
    in from each)."""
    series = [curve(r, key) for r in records]
    steps = sorted(set.intersection(*(set(s) for s in series))) if series else []
    values = np.array([[s[k] for k in steps] for s in series], dtype=float)
    if not steps:
        empty = np.array([])
        return empty, empty, empty, empty
    low, median, high = np.percentile(values, [25, 50, 75], axis=0)
    return np.array(steps), median, low, high


AXIS_HEADROOM = 10.0
"""Figures 1-3 show each panel up to ``AXIS_HEADROOM`` times the largest starting value of its
curves; a curve that goes above (a diverged run) is cut there and marked off scale in the legend,
so it does not squash the others."""


def plot_curves(groups: dict[tuple[str, str], list[dict]], apts_method: str, path: Path | None = None):
    """Figures 1-3 of the paper: for each PDE, error and loss vs outer iteration, the median over
    seeds with an interquartile band (:func:`curve_band`)."""
    from matplotlib.figure import Figure  # no pyplot: no backend or global figure state

    problems = _problems(groups)
    methods = [apts_method, "adam", "lbfgs", "lbfgs_wolfe", "tr"]
    fig = Figure(figsize=(11, 3.2 * len(problems)), layout="constrained")
    axes = fig.subplots(len(problems), 2, squeeze=False)
    for row, problem in zip(axes, problems):
        for ax, key, quantity in ((row[0], "error/rel_l2", "relative L2 error"), (row[1], "loss/total", "loss")):
            bands = {m: curve_band(records, key) for _, m, records in _rows(groups, problem) if m in methods}
            bands = {m: band for m, band in bands.items() if len(band[0])}
            if not bands:
                continue
            top = AXIS_HEADROOM * max(median[0] for _, median, _, _ in bands.values())
            for method, (steps, median, low, high) in bands.items():
                name = LABELS[method] + (f" (off scale: up to {high.max():.0e})" if high.max() > top else "")
                color = f"C{methods.index(method)}"  # a method keeps its colour in every panel and figure
                ax.plot(steps, median, label=name, lw=1.2, color=color)
                ax.fill_between(steps, low, high, color=color, alpha=0.2, lw=0)
            ax.set_yscale("log")
            ax.set_ylim(top=min(ax.get_ylim()[1], top))
            ax.set_xlabel("outer iteration")
            ax.set_ylabel(quantity)
            ax.set_title(f"{problem}: {quantity}")
            ax.legend(fontsize=7)  # in both panels: each may mark a different curve off scale
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=110)
    return fig


def plot_heatmaps(groups: dict[tuple[str, str], list[dict]], methods: tuple[str, ...] = ("apts_d4", "adam", "lbfgs"),
                  path: Path | None = None, shape: tuple[int, int] = (101, 101)):
    """Figure 4 of the paper: ``|u_theta - u|`` of the final networks, one row per PDE, one column per method.

    Each row uses the lowest seed whose results files of all ``methods`` hold the final
    parameters (the files say which); a row without one is left out. Returns ``None`` when no
    row can be drawn.
    """
    import torch
    from matplotlib.colors import LogNorm
    from matplotlib.figure import Figure

    from .experiments import final_network
    from ..pde.problems import get_problem

    rows = []
    for problem in _problems(groups):
        by_seed = [{r["seed"]: r for r in groups.get((problem, m), []) if "final_parameters" in r} for m in methods]
        seeds = sorted(set.intersection(*(set(s) for s in by_seed)))
        if seeds:
            rows.append((problem, seeds[0], [runs[seeds[0]] for runs in by_seed]))
    if not rows:
        return None
    fig = Figure(figsize=(4.6 * len(methods), 3.4 * len(rows)), layout="constrained")
    axes = fig.subplots(len(rows), len(methods), squeeze=False)
    for ax_row, (problem, seed, records) in zip(axes, rows):
        pde = get_problem(problem)
        grid = pde.evaluation_grid(*shape).double()
        exact = pde.exact_solution(grid).reshape(shape).numpy()
        c0, c1 = (grid[:, i].reshape(shape).numpy() for i in (0, 1))
        for ax, record in zip(ax_row, records):
            with torch.no_grad():
                error = abs(final_network(record)(grid).reshape(shape).numpy() - exact)
            # one log scale per panel: a diverged run (errors of 1e8) would black out the others
            top = float(error.max()) if error.max() > 0 else 1.0
            norm = LogNorm(vmin=top * 1e-4, vmax=top)
            mesh = ax.pcolormesh(c0, c1, np.maximum(error, norm.vmin), shading="auto", cmap="magma", norm=norm)
            fig.colorbar(mesh, ax=ax, label="|error|")
            ax.set_title(f"{problem}, {LABELS[record['method']]}, seed {seed}: rel. L2 {record['final_rel_l2']:.2g}",
                         fontsize=9)
            ax.set_xlabel(pde.input_names[0])
            ax.set_ylabel(pde.input_names[1])
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=110)
    return fig


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", type=Path, default=Path("results"))
    parser.add_argument("--update", type=Path, default=None,
                        help="rewrite the tables between the report markers of this Markdown file")
    parser.add_argument("--figures", type=Path, default=None,
                        help="write apts_d{2,4,8}.png and heatmaps.png here (and time_<pde>.png with --time)")
    parser.add_argument("--compare", type=Path, default=None,
                        help="a folder of another configuration's runs (e.g. results/gauss_newton): print them beside "
                             "the matrix's, with rank tests")
    parser.add_argument("--label", default=None, help="the other configuration's name in that table (default: the folder's)")
    parser.add_argument("--variants", type=Path, nargs="+", default=None, metavar="FOLDER",
                        help="folders of other configurations' runs (e.g. results/least_squares results/least_squares_rad): "
                             "one table per PDE beside the matrix's APTS D=4, L-BFGS-Wolfe and TR, with rank tests "
                             "(with --update, between the variants markers)")
    parser.add_argument("--time", type=Path, nargs="+", default=None, metavar="FOLDER",
                        help="the time-to-accuracy view of these folders' runs (a later folder's runs of a method "
                             "replace an earlier one's): seconds to each error level, error at each budget, the pairs "
                             "of methods whose errors at a budget differ beyond the spread, and with --figures "
                             "time_<pde>.png")
    parser.add_argument("--time-beside", type=Path, nargs="+", default=[], metavar="FOLDER",
                        help="with --time: folders of another configuration of the same methods (e.g. "
                             "results/least_squares), shown beside those of --time, replacing none")
    args = parser.parse_args(argv)
    if args.time_beside and not args.time:
        parser.error("--time-beside goes with --time FOLDER ...")
    if args.variants and len({folder.name for folder in args.variants}) < len(args.variants):
        parser.error("--variants: two folders of one name (a folder's name labels its rows)")
    from .timeview import budget_tests, plot_time, time_series

    try:
        groups = load_results(args.results)
        variant = load_results(args.compare) if args.compare is not None else None
        others = {folder.name: load_results(folder) for folder in args.variants or []}
        series = time_series(args.time, args.time_beside) if args.time else None
        timing = time_document(series, args.time[0].name) if series else None
    except ValueError as err:
        raise SystemExit(f"report: {err}") from None
    if not groups:
        raise SystemExit(f"no results files in {args.results}")
    print(provenance_table(groups))
    print(summary_tables(groups))
    print(robust_tables(groups))
    print(rank_tests(groups))
    print(acceptance_table(groups))
    print(milestone_table(groups))
    print(milestone_table(groups, "loss/total"))
    print(resampling_table(groups))
    print(stage1_table(groups))
    if variant is not None:
        if not variant:
            raise SystemExit(f"no results files in {args.compare}")
        print(comparison_table(groups, variant, args.label or args.compare.name))
    if empty := [str(folder) for folder in args.variants or [] if not others[folder.name]]:
        raise SystemExit(f"no results files in {', '.join(empty)}")
    compared = variants_table(groups, others) if others else None
    if compared is not None:
        print(compared)
    if timing is not None:
        print(timing)
        print(budget_tests(series))  # printed only: the evidence behind RESULTS.md's "Which method should I use?"
    if args.update is not None:
        try:
            update_document(args.update, groups, timing, compared)
        except ValueError as err:
            raise SystemExit(f"report: {err}") from None
    if args.figures is not None:
        for d in (2, 4, 8):
            if any(m == f"apts_d{d}" for _, m in groups):
                plot_curves(groups, f"apts_d{d}", args.figures / f"apts_d{d}.png")
        plot_heatmaps(groups, path=args.figures / "heatmaps.png")
        for problem in sorted({p for p, _ in series or {}}):
            plot_time(series, problem, args.figures / f"time_{problem}.png")


if __name__ == "__main__":
    main()
