import json

import pytest
import torch

from pinn_apts.experiments import final_network, main, run_one
from pinn_apts.cli import CONFIG_DIR


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


def test_matrix_in_subprocesses(tmp_path, capsys):
    main(["--out", str(tmp_path / "r"), "--log-root", str(tmp_path / "l"), "--problems", "laplace",
          "--methods", "adam", "tr", "--seeds", "0", "--iterations", "2", "--jobs", "2"])
    assert sorted(p.name for p in (tmp_path / "r").glob("*.json")) == ["laplace_adam_s0.json", "laplace_tr_s0.json"]
    main(["--out", str(tmp_path / "r"), "--problems", "laplace", "--methods", "adam", "tr", "--seeds", "0"])
    assert "0 runs to do" in capsys.readouterr().out


def test_bad_arguments():
    with pytest.raises(SystemExit):
        main(["--methods", "sgd"])
    with pytest.raises(SystemExit):
        main(["--iterations", "0"])


def test_report_tables_and_figures(tmp_path):
    from pinn_apts.report import curve_band, load_results, main as report_main, plot_heatmaps, summary_tables

    out = tmp_path / "results"
    for seed in (0, 1):
        run_one("heat", "adam", seed, 3, out, CONFIG_DIR, tmp_path / "logs")
    run_one("heat", "apts_d4", 0, 3, out, CONFIG_DIR, tmp_path / "logs")
    run_one("heat", "lbfgs", 1, 3, out, CONFIG_DIR, tmp_path / "logs")
    groups = load_results(out)
    assert sorted(groups) == [("heat", "adam"), ("heat", "apts_d4"), ("heat", "lbfgs")]
    table = summary_tables(groups)
    assert "| Adam | 2 |" in table and "| APTS D=4 | 1 |" in table and " ± " in table
    steps, mean, low, high = curve_band(groups["heat", "adam"], "error/rel_l2")
    assert list(steps) == [0, 1, 2] and (low <= mean).all() and (mean <= high).all()
    # Figure 4 needs one seed that all of APTS D=4, Adam and L-BFGS ran: none yet
    assert plot_heatmaps(groups) is None
    run_one("heat", "lbfgs", 0, 3, out, CONFIG_DIR, tmp_path / "logs")
    fig = plot_heatmaps(load_results(out))
    assert len(fig.axes) == 4 and "seed 0" in fig.axes[0].get_title()  # three panels and a colorbar
    report_main(["--results", str(out), "--figures", str(tmp_path / "fig")])
    assert (tmp_path / "fig" / "apts_d4.png").stat().st_size > 10_000
    assert (tmp_path / "fig" / "heatmaps.png").stat().st_size > 10_000
