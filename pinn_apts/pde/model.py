"""The PINN surrogate: a fully connected tanh network."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from .jet import MLPJet, feature_major_linear
from .problems import check_int

__all__ = ["MLP"]


class MLP(nn.Module):
    """Multilayer perceptron with tanh activations and Xavier-normal weights.

    Parameters
    ----------
    layer_sizes:
        Widths from input to output, e.g. ``(2, 20, 20, 20, 1)`` (the paper's network).
    seed:
        Seed of the weight initialization; the same seed gives the same network
        whatever the global random state.
    """

    def __init__(self, layer_sizes: Sequence[int] = (2, 20, 20, 20, 1), seed: int = 0) -> None:
        super().__init__()
        sizes = [check_int(f"layer_sizes[{i}]", n) for i, n in enumerate(layer_sizes)]
        if len(sizes) < 2:
            raise ValueError(f"layer_sizes must list at least two widths (input and output), got {layer_sizes!r}")
        generator = torch.Generator().manual_seed(int(seed))
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:]))
        for layer in self.layers:
            nn.init.xavier_normal_(layer.weight, generator=generator)
            nn.init.zeros_(layer.bias)
        self.layer_sizes = tuple(sizes)

    def jet(self, points: Tensor) -> MLPJet:
        """``u`` at ``points`` with forward-mode input derivatives (see :class:`~pinn_apts.pde.jet.MLPJet`)."""
        return MLPJet([l.weight for l in self.layers], [l.bias for l in self.layers], points)

    def forward(self, x: Tensor) -> Tensor:
        """``u`` at the points ``x``, ``(..., 2) -> (..., 1)`` (feature-major inside, as :class:`MLPJet`)."""
        if x.dim() != 2:
            return self(x.reshape(-1, x.shape[-1])).reshape(*x.shape[:-1], -1)
        a = x.transpose(0, 1)
        for layer in self.layers[:-1]:
            a = torch.tanh(feature_major_linear(a, layer.weight, layer.bias))
        last = self.layers[-1]
        return feature_major_linear(a, last.weight, last.bias).transpose(0, 1)
