"""The composite PINN loss ``L = L_Omega + L_IC + L_BC`` (paper, equations 2 and 3)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, fields, replace
from typing import NamedTuple

import torch
from torch import Tensor

from .problems import PDEProblem

__all__ = ["CollocationBatch", "LossTerms", "check_loss_finite", "pinn_loss"]


@dataclass
class CollocationBatch:
    """The point sets of one outer iteration.

    ``interior`` is the collocation set ``C_k`` (N_coll, 2); ``initial`` and
    ``boundary`` are the shared sets ``I`` and ``B`` with their targets.
    """

    iteration: int
    interior: Tensor
    initial: Tensor
    initial_values: Tensor
    boundary: Tensor
    boundary_values: Tensor

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> CollocationBatch:
        """A copy with every tensor moved to ``device`` / cast to ``dtype``."""
        moved = {
            f.name: getattr(self, f.name).to(device=device, dtype=dtype)
            for f in fields(self)
            if isinstance(getattr(self, f.name), Tensor)
        }
        return replace(self, **moved)


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
    points = (batch.interior if interior is None else interior).detach().requires_grad_(True)
    residual = problem.residual(points, u(points))
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
