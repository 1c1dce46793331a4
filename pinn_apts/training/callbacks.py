"""Lightning callbacks every PINN module brings along (:meth:`PINNModule.configure_callbacks`).

- :class:`GracefulStop`: Ctrl-C or SIGTERM stops the run at the end of the outer iteration in
  progress, so that ``last.ckpt`` and the error figure hold the last finished iteration and the
  run can be resumed exactly; a second signal aborts at once.
- :class:`RunReport`: says where the run's logs and checkpoints go, and the TensorBoard
  command, when ``fit`` starts and ends; at the end also the final solution errors and the
  wall-clock seconds of training.
- :class:`ErrorFigure`: at the end of training, the prediction, the exact solution and the
  error on the evaluation grid, to TensorBoard (``error/heatmap``) and ``error.png`` in the run folder.

And one a run adds when it needs it: :class:`StopAtSeconds`, a wall-clock budget read on the run's
own ``time/elapsed`` curve (the time-to-accuracy study's runs).
"""

from __future__ import annotations

import logging
import signal
import threading
from pathlib import Path
from types import FrameType
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_info

from .metrics import error_figure

__all__ = ["ErrorFigure", "GracefulStop", "RunReport", "StopAtSeconds", "last_checkpoint_paths"]

log = logging.getLogger(__name__)

_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def _keeping_last(trainer: L.Trainer) -> list[ModelCheckpoint]:
    return [cb for cb in trainer.checkpoint_callbacks
            if isinstance(cb, ModelCheckpoint) and cb.save_last and cb.dirpath is not None]


def last_checkpoint_paths(trainer: L.Trainer) -> list[Path]:
    """``last.ckpt`` of every :class:`ModelCheckpoint` of ``trainer`` that keeps one."""
    return [Path(cb.format_checkpoint_name({}, cb.CHECKPOINT_NAME_LAST)) for cb in _keeping_last(trainer)]


class GracefulStop(Callback):
    """Stop at the end of the current outer iteration on SIGINT or SIGTERM.

    The first signal is noted and training stops once the outer iteration in progress has
    finished (an iteration interrupted half-way would leave parameters that belong to no
    iteration); the run then ends as a finished one does: ``on_train_end`` hooks run (the
    error figure) and ``last.ckpt`` is written for the last finished iteration.  A second
    signal aborts at once.  Under DDP the ranks agree on the iteration to stop at (one
    boolean all-reduce per iteration).  At the end of every run, interrupted or not, each
    checkpoint callback with ``save_last`` gets a ``last.ckpt`` of the final iteration
    (Lightning's own writes it only if none was written before).

    ``signal`` holds the number of the signal that stopped the run (``None`` if none did);
    the ``pinn-apts`` command exits with ``128 + signal`` then.
    """

    def __init__(self) -> None:
        self.signal: int | None = None
        self.stopped = False
        self._previous: dict[int, Any] = {}

    # ------------------------------------------------------------- signals
    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signal is not None:
            self._restore()
            raise KeyboardInterrupt
        self.signal = signum
        rank_zero_info(
            f"\npinn-apts: {signal.Signals(signum).name} received: stopping after the current outer iteration "
            "and saving last.ckpt (send it again to abort at once)"
        )

    def _restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}

    # ---------------------------------------------------------------- hooks
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.signal, self.stopped = None, False
        if threading.current_thread() is threading.main_thread():
            # installed after Lightning's own SIGTERM handler (registered before the loop starts)
            self._previous = {s: signal.signal(s, self._handle) for s in _SIGNALS}

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        stop = self.signal is not None
        if trainer.world_size > 1:
            stop = trainer.strategy.reduce_boolean_decision(stop, all=False)
        if stop:
            self.stopped = True
            trainer.should_stop = True

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._restore()
        for cb in _keeping_last(trainer):
            path = cb.format_checkpoint_name({}, cb.CHECKPOINT_NAME_LAST)
            # as ModelCheckpoint does before it saves: the state saved names this file as the last one, so a
            # run resumed from it goes on writing last.ckpt (not last-v1.ckpt beside it, which a later resume
            # from last.ckpt would not see) even when the callback had saved none before
            cb.last_model_path = path
            trainer.save_checkpoint(path, weights_only=False)

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self._restore()

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._restore()


class StopAtSeconds(Callback):
    """Stop training after the first outer iteration whose ``time/elapsed`` (the seconds
    :class:`~pinn_apts.training.module.PINNModule` logs at its end: compilation and the first
    iteration counted, a resumed run's earlier seconds included) reaches ``seconds``.

    Lightning's ``max_time`` (:class:`~lightning.pytorch.callbacks.Timer`) does the same on a clock of
    its own, started and read at other moments, so that the last point of a run's curve could fall a
    moment short of the budget; here the logged seconds decide, and the run's last point is at or past
    ``seconds`` whenever the run stopped for it."""

    def __init__(self, seconds: float) -> None:
        if not seconds > 0:
            raise ValueError(f"seconds must be > 0, got {seconds}")
        self.seconds = float(seconds)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any, **kwargs: Any) -> None:
        stop = trainer.strategy.broadcast(pl_module.last_elapsed >= self.seconds)
        trainer.should_stop = trainer.should_stop or stop

    def stopped(self, pl_module: L.LightningModule) -> bool:
        """Whether the run's clock reached the budget (it stopped for it, if it stopped early)."""
        return pl_module.last_elapsed >= self.seconds


class RunReport(Callback):
    """Say where the run writes (logs, TensorBoard command, checkpoints) at the start and end of ``fit``."""

    def _where(self, trainer: L.Trainer) -> tuple[Path | None, list[str]]:
        """The run folder (``None`` without a logger) and the lines that say where the run writes."""
        run_dir, lines = None, []
        if trainer.loggers:
            run_dir = Path(trainer.log_dir)  # a collective under DDP: every rank asks
            lines.append(f"run folder {run_dir}")
            roots = {
                str(Path(logger.root_dir)) for logger in trainer.loggers if isinstance(logger, TensorBoardLogger)
            }
            lines += [f"curves: tensorboard --logdir {root}" for root in sorted(roots)]
        lines += [f"checkpoint {path}" for path in last_checkpoint_paths(trainer)]
        return run_dir, lines

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        _, lines = self._where(trainer)
        if lines:
            rank_zero_info("pinn-apts: " + "\n  ".join(lines))

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        run_dir, lines = self._where(trainer)
        stop = next((cb for cb in trainer.callbacks if isinstance(cb, GracefulStop) and cb.stopped), None)
        how = "finished"
        if stop is not None:
            how = f"stopped by {signal.Signals(stop.signal).name}" if stop.signal else "stopped by a signal"
        errors = pl_module.solution_errors() if hasattr(pl_module, "solution_errors") else {}
        if errors:
            lines.insert(0, f"final relative L2 error {float(errors['error/rel_l2']):.4g}, "
                            f"RMSE {float(errors['error/rmse']):.4g}")
        if hasattr(pl_module, "elapsed"):
            lines.insert(0, f"{pl_module.elapsed():.1f} s of training (time/elapsed in the curves)")
        if run_dir is not None and (run_dir / "error.png").exists():
            lines.append(f"error figure {run_dir / 'error.png'}")
        rank_zero_info(f"pinn-apts: {how} after {trainer.global_step} outer iterations" +
                       "".join(f"\n  {line}" for line in lines))


class ErrorFigure(Callback):
    """The end-of-run figure of a :class:`~pinn_apts.training.module.PINNModule` with an exact solution.

    It goes to the loggers and their run folder; without a logger there is none.
    """

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        module = pl_module
        if getattr(module, "eval_exact", None) is None or not trainer.loggers:
            return
        run_dir = Path(trainer.log_dir)  # a collective under DDP: every rank asks
        if not trainer.is_global_zero:
            return
        with torch.no_grad():
            grid = module.eval_grid.to(module.dtype)
            prediction = module.net(grid)
        fig = error_figure(
            grid,
            prediction,
            module.eval_exact.to(module.dtype),
            module.eval_shape,
            module.problem.input_names,
            title=f"{type(module).__name__} on {module.problem.name}, outer iteration {trainer.global_step}",
        )
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                logger.experiment.add_figure("error/heatmap", fig, trainer.global_step)
        run_dir.mkdir(parents=True, exist_ok=True)
        fig.savefig(run_dir / "error.png", dpi=120)
        log.info("error figure written to %s", run_dir / "error.png")
