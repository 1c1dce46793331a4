"""The baselines: full-batch Adam and L-BFGS (``torch.optim``) and the trust-region method alone ("TR")."""

from __future__ import annotations

from typing import Literal

import torch

from ..core.optim import StepInfo, TrustRegion, resolve_compile
from ..core.trust_region import DEFAULT_RADIUS, TrustRegionConfig
from ..pde.loss import LossTerms
from ..pde.problems import check_int, check_positive
from ..pde.sampling import CollocationBatch
from .module import PINNModule

__all__ = ["AdamPINN", "LBFGSPINN", "TrustRegionPINN"]


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
    :class:`~pinn_apts.core.optim.TrustRegion` on the full loss (TR-CG on exact Hessian-vector
    products, retried with a smaller radius until accepted).  It is the ablation that shows
    what APTS's preconditioning stage adds.

    Parameters
    ----------
    radius:
        Initial radius ``Delta_0``.
    max_radius, min_radius, eta1, eta2, shrink, grow, cg_max_iter, damping, cg_rtol:
        Trust-region constants (:class:`~pinn_apts.core.trust_region.TrustRegionConfig`, where each
        default is defined: the paper's).
    curvature, subproblem:
        The model and its solver: ``"hessian"`` and ``"cg"`` (the paper's), or the least-squares
        step ``"gauss_newton"`` and ``"exact"`` (the Gauss–Newton model minimized within the radius
        to rounding: trust-region Levenberg–Marquardt; see :mod:`~pinn_apts.core.least_squares`).
    steps_per_iteration:
        Trust-region steps per outer iteration (1: one global step, as in APTS's Stage II).
    compile:
        ``"on"``, ``"off"`` or ``"auto"`` (default), as for :class:`~pinn_apts.training.apts.APTSPINN`:
        compiled trust-region steps (docs/speed.md); ``auto`` compiles
        from :attr:`compile_min_iterations` outer iterations left, a longer run than for APTS.
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
        curvature: Literal["hessian", "gauss_newton"] = "hessian",
        subproblem: Literal["cg", "exact"] = "cg",
        steps_per_iteration: int = 1,
        compile: Literal["auto", "on", "off"] = "auto",
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        resolve_compile(compile, None, 0)  # refuse a bad value now
        self.compile_mode = compile
        self.optimizer_kwargs = dict(
            radius=radius, max_radius=max_radius, min_radius=min_radius, eta1=eta1, eta2=eta2,
            shrink=shrink, grow=grow, cg_max_iter=cg_max_iter, damping=damping, cg_rtol=cg_rtol,
            curvature=curvature, subproblem=subproblem,
        )
        TrustRegionConfig.from_mapping(self.optimizer_kwargs).check_radius("radius", radius)
        self.steps_per_iteration = check_int("steps_per_iteration", steps_per_iteration)

    #: compile=auto compiles from this run length: a TR iteration is cheap, so compiling pays only
    #: over long runs (docs/speed.md)
    compile_min_iterations = 5000

    def configure_optimizers(self) -> TrustRegion:
        return TrustRegion(self.net.parameters(), **self.optimizer_kwargs)

    def outer_iteration(self, batch: CollocationBatch) -> tuple[LossTerms, dict[str, float]]:
        opt = self.optimizers()
        objective = self.objective(batch)
        steps = []
        for i in range(self.steps_per_iteration):
            # as in torch_optimizer_steps: one LightningOptimizer step per outer iteration
            step = opt.optimizer.step if i < self.steps_per_iteration - 1 else opt.step
            with objective.naming_non_finite(self.last_non_finite_trials):
                step(closure=objective.full, objective=objective)
            steps.append(opt.optimizer.last_step)
            self.report_non_finite_trials(batch.iteration, "trust-region", steps[-1])
        metrics = {"tr/radius": steps[-1].radius, **StepInfo.of_steps(steps).metrics("tr/")}
        return objective.entry_terms, {**metrics, **opt.optimizer.totals.metrics()}
