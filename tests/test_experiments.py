import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from pinn_apts.paper.experiments import check_rerun, final_network, main, run_one
from pinn_apts.paper.provenance import source_state
from pinn_apts.training.cli import CONFIG_DIR


def killed_at(step):
    """A ``PINNModule.on_train_batch_end`` that kills the run (no graceful stop) at global step ``step``."""
    from pinn_apts.training.module import PINNModule

    original = PINNModule.on_train_batch_end

    def hook(self, *args, **kwargs):
        original(self, *args, **kwargs)
        if self.trainer.global_step == step:
            raise RuntimeError("killed")
    return hook


def run_killed(monkeypatch, step, *args, **kwargs):
    """``run_one(*args, **kwargs)`` killed at global step ``step``, then the hook restored."""
    from pinn_apts.training.module import PINNModule

    original = PINNModule.on_train_batch_end
    monkeypatch.setattr(PINNModule, "on_train_batch_end", killed_at(step))
    with pytest.raises(RuntimeError, match="killed"):
        run_one(*args, **kwargs)
    monkeypatch.setattr(PINNModule, "on_train_batch_end", original)


def test_an_interrupted_run_writes_no_results_file(tmp_path, monkeypatch):
    """A fit stopped early (a SIGTERM or Ctrl-C makes Lightning shut down gracefully and return) is no
    result: once such a file was written with 380 of 2000 iterations as if complete."""
    from pinn_apts.training.module import PINNModule

    original = PINNModule.on_train_batch_end

    def stop(self, *args, **kwargs):
        original(self, *args, **kwargs)
        self.trainer.should_stop = True

    monkeypatch.setattr(PINNModule, "on_train_batch_end", stop)
    with pytest.raises(RuntimeError, match=r"stopped after 1 of 3 outer iterations.*resumes it from iteration 1"):
        run_one("heat", "adam", 0, 3, tmp_path / "out", CONFIG_DIR, tmp_path / "logs")
    assert not list((tmp_path / "out").glob("*"))


@pytest.mark.slow
def test_a_run_killed_half_way_resumes_from_its_last_checkpoint_bit_for_bit(tmp_path, monkeypatch):
    """A killed run (no graceful stop: the session ended) resumes from the checkpoint it saved every
    RESUME_EVERY iterations and ends as the uninterrupted run does; other code or settings start over."""
    import pinn_apts.paper.experiments as experiments

    def curves(record):  # all but the seconds, with the steps of those
        times = [step for step, _ in record["curves"]["time/iteration"]]
        return times, {key: curve for key, curve in record["curves"].items() if not key.startswith("time/")}

    straight = json.loads(run_one("heat", "apts_d2", 1, 6, tmp_path / "straight", CONFIG_DIR,
                                  tmp_path / "logs_straight").read_text())
    assert curves(straight)[0] == list(range(6))
    monkeypatch.setattr(experiments, "RESUME_EVERY", 2)
    out, logs = tmp_path / "out", tmp_path / "logs"
    run_killed(monkeypatch, 5, "heat", "apts_d2", 1, 6, out, CONFIG_DIR, logs)
    assert not list(out.glob("*")) and (logs / "heat_apts_d2_s1" / "resume" / "last.ckpt").exists()
    resumed = json.loads(run_one("heat", "apts_d2", 1, 6, out, CONFIG_DIR, logs).read_text())
    assert resumed["resumed_at"] == 4 and "resumed_at" not in straight
    assert curves(resumed) == curves(straight)  # every step, bit for bit
    assert resumed["final_parameters"] == straight["final_parameters"]
    assert resumed["stage1_acceptance_rate"] == straight["stage1_acceptance_rate"]
    assert not (logs / "heat_apts_d2_s1" / "resume").exists()  # removed with the file written

    # a checkpoint of other settings (here the planned run length), or whose curves are missing, is not resumed
    run_killed(monkeypatch, 3, "heat", "apts_d2", 1, 6, tmp_path / "other", CONFIG_DIR, logs, schedule=8)
    other = json.loads(run_one("heat", "apts_d2", 1, 6, tmp_path / "other", CONFIG_DIR, logs).read_text())
    assert "resumed_at" not in other and curves(other) == curves(straight)
    run_killed(monkeypatch, 3, "heat", "apts_d2", 1, 6, tmp_path / "cut", CONFIG_DIR, logs)
    (logs / "heat_apts_d2_s1" / "resume" / "curves.jsonl").write_text("")
    cut = json.loads(run_one("heat", "apts_d2", 1, 6, tmp_path / "cut", CONFIG_DIR, logs).read_text())
    assert "resumed_at" not in cut and curves(cut) == curves(straight)


@pytest.mark.slow
def test_a_long_run_keeps_its_error_points_and_resumes_on_them(tmp_path, monkeypatch):
    """log_every > 1 (a budget run): the curves keep every log_every-th iteration and the last, with the
    wall-clock seconds rising; killed, the run resumes from its checkpoint and ends bit for bit."""
    import pinn_apts.paper.experiments as experiments

    def curves(record):
        return {key: curve for key, curve in record["curves"].items() if not key.startswith("time/")}

    straight = json.loads(run_one("heat", "adam", 0, 14, tmp_path / "a", CONFIG_DIR, tmp_path / "la",
                                  log_every=3).read_text())
    assert {key: [step for step, _ in curve] for key, curve in straight["curves"].items()} == {
        key: [0, 3, 6, 9, 12, 13] for key in ("loss/total", "error/rel_l2", "error/rmse", "time/iteration",
                                               "time/elapsed")}
    elapsed = [value for _, value in straight["curves"]["time/elapsed"]]
    assert all(0 < a < b for a, b in zip(elapsed, elapsed[1:])) and elapsed[-1] <= straight["elapsed_seconds"]
    assert straight["hparams"]["log_every"] == 3
    monkeypatch.setattr(experiments, "RESUME_EVERY", 2)  # a checkpoint every 2 * 3 iterations
    run_killed(monkeypatch, 10, "heat", "adam", 0, 14, tmp_path / "b", CONFIG_DIR, tmp_path / "lb", log_every=3)
    resumed = json.loads(run_one("heat", "adam", 0, 14, tmp_path / "b", CONFIG_DIR, tmp_path / "lb",
                                 log_every=3).read_text())
    assert resumed["resumed_at"] == 6 and curves(resumed) == curves(straight)
    assert resumed["final_parameters"] == straight["final_parameters"]
    # the clock goes on from the checkpoint's seconds
    assert [step for step, _ in resumed["curves"]["time/elapsed"]] == [0, 3, 6, 9, 12, 13]
    assert resumed["curves"]["time/elapsed"][3][1] > resumed["curves"]["time/elapsed"][2][1]


@pytest.mark.slow
def test_a_budget_run_stops_at_its_seconds_resumes_on_its_clock_and_reruns_on_its_schedule(tmp_path, monkeypatch):
    """A budget run (seconds given) ends after the iteration whose time/elapsed reaches the budget, short
    of its planned iterations, and says so; its last curve point is that iteration's error at or past the
    budget.  Killed, it resumes on the checkpoint's clock.  Rerun on its schedule for its iterations
    (--check), without a budget, it gives the same curves."""
    import pinn_apts.paper.experiments as experiments
    from pinn_apts.training.module import PINNModule

    planned, seconds = 10**6, 2.0
    record = json.loads(run_one("heat", "adam", 0, planned, tmp_path / "a", CONFIG_DIR, tmp_path / "la",
                                log_every=3, seconds=seconds).read_text())
    done = record["iterations"]
    assert 10 < done < planned and record["schedule"] == planned
    assert record["stopped_by"] == "max_seconds" and record["max_seconds"] == seconds
    elapsed = record["curves"]["time/elapsed"]
    assert elapsed[-1][0] == done - 1 and elapsed[-2][1] < seconds <= elapsed[-1][1]
    assert record["curves"]["error/rel_l2"][-1] == [done - 1, record["final_rel_l2"]]
    gaps = check_rerun(tmp_path / "a" / "heat_adam_s0.json", done, CONFIG_DIR, tmp_path / "check")
    assert gaps and all(gap == 0.0 for gap in gaps.values())

    monkeypatch.setattr(experiments, "RESUME_EVERY", 2)  # a checkpoint every 2 * 3 iterations
    run_killed(monkeypatch, 10, "heat", "adam", 0, planned, tmp_path / "b", CONFIG_DIR, tmp_path / "lb",
               log_every=3, seconds=seconds)
    resumed = json.loads(run_one("heat", "adam", 0, planned, tmp_path / "b", CONFIG_DIR, tmp_path / "lb",
                                 log_every=3, seconds=seconds).read_text())
    assert resumed["resumed_at"] == 6 and resumed["stopped_by"] == "max_seconds"
    clock = dict(resumed["curves"]["time/elapsed"])
    assert clock[6] < clock[9] and max(clock.values()) >= seconds > sorted(clock.values())[-2]
    # a stop before the budget (a graceful stop) is no result
    monkeypatch.setattr(PINNModule, "on_train_batch_end", lambda self, *a, **k: setattr(self.trainer, "should_stop", True))
    with pytest.raises(RuntimeError, match=r"stopped after 1 of"):
        run_one("heat", "adam", 0, planned, tmp_path / "c", CONFIG_DIR, tmp_path / "lc", seconds=seconds)


def test_budget_plan_fills_the_budget_from_measured_seconds():
    from pinn_apts.paper.experiments import BUDGET_FILE, budget_plan, calibrate_budget

    def record(problem, method, per_iteration, warm_up=5.0):
        steps = range(0, 100, 10)
        return {"problem": problem, "method": method, "provenance": {"cpu": "x"},
                "curves": {"time/elapsed": [(k, warm_up + k * per_iteration) for k in steps]}}

    table = calibrate_budget([record("heat", "adam", 0.01), record("heat", "tr", 0.13)], seconds=600,
                             margin={"adam": 1.25, "tr": 1.25})
    # the warm-up (the first point) is left out: 600 * 1.25 / 0.01 = 75000; / 0.13 = 5769.2 -> 5800
    assert table["iterations"] == {"heat": {"adam": 75000, "tr": 5800}}
    assert table["measured_seconds_per_iteration"]["heat"] == {"adam": 0.01, "tr": 0.13}
    assert budget_plan("heat", "adam", table) == (75000, 37)  # about BUDGET_POINTS points kept
    assert budget_plan("heat", "tr", table) == (5800, 2)
    with pytest.raises(ValueError, match=r"no budget run of 'lbfgs' on 'heat'; measure it with --calibrate"):
        budget_plan("heat", "lbfgs", table)
    # whole runs that went faster per iteration than the calibration run plan a longer budget run; slower do not
    table = calibrate_budget([record("heat", "adam", 0.01), record("heat", "tr", 0.13)], seconds=600,
                             margin={"adam": 1.25, "tr": 1.25},
                             whole_runs={("heat", "adam"): 0.005, ("heat", "tr"): 0.2})
    assert table["iterations"] == {"heat": {"adam": 150000, "tr": 5800}}
    # several runs of one cell (earlier budget runs): the fastest plans
    table = calibrate_budget([record("heat", "tr", 0.2), record("heat", "tr", 0.13), record("heat", "tr", 0.3)],
                             seconds=600, margin={"tr": 1.25})
    assert table["iterations"] == {"heat": {"tr": 5800}}
    committed = json.loads(BUDGET_FILE.read_text())  # the table the committed budget runs were planned with
    for problem in ("heat", "burgers", "laplace"):
        for method in ("adam", "lbfgs", "lbfgs_wolfe", "tr"):
            iterations, log_every = budget_plan(problem, method, committed)
            per_iteration = committed["measured_seconds_per_iteration"][problem][method]
            assert iterations * per_iteration >= committed["seconds"] and log_every >= 1


def test_run_writes_curves_and_is_skipped_when_done(tmp_path):
    out, logs = tmp_path / "results", tmp_path / "logs"
    target = run_one("heat", "apts_d2", 1, 4, out, CONFIG_DIR, logs)
    record = json.loads(target.read_text())
    assert target.name == "heat_apts_d2_s1.json"
    assert record["iterations"] == 4 and record["seed"] == 1 and record["hparams"]["num_subdomains"] == 2
    assert [step for step, _ in record["curves"]["loss/total"]] == [0, 1, 2, 3]
    assert len(record["curves"]["error/rel_l2"]) == 4 and 0 < record["final_rel_l2"] < 2
    assert 0 <= record["stage1_acceptance_rate"] <= 1 and record["mean_stage2_tries"] >= 1
    # the stored parameters rebuild the trained network: its error is the recorded one
    from pinn_apts import get_problem
    problem, net = get_problem("heat"), final_network(record)
    grid = problem.evaluation_grid(101, 101).double()
    with torch.no_grad():
        diff, exact = net(grid) - problem.exact_solution(grid), problem.exact_solution(grid)
    assert float(diff.norm() / exact.norm()) == pytest.approx(record["final_rel_l2"], rel=1e-10)
    assert final_network({k: v for k, v in record.items() if k != "final_parameters"}) is None
    before = target.stat().st_mtime_ns
    assert run_one("heat", "apts_d2", 1, 4, out, CONFIG_DIR, logs) == target
    assert target.stat().st_mtime_ns == before  # skipped: the file exists


@pytest.mark.slow
def test_matrix_in_subprocesses(tmp_path, capsys):
    # --allow-dirty: the tests also run in a checkout being edited
    main(["--out", str(tmp_path / "r"), "--log-root", str(tmp_path / "l"), "--problems", "laplace",
          "--methods", "adam", "tr", "--seeds", "0", "--iterations", "2", "--jobs", "2", "--allow-dirty"])
    assert sorted(p.name for p in (tmp_path / "r").glob("*.json")) == ["laplace_adam_s0.json", "laplace_tr_s0.json"]
    main(["--out", str(tmp_path / "r"), "--problems", "laplace", "--methods", "adam", "tr", "--seeds", "0",
          "--allow-dirty"])
    assert "0 runs to do" in capsys.readouterr().out
    # a file another commit made is rerun when asked, and then names this checkout's commit
    path = tmp_path / "r" / "laplace_tr_s0.json"
    record = json.loads(path.read_text())
    record["provenance"]["commit"] = "0" * 40
    path.write_text(json.dumps(record))
    main(["--out", str(tmp_path / "r"), "--problems", "laplace", "--methods", "adam", "tr", "--seeds", "0",
          "--iterations", "2", "--allow-dirty", "--rerun-other-commits", "--log-root", str(tmp_path / "l")])
    assert "1 runs to do" in capsys.readouterr().out
    assert json.loads(path.read_text())["provenance"]["commit"] == source_state()["commit"]


def test_results_record_their_provenance(tmp_path):
    record = json.loads(run_one("heat", "tr", 0, 2, tmp_path, CONFIG_DIR, tmp_path / "logs").read_text())
    made = record["provenance"]
    assert made["commit"] == source_state()["commit"] and made["dirty"] == source_state()["dirty"]
    assert made["torch"] == torch.__version__ and made["device"] == "cpu" and made["threads"] == torch.get_num_threads()
    assert made["cpu_capability"] == torch.backends.cpu.get_cpu_capability() and made["cpu"]
    assert record["compile"] is False and record["schedule"] == 2  # auto: a 2-iteration run stays eager
    adam = json.loads(run_one("heat", "adam", 0, 2, tmp_path, CONFIG_DIR, tmp_path / "logs").read_text())
    assert adam["compile"] is None


@pytest.mark.parametrize("state, message", [
    ({"commit": "abc", "dirty": True}, "uncommitted changes"),
    ({"commit": None, "dirty": None}, "not a git checkout"),
])
def test_the_runner_refuses_code_no_commit_holds(monkeypatch, tmp_path, state, message):
    import pinn_apts.paper.provenance as provenance

    monkeypatch.setattr(provenance, "source_state", lambda: state)
    with pytest.raises(SystemExit, match=message):
        main(["--out", str(tmp_path), "--problems", "heat", "--methods", "adam", "--seeds", "0", "--iterations", "1"])
    assert not list(tmp_path.glob("*.json"))
    with pytest.raises(ValueError, match="--allow-dirty"):
        provenance.check_source(state, allow_dirty=False)
    provenance.check_source(state, allow_dirty=True)


@pytest.mark.slow
@pytest.mark.parametrize("method", ["apts_d2", "lbfgs"])
def test_a_results_file_reruns_bit_for_bit(tmp_path, method):
    """The first iterations of a results file, rerun from its record, give bitwise its curves; a
    file whose curve was altered is caught."""
    path = run_one("burgers", method, 1, 4, tmp_path, CONFIG_DIR, tmp_path / "logs", schedule=2000)
    gaps = check_rerun(path, 3, CONFIG_DIR, tmp_path / "work")
    assert gaps and set(gaps.values()) == {0.0} and {"loss/total", "error/rel_l2", "error/rmse"} <= set(gaps)
    record = json.loads(path.read_text())
    step, value = record["curves"]["loss/total"][2]
    record["curves"]["loss/total"][2] = [step, value * (1 + 1e-15)]
    path.write_text(json.dumps(record))
    assert check_rerun(path, 3, CONFIG_DIR, tmp_path / "work")["loss/total"] > 0
    with pytest.raises(SystemExit):  # the command line says so and exits 1
        main(["--check", str(path), "--iterations", "3", "--here", "--tolerance", "0"])


def test_bad_arguments():
    with pytest.raises(SystemExit):
        main(["--methods", "sgd"])
    with pytest.raises(SystemExit):
        main(["--iterations", "0"])
    with pytest.raises(SystemExit):
        main(["--iterations", "10", "--schedule", "5"])


@pytest.mark.slow
def test_short_run_on_a_longer_runs_schedule(tmp_path):
    """``schedule``: a 3-iteration run planned as a 10-iteration one starts as the 10-iteration
    run does (early curriculum sizes); unplanned, its curriculum ends after 0.3 * 3 iterations."""
    def losses(iterations, schedule, name):
        target = run_one("heat", "adam", 0, iterations, tmp_path / name, CONFIG_DIR, tmp_path / "logs", schedule)
        return [value for _, value in json.loads(target.read_text())["curves"]["loss/total"]]

    full, planned, unplanned = losses(10, None, "full"), losses(3, 10, "planned"), losses(3, None, "unplanned")
    assert planned == pytest.approx(full[:3], rel=1e-12)
    assert unplanned[1:] != pytest.approx(full[1:3], rel=1e-6)


@pytest.mark.slow
def test_report_tables_and_figures(tmp_path):
    from pinn_apts.paper.report import (
        curve_band,
        load_results,
        plot_heatmaps,
        summary_tables,
    )
    from pinn_apts.paper.report import main as report_main

    out = tmp_path / "results"
    for seed in (0, 1):
        run_one("heat", "adam", seed, 3, out, CONFIG_DIR, tmp_path / "logs")
    run_one("heat", "apts_d4", 0, 3, out, CONFIG_DIR, tmp_path / "logs")
    run_one("heat", "lbfgs", 1, 3, out, CONFIG_DIR, tmp_path / "logs")
    groups = load_results(out)
    assert sorted(groups) == [("heat", "adam"), ("heat", "apts_d4"), ("heat", "lbfgs")]
    table = summary_tables(groups)
    assert "| Adam | 2 |" in table and "| APTS D=4 | 1 |" in table and " ± " in table
    steps, median, low, high = curve_band(groups["heat", "adam"], "error/rel_l2")
    assert list(steps) == [0, 1, 2] and (low <= median).all() and (median <= high).all()
    # five seeds, one of them 1000x above the rest: the median and quartiles do not follow it
    five = [synthetic("adam", s, 0.1 * (1 + s) * (1000 if s == 4 else 1), iterations=10) for s in range(5)]
    steps, median, low, high = curve_band(five, "error/rel_l2")
    # (the synthetic curves of 10 iterations sit at twice their final value throughout)
    assert median == pytest.approx([0.6] * 10) and low == pytest.approx([0.4] * 10) and high == pytest.approx([0.8] * 10)
    # Figure 4 needs one seed that all of APTS D=4, Adam and L-BFGS ran: none yet
    assert plot_heatmaps(groups) is None
    run_one("heat", "lbfgs", 0, 3, out, CONFIG_DIR, tmp_path / "logs")
    fig = plot_heatmaps(load_results(out))
    assert len(fig.axes) == 6 and "seed 0" in fig.axes[0].get_title()  # three panels, a colorbar each
    # a diverged run (error and loss 1e8) is drawn off scale, not squashing the others' axes
    from pinn_apts.paper.report import AXIS_HEADROOM, plot_curves

    diverged = load_results(out)
    for key in ("error/rel_l2", "loss/total"):
        diverged["heat", "lbfgs"][0]["curves"][key] = [(0, 1.0)] + [(k, 1e8) for k in (1, 2)]
    fig = plot_curves(diverged, "apts_d4")
    for ax, quantity in zip(fig.axes, ("relative L2 error", "loss")):
        assert ax.get_title() == f"heat: {quantity}" and ax.get_ylabel() == quantity
        starts = [line.get_ydata()[0] for line in ax.get_lines()]
        assert ax.get_ylim()[1] == pytest.approx(AXIS_HEADROOM * max(starts))
        labels = ax.get_legend_handles_labels()[1]
        # the band's top: the upper quartile of 1e8 and a run near 1e-2, 0.75e8
        assert "L-BFGS (off scale: up to 8e+07)" in labels and "Adam" in labels
    # Adam keeps its colour in a figure without APTS runs (no D=2 here)
    def colours(ax):
        return {line.get_label(): line.get_color() for line in ax.get_lines()}

    assert colours(plot_curves(diverged, "apts_d2").axes[0])["Adam"] == colours(fig.axes[0])["Adam"]
    report_main(["--results", str(out), "--figures", str(tmp_path / "fig")])
    assert (tmp_path / "fig" / "apts_d4.png").stat().st_size > 10_000
    assert (tmp_path / "fig" / "heatmaps.png").stat().st_size > 10_000


def test_paper_tables_and_document_markers(tmp_path):
    from pinn_apts.paper.report import (
        BEGIN,
        END,
        acceptance_table,
        load_results,
        render_document,
        update_document,
    )

    out = tmp_path / "results"
    run_one("laplace", "apts_d2", 0, 2, out, CONFIG_DIR, tmp_path / "logs")
    groups = load_results(out)
    rate = groups["laplace", "apts_d2"][0]["stage1_acceptance_rate"]
    table = acceptance_table(groups)
    assert f"| 2 | laplace | 1 | {rate:.4f} | 0.8795 |" in table and "| 8 | heat | 0 | — | 0.3057 |" in table
    doc = tmp_path / "RESULTS.md"
    doc.write_text(f"# Title\n\n{BEGIN}\nstale\n{END}\n\nafter\n")
    update_document(doc, groups)
    text = doc.read_text()
    assert "stale" not in text and text.startswith("# Title") and text.endswith("after\n") and table in text
    assert render_document(text, groups) == text  # a second pass changes nothing
    other = render_document(text, groups, period=20)
    assert "every 20 outer iterations" in other and "k = 10 mod 20" in other and "every 10 outer" not in other
    with pytest.raises(ValueError, match="no report markers"):
        render_document("# nothing here\n", groups)


@pytest.mark.repro
def test_results_document_matches_the_committed_results():
    """docs/RESULTS.md shows the tables of the results files committed beside it."""
    from pathlib import Path

    from pinn_apts.paper.report import load_results, render_document

    root = Path(__file__).resolve().parents[1]
    text = (root / "docs" / "RESULTS.md").read_text()
    assert render_document(text, load_results(root / "results")) == text, (
        "docs/RESULTS.md is stale: run python -m pinn_apts.paper.report --update docs/RESULTS.md"
    )


@pytest.mark.repro
def test_results_document_shows_the_committed_runs_of_the_other_configurations():
    """docs/RESULTS.md's section on the least-squares steps shows the files committed in their folders."""
    from pathlib import Path

    from pinn_apts.paper.report import VARIANTS_BEGIN, VARIANTS_END, load_results, variants_table

    root = Path(__file__).resolve().parents[1]
    folders = ["least_squares", "least_squares_rad", "least_squares_rad_2000", "least_squares_500", "gauss_newton"]
    text = (root / "docs" / "RESULTS.md").read_text()
    command = "--variants " + " ".join(f"results/{name}" for name in folders)
    assert command in text.split(VARIANTS_BEGIN)[0].replace("\n", " ")  # the command the section names
    shown = text.split(VARIANTS_BEGIN)[1].split(VARIANTS_END)[0].strip()
    expected = variants_table(load_results(root / "results"), {f: load_results(root / "results" / f) for f in folders})
    assert shown == expected.strip(), (
        f"docs/RESULTS.md's least-squares section is stale: run python -m pinn_apts.paper.report --results results "
        f"{command} --update docs/RESULTS.md"
    )


@pytest.mark.repro
def test_results_document_shows_the_time_view_of_the_committed_runs():
    """docs/RESULTS.md's time-to-accuracy tables are those of the committed matrix, budget and least-squares runs."""
    from pathlib import Path

    from pinn_apts.paper.report import TIME_BEGIN, TIME_END, time_document
    from pinn_apts.paper.timeview import time_series

    root = Path(__file__).resolve().parents[1]
    beside = ["results/least_squares_rad", "results/least_squares_500", "results/least_squares"]
    text = (root / "docs" / "RESULTS.md").read_text()
    command = "--time results results/budget --time-beside " + " ".join(beside)
    assert command in text.split(TIME_BEGIN)[0]  # the command the section names
    series = time_series([root / "results", root / "results" / "budget"], [root / f for f in beside])
    expected = time_document(series, "results")
    shown = text.split(TIME_BEGIN)[1].split(TIME_END)[0].strip()
    assert shown == expected.strip(), (
        f"docs/RESULTS.md's time-to-accuracy tables are stale: run python -m pinn_apts.paper.report --results results "
        f"{command} --update docs/RESULTS.md"
    )


def test_resampling_peaks_on_a_synthetic_curve():
    from pinn_apts.paper.report import resampling_peaks

    # decays 1% per iteration and jumps x3 at every 10th
    values, value = [], 1.0
    for k in range(60):
        value *= 3.0 if k % 10 == 0 and k > 0 else 0.99
        values.append((k, value))
    record = {"curves": {"loss/total": values}}
    assert resampling_peaks(record, "loss/total") == pytest.approx(3.0)
    assert resampling_peaks(record, "loss/total", offset=5) == pytest.approx(0.99)
    smooth = {"curves": {"loss/total": [(k, 0.99**k) for k in range(60)]}}
    assert resampling_peaks(smooth, "loss/total") == pytest.approx(0.99)
    assert np.isnan(resampling_peaks(record, "error/rel_l2"))


def test_milestone_table_takes_the_geometric_mean_over_seeds():
    from pinn_apts.paper.report import milestone_table

    records = [{"seed": s, "curves": {"error/rel_l2": [(0, v), (5, v / 10)]}} for s, v in ((0, 1e-2), (1, 1e-4))]
    table = milestone_table({("heat", "adam"): records}, steps=(0, 5, 9))
    assert "| heat | Adam | 2 | 0.001 | 0.0001 | — |" in table


def synthetic(method, seed, final, iterations=100):
    """A results record whose error curve is ``2 * final`` for 90% of the run and ``final`` after."""
    curve = [(k, 2 * final if k < 90 else final) for k in range(iterations)]
    return {"problem": "burgers", "method": method, "seed": seed, "iterations": iterations,
            "final_rel_l2": final, "curves": {"error/rel_l2": curve}}


def test_late_mean_and_robust_statistics():
    from pinn_apts.paper.report import late_mean, robust_tables

    assert late_mean(synthetic("adam", 0, 0.1)) == pytest.approx(0.1)  # the last 10 of 100 iterations
    assert late_mean(synthetic("adam", 0, 0.1), fraction=0.2) == pytest.approx(0.15)
    assert late_mean({"iterations": 5, "curves": {}}) is None
    finals = [0.1, 0.2, 0.3, 0.4, 10.0]  # one outlier: the mean moves, the median and IQR hardly
    table = robust_tables({("burgers", "adam"): [synthetic("adam", s, v) for s, v in enumerate(finals)]})
    assert "| Adam | 5 | 0.3 [0.2, 0.4] | 2.2 ± 4.4 | 0.3 [0.2, 0.4] | 2.2 ± 4.4 |" in table


def test_rank_tests_separate_methods_only_beyond_the_spread():
    from pinn_apts.paper.report import rank_tests

    def groups(seeds, b_values):
        return {("burgers", "apts_d4"): [synthetic("apts_d4", s, 0.01 * (1 + s)) for s in range(seeds)],
                ("burgers", "lbfgs_wolfe"): [synthetic("lbfgs_wolfe", s, v) for s, v in zip(range(seeds), b_values)]}

    # ten seeds each, every APTS error below every L-BFGS one: p = 2 / C(20, 10) ~ 1e-5
    separated = rank_tests(groups(10, [1.0 + s for s in range(10)]))
    assert "| burgers | APTS D=4 | L-BFGS (strong Wolfe, ours) | 10 / 10 | 1.1e-05 | 1.1e-05 | APTS D=4 lower |" in separated
    # three seeds each cannot separate anything (smallest two-sided p = 0.1)
    assert "| 3 / 3 | 0.1 | 0.1 | within the spread |" in rank_tests(groups(3, [1.0, 2.0, 3.0]))
    # interleaved samples do not differ
    assert "within the spread" in rank_tests(groups(10, [0.01 * (1.5 + s) for s in range(10)]))


def test_rank_tests_count_what_chance_gives_over_many_pairs():
    from pinn_apts.paper.report import rank_tests

    # six methods, 15 pairs: five interleaved with each other, one far below them all
    methods = ["adam", "lbfgs", "lbfgs_wolfe", "tr", "apts_d2", "apts_d4"]
    groups = {("heat", m): [synthetic(m, s, 1.0 + s + 0.1 * i) for s in range(6)] for i, m in enumerate(methods[:5])}
    groups[("heat", "apts_d4")] = [synthetic("apts_d4", s, 0.01 * (1 + s)) for s in range(6)]
    table = rank_tests(groups)
    assert table.count("APTS D=4 lower") == 5
    assert ("- heat: 15 pairs tested, 5 with p < 0.05 on the final error; if no two methods differed, about 0.75 "
            "would by chance. 5 hold after the Benjamini-Hochberg correction") in table
    # five methods, each a little above the last: only the two ends differ (p = 0.015), and among
    # ten pairs that one verdict does not survive the correction
    table = rank_tests({("heat", m): [synthetic(m, s, 1.0 + s + 0.8 * i) for s in range(6)]
                        for i, m in enumerate(methods[:5])})
    assert table.count(" lower |") == 1
    assert "- heat: 10 pairs tested, 1 with p < 0.05 on the final error; if no two methods differed, about 0.5" in table
    assert "0 hold after the Benjamini-Hochberg correction" in table


def test_comparison_table_sets_another_configuration_beside_the_matrix():
    from pinn_apts.paper.report import comparison_table

    matrix = {("burgers", "apts_d4"): [synthetic("apts_d4", s, 1.0 + s) for s in range(10)],
              ("burgers", "tr"): [synthetic("tr", s, 0.01 * (1 + s) + 1.0) for s in range(10)],
              ("heat", "tr"): [synthetic("tr", s, 1.0) for s in range(3)]}
    variant = {("burgers", "apts_d4"): [synthetic("apts_d4", s, 0.01 * (1 + s)) for s in range(10)]}
    table = comparison_table(matrix, variant, "Gauss-Newton")
    rows = [line for line in table.splitlines() if line.startswith("| burgers")]
    assert rows[0].startswith("| burgers | APTS D=4, Gauss-Newton | 10 | 0.055 [0.0325, 0.0775] | — |")
    # every variant run below every matrix run: p = 2 / C(20, 10); the matrix's rows are its own
    assert rows[1] == ("| burgers | APTS D=4 | 10 | 5.5 [3.25, 7.75] | 1.1e-05 | 5.5 [3.25, 7.75] | 1.1e-05 |")
    assert rows[2].startswith("| burgers | TR | 10 |") and "| 1.1e-05 |" in rows[2]
    assert len(rows) == 3 and "| heat |" not in table  # only the variant's PDEs


def test_variants_table_sets_several_configurations_beside_the_matrix_with_rank_tests(tmp_path, capsys):
    from pinn_apts.paper.report import BEGIN, END, VARIANTS_BEGIN, VARIANTS_END, main as report_main, variants_table

    matrix = {("burgers", "apts_d4"): [synthetic("apts_d4", s, 1.0 + s) for s in range(5)],
              ("burgers", "tr"): [synthetic("tr", s, 0.5 + s) for s in range(5)],
              ("burgers", "adam"): [synthetic("adam", s, 9.0) for s in range(5)],
              ("heat", "tr"): [synthetic("tr", s, 1.0) for s in range(3)]}
    exact = {("burgers", "tr"): [synthetic("tr", s, 0.01 * (1 + s), iterations=50) for s in range(3)],
             ("burgers", "apts_d4"): [synthetic("apts_d4", s, 2.0 + s) for s in range(3)]}
    table = variants_table(matrix, {"exact": exact, "sampled": {("burgers", "tr"): exact["burgers", "tr"][:1]}})
    rows = [line for line in table.splitlines() if line.startswith("| ")]
    assert rows[0] == ("| configuration | seeds | outer iterations | final rel. L2: median [IQR] | last 10%: median [IQR] "
                       "| p against APTS D=4: final / last 10% | p against TR: final / last 10% |")
    # the matrix's rows first (no L-BFGS-Wolfe runs: no column), untested; Adam is not among those set beside
    assert rows[1] == "| APTS D=4 | 5 | 100 | 3 [2, 4] | 3 [2, 4] | — | — |"
    assert rows[2].startswith("| TR | 5 | 100 | 2.5 [1.5, 3.5] |")
    # every one of 3 runs below every one of 5: p = 2 / C(8, 3) = 0.036; its own length, 50 iterations
    # (all of them before the synthetic curve's drop at 90: its last 10% is twice its final error)
    assert rows[4] == "| TR, exact | 3 | 50 | 0.02 | 0.04 | 0.036 / 0.036 | 0.036 / 0.036 |"
    assert rows[3].startswith("| APTS D=4, exact | 3 | 100 | 3 | 3 | 1 / 1 |")  # seeds 0-2 of 2 + s against 1 + s
    assert rows[5].startswith("| TR, sampled | 1 | 50 | 0.01 |") and "Adam" not in table and "#### heat" not in table
    for folder, records in (("matrix", matrix), ("exact", exact)):
        (tmp_path / folder).mkdir()
        for (problem, method), runs in records.items():
            for r in runs:
                (tmp_path / folder / f"{problem}_{method}_s{r['seed']}.json").write_text(
                    json.dumps({**r, "problem": problem, "final_rmse": r["final_rel_l2"], "seconds_per_iteration": 1.0}))
    doc = tmp_path / "RESULTS.md"
    doc.write_text(f"# R\n{VARIANTS_BEGIN}\nold\n{VARIANTS_END}\ntext\n{BEGIN}\n{END}\n")
    report_main(["--results", str(tmp_path / "matrix"), "--variants", str(tmp_path / "exact"), "--update", str(doc)])
    assert "| TR, exact | 3 | 50 | 0.02 |" in capsys.readouterr().out
    assert "| TR, exact | 3 | 50 | 0.02 |" in doc.read_text() and "\nold\n" not in doc.read_text()
    doc.write_text(f"# R\n{BEGIN}\n{END}\n")
    with pytest.raises(SystemExit, match="no variants markers"):
        report_main(["--results", str(tmp_path / "matrix"), "--variants", str(tmp_path / "exact"), "--update", str(doc)])
    shutil.copytree(tmp_path / "exact", tmp_path / "copy" / "exact")
    with pytest.raises(SystemExit, match="2"):  # two folders of one name: their rows' labels would be one
        report_main(["--results", str(tmp_path / "matrix"), "--variants", str(tmp_path / "exact"), str(tmp_path / "copy" / "exact")])
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit, match="no results files in .*empty"):
        report_main(["--results", str(tmp_path / "matrix"), "--variants", str(tmp_path / "empty")])


@pytest.mark.parametrize("files, message", [
    ({"a.json": synthetic("tr", 0, 0.1), "b.json": synthetic("tr", 0, 0.2)}, "b.json and a.json are both burgers tr seed 0"),
    ({"a.json": synthetic("tr", 0, 0.1), "b.json": synthetic("tr", 1, 0.1, iterations=50)},
     "burgers tr: runs of 50, 100 outer iterations"),
    ({"a.json": {**synthetic("tr", 0, 0.1), "iterations": 200}}, "a.json: its error curve ends at outer iteration 99 of 200"),
    # budget runs: each seed stops after its own count; one budget and schedule make one experiment
    ({"a.json": {**synthetic("tr", 0, 0.1, iterations=50), "schedule": 900, "max_seconds": 600},
      "b.json": {**synthetic("tr", 1, 0.1), "schedule": 900, "max_seconds": 300},
      "c.json": {**synthetic("tr", 2, 0.1, iterations=80), "schedule": 900, "max_seconds": 300}},
     "burgers tr: runs of at most 900 in 300 s, at most 900 in 600 s outer iterations"),
])
def test_the_report_refuses_a_folder_whose_statistics_would_mislead(tmp_path, files, message):
    from pinn_apts.paper.report import load_results

    for name, record in files.items():
        (tmp_path / name).write_text(json.dumps(record))
    with pytest.raises(ValueError, match=message):
        load_results(tmp_path)
    (tmp_path / "a.json").unlink()  # what is left is one run per seed, of one length: it loads
    assert sum(len(group) for group in load_results(tmp_path).values()) == len(files) - 1


def test_provenance_table_names_each_source_of_the_files():
    from pinn_apts.paper.report import provenance_table

    source = {"commit": "a" * 40, "dirty": False, "torch": "2.13.0+cpu", "device": "cpu", "threads": 1}
    groups = {
        ("burgers", "adam"): [{**synthetic("adam", s, 0.1), "provenance": source, **({"resumed_at": 50} if s else {})}
                              for s in (0, 1, 2)],
        ("burgers", "tr"): [{**synthetic("tr", 0, 0.1), "provenance": {**source, "dirty": True}}],
        ("heat", "adam"): [{**synthetic("adam", 4, 0.1), "problem": "heat"}],  # written before provenance
    }
    table = provenance_table(groups)
    assert "| burgers | aaaaaaaaaa | yes | 2.13.0+cpu | cpu | 1 | 3 | 0, 1, 2 | 2 |" in table
    assert "| burgers | aaaaaaaaaa | no | 2.13.0+cpu | cpu | 1 | 1 | 0 | 0 |" in table
    assert "| heat | not recorded | — | — | — | — | 1 | 4 | 0 |" in table


COMMITTED = Path(__file__).resolve().parents[1] / "results"


def _in_history(commit: str) -> bool:
    git = subprocess.run(["git", "cat-file", "-e", f"{commit}^{{commit}}"], cwd=COMMITTED.parent, capture_output=True)
    return git.returncode == 0


@pytest.mark.repro
@pytest.mark.parametrize("name, configs, iterations", [
    ("burgers_apts_d4_s0.json", CONFIG_DIR, 5), ("burgers_lbfgs_wolfe_s0.json", CONFIG_DIR, 5),
    ("gauss_newton/burgers_apts_d4_s0.json", CONFIG_DIR / "gauss_newton", 5),
    ("budget/heat_adam_s0.json", CONFIG_DIR, 75),  # kept every 37 iterations: 0, 37, 74 compared
    ("budget/heat_tr_s0.json", CONFIG_DIR, 9),  # kept every 4: 0, 4, 8
    ("least_squares/heat_tr_s0.json", CONFIG_DIR / "least_squares", 5),
    ("least_squares_10k/burgers_tr_s0.json", CONFIG_DIR / "least_squares_10k", 5),  # its configs: after 6ef9649
    ("least_squares_500/heat_tr_s0.json", CONFIG_DIR / "least_squares", 5),
    # residual-based points: 12 iterations compare those of iteration 10 too (chosen by theta_10's residuals)
    ("least_squares_rad/burgers_tr_s0.json", CONFIG_DIR / "least_squares_rad", 12),
    ("least_squares_rad_2000/heat_apts_d4_s0.json", CONFIG_DIR / "least_squares_rad", 3),
])
def test_a_committed_results_file_reruns_bit_for_bit_with_the_code_of_its_commit(tmp_path, capfd, name, configs,
                                                                                 iterations):
    """The promise a results file makes: the first outer iterations of a committed run, rerun from its
    record with the code and configs of the commit it names (a git archive of that commit, in a fresh
    process: nothing this suite compiled can change its compilations), give its curves bit for bit.
    The archive's own code answers (its wording, not today's). Bitwise equality is promised on the
    torch build and CPU kind that made the file; elsewhere the test says why it does not apply."""
    from pinn_apts.paper.provenance import provenance

    path = COMMITTED / name
    made = json.loads(path.read_text())["provenance"]
    here = provenance()
    differs = {key: (made.get(key), here[key]) for key in ("torch", "device", "cpu_capability")
               if made.get(key) != here[key]}
    if differs:
        pytest.skip(f"{name} was made elsewhere (file, here): {differs}")
    if here["commit"] is None or not _in_history(made["commit"]):
        pytest.skip(f"commit {made['commit'][:12]} is not in a git checkout here")
    main(["--check", str(path), "--iterations", str(iterations), "--config-dir", str(configs)])
    out = capfd.readouterr().out
    assert f"rerun with the code of commit {made['commit'][:12]}" in out
    # the archive's own wording: "max |difference| of ..." up to 6ef9649, "max relative difference of ..." since
    assert re.search(r"of loss/total 0, max .*difference.? of error/rel_l2 0.*\(bit for bit\)", out), out[-3000:]


@pytest.mark.repro
@pytest.mark.parametrize("name, configs", [
    ("heat_apts_d4_s0.json", CONFIG_DIR), ("burgers_apts_d4_s0.json", CONFIG_DIR), ("laplace_apts_d4_s0.json", CONFIG_DIR),
    ("gauss_newton/heat_apts_d4_s0.json", CONFIG_DIR / "gauss_newton"), ("budget/heat_tr_s0.json", CONFIG_DIR),
    ("least_squares/heat_tr_s0.json", CONFIG_DIR / "least_squares"),
])
def test_todays_code_takes_the_committed_runs_decisions(tmp_path, name, configs):
    """Today's code need not reproduce older files bit for bit (summation orders change as the numerics
    improve), on any machine: over a committed run's first 5 outer iterations it takes the same decisions
    (Stage I acceptances, tries) and its loss, error, radius and coherence agree to HERE_TOLERANCE.
    Trust-region methods only: L-BFGS's line search amplifies an ulp of another CPU kind to 3% within 5
    iterations on Burgers (measured against the AVX-512 matrix here), so it has no such tolerance."""
    from pinn_apts.paper.experiments import DECISIONS, HERE_TOLERANCE, rerun_verdict

    gaps = check_rerun(COMMITTED / name, 5, configs, tmp_path)
    assert {"loss/total", "error/rel_l2"} <= set(gaps) and set(DECISIONS) & set(gaps)
    same, line = rerun_verdict(gaps, HERE_TOLERANCE)
    assert same, line


def test_a_rerun_passes_on_the_same_decisions_within_the_tolerance():
    from pinn_apts.paper.experiments import rerun_verdict

    assert rerun_verdict({"loss/total": 0.0, "apts/stage2_tries": 0.0}, 0.0) == (
        True, "max relative difference of loss/total 0, max relative difference of apts/stage2_tries 0 (bit for bit)")
    assert not rerun_verdict({"loss/total": 1e-12, "apts/stage2_tries": 0.0}, 0.0)[0]
    same, line = rerun_verdict({"loss/total": 1e-12, "apts/stage2_tries": 0.0}, 1e-6)
    assert same and line.endswith("(the same decisions, the rest within 1e-06)")
    assert not rerun_verdict({"loss/total": 1e-7, "apts/stage1_accepted": 1e-12}, 1e-6)[0]  # a decision differs
    assert not rerun_verdict({"loss/total": 2e-6, "tr/tries": 0.0}, 1e-6)[0]


def test_check_refuses_a_file_without_a_commit_and_a_missing_file(tmp_path, capsys):
    record = json.loads((COMMITTED / "budget" / "heat_adam_s0.json").read_text())
    record["provenance"]["commit"] = None
    (tmp_path / "x.json").write_text(json.dumps(record))
    if source_state()["commit"] is not None:
        with pytest.raises(SystemExit, match="names no commit to rerun it with"):
            main(["--check", str(tmp_path / "x.json"), "--iterations", "2"])
    with pytest.raises(SystemExit):
        main(["--check", str(tmp_path / "none.json")])
    assert "no such file" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--here"])
    assert "--here and --tolerance go with --check FILE" in capsys.readouterr().err


# one glob per experiment: each PDE's matrix, the Gauss-Newton runs, the budget runs, the least-squares study
# and its probes (residual-based sampling: Burgers from one commit, Heat and Laplace from a later one)
@pytest.mark.repro
@pytest.mark.parametrize("pattern", ["burgers_*", "heat_*", "laplace_*", "gauss_newton/*", "budget/*",
                                     "least_squares/*", "least_squares_10k/*", "least_squares_500/*",
                                     "least_squares_rad/burgers_*", "least_squares_rad/heat_*",
                                     "least_squares_rad/laplace_*", "least_squares_rad_2000/*"])
def test_committed_results_come_from_one_clean_commit_of_main(pattern):
    records = [json.loads(path.read_text()) for path in COMMITTED.glob(f"{pattern}.json")]
    commits = {record.get("provenance", {}).get("commit") for record in records}
    assert records and len(commits) == 1 and None not in commits, f"{pattern}: files from {commits}"
    assert not any(record["provenance"]["dirty"] for record in records)
    (commit,) = commits
    if source_state()["commit"] is None:
        pytest.skip("not a git checkout: cannot tell whether the files' commit is in this history")
    git = lambda *args: subprocess.run(["git", *args], cwd=COMMITTED.parent, capture_output=True, text=True)  # noqa: E731
    if git("rev-parse", "--is-shallow-repository").stdout.strip() == "true" and git("cat-file", "-e", commit).returncode:
        pytest.skip(f"a shallow clone without commit {commit[:12]}: cannot tell whether it is in this history")
    ancestor = git("merge-base", "--is-ancestor", commit, "HEAD")
    assert ancestor.returncode == 0, f"{pattern}: commit {commit[:12]} is not in this checkout's history"


def test_stage1_share_and_what_d_devices_would_allow():
    from pinn_apts.paper.report import stage1_share, stage1_table

    def run(seed, stage1, stage2, method="apts_d4"):
        steps = range(len(stage1))
        return {"problem": "heat", "method": method, "seed": seed,
                "curves": {"time/stage1": list(zip(steps, stage1)), "time/stage2": list(zip(steps, stage2))}}

    # the first iteration (compilation) is left out: 3 s of Stage I against 1 s of Stage II
    first = run(0, [100.0, 1.0, 2.0], [50.0, 0.5, 0.5])
    assert stage1_share(first) == pytest.approx(0.75)
    assert stage1_share({"curves": {}}) is None  # an older file, or a method without stages
    table = stage1_table({("heat", "apts_d4"): [first, run(1, [9.0, 1.0], [9.0, 1.0])],
                          ("heat", "tr"): [run(0, [1.0, 1.0], [1.0, 1.0], "tr")]})
    assert "| heat | apts_d4 | 2 | 0.62 |" in table  # median of 0.75 and 0.5
    # 1 / ((1 - 0.75) + 0.75 / 4) = 2.29 and 1 / (0.5 + 0.5 / 4) = 1.6: median 1.94
    assert table.rstrip().endswith("| 1.94 |") and "| tr |" not in table
    assert stage1_table({("heat", "tr"): [run(0, [1.0, 1.0], [1.0, 1.0], "tr")]}) == ""
