"""Collocation sampling, the curriculum, the random partition, and the DataModule.

Everything is a pure function of ``(seed, outer iteration k)``: the interior set
of iteration ``k`` is drawn from the seed and the resampling block ``k // r``,
and the partition of iteration ``k`` from the seed and ``k``.  A resumed run, a
distributed run and an uninterrupted single-process run therefore see the same
points.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import lightning as L
import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, IterableDataset

from .loss import CollocationBatch
from .problems import PDEProblem, check_int, resolve_problem

__all__ = [
    "CollocationSampler",
    "Curriculum",
    "PINNDataModule",
    "partition_collocation",
]

# Independent random streams derived from one seed (numpy SeedSequence spawn keys).
_INTERIOR_STREAM = 0
_PARTITION_STREAM = 1


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
            n_coll, self._rng(_INTERIOR_STREAM, iteration // self.resample_every)
        )
        initial, initial_values = self._grid("initial", n_ic)
        boundary, boundary_values = self._grid("boundary", n_bc)
        return CollocationBatch(iteration, interior, initial, initial_values, boundary, boundary_values)

    def partition(self, iteration: int, num_parts: int) -> list[Tensor]:
        """The random partition of ``C_k`` into ``num_parts`` index sets at iteration ``k``."""
        n_coll = self.sizes(iteration)[0]
        return partition_collocation(n_coll, num_parts, self._rng(_PARTITION_STREAM, iteration))


class _IterationStream(IterableDataset):
    """Yields the batch of each outer iteration from ``start`` to the end of the run."""

    def __init__(self, sampler: CollocationSampler, start: int) -> None:
        self.sampler, self.start = sampler, start

    def __iter__(self) -> Iterator[CollocationBatch]:
        for k in range(self.start, self.sampler.total_iterations):
            yield self.sampler.batch(k)


class PINNDataModule(L.LightningDataModule):
    """Collocation data for PINN training: one batch per outer iteration.

    Parameters
    ----------
    problem:
        A :class:`~pinn_apts.problems.PDEProblem` or a registered name
        (``"heat"``, ``"burgers"``, ``"laplace"``).
    resample_every:
        ``r``, the interior set is redrawn every ``r`` outer iterations.
    curriculum_fraction:
        Fraction of the run that uses ``early_sizes``; the rest uses ``late_sizes``.
    early_sizes:
        ``(N_coll, N_IC, N_BC)`` early in the run.
    late_sizes:
        ``(N_coll, N_IC, N_BC)`` late in the run.
    seed:
        Seed of the interior draws and the partitions.
    total_iterations:
        Length of the run in outer iterations; ``None`` takes ``trainer.max_steps``.
    """

    def __init__(
        self,
        problem: PDEProblem | str = "burgers",
        resample_every: int = 10,
        curriculum_fraction: float = 0.3,
        early_sizes: tuple[int, int, int] = (1000, 800, 50),
        late_sizes: tuple[int, int, int] = (1000, 100, 100),
        seed: int = 0,
        total_iterations: int | None = None,
    ) -> None:
        super().__init__()
        self.problem = resolve_problem(problem)
        self.curriculum = Curriculum(
            _check_sizes("early_sizes", early_sizes, self.problem.boundary_edges),
            _check_sizes("late_sizes", late_sizes, self.problem.boundary_edges),
            float(curriculum_fraction),
        )
        self.resample_every = check_int("resample_every (r)", resample_every)
        self.seed = int(seed)
        self.total_iterations = None if total_iterations is None else check_int("total_iterations", total_iterations)
        self.sampler: CollocationSampler | None = None

    def setup(self, stage: str) -> None:
        total = self.total_iterations
        if total is None:
            max_steps = self.trainer.max_steps if self.trainer is not None else -1
            if max_steps is None or max_steps < 1:
                raise ValueError(
                    "the run length is unknown: set trainer.max_steps (outer iterations) "
                    "or data.total_iterations"
                )
            total = max_steps
        self.sampler = CollocationSampler(
            self.problem, total, self.resample_every, self.curriculum, self.seed
        )

    def train_dataloader(self) -> DataLoader:
        if self.sampler is None:
            raise RuntimeError("PINNDataModule.setup() must run before train_dataloader()")
        # A resumed run starts at the restored outer iteration, so it sees the same points.
        start = self.trainer.global_step if self.trainer is not None else 0
        return DataLoader(_IterationStream(self.sampler, start), batch_size=None)
