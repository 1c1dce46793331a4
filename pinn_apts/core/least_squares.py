"""Trust-region subproblems of a sum of squares, solved exactly: the Gauss–Newton *descent*.

The PINN loss is a sum of squares ``L(theta) = |r(theta)|^2`` of weighted residuals.  Its
Gauss–Newton model around ``theta`` is

    m(s) = |r + J s|^2 + (damping / 2) |s|^2,    gradient g = 2 J^T r,    curvature B = 2 J^T J + damping I,

positive semi-definite by construction.  Unlike Steihaug CG on Hessian-vector products (12
iterations in the paper), the subproblem ``min m(s) subject to |s| <= radius`` is solved here to
rounding: :class:`GaussNewtonModel` decomposes ``J`` once (an eigendecomposition of the smaller of
``J^T J`` and ``J J^T``), and then every radius (every retry of a rejected step) costs one
one-dimensional root find on the secular equation, :func:`solve_in_eigenbasis`.  This is the
trust-region form of Levenberg–Marquardt: the multiplier ``lambda`` of the constraint is the
Levenberg–Marquardt damping, chosen so that the step meets the radius (Moré, "The
Levenberg–Marquardt algorithm: implementation and theory", 1977; Moré & Sorensen, "Computing a
trust region step", 1983; Conn, Gould & Toint, *Trust-Region Methods*, 2000, section 7.3).

The search (ratio test, radius rule) stays that of :mod:`~pinn_apts.core.trust_region`; a solve
returns the same :class:`~pinn_apts.core.trust_region.CGResult` record as Steihaug CG, so either
descent plugs into the one trust-region step.

Why an eigendecomposition and not a Cholesky factorization per trial ``lambda``: the ratio test
rejects and retries with a smaller radius, and a step of APTS solves the same model for several
radii; with the eigenbasis each of them costs ``O(P k)``.  Where ``J`` has fewer rows than columns
(a replica's local objective: a few hundred residuals, 921 parameters) the decomposition of
``J J^T`` is the cheaper one and gives the same steps, since the gradient lies in the row space of
``J`` (the Gram identity ``(J^T J + mu I)^{-1} J^T r = J^T (J J^T + mu I)^{-1} r``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from .trust_region import CGResult, StopReason

__all__ = ["EigenSolution", "GaussNewtonModel", "solve_in_eigenbasis"]

#: Newton/bisection iterations of the secular equation at most (it converges in 5-15)
MAX_ROOT_ITERATIONS = 100
#: the step's norm meets the radius to this relative tolerance
ROOT_RTOL = 1e-12


@dataclass(frozen=True)
class EigenSolution:
    """The solution of ``min gamma^T c + 1/2 sum theta_i c_i^2`` subject to ``|c| <= radius``, in the
    eigenbasis of the model's curvature."""

    coefficients: Tensor  #: ``c``: the step in the eigenbasis
    multiplier: float  #: ``lambda >= 0`` with ``(theta + lambda) c = -gamma`` (0 inside the region)
    boundary: bool  #: ``|c| = radius``
    hard_case: bool  #: the step was completed along an eigenvector of the smallest eigenvalue
    iterations: int  #: iterations of the root find (0 for a step inside the region)
    predicted_reduction: float  #: ``m(0) - m(c)``


def _norm_at(theta: Tensor, gamma: Tensor, lam: float) -> float:
    return float((gamma / (theta + lam)).norm())


def solve_in_eigenbasis(theta: Tensor, gamma: Tensor, radius: float) -> EigenSolution:
    """The exact trust-region step of the model ``gamma^T c + 1/2 sum_i theta_i c_i^2`` (a symmetric
    curvature, eigenvalues ``theta``, the gradient's coordinates ``gamma``, both ``(n,)``).

    The solution is ``c(lambda) = -gamma / (theta + lambda)`` with ``lambda >= max(0, -min theta)``:
    ``lambda = 0`` if that step lies inside the region (for a singular positive semi-definite
    curvature, the least-norm one), else the ``lambda`` at which ``|c(lambda)| = radius``, found by
    Newton's method on ``1/|c(lambda)| - 1/radius`` (nearly linear in ``lambda``) safeguarded by
    bisection.  In the *hard case* (the gradient has no component along the eigenvectors of the
    smallest eigenvalue and ``|c(-min theta)| < radius``) no such ``lambda`` exists; the step is
    then ``c(-min theta)`` completed to the boundary along such an eigenvector (Moré & Sorensen 1983).
    """
    if theta.shape != gamma.shape or theta.dim() != 1:
        raise ValueError(f"theta and gamma must be vectors of one length, got {tuple(theta.shape)} and "
                         f"{tuple(gamma.shape)}")
    if not radius > 0:
        raise ValueError(f"radius must be positive, got {radius}")
    scale = float(theta.abs().max()) if theta.numel() else 0.0
    tiny = theta.numel() * torch.finfo(theta.dtype).eps * max(scale, 1e-300)
    gamma_scale = float(gamma.abs().max()) if gamma.numel() else 0.0
    # numerically zero components of the gradient (rounding of a vector that has none there)
    negligible = gamma.abs() <= theta.numel() * torch.finfo(gamma.dtype).eps * gamma_scale
    smallest = float(theta.min())
    floor = max(0.0, -smallest)

    def solution(c: Tensor, lam: float, boundary: bool, hard: bool, iterations: int) -> EigenSolution:
        predicted = -float(gamma @ c + 0.5 * (theta * c.square()).sum())
        return EigenSolution(c, lam, boundary, hard, iterations, predicted)

    if smallest > tiny:  # positive definite: the Newton step, if it fits
        c = -gamma / theta
        if float(c.norm()) <= radius:
            return solution(c, 0.0, False, False, 0)
    # the eigenvectors of the smallest eigenvalue, and whether the gradient avoids them
    at_floor = theta - smallest <= tiny
    if bool(negligible[at_floor].all()):
        rest = ~at_floor
        c = torch.zeros_like(gamma)
        c[rest] = -gamma[rest] / (theta[rest] + floor)
        length = float(c.norm())
        if length <= radius:
            if floor == 0.0:  # positive semi-definite, least-norm step inside the region
                return solution(c, 0.0, False, False, 0)
            # the hard case: complete along the first eigenvector of the smallest eigenvalue
            first = int(torch.nonzero(at_floor)[0])
            c[first] = math.sqrt(max(radius * radius - length * length, 0.0))
            return solution(c, floor, True, True, 0)
    # the boundary: |c(lambda)| = radius for one lambda > floor, where |c| falls from +inf (or above radius)
    gnorm = float(gamma.norm())
    low, high = floor, floor + gnorm / radius + tiny  # |c(high)| <= |gamma| / (high - floor) <= radius
    lam = high if floor == 0.0 and smallest > tiny else floor + 0.5 * (high - floor)
    iterations = 0
    for iterations in range(1, MAX_ROOT_ITERATIONS + 1):
        shifted = theta + lam
        c = -gamma / shifted
        length = float(c.norm())
        if abs(length - radius) <= ROOT_RTOL * radius:
            break
        if length > radius:
            low = lam
        else:
            high = lam
        # Newton on phi(lambda) = 1/|c| - 1/radius, phi' = (sum gamma^2 / shifted^3) / |c|^3
        slope = float((gamma.square() / shifted.pow(3)).sum()) / length**3
        step = (1.0 / length - 1.0 / radius) / slope if slope > 0 else math.inf
        guess = lam - step
        lam = guess if low < guess < high else 0.5 * (low + high)
    return solution(-gamma / (theta + lam), lam, True, False, iterations)


def _eigen(gram: Tensor) -> tuple[Tensor, Tensor] | None:
    """The eigenvalues and eigenvectors of a Gram matrix on its numerical range: eigenvalues carry
    rounding of about ``eps * |gram|``, and a direction below a few of those is numerically outside
    the row space (rank deficiency) and is left out.  ``None`` if the decomposition fails."""
    try:
        squares, vectors = torch.linalg.eigh(gram)
    except RuntimeError:  # torch.linalg.LinAlgError: no convergence (a non-finite matrix)
        return None
    top = float(squares.abs().max()) if squares.numel() else 0.0
    kept = squares > squares.numel() * torch.finfo(squares.dtype).eps * max(top, 1e-300)
    return squares[kept], vectors[:, kept]


class GaussNewtonModel:
    """The Gauss–Newton model of ``|r(theta)|^2`` at one point, decomposed once, solved for any radius.

    Build it with :meth:`of` from the residuals and their Jacobian, or directly from the normal
    equations' pieces (summed over processes).  It keeps ``V`` ``(P, k)``, orthonormal directions
    spanning the numerical row space of ``J``, the eigenvalues ``sigma_i^2`` of ``J^T J`` on them,
    and ``V^T J^T r``.

    Parameters
    ----------
    squares, directions, projected:
        ``sigma^2`` ``(k,)``, ``V`` ``(P, k)`` and ``V^T J^T r`` ``(k,)``.
    loss, gradient:
        ``|r|^2`` and ``2 J^T r``.
    damping:
        ``>= 0``, added to the curvature ``2 J^T J`` (the paper's ``lambda``; 0 leaves the
        regularization to the radius, as Levenberg–Marquardt does).
    """

    def __init__(self, squares: Tensor | None, directions: Tensor | None, projected: Tensor | None, loss: Tensor,
                 gradient: Tensor, damping: float = 0.0) -> None:
        if not (damping >= 0 and math.isfinite(damping)):
            raise ValueError(f"damping must be finite and >= 0, got {damping}")
        self.squares, self.directions, self.projected = squares, directions, projected
        self.loss, self.gradient, self.damping = loss, gradient, float(damping)
        #: whether the model is finite (a step from it is rejected otherwise)
        self.finite = squares is not None and all(
            bool(torch.isfinite(t).all()) for t in (squares, directions, projected, loss, gradient))

    @classmethod
    def of(cls, residuals: Tensor, jacobian: Tensor, damping: float = 0.0,
           reduce: Callable[[Tensor], Tensor] | None = None) -> GaussNewtonModel:
        """The model of the residuals ``r`` ``(M,)`` and their Jacobian ``J`` ``(M, P)``.

        One process: the eigendecomposition of the smaller of ``J^T J`` and ``J J^T``.  Across
        processes (``reduce`` sums a tensor over them, each holding some of the residuals): of the
        summed ``J^T J``, with ``J^T r`` and ``|r|^2`` summed too.
        """
        if jacobian.dim() != 2 or residuals.shape != jacobian.shape[:1]:
            raise ValueError(f"jacobian must be (M, P) and residuals (M,), got {tuple(jacobian.shape)} and "
                             f"{tuple(residuals.shape)}")
        total = reduce if reduce is not None else (lambda t: t)
        loss, jtr = total(residuals @ residuals), total(residuals @ jacobian)
        rows, cols = jacobian.shape
        finite = bool(torch.isfinite(jacobian).all() and torch.isfinite(residuals).all())
        if reduce is not None or cols <= rows:  # J^T J = V diag(sigma^2) V^T
            gram = total(jacobian.T @ jacobian)
            eigen = _eigen(gram) if bool(torch.isfinite(gram).all()) else None
            if eigen is None:
                return cls(None, None, None, loss, 2 * jtr, damping)
            squares, directions = eigen
            return cls(squares, directions, directions.T @ jtr, loss, 2 * jtr, damping)
        # J J^T = U diag(sigma^2) U^T; the right singular vectors are J^T U / sigma
        eigen = _eigen(jacobian @ jacobian.T) if finite else None
        if eigen is None:
            return cls(None, None, None, loss, 2 * jtr, damping)
        squares, left = eigen
        sigma = squares.sqrt()
        return cls(squares, (jacobian.T @ left) / sigma, sigma * (left.T @ residuals), loss, 2 * jtr, damping)

    def solve(self, radius: float) -> CGResult:
        """The model's minimizer within ``radius``, as the record Steihaug CG returns
        (``CONVERGED``: inside the region, ``BOUNDARY``: on it, ``NON_FINITE``: the model is not finite;
        ``iterations``: those of the root find)."""
        if not self.finite:
            return CGResult(torch.zeros_like(self.gradient), 0.0, 0, StopReason.NON_FINITE)
        # B = 2 J^T J + damping I on span(V): eigenvalues 2 sigma^2 + damping; gradient coordinates 2 V^T J^T r.
        # Off span(V) the gradient has no component and the curvature is damping >= 0: the step stays in span(V).
        found = solve_in_eigenbasis(2 * self.squares + self.damping, 2 * self.projected, radius)
        step = self.directions @ found.coefficients
        reason = StopReason.BOUNDARY if found.boundary else StopReason.CONVERGED
        return CGResult(step, found.predicted_reduction, found.iterations, reason)
