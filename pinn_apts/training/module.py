"""The Lightning module every PINN method shares (:class:`PINNModule`).

One Lightning training step is one outer iteration ``k``.  All modules use
manual optimization; every optimizer gets the same data, metrics, logging and checkpoint
checks from :class:`PINNModule`, and a method only implements
:meth:`PINNModule.outer_iteration` (``baselines.py``, ``apts.py``).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence

import lightning as L
import torch
from torch import Tensor
from torch.nn.utils import parameters_to_vector, vector_to_parameters
from torchmetrics import MeanSquaredError

from .callbacks import ErrorFigure, GracefulStop, RunReport
from ..pde.loss import LossTerms, check_loss_finite, pinn_loss
from ..pde.objective import PINNObjective
from ..pde.sampling import CollocationBatch
from .metrics import RelativeL2Error
from ..pde.model import MLP
from ..core.optim import StepInfo, resolve_compile
from .faults import FaultReport, read_checkpoint
from .checkpoints import RESUME_HINT, class_path, refuse_older_version, refuse_other_settings
from ..pde.problems import PDEProblem, check_int, resolve_problem

__all__ = ["PINNModule"]

log = logging.getLogger(__name__)

#: trainer precisions a second-order PINN method can run in
PRECISIONS = ("64-true", "32-true")
#: hyper-parameters a resumed run may change (they only decide what is logged)
RESUMABLE_CHANGES = ("log_every", "eval_points")


class PINNModule(L.LightningModule):
    """Shared part of every PINN optimizer: network, loss, metrics, logging and the final figure.

    Subclasses implement :meth:`outer_iteration` (and ``configure_optimizers``).

    Parameters
    ----------
    problem:
        A :class:`~pinn_apts.pde.problems.PDEProblem`, a registered name or a problem spec
        (:meth:`~pinn_apts.pde.problems.PDEProblem.spec`, as stored in checkpoints).
    layer_sizes:
        Widths of the tanh MLP; the first must equal the problem's input dimension, the last 1.
    seed:
        Seed of the network initialization (an integer >= 0).
    log_every:
        The solution error is evaluated every ``log_every`` outer iterations and at the last, the
        planned last (``trainer.max_steps``) or the one a run stops after (Lightning's ``max_time``,
        a graceful stop); the loss and timings are logged every iteration.
    eval_points:
        Size ``(n0, n1)`` of the uniform evaluation grid of the error metrics.
    """

    #: progress-bar label -> metric name, beside the loss and the relative L2 error
    progress_bar: dict[str, str] = {}

    def __init__(
        self,
        problem: PDEProblem | str = "burgers",
        layer_sizes: Sequence[int] = (2, 20, 20, 20, 1),
        seed: int = 0,
        log_every: int = 1,
        eval_points: tuple[int, int] = (101, 101),
    ) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.problem = resolve_problem(problem)
        sizes = tuple(layer_sizes)
        if sizes and sizes[0] != self.problem.input_dim:
            raise ValueError(
                f"layer_sizes[0] must equal the input dimension of problem {self.problem.name!r} "
                f"({self.problem.input_dim}), got {sizes[0]}"
            )
        if sizes and sizes[-1] != 1:
            raise ValueError(f"layer_sizes[-1] must be 1 (a scalar solution u), got {sizes[-1]}")
        self.net = MLP(sizes, seed=check_int("seed", seed, 0))
        self.log_every = check_int("log_every", log_every)
        n0, n1 = eval_points
        self.eval_shape = (check_int("eval_points[0]", n0, 2), check_int("eval_points[1]", n1, 2))
        grid = self.problem.evaluation_grid(*self.eval_shape)
        self.register_buffer("eval_grid", grid, persistent=False)
        exact = self.problem.exact_solution(grid) if self.problem.has_exact_solution else None
        self.register_buffer("eval_exact", exact, persistent=False)
        # metric states in float64 whatever the precision of the network
        self.rmse = MeanSquaredError(squared=False).set_dtype(torch.float64)
        self.rel_l2 = RelativeL2Error().set_dtype(torch.float64)
        # The problem is stored as data (its class path and arguments), never as a pickled
        # object, so that checkpoints load with torch.load(weights_only=True).
        self.save_hyperparameters(ignore=["problem"])
        self.save_hyperparameters({**self.hparams, "problem": self.problem.spec()})
        #: the last outer iteration whose trial losses were non-finite (rejected), for error messages
        self.last_non_finite_trials: int | None = None
        #: wall-clock seconds of training before this fit started (a resumed run's earlier part)
        self.elapsed_before = 0.0
        self._fit_start: float | None = None
        #: the outer iteration whose solution errors were logged last
        self._errors_logged_at: int | None = None
        #: ``time/elapsed`` as logged at the end of the last outer iteration (:class:`StopAtSeconds` reads it)
        self.last_elapsed = 0.0

    # ----------------------------------------------------------------- pieces
    def forward(self, points: Tensor) -> Tensor:
        return self.net(points)

    def loss_terms(self, batch: CollocationBatch, interior: Tensor | None = None) -> LossTerms:
        """The loss on ``batch`` (or on ``interior`` with the batch's shared I and B)."""
        return pinn_loss(self.net, self.problem, batch, interior)

    def outer_iteration(self, batch: CollocationBatch) -> tuple[LossTerms, dict[str, float]]:
        """Advance the parameters by one outer iteration.

        Returns the loss terms at the iterate entering the iteration and the optimizer's
        own per-iteration metrics (logged beside the loss).
        """
        raise NotImplementedError

    @torch.no_grad()
    def solution_errors(self) -> dict[str, Tensor]:
        """RMSE and relative L2 error against the exact solution on the evaluation grid."""
        if self.eval_exact is None:
            return {}
        grid = self.eval_grid.to(self.dtype)
        prediction, exact = self.net(grid), self.eval_exact.to(self.dtype)
        errors = {"error/rmse": self.rmse(prediction, exact), "error/rel_l2": self.rel_l2(prediction, exact)}
        self.rmse.reset()
        self.rel_l2.reset()
        return errors

    # -------------------------------------------------------------- lightning
    def training_step(self, batch: CollocationBatch, batch_idx: int) -> None:
        """One outer iteration ``k``.

        Logged at step ``k``: the loss and its terms at the iterate entering the iteration,
        ``L(theta_k)`` on the points of iteration ``k``; the wall time of the optimizer's work in the
        iteration (``time/iteration``); every ``log_every`` iterations, the solution errors of the
        iterate it produced; and ``time/elapsed``, the wall-clock seconds of training up to the end
        of this iteration (see :meth:`elapsed`).
        """
        batch = batch.to(device=self.device, dtype=self.dtype)
        start = time.perf_counter()
        terms, optimizer_metrics = self.outer_iteration(batch)
        elapsed = time.perf_counter() - start
        k = batch.iteration
        metrics = {
            "loss/total": terms.total,
            "loss/interior": terms.interior,
            "loss/initial": terms.initial,
            "loss/boundary": terms.boundary,
            "time/iteration": elapsed,
            **optimizer_metrics,
        }
        last = self.trainer.max_steps is not None and k == self.trainer.max_steps - 1
        if k % self.log_every == 0 or last:
            metrics.update(self.solution_errors())
            self._errors_logged_at = k
        metrics["time/elapsed"] = self.last_elapsed = self.elapsed()
        self.log_metrics(metrics, step=k)

    def on_train_batch_end(self, outputs: object, batch: CollocationBatch, batch_idx: int) -> None:
        """A run that stops after this iteration before its planned last (:class:`StopAtSeconds`,
        Lightning's ``max_time``, a graceful stop: the callbacks have decided by now) logs the solution
        errors of its last iterate too, with ``time/elapsed``: the point a time budget ends on."""
        k = batch.iteration
        if self.trainer.should_stop and self._errors_logged_at != k:
            values = {name: float(value) for name, value in self.solution_errors().items()}
            values["time/elapsed"] = self.elapsed()
            self._errors_logged_at = k
            for logger in self.loggers:
                logger.log_metrics(values, step=k)

    def elapsed(self) -> float:
        """Wall-clock seconds of training so far: from the start of the training loop
        (``on_train_start``; data set-up and model construction before it are not counted) to now,
        everything in between counted: compilation, the first iteration, error evaluations,
        logging, checkpoints.  A resumed run adds the seconds its checkpoint had recorded."""
        if self._fit_start is None:
            return self.elapsed_before
        return self.elapsed_before + time.perf_counter() - self._fit_start

    def log_metrics(self, metrics: dict[str, Tensor | float], step: int) -> None:
        """Send ``metrics`` to the loggers at ``step``; loss and error also to the progress bar.

        ``self.log`` costs about a millisecond per key per call (it moves the whole result
        collection each time), so the many per-iteration scalars go to the loggers directly
        and only the progress-bar values go through ``self.log``, to the progress bar alone:
        their short labels (``loss``, ``rel_l2``, ...) would otherwise be TensorBoard tags
        beside the full names they copy.
        """
        self.log("loss", metrics["loss/total"], prog_bar=True, logger=False)
        if "error/rel_l2" in metrics:
            self.log("rel_l2", metrics["error/rel_l2"], prog_bar=True, logger=False)
        for label, name in self.progress_bar.items():
            self.log(label, float(metrics[name]), prog_bar=True, logger=False)
        values = {name: float(value) for name, value in metrics.items()}
        for logger in self.loggers:
            logger.log_metrics(values, step=step)

    def setup(self, stage: str) -> None:
        """Refuse, before training, a trainer precision or a data module this module cannot work with."""
        precision = str(getattr(self.trainer, "precision", PRECISIONS[0]))
        if precision not in PRECISIONS:
            raise ValueError(
                f"trainer.precision must be '64-true' (the default) or '32-true', got {precision!r}: trust-region "
                "steps, Hessian-vector products and the residual's input derivatives need full-precision "
                "arithmetic, which mixed and half precisions do not give"
            )
        data = getattr(self.trainer, "datamodule", None)
        data_problem = getattr(data, "problem", None)
        if isinstance(data_problem, PDEProblem) and data_problem != self.problem:
            raise ValueError(
                f"the model's problem {self.problem!r} and the data's problem {data_problem!r} differ: give "
                "both the same problem (in a config, the model takes data.problem)"
            )

    def configure_callbacks(self) -> list[L.Callback]:
        """A signal stops the run after the current outer iteration; the run's folders are reported;
        the error figure is drawn at the end; checkpoints are written atomically and read with a clear
        refusal, and a failed peer process is reported with the command to resume."""
        return [GracefulStop(), RunReport(), ErrorFigure(), FaultReport()]

    @classmethod
    def load_from_checkpoint(cls, checkpoint_path, *args, **kwargs):
        """Lightning's, after a safe read of the file: one that is not a readable pinn-apts checkpoint
        raises :class:`~pinn_apts.training.faults.CheckpointError` naming it and why."""
        if isinstance(checkpoint_path, (str, os.PathLike)) and "://" not in str(checkpoint_path):
            read_checkpoint(checkpoint_path)
        return super().load_from_checkpoint(checkpoint_path, *args, **kwargs)

    #: ``"auto"``, ``"on"`` or ``"off"`` for the modules whose optimizer can take compiled steps
    compile_mode: str | None = None
    #: the run length (outer iterations left) from which ``compile="auto"`` compiles
    compile_min_iterations: int = 1000

    def on_train_start(self) -> None:
        """Start the training clock (:meth:`elapsed`); settle ``compile="auto"`` now that the run's
        remaining length is known (after a resume too)."""
        self._fit_start = time.perf_counter()
        if self.compile_mode is None:
            return
        max_steps = self.trainer.max_steps
        remaining = max_steps - self.trainer.global_step if max_steps is not None and max_steps >= 1 else None
        optimizer = self.optimizers().optimizer
        optimizer.compile = resolve_compile(self.compile_mode, remaining, self.compile_min_iterations)
        if self.compile_mode == "auto":
            log.info("compile=auto: %s for %s outer iterations", "compiling" if optimizer.compile else "eager", remaining)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["pinn_apts"] = {"module": class_path(type(self)), "elapsed": self.elapsed()}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self._check_checkpoint_matches(checkpoint)
        self.elapsed_before = float(checkpoint.get("pinn_apts", {}).get("elapsed", 0.0))
        # Lightning restores the weights before the precision plugin casts the module
        # (e.g. to float64 for "64-true"); a float32 module would round float64 weights
        # on the way in.  Take the checkpoint's dtype first so that resuming is exact.
        dtypes = {v.dtype for v in checkpoint["state_dict"].values() if torch.is_floating_point(v)}
        if len(dtypes) == 1:
            self.to(dtypes.pop())

    def _check_checkpoint_matches(self, checkpoint: dict) -> None:
        """Refuse a checkpoint of another method or made with other settings, naming both sides."""
        refuse_older_version(checkpoint.get("pinn_apts", {}))
        saved_module = checkpoint.get("pinn_apts", {}).get("module")
        mine = class_path(type(self))
        if saved_module is not None and saved_module != mine:
            raise ValueError(
                f"the checkpoint was made by {saved_module.rpartition('.')[2]} and this run's model is "
                f"{mine.rpartition('.')[2]}: {RESUME_HINT}"
            )
        refuse_other_settings("model settings", "model", checkpoint.get("hyper_parameters", {}), self.hparams,
                              RESUMABLE_CHANGES)

    # ------------------------------------------------------------- baselines
    def objective(self, batch: CollocationBatch) -> PINNObjective:
        """The loss on ``batch`` as the objective the optimizer minimizes."""
        return PINNObjective(self.net, self.problem, batch)

    def torch_optimizer_steps(self, batch: CollocationBatch, steps: int) -> LossTerms:
        """Take ``steps`` full-batch steps of this module's ``torch.optim`` optimizer.

        A non-finite loss restores the parameters of the start of the iteration
        and raises ``FloatingPointError`` naming the iteration and the term.
        """
        opt = self.optimizers()
        objective = self.objective(batch)
        params = objective.parameters
        start = parameters_to_vector(params).detach().clone()

        def closure() -> Tensor:
            opt.zero_grad()
            try:
                loss = objective.full()
                check_loss_finite(objective.last_terms, batch.iteration)
            except FloatingPointError:
                with torch.no_grad():
                    vector_to_parameters(start, params)
                raise
            self.manual_backward(loss)
            return loss

        for i in range(steps):
            # Lightning counts every LightningOptimizer step as a global step; only the
            # last inner step goes through it, so that global_step counts outer iterations.
            if i < steps - 1:
                opt.optimizer.step(closure)
            else:
                opt.step(closure=closure)
        return objective.entry_terms

    def report_non_finite_trials(self, iteration: int, stage: str, info: StepInfo) -> None:
        """Log (naming the iteration) and remember a trust-region step whose trial losses were non-finite."""
        count = info.non_finite_trials
        if not count:
            return
        self.last_non_finite_trials = iteration
        outcome = "a later try was accepted" if info.accepted else "no step was accepted down to min_radius"
        log.warning("outer iteration %d: %d of %d %s trial losses were non-finite and rejected; %s",
                    iteration, count, info.tries, stage, outcome)
