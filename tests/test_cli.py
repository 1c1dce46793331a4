import os
import re
import shutil
import signal
import subprocess
from pathlib import Path

import pytest
import torch
import yaml

from pinn_apts.training.cli import CONFIG_DIR, cli_main, main

REPO_CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def quiet(tmp_path, *extra):
    return [
        "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false",
        f"--trainer.default_root_dir={tmp_path}",
        *extra,
    ]


def test_repo_configs_are_the_packaged_ones():
    names = sorted(p.name for p in REPO_CONFIGS.glob("*.yaml"))
    assert names == sorted(p.name for p in CONFIG_DIR.glob("*.yaml"))
    for pde in ("heat", "burgers", "laplace"):
        for method in ("adam", "lbfgs", "lbfgs_wolfe", "tr", "apts_d2", "apts_d4", "apts_d8"):
            assert f"{pde}_{method}.yaml" in names


@pytest.mark.parametrize("pde", ["burgers", "heat", "laplace"])
def test_gauss_newton_configs_are_the_papers_but_for_the_local_curvature(pde):
    paper = yaml.safe_load((CONFIG_DIR / f"{pde}_apts_d4.yaml").read_text())
    variant = yaml.safe_load((CONFIG_DIR / "gauss_newton" / f"{pde}_apts_d4.yaml").read_text())
    assert variant["model"]["init_args"].pop("local_curvature") == "gauss_newton"
    assert variant == paper and "local_curvature" not in paper["model"]["init_args"]


@pytest.mark.parametrize("name", [f"{pde}_{method}.yaml" for pde in ("burgers", "heat", "laplace")
                                  for method in ("tr", "apts_d4")])
def test_the_sampling_probes_are_the_least_squares_config_but_for_the_interior_points(name):
    base = yaml.safe_load((CONFIG_DIR / "least_squares" / name).read_text())
    if name.startswith("burgers"):
        probe = yaml.safe_load((CONFIG_DIR / "least_squares_10k" / name).read_text())
        assert probe["data"].pop("early_sizes") == [10000, 800, 50]
        assert probe["data"].pop("late_sizes") == [10000, 100, 100]
        assert probe == base
    probe = yaml.safe_load((CONFIG_DIR / "least_squares_rad" / name).read_text())
    assert [probe["data"].pop(key) for key in ("interior_sampling", "residual_pool", "residual_power",
                                                  "residual_floor")] == ["residual", 10000, 1.0, 1.0]
    assert probe == base


def test_default_config_fit_overrides(tmp_path):
    cli = cli_main(["fit", *quiet(tmp_path, "--trainer.max_steps=3")])
    assert type(cli.model).__name__ == "APTSPINN" and cli.model.num_subdomains == 4
    assert cli.model.problem.name == "burgers" and cli.datamodule.problem is cli.model.problem
    assert cli.trainer.global_step == 3
    assert cli.model.dtype == torch.float64
    run_dir = Path(cli.trainer.log_dir)
    assert run_dir.is_relative_to(tmp_path / "lightning_logs")
    assert (run_dir / "checkpoints" / "last.ckpt").exists() and (run_dir / "error.png").exists()
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert saved["trainer"]["max_steps"] == 3


@pytest.mark.parametrize("config", ["heat_adam.yaml", "laplace_lbfgs.yaml", "burgers_tr.yaml", "laplace_apts_d8.yaml"])
def test_fit_from_config_file(tmp_path, config):
    cli = cli_main(["fit", "--config", str(REPO_CONFIGS / config), *quiet(tmp_path, "--trainer.max_steps=2")])
    pde, method = config.removesuffix(".yaml").split("_", 1)
    assert cli.model.problem.name == pde
    assert type(cli.model).__name__ == {"adam": "AdamPINN", "lbfgs": "LBFGSPINN", "tr": "TrustRegionPINN", "apts_d8": "APTSPINN"}[method]
    assert cli.trainer.global_step == 2


def test_problem_coefficients_and_seed_from_config(tmp_path):
    config = tmp_path / "heat.yaml"
    config.write_text(
        "model:\n  class_path: pinn_apts.AdamPINN\n"
        "data:\n  problem:\n    class_path: pinn_apts.Heat\n    init_args:\n      kappa: 0.2\n  seed: 7\n"
    )
    cli = cli_main(["fit", "--config", str(config), *quiet(tmp_path, "--trainer.max_steps=1")])
    assert cli.model.problem.kappa == 0.2 and cli.model.hparams.seed == 7


def test_bad_problem_name_is_a_clear_error(tmp_path, capsys):
    with pytest.raises((SystemExit, ValueError)) as info:
        cli_main(["fit", *quiet(tmp_path, "--data.problem=wave", "--trainer.max_steps=1")])
    message = str(info.value) + capsys.readouterr().err
    assert "unknown problem 'wave'" in message


def test_print_config_prints_the_embedded_default(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as info:  # jsonargparse exits 0 after printing
        main(["fit", "--print_config"])
    assert info.value.code in (0, None)
    config = yaml.safe_load(capsys.readouterr().out)
    assert config["model"]["class_path"] == "pinn_apts.APTSPINN"
    assert config["model"]["init_args"]["num_subdomains"] == 4
    assert config["trainer"]["max_steps"] == 500 and config["trainer"]["precision"] == "64-true"
    assert config["data"]["problem"] == "burgers"
    # the recommended configuration, whole: a copy of it is the config a user starts from
    recommended = yaml.safe_load((REPO_CONFIGS / "least_squares_rad" / "burgers_apts_d4.yaml").read_text())
    assert recommended["model"]["init_args"].items() <= config["model"]["init_args"].items()
    assert recommended["data"].items() <= config["data"].items()


def _settings(cli):
    return (cli.model.hparams["curvature"], cli.model.hparams["local_subproblem"], cli.model.hparams["damping"],
            cli.datamodule.residual_sampling is not None, cli.trainer.max_steps)


def test_without_a_config_file_fit_trains_the_recommended_configuration_and_with_one_the_files(tmp_path):
    """Bare `pinn-apts fit` (overrides allowed) trains recommended.yaml on top of default.yaml; a config
    file starts from default.yaml alone, so that nothing of the recommended one leaks into the paper's
    configs (or a user's partial one)."""
    log = ["--trainer.logger=false"]
    assert _settings(cli_main([*log, "--data.problem=heat"], run=False)) == ("gauss_newton", "exact", 0.0, True, 500)
    for flag in (["--config", str(REPO_CONFIGS / "heat_apts_d4.yaml")], [f"--config={REPO_CONFIGS / 'heat_apts_d4.yaml'}"],
                 ["-c", str(REPO_CONFIGS / "heat_apts_d4.yaml")]):
        assert _settings(cli_main([*flag, *log], run=False)) == ("hessian", "cg", 0.001, False, 2000)
    partial = tmp_path / "partial.yaml"
    partial.write_text("model:\n  class_path: pinn_apts.APTSPINN\n  init_args:\n    num_subdomains: 2\n")
    cli = cli_main(["--config", str(partial), *log], run=False)
    assert cli.model.num_subdomains == 2 and _settings(cli) == ("hessian", "cg", 0.001, False, 2000)


def test_threads_option(tmp_path):
    cli_main(["fit", *quiet(tmp_path, "--trainer.max_steps=1", "--threads=2", "--config",
                            str(REPO_CONFIGS / "heat_adam.yaml"))])
    assert torch.get_num_threads() == 2
    cli_main(["fit", *quiet(tmp_path, "--trainer.max_steps=1", "--config", str(REPO_CONFIGS / "heat_adam.yaml"))])
    assert torch.get_num_threads() == 1  # the default
    with pytest.raises(ValueError, match="threads must be an integer >= 1, got 0"):
        cli_main(["fit", *quiet(tmp_path, "--trainer.max_steps=1", "--threads=0")])


# ---------------------------------------------------------------- the console script, as a user runs it
console = pytest.mark.skipif(shutil.which("pinn-apts") is None, reason="console script not installed")
SMALL = ["--data.early_sizes=[200, 60, 20]", "--data.late_sizes=[200, 30, 30]", "--data.seed=1"]

SIGNAL_AT = '''
import os
import signal
from lightning.pytorch.callbacks import Callback


class SignalAt(Callback):
    """Send signal `signum` to this process when outer iteration `iteration` starts."""

    def __init__(self, iteration: int, signum: int) -> None:
        self.iteration, self.signum = iteration, signum

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.iteration:
            os.kill(os.getpid(), self.signum)
'''


def run_console(cwd, *args):
    """``pinn-apts fit ...`` in ``cwd``, without PYTHONPATH, as a new user would run it."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PINN_APTS_TRACEBACK")}
    return subprocess.run(["pinn-apts", "fit", "--trainer.enable_progress_bar=false",
                           "--trainer.enable_model_summary=false", *args],
                          capture_output=True, text=True, cwd=cwd, env=env, timeout=600)


def last_line(proc):
    return proc.stderr.strip().splitlines()[-1]


def run_state(path):
    state = torch.load(path, weights_only=True)  # checkpoints hold data only
    return state["global_step"], state["state_dict"], state["optimizer_states"][0]["state"]


@pytest.mark.slow
@console
def test_console_script_exits_0_and_says_where_the_run_went(tmp_path):
    proc = run_console(tmp_path, "--config", str(REPO_CONFIGS / "heat_adam.yaml"), "--trainer.max_steps=3")
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_dir = tmp_path / "lightning_logs" / "version_0"
    assert f"run folder {run_dir}" in proc.stderr
    assert f"tensorboard --logdir {tmp_path / 'lightning_logs'}" in proc.stderr
    assert "finished after 3 outer iterations" in proc.stderr and f"error figure {run_dir / 'error.png'}" in proc.stderr
    assert "PINNCLI object" not in proc.stdout + proc.stderr
    assert "LeafSpec" not in proc.stderr  # Lightning's use of a torch deprecation: noise, filtered
    final = re.search(r"final relative L2 error (\S+), RMSE (\S+)\n", proc.stderr)
    assert final is not None and 0 < float(final[1]) < 2 and 0 < float(final[2]) < 2, proc.stderr[-2000:]
    assert re.search(r"\d+\.\d s of training", proc.stderr)


@pytest.mark.slow
@console
def test_console_script_signal_then_resume_equals_the_uninterrupted_run_bit_for_bit(tmp_path):
    (tmp_path / "signal_at.py").write_text(SIGNAL_AT)  # found in the working directory, no PYTHONPATH
    checkpoint = {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                  "init_args": {"save_last": True, "save_top_k": 0, "every_n_train_steps": 100}}
    stopper = {"class_path": "signal_at.SignalAt", "init_args": {"iteration": 4, "signum": int(signal.SIGINT)}}
    (tmp_path / "plain.yaml").write_text(yaml.safe_dump({"trainer": {"callbacks": [checkpoint]}}))
    (tmp_path / "stopped.yaml").write_text(yaml.safe_dump({"trainer": {"callbacks": [checkpoint, stopper]}}))
    common = [*SMALL, "--trainer.max_steps=10"]

    straight = run_console(tmp_path, *common, "--config", "plain.yaml")
    assert straight.returncode == 0, straight.stderr[-3000:]
    stopped = run_console(tmp_path, *common, "--config", "stopped.yaml")
    assert stopped.returncode == 130, stopped.stderr[-3000:]  # 128 + SIGINT
    assert "stopped by SIGINT after 5 outer iterations" in stopped.stderr
    ckpt = tmp_path / "lightning_logs" / "version_1" / "checkpoints" / "last.ckpt"
    assert run_state(ckpt)[0] == 5 and (ckpt.parents[1] / "error.png").exists()
    resumed = run_console(tmp_path, *common, "--config", "plain.yaml", f"--ckpt_path={ckpt}")
    assert resumed.returncode == 0, resumed.stderr[-3000:]

    step_a, weights_a, optim_a = run_state(tmp_path / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt")
    step_b, weights_b, optim_b = run_state(tmp_path / "lightning_logs" / "version_2" / "checkpoints" / "last.ckpt")
    assert step_a == step_b == 10
    assert weights_a.keys() == weights_b.keys() and all(torch.equal(weights_a[k], weights_b[k]) for k in weights_a)
    untimed = lambda record: {k: v for k, v in record.items() if not k.endswith("_seconds")}
    assert {k: v for k, v in optim_a["apts"].items() if k != "last"} == {k: v for k, v in optim_b["apts"].items() if k != "last"}
    assert untimed(optim_a["apts"]["last"]) == untimed(optim_b["apts"]["last"])  # the last iteration's record


def test_bad_input_exits_2_with_the_message_last(tmp_path, monkeypatch, capsys):
    """The console script's exit statuses for bad input, through :func:`main` in this process (the
    installed script is that function: its own subprocess test is above)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("PINN_APTS_TRACEBACK", raising=False)
    quietly = ["--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false"]
    assert main(["fit", *quietly, "--config", str(REPO_CONFIGS / "heat_adam.yaml"), "--trainer.max_steps=1"]) == 0
    heat_ckpt = str(tmp_path / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt")
    capsys.readouterr()
    cases = [
        (["--model.init_args.num_subdomains=0"], "num_subdomains must be an integer >= 1, got 0"),
        (["--data.seed=-1"], "seed must be an integer >= 0, got -1"),
        (["--trainer.precision=16-mixed"], "trainer.precision must be '64-true' (the default) or '32-true'"),
        (["--data.total_iterations=2"], "data.total_iterations (2) must be at least trainer.max_steps (3)"),
        (["--data.problem=heat", f"--ckpt_path={heat_ckpt}"],
         "the checkpoint was made by AdamPINN and this run's model is APTSPINN"),
        (["--config", str(REPO_CONFIGS / "burgers_adam.yaml"), f"--ckpt_path={heat_ckpt}"],
         "model.problem: checkpoint {'class_path': 'pinn_apts.Heat'"),
    ]
    for args, message in cases:
        status = main(["fit", *quietly, *SMALL, "--trainer.max_steps=3", *args])
        err = capsys.readouterr().err
        assert status == 2, (args, err[-3000:])
        assert "Traceback" not in err, args
        lines = err[err.index("pinn-apts: error:"):]
        assert message in lines, (args, lines)
        last = err.strip().splitlines()[-1]
        assert last.startswith(("pinn-apts: error:", "  model.")), (args, last)
    assert not (tmp_path / "lightning_logs" / "version_1" / "checkpoints").exists()  # nothing was trained
