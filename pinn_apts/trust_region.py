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
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = [
    "CGResult",
    "StopReason",
    "TrustRegionConfig",
    "boundary_step",
    "flat_hvp",
    "reduction_ratio",
    "steihaug_cg",
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

    @classmethod
    def from_mapping(cls, mapping: dict) -> TrustRegionConfig:
        """The config held in ``mapping`` (an optimizer's parameter group), other keys ignored."""
        return cls(**{k: mapping[k] for k in cls.__dataclass_fields__})

    def check_radius(self, name: str, radius: float) -> float:
        """Validate a radius against ``[min_radius, max_radius]``."""
        return _check(name, radius, f"lie in [min_radius, max_radius] = [{self.min_radius}, {self.max_radius}]",
                      math.isfinite(radius) and self.min_radius <= radius <= self.max_radius)


def boundary_step(z: Tensor, d: Tensor, radius: float) -> tuple[float, float]:
    """Both roots ``tau_neg <= 0 <= tau_pos`` of ``|z + tau d| = radius`` (with ``|z| <= radius``).

    Uses the cancellation-free form ``q = -(b + sign(b) sqrt(b^2 - a c))``,
    ``tau = q / a`` and ``c / q``, for ``a = d.d``, ``b = z.d``, ``c = z.z - radius^2``.
    """
    a = float(d @ d)
    b = float(z @ d)
    c = min(float(z @ z) - radius * radius, 0.0)
    disc = math.sqrt(max(b * b - a * c, 0.0))
    q = -(b + math.copysign(disc, b))
    if q == 0.0:  # z = 0 and b = 0: symmetric roots
        tau = radius / math.sqrt(a)
        return -tau, tau
    roots = sorted((q / a, c / q))
    return roots[0], roots[1]


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

    Steihaug's truncated conjugate gradients (Nocedal & Wright, Algorithm 7.2) on
    Hessian-vector products ``hvp(v) = H v``.  Stops inside the region when the residual
    ``|r| <= tol`` (``tol = rtol |g|``, or ``min(0.5, sqrt(|g|)) |g|`` when ``rtol`` is None)
    or after ``max_iter`` iterations; stops on the boundary when the next iterate would
    leave the region or when ``d^T B d <= 0`` (then the boundary point along ``d`` with the
    lower model value).  The model value is tracked through the residual ``r = g + B z``,
    so ``m(z) = (g^T z + r^T z) / 2`` costs no extra product.
    """
    if not radius > 0:
        raise ValueError(f"radius must be positive, got {radius}")
    z = torch.zeros_like(grad)
    r = grad.clone()
    g_norm = float(grad.norm())
    if g_norm == 0.0:
        return CGResult(z, 0.0, 0, StopReason.CONVERGED)
    tol = (rtol if rtol is not None else min(0.5, math.sqrt(g_norm))) * g_norm
    d = -r
    rr = g_norm * g_norm

    def model(s: Tensor, bs: Tensor) -> float:
        return float(grad @ s + 0.5 * (s @ bs))

    for iteration in range(1, max_iter + 1):
        bd = hvp(d)
        if damping:
            bd = bd + damping * d
        if not torch.isfinite(bd).all():
            return CGResult(z, -model(z, r - grad), iteration, StopReason.NON_FINITE)
        dbd = float(d @ bd)
        if dbd <= 0:
            bz = r - grad
            tau_neg, tau_pos = boundary_step(z, d, radius)
            candidates = [(z + tau * d, bz + tau * bd) for tau in (tau_neg, tau_pos)]
            values = [model(s, bs) for s, bs in candidates]
            best = min(range(2), key=values.__getitem__)
            return CGResult(candidates[best][0], -values[best], iteration, StopReason.NEGATIVE_CURVATURE)
        alpha = rr / dbd
        z_next = z + alpha * d
        if float(z_next.norm()) >= radius:
            _, tau = boundary_step(z, d, radius)
            s, bs = z + tau * d, (r - grad) + tau * bd
            return CGResult(s, -model(s, bs), iteration, StopReason.BOUNDARY)
        z = z_next
        r = r + alpha * bd
        rr_next = float(r @ r)
        if math.sqrt(rr_next) <= tol:
            return CGResult(z, -model(z, r - grad), iteration, StopReason.CONVERGED)
        d = -r + (rr_next / rr) * d
        rr = rr_next
    return CGResult(z, -model(z, r - grad), max_iter, StopReason.MAX_ITER)


def reduction_ratio(actual: float, predicted: float) -> float:
    """``rho = actual / predicted``; ``-inf`` (reject) for a non-finite or non-positive case.

    A non-finite trial loss gives a non-finite ``actual`` and is rejected like any bad step.
    """
    if not (math.isfinite(actual) and math.isfinite(predicted)) or predicted <= 0:
        return -math.inf
    return actual / predicted


def update_radius(radius: float, rho: float, hits_boundary: bool, config: TrustRegionConfig) -> tuple[bool, float]:
    """Acceptance and the next radius from the ratio ``rho`` (Conn, Gould & Toint, Alg. 6.1.1).

    - ``rho < eta1``: reject; ``Delta <- shrink * Delta``.
    - ``eta1 <= rho < eta2``: accept; ``Delta`` unchanged.
    - ``rho >= eta2``: accept; ``Delta <- grow * Delta`` only if the step reached the
      boundary.  An interior step was not limited by the radius, so growing it would say
      nothing about the model's quality further out and would only lengthen a later run of
      shrinks (the rule of scipy's ``trust-ncg`` and of Nocedal & Wright, Algorithm 4.1).

    The result is clamped to ``[min_radius, max_radius]``.  Returns ``(accepted, radius)``.
    """
    if rho < config.eta1:
        accepted, radius = False, radius * config.shrink
    elif rho >= config.eta2 and hits_boundary:
        accepted, radius = True, radius * config.grow
    else:
        accepted = True
    return accepted, min(max(radius, config.min_radius), config.max_radius)


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
