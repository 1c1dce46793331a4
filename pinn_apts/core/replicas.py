"""Stage I's local solves (no Lightning): one replica after the other, or all as one batch.

:func:`local_solves` runs the replicas in turn on the model's own parameters.
:func:`batched_local_solves` runs them as one batched computation: the ``D`` replicas' parameters are stacked along a leading dimension and their local
objectives summed, ``F(Theta) = sum_d L_k^d(theta_d)``: one backward gives every replica's
gradient and one double backward every replica's Hessian-vector product (the Hessian of
``F`` is block diagonal).  Steihaug CG and the trust-region test then run on ``(D, P)``
tensors with a step length, stopping test and radius per replica, doing per replica
exactly what :func:`~pinn_apts.core.apts.local_solves` does one replica at a time.
"""

from __future__ import annotations

from functools import partial
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import torch
from torch import Tensor
from torch.nn.utils import parameters_to_vector, vector_to_parameters

from .least_squares import StackedGaussNewtonModels
from .optim import trust_region_step
from .trust_region import (
    FlatDerivatives,
    GraphDerivatives,
    StopReason,
    TrustRegionConfig,
    stacked_steihaug_cg,
    try_rows,
)

__all__ = [
    "CoherentDerivatives",
    "LocalSolveResult",
    "StackedDerivatives",
    "batched_local_solves",
    "local_solves",
]

class StackedDerivatives(Protocol):
    """The local losses ``(R,)`` of ``R`` stacked replicas, their gradients and Hessian-vector products
    ``(R, P)``, as functions of the stacked flat parameters ``(R, P)`` (e.g. compiled ones,
    :meth:`pinn_apts.PINNObjective.compiled_stacked`): what batched Stage I can use instead of a graph."""

    def loss(self, flat: Tensor) -> Tensor: ...

    def loss_and_grad(self, flat: Tensor) -> tuple[Tensor, Tensor]: ...

    def hvp(self, flat: Tensor, v: Tensor) -> Tensor: ...


@dataclass(frozen=True)
class CoherentDerivatives:
    """``derivatives`` (one objective's, or stacked replicas') plus the linear term
    ``shift . (flat - start)``: a local objective made first-order coherent with the full one
    (its gradient at ``start`` is the full gradient); Hessian-vector products are unchanged."""

    derivatives: FlatDerivatives | StackedDerivatives
    shift: Tensor
    start: Tensor

    def _linear(self, flat: Tensor) -> Tensor:
        return ((flat - self.start) * self.shift).sum(dim=-1)

    def loss(self, flat: Tensor) -> Tensor:
        return self.derivatives.loss(flat) + self._linear(flat)

    def loss_and_grad(self, flat: Tensor) -> tuple[Tensor, Tensor]:
        value, grad = self.derivatives.loss_and_grad(flat)
        return value + self._linear(flat), grad + self.shift

    def hvp(self, flat: Tensor, v: Tensor) -> Tensor:
        return self.derivatives.hvp(flat, v)


def flat_gradient(loss: Tensor, params: Sequence[Tensor], retain_graph: bool = False) -> Tensor:
    """``grad loss`` with respect to ``params`` as one detached flat vector (no graph of its own)."""
    with torch.enable_grad():
        grads = torch.autograd.grad(loss, params, retain_graph=retain_graph)
    return torch.cat([g.reshape(-1) for g in grads]).detach()


def _check_gradient(gradient: Tensor, replica: int) -> None:
    if not bool(torch.isfinite(gradient).all()):
        raise FloatingPointError(f"Stage I, replica {replica}: non-finite local gradient at theta_k")


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
    reasons: dict[StopReason, int] = field(default_factory=dict)
    #: by replica d, the multiplier of its last exact step (where its next outer iteration's root find starts)
    multipliers: dict[int, float] = field(default_factory=dict)


def local_solves(
    params: Sequence[Tensor],
    local_loss: Callable[[int], Tensor],
    replicas: Iterable[int],
    radius: float,
    config: TrustRegionConfig,
    local_steps: int,
    local_retry: bool = False,
    derivatives: Callable[[int], FlatDerivatives | None] | None = None,
    full_gradient: Tensor | None = None,
    multipliers: Mapping[int, float] | None = None,
) -> LocalSolveResult:
    """Stage I's local solves, one replica after the other, on ``params`` in place.

    Each replica starts from the current ``params`` (``theta_k``) and takes ``J`` local
    trust-region steps on ``local_loss(d)`` with radius ``Delta_k / J`` as initial and maximum
    radius.  ``params`` are restored to ``theta_k`` on return.  ``derivatives(d)``, if given,
    supplies replica ``d``'s loss, gradient and products as functions of the flat parameters
    (compiled) instead of the graph of ``local_loss(d)``.

    ``full_gradient`` (``grad L(theta_k)``), if given, makes each replica's objective first-order
    coherent with the full one: ``L_k^d(theta) + (grad L(theta_k) - grad L_k^d(theta_k)) . (theta -
    theta_k)``, whose gradient at ``theta_k`` is ``grad L(theta_k)`` and whose Hessian is ``L_k^d``'s.

    ``multipliers[d]``: where replica ``d``'s first exact step starts its root find (its last one's
    multiplier, from the previous outer iteration's :attr:`LocalSolveResult.multipliers`), as
    Levenberg–Marquardt carries its parameter; later local steps start from the previous step's.
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
        flat = derivatives(d) if derivatives is not None else None
        objective = partial(local_loss, d)
        if full_gradient is not None:
            if flat is not None:
                local_gradient = flat.loss_and_grad(start)[1]
            else:
                with torch.enable_grad():
                    local_value = objective()
                local_gradient = flat_gradient(local_value, params, retain_graph=True)  # the graph serves step 1
            _check_gradient(local_gradient, d)
            shift = full_gradient - local_gradient
            if flat is not None:
                flat = CoherentDerivatives(flat, shift, start)
            else:
                objective = partial(_coherent_loss, objective, params, shift, start)
                loss = _coherent_loss(lambda: local_value, params, shift, start)  # at theta_k, evaluated once
        # an exact root find starts where the replica's last one ended (the radius it met: unknown)
        multiplier, multiplier_radius = (multipliers or {}).get(d, 0.0), 0.0
        for j in range(local_steps):
            try:
                info, loss = trust_region_step(objective, params, local_radius, config, max_radius=local_cap,
                                               retry=local_retry, loss=loss, derivatives=flat, multiplier=multiplier,
                                               multiplier_radius=multiplier_radius)
            except FloatingPointError as err:
                raise FloatingPointError(f"Stage I, replica {d}, local step {j + 1}: {err}") from err
            local_radius = info.radius  # at most local_cap, at least min_radius
            multiplier, multiplier_radius = info.multiplier, info.multiplier_radius
            result.local_steps += 1
            result.local_accepted += int(info.accepted)
            result.cg_iterations += info.cg_iterations
            result.reasons[info.reason] = result.reasons.get(info.reason, 0) + 1
            if info.accepted:
                result.predicted_sum += info.predicted_reduction
                result.hit_boundary |= info.reason in (StopReason.BOUNDARY, StopReason.NEGATIVE_CURVATURE)
        correction = parameters_to_vector(params).detach() - start
        result.correction_sum += correction
        result.correction_norms[d] = float(correction.norm())
        result.multipliers[d] = multiplier
    with torch.no_grad():
        vector_to_parameters(start, params)
    return result


def _coherent_loss(local: Callable[[], Tensor], params: Sequence[Tensor], shift: Tensor, start: Tensor) -> Tensor:
    with torch.enable_grad():
        return local() + torch.dot(shift, parameters_to_vector(params) - start)


def batched_local_solves(
    params: Sequence[Tensor],
    stacked_local: Callable[[Tensor], Tensor],
    radius: float,
    config: TrustRegionConfig,
    replicas: Sequence[int],
    local_steps: int,
    local_retry: bool = False,
    derivatives: StackedDerivatives | None = None,
    full_gradient: Tensor | None = None,
    multipliers: Mapping[int, float] | None = None,
) -> LocalSolveResult:
    """Stage I's local solves for all ``D`` replicas at once (same contract as ``local_solves``).

    ``stacked_local(flat)`` takes the parameters of ``replicas`` stacked as one ``(len(replicas), P)``
    tensor (each row in the order of ``params``) and returns their local losses, ``(len(replicas),)``.
    ``derivatives``, if given, supplies the losses, gradients and products instead of the graph of
    ``stacked_local`` (compiled).  ``full_gradient`` (first-order coherent local
    objectives) and ``multipliers``: as in :func:`local_solves`.  ``params`` (``theta_k``) are not modified.
    """
    num = len(replicas)
    theta = torch.cat([p.detach().reshape(-1) for p in params])
    current = theta.expand(num, -1).clone()  # (D, P)
    local_cap = radius / local_steps
    radii = torch.full((num,), local_cap, dtype=theta.dtype, device=theta.device)
    result = LocalSolveResult(torch.zeros_like(theta), 0.0, {})
    if local_retry:
        raise ValueError("batched replicas take local_retry=False only (a rejected local step is one of the J)")
    if derivatives is None:  # the graph of stacked_local, kept per point on a leaf of its own
        derivatives = GraphDerivatives(stacked_local)
    if full_gradient is not None:
        start = current.clone()
        local_gradient = derivatives.loss_and_grad(start)[1]
        for i, d in enumerate(replicas):
            _check_gradient(local_gradient[i], d)
        derivatives = CoherentDerivatives(derivatives, full_gradient - local_gradient, start)
    exact = config.subproblem == "exact"
    if exact and not callable(getattr(derivatives, "stacked_residuals_and_jacobian", None)):
        raise ValueError("subproblem='exact' with batched replicas needs their stacked residuals and Jacobians "
                         "(the package's PINNObjective with its MLP network gives them)")
    # each replica's exact root find starts where its previous one ended
    carried, carried_radii = [(multipliers or {}).get(d, 0.0) for d in replicas], [0.0] * num
    for j in range(local_steps):
        if exact:
            models = StackedGaussNewtonModels(*derivatives.stacked_residuals_and_jacobian(current), config.damping,
                                              carried, carried_radii)
            loss_values, flat_grad = models.loss, models.gradient
        else:
            loss_values, flat_grad = derivatives.loss_and_grad(current)
        bad = ~torch.isfinite(loss_values)
        if bad.any():
            d = int(bad.nonzero()[0])
            raise FloatingPointError(f"Stage I, replica {replicas[d]}, local step {j + 1}: non-finite loss "
                                     f"{float(loss_values[d])} at the current point of the trust-region step")
        bad = ~torch.isfinite(flat_grad).all(dim=1)
        if bad.any():
            d = int(bad.nonzero()[0])
            raise FloatingPointError(f"Stage I, replica {replicas[d]}, local step {j + 1}: non-finite gradient "
                                     "at the current point of the trust-region step")

        if exact:
            solve = models.solve
        else:
            solve = partial(stacked_steihaug_cg, flat_grad, partial(derivatives.hvp, current),
                            max_iter=config.cg_max_iter, damping=config.damping, rtol=config.cg_rtol)
        # every row's trial loss in one evaluation: a non-finite solve's row is rejected by its ratio
        tried = try_rows(loss_values, solve, lambda steps, finite: derivatives.loss(current + steps).detach(),
                         radii, local_cap, config)
        if exact:
            carried, carried_radii = models.multipliers, models.multiplier_radii
        cg, accept, radii, pred = tried.result, tried.accepted, tried.radii, tried.result.predicted_reduction
        current = torch.where(accept.unsqueeze(1), current + cg.step, current)
        result.local_steps += num
        result.local_accepted += int(accept.sum())
        result.cg_iterations += int(cg.iterations.sum())
        result.predicted_sum += float(torch.where(accept, pred, torch.zeros_like(pred)).sum())
        result.hit_boundary |= bool((accept & cg.hits_boundary).any())
        for reason in cg.reasons:
            result.reasons[reason] = result.reasons.get(reason, 0) + 1
    corrections = current - theta
    for correction in corrections:  # in the order, and so with the rounding, of the sequential sum
        result.correction_sum += correction
    norms = torch.linalg.vector_norm(corrections, dim=1).tolist()
    result.correction_norms = dict(zip(replicas, norms))
    result.multipliers = dict(zip(replicas, carried))
    return result
