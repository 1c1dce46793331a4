"""Collocation sampling, the curriculum and the random partition (no Lightning).

Everything is a pure function of ``(seed, outer iteration k)``: the interior set
of iteration ``k`` is drawn from the seed and the resampling block ``k // r``,
and the partition of iteration ``k`` from the seed and ``k``.  A resumed run, a
distributed run and an uninterrupted single-process run therefore see the same
points.  Residual-based sampling (:class:`ResidualSampling`) adds one input, the network's
residuals at a pool of candidates drawn from ``(seed, k // r)``, which the data module
evaluates at the first iteration of each block and keeps in its checkpoints.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace

import numpy as np
import torch
from torch import Tensor

from .problems import PDEProblem, check_int

__all__ = [
    "CollocationBatch",
    "CollocationSampler",
    "Curriculum",
    "ResidualSampling",
    "partition_collocation",
]

# Independent random streams derived from one seed (numpy SeedSequence spawn keys).
INTERIOR_STREAM = 0
PARTITION_STREAM = 1
RESIDUAL_POOL_STREAM = 2
RESIDUAL_CHOICE_STREAM = 3


def _check_sizes(name: str, sizes: tuple[int, int, int], min_bc: int) -> tuple[int, int, int]:
    sizes = tuple(sizes)
    if len(sizes) != 3:
        raise ValueError(f"{name} must be three integers (N_coll, N_IC, N_BC), got {sizes!r}")
    labels, minimums = ("N_coll", "N_IC", "N_BC"), (1, 1, min_bc)
    return tuple(check_int(f"{name} {label}", n, low) for label, n, low in zip(labels, sizes, minimums))  # type: ignore[return-value]


@dataclass(frozen=True)
class Curriculum:
    """Point counts ``(N_coll, N_IC, N_BC)``: ``early`` for the first ``fraction`` of the run, then ``late``.

    The paper's schedule: ``(1000, 800, 50)`` for the first 30% of the outer
    iterations, then ``(1000, 100, 100)``.
    """

    early: tuple[int, int, int] = (1000, 800, 50)
    late: tuple[int, int, int] = (1000, 100, 100)
    fraction: float = 0.3

    def __post_init__(self) -> None:
        if not (math.isfinite(self.fraction) and 0.0 <= self.fraction <= 1.0):
            raise ValueError(f"curriculum_fraction must lie in [0, 1], got {self.fraction}")

    def switch_iteration(self, total_iterations: int) -> int:
        """First outer iteration that uses the ``late`` counts."""
        return math.ceil(self.fraction * total_iterations)

    def sizes(self, iteration: int, total_iterations: int) -> tuple[int, int, int]:
        return self.early if iteration < self.switch_iteration(total_iterations) else self.late


@dataclass(frozen=True)
class ResidualSampling:
    """Residual-based adaptive distribution of the interior set (RAD; C. Wu, M. Zhu, Q. Tan, Y. Kartha
    & L. Lu, "A comprehensive study of non-adaptive and residual-based adaptive sampling for
    physics-informed neural networks", CMAME 403, 2023).

    At each resampling, ``pool`` candidates are drawn uniformly from the domain, and the ``N_coll``
    points of the block are chosen among them without replacement with probability proportional to
    ``|eps|^power / mean(|eps|^power) + floor``, ``eps`` the PDE residual of the current network at
    the candidate: points go where the network is wrong (a shock), with ``floor`` keeping a share
    spread over the whole domain.  ``power = 1, floor = 1`` are the defaults the study found good
    across its problems; ``power = 0`` or a large ``floor`` is uniform sampling again.  Residuals that
    are not finite or all zero, or fewer non-zero probabilities than points (``floor = 0``), give a
    uniform choice.
    """

    pool: int = 10000
    power: float = 1.0
    floor: float = 1.0

    def __post_init__(self) -> None:
        check_int("residual_pool", self.pool)
        for name, value in (("residual_power", self.power), ("residual_floor", self.floor)):
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")

    def probabilities(self, residuals: Tensor) -> np.ndarray | None:
        """The choice probabilities of the candidates with these ``residuals``; ``None``: uniform."""
        density = residuals.detach().to(torch.float64).abs().pow(self.power).cpu().numpy()
        if not np.isfinite(density).all() or density.max() == 0:
            return None
        density = density / density.mean() + self.floor
        return density / density.sum()

    def choose(self, candidates: Tensor, residuals: Tensor, n: int, rng: np.random.Generator) -> Tensor:
        """``n`` of ``candidates`` (``(pool, 2)``) drawn by their ``residuals`` (``(pool,)``)."""
        if n > len(candidates):
            raise ValueError(f"residual_pool ({len(candidates)}) must be at least N_coll ({n})")
        p = self.probabilities(residuals)
        if p is not None and np.count_nonzero(p) < n:
            p = None
        chosen = rng.choice(len(candidates), size=n, replace=False, p=p)
        return candidates[torch.from_numpy(chosen)]


def partition_collocation(num_points: int, num_parts: int, rng: np.random.Generator) -> list[Tensor]:
    """Split ``range(num_points)`` into ``num_parts`` disjoint random index sets.

    Sizes differ by at most one; together the parts cover every index once.
    """
    num_parts = check_int("num_parts (D)", num_parts)
    if num_parts > num_points:
        raise ValueError(
            f"num_parts (D) must not exceed the number of interior points, got D={num_parts} > {num_points}"
        )
    perm = torch.from_numpy(rng.permutation(num_points))
    return list(torch.tensor_split(perm, num_parts))


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
    seed: int = 0

    def partition(self, num_parts: int) -> list[Tensor]:
        """The random partition of this iteration's interior set into ``num_parts`` index sets.

        Drawn from ``(seed, iteration)`` alone: every process, and a resumed run, gets the same.
        """
        rng = np.random.default_rng([self.seed, PARTITION_STREAM, self.iteration])
        return [part.to(self.interior.device) for part in partition_collocation(len(self.interior), num_parts, rng)]

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> CollocationBatch:
        """A copy with every tensor moved to ``device`` / cast to ``dtype``."""
        moved = {
            f.name: getattr(self, f.name).to(device=device, dtype=dtype)
            for f in fields(self)
            if isinstance(getattr(self, f.name), Tensor)
        }
        return replace(self, **moved)


class CollocationSampler:
    """The point sets of every outer iteration, deterministic in ``(seed, k)``.

    Parameters
    ----------
    problem:
        The PDE problem whose domain and targets are sampled.
    total_iterations:
        Length of the run in outer iterations (fixes the curriculum switch).
    resample_every:
        ``r``: the interior set is redrawn at iterations ``k`` with ``k % r == 0``.
    curriculum:
        Point counts over the run.
    seed:
        Seed of all random draws.
    """

    def __init__(
        self,
        problem: PDEProblem,
        total_iterations: int,
        resample_every: int = 10,
        curriculum: Curriculum | None = None,
        seed: int = 0,
    ) -> None:
        self.problem = problem
        self.total_iterations = check_int("total_iterations", total_iterations)
        self.resample_every = check_int("resample_every (r)", resample_every)
        self.curriculum = curriculum or Curriculum()
        _check_sizes("early_sizes", self.curriculum.early, problem.boundary_edges)
        _check_sizes("late_sizes", self.curriculum.late, problem.boundary_edges)
        self.seed = int(seed)
        self._grids: dict[tuple[str, int], tuple[Tensor, Tensor]] = {}

    def _rng(self, stream: int, index: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, stream, index])

    def _grid(self, kind: str, n: int) -> tuple[Tensor, Tensor]:
        key = (kind, n)
        if key not in self._grids:
            if kind == "initial":
                points = self.problem.initial_points(n)
                values = self.problem.initial_values(points)
            else:
                points = self.problem.boundary_points(n)
                values = self.problem.boundary_values(points)
            self._grids[key] = (points, values.detach().reshape(-1, 1).to(torch.float64))
        return self._grids[key]

    def sizes(self, iteration: int) -> tuple[int, int, int]:
        return self.curriculum.sizes(iteration, self.total_iterations)

    def batch(self, iteration: int) -> CollocationBatch:
        """The sets ``(C_k, I_k, B_k)`` of outer iteration ``k = iteration`` (float64)."""
        if iteration < 0:
            raise ValueError(f"iteration must be >= 0, got {iteration}")
        n_coll, n_ic, n_bc = self.sizes(iteration)
        interior = self.problem.sample_interior(
            n_coll, self._rng(INTERIOR_STREAM, iteration // self.resample_every)
        )
        initial, initial_values = self._grid("initial", n_ic)
        boundary, boundary_values = self._grid("boundary", n_bc)
        return CollocationBatch(iteration, interior, initial, initial_values, boundary, boundary_values, self.seed)

    def block(self, iteration: int) -> int:
        """The resampling block of outer iteration ``k``: ``k // r``."""
        return iteration // self.resample_every

    def candidates(self, iteration: int, pool: int) -> Tensor:
        """The ``pool`` uniform candidates of iteration ``k``'s block for residual-based sampling (float64)."""
        return self.problem.sample_interior(pool, self._rng(RESIDUAL_POOL_STREAM, self.block(iteration)))

    def residual_batch(self, batch: CollocationBatch, sampling: ResidualSampling, residuals: Tensor) -> CollocationBatch:
        """``batch`` with its interior set chosen from its block's candidates by ``residuals`` (theirs, at the
        block's first iteration): as many points, drawn from ``(seed, block, N_coll)``."""
        n = len(batch.interior)
        rng = np.random.default_rng([self.seed, RESIDUAL_CHOICE_STREAM, self.block(batch.iteration), n])
        chosen = sampling.choose(self.candidates(batch.iteration, sampling.pool), residuals, n, rng)
        return replace(batch, interior=chosen.to(device=batch.interior.device, dtype=batch.interior.dtype))

    def partition(self, iteration: int, num_parts: int) -> list[Tensor]:
        """The random partition of ``C_k`` into ``num_parts`` index sets at iteration ``k``."""
        return self.batch(iteration).partition(num_parts)
