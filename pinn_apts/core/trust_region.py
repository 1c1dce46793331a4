"""Trust-region building blocks on flat tensors: Steihaug CG, the ratio test and the radius rule.

Nothing here knows about Lightning or PINNs.  A trust-region step is two small pieces
(the split of optimistix): a *descent* that turns a radius into a step
(:func:`steihaug_cg`, which solves the subproblem (4) of the paper approximately), and a
*search* that decides acceptance and the next radius from the actual and predicted
reductions (:func:`reduction_ratio`, :func:`update_radius`).  :class:`TrustRegionConfig`
holds the constants; its defaults are the paper's (Section 3): ``Delta_max = 10``,
``Delta_min = 1e-10``, ``eta1 = 0.1``, ``eta2 = 0.5``, ``gamma_down = 0.5``, ``gamma_up = 2``,
12 CG iterations, damping ``1e-3``.

References: T. Steihaug, SIAM J. Numer. Anal. 20 (1983); J. Nocedal & S. Wright,
*Numerical Optimization*, 2nd ed., Algorithm 7.2; A. Conn, N. Gould & Ph. Toint,
*Trust-Region Methods* (2000), Algorithm 6.1.1.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor

__all__ = [
    "CURVATURES",
    "DEFAULT_RADIUS",
    "SUBPROBLEMS",
    "CGResult",
    "FlatDerivatives",
    "GraphDerivatives",
    "StackedCGResult",
    "StopReason",
    "TrustRegionConfig",
    "Tried",
    "boundary_step",
    "capped_radius",
    "check_choice",
    "check_exact_needs_gauss_newton",
    "flat_hvp",
    "reduction_ratio",
    "stacked_boundary_roots",
    "stacked_steihaug_cg",
    "steihaug_cg",
    "try_rows",
    "update_radius",
]


class StopReason(enum.Enum):
    """Why Steihaug CG stopped."""

    CONVERGED = "converged"  #: residual below the tolerance, inside the region
    BOUNDARY = "boundary"  #: the next CG iterate would leave the region; stopped on its edge
    NEGATIVE_CURVATURE = "negative_curvature"  #: d^T B d <= 0; stopped on the edge
    MAX_ITER = "max_iter"  #: iteration limit reached inside the region
    NON_FINITE = "non_finite"  #: a Hessian-vector product was not finite; the step is unusable


@dataclass(frozen=True)
class CGResult:
    """Result of :func:`steihaug_cg`.

    ``predicted_reduction`` is ``m(0) - m(step)`` for the damped model
    ``m(s) = g^T s + 1/2 s^T (H + lambda I) s``.
    """

    step: Tensor
    predicted_reduction: float
    iterations: int
    reason: StopReason

    @property
    def hits_boundary(self) -> bool:
        return self.reason in (StopReason.BOUNDARY, StopReason.NEGATIVE_CURVATURE)


#: Initial radius ``Delta_0`` of every trust-region method here (the paper gives none).
DEFAULT_RADIUS = 1.0


def _check(name: str, value: float, rule: str, ok: bool) -> float:
    if not ok:
        raise ValueError(f"{name} must {rule}, got {value}")
    return float(value)


@dataclass(frozen=True)
class TrustRegionConfig:
    """Constants of the trust-region acceptance and radius rule, and of the CG solver.

    Parameters
    ----------
    max_radius, min_radius:
        Bounds ``Delta_min <= Delta <= Delta_max`` (paper: 10 and 1e-10).
    eta1, eta2:
        Ratio thresholds, ``0 < eta1 < eta2 < 1`` (paper: 0.1, 0.5).  A step is accepted when
        ``rho >= eta1``; the radius grows when ``rho >= eta2`` and the step reached the boundary.
    shrink, grow:
        Radius factors ``0 < shrink < 1 < grow`` (paper: 0.5, 2).
    cg_max_iter:
        CG iterations per subproblem (paper: 12).
    damping:
        ``lambda >= 0`` added to the Hessian (paper: 1e-3).
    cg_rtol:
        Relative residual tolerance of CG; ``None`` uses the forcing term
        ``min(0.5, sqrt(|g|))`` (Nocedal & Wright, eq. 7.3), which gives superlinear
        convergence near a minimizer.
    curvature:
        The model's curvature: ``"hessian"`` (the paper) or ``"gauss_newton"`` (``2 J^T J`` of the
        weighted residuals whose sum of squares is the loss: positive semi-definite).
    subproblem:
        How the subproblem is solved: ``"cg"``, Steihaug CG on curvature-vector products (the
        paper), or ``"exact"``, the Gauss–Newton model's minimizer within the radius to rounding
        (:mod:`~pinn_apts.core.least_squares`; needs ``curvature="gauss_newton"``).
    """

    max_radius: float = 10.0
    min_radius: float = 1e-10
    eta1: float = 0.1
    eta2: float = 0.5
    shrink: float = 0.5
    grow: float = 2.0
    cg_max_iter: int = 12
    damping: float = 1e-3
    cg_rtol: float | None = None
    curvature: str = "hessian"
    subproblem: str = "cg"

    def __post_init__(self) -> None:
        finite = all(math.isfinite(v) for v in (self.max_radius, self.min_radius, self.eta1, self.eta2, self.shrink, self.grow, self.damping))
        if not finite:
            raise ValueError(f"trust-region constants must be finite, got {self}")
        _check("min_radius", self.min_radius, "be positive", self.min_radius > 0)
        _check("max_radius", self.max_radius, f"be >= min_radius ({self.min_radius})", self.max_radius >= self.min_radius)
        _check("eta1", self.eta1, "lie in (0, 1)", 0 < self.eta1 < 1)
        _check("eta2", self.eta2, f"lie in (eta1, 1) = ({self.eta1}, 1)", self.eta1 < self.eta2 < 1)
        _check("shrink", self.shrink, "lie in (0, 1)", 0 < self.shrink < 1)
        _check("grow", self.grow, "be > 1", self.grow > 1)
        _check("damping", self.damping, "be >= 0", self.damping >= 0)
        if isinstance(self.cg_max_iter, bool) or not isinstance(self.cg_max_iter, int) or self.cg_max_iter < 1:
            raise ValueError(f"cg_max_iter must be an integer >= 1, got {self.cg_max_iter!r}")
        if self.cg_rtol is not None:
            _check("cg_rtol", self.cg_rtol, "lie in (0, 1)", 0 < self.cg_rtol < 1)
        check_choice("curvature", self.curvature, CURVATURES)
        check_choice("subproblem", self.subproblem, SUBPROBLEMS)
        check_exact_needs_gauss_newton("subproblem", self.subproblem, "curvature", self.curvature)

    @classmethod
    def from_mapping(cls, mapping: Mapping) -> TrustRegionConfig:
        """The config held in ``mapping`` (an optimizer's parameter group), other keys ignored; a
        setting it lacks (a checkpoint of a version before the setting) takes its default."""
        return cls(**{k: mapping[k] for k in cls.__dataclass_fields__ if k in mapping})

    def check_radius(self, name: str, radius: float) -> float:
        """Validate a radius against ``[min_radius, max_radius]``."""
        return _check(name, radius, f"lie in [min_radius, max_radius] = [{self.min_radius}, {self.max_radius}]",
                      math.isfinite(radius) and self.min_radius <= radius <= self.max_radius)


#: the curvatures of a trust-region model, and the ways to solve its subproblem
CURVATURES = ("hessian", "gauss_newton")
SUBPROBLEMS = ("cg", "exact")


def check_choice(name: str, value: object, choices: Sequence[str]) -> str:
    """``value`` if it is one of ``choices``; else ``ValueError`` naming ``name`` and the choices."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}, got {value!r}")
    return value  # type: ignore[return-value]


def check_exact_needs_gauss_newton(subproblem_name: str, subproblem: str, curvature_name: str, curvature: str) -> None:
    """The exact solver minimizes the Gauss–Newton model: refuse it with the Hessian's."""
    if subproblem == "exact" and curvature != "gauss_newton":
        raise ValueError(f"{subproblem_name}='exact' solves the Gauss–Newton model exactly: set "
                         f"{curvature_name}='gauss_newton' (got {curvature!r})")


def _dot(a: Tensor, b: Tensor) -> Tensor:
    """Row-wise dot products of ``(R, P)`` tensors, ``(R,)``."""
    return torch.linalg.vecdot(a, b)


def _norm(a: Tensor) -> Tensor:
    """Row-wise Euclidean norms, ``(R,)``."""
    return torch.linalg.vector_norm(a, dim=1)


def stacked_boundary_roots(z: Tensor, d: Tensor, radius: Tensor) -> tuple[Tensor, Tensor]:
    """Row by row, both roots ``tau_neg <= 0 <= tau_pos`` of ``|z + tau d| = radius`` (with ``|z| <= radius``).

    ``z`` and ``d`` are ``(R, P)``, ``radius`` ``(R,)``.  Uses the cancellation-free form
    ``q = -(b + sign(b) sqrt(b^2 - a c))``, ``tau = q / a`` and ``c / q``, for ``a = d.d``,
    ``b = z.d``, ``c = z.z - radius^2`` (``z = 0``, ``b = 0``: the symmetric roots).
    """
    a, b = _dot(d, d), _dot(z, d)
    c = torch.clamp(_dot(z, z) - radius * radius, max=0.0)
    disc = torch.sqrt(torch.clamp(b * b - a * c, min=0.0))
    q = -(b + torch.copysign(disc, b))
    symmetric = q == 0
    r1, r2 = q / a, c / torch.where(symmetric, torch.ones_like(q), q)
    tau = radius / torch.sqrt(a)
    return torch.where(symmetric, -tau, torch.minimum(r1, r2)), torch.where(symmetric, tau, torch.maximum(r1, r2))


def boundary_step(z: Tensor, d: Tensor, radius: float) -> tuple[float, float]:
    """One subproblem's :func:`stacked_boundary_roots`, as floats."""
    low, high = stacked_boundary_roots(z.unsqueeze(0), d.unsqueeze(0), z.new_full((1,), float(radius)))
    return float(low[0]), float(high[0])


_REASONS = list(StopReason)
_CODE = {reason: code for code, reason in enumerate(_REASONS)}
_RUNNING = -1


@dataclass(frozen=True)
class StackedCGResult:
    """Result of :func:`stacked_steihaug_cg` for ``R`` subproblems: all tensors, no host read.

    ``step`` is ``(R, P)``; ``predicted_reduction``, ``iterations`` and ``codes`` are ``(R,)``
    (``codes`` index :class:`StopReason` in its order of definition).
    """

    step: Tensor
    predicted_reduction: Tensor
    iterations: Tensor
    codes: Tensor

    @property
    def reasons(self) -> list[StopReason]:
        return [_REASONS[int(c)] for c in self.codes.tolist()]

    @property
    def hits_boundary(self) -> Tensor:
        return (self.codes == _CODE[StopReason.BOUNDARY]) | (self.codes == _CODE[StopReason.NEGATIVE_CURVATURE])

    @property
    def non_finite(self) -> Tensor:
        return self.codes == _CODE[StopReason.NON_FINITE]

    def row(self, i: int) -> CGResult:
        """Subproblem ``i`` as a :class:`CGResult` (reads its scalars back to the host)."""
        return CGResult(self.step[i], float(self.predicted_reduction[i]), int(self.iterations[i]),
                        _REASONS[int(self.codes[i])])

    @classmethod
    def of_rows(cls, rows: Sequence[CGResult]) -> StackedCGResult:
        """``R`` subproblems' :class:`CGResult`, one per row, as one record."""
        like = rows[0].step
        return cls(torch.stack([r.step for r in rows]),
                   torch.tensor([r.predicted_reduction for r in rows], dtype=like.dtype, device=like.device),
                   torch.tensor([r.iterations for r in rows], device=like.device),
                   torch.tensor([_CODE[r.reason] for r in rows], device=like.device))


def stacked_steihaug_cg(
    grad: Tensor,
    hvp: Callable[[Tensor], Tensor],
    radius: Tensor,
    *,
    max_iter: int = 12,
    damping: float = 1e-3,
    rtol: float | None = None,
    host_reads: bool = True,
) -> StackedCGResult:
    """Approximately minimize ``g_i^T s + 1/2 s^T (H_i + damping I) s`` subject to ``|s| <= radius_i``
    for ``R`` independent subproblems at once (the rows of ``grad``, ``(R, P)``).

    Steihaug's truncated conjugate gradients (Nocedal & Wright, Algorithm 7.2) on Hessian-vector
    products: ``hvp`` maps ``(R, P)`` directions to their products row by row, ``radius`` is
    ``(R,)``.  Row ``i`` stops inside its region when its residual ``|r| <= tol`` (``tol = rtol
    |g|``, or the forcing term ``min(0.5, sqrt(|g|)) |g|`` when ``rtol`` is None) or after
    ``max_iter`` iterations; on the boundary when its next iterate would leave the region, or
    when ``d^T B d <= 0`` (then the boundary point along ``d`` with the lower model value); and
    with :attr:`StopReason.NON_FINITE` when a product is not finite.  A row that has stopped keeps
    its result (masked) while the others go on, so rows may stop at different iterations.

    ``host_reads`` (default) lets the loop read a few booleans per iteration, to skip the
    boundary and stopping updates no running row needs and to stop once every row has: on the
    CPU, where the values are on the host anyway, this is the cheap choice.  With
    ``host_reads=False`` the loop reads nothing back and always runs ``max_iter`` iterations,
    finished rows masked (for CUDA-graph capture); the results are the same.  The model value
    comes from the residual ``r = g + B z`` (``B s`` is kept for the step), so it costs no product.
    """
    z = torch.zeros_like(grad)
    r = grad.clone()
    g_norm = _norm(grad)
    rr = g_norm * g_norm
    factor = torch.full_like(g_norm, rtol) if rtol is not None else torch.clamp(torch.sqrt(g_norm), max=0.5)
    tol = factor * g_norm
    d = -r
    codes = torch.where(g_norm == 0, _CODE[StopReason.CONVERGED], torch.full_like(g_norm, _RUNNING, dtype=torch.long))
    iterations = torch.zeros_like(codes)
    step, bstep = torch.zeros_like(grad), torch.zeros_like(grad)  # the result and B times it

    def needed(mask: Tensor) -> bool:
        """Whether any row of ``mask`` (already restricted to running rows by the caller) is set;
        without host reads, assume so: the update that follows is masked anyway."""
        return bool(mask.any()) if host_reads else True

    def finish(mask: Tensor, s: Tensor, bs: Tensor, reason: StopReason) -> None:
        nonlocal step, bstep, codes
        mask = mask & (codes == _RUNNING)
        column = mask.unsqueeze(1)
        step, bstep = torch.where(column, s, step), torch.where(column, bs, bstep)
        codes = torch.where(mask, _CODE[reason], codes)

    # Only step, bstep and codes are masked: a row that has stopped goes on iterating on its
    # own values (rows never mix), which nothing reads; its direction d is frozen so that its
    # products stay finite.
    for _ in range(max_iter):
        running = codes == _RUNNING
        if host_reads and not bool(running.any()):
            break
        iterations = iterations + running
        bd = hvp(d)
        if damping:
            bd = bd + damping * d
        finite = torch.isfinite(bd).all(dim=1)
        dbd = _dot(d, bd)
        negative = dbd <= 0
        alpha = rr / dbd
        z_next = z + alpha.unsqueeze(1) * d
        leaving = _norm(z_next) >= radius
        if needed((~finite | negative | leaving) & running):  # a row stops here, not by convergence
            # in this order of precedence; a non-finite row's NaNs stay in its own row
            bz = r - grad
            if needed(~finite & running):
                finish(~finite, z, bz, StopReason.NON_FINITE)
            low, high = stacked_boundary_roots(z, d, radius)
            s_high, bs_high = z + high.unsqueeze(1) * d, bz + high.unsqueeze(1) * bd
            if needed(negative & running):
                s_low, bs_low = z + low.unsqueeze(1) * d, bz + low.unsqueeze(1) * bd
                take_low = ((_dot(grad, s_low) + 0.5 * _dot(s_low, bs_low))
                            <= (_dot(grad, s_high) + 0.5 * _dot(s_high, bs_high))).unsqueeze(1)
                finish(negative, torch.where(take_low, s_low, s_high), torch.where(take_low, bs_low, bs_high),
                       StopReason.NEGATIVE_CURVATURE)
            finish(leaving, s_high, bs_high, StopReason.BOUNDARY)
        z = z_next
        r = r + alpha.unsqueeze(1) * bd
        rr_next = _dot(r, r)
        converged = torch.sqrt(rr_next) <= tol
        if needed(converged & (codes == _RUNNING)):
            finish(converged, z, r - grad, StopReason.CONVERGED)
        d = torch.where((codes == _RUNNING).unsqueeze(1), -r + (rr_next / rr).unsqueeze(1) * d, d)
        rr = rr_next
    finish(torch.ones_like(codes, dtype=torch.bool), z, r - grad, StopReason.MAX_ITER)
    predicted = -(_dot(grad, step) + 0.5 * _dot(step, bstep))
    return StackedCGResult(step, predicted, iterations, codes)


def steihaug_cg(
    grad: Tensor,
    hvp: Callable[[Tensor], Tensor],
    radius: float,
    *,
    max_iter: int = 12,
    damping: float = 1e-3,
    rtol: float | None = None,
) -> CGResult:
    """Approximately minimize ``g^T s + 1/2 s^T (H + damping I) s`` subject to ``|s| <= radius``.

    The one-subproblem view of :func:`stacked_steihaug_cg` (``R = 1``): ``grad`` is ``(P,)`` and
    ``hvp(v) = H v`` maps ``(P,)`` to ``(P,)``; the stopping rules are that function's.
    """
    if not radius > 0:
        raise ValueError(f"radius must be positive, got {radius}")
    result = stacked_steihaug_cg(
        grad.unsqueeze(0), lambda v: hvp(v[0]).unsqueeze(0), grad.new_full((1,), float(radius)),
        max_iter=max_iter, damping=damping, rtol=rtol,
    )
    return result.row(0)


def reduction_ratio(actual: float | Tensor, predicted: float | Tensor) -> float | Tensor:
    """``rho = actual / predicted``; ``-inf`` (reject) for a non-finite or non-positive case.

    A non-finite trial loss gives a non-finite ``actual`` and is rejected like any bad step.
    Floats give a float; tensors (one entry per subproblem) give a tensor.
    """
    if not isinstance(actual, Tensor):
        return float(reduction_ratio(torch.tensor(float(actual), dtype=torch.float64),
                                     torch.tensor(float(predicted), dtype=torch.float64)))
    valid = torch.isfinite(actual) & torch.isfinite(predicted) & (predicted > 0)
    safe = torch.where(valid, predicted, torch.ones_like(predicted))
    return torch.where(valid, actual / safe, torch.full_like(actual, -math.inf))


def update_radius(
    radius: float | Tensor, rho: float | Tensor, hits_boundary: bool | Tensor, config: TrustRegionConfig
) -> tuple[bool, float] | tuple[Tensor, Tensor]:
    """Acceptance and the next radius from the ratio ``rho`` (Conn, Gould & Toint, Alg. 6.1.1).

    - ``rho < eta1``: reject; ``Delta <- shrink * Delta``.
    - ``eta1 <= rho < eta2``: accept; ``Delta`` unchanged.
    - ``rho >= eta2``: accept; ``Delta <- grow * Delta`` only if the step reached the
      boundary.  An interior step was not limited by the radius, so growing it would say
      nothing about the model's quality further out and would only lengthen a later run of
      shrinks (the rule of scipy's ``trust-ncg`` and of Nocedal & Wright, Algorithm 4.1).

    The result is clamped to ``[min_radius, max_radius]``.  Returns ``(accepted, radius)``:
    a bool and a float for one subproblem, tensors for one entry per subproblem.
    """
    if not isinstance(rho, Tensor):
        accepted, new = update_radius(torch.tensor(float(radius), dtype=torch.float64),
                                      torch.tensor(float(rho), dtype=torch.float64),
                                      torch.tensor(bool(hits_boundary)), config)
        return bool(accepted), float(new)
    accepted = rho >= config.eta1
    grow = accepted & (rho >= config.eta2) & hits_boundary
    new = torch.where(accepted, torch.where(grow, radius * config.grow, radius), radius * config.shrink)
    return accepted, new.clamp(min=config.min_radius, max=config.max_radius)


def capped_radius(
    radius: float | Tensor, accepted: bool | Tensor, cap: float, config: TrustRegionConfig
) -> float | Tensor:
    """The radius after a step when an accepted step may not leave it above ``cap`` (APTS's local
    radius ``Delta_k / J`` is both initial and maximum radius), kept at least ``min_radius``.

    ``radius`` and ``accepted`` come from :func:`update_radius`: floats or one entry per subproblem.
    """
    if not isinstance(radius, Tensor):
        return float(capped_radius(torch.tensor(float(radius), dtype=torch.float64), torch.tensor(bool(accepted)),
                                   cap, config))
    return torch.where(accepted, radius.clamp(max=cap), radius).clamp(min=config.min_radius)


@dataclass(frozen=True)
class Tried:
    """One trust-region try on ``R`` rows (:func:`try_rows`): the solves, the trial losses (``nan``
    where a solve was non-finite and its trial not evaluated), the ratios, which rows are accepted
    and the rows' radii after the test."""

    result: StackedCGResult
    trial: Tensor
    rho: Tensor
    accepted: Tensor
    radii: Tensor


def try_rows(
    loss: Tensor,
    solve: Callable[[Tensor], StackedCGResult],
    trial_losses: Callable[[Tensor, Tensor], Tensor],
    radii: Tensor,
    cap: float,
    config: TrustRegionConfig,
) -> Tried:
    """One try of a trust-region step on ``R`` independent rows: the step TR and Stage II take with
    ``R = 1`` (retried, shrunken, until accepted), and batched Stage I with one row per replica.

    ``loss`` ``(R,)``: the rows' losses at their current points.  ``solve(radii)`` solves the rows'
    subproblems (Steihaug CG, or exactly).  ``trial_losses(steps, finite)`` gives the losses at the
    current points plus ``steps`` ``(R, P)``, where ``finite`` (``(R,)``) says the solve was finite
    (it may leave the others ``nan``).  A non-finite solve or trial loss rejects its row
    (:func:`reduction_ratio`); the radii follow :func:`update_radius`, an accepted row's kept at most
    ``cap`` (:func:`capped_radius`)."""
    result = solve(radii)
    trial = trial_losses(result.step, ~result.non_finite)
    rho = torch.where(result.non_finite, -math.inf, reduction_ratio(loss - trial, result.predicted_reduction))
    accepted, new = update_radius(radii, rho, result.hits_boundary, config)
    return Tried(result, trial, rho, accepted, capped_radius(new, accepted, cap, config))


class FlatDerivatives(Protocol):
    """An objective's loss, gradient and Hessian-vector products as functions of the flat parameters
    (e.g. compiled ones, :meth:`pinn_apts.PINNObjective.compiled`): what a trust-region step can use
    instead of a graph built on the parameters (:func:`flat_hvp`)."""

    def loss(self, flat: Tensor) -> Tensor:
        """The loss at ``flat``, a 0-d tensor."""

    def loss_and_grad(self, flat: Tensor) -> tuple[Tensor, Tensor]:
        """The loss and its gradient at ``flat``."""

    def hvp(self, flat: Tensor, v: Tensor) -> Tensor:
        """The Hessian at ``flat`` times ``v``."""


class GraphDerivatives:
    """:class:`FlatDerivatives` of any function of the flat parameters by autograd: ``fn(flat)`` is the
    loss, a 0-d tensor for one objective ``(P,)``, or the ``(R,)`` losses of ``R`` stacked replicas
    ``(R, P)`` (then the gradients are rows and the products block diagonal, as
    :class:`~pinn_apts.core.replicas.StackedDerivatives`).

    The gradient's graph at a point is built once, on a leaf of its own, and kept: every
    Hessian-vector product at that point is one backward through it.  Nothing it evaluates moves
    a model's parameters.
    """

    def __init__(self, fn: Callable[[Tensor], Tensor]) -> None:
        self.fn = fn
        self._kept: tuple[Tensor, Tensor, Tensor, Tensor, Tensor] | None = None

    def loss(self, flat: Tensor) -> Tensor:
        with torch.no_grad():
            return self.fn(flat)

    def loss_and_grad(self, flat: Tensor) -> tuple[Tensor, Tensor]:
        _, value, grad, _, _ = self._graph_at(flat)
        return value, grad

    def hvp(self, flat: Tensor, v: Tensor) -> Tensor:
        _, _, _, leaf, grad = self._graph_at(flat)
        return torch.autograd.grad(grad, leaf, grad_outputs=v, retain_graph=True)[0]

    def _graph_at(self, flat: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """The point, the loss, the gradient, and the leaf and the gradient's graph at ``flat`` (built
        when ``flat`` differs from the kept point)."""
        kept = self._kept
        if kept is None or not torch.equal(kept[0], flat):
            leaf = flat.detach().requires_grad_(True)
            with torch.enable_grad():
                value = self.fn(leaf)
                (grad,) = torch.autograd.grad(value.sum(), leaf, create_graph=True)
            self._kept = kept = (flat.detach().clone(), value.detach(), grad.detach(), leaf, grad)
        return kept


def flat_hvp(gradient: Sequence[Tensor], params: Sequence[Tensor]) -> Callable[[Tensor], Tensor]:
    """Hessian-vector products ``v -> H v`` by double backward through ``gradient``.

    ``gradient`` must come from ``torch.autograd.grad(loss, params, create_graph=True)``;
    its graph is built once and reused (``retain_graph=True``) for every product, and no
    Hessian is ever formed.
    """
    flat_grad = torch.cat([g.reshape(-1) for g in gradient])

    def hvp(v: Tensor) -> Tensor:
        products = torch.autograd.grad(flat_grad, params, grad_outputs=v, retain_graph=True, allow_unused=True)
        return torch.cat([
            (h if h is not None else torch.zeros_like(p)).reshape(-1) for h, p in zip(products, params)
        ])

    return hvp
