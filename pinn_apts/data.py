"""The LightningDataModule: one batch of collocation points per outer iteration."""

from __future__ import annotations

from collections.abc import Iterator

import lightning as L
from torch.utils.data import DataLoader, IterableDataset

from .problems import PDEProblem, check_int, resolve_problem
from .sampling import CollocationBatch, CollocationSampler, Curriculum, _check_sizes

__all__ = ["PINNDataModule"]


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
