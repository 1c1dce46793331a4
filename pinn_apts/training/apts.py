"""APTS as a Lightning module: one outer iteration of Algorithm 1 per training step."""

from __future__ import annotations

from typing import Literal

from lightning.pytorch.strategies import DDPStrategy, SingleDeviceStrategy

from ..core.apts import APTS, APTSConfig
from ..core.optim import resolve_compile
from ..core.distributed import default_communicator
from ..core.trust_region import DEFAULT_RADIUS, TrustRegionConfig
from ..pde.loss import LossTerms
from ..pde.objective import PINNObjective
from ..pde.sampling import CollocationBatch
from .module import PINNModule

__all__ = ["APTSPINN"]


class APTSPINN(PINNModule):
    """Data-parallel APTS (the paper's Algorithm 1): one outer iteration per training step.

    The algorithm is :class:`~pinn_apts.core.apts.APTS` (no Lightning); this module hands it the
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
        (:class:`~pinn_apts.core.trust_region.TrustRegionConfig`, where each default is defined: the paper's).
    combine:
        ``"average"`` (paper) or ``"sum"`` of the replica corrections.
    local_retry:
        Retry a rejected local step at once with the smaller radius.
    replicas:
        ``"sequential"`` (one replica after the other), ``"batched"`` (all replicas as one
        stacked computation; same iterates up to rounding) or ``"auto"`` (default: batched on a
        GPU when a process owns two replicas or more, where it measured faster; sequential on
        CPU, where it did not; see :func:`~pinn_apts.core.apts.resolve_replicas`).
    stage1_radius:
        How Stage I updates the radius: ``"keep"`` (default: leave it to Stage II; the lowest
        error in our short-run study), ``"decrease"`` (shrink only when Stage I is rejected) or
        ``"ratio"`` (ratio of the actual decrease to the averaged local predicted decreases);
        see :func:`~pinn_apts.core.apts.stage1_radius_update`; or ``"own"``: Stage I's radius
        ``Delta_I`` of its own, moved by its acceptance test alone, Stage II's left to Stage II.
    stage1_search:
        Halve a rejected Stage I correction up to this many times, accepting the first
        ``theta_k + alpha s_bar`` that lowers the loss (default 0: the paper's single test).
    coherent:
        First-order coherent local objectives: each replica's gradient at ``theta_k`` is replaced
        by the full gradient, its curvature kept (not in the paper; default ``False``; see
        :class:`~pinn_apts.core.apts.APTSConfig`).
    local_curvature, local_subproblem:
        The replicas' model and its solver: ``"hessian"`` and ``"cg"`` (the paper's), or
        ``"gauss_newton"`` (the Gauss–Newton matrix of their residuals) solved by ``"cg"`` or
        ``"exact"`` (the model's minimizer within the radius; the replicas then run one after the
        other).  Not in the paper; see :class:`~pinn_apts.core.apts.APTSConfig`.
    curvature, subproblem:
        The same for Stage II, the global step.
    compile:
        ``"on"``: take the trust-region steps on the compiled loss, gradient and Hessian-vector
        products (:mod:`pinn_apts.pde.compiled`; what it saves and costs: ``docs/speed.md``), Stage I
        (sequential or batched) and Stage II; ``"off"``: eager; ``"auto"``
        (default): ``"on"`` when the run has at least :attr:`compile_min_iterations` outer
        iterations left (where compiling paid on the development CPU, compilation included).
        The iterates agree with eager ones to rounding.
    **kwargs:
        Passed to :class:`PINNModule`.
    """

    progress_bar = {"radius": "apts/radius", "acc": "apts/stage1_acceptance_rate"}
    #: compile=auto compiles from this run length, where compiling paid (docs/speed.md)
    compile_min_iterations = 1000

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
        stage1_radius: Literal["ratio", "decrease", "keep", "own"] = APTSConfig.stage1_radius,
        stage1_search: int = APTSConfig.stage1_search,
        coherent: bool = APTSConfig.coherent,
        local_curvature: Literal["hessian", "gauss_newton"] = APTSConfig.local_curvature,
        local_subproblem: Literal["cg", "exact"] = APTSConfig.local_subproblem,
        curvature: Literal["hessian", "gauss_newton"] = TrustRegionConfig.curvature,
        subproblem: Literal["cg", "exact"] = TrustRegionConfig.subproblem,
        compile: Literal["auto", "on", "off"] = "auto",
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        resolve_compile(compile, None, 0)  # refuse a bad value now
        self.compile_mode = compile
        self.optimizer_kwargs = dict(
            num_subdomains=num_subdomains, local_steps=local_steps, radius=radius, max_radius=max_radius,
            min_radius=min_radius, eta1=eta1, eta2=eta2, shrink=shrink, grow=grow, cg_max_iter=cg_max_iter,
            damping=damping, cg_rtol=cg_rtol, combine=combine, local_retry=local_retry, replicas=replicas,
            stage1_radius=stage1_radius, stage1_search=stage1_search, coherent=coherent,
            local_curvature=local_curvature, local_subproblem=local_subproblem, curvature=curvature,
            subproblem=subproblem,
        )
        # validate now, with messages naming the parameter, rather than at fit time
        APTSConfig.from_mapping(self.optimizer_kwargs).trust_region.check_radius("radius", radius)
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
