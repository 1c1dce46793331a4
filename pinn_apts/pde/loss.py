"""The composite PINN loss ``L = L_Omega + L_IC + L_BC`` (paper, equations 2 and 3), from one residual vector.

Every loss of the package is the sum of squares of one weighted residual vector
(:func:`weighted_residuals`): ``sqrt(w) * r`` at each interior point, then ``sqrt(w) * (u - g)`` at each
initial and boundary point, each term weighted by ``1 / size`` of its set (a mean: the full or a
replica's local loss) or ``1 / size of the whole set`` (a process's share).  The graph path
(:func:`pinn_loss`, :func:`pinn_loss_share`, :func:`stacked_pinn_loss`), the flat functions of
:mod:`~pinn_apts.pde.compiled` (losses, gradients, products, Jacobians) take it from here.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import Tensor

from .jet import AutogradJet, Jet, MLPJet
from .problems import PDEProblem
from .sampling import CollocationBatch

__all__ = [
    "LossData", "LossTerms", "check_loss_finite", "loss_data", "module_terms", "padded_parts", "pinn_loss", "pinn_loss_share",
    "point_residuals", "residual_of", "share_of_data", "stacked_pinn_loss", "terms_of", "weighted_parts", "weighted_residuals",
]


class LossTerms(NamedTuple):
    """The loss and its three mean-squared terms."""

    total: Tensor
    interior: Tensor
    initial: Tensor
    boundary: Tensor


class LossData(NamedTuple):
    """The point sets of one objective and the weight of each term's sum of squares.

    The loss is ``interior_weight * sum(r^2) + initial_weight * sum((u - g)^2) + boundary_weight * ...``:
    ``1 / size`` gives a mean (a local or the full loss), ``1 / size of the whole set`` a process's share.
    Stacked replicas (:func:`stacked_pinn_loss`) have ``interior`` ``(R, size, 2)`` and
    ``interior_weight`` ``(R, size)`` (0 on padding points).
    """

    interior: Tensor
    interior_weight: Tensor
    initial: Tensor
    initial_values: Tensor
    initial_weight: Tensor
    boundary: Tensor
    boundary_values: Tensor
    boundary_weight: Tensor


def _inverse(size: int, like: Tensor) -> Tensor:
    """``1 / size`` as a 0-d tensor of ``like``'s dtype and device (a term's weight)."""
    return torch.tensor(1.0 / size, dtype=like.dtype, device=like.device)


def loss_data(batch: CollocationBatch, interior: Tensor, interior_weight: Tensor | float | None = None,
              edges: tuple[Tensor, Tensor, Tensor, Tensor] | None = None) -> LossData:
    """The :class:`LossData` of ``interior`` points (weight ``1 / len(interior)`` unless given) and the
    batch's initial and boundary sets (or ``edges``: a process's share of them), weighted by
    ``1 / size`` of the batch's whole sets."""
    initial, initial_values, boundary, boundary_values = edges or (
        batch.initial, batch.initial_values, batch.boundary, batch.boundary_values)
    if interior_weight is None:
        weight = _inverse(len(interior), interior)
    elif isinstance(interior_weight, Tensor):
        weight = interior_weight
    else:
        weight = torch.tensor(float(interior_weight), dtype=interior.dtype, device=interior.device)
    return LossData(interior, weight, initial, initial_values, _inverse(len(batch.initial), interior),
                    boundary, boundary_values, _inverse(len(batch.boundary), interior))


def weighted_parts(residual: Tensor, edge: Tensor, data: LossData) -> tuple[Tensor, Tensor, Tensor]:
    """The three parts of the weighted residual vector: ``sqrt(w) * r`` at the interior points (``residual``
    ``(..., N)``, the PDE residuals), ``sqrt(w) * (u - g)`` at the initial and at the boundary points
    (``edge`` ``(..., n_I + n_B)``, the network's values there)."""
    n_ic = data.initial.shape[0]
    return (data.interior_weight.sqrt() * residual,
            data.initial_weight.sqrt() * (edge[..., :n_ic] - data.initial_values.squeeze(-1)),
            data.boundary_weight.sqrt() * (edge[..., n_ic:] - data.boundary_values.squeeze(-1)))


def weighted_residuals(problem: PDEProblem, jet: Jet, edge: Tensor, data: LossData) -> Tensor:
    """The weighted residual vector ``(..., M)`` whose sum of squares is the loss: the residual of
    ``problem`` on ``jet`` (the network at the interior points) and the misfits of ``edge`` (its values
    at the initial and boundary points, ``(..., n_I + n_B)``), each times ``sqrt`` of its weight."""
    return torch.cat(weighted_parts(residual_of(problem, jet).squeeze(-1), edge, data), dim=-1)


def terms_of(parts: tuple[Tensor, Tensor, Tensor]) -> LossTerms:
    """The loss and its three terms: the sums of squares of the weighted residual vector's parts
    (:func:`weighted_parts`)."""
    interior, initial, boundary = (part.square().sum(-1) for part in parts)
    return LossTerms(interior + initial + boundary, interior, initial, boundary)


def module_terms(u: Callable[[Tensor], Tensor], problem: PDEProblem, data: LossData) -> LossTerms:
    """The loss terms of a network module on ``data``: an MLP propagates the input derivatives forward
    (cheaper), any other network by autograd; the initial and boundary points share one forward pass."""
    edge = u(torch.cat([data.initial, data.boundary])).squeeze(-1)
    return terms_of(weighted_parts(residual_of(problem, _jet(u, data.interior)).squeeze(-1), edge, data))


def _jet(u: Callable[[Tensor], Tensor], points: Tensor) -> Jet:
    """An MLP propagates the input derivatives forward (cheaper), any other network by autograd."""
    return u.jet(points) if hasattr(u, "jet") else AutogradJet(u, points)


def point_residuals(u: Callable[[Tensor], Tensor], problem: PDEProblem, points: Tensor) -> Tensor:
    """The PDE residual of the network ``u`` at each of ``points``, ``(N,)``, without a graph (the
    density of residual-based sampling, :class:`~pinn_apts.pde.sampling.ResidualSampling`)."""
    with torch.enable_grad():  # autograd jets differentiate with respect to the points
        return residual_of(problem, _jet(u, points)).squeeze(-1).detach()


def pinn_loss(
    u: Callable[[Tensor], Tensor],
    problem: PDEProblem,
    batch: CollocationBatch,
    interior: Tensor | None = None,
) -> LossTerms:
    """Evaluate ``L(theta)`` for the network ``u`` on ``batch``.

    ``interior`` replaces ``batch.interior`` (a subset ``C_k^d`` for a replica's
    local objective, equation 3); the initial and boundary sets are always the
    batch's shared ones.
    """
    data = loss_data(batch, batch.interior if interior is None else interior)
    return module_terms(u, problem, data)


def pinn_loss_share(
    u: Callable[[Tensor], Tensor],
    problem: PDEProblem,
    batch: CollocationBatch,
    interior: Tensor,
    rank: int,
    world_size: int,
) -> LossTerms:
    """One process's share of ``L`` in a data-parallel evaluation.

    The squared residuals at this process's ``interior`` points divided by the size of the
    whole interior set, plus the squared misfits at every ``world_size``-th initial and
    boundary point from ``rank`` on, divided by the sizes of those sets.  Summed over the
    processes (whose interior points partition ``batch.interior``) the shares give ``L``, and
    each process carries about ``1/world_size`` of every term.
    """
    data = loss_data(batch, interior.detach(), 1.0 / len(batch.interior), share_of_data(batch, rank, world_size))
    return module_terms(u, problem, data)


def share_of_data(batch: CollocationBatch, rank: int, world_size: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Process ``rank``'s initial points, their targets, boundary points and theirs: every
    ``world_size``-th from ``rank`` on (see :func:`pinn_loss_share`)."""
    return (batch.initial[rank::world_size], batch.initial_values[rank::world_size],
            batch.boundary[rank::world_size], batch.boundary_values[rank::world_size])


def residual_of(problem: PDEProblem, jet: Jet) -> Tensor:
    """``problem.residual(jet)``, refused unless it has the shape of ``jet.u``.

    A residual that indexes the points itself (``points[:, 0:1]``) broadcasts to another
    shape when the replicas are batched (points ``(D, N, 2)``) and would train on nonsense.
    """
    residual = problem.residual(jet)
    if not isinstance(residual, Tensor) or residual.shape != jet.u.shape:
        shape = tuple(residual.shape) if isinstance(residual, Tensor) else type(residual).__name__
        raise ValueError(
            f"{type(problem).__name__}.residual must return a tensor shaped like jet.u, {tuple(jet.u.shape)}, "
            f"got {shape}: build it from jet.u, jet.d(i), jet.d2(i, j) and, for a source term, "
            "jet.coordinate(i) (the points are (D, N, 2) when replicas are batched)"
        )
    return residual


def check_loss_finite(terms: LossTerms, iteration: int) -> None:
    """Raise ``FloatingPointError`` naming the iteration and the first non-finite loss term."""
    for name in ("interior", "initial", "boundary"):
        value = float(getattr(terms, name).detach())
        if not math.isfinite(value):
            raise FloatingPointError(
                f"non-finite loss at outer iteration {iteration}: the {name} term is {value}"
            )


def padded_parts(parts: list[Tensor], like: Tensor) -> tuple[Tensor, Tensor]:
    """The index sets ``parts`` as one ``(D, size)`` index padded with each part's first point, and
    the ``(D, size)`` weights ``1 / len(part)`` on a part's own points and 0 on the padding (dtype
    and device of ``like``)."""
    size = max(len(p) for p in parts)
    index = torch.stack([torch.cat([p, p[:1].expand(size - len(p))]) for p in parts])
    weight = torch.stack([
        torch.cat([torch.full((len(p),), 1.0 / len(p)), torch.zeros(size - len(p))]) for p in parts
    ]).to(like)
    return index, weight


def stacked_pinn_loss(
    weights: list[Tensor],
    biases: list[Tensor],
    problem: PDEProblem,
    batch: CollocationBatch,
    parts: list[Tensor],
) -> Tensor:
    """The ``D`` local objectives ``L_k^d`` (equation 3) of ``D`` tanh MLPs stacked along dim 0.

    ``weights[l]`` is ``(D, out, in)`` and ``biases[l]`` ``(D, out)``; replica ``d`` sees the
    interior points ``batch.interior[parts[d]]`` and the shared initial and boundary sets.
    Parts that differ in size by one are padded and masked.  Returns a ``(D,)`` tensor.
    """
    index, weight = padded_parts(parts, batch.interior)
    data = loss_data(batch, batch.interior[index], weight)
    edge = MLPJet(weights, biases, torch.cat([batch.initial, batch.boundary])).u.squeeze(-1)
    residual = residual_of(problem, MLPJet(weights, biases, data.interior)).squeeze(-1)
    return terms_of(weighted_parts(residual, edge, data)).total
