"""Solution-error metrics and the error figure."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torchmetrics import Metric

__all__ = ["RelativeL2Error", "error_figure"]


class RelativeL2Error(Metric):
    r"""Relative L2 error :math:`\|\hat u - u\|_2 / \|u\|_2` over all updates.

    torchmetrics' ``NormalizedRootMeanSquaredError(normalization="l2")`` divides
    the RMSE, not the error norm, by :math:`\|u\|_2`, which is a different number.
    """

    is_differentiable = False
    higher_is_better = False
    full_state_update = False

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.add_state("sum_squared_error", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("sum_squared_target", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, preds: Tensor, target: Tensor) -> None:
        if preds.shape != target.shape:
            raise ValueError(f"preds and target must have the same shape, got {tuple(preds.shape)} and {tuple(target.shape)}")
        self.sum_squared_error += (preds - target).double().square().sum()
        self.sum_squared_target += target.double().square().sum()

    def compute(self) -> Tensor:
        return (self.sum_squared_error / self.sum_squared_target).sqrt()


def error_figure(grid: Tensor, prediction: Tensor, exact: Tensor, shape: tuple[int, int], names: tuple[str, str], title: str = ""):
    """Three panels over the evaluation grid: prediction, exact solution, absolute error."""
    from matplotlib.figure import Figure  # no pyplot: no backend or global figure state

    n0, n1 = shape
    c0 = grid[:, 0].reshape(n0, n1).cpu().numpy()
    c1 = grid[:, 1].reshape(n0, n1).cpu().numpy()
    panels = {
        "prediction": prediction.reshape(n0, n1).detach().cpu().numpy(),
        "exact": exact.reshape(n0, n1).detach().cpu().numpy(),
        "|error|": (prediction - exact).abs().reshape(n0, n1).detach().cpu().numpy(),
    }
    fig = Figure(figsize=(13, 3.6), layout="constrained")
    axes = fig.subplots(1, 3)
    for ax, (label, values) in zip(axes, panels.items()):
        mesh = ax.pcolormesh(c0, c1, values, shading="auto", cmap="viridis" if label != "|error|" else "magma")
        fig.colorbar(mesh, ax=ax)
        ax.set_title(label)
        ax.set_xlabel(names[0])
        ax.set_ylabel(names[1])
    if title:
        fig.suptitle(title)
    return fig
