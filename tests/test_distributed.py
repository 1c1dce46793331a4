"""APTS across processes: Lightning's DDP strategy on CPUs (gloo), compared with one process."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pinn_apts import APTS, APTSPINN
from pinn_apts.core.distributed import replicas_of_rank

from .conftest import FakeRank

pytestmark = pytest.mark.ddp

SCRIPT = Path(__file__).with_name("ddp_run.py")


def run(tmp_path, devices, replicas="sequential", subdomains=4, coherent=False, least_squares=False, steps=10,
        residual_sampling=False):
    out = tmp_path / f"w{devices}_{replicas}_{subdomains}_{coherent}_{least_squares}_{steps}_{residual_sampling}.pt"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--devices", str(devices), "--replicas", replicas,
         "--subdomains", str(subdomains), "--out", str(out), "--steps", str(steps),
         *(["--coherent"] if coherent else []), *(["--least-squares"] if least_squares else []),
         *(["--residual-sampling"] if residual_sampling else [])],
        capture_output=True, text=True, timeout=600,
    )
    return proc, out


@pytest.mark.parametrize("replicas, coherent, residual_sampling", [
    ("sequential", False, False), ("batched", False, False), ("sequential", True, False),
    ("sequential", False, True),  # every rank chooses the same interior points by the residual
])
def test_two_processes_match_one(tmp_path, replicas, coherent, residual_sampling):
    one, out1 = run(tmp_path, 1, replicas, coherent=coherent, residual_sampling=residual_sampling)
    two, out2 = run(tmp_path, 2, replicas, coherent=coherent, residual_sampling=residual_sampling)
    assert one.returncode == 0, one.stderr[-3000:]
    assert two.returncode == 0, two.stderr[-3000:]
    a, b = torch.load(out1), torch.load(out2)
    assert a["world_size"] == 1 and b["world_size"] == 2
    assert (a["theta"] - b["theta"]).abs().max() <= 1e-10
    assert a["radius"] == pytest.approx(b["radius"], rel=1e-9)
    assert (a["stage1_accepted"], a["stage2_tries"]) == (b["stage1_accepted"], b["stage2_tries"])


def test_two_processes_match_one_with_least_squares_steps(tmp_path):
    """Stage II from the normal equations summed over the ranks, the replicas' exact steps on their own
    ranks: one iteration equal to rounding; ten with the same decisions.  The exact steps are as
    sensitive to rounding as the Gauss–Newton model is ill-conditioned (a PINN's J^T J: the gap grows
    from 1e-15 after one iteration to 1e-9 after three and 1e-7 after ten here)."""
    outs = {}
    for steps in (1, 10):
        for devices in (1, 2):
            proc, outs[steps, devices] = run(tmp_path, devices, least_squares=True, steps=steps)
            assert proc.returncode == 0, proc.stderr[-3000:]
    a, b = torch.load(outs[1, 1]), torch.load(outs[1, 2])
    assert (a["theta"] - b["theta"]).abs().max() <= 1e-13
    a, b = torch.load(outs[10, 1]), torch.load(outs[10, 2])
    assert (a["theta"] - b["theta"]).abs().max() <= 1e-6
    assert a["radius"] == b["radius"]
    assert (a["stage1_accepted"], a["stage2_tries"]) == (b["stage1_accepted"], b["stage2_tries"])


def test_replicas_not_divisible_by_processes_is_a_clear_error(tmp_path):
    proc, _ = run(tmp_path, 2, subdomains=3)
    assert proc.returncode != 0
    assert "num_subdomains (D=3) must be divisible by the number of processes (W=2)" in proc.stderr


def test_replica_ownership():
    assert list(replicas_of_rank(8, 1, 2)) == [4, 5, 6, 7]
    assert list(replicas_of_rank(4, 0, 1)) == [0, 1, 2, 3]
    with pytest.raises(ValueError, match=r"num_subdomains \(D=6\) must be divisible by the number of processes \(W=4\)"):
        replicas_of_rank(6, 0, 4)


def test_communicator_with_indivisible_replicas_is_rejected_at_construction():
    with pytest.raises(ValueError, match="must be divisible by the number of processes"):
        APTS([torch.zeros(3, requires_grad=True)], num_subdomains=3, communicator=FakeRank(0, 2))


def test_strategy_that_cannot_work_is_a_clear_error():
    from types import SimpleNamespace

    from lightning.pytorch.strategies import FSDPStrategy, SingleDeviceStrategy

    module = APTSPINN(problem="heat")
    module._trainer = SimpleNamespace(strategy=SingleDeviceStrategy("cpu"))
    module.setup("fit")  # fine
    module._trainer = SimpleNamespace(strategy=FSDPStrategy())
    with pytest.raises(ValueError, match="APTSPINN runs under a single-device or a DDP strategy, got FSDPStrategy"):
        module.setup("fit")


def test_cli_runs_under_ddp_and_rank_zero_writes(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "pinn_apts.training.cli", "fit", "--trainer.strategy", "ddp", "--trainer.devices", "2",
         "--trainer.accelerator", "cpu", "--trainer.max_steps", "3", "--trainer.enable_progress_bar", "false",
         f"--trainer.default_root_dir={tmp_path}", "--data.early_sizes", "[200, 100, 20]",
         "--data.late_sizes", "[200, 50, 50]"],
        capture_output=True, text=True, timeout=600, cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = list((tmp_path / "lightning_logs").iterdir())
    assert len(runs) == 1  # one run folder, written by rank 0
    assert (runs[0] / "error.png").exists() and (runs[0] / "checkpoints" / "last.ckpt").exists()
    state = torch.load(runs[0] / "checkpoints" / "last.ckpt", weights_only=False)
    assert state["global_step"] == 3
