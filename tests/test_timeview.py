import json
import math

import numpy as np
import pytest

from pinn_apts.paper.report import main as report_main
from pinn_apts.paper.timeview import (
    budget_tests,
    catch_up_table,
    check_one_machine,
    error_at,
    plot_time,
    quantiles,
    seconds_to_reach,
    time_series,
    time_tables,
    trace,
)

MACHINE = {"cpu": "AMD EPYC", "device": "cpu", "threads": 1, "commit": "abc", "dirty": False}


def record(method, seed, seconds, errors, problem="heat", provenance=MACHINE, per_iteration=False):
    """A results file whose error is evaluated at outer iterations 0..n-1 at the given seconds."""
    steps = range(len(errors))
    curves = {"error/rel_l2": list(zip(steps, errors)), "loss/total": list(zip(steps, errors))}
    if per_iteration:  # an older file: only the optimizer's seconds per iteration
        curves["time/iteration"] = list(zip(steps, np.diff([0.0, *seconds])))
    else:
        curves["time/elapsed"] = list(zip(steps, seconds))
    return {"problem": problem, "method": method, "seed": seed, "iterations": len(errors), "curves": curves,
            "provenance": dict(provenance), "final_rel_l2": errors[-1], "final_rmse": errors[-1],
            "seconds_per_iteration": 1.0}


# four runs of four iterations that last 30 to 60 seconds; the last never reaches 1e-3
RUNS = [
    record("tr", 0, [1, 10, 30, 50], [1e-2, 1e-3, 7e-4, 5e-4]),
    record("tr", 1, [2, 20, 40, 60], [1e-2, 1e-3, 9e-4, 8e-4]),
    record("tr", 2, [1, 5, 40, 45], [1e-2, 2e-3, 1e-3, 9e-4]),
    record("tr", 3, [3, 10, 20, 30], [1e-2, 5e-3, 3e-3, 2e-3]),
]


def test_catch_up_says_how_soon_each_method_reaches_the_references_final_error():
    # the reference (RUNS) ends at 5e-4, 8e-4, 9e-4, 2e-3: median final 8.5e-4; run lengths 50, 60, 45,
    # 30: median 47.5 s
    fast = [record("tr", s, [1, 2, 5], [1e-2, 9e-4, 1e-4]) for s in range(3)]  # 8.5e-4 at 5 s
    slow = [record("adam", 0, [1, 100], [1e-2, 1e-2])]  # never
    table = catch_up_table({("heat", "APTS"): RUNS, ("heat", "fast"): fast, ("heat", "slow"): slow,
                            ("laplace", "fast"): fast}, "APTS")
    assert "#### heat: seconds to APTS's median final error (0.00085; its median run: 48 s)" in table
    # the reference's own runs reach 8.5e-4 at 30 and 60 s, two never (final errors above their median)
    assert "| APTS | 4 | never [52.5, never] (2/4) | — |" in table
    assert "| fast | 3 | 5 | 9.5 |" in table  # 47.5 / 5 and "| slow | 1 | never (0/1) | — |" in table
    assert "laplace" not in table  # no reference there


def test_budget_tests_name_the_pairs_apart_at_a_budget_and_leave_out_runs_that_ended():
    # five runs each, errors at 5 s spread by +0-40% over seeds: "short" 1e-6 (and it ends at 20 s), "low"
    # 1e-4, "high" 1e-3; "cold" is still warming up at 10 s (first point at 12 s), then equals "high"
    def runs(method, seconds, scale):
        return [record(method, s, seconds, [1e-2, scale * (1 + 0.1 * s), scale]) for s in range(5)]

    series = {("heat", "short"): runs("lbfgs", [1, 5, 20], 1e-6), ("heat", "low"): runs("tr", [1, 5, 40], 1e-4),
              ("heat", "high"): runs("adam", [1, 5, 40], 1e-3), ("heat", "cold"): runs("apts_d4", [12, 13, 40], 1e-3)}
    for s, r in enumerate(series["heat", "cold"]):  # its first point, at 12 s, is already "high"'s level
        r["curves"]["error/rel_l2"][0] = (0, 1e-3 * (1 + 0.1 * s))
    table = budget_tests(series, budgets=(10, 25))
    rows = [line for line in table.splitlines() if line.startswith(("| 10 s", "| 25 s"))]
    # at 10 s every pair is apart (the cold runs' warm-up ties them, so their p is the normal approximation's)
    assert rows[:6] == ["| 10 s | short | low | 1.2e-06 / 0.00012 | 0.0079 |",
                        "| 10 s | short | high | 1.2e-06 / 0.0012 | 0.0079 |",
                        "| 10 s | short | cold | 1.2e-06 / warm-up | 0.0075 |",
                        "| 10 s | low | high | 0.00012 / 0.0012 | 0.0079 |",
                        "| 10 s | low | cold | 0.00012 / warm-up | 0.0075 |",
                        "| 10 s | high | cold | 0.0012 / warm-up | 0.0075 |"]
    # at 25 s "short" has ended (not tested) and "cold" equals "high" (p = 1, no row)
    assert rows[6:] == ["| 25 s | low | high | 0.00012 / 0.0012 | 0.0079 |",
                        "| 25 s | low | cold | 0.00012 / 0.0012 | 0.0079 |"]
    assert "9 pairs tested at 10, 25 s" in table


def test_seconds_to_reach_and_error_at_a_budget_count_every_run():
    runs = [trace(r) for r in RUNS]
    reach = [seconds_to_reach(run, 1e-3) for run in runs]
    assert reach == [10, 20, 40, math.inf]
    # sorted 10, 20, 40, never: median half-way between 20 and 40, upper quartile beside a never
    assert quantiles(reach) == (30.0, 17.5, math.inf)
    assert [run.warm_up for run in runs] == [1, 2, 1, 3] and [run.end for run in runs] == [50, 60, 45, 30]
    assert [error_at(run, 35) for run in runs] == [7e-4, 1e-3, 2e-3, None]  # the last ended at 30 s
    assert error_at(runs[3], 2) == math.inf  # still in its warm-up
    table = time_tables({("heat", "TR"): RUNS}, thresholds={"heat": (1e-3, 1e-4)}, budgets=(2, 35, 100))
    row = next(line for line in table.splitlines() if line.startswith("| TR | 4 "))
    assert "| 30 [17.5, never] (3/4) |" in row and "| never (0/4) |" in row
    budget_row = [line for line in table.splitlines() if line.startswith("| TR |")][1]
    # at 2 s three runs have a point and one is in its warm-up; at 35 s three of four still run (a
    # median alone below four runs); none runs 100 s
    assert budget_row == "| TR | 0.01 [0.01, warm-up] (3/4) | 0.001, 3 of 4 ran this long | ended (by 60 s) |"


def test_runs_of_other_vector_capabilities_are_named_not_refused():
    other = record("adam", 0, [1, 2], [0.1, 0.01], provenance={**MACHINE, "cpu_capability": "AVX512"})
    same = [{**r, "provenance": {**MACHINE, "cpu_capability": "AVX2"}} for r in RUNS]
    table = time_tables({("heat", "TR"): same, ("heat", "Adam"): [other]})
    assert table.startswith("Runs of CPUs with different vector capabilities are set side by side here: "
                            "AVX2: TR; AVX512: Adam.")
    assert not time_tables({("heat", "TR"): same}).startswith("Runs of CPUs")


def test_older_files_sum_the_seconds_per_iteration_and_are_marked():
    old = record("apts_d4", 0, [15.0, 16.0, 18.0], [0.1, 0.01, 0.001], per_iteration=True)
    run = trace(old)
    assert not run.measured and np.allclose(run.seconds, [15, 16, 18])
    assert "| ≈ 15 | ≈ 18 | ≈ 16 |" in time_tables({("heat", "APTS"): [old]}, thresholds={"heat": (0.01,)})


@pytest.mark.parametrize("other, named", [({"cpu": "Intel Xeon"}, "cpu Intel Xeon"), ({"threads": 2}, "2 threads")])
def test_runs_of_other_machines_or_thread_counts_are_refused_naming_both(tmp_path, other, named):
    mixed = {("heat", "TR"): RUNS[:2], ("heat", "Adam"): [record("adam", 0, [1, 2], [0.1, 0.01],
                                                                   provenance={**MACHINE, **other})]}
    with pytest.raises(ValueError, match="different machines or thread counts") as info:
        check_one_machine(mixed)
    assert "heat tr seed 0 (cpu AMD EPYC, device cpu, 1 threads)" in str(info.value) and named in str(info.value)
    # from the command line: two folders, one machine each
    for folder, records in (("matrix", RUNS), ("budget", mixed["heat", "Adam"])):
        (tmp_path / folder).mkdir()
        for r in records:
            (tmp_path / folder / f"{r['problem']}_{r['method']}_s{r['seed']}.json").write_text(json.dumps(r))
    with pytest.raises(SystemExit, match=f"report: the runs come from different machines.*{named}"):
        report_main(["--results", str(tmp_path / "matrix"), "--time", str(tmp_path / "matrix"), str(tmp_path / "budget")])


def test_a_later_folder_replaces_a_method_and_the_figure_draws_every_method(tmp_path):
    for folder, records in (("matrix", [*RUNS, record("adam", 0, [1, 2], [0.1, 0.05])]),
                            ("budget", [record("adam", s, [1, 100, 600], [0.1, 0.01, 0.005]) for s in range(3)])):
        (tmp_path / folder).mkdir()
        for r in records:
            (tmp_path / folder / f"{r['problem']}_{r['method']}_s{r['seed']}.json").write_text(json.dumps(r))
    series = time_series([tmp_path / "matrix", tmp_path / "budget"])
    assert list(series) == [("heat", "Adam, budget"), ("heat", "TR, matrix")]
    assert len(series["heat", "Adam, budget"]) == 3
    fig = plot_time(series, "heat", tmp_path / "time_heat.png")
    assert (tmp_path / "time_heat.png").stat().st_size > 5_000
    labels = [line.get_label() for line in fig.axes[0].get_lines()]
    assert labels == ["Adam, budget", "TR, matrix"]
    from matplotlib.colors import to_hex

    # twelve methods in one panel (the report's with --time-beside): no two lines look alike
    many = {("heat", f"method {i}"): series["heat", "Adam, budget"] for i in range(12)}
    looks = [(to_hex(line.get_color()), line.get_linestyle()) for line in plot_time(many, "heat").axes[0].get_lines()]
    assert len(looks) == 12 and len(set(looks)) == 12


def test_a_folder_beside_replaces_nothing_and_comes_after(tmp_path, capsys):
    for folder, records in (("matrix", [*RUNS, record("adam", 0, [1, 2], [0.1, 0.05])]),
                            ("least_squares", [record("tr", s, [1, 5, 9], [1e-2, 1e-5, 1e-7]) for s in range(2)])):
        (tmp_path / folder).mkdir()
        for r in records:
            (tmp_path / folder / f"{r['problem']}_{r['method']}_s{r['seed']}.json").write_text(json.dumps(r))
    series = time_series([tmp_path / "matrix"], [tmp_path / "least_squares"])
    assert list(series) == [("heat", "Adam, matrix"), ("heat", "TR, matrix"), ("heat", "TR, least_squares")]
    assert len(series["heat", "TR, matrix"]) == 4 and len(series["heat", "TR, least_squares"]) == 2
    # as a later --time folder, the same runs replace the matrix's TR
    assert ("heat", "TR, matrix") not in time_series([tmp_path / "matrix", tmp_path / "least_squares"])
    report_main(["--results", str(tmp_path / "matrix"), "--time", str(tmp_path / "matrix"),
                 "--time-beside", str(tmp_path / "least_squares")])
    assert "| TR, least_squares | 2 |" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        report_main(["--results", str(tmp_path / "matrix"), "--time-beside", str(tmp_path / "least_squares")])


def test_update_writes_the_time_tables_between_their_markers(tmp_path):
    from pinn_apts.paper.report import BEGIN, END, TIME_BEGIN, TIME_END, update_document

    doc = tmp_path / "RESULTS.md"
    doc.write_text(f"# R\n{TIME_BEGIN}\nold\n{TIME_END}\ntext\n{BEGIN}\n{END}\n")
    update_document(doc, {}, timing="| the time tables |\n")
    text = doc.read_text()
    assert f"{TIME_BEGIN}\n\n| the time tables |\n\n{TIME_END}\ntext" in text and "old" not in text
    doc.write_text(f"# R\n{BEGIN}\n{END}\n")
    with pytest.raises(ValueError, match="no time markers"):
        update_document(doc, {}, timing="| the time tables |\n")
