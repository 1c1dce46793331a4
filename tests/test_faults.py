"""Faults: bad checkpoint files, a writer killed mid-write, a dead peer process of a DDP run."""

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from pinn_apts import AdamPINN, PINNDataModule
from pinn_apts.training.cli import main
from pinn_apts.training.faults import (
    AtomicCheckpointIO,
    CheckpointError,
    read_checkpoint,
)

from .conftest import fast_trainer

REPO_CONFIGS = Path(__file__).resolve().parents[1] / "configs"
SMALL = ["--data.early_sizes=[200, 60, 20]", "--data.late_sizes=[200, 30, 30]", "--data.seed=1"]
QUIET = ["--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false"]


def bad_files(folder: Path, good: Path) -> dict[str, Path]:
    data = good.read_bytes()
    files = {"truncated": data[: len(data) // 2], "empty": b"", "text": b"not a checkpoint\n"}
    paths = {name: folder / f"{name}.ckpt" for name in (*files, "pickled objects", "other torch file")}
    for name, content in files.items():
        paths[name].write_bytes(content)
    torch.save({"state_dict": {}, "pinn_apts": {}, "object": Path("x")}, paths["pickled objects"])
    torch.save({"weights": torch.zeros(3)}, paths["other torch file"])
    return paths


def test_bad_checkpoint_files_are_refused_with_exit_2_and_no_unsafe_advice(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("PINN_APTS_TRACEBACK", raising=False)
    assert main(["fit", *QUIET, *SMALL, "--config", str(REPO_CONFIGS / "heat_adam.yaml"), "--trainer.max_steps=1"]) == 0
    good = tmp_path / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt"
    capsys.readouterr()
    reasons = {"truncated": "truncated, or not a torch checkpoint", "empty": "the file is empty",
               "text": "not a torch checkpoint: its bytes are no pickle a safe load reads",
               "pickled objects": "it holds Python objects that a safe, weights-only load refuses",
               "other torch file": "a torch file, but no checkpoint of a pinn-apts module"}
    for name, path in bad_files(tmp_path, good).items():
        status = main(["fit", *QUIET, *SMALL, "--config", str(REPO_CONFIGS / "heat_adam.yaml"),
                       "--trainer.max_steps=3", f"--ckpt_path={path}"])
        err = capsys.readouterr().err
        last = err.strip().splitlines()[-1]
        assert status == 2, (name, err[-2000:])
        assert last.startswith(f"pinn-apts: error: {path} is not a readable pinn-apts checkpoint ({reasons[name]}"), last
        assert "weights_only" not in err and "Traceback" not in err, (name, err[-2000:])
        with pytest.raises(CheckpointError, match=re.escape(f"{path} is not a readable pinn-apts checkpoint")):
            AdamPINN.load_from_checkpoint(path)
    assert not (tmp_path / "lightning_logs" / "version_1" / "checkpoints").exists()  # nothing was trained
    assert main(["fit", *QUIET, *SMALL, "--config", str(REPO_CONFIGS / "heat_adam.yaml"), "--trainer.max_steps=2",
                 f"--ckpt_path={tmp_path / 'missing.ckpt'}"]) == 2
    assert AdamPINN.load_from_checkpoint(good).hparams.lr == 0.009  # a good one loads


WRITER = """
import sys, time, torch
from pinn_apts.training.faults import AtomicCheckpointIO

io, path = AtomicCheckpointIO(), sys.argv[1]
io.save_checkpoint({"global_step": 1, "state_dict": {"w": torch.ones(4)}, "pinn_apts": {}}, path)
real_save = torch.save

def save_half_then_hang(obj, file):  # the writer is killed half-way through the next checkpoint
    file.write(b"PK" + b"x" * 5000)
    file.flush()
    print("writing", flush=True)
    time.sleep(600)

torch.save = save_half_then_hang
io.save_checkpoint({"global_step": 2, "state_dict": {"w": torch.zeros(4)}, "pinn_apts": {}}, path)
"""


def test_a_writer_killed_mid_write_leaves_the_previous_checkpoint(tmp_path):
    path = tmp_path / "last.ckpt"
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE, text=True)
    try:
        assert writer.stdout.readline().strip() == "writing"
        writer.send_signal(signal.SIGKILL)
        writer.wait(timeout=30)
    finally:
        writer.kill()
    saved = read_checkpoint(path)
    assert saved["global_step"] == 1 and torch.equal(saved["state_dict"]["w"], torch.ones(4))
    partial = list(tmp_path.glob(".last.ckpt.*.partial"))
    assert len(partial) == 1 and partial[0].stat().st_size > 0  # the half-written one, beside it
    AtomicCheckpointIO().save_checkpoint({"global_step": 3, "state_dict": {}, "pinn_apts": {}}, path)
    assert read_checkpoint(path)["global_step"] == 3 and not list(tmp_path.glob("*.partial"))  # swept


def test_training_writes_checkpoints_through_the_atomic_io(tmp_path):
    from lightning.pytorch.callbacks import ModelCheckpoint

    checkpoint = ModelCheckpoint(dirpath=tmp_path, save_last=True, save_top_k=0, every_n_train_steps=2)
    trainer = fast_trainer(3, tmp_path, enable_checkpointing=True, callbacks=[checkpoint])
    trainer.fit(AdamPINN(problem="heat", seed=1), PINNDataModule("heat", seed=1, early_sizes=(200, 60, 20),
                                                                 late_sizes=(200, 30, 30)))
    assert isinstance(trainer.strategy.checkpoint_io, AtomicCheckpointIO)
    assert read_checkpoint(tmp_path / "last.ckpt")["global_step"] == 3


def test_the_default_config_checkpoints_every_10_outer_iterations():
    from pinn_apts.training.cli import cli_main

    cli = cli_main(["--trainer.max_steps=5"], run=False)
    (checkpoint,) = [cb for cb in cli.trainer.callbacks if type(cb).__name__ == "ModelCheckpoint"]
    assert checkpoint.save_last and checkpoint._every_n_train_steps == 10


def test_collective_timeout_reaches_the_ddp_strategy_and_is_checked():
    from datetime import timedelta

    from pinn_apts.training.cli import COLLECTIVE_TIMEOUT, cli_main

    args = ["--trainer.max_steps=5", "--trainer.accelerator=cpu", "--trainer.strategy=ddp", "--trainer.devices=2"]
    assert cli_main(args, run=False).trainer.strategy._timeout == timedelta(seconds=COLLECTIVE_TIMEOUT)
    assert cli_main([*args, "--collective_timeout=12.5"], run=False).trainer.strategy._timeout == timedelta(seconds=12.5)
    with pytest.raises(ValueError, match="collective_timeout must be a number of seconds > 0, got 0.0"):
        cli_main([*args, "--collective_timeout=0"], run=False)


def test_only_a_broken_collective_is_reported_as_a_failed_peer():
    """A non-finite loss under DDP stops every rank alike (its own message, exit 1): rank 1 exiting
    with status 1 beside it must not turn it into a failed peer."""
    from pinn_apts.training.faults import _collective_failure

    assert _collective_failure(RuntimeError("[pair.cc:537] Read error [127.0.0.1]:58599: Connection reset by peer"))
    assert _collective_failure(RuntimeError("[unbound_buffer.cc:78] Timed out waiting 10000ms for recv operation"))
    assert not _collective_failure(FloatingPointError("non-finite loss at outer iteration 3: the interior term is nan"))
    assert not _collective_failure(ValueError("num_subdomains (D=3) must be divisible by the number of processes"))


# ---------------------------------------------------------------- a dead peer, on 2 processes with gloo
console = pytest.mark.skipif(shutil.which("pinn-apts") is None, reason="console script not installed")
DDP = ["--trainer.strategy=ddp", "--trainer.devices=2", "--trainer.accelerator=cpu", "--trainer.max_steps=60",
       *QUIET, "--data.early_sizes=[200, 100, 20]", "--data.late_sizes=[200, 50, 50]"]


def children(pid: int) -> list[int]:
    return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def saved_step(path: Path) -> int:
    try:
        return int(torch.load(path, weights_only=True)["global_step"])
    except Exception:  # noqa: BLE001 (not written yet, or half-way)
        return -1


def run_state(path: Path):
    state = torch.load(path, weights_only=True)
    return state["global_step"], state["state_dict"], state["optimizer_states"][0]["state"]["apts"]


@console
@pytest.mark.ddp
@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="finds the peer process through /proc")
def test_a_dead_peer_stops_rank_0_with_the_resume_command_and_resuming_is_exact(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PINN_APTS_TRACEBACK")}
    (tmp_path / "straight").mkdir()
    straight = subprocess.run(["pinn-apts", "fit", *DDP], cwd=tmp_path / "straight", env=env, capture_output=True,
                              text=True, timeout=600, check=False)
    assert straight.returncode == 0, straight.stderr[-3000:]

    (tmp_path / "killed").mkdir()
    checkpoint = tmp_path / "killed" / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt"
    run = subprocess.Popen(["pinn-apts", "fit", *DDP], cwd=tmp_path / "killed", env=env, stderr=subprocess.PIPE,
                           stdout=subprocess.DEVNULL, text=True)
    try:
        deadline = time.monotonic() + 300
        while saved_step(checkpoint) < 20 and run.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        (peer,) = children(run.pid)  # rank 1, launched by rank 0
        os.kill(peer, signal.SIGKILL)
        _, err = run.communicate(timeout=300)
    finally:
        run.kill()
    assert run.returncode == 3, err[-3000:]
    last = err.strip().splitlines()[-1]
    assert last.startswith("pinn-apts: error: outer iteration ") and "of a 2-process run stopped on rank 0" in last
    assert f"a peer process failed (rank 1 (pid {peer}) killed by SIGKILL)" in last, last
    resume = re.search(r"resume from (\S+) \(after outer iteration (\d+)\) with: (pinn-apts fit .*)$", last)
    assert resume is not None and Path(resume[1]) == checkpoint, last
    step = int(resume[2])
    assert 20 <= step < 60 and step % 10 == 0 and saved_step(checkpoint) == step
    assert int(re.search(r"outer iteration (\d+) of", last)[1]) - 1 - step < 10  # at most 10 iterations lost

    resumed = subprocess.run(resume[3].split(), cwd=tmp_path / "killed", env=env, capture_output=True, text=True,
                             timeout=600, check=False)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    step_a, weights_a, apts_a = run_state(tmp_path / "straight" / "lightning_logs" / "version_0" / "checkpoints"
                                          / "last.ckpt")
    step_b, weights_b, apts_b = run_state(tmp_path / "killed" / "lightning_logs" / "version_1" / "checkpoints"
                                          / "last.ckpt")
    assert step_a == step_b == 60
    assert all(torch.equal(weights_a[k], weights_b[k]) for k in weights_a)  # bit for bit
    untimed = lambda record: {k: v for k, v in record.items() if not k.endswith("_seconds")}
    assert untimed(apts_a["last"]) == untimed(apts_b["last"])
    assert {k: v for k, v in apts_a.items() if k != "last"} == {k: v for k, v in apts_b.items() if k != "last"}


@console
@pytest.mark.ddp
@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="finds the peer process through /proc")
def test_a_hung_peer_stops_rank_0_after_the_collective_timeout_with_the_resume_command(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PINN_APTS_TRACEBACK")}
    checkpoint = tmp_path / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt"
    log = (tmp_path / "stderr.txt").open("w")  # not a pipe: the stopped peer would hold it open
    run = subprocess.Popen(["pinn-apts", "fit", *DDP, "--trainer.max_steps=400", "--collective_timeout=30"],
                           cwd=tmp_path, env=env, stderr=log, stdout=subprocess.DEVNULL, text=True)
    peer = None
    try:
        deadline = time.monotonic() + 300
        while saved_step(checkpoint) < 10 and run.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        (peer,) = children(run.pid)
        os.kill(peer, signal.SIGSTOP)  # alive, but it answers no collective
        stopped_at = time.monotonic()
        run.wait(timeout=300)
        waited = time.monotonic() - stopped_at
    finally:
        run.kill()
        log.close()
        if peer is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(peer, signal.SIGKILL)
    err = (tmp_path / "stderr.txt").read_text()
    assert run.returncode == 3, err[-3000:]
    assert 30 <= waited < 200  # the timeout given (it must also cover the processes' start), not 30 minutes
    last = err.strip().splitlines()[-1]
    assert "did not answer within the process-group timeout (--collective_timeout" in last, last
    resume = re.search(r"resume from (\S+) \(after outer iteration (\d+)\) with: pinn-apts fit --config \S+ "
                       r"--ckpt_path (\S+)$", last)
    assert resume is not None and Path(resume[1]) == checkpoint == Path(resume[3]), last
    assert int(resume[2]) >= 10 and saved_step(checkpoint) == int(resume[2])
