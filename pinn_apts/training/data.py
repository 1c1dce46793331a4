"""The LightningDataModule: one batch of collocation points per outer iteration."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from typing import Any, Literal

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info
from torch.utils.data import DataLoader, IterableDataset

from .checkpoints import refuse_other_settings
from ..pde.loss import point_residuals
from ..pde.problems import PDEProblem, check_int, resolve_problem
from ..pde.sampling import CollocationBatch, CollocationSampler, Curriculum, ResidualSampling, _check_sizes

__all__ = ["PINNDataModule"]


class _IterationStream(IterableDataset):
    """Yields the batch of each outer iteration ``k`` for ``start <= k < stop``."""

    def __init__(self, sampler: CollocationSampler, start: int, stop: int) -> None:
        self.sampler, self.start, self.stop = sampler, start, stop

    def __iter__(self) -> Iterator[CollocationBatch]:
        for k in range(self.start, self.stop):
            yield self.sampler.batch(k)


class PINNDataModule(L.LightningDataModule):
    """Collocation data for PINN training: one batch per outer iteration.

    Parameters
    ----------
    problem:
        A :class:`~pinn_apts.pde.problems.PDEProblem` or a registered name
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
        Seed of the interior draws and the partitions (an integer >= 0).
    total_iterations:
        The run length the curriculum is planned for, in outer iterations (at least
        ``trainer.max_steps``); ``None`` takes ``trainer.max_steps``.
    interior_sampling:
        ``"uniform"`` (the paper's): the interior set of each block of ``r`` iterations is drawn
        uniformly.  ``"residual"``: it is chosen from ``residual_pool`` uniform candidates with
        probability ``|eps|^residual_power / mean + residual_floor``, ``eps`` the PDE residual of the
        network at the block's first iteration (RAD, :class:`~pinn_apts.pde.sampling.ResidualSampling`);
        as many points, partitioned among the replicas as ever.
    residual_pool, residual_power, residual_floor:
        The candidates (at least the largest ``N_coll``) and the density of ``"residual"`` sampling.

    Checkpoints carry the data settings and the planned run length (and, for residual sampling, the
    residuals of the current block, so that a resumed run chooses the points it would have).  A run resumed from a
    checkpoint keeps the schedule it was started with, so that its points are exactly those
    of the run it continues; resumed with a larger ``trainer.max_steps`` (an extended run) the
    iterations past the planned length use ``late_sizes``.  A checkpoint made with other data
    settings (problem, seed, point counts, resampling) is refused.
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
        interior_sampling: Literal["uniform", "residual"] = "uniform",
        residual_pool: int = 10000,
        residual_power: float = 1.0,
        residual_floor: float = 1.0,
    ) -> None:
        super().__init__()
        self.problem = resolve_problem(problem)
        self.curriculum = Curriculum(
            _check_sizes("early_sizes", early_sizes, self.problem.boundary_edges),
            _check_sizes("late_sizes", late_sizes, self.problem.boundary_edges),
            float(curriculum_fraction),
        )
        self.resample_every = check_int("resample_every (r)", resample_every)
        self.seed = check_int("seed", seed, 0)
        self.total_iterations = None if total_iterations is None else check_int("total_iterations", total_iterations)
        if interior_sampling not in ("uniform", "residual"):
            raise ValueError(f"interior_sampling must be 'uniform' or 'residual', got {interior_sampling!r}")
        self.residual_sampling = None
        if interior_sampling == "residual":
            self.residual_sampling = ResidualSampling(residual_pool, residual_power, residual_floor)
            most = max(self.curriculum.early[0], self.curriculum.late[0])
            if residual_pool < most:
                raise ValueError(f"residual_pool must be at least the largest N_coll ({most}), got {residual_pool}")
        #: residual sampling: the block whose candidates' residuals are kept, and those residuals
        self._residuals: tuple[int, torch.Tensor] | None = None
        #: residual sampling: the interior set chosen for (block, N_coll), the same at every iteration of the block
        self._chosen: tuple[tuple[int, int], torch.Tensor] | None = None
        self.sampler: CollocationSampler | None = None

    def _max_steps(self) -> int | None:
        max_steps = self.trainer.max_steps if self.trainer is not None else None
        return max_steps if max_steps is not None and max_steps >= 1 else None

    def setup(self, stage: str) -> None:
        total, max_steps = self.total_iterations, self._max_steps()
        if total is None:
            if max_steps is None:
                raise ValueError(
                    "the run length is unknown: set trainer.max_steps (outer iterations) "
                    "or data.total_iterations"
                )
            total = max_steps
        elif max_steps is not None and total < max_steps:
            raise ValueError(
                f"data.total_iterations ({total}) must be at least trainer.max_steps ({max_steps}): it is "
                "the run length the curriculum is planned for (leave it unset to plan for max_steps; a run "
                "resumed from a checkpoint keeps the checkpoint's plan by itself)"
            )
        self.sampler = CollocationSampler(
            self.problem, total, self.resample_every, self.curriculum, self.seed
        )

    def train_dataloader(self) -> DataLoader:
        if self.sampler is None:
            raise RuntimeError("PINNDataModule.setup() must run before train_dataloader()")
        # A resumed run starts at the restored outer iteration, so it sees the same points.
        start = self.trainer.global_step if self.trainer is not None else 0
        stop = max(self.sampler.total_iterations, self._max_steps() or 0)
        return DataLoader(_IterationStream(self.sampler, start, stop), batch_size=None)

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Residual sampling: the batch's interior set chosen by the residuals of the network (the trainer's
        module's ``net``) at its block's candidates, evaluated when the block's first iteration is about
        to run (or a run resumes without them), with the parameters that iteration starts from."""
        if self.residual_sampling is None or not isinstance(batch, CollocationBatch):
            return batch
        block = self.sampler.block(batch.iteration)
        if self._residuals is None or self._residuals[0] != block:
            module = self.trainer.lightning_module
            net = getattr(module, "net", module)
            dtype = next(net.parameters()).dtype
            candidates = self.sampler.candidates(batch.iteration, self.residual_sampling.pool)
            residuals = point_residuals(net, self.problem, candidates.to(device=batch.interior.device, dtype=dtype))
            self._residuals = (block, residuals.to("cpu", torch.float64))
        key = (block, len(batch.interior))
        if self._chosen is None or self._chosen[0] != key:
            chosen = self.sampler.residual_batch(batch, self.residual_sampling, self._residuals[1])
            self._chosen = (key, chosen.interior)
        return replace(batch, interior=self._chosen[1])

    # ------------------------------------------------------------ checkpoints
    def _settings(self) -> dict[str, Any]:
        settings = {
            "problem": self.problem.spec(),
            "seed": self.seed,
            "resample_every": self.resample_every,
            "curriculum_fraction": self.curriculum.fraction,
            "early_sizes": list(self.curriculum.early),
            "late_sizes": list(self.curriculum.late),
            "interior_sampling": "uniform" if self.residual_sampling is None else "residual",
        }
        if self.residual_sampling is not None:
            sampling = self.residual_sampling
            settings["residual_sampling"] = [sampling.pool, sampling.power, sampling.floor]
        return settings

    def state_dict(self) -> dict[str, Any]:
        """The data settings and the planned run length (plain types: ``weights_only``-safe)."""
        planned = self.sampler.total_iterations if self.sampler is not None else self.total_iterations
        state = {**self._settings(), "total_iterations": planned}
        if self._residuals is not None:
            state["residuals"] = {"block": self._residuals[0], "values": self._residuals[1]}
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Take the checkpoint's planned run length; refuse a checkpoint made with other data."""
        state = dict(state_dict)
        planned = state.pop("total_iterations", None)
        residuals = state.pop("residuals", None)
        self._residuals = None if residuals is None else (int(residuals["block"]), residuals["values"])
        self._chosen = None
        state.setdefault("interior_sampling", "uniform")  # checkpoints from before residual sampling
        refuse_other_settings("data settings", "data", state, self._settings())
        if planned is None or self.sampler is None or planned == self.sampler.total_iterations:
            return
        if self.total_iterations is not None:
            raise ValueError(
                f"data.total_iterations ({self.total_iterations}) differs from the checkpoint's planned run "
                f"length ({planned}): a resumed run keeps its plan; leave data.total_iterations unset"
            )
        rank_zero_info(
            f"pinn-apts: the resumed run keeps the curriculum planned for {planned} outer iterations "
            f"(switch at iteration {self.curriculum.switch_iteration(planned)}); iterations past {planned} "
            "use the late point counts"
        )
        self.sampler = CollocationSampler(self.problem, planned, self.resample_every, self.curriculum, self.seed)

