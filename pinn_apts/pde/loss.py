"""The composite PINN loss ``L = L_Omega + L_IC + L_BC`` (paper, equations 2 and 3)."""

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
    "LossTerms", "check_loss_finite", "padded_parts", "pinn_loss", "pinn_loss_share", "residual_of", "share_of_data",
    "stacked_pinn_loss",
]


class LossTerms(NamedTuple):
    """The loss and its three mean-squared terms."""

    total: Tensor
    interior: Tensor
    initial: Tensor
    boundary: Tensor


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
    points = batch.interior if interior is None else interior
    # An MLP propagates the input derivatives forward (cheaper); any other network by autograd.
    jet = u.jet(points) if hasattr(u, "jet") else AutogradJet(u, points)
    loss_interior = residual_of(problem, jet).square().mean()
    # I and B share one forward pass; the residual's input derivatives stay off their rows.
    n_ic = len(batch.initial)
    out = u(torch.cat([batch.initial, batch.boundary]))
    loss_initial = (out[:n_ic] - batch.initial_values).square().mean()
    loss_boundary = (out[n_ic:] - batch.boundary_values).square().mean()
    return LossTerms(loss_interior + loss_initial + loss_boundary, loss_interior, loss_initial, loss_boundary)


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
    points = interior.detach()
    residual = residual_of(problem, u.jet(points) if hasattr(u, "jet") else AutogradJet(u, points))
    interior_share = residual.square().sum() / len(batch.interior)
    initial, initial_values, boundary, boundary_values = share_of_data(batch, rank, world_size)
    out = u(torch.cat([initial, boundary]))
    initial_share = (out[: len(initial)] - initial_values).square().sum() / len(batch.initial)
    boundary_share = (out[len(initial) :] - boundary_values).square().sum() / len(batch.boundary)
    return LossTerms(interior_share + initial_share + boundary_share, interior_share, initial_share, boundary_share)


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
    jet = MLPJet(weights, biases, batch.interior[index])
    loss_interior = (weight * residual_of(problem, jet).squeeze(-1).square()).sum(dim=1)
    n_ic = len(batch.initial)
    out = MLPJet(weights, biases, torch.cat([batch.initial, batch.boundary])).u.squeeze(-1)
    loss_initial = (out[:, :n_ic] - batch.initial_values.squeeze(-1)).square().mean(dim=1)
    loss_boundary = (out[:, n_ic:] - batch.boundary_values.squeeze(-1)).square().mean(dim=1)
    return loss_interior + loss_initial + loss_boundary
