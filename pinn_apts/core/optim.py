"""A single-level trust-region optimizer (``torch.optim.Optimizer``): TR-CG with acceptance.

It is the paper's global stage on its own (the "TR" baseline) and the building block
of APTS.  Usable standalone::

    opt = TrustRegion(model.parameters())
    for _ in range(100):
        opt.step(lambda: loss_fn(model))   # the closure returns the loss; no backward

and through Lightning's manual optimization (``self.optimizers().step(closure=...)``).
"""

from __future__ import annotations

import math
from functools import partial
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any, ClassVar

import torch
from torch import Tensor
from torch.nn.utils import parameters_to_vector, vector_to_parameters

from .least_squares import GaussNewtonModel, model_multiplier, model_multiplier_radius, start_multiplier
from .trust_region import (
    DEFAULT_RADIUS,
    FlatDerivatives,
    StackedCGResult,
    StopReason,
    TrustRegionConfig,
    flat_hvp,
    stacked_steihaug_cg,
    try_rows,
)

__all__ = [
    "RecordingOptimizer",
    "StepInfo",
    "TrustRegion",
    "TrustRegionTotals",
    "check_compile",
    "flat_derivatives",
    "resolve_compile",
    "trust_region_step",
]


@dataclass(frozen=True)
class StepInfo:
    """What one accepted-or-abandoned trust-region step did.

    Optimizers keep it in their state as :meth:`to_state` (plain types: checkpoint-safe) and
    give it back through :meth:`from_state`.
    """

    loss: float  #: loss at the start of the step
    new_loss: float  #: loss after the step (equal to ``loss`` if no step was accepted)
    accepted: bool  #: False only if the radius hit ``min_radius`` without an acceptable step
    tries: int  #: subproblems tried, the accepted one included
    cg_iterations: int  #: CG iterations over all tries
    reason: StopReason  #: why CG stopped on the last subproblem
    radius: float  #: radius after the step
    rho: float  #: ratio of the last try
    step_norm: float  #: norm of the accepted step (0 if none)
    predicted_reduction: float  #: model decrease of the accepted step (0 if none)
    non_finite_trials: int = 0  #: tries rejected because the trial loss or a Hessian-vector product was not finite
    #: ``subproblem="exact"``: the multiplier (Levenberg–Marquardt parameter) of the last boundary step, 0 if none
    multiplier: float = 0.0
    #: the radius that multiplier met (0 if none): the next step's root find scales it to its own radius
    multiplier_radius: float = 0.0

    def to_state(self) -> dict:
        return {**asdict(self), "reason": self.reason.value}

    @classmethod
    def from_state(cls, state: dict) -> StepInfo:
        return cls(**{**state, "reason": StopReason(state["reason"])})

    @classmethod
    def of_steps(cls, steps: Sequence[StepInfo]) -> StepInfo:
        """The record of consecutive steps: counts summed, the rest from the first (``loss``) or last step."""
        first, last = steps[0], steps[-1]
        return cls(first.loss, last.new_loss, last.accepted, sum(s.tries for s in steps),
                   sum(s.cg_iterations for s in steps), last.reason, last.radius, last.rho, last.step_norm,
                   last.predicted_reduction, sum(s.non_finite_trials for s in steps), last.multiplier,
                   last.multiplier_radius)

    def metrics(self, prefix: str) -> dict[str, float]:
        """The logged scalars, named ``prefix + name`` (``tr/tries``, ``apts/stage2_tries``, ...)."""
        metrics = {
            f"{prefix}tries": self.tries,
            f"{prefix}cg_iterations": self.cg_iterations,
            f"{prefix}accepted": float(self.accepted),
            f"{prefix}non_finite_trials": self.non_finite_trials,
        }
        metrics.update({f"{prefix}stop/{r.value}": float(r == self.reason) for r in StopReason})
        return metrics


@dataclass(frozen=True)
class TrustRegionTotals:
    """Counters of a :class:`TrustRegion` optimizer over its whole run."""

    steps: int = 0
    accepted: int = 0
    tries: int = 0
    cg_iterations: int = 0

    @property
    def acceptance_rate(self) -> float:
        return self.accepted / max(self.steps, 1)

    def metrics(self) -> dict[str, float]:
        return {"tr/acceptance_rate": self.acceptance_rate}


def trust_region_step(
    loss_fn: Callable[[], Tensor],
    params: list[Tensor],
    radius: float,
    config: TrustRegionConfig,
    *,
    max_radius: float | None = None,
    retry: bool = True,
    loss: Tensor | None = None,
    reduce: Callable[[Tensor], Tensor] | None = None,
    derivatives: FlatDerivatives | None = None,
    multiplier: float = 0.0,
    multiplier_radius: float = 0.0,
) -> tuple[StepInfo, Tensor | None]:
    """One trust-region step on ``params`` in place: TR-CG, ratio test, radius update.

    ``loss_fn`` evaluates the loss at the current values of ``params`` with a graph (no
    backward).  The gradient graph is built once and reused by every Hessian-vector
    product.  A rejected step is retried with the shrunken radius while ``retry`` is true,
    until a step is accepted or the radius reaches ``config.min_radius``.  ``max_radius``
    caps the radius below ``config.max_radius`` (the local radius ``Delta_k / J`` of APTS).
    ``loss``, if given, is ``loss_fn()`` already evaluated at the current point with its graph
    (APTS hands over the loss of its acceptance test so that it is not computed twice).

    A non-finite trial loss or Hessian-vector product rejects the step and shrinks the
    radius; a non-finite loss or gradient at the current point raises ``FloatingPointError``.

    ``reduce``, for a data-parallel objective, sums a tensor over the processes: each process's
    ``loss_fn`` then returns its share of the loss, and the loss values, the gradient and every
    Hessian-vector product are summed, so that all processes take the same step.

    ``derivatives`` (:class:`FlatDerivatives`, e.g. compiled) replaces the graph: the loss, the
    gradient, the products and the trial losses are then its functions of the flat parameters,
    ``loss_fn`` and ``loss`` are not used, and the loss returned is ``None``.

    ``config.subproblem == "exact"``: the subproblem of the Gauss–Newton model is solved exactly
    (:class:`~pinn_apts.core.least_squares.GaussNewtonModel`) from ``derivatives``'
    ``residuals_and_jacobian``, decomposed once for every try; across processes (``reduce``) each
    process's ``J^T J``, ``J^T r`` and ``|r|^2`` are summed.  A non-finite Jacobian or decomposition
    rejects the try as a non-finite product does.  ``multiplier`` (the previous step's, from its
    :class:`StepInfo`, with ``multiplier_radius``, the radius it met) is where the root find of the
    multiplier starts, as Levenberg–Marquardt carries
    its parameter from step to step.

    Returns the step's record and the loss at the parameters it leaves, with its graph, so
    that a following step on the same objective can start from it (``loss=``).
    """
    total = reduce if reduce is not None else (lambda t: t)
    cap = config.max_radius if max_radius is None else max_radius
    start = parameters_to_vector(params).detach().clone()
    exact = config.subproblem == "exact"
    if exact and not callable(getattr(derivatives, "residuals_and_jacobian", None)):
        raise ValueError("subproblem='exact' needs the objective's residual vector and its Jacobian as functions of "
                         "the flat parameters (the package's PINNObjective with its MLP network gives them)")
    if exact:
        model = GaussNewtonModel.of(*derivatives.residuals_and_jacobian(start), config.damping, reduce)
        start_multiplier(model, multiplier, multiplier_radius)
        loss, loss_value = None, _finite_loss(float(model.loss))
        flat_grad = model.gradient

        def trial_loss_at(point: Tensor) -> tuple[float, Tensor | None]:
            return float(total(derivatives.loss(point).detach())), None
    elif derivatives is not None:
        value, grad = derivatives.loss_and_grad(start)
        loss, loss_value = None, _finite_loss(float(total(value.detach())))
        flat_grad = total(grad.detach())
        local_hvp = lambda v: derivatives.hvp(start, v)  # noqa: E731

        def trial_loss_at(point: Tensor) -> tuple[float, Tensor | None]:
            return float(total(derivatives.loss(point).detach())), None
    else:
        with torch.enable_grad():
            if loss is None:
                loss = loss_fn()
            loss_value = _finite_loss(float(total(loss.detach())))
            grads = torch.autograd.grad(loss, params, create_graph=True)
        flat_grad = total(torch.cat([g.detach().reshape(-1) for g in grads]))
        local_hvp = flat_hvp(grads, params)

        def trial_loss_at(point: Tensor) -> tuple[float, Tensor | None]:
            with torch.no_grad():
                vector_to_parameters(point, params)
            with torch.enable_grad():
                trial = loss_fn()
            return float(total(trial.detach())), trial
    if not torch.isfinite(flat_grad).all():
        raise FloatingPointError("non-finite gradient at the current point of the trust-region step")
    # one row (R = 1) of the row-wise step: the loss, radius and ratio in float64, the solve in the
    # gradient's dtype; the trial loss's graph kept for the caller
    row = partial(torch.tensor, dtype=torch.float64, device=start.device)
    loss_row, trial_graph = row([loss_value]), [None]
    if exact:
        def solve(radii: Tensor) -> StackedCGResult:
            return StackedCGResult.of_rows([model.solve(float(radii[0]))])
    else:
        hvp = local_hvp if reduce is None else (lambda v: reduce(local_hvp(v)))

        def solve(radii: Tensor) -> StackedCGResult:
            return stacked_steihaug_cg(flat_grad.unsqueeze(0), lambda v: hvp(v[0]).unsqueeze(0),
                                       radii.to(flat_grad.dtype), max_iter=config.cg_max_iter,
                                       damping=config.damping, rtol=config.cg_rtol)

    def trial_losses(steps: Tensor, finite: Tensor) -> Tensor:
        value, trial_graph[0] = trial_loss_at(start + steps[0]) if bool(finite[0]) else (math.nan, None)
        return row([value])

    tries = cg_iterations = non_finite = 0
    while True:
        tries += 1
        tried = try_rows(loss_row, solve, trial_losses, row([radius]), cap, config)
        result, trial_loss, rho = tried.result.row(0), float(tried.trial[0]), float(tried.rho[0])
        cg_iterations += result.iterations
        non_finite += not math.isfinite(trial_loss)
        if bool(tried.accepted[0]):
            if derivatives is not None:  # the trial point was never set on the parameters
                with torch.no_grad():
                    vector_to_parameters(start + result.step, params)
            info = StepInfo(loss_value, trial_loss, True, tries, cg_iterations, result.reason,
                            float(tried.radii[0]), rho, float(result.step.norm()),
                            result.predicted_reduction, non_finite, *_carried(model if exact else None))
            return info, trial_graph[0]
        if derivatives is None:  # back from the trial point
            with torch.no_grad():
                vector_to_parameters(start, params)
        at_floor, radius = radius <= config.min_radius, float(tried.radii[0])
        if at_floor or not retry:
            info = StepInfo(loss_value, loss_value, False, tries, cg_iterations, result.reason,
                            radius, rho, 0.0, 0.0, non_finite, *_carried(model if exact else None))
            return info, loss
        if result.reason in (StopReason.CONVERGED, StopReason.MAX_ITER):
            # CG iterates grow in norm, so an interior step is the same for every radius
            # above its norm: the tries in between would be rejected alike.  Count them
            # (as the plain rule would make them) but skip their CG solves and trial losses.
            step_norm = float(result.step.norm())
            while radius > step_norm and radius > config.min_radius:
                radius = max(radius * config.shrink, config.min_radius)
                tries += 1


def _carried(model: object) -> tuple[float, float]:
    """An exact model's last multiplier and the radius it met, for the next step (0, 0 where none)."""
    return model_multiplier(model), model_multiplier_radius(model)


def _finite_loss(value: float) -> float:
    if not math.isfinite(value):
        raise FloatingPointError(f"non-finite loss {value} at the current point of the trust-region step")
    return value


def offered(objective: object, method: str, wanted: bool, **kwargs) -> object | None:
    """``objective.<method>(**kwargs)`` (e.g. its compiled derivatives) when ``wanted`` and the objective
    has the method; ``None`` otherwise, or when the method itself gives ``None`` (not available)."""
    make = getattr(objective, method, None) if wanted else None
    return make(**kwargs) if callable(make) else None


def flat_derivatives(objective: object, curvature: str, compile: bool, d: int | None = None) -> object | None:
    """The derivatives a trust-region step of ``curvature`` takes from ``objective`` (``objective.compiled(d)``):
    the functions of the flat parameters, compiled if ``compile`` and compilation works, else eager.
    An objective without them (plain functions of the model's parameters) gets ``None`` for the
    Hessian (the graph path, which moves the parameters to the trial points) and a ``ValueError``
    for Gauss–Newton."""
    which = {} if d is None else {"d": d}
    if curvature == "hessian":
        return offered(objective, "compiled", compile, **which) or offered(objective, "compiled", True,
                                                                           compiled=False, **which)
    derivatives = (offered(objective, "compiled", compile, curvature=curvature, **which)
                   or offered(objective, "compiled", True, curvature=curvature, compiled=False, **which))
    if derivatives is None:
        raise ValueError(f"curvature={curvature!r} needs an objective that gives its residuals as a function of the "
                         "flat parameters (the package's PINNObjective with its MLP network, every parameter trained)")
    return derivatives


def check_compile(compile: bool) -> bool:
    """An optimizer's ``compile`` flag, refused unless a bool (``"auto"`` is chosen before, from the
    run's length: :func:`resolve_compile`)."""
    if not isinstance(compile, bool):
        raise ValueError(f"compile must be True or False for an optimizer, got {compile!r}")
    return compile


def resolve_compile(mode: str, iterations: int | None, min_iterations: int) -> bool:
    """Whether to compile: ``"on"``, ``"off"``, or for ``"auto"`` when the run has at least
    ``min_iterations`` outer iterations left (``iterations``; unknown: no).

    Compiling costs once per process (less when inductor's cache in the temporary directory
    already holds the kernels) and then saves a fixed share of every iteration, so it pays from a
    run length that depends on the method (the modules' ``compile_min_iterations``; figures in
    ``docs/speed.md``)."""
    if mode not in ("auto", "on", "off"):
        raise ValueError(f"compile must be 'auto', 'on' or 'off', got {mode!r}")
    if mode != "auto":
        return mode == "on"
    return iterations is not None and iterations >= min_iterations


class RecordingOptimizer(torch.optim.Optimizer):
    """What :class:`TrustRegion` and :class:`~pinn_apts.core.apts.APTS` share: one parameter group
    holding the settings flat, and one record in ``state[key]`` (the radius, the run's totals and
    the last step), kept in plain types so that checkpoints load with ``weights_only=True``.

    Subclasses set ``key``, ``config_type`` (built from the group by ``from_mapping``),
    ``totals_type`` (a dataclass of counters) and ``info_type`` (a record with ``to_state`` /
    ``from_state``).
    """

    key: ClassVar[str]
    config_type: ClassVar[type]
    totals_type: ClassVar[type]
    info_type: ClassVar[type]

    def __init__(self, params: Iterable[Tensor], settings: dict[str, Any], radius: float) -> None:
        super().__init__(params, settings)
        if len(self.param_groups) != 1:
            raise ValueError(f"{type(self).__name__} supports a single parameter group")
        self.state[self.key] = {"radius": float(radius), **asdict(self.totals_type()), "last": None}

    @property
    def config(self) -> Any:
        return self.config_type.from_mapping(self.param_groups[0])

    @property
    def radius(self) -> float:
        return self.state[self.key]["radius"]

    @property
    def last_step(self) -> Any:
        last = self.state[self.key]["last"]
        return None if last is None else self.info_type.from_state(last)

    @property
    def totals(self) -> Any:
        record = self.state[self.key]
        return self.totals_type(**{f.name: record[f.name] for f in fields(self.totals_type)})

    def _record(self, info: Any, radius: float, **counts: int) -> None:
        """Keep ``info`` as the last step and ``radius`` as the radius; add ``counts`` to the totals."""
        record = self.state[self.key]
        record.update({name: record[name] + n for name, n in counts.items()}, radius=radius, last=info.to_state())


class TrustRegion(RecordingOptimizer):
    """Trust-region Newton-CG: one TR-CG step with acceptance per :meth:`step`.

    The subproblem ``min g^T s + 1/2 s^T (H + lambda I) s, |s| <= Delta`` is solved with
    Steihaug CG on exact Hessian-vector products (double backward); the step is accepted by
    the ratio test and the radius updated by :func:`~pinn_apts.core.trust_region.update_radius`;
    a rejected step is retried with the smaller radius until one is accepted or the radius
    reaches ``min_radius``.  All parameters are treated as one flat vector.

    Parameters
    ----------
    params:
        Parameters to optimize (one parameter group).
    radius:
        Initial radius ``Delta_0`` (default 1.0), within ``[min_radius, max_radius]``.
    max_radius, min_radius, eta1, eta2, shrink, grow, cg_max_iter, damping, cg_rtol, curvature, subproblem:
        See :class:`~pinn_apts.core.trust_region.TrustRegionConfig` (defaults: the paper's).
        ``curvature="gauss_newton"`` and ``subproblem="exact"`` need an ``objective`` given to
        :meth:`step` that offers its derivatives as functions of the flat parameters (a
        :class:`~pinn_apts.PINNObjective`).
    compile:
        With an ``objective`` given to :meth:`step` that offers ``compiled()`` (a
        :class:`~pinn_apts.PINNObjective`), take the step on its compiled loss, gradient and
        Hessian-vector products.  Not stored in checkpoints.

    The radius, the counters and the last step's record live in ``state_dict()``, so
    checkpoints carry them.  ``step(closure)`` needs a closure that re-evaluates the loss
    and returns it *without* calling backward.
    """

    key = "trust_region"
    config_type = TrustRegionConfig
    totals_type = TrustRegionTotals
    info_type = StepInfo

    def __init__(
        self,
        params: Iterable[Tensor],
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
        curvature: str = TrustRegionConfig.curvature,
        subproblem: str = TrustRegionConfig.subproblem,
        compile: bool = False,
    ) -> None:
        config = TrustRegionConfig(max_radius, min_radius, eta1, eta2, shrink, grow, cg_max_iter, damping, cg_rtol,
                                   curvature, subproblem)
        config.check_radius("radius", radius)
        super().__init__(params, asdict(config), radius)
        #: use the objective's compiled derivatives (``objective.compiled()``) where it offers them
        self.compile = check_compile(compile)

    def step(self, closure: Callable[[], Tensor], objective: object | None = None) -> Tensor:  # type: ignore[override]
        """One trust-region step on the loss ``closure()`` returns; with ``compile=True`` and an
        ``objective`` offering ``compiled()`` (a :class:`~pinn_apts.PINNObjective`), on its compiled
        derivatives instead (``closure`` must then evaluate the same loss; it is called once)."""
        if closure is None:
            raise ValueError("TrustRegion.step needs a closure that returns the loss (without backward)")
        params = [p for p in self.param_groups[0]["params"] if p.requires_grad]
        config = self.config
        derivatives = flat_derivatives(objective, config.curvature, self.compile)
        if derivatives is not None:
            with torch.no_grad():
                closure()  # once, for what the closure records (the objective's entry terms, hooks)
        last = self.last_step
        info, _ = trust_region_step(closure, params, self.radius, config, derivatives=derivatives,
                                    multiplier=last.multiplier if last is not None else 0.0,
                                    multiplier_radius=last.multiplier_radius if last is not None else 0.0)
        self._record(info, info.radius, steps=1, accepted=int(info.accepted), tries=info.tries,
                     cg_iterations=info.cg_iterations)
        return torch.tensor(info.loss)
