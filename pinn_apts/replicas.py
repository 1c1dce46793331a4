"""Stage I's local solves (no Lightning): one replica after the other, or all as one batch.

:func:`local_solves` runs the replicas in turn on the model's own parameters.
:func:`batched_local_solves` runs them as one batched computation: the ``D`` replicas' parameters are stacked along a leading dimension and their local
objectives summed, ``F(Theta) = sum_d L_k^d(theta_d)``: one backward gives every replica's
gradient and one double backward every replica's Hessian-vector product (the Hessian of
``F`` is block diagonal).  Steihaug CG and the trust-region test then run on ``(D, P)``
tensors with a step length, stopping test and radius per replica, doing per replica
exactly what :func:`~pinn_apts.apts.local_solves` does one replica at a time.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor
from torch.nn.utils import parameters_to_vector, vector_to_parameters

from .optim import trust_region_step
from .trust_region import StopReason, TrustRegionConfig

__all__ = [
    "BatchedCGResult",
    "LocalSolveResult",
    "batched_local_solves",
    "batched_steihaug_cg",
    "local_solves",
]

@dataclass
class LocalSolveResult:
    """Sum of the replica corrections of Stage I and what the local solves did."""

    correction_sum: Tensor
    predicted_sum: float  #: sum over replicas of the predicted reductions of accepted local steps
    correction_norms: dict[int, float]  #: |s_k^d| by replica d
    local_steps: int = 0
    local_accepted: int = 0
    cg_iterations: int = 0
    hit_boundary: bool = False
    reasons: dict[str, int] = field(default_factory=dict)


def local_solves(
    params: Sequence[Tensor],
    local_loss: Callable[[int], Tensor],
    replicas: Iterable[int],
    radius: float,
    config: TrustRegionConfig,
    local_steps: int,
    local_retry: bool = False,
) -> LocalSolveResult:
    """Stage I's local solves, one replica after the other, on ``params`` in place.

    Each replica starts from the current ``params`` (``theta_k``) and takes ``J`` local
    trust-region steps on ``local_loss(d)`` with radius ``Delta_k / J`` as initial and maximum
    radius.  ``params`` are restored to ``theta_k`` on return.
    """
    params = list(params)
    start = parameters_to_vector(params).detach().clone()
    local_cap = radius / local_steps
    result = LocalSolveResult(torch.zeros_like(start), 0.0, {})
    for d in replicas:
        local_radius = local_cap
        with torch.no_grad():
            vector_to_parameters(start, params)
        loss = None  # each local step starts from the loss its predecessor left (same objective)
        for j in range(local_steps):
            try:
                info, loss = trust_region_step(lambda: local_loss(d), params, local_radius, config,
                                               max_radius=local_cap, retry=local_retry, loss=loss)
            except FloatingPointError as err:
                raise FloatingPointError(f"Stage I, replica {d}, local step {j + 1}: {err}") from err
            local_radius = max(info.radius, config.min_radius)
            result.local_steps += 1
            result.local_accepted += int(info.accepted)
            result.cg_iterations += info.cg_iterations
            result.reasons[info.reason] = result.reasons.get(info.reason, 0) + 1
            if info.accepted:
                result.predicted_sum += info.predicted_reduction
                result.hit_boundary |= info.reason in (StopReason.BOUNDARY.value, StopReason.NEGATIVE_CURVATURE.value)
        correction = parameters_to_vector(params).detach() - start
        result.correction_sum += correction
        result.correction_norms[d] = float(correction.norm())
    with torch.no_grad():
        vector_to_parameters(start, params)
    return result


_REASONS = list(StopReason)
_CODE = {reason: code for code, reason in enumerate(_REASONS)}
_RUNNING = -1


class BatchedCGResult:
    """Per-replica steps ``(D, P)``, predicted reductions ``(D,)``, iterations ``(D,)`` and stop reasons."""

    def __init__(self, step: Tensor, predicted_reduction: Tensor, iterations: Tensor, codes: Tensor) -> None:
        self.step, self.predicted_reduction, self.iterations, self._codes = step, predicted_reduction, iterations, codes

    @property
    def reasons(self) -> list[StopReason]:
        return [_REASONS[int(c)] for c in self._codes]

    @property
    def hits_boundary(self) -> Tensor:
        return (self._codes == _CODE[StopReason.BOUNDARY]) | (self._codes == _CODE[StopReason.NEGATIVE_CURVATURE])

    @property
    def non_finite(self) -> Tensor:
        return self._codes == _CODE[StopReason.NON_FINITE]


def _dot(a: Tensor, b: Tensor) -> Tensor:
    return (a * b).sum(dim=1)


def _boundary_roots(z: Tensor, d: Tensor, radius: Tensor) -> tuple[Tensor, Tensor]:
    """Row-wise :func:`~pinn_apts.trust_region.boundary_step`: roots ``tau_neg <= 0 <= tau_pos``."""
    a, b = _dot(d, d), _dot(z, d)
    c = torch.clamp(_dot(z, z) - radius * radius, max=0.0)
    disc = torch.sqrt(torch.clamp(b * b - a * c, min=0.0))
    q = -(b + torch.copysign(disc, b))
    safe_q = torch.where(q == 0, torch.ones_like(q), q)
    r1, r2 = q / a, c / safe_q
    symmetric = radius / torch.sqrt(a)
    low = torch.where(q == 0, -symmetric, torch.minimum(r1, r2))
    high = torch.where(q == 0, symmetric, torch.maximum(r1, r2))
    return low, high


def batched_steihaug_cg(
    grad: Tensor,
    hvp: Callable[[Tensor], Tensor],
    radius: Tensor,
    *,
    max_iter: int = 12,
    damping: float = 1e-3,
    rtol: float | None = None,
) -> BatchedCGResult:
    """:func:`~pinn_apts.trust_region.steihaug_cg` for ``D`` independent subproblems at once.

    ``grad`` is ``(D, P)``, ``hvp`` maps ``(D, P) -> (D, P)`` row by row, ``radius`` is ``(D,)``.
    A replica that has stopped keeps its result while the others go on.
    """
    n = grad.shape[0]
    z = torch.zeros_like(grad)
    r = grad.clone()
    rr = _dot(r, r)
    g_norm = torch.sqrt(rr)
    factor = torch.full_like(g_norm, rtol) if rtol is not None else torch.clamp(torch.sqrt(g_norm), max=0.5)
    tol = factor * g_norm
    d = -r
    codes = torch.full((n,), _RUNNING, dtype=torch.long, device=grad.device)
    codes[g_norm == 0] = _CODE[StopReason.CONVERGED]
    iterations = torch.zeros(n, dtype=torch.long, device=grad.device)
    step = torch.zeros_like(grad)
    bstep = torch.zeros_like(grad)  # B step, for the model value

    def finish(mask: Tensor, s: Tensor, bs: Tensor, reason: StopReason) -> None:
        mask = mask & (codes == _RUNNING)
        step[mask], bstep[mask] = s[mask], bs[mask]
        codes[mask] = _CODE[reason]

    for it in range(1, max_iter + 1):
        running = codes == _RUNNING
        if not running.any():
            break
        iterations[running] = it
        bd = hvp(d)
        if damping:
            bd = bd + damping * d
        bz = r - grad
        finite = torch.isfinite(bd).all(dim=1)
        finish(~finite, z, bz, StopReason.NON_FINITE)
        bd = torch.where(finite.unsqueeze(1), bd, torch.zeros_like(bd))
        dbd = _dot(d, bd)
        negative = dbd <= 0
        if (negative & (codes == _RUNNING)).any():
            low, high = _boundary_roots(z, d, radius)
            candidates = []
            for tau in (low, high):
                s = z + tau.unsqueeze(1) * d
                bs = bz + tau.unsqueeze(1) * bd
                candidates.append((s, bs, _dot(grad, s) + 0.5 * _dot(s, bs)))
            take_low = (candidates[0][2] <= candidates[1][2]).unsqueeze(1)
            s = torch.where(take_low, candidates[0][0], candidates[1][0])
            bs = torch.where(take_low, candidates[0][1], candidates[1][1])
            finish(negative, s, bs, StopReason.NEGATIVE_CURVATURE)
        alpha = rr / torch.where(negative, torch.ones_like(dbd), dbd)
        z_next = z + alpha.unsqueeze(1) * d
        leaving = torch.sqrt(_dot(z_next, z_next)) >= radius
        if (leaving & (codes == _RUNNING)).any():
            _, high = _boundary_roots(z, d, radius)
            s = z + high.unsqueeze(1) * d
            bs = bz + high.unsqueeze(1) * bd
            finish(leaving, s, bs, StopReason.BOUNDARY)
        running = (codes == _RUNNING).unsqueeze(1)
        z = torch.where(running, z_next, z)
        r = torch.where(running, r + alpha.unsqueeze(1) * bd, r)
        rr_next = _dot(r, r)
        finish(torch.sqrt(rr_next) <= tol, z, r - grad, StopReason.CONVERGED)
        d = torch.where(running, -r + (rr_next / rr).unsqueeze(1) * d, d)
        rr = torch.where(running.squeeze(1), rr_next, rr)
    finish(torch.ones(n, dtype=torch.bool, device=grad.device), z, r - grad, StopReason.MAX_ITER)
    predicted = -(_dot(grad, step) + 0.5 * _dot(step, bstep))
    return BatchedCGResult(step, predicted, iterations, codes)


def batched_local_solves(
    params: Sequence[Tensor],
    batched_local_loss: Callable[[list[Tensor]], Tensor],
    radius: float,
    config: TrustRegionConfig,
    replicas: Sequence[int],
    local_steps: int,
    local_retry: bool = False,
) -> LocalSolveResult:
    """Stage I's local solves for all ``D`` replicas at once (same contract as ``local_solves``).

    ``batched_local_loss(stacked)`` takes the parameters of ``replicas`` stacked as
    ``(len(replicas), *p.shape)`` (in the order of ``params``) and returns their local losses.
    ``params`` (``theta_k``) are not modified.
    """
    num = len(replicas)
    shapes = [p.shape for p in params]
    sizes = [p.numel() for p in params]
    theta = torch.cat([p.detach().reshape(-1) for p in params])
    current = theta.expand(num, -1).clone()  # (D, P)
    local_cap = radius / local_steps
    radii = torch.full((num,), local_cap, dtype=theta.dtype, device=theta.device)
    result = LocalSolveResult(torch.zeros_like(theta), 0.0, {})

    def unflatten(flat: Tensor) -> list[Tensor]:
        return [chunk.reshape(num, *shape) for chunk, shape in zip(flat.split(sizes, dim=1), shapes)]

    def losses_at(flat: Tensor, graph: bool) -> tuple[Tensor, list[Tensor]]:
        stacked = [t.detach().requires_grad_(graph) for t in unflatten(flat)]
        with torch.enable_grad():
            return batched_local_loss(stacked), stacked

    if local_retry:
        raise ValueError("batched replicas take local_retry=False only (a rejected local step is one of the J)")
    for j in range(local_steps):
        loss, stacked = losses_at(current, graph=True)
        loss_values = loss.detach()
        bad = ~torch.isfinite(loss_values)
        if bad.any():
            d = int(bad.nonzero()[0])
            raise FloatingPointError(f"Stage I, replica {replicas[d]}, local step {j + 1}: non-finite loss "
                                     f"{float(loss_values[d])} at the current point of the trust-region step")
        with torch.enable_grad():
            grads = torch.autograd.grad(loss.sum(), stacked, create_graph=True)
        flat_grad_graph = torch.cat([g.reshape(num, -1) for g in grads], dim=1)
        flat_grad = flat_grad_graph.detach()
        bad = ~torch.isfinite(flat_grad).all(dim=1)
        if bad.any():
            d = int(bad.nonzero()[0])
            raise FloatingPointError(f"Stage I, replica {replicas[d]}, local step {j + 1}: non-finite gradient "
                                     "at the current point of the trust-region step")

        def hvp(v: Tensor) -> Tensor:
            products = torch.autograd.grad(flat_grad_graph, stacked, grad_outputs=v, retain_graph=True)
            return torch.cat([h.reshape(num, -1) for h in products], dim=1)

        cg = batched_steihaug_cg(flat_grad, hvp, radii, max_iter=config.cg_max_iter,
                                 damping=config.damping, rtol=config.cg_rtol)
        trial_values, _ = losses_at(current + cg.step, graph=False)
        actual = loss_values - trial_values.detach()
        pred = cg.predicted_reduction
        # reduction_ratio and update_radius, row by row
        valid = torch.isfinite(actual) & torch.isfinite(pred) & (pred > 0) & ~cg.non_finite
        rho = torch.where(valid, actual / torch.where(valid, pred, torch.ones_like(pred)),
                          torch.full_like(pred, -math.inf))
        accept = rho >= config.eta1
        grow = (rho >= config.eta2) & cg.hits_boundary
        radii = torch.where(accept, torch.where(grow, radii * config.grow, radii), radii * config.shrink)
        radii = radii.clamp(min=config.min_radius, max=config.max_radius)
        radii = torch.where(accept, radii.clamp(max=local_cap), radii).clamp(min=config.min_radius)
        current = torch.where(accept.unsqueeze(1), current + cg.step, current)
        result.local_steps += num
        result.local_accepted += int(accept.sum())
        result.cg_iterations += int(cg.iterations.sum())
        result.predicted_sum += float(torch.where(accept, pred, torch.zeros_like(pred)).sum())
        result.hit_boundary |= bool((accept & cg.hits_boundary).any())
        for reason in cg.reasons:
            result.reasons[reason.value] = result.reasons.get(reason.value, 0) + 1
    corrections = current - theta
    result.correction_sum = corrections.sum(dim=0)
    norms = torch.sqrt(_dot(corrections, corrections)).tolist()
    result.correction_norms = dict(zip(replicas, norms))
    return result
