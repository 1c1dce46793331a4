"""A network's value and input derivatives at a set of points: what a PDE residual is made of.

A :class:`Jet` gives ``u``, first derivatives ``d(i) = du/dc_i`` and second derivatives
``d2(i, j) = d^2u/dc_i dc_j`` with respect to the input columns ``c``, computed on demand and
cached.  Two implementations:

- :class:`AutogradJet` works for any differentiable function, by reverse mode through the
  inputs (``torch.autograd.grad`` with ``create_graph=True``);
- :class:`MLPJet` is the forward-mode (Taylor) propagation of derivatives through a tanh MLP:
  the tangents ride along the layers as plain tensor ops, so the residual's graph is a
  few matmuls per derivative instead of a double backward through the network.  The
  gradient and Hessian-vector products of the PINN loss then cost about a third less
  (``benchmarks/apts_speed.py``).  Its weights may carry a leading batch dimension.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

__all__ = ["AutogradJet", "Jet", "MLPJet", "feature_major_linear"]


class Jet(ABC):
    """``u`` and its input derivatives at ``points``; every derivative is an ``(..., N, 1)`` tensor.

    ``points`` is ``(N, 2)``, or ``(D, N, 2)`` when ``D`` replicas are evaluated at once (batched
    replicas): a residual that needs the coordinates (a source term) takes them from
    :meth:`coordinate`, which has the shape of ``u`` in both cases.
    """

    points: Tensor
    u: Tensor

    def coordinate(self, i: int) -> Tensor:
        """Input column ``i`` at the points (0: ``t`` or ``y``, 1: ``x``), shaped like ``u``: ``(..., N, 1)``."""
        return self.points[..., i : i + 1].detach()

    @abstractmethod
    def d(self, i: int) -> Tensor:
        """First derivative with respect to input column ``i``."""

    @abstractmethod
    def d2(self, i: int, j: int | None = None) -> Tensor:
        """Second derivative with respect to columns ``i`` and ``j`` (default ``j = i``)."""


class AutogradJet(Jet):
    """Derivatives of any function ``fn(points) -> (N, 1)`` by reverse-mode autograd."""

    def __init__(self, fn: Callable[[Tensor], Tensor], points: Tensor) -> None:
        self.points = points.detach().requires_grad_(True)
        self.u = fn(self.points)
        self._first: Tensor | None = None
        self._second: dict[int, Tensor] = {}

    def _gradient(self, outputs: Tensor) -> Tensor:
        (grad,) = torch.autograd.grad(outputs, self.points, torch.ones_like(outputs), create_graph=True)
        return grad

    def d(self, i: int) -> Tensor:
        if self._first is None:
            self._first = self._gradient(self.u)
        return self._first[..., i : i + 1]

    def d2(self, i: int, j: int | None = None) -> Tensor:
        j = i if j is None else j
        if i not in self._second:
            self._second[i] = self._gradient(self.d(i))
        return self._second[i][..., j : j + 1]


class MLPJet(Jet):
    """Forward-mode derivatives of a tanh MLP ``(W_1, b_1), ..., (W_L, b_L)``.

    With ``z_l = W_l a_{l-1} + b_l`` and ``a_l = tanh(z_l)``, the tangent along column ``i`` is
    ``z'_1 = W_1[:, i]``, ``a'_l = s'(z_l) z'_l``, ``z'_{l+1} = W_{l+1} a'_l``, and the second
    order ``a''_l = s''(z_l) z'^i_l z'^j_l + s'(z_l) z''_l`` with ``s' = 1 - a^2`` and
    ``s'' = -2 a s'``.  ``u``'s derivatives come out of the last (linear) layer.

    The layers run feature-major: a layer's values at the ``N`` points are a ``(width, N)``
    tensor and a layer is ``W @ A + b``.  The products with the narrow weight matrices are then
    about twice as fast on the CPU as ``A @ W^T`` (and so are their derivatives in the gradient
    and Hessian-vector products); ``u`` and its derivatives are handed out as ``(N, 1)`` views.
    """

    def __init__(self, weights: Sequence[Tensor], biases: Sequence[Tensor], points: Tensor) -> None:
        self.points = points
        self.weights = list(weights)
        self._activations: list[tuple[Tensor, Tensor]] = []  # (a_l, s'(z_l)) per hidden layer, (..., width, N)
        a = points.transpose(-1, -2)
        for w, b in zip(self.weights[:-1], biases[:-1]):
            a = torch.tanh(feature_major_linear(a, w, b))
            self._activations.append((a, 1 - a * a))
        self.u = feature_major_linear(a, self.weights[-1], biases[-1]).transpose(-1, -2)
        self._tangents: dict[int, list[Tensor]] = {}  # column -> z'_l per hidden layer
        self._first: dict[int, Tensor] = {}
        self._second: dict[tuple[int, int], Tensor] = {}

    def _tangent(self, i: int) -> list[Tensor]:
        if i not in self._tangents:
            z_dot = self.weights[0][..., :, i : i + 1]  # (..., width, 1): the same at every point
            tangents, a_dot = [], None
            for layer, (_, slope) in enumerate(self._activations):
                if layer > 0:
                    z_dot = self.weights[layer] @ a_dot
                tangents.append(z_dot)
                a_dot = slope * z_dot
            self._first[i] = (self.weights[-1] @ a_dot).transpose(-1, -2)
            self._tangents[i] = tangents
        return self._tangents[i]

    def d(self, i: int) -> Tensor:
        self._tangent(i)
        return self._first[i]

    def d2(self, i: int, j: int | None = None) -> Tensor:
        j = i if j is None else j
        key = (min(i, j), max(i, j))
        if key not in self._second:
            t_i, t_j = self._tangent(i), self._tangent(j)
            a_ddot = None
            for layer, (a, slope) in enumerate(self._activations):
                curvature = -2 * a * slope * t_i[layer] * t_j[layer]
                if layer == 0:
                    a_ddot = curvature
                else:
                    a_ddot = curvature + slope * (self.weights[layer] @ a_ddot)
            self._second[key] = (self.weights[-1] @ a_ddot).transpose(-1, -2)
        return self._second[key]


def feature_major_linear(a: Tensor, w: Tensor, b: Tensor) -> Tensor:
    """``W a + b`` for feature-major values ``a`` ``(..., in, N)``: ``(..., out, N)``.

    ``w`` is ``(out, in)`` or, for stacked replicas, ``(D, out, in)`` (then ``b`` is ``(D, out)``, and
    ``a`` is ``(D, in, N)`` or, for points all replicas share, ``(in, N)``).
    """
    if w.dim() == a.dim() == 2:
        return torch.addmm(b.unsqueeze(-1), w, a)
    if w.dim() == a.dim() == 3:
        return torch.baddbmm(b.unsqueeze(-1), w, a)
    return w @ a + b.unsqueeze(-1)  # shared points, stacked weights
