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

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from .trust_region import CGResult, StackedCGResult, StopReason

__all__ = [
    "GRAM_BLOCKS", "EigenSolution", "GaussNewtonModel", "NormalEquationsModel", "StackedGaussNewtonModels", "gram",
    "model_multiplier", "model_multiplier_radius", "solve_in_eigenbasis", "start_multiplier",
]

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


#: column blocks of :func:`gram`: the products on and above the diagonal blocks, (blocks + 1) / (2 blocks)
#: of the full product's work (torch has no symmetric rank-k update); 6 was the fastest for 921 columns
GRAM_BLOCKS = 6


def gram(matrix: Tensor, blocks: int = GRAM_BLOCKS) -> Tensor:
    """``matrix^T matrix``, exactly symmetric, from the products of column blocks on and above the
    diagonal only: about a third less time than ``matrix.T @ matrix`` for the Jacobians of our
    objectives (``docs/speed.md``), equal to it to rounding."""
    cols = matrix.shape[1]
    if cols < 64 * blocks:
        product = matrix.T @ matrix
        return (product + product.T) / 2
    edges = [round(i * cols / blocks) for i in range(blocks + 1)]
    out = matrix.new_empty(cols, cols)
    for lo, hi in itertools.pairwise(edges):
        block = matrix[:, lo:hi].T @ matrix[:, lo:]
        diagonal, right = block[:, : hi - lo], block[:, hi - lo :]
        out[lo:hi, lo:hi] = (diagonal + diagonal.T) / 2
        out[lo:hi, hi:] = right
        out[hi:, lo:hi] = right.T
    return out


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
           reduce: Callable[[Tensor], Tensor] | None = None,
           rtol: float | None = None) -> GaussNewtonModel | NormalEquationsModel:
        """The model of the residuals ``r`` ``(M,)`` and their Jacobian ``J`` ``(M, P)``.

        With fewer residuals than parameters: the eigendecomposition of ``J J^T``; with at least as
        many, Cholesky factorizations of the normal equations (:class:`NormalEquationsModel`, with its
        tolerance ``rtol``).  Across processes (``reduce`` sums a tensor over them, each holding some of
        the residuals): the summed ``J^T J``, ``J^T r`` and ``|r|^2``, factorized alike when the
        residuals of all processes are at least as many as the parameters, else decomposed into
        eigenvalues (the exact step one process takes from ``J J^T``).
        """
        if jacobian.dim() != 2 or residuals.shape != jacobian.shape[:1]:
            raise ValueError(f"jacobian must be (M, P) and residuals (M,), got {tuple(jacobian.shape)} and "
                             f"{tuple(residuals.shape)}")
        total = reduce if reduce is not None else (lambda t: t)
        loss, jtr = total(residuals @ residuals), total(residuals @ jacobian)
        rows, cols = jacobian.shape
        finite = bool(torch.isfinite(jacobian).all() and torch.isfinite(residuals).all())
        if reduce is not None:
            # the summed normal equations; with fewer residuals in all than parameters, in their
            # eigenbasis, which gives the step one process takes from J J^T (both exact)
            normal = NormalEquationsModel(reduce(gram(jacobian)), jtr, loss, damping, rtol)
            all_rows = int(reduce(torch.tensor(float(rows), dtype=jacobian.dtype, device=jacobian.device)))
            return normal if all_rows >= cols else normal.eigen()
        if cols <= rows:  # the normal equations, P x P: Cholesky factorizations
            return NormalEquationsModel(gram(jacobian), jtr, loss, damping, rtol)
        # J J^T = U diag(sigma^2) U^T; the right singular vectors are J^T U / sigma
        eigen = _eigen(gram(jacobian.T)) if finite else None
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


class NormalEquationsModel:
    """The Gauss–Newton model from its normal equations, ``A = J^T J`` ``(P, P)`` and ``b = J^T r``,
    solved by Cholesky factorizations of ``A + mu I`` (Moré & Sorensen 1983 for a positive
    semi-definite ``A``): the step is ``s(mu) = -(A + mu I)^{-1} b`` with ``mu = damping / 2`` if that
    step lies inside the region, else the ``mu`` at which ``|s(mu)|`` meets the radius.

    The root is found by Newton's method on ``log |s|`` as a function of ``log mu`` (its derivative
    is ``-mu |w|^2 / |s|^2`` with ``L w = s``), safeguarded by bisection of ``log mu``: nearly linear
    over the many orders of magnitude an ill-conditioned ``A`` (a PINN's) spreads it over, where
    Moré & Sorensen's Newton step on ``1/|s|`` from the left climbs about one order per factorization.
    A step is accepted once ``(1 - rtol) radius <= |s| <= radius``: it is then the exact minimizer of
    the model within the radius ``|s|`` (Moré & Sorensen accept 10%; the default here is 1%, and the
    tests ask 1e-12).  A second radius (a retried step) starts from the first one's ``mu``.

    Used where there are more residuals than parameters (the full loss; a process's share, whose ``A``
    and ``b`` are summed over the processes): a factorization costs a small fraction of an
    eigendecomposition of ``A`` (``docs/speed.md``, ``benchmarks/least_squares_cost.py``).  ``A + mu I``
    that Cholesky cannot factor (``A``
    numerically singular, ``mu`` too small to lift it) counts as a step longer than any radius;
    where the first factorable ``mu`` already gives a step inside the region, the least-norm step
    may be the answer, and the eigenbasis (:meth:`eigen`) decides.
    """

    #: default relative tolerance of the step's norm below the radius
    rtol = 1e-2

    def __init__(self, normal: Tensor, jtr: Tensor, loss: Tensor, damping: float = 0.0,
                 rtol: float | None = None) -> None:
        if not (damping >= 0 and math.isfinite(damping)):
            raise ValueError(f"damping must be finite and >= 0, got {damping}")
        self.normal, self.jtr, self.loss, self.damping = normal, jtr, loss, float(damping)
        if rtol is not None:
            if not 0 < rtol < 1:
                raise ValueError(f"rtol must lie in (0, 1), got {rtol}")
            self.rtol = rtol
        #: ``2 J^T r``
        self.gradient = 2 * jtr
        self.finite = all(bool(torch.isfinite(t).all()) for t in (normal, jtr, loss))
        self._start: tuple[Tensor, Tensor] | None = None  # the solve at mu = damping / 2, if it can be factored
        self._tried = False
        #: ``mu`` of the last boundary step (where the next radius's root find starts)
        self.multiplier: float | None = None
        #: the radius that :attr:`multiplier` met (``None``: unknown); the next search starts at
        #: ``multiplier * multiplier_radius / radius``, as ``mu`` varies about inversely with the radius
        self.multiplier_radius: float | None = None

    def _step(self, mu: float) -> tuple[Tensor, Tensor] | None:
        """``s(mu)`` and the Cholesky factor of ``A + mu I``; ``None`` where it cannot be factored."""
        shifted = self.normal.clone()
        shifted.diagonal().add_(mu)  # A + mu I without a P x P identity
        factor, info = torch.linalg.cholesky_ex(shifted)
        if int(info) != 0:
            return None
        return -torch.cholesky_solve(self.jtr.unsqueeze(1), factor).squeeze(1), factor

    def _result(self, step: Tensor, mu: float, iterations: int, boundary: bool) -> CGResult:
        # m(0) - m(s) = -(g^T s + 1/2 s^T (2 A + damping I) s); with (A + mu I) s = -b this is
        # s^T A s + (2 mu - damping/2) |s|^2 >= 0, free of the cancellation of the plain form
        squared = float(step @ step)
        predicted = float(step @ (self.normal @ step)) + (2 * mu - 0.5 * self.damping) * squared
        return CGResult(step, predicted, iterations, StopReason.BOUNDARY if boundary else StopReason.CONVERGED)

    def solve(self, radius: float) -> CGResult:
        """The model's minimizer within ``radius`` (the record Steihaug CG returns; ``iterations``:
        the Cholesky factorizations).

        Without a carried multiplier the search first factorizes at ``mu = damping / 2`` (the
        Gauss–Newton step: inside the region, it is the answer).  With one (:attr:`multiplier`, the
        previous step's) it starts there and factorizes at ``damping / 2`` only when the search heads
        there: a PINN's Gauss–Newton step is far longer than any radius it is solved with.
        """
        if not self.finite:
            return CGResult(torch.zeros_like(self.gradient), 0.0, 0, StopReason.NON_FINITE)
        base = 0.5 * self.damping
        factorizations = 0
        carried = self.multiplier if self.multiplier is not None and self.multiplier > base else None
        if carried is not None and self.multiplier_radius:
            carried = base + (carried - base) * self.multiplier_radius / radius
        if carried is None and not self._tried:  # mu = damping / 2: the Gauss–Newton step, if A + mu I factors
            self._start, self._tried, factorizations = self._step(base), True, 1
        if self._start is not None and float(self._start[0].norm()) <= radius:
            return self._result(self._start[0], base, factorizations, False)
        low = self._floor() if self._tried and self._start is None else base
        floor = low
        high = low + float(self.jtr.norm()) / radius  # |s(mu)| <= |b| / mu <= radius from there
        mu = carried if carried is not None and low < carried < high else high
        step = factor = None
        while factorizations < MAX_ROOT_ITERATIONS:
            found, factorizations = self._step(mu), factorizations + 1
            if mu == base and not self._tried:  # the Gauss–Newton step, reached by the search
                self._start, self._tried = found, True
                if found is not None and float(found[0].norm()) <= radius:
                    return self._result(found[0], base, factorizations, False)
                if found is None:
                    low = floor = self._floor()
                    mu = math.sqrt(low * high)
                    continue
            if found is None:  # A + mu I not factorable: the step there counts as longer than any radius
                low, mu = mu, math.sqrt(mu * high) if mu > 0 else 0.5 * high
                continue
            step, factor = found
            length = float(step.norm())
            if radius * (1 - self.rtol) <= length <= radius or high - low <= 1e-14 * high:
                break  # met, or the bracket is down to rounding
            if length > radius:
                low = mu
            elif mu == floor:
                break  # inside even at the floor: no root above it
            else:
                high = mu
            w = torch.linalg.solve_triangular(factor, step.unsqueeze(1), upper=False).squeeze(1)
            slope = mu * float(w @ w) / (length * length)  # -d log|s| / d log mu
            target = radius * (1 - 0.5 * self.rtol)  # aim inside the accepted band
            guess = mu * math.exp(math.log(length / target) / slope) if slope > 0 else math.inf
            if low < guess < high:
                mu = guess
            elif guess <= low and low == floor and (floor > 0 or not self._tried):
                mu = floor  # the root may lie below every mu tried: look at the floor itself
            else:
                mu = math.sqrt(low * high) if low > 0 else 0.5 * high
        if step is None:
            return CGResult(torch.zeros_like(self.gradient), 0.0, factorizations, StopReason.NON_FINITE)
        if float(step.norm()) < radius * (1 - self.rtol):
            # no mu in reach gives a step as long as the radius: with A singular, the least-norm step
            # lies inside the region, which only the eigenbasis gives (rank deficiency)
            return self.eigen().solve(radius)
        self.multiplier, self.multiplier_radius = mu, radius
        return self._result(step, mu, factorizations, True)

    def _floor(self) -> float:
        """Where the search for ``mu`` starts when ``A + (damping / 2) I`` cannot be factored (``A``
        numerically rank deficient): a few units of rounding of ``A``'s largest entries above it;
        below, ``mu`` would only amplify rounding (as the eigenbasis, which leaves such directions out)."""
        scale = max(float(self.normal.diagonal().max()), 1e-300)
        return 0.5 * self.damping + len(self.jtr) * torch.finfo(self.jtr.dtype).eps * scale

    def eigen(self) -> GaussNewtonModel:
        """The same model in the eigenbasis of ``A`` (:class:`GaussNewtonModel`)."""
        eigen = _eigen(self.normal)
        if eigen is None:
            return GaussNewtonModel(None, None, None, self.loss, self.gradient, self.damping)
        squares, directions = eigen
        return GaussNewtonModel(squares, directions, directions.T @ self.jtr, self.loss, self.gradient, self.damping)


def model_multiplier(model: object) -> float:
    """The multiplier of an exact model's last boundary step (0 where it has none)."""
    return float(getattr(model, "multiplier", None) or 0.0)


def model_multiplier_radius(model: object) -> float:
    """The radius that multiplier met (0 where unknown)."""
    return float(getattr(model, "multiplier_radius", None) or 0.0)


def start_multiplier(model: object, multiplier: float, radius: float = 0.0) -> None:
    """Start ``model``'s next root find from ``multiplier`` (the previous step's, as Levenberg–Marquardt
    carries its parameter; ``radius``, if known, the radius it met), where the model keeps one and
    ``multiplier > 0``."""
    if multiplier > 0 and hasattr(model, "multiplier"):
        model.multiplier, model.multiplier_radius = multiplier, (radius or None)


class StackedGaussNewtonModels:
    """``R`` Gauss–Newton models, one per row of stacked parameters (batched replicas), each solved
    exactly within its own radius: the exact descent of :func:`~pinn_apts.core.replicas.batched_local_solves`.

    Each row's model is :meth:`GaussNewtonModel.of` the row's own residuals (the padding rows of a
    smaller part left out), so a batched replica takes the step a sequential one takes.  The
    decompositions run row after row.

    Parameters
    ----------
    residuals, jacobian, rows:
        ``(R, M)``, ``(R, M, P)`` and which rows are each model's own ``(R, M)``.
    damping:
        As in :class:`GaussNewtonModel`.
    multipliers, radii:
        Where each row's root find starts (the row's previous step's multiplier; 0: none) and the
        radius that multiplier met (0: unknown).
    """

    def __init__(self, residuals: Tensor, jacobian: Tensor, rows: Tensor, damping: float = 0.0,
                 multipliers: Sequence[float] | None = None, radii: Sequence[float] | None = None) -> None:
        if jacobian.dim() != 3 or residuals.shape != jacobian.shape[:2] or rows.shape != residuals.shape:
            raise ValueError(f"jacobian must be (R, M, P), residuals and rows (R, M), got {tuple(jacobian.shape)}, "
                             f"{tuple(residuals.shape)} and {tuple(rows.shape)}")
        self.models = [GaussNewtonModel.of(r[keep], j[keep], damping) for r, j, keep in zip(residuals, jacobian, rows)]
        for model, multiplier, radius in zip(self.models, multipliers or (), radii or itertools.repeat(0.0)):
            start_multiplier(model, multiplier, radius)
        #: ``|r|^2`` of each row, ``(R,)``
        self.loss = torch.stack([torch.as_tensor(m.loss) for m in self.models])
        #: ``2 J^T r`` of each row, ``(R, P)``
        self.gradient = torch.stack([m.gradient for m in self.models])

    def solve(self, radii: Tensor) -> StackedCGResult:
        """Each model's minimizer within its radius ``radii[i]``."""
        return StackedCGResult.of_rows([m.solve(float(r)) for m, r in zip(self.models, radii.tolist())])

    @property
    def multipliers(self) -> list[float]:
        """Each model's multiplier of its last boundary step (0 where none)."""
        return [model_multiplier(m) for m in self.models]

    @property
    def multiplier_radii(self) -> list[float]:
        """The radii those multipliers met (0 where unknown)."""
        return [model_multiplier_radius(m) for m in self.models]
