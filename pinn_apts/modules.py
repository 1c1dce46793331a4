"""Lightning modules: the shared PINN module and the Adam and L-BFGS baselines.

One Lightning training step is one outer iteration ``k``.  All modules use
manual optimization; every optimizer gets the same data, metrics and logging
from :class:`PINNModule`, and an optimizer only implements
:meth:`PINNModule.outer_iteration`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import lightning as L
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.strategies import DDPStrategy, SingleDeviceStrategy
from torch import Tensor
from torch.nn.utils import parameters_to_vector, vector_to_parameters
from torchmetrics import MeanSquaredError

from .callbacks import GracefulStop, RunReport
from .loss import LossTerms, check_loss_finite, pinn_loss
from .objective import PINNObjective
from .sampling import CollocationBatch
from .metrics import RelativeL2Error, error_figure
from .model import MLP
from .apts import APTS, APTSConfig
from .distributed import default_communicator
from .optim import StepInfo, TrustRegion
from .checkpoints import RESUME_HINT, class_path, refuse_other_settings
from .problems import PDEProblem, check_int, check_positive, resolve_problem
from .trust_region import DEFAULT_RADIUS, TrustRegionConfig

__all__ = ["APTSPINN", "AdamPINN", "LBFGSPINN", "PINNModule", "TrustRegionPINN"]

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
        A :class:`~pinn_apts.problems.PDEProblem`, a registered name or a problem spec
        (:meth:`~pinn_apts.problems.PDEProblem.spec`, as stored in checkpoints).
    layer_sizes:
        Widths of the tanh MLP; the first must equal the problem's input dimension, the last 1.
    seed:
        Seed of the network initialization (an integer >= 0).
    log_every:
        The solution error is evaluated every ``log_every`` outer iterations (and at the last);
        the loss and timings are logged every iteration.
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
        ``L(theta_k)`` on the points of iteration ``k``; the wall time of the iteration; and,
        every ``log_every`` iterations, the solution errors of the iterate it produced.
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
        self.log_metrics(metrics, step=k)

    def log_metrics(self, metrics: dict[str, Tensor | float], step: int) -> None:
        """Send ``metrics`` to the loggers at ``step``; loss and error also to the progress bar.

        ``self.log`` costs about a millisecond per key per call (it moves the whole result
        collection each time), so the many per-iteration scalars go to the loggers directly
        and only the progress-bar values go through ``self.log``.
        """
        self.log("loss", metrics["loss/total"], prog_bar=True)
        if "error/rel_l2" in metrics:
            self.log("rel_l2", metrics["error/rel_l2"], prog_bar=True)
        for label, name in self.progress_bar.items():
            self.log(label, float(metrics[name]), prog_bar=True)
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
        """A signal stops the run after the current outer iteration; the run's folders are reported."""
        return [GracefulStop(), RunReport()]

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["pinn_apts"] = {"module": class_path(type(self))}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self._check_checkpoint_matches(checkpoint)
        # Lightning restores the weights before the precision plugin casts the module
        # (e.g. to float64 for "64-true"); a float32 module would round float64 weights
        # on the way in.  Take the checkpoint's dtype first so that resuming is exact.
        dtypes = {v.dtype for v in checkpoint["state_dict"].values() if torch.is_floating_point(v)}
        if len(dtypes) == 1:
            self.to(dtypes.pop())

    def _check_checkpoint_matches(self, checkpoint: dict) -> None:
        """Refuse a checkpoint of another method or made with other settings, naming both sides."""
        saved_module = checkpoint.get("pinn_apts", {}).get("module")
        mine = class_path(type(self))
        if saved_module is not None and saved_module != mine:
            raise ValueError(
                f"the checkpoint was made by {saved_module.rpartition('.')[2]} and this run's model is "
                f"{mine.rpartition('.')[2]}: {RESUME_HINT}"
            )
        refuse_other_settings("model settings", "model", checkpoint.get("hyper_parameters", {}), self.hparams,
                              RESUMABLE_CHANGES)

    def on_train_end(self) -> None:
        # The figure goes to the loggers and their run folder; without a logger there is none.
        if self.eval_exact is None or not self.loggers:
            return
        run_dir = Path(self.trainer.log_dir)  # a collective under DDP: every rank asks
        if not self.trainer.is_global_zero:
            return
        with torch.no_grad():
            grid = self.eval_grid.to(self.dtype)
            prediction = self.net(grid)
        fig = error_figure(
            grid,
            prediction,
            self.eval_exact.to(self.dtype),
            self.eval_shape,
            self.problem.input_names,
            title=f"{type(self).__name__} on {self.problem.name}, outer iteration {self.global_step}",
        )
        for logger in self.loggers:
            if isinstance(logger, TensorBoardLogger):
                logger.experiment.add_figure("error/heatmap", fig, self.global_step)
        run_dir.mkdir(parents=True, exist_ok=True)
        fig.savefig(run_dir / "error.png", dpi=120)
        log.info("error figure written to %s", run_dir / "error.png")

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


class AdamPINN(PINNModule):
    """Full-batch Adam baseline: ``steps_per_iteration`` Adam steps per outer iteration.

    Parameters
    ----------
    lr:
        Learning rate (the paper uses 9e-3).
    steps_per_iteration:
        Optimizer steps per outer iteration (the paper uses 2, to match APTS's two stages).
    **kwargs:
        Passed to :class:`PINNModule`.
    """

    def __init__(self, lr: float = 9e-3, steps_per_iteration: int = 2, **kwargs) -> None:
        super().__init__(**kwargs)
        self.lr = check_positive("lr", lr)
        self.steps_per_iteration = check_int("steps_per_iteration", steps_per_iteration)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.net.parameters(), lr=self.lr)

    def outer_iteration(self, batch: CollocationBatch) -> tuple[LossTerms, dict[str, float]]:
        return self.torch_optimizer_steps(batch, self.steps_per_iteration), {}


class LBFGSPINN(PINNModule):
    """Full-batch L-BFGS baseline (``torch.optim.LBFGS``), ``steps_per_iteration`` steps per outer iteration.

    Parameters
    ----------
    history_size:
        L-BFGS memory ``m`` (the paper uses 10).
    line_search_fn:
        ``None`` is PyTorch's default and the paper's setting (fixed step ``lr``, which
        can diverge on Burgers); ``"strong_wolfe"`` is the safe choice.
    lr, max_iter:
        As in ``torch.optim.LBFGS`` (PyTorch defaults 1 and 20).
    steps_per_iteration:
        ``optimizer.step`` calls per outer iteration (the paper uses 2).
    **kwargs:
        Passed to :class:`PINNModule`.
    """

    def __init__(
        self,
        history_size: int = 10,
        line_search_fn: Literal["strong_wolfe"] | None = None,
        lr: float = 1.0,
        max_iter: int = 20,
        steps_per_iteration: int = 2,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        if line_search_fn not in (None, "strong_wolfe"):
            raise ValueError(f"line_search_fn must be None or 'strong_wolfe', got {line_search_fn!r}")
        self.history_size = check_int("history_size", history_size)
        self.line_search_fn = line_search_fn
        self.lr = check_positive("lr", lr)
        self.max_iter = check_int("max_iter", max_iter)
        self.steps_per_iteration = check_int("steps_per_iteration", steps_per_iteration)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.LBFGS(
            self.net.parameters(),
            lr=self.lr,
            max_iter=self.max_iter,
            history_size=self.history_size,
            line_search_fn=self.line_search_fn,
        )

    def outer_iteration(self, batch: CollocationBatch) -> tuple[LossTerms, dict[str, float]]:
        return self.torch_optimizer_steps(batch, self.steps_per_iteration), {}



class TrustRegionPINN(PINNModule):
    """The "TR" baseline: the paper's global trust-region stage alone.

    Each outer iteration takes ``steps_per_iteration`` steps of
    :class:`~pinn_apts.optim.TrustRegion` on the full loss (TR-CG on exact Hessian-vector
    products, retried with a smaller radius until accepted).  It is the ablation that shows
    what APTS's preconditioning stage adds.

    Parameters
    ----------
    radius:
        Initial radius ``Delta_0``.
    max_radius, min_radius, eta1, eta2, shrink, grow, cg_max_iter, damping, cg_rtol:
        Trust-region constants (:class:`~pinn_apts.trust_region.TrustRegionConfig`, where each
        default is defined: the paper's).
    steps_per_iteration:
        Trust-region steps per outer iteration (1: one global step, as in APTS's Stage II).
    **kwargs:
        Passed to :class:`PINNModule`.
    """

    def __init__(
        self,
        radius: float = DEFAULT_RADIUS,
        max_radius: float = TrustRegionConfig.max_radius,
        min_radius: float = TrustRegionConfig.min_radius,
        eta1: float = TrustRegionConfig.eta1,
        eta2: float = TrustRegionConfig.eta2,
        shrink: float = TrustRegionConfig.shrink,
        grow: float = TrustRegionConfig.grow,
        cg_max_iter: int = TrustRegionConfig.cg_max_iter,
        damping: float = TrustRegionConfig.damping,
        cg_rtol: float | None = TrustRegionConfig.cg_rtol,
        steps_per_iteration: int = 1,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        self.optimizer_kwargs = dict(
            radius=radius, max_radius=max_radius, min_radius=min_radius, eta1=eta1, eta2=eta2,
            shrink=shrink, grow=grow, cg_max_iter=cg_max_iter, damping=damping, cg_rtol=cg_rtol,
        )
        TrustRegionConfig(max_radius, min_radius, eta1, eta2, shrink, grow, cg_max_iter, damping, cg_rtol).check_radius(
            "radius", radius
        )
        self.steps_per_iteration = check_int("steps_per_iteration", steps_per_iteration)

    def configure_optimizers(self) -> TrustRegion:
        return TrustRegion(self.net.parameters(), **self.optimizer_kwargs)

    def outer_iteration(self, batch: CollocationBatch) -> tuple[LossTerms, dict[str, float]]:
        opt = self.optimizers()
        objective = self.objective(batch)
        steps = []
        for i in range(self.steps_per_iteration):
            # as in torch_optimizer_steps: one LightningOptimizer step per outer iteration
            with objective.naming_non_finite(self.last_non_finite_trials):
                (opt.optimizer.step if i < self.steps_per_iteration - 1 else opt.step)(closure=objective.full)
            steps.append(opt.optimizer.last_step)
            self.report_non_finite_trials(batch.iteration, "trust-region", steps[-1])
        metrics = {"tr/radius": steps[-1].radius, **StepInfo.of_steps(steps).metrics("tr/")}
        return objective.entry_terms, {**metrics, **opt.optimizer.totals.metrics()}


class APTSPINN(PINNModule):
    """Data-parallel APTS (the paper's Algorithm 1): one outer iteration per training step.

    The algorithm is :class:`~pinn_apts.apts.APTS` (no Lightning); this module hands it the
    full loss and the replicas' local losses on the batch's random partition of the interior
    set, and logs what it did.

    Parameters
    ----------
    num_subdomains:
        ``D``, replicas and parts of the interior set (paper: 2, 4, 8; default 4).
    local_steps:
        ``J``, local trust-region steps per replica (paper: 3).
    radius:
        Initial radius ``Delta_0`` (not given in the paper; default 1.0).
    max_radius, min_radius, eta1, eta2, shrink, grow, cg_max_iter, damping, cg_rtol:
        Trust-region constants of the global and local steps
        (:class:`~pinn_apts.trust_region.TrustRegionConfig`, where each default is defined: the paper's).
    combine:
        ``"average"`` (paper) or ``"sum"`` of the replica corrections.
    local_retry:
        Retry a rejected local step at once with the smaller radius.
    replicas:
        ``"sequential"`` (one replica after the other), ``"batched"`` (all replicas as one
        stacked computation; same iterates up to rounding) or ``"auto"`` (default: batched on a
        GPU when a process owns two replicas or more, where it measured faster; sequential on
        CPU, where it did not; see :func:`~pinn_apts.apts.resolve_replicas`).
    stage1_radius:
        How Stage I updates the radius: ``"keep"`` (default: leave it to Stage II; the lowest
        error in our short-run study), ``"decrease"`` (shrink only when Stage I is rejected) or
        ``"ratio"`` (ratio of the actual decrease to the averaged local predicted decreases);
        see :func:`~pinn_apts.apts.stage1_radius_update`.
    **kwargs:
        Passed to :class:`PINNModule`.
    """

    progress_bar = {"radius": "apts/radius", "acc": "apts/stage1_acceptance_rate"}

    def __init__(
        self,
        num_subdomains: int = APTSConfig.num_subdomains,
        local_steps: int = APTSConfig.local_steps,
        radius: float = DEFAULT_RADIUS,
        max_radius: float = TrustRegionConfig.max_radius,
        min_radius: float = TrustRegionConfig.min_radius,
        eta1: float = TrustRegionConfig.eta1,
        eta2: float = TrustRegionConfig.eta2,
        shrink: float = TrustRegionConfig.shrink,
        grow: float = TrustRegionConfig.grow,
        cg_max_iter: int = TrustRegionConfig.cg_max_iter,
        damping: float = TrustRegionConfig.damping,
        cg_rtol: float | None = TrustRegionConfig.cg_rtol,
        combine: Literal["average", "sum"] = APTSConfig.combine,
        local_retry: bool = APTSConfig.local_retry,
        replicas: Literal["sequential", "batched", "auto"] = APTSConfig.replicas,
        stage1_radius: Literal["ratio", "decrease", "keep"] = APTSConfig.stage1_radius,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        self.optimizer_kwargs = dict(
            num_subdomains=num_subdomains, local_steps=local_steps, radius=radius, max_radius=max_radius,
            min_radius=min_radius, eta1=eta1, eta2=eta2, shrink=shrink, grow=grow, cg_max_iter=cg_max_iter,
            damping=damping, cg_rtol=cg_rtol, combine=combine, local_retry=local_retry, replicas=replicas,
            stage1_radius=stage1_radius,
        )
        # validate now, with messages naming the parameter, rather than at fit time
        APTSConfig(num_subdomains, local_steps, combine, local_retry, replicas, stage1_radius)
        TrustRegionConfig(max_radius, min_radius, eta1, eta2, shrink, grow, cg_max_iter, damping, cg_rtol).check_radius(
            "radius", radius
        )
        self.num_subdomains = num_subdomains

    def setup(self, stage: str) -> None:
        super().setup(stage)
        strategy = self.trainer.strategy
        if not isinstance(strategy, (SingleDeviceStrategy, DDPStrategy)):
            raise ValueError(
                f"APTSPINN runs under a single-device or a DDP strategy, got {type(strategy).__name__}: "
                "APTS communicates its own corrections and Hessian-vector products, and a strategy "
                "that shards parameters or averages gradients would work against it"
            )

    def configure_optimizers(self) -> APTS:
        return APTS(self.net.parameters(), **self.optimizer_kwargs, communicator=default_communicator())

    def objective(self, batch: CollocationBatch) -> PINNObjective:
        comm = self.optimizers().optimizer.communicator
        return PINNObjective(self.net, self.problem, batch, self.num_subdomains, comm)

    def outer_iteration(self, batch: CollocationBatch) -> tuple[LossTerms, dict[str, float]]:
        opt = self.optimizers()
        apts: APTS = opt.optimizer
        objective = self.objective(batch)
        with objective.naming_non_finite(self.last_non_finite_trials):
            opt.step(objective=objective)
        info = apts.last_step
        self.report_non_finite_trials(batch.iteration, "Stage II", info.stage2)
        metrics = {**info.metrics(), **apts.totals.metrics(), "apts/processes": apts.communicator.world_size}
        return objective.entry_terms, metrics
