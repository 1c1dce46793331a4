"""Faults: checkpoints written atomically and read with a clear refusal, and a run whose peer process
died or hung stopped with a message that says how to resume.

- :class:`AtomicCheckpointIO` writes a checkpoint to a temporary file beside it and renames it over
  the old one (``os.replace``): a process killed while writing leaves the previous checkpoint in
  place, never a truncated one.  It reads a checkpoint with a safe (weights-only) load by default and
  refuses a file that is empty, truncated, not a torch file, holds Python objects, or is no
  pinn-apts checkpoint, with :class:`CheckpointError` (``<path> is not a readable pinn-apts
  checkpoint (<reason>)``), never with torch's advice to load it unsafely.
- :class:`FaultReport` (every PINN module brings it along) installs that checkpoint IO, and when a
  collective operation of a multi-process run fails, because a peer process died or the
  process-group timeout fired on a hung one, it attaches to the exception the message the
  ``pinn-apts`` command prints last (exit status 3): the outer iteration, the peer that failed where
  it can be known, the checkpoint to resume from with its iteration, and the command.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import re
import signal
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.callbacks import Callback

__all__ = ["FAULT_ATTRIBUTE", "AtomicCheckpointIO", "CheckpointError", "FaultReport", "read_checkpoint"]

#: the attribute :class:`FaultReport` sets on the exception of a failed multi-process run: the message
FAULT_ATTRIBUTE = "pinn_apts_fault"

#: what a broken collective says: a peer's connection closed or reset, a read or write error of the
#: transport, a timeout (gloo, NCCL and torch.distributed wordings)
_PEER_FAILURE = re.compile(
    r"connection (reset|closed|refused)|broken pipe|read error|write error|timed out|timeout|"
    r"nccl|process ?group|socket|peer", re.IGNORECASE)


class CheckpointError(ValueError):
    """A file that is not a readable pinn-apts checkpoint; the message names it and why."""

    def __init__(self, path: str | os.PathLike, reason: str) -> None:
        super().__init__(f"{path} is not a readable pinn-apts checkpoint ({reason})")
        self.path, self.reason = str(path), reason


def _unreadable(path: str | os.PathLike, err: BaseException) -> CheckpointError:
    """The refusal of ``path``, whose load raised ``err``: torch's message is kept only where it
    carries no advice to load the file unsafely."""
    if os.path.exists(path) and os.path.getsize(path) == 0:
        return CheckpointError(path, "the file is empty")
    message = str(err)
    if "Unsupported global" in message:  # the weights-only unpickler met a class or function
        return CheckpointError(path, "it holds Python objects that a safe, weights-only load refuses; pinn-apts "
                                     "checkpoints hold data only")
    if isinstance(err, pickle.UnpicklingError) or "weights_only" in message:  # torch's advice is not passed on
        return CheckpointError(path, "not a torch checkpoint: its bytes are no pickle a safe load reads")
    first = message.strip().splitlines()[0] if message.strip() else ""
    return CheckpointError(path, f"truncated, or not a torch checkpoint: {type(err).__name__} {first}".rstrip())


def _check_contents(path: str | os.PathLike, checkpoint: Any) -> dict:
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint or "pinn_apts" not in checkpoint:
        raise CheckpointError(path, "a torch file, but no checkpoint of a pinn-apts module: it has no 'state_dict' "
                                    "and 'pinn_apts' entries")
    return checkpoint


def read_checkpoint(path: str | os.PathLike, map_location: Any = "cpu", weights_only: bool | None = True) -> dict:
    """The checkpoint at ``path``, loaded safely (``weights_only``); ``CheckpointError`` if it is not a
    readable pinn-apts checkpoint, ``FileNotFoundError`` if there is no such file."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no checkpoint file {path}")
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=weights_only)
    except Exception as err:  # noqa: BLE001 (torch raises RuntimeError, OSError, EOFError, UnpicklingError, ...)
        raise _unreadable(path, err) from None
    return _check_contents(path, checkpoint)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint IO, but a local checkpoint is written to a temporary file in its folder,
    flushed to disk and renamed over the old one, and a checkpoint that cannot be read is refused
    with :class:`CheckpointError`.  Remote paths (``s3://...``) take Lightning's own write."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        if storage_options is not None or "://" in str(path):
            return super().save_checkpoint(checkpoint, path, storage_options)
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".partial")
        try:
            with os.fdopen(handle, "wb") as file:
                torch.save(checkpoint, file)
                file.flush()
                os.fsync(file.fileno())
            os.replace(temporary, path)
            for stale in path.parent.glob(f".{path.name}.*.partial"):  # left by a writer killed mid-write
                with contextlib.suppress(OSError):
                    stale.unlink()
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temporary)
            raise

    def load_checkpoint(self, path: Any, map_location: Any = lambda storage, loc: storage,
                        weights_only: bool | None = None) -> dict[str, Any]:
        if "://" in str(path):
            return super().load_checkpoint(path, map_location, weights_only)
        return read_checkpoint(path, map_location, weights_only)  # Lightning's torch.load of a local file, checked


class FaultReport(Callback):
    """Install :class:`AtomicCheckpointIO` (unless the strategy has another IO than Lightning's default),
    and turn a broken collective of a multi-process run into a message (see the module's docstring)."""

    def __init__(self) -> None:
        self.run_dir: Path | None = None
        self.checkpoints: list[Path] = []

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:
            trainer.strategy.checkpoint_io = AtomicCheckpointIO()

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        from .callbacks import last_checkpoint_paths

        # found now, while every process is there: trainer.log_dir is a collective under DDP
        self.run_dir = Path(trainer.log_dir) if trainer.loggers else None
        self.checkpoints = last_checkpoint_paths(trainer)
        _spare_the_launching_process()

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        if trainer.world_size < 2 or not _collective_failure(exception):
            return  # e.g. a non-finite loss, which every rank meets alike: its own message and status
        dead = _dead_peers(trainer)
        with contextlib.suppress(AttributeError, TypeError):
            setattr(exception, FAULT_ATTRIBUTE, self.message(trainer, exception, dead))

    def message(self, trainer: L.Trainer, exception: BaseException, dead: list[str]) -> str:
        """What failed, where, and how to resume."""
        first = (str(exception).strip().splitlines() or [type(exception).__name__])[0]
        first = re.split(r"(?<=\.) (?=[A-Z])", first)[0]  # its first sentence (gloo adds advice after it)
        timed_out = re.search(r"timed out|timeout", str(exception), re.IGNORECASE) is not None
        if dead:
            what = f"a peer process failed ({', '.join(dead)})"
        elif timed_out:
            what = ("a peer process did not answer within the process-group timeout (--collective_timeout; it "
                    "hung or died)")
        else:
            what = "a peer process failed (which one cannot be told from here)"
        stopped = (f"outer iteration {trainer.global_step + 1} of a {trainer.world_size}-process run stopped on rank "
                   f"{trainer.global_rank}: {what}; the collective operation broke off with: {first[:300]}")
        lines = [stopped]
        saved = [(path, _saved_step(path)) for path in self.checkpoints if path.is_file()]
        saved = [(path, step) for path, step in saved if step is not None]
        if saved:
            path, step = max(saved, key=lambda item: item[1])
            config = self.run_dir / "config.yaml" if self.run_dir is not None else None
            config_arg = f"--config {config} " if config is not None and config.is_file() else ""
            lines.append(f"resume from {path} (after outer iteration {step}) with: pinn-apts fit {config_arg}"
                         f"--ckpt_path {path}")
        else:
            lines.append("no checkpoint was written before: start the run again")
        return "; ".join(lines)


def _spare_the_launching_process() -> None:
    """Lightning's child-process observer (a thread of its subprocess launcher, on rank 0) polls the peers
    every 5 s and, finding one dead, SIGKILLs them all and this process too: a race with the broken
    collective that brings this process the fault message and exit status 3 (lost once in CI,
    2026-12-07).  It keeps killing the other peers, not this process, which ends by itself on the broken
    collective.  (Lightning 2.6: ``_ChildProcessObserver._terminate_all``; a later version may change it.)"""
    for thread in threading.enumerate():
        children = getattr(thread, "_child_processes", None)
        if thread.name == "child-process-observer" and children is not None:
            thread._terminate_all = lambda children=children: [p.kill() for p in children if p.poll() is None]


def _collective_failure(exception: BaseException) -> bool:
    """Whether ``exception`` is a broken collective: torch.distributed's own error types, or the
    transport's words in a ``RuntimeError`` (gloo raises those)."""
    if isinstance(exception, getattr(torch.distributed, "DistError", ())):
        return True
    return isinstance(exception, RuntimeError) and _PEER_FAILURE.search(str(exception)) is not None


def _saved_step(path: Path) -> int | None:
    try:
        return int(read_checkpoint(path)["global_step"])
    except (OSError, ValueError, KeyError, TypeError):  # an unreadable checkpoint is none to resume from
        return None


def _dead_peers(trainer: L.Trainer, wait: float = 2.0) -> list[str]:
    """The peer processes this one launched (Lightning's subprocess launcher, on rank 0) that have ended,
    each as ``"rank r (pid p) killed by SIGKILL"`` or ``"... exited with status s"``; others are not
    known here.  Waits up to ``wait`` seconds for a dying peer to be reaped."""
    procs = list(getattr(getattr(trainer.strategy, "launcher", None), "procs", None) or [])
    deadline = time.monotonic() + wait
    while procs and all(p.poll() is None for p in procs) and time.monotonic() < deadline:
        time.sleep(0.05)
    dead = []
    for rank, proc in enumerate(procs, start=1):
        code = proc.poll()
        if code is None:
            continue
        how = (f"killed by {signal.Signals(-code).name}" if code < 0 and -code in signal.valid_signals()
               else f"exited with status {code}")
        dead.append(f"rank {rank} (pid {proc.pid}) {how}")
    return dead
