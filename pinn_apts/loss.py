"""The composite PINN loss ``L = L_Omega + L_IC + L_BC`` (paper, equations 2 and 3)."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import Tensor

from .jet import AutogradJet
from .problems import PDEProblem
from .sampling import CollocationBatch

__all__ = ["LossTerms", "check_loss_finite", "pinn_loss"]


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
    residual = problem.residual(jet)
    loss_interior = residual.square().mean()
    # I and B share one forward pass; the residual's input derivatives stay off their rows.
    n_ic = len(batch.initial)
    out = u(torch.cat([batch.initial, batch.boundary]))
    loss_initial = (out[:n_ic] - batch.initial_values).square().mean()
    loss_boundary = (out[n_ic:] - batch.boundary_values).square().mean()
    return LossTerms(loss_interior + loss_initial + loss_boundary, loss_interior, loss_initial, loss_boundary)


def check_loss_finite(terms: LossTerms, iteration: int) -> None:
    """Raise ``FloatingPointError`` naming the iteration and the first non-finite loss term."""
    for name in ("interior", "initial", "boundary"):
        value = float(getattr(terms, name).detach())
        if not math.isfinite(value):
            raise FloatingPointError(
                f"non-finite loss at outer iteration {iteration}: the {name} term is {value}"
            )
