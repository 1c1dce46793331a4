import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from pinn_apts.cli import CONFIG_DIR, cli_main

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


@pytest.mark.skipif(shutil.which("pinn-apts") is None, reason="console script not installed")
def test_console_script_prints_config(tmp_path):
    out = subprocess.run(
        ["pinn-apts", "fit", "--print_config"], capture_output=True, text=True, check=True, cwd=tmp_path
    ).stdout
    config = yaml.safe_load(out)
    assert config["model"]["class_path"] == "pinn_apts.APTSPINN"
    assert config["model"]["init_args"]["num_subdomains"] == 4
    assert config["trainer"]["max_steps"] == 2000 and config["trainer"]["precision"] == "64-true"
    assert config["data"]["problem"] == "burgers"


def test_threads_option(tmp_path):
    cli_main(["fit", *quiet(tmp_path, "--trainer.max_steps=1", "--threads=2", "--config",
                            str(REPO_CONFIGS / "heat_adam.yaml"))])
    assert torch.get_num_threads() == 2
    cli_main(["fit", *quiet(tmp_path, "--trainer.max_steps=1", "--config", str(REPO_CONFIGS / "heat_adam.yaml"))])
    assert torch.get_num_threads() == 1  # the default
    with pytest.raises(ValueError, match="threads must be an integer >= 1, got 0"):
        cli_main(["fit", *quiet(tmp_path, "--trainer.max_steps=1", "--threads=0")])
