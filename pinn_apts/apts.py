"""Data-parallel APTS (Algorithm 1 of the paper) as a ``torch.optim.Optimizer``; no Lightning.

One :meth:`APTS.step` is one outer iteration ``k``:

**Stage I (additive preconditioning).**  ``D`` replicas start from ``theta_k``; replica ``d``
takes ``J`` local trust-region steps on its own objective ``L_k^d`` (its part of the interior
set plus the shared initial and boundary sets, equation 3), with local radius ``Delta_k / J``
as both initial and maximum radius, so ``|s_k^d| <= Delta_k``.  The corrections are combined
(averaged, as in the paper, or summed) into the trial step ``s_bar``; it is accepted iff
``L(theta_k + s_bar) < L(theta_k)`` on the full objective.

**Stage II (global refinement).**  One trust-region step on the full objective from
``theta_{k+1/2}`` with radius ``Delta_{k+1/2}``, shrinking and retrying until accepted (or the
radius reaches ``Delta_min``, which is recorded).  ``Delta`` stays in ``[Delta_min, Delta_max]``.

Choices where the paper leaves room (documented here, in the README, and parameters where a
researcher would vary them):

- *Stage I radius.*  The paper updates ``Delta`` after Stage I "using trust-region
  heuristics" without saying which.  Three rules are here (:func:`stage1_radius_update`):
  ``"keep"`` (default) leaves ``Delta`` to Stage II's ratio test; ``"decrease"`` shrinks it when
  the Stage I step is rejected; ``"ratio"`` forms ``rho_I = (L(theta_k) - L(theta_k + s_bar)) /
  pred_I`` with ``pred_I`` the combined predicted reductions of the accepted local steps and
  follows :func:`~pinn_apts.trust_region.update_radius`.  On 500-iteration runs (D = 4, seeds
  1 and 2, ``benchmarks/stage1_radius.py``) ``"keep"`` gave the lowest error on Burgers and
  Laplace and tied on Heat: the Stage I test often fails while its direction still helps, and
  the other rules then shrink the radius that Stage II needs (docs/RESULTS.md).  Acceptance
  itself is the paper's plain decrease test.
- *Local steps.*  Each local step has its own ratio test on ``L_k^d``: a rejected local step
  leaves the replica where it is and halves the local radius (which may grow back, at most
  to ``Delta_k / J``).  With ``local_retry`` a rejected local step is retried at once with the
  smaller radius instead of using up one of the ``J`` steps.
- *Combination.*  ``combine="average"`` (paper) or ``"sum"`` (the additive-Schwarz form).
- *Loss reuse.*  The loss of the acceptance test, at ``theta_{k+1/2}``, starts Stage II, so
  the full loss is evaluated once less per iteration; nothing in the results changes.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from typing import Literal

import torch
from torch import Tensor
from torch.nn.utils import parameters_to_vector, vector_to_parameters

from .distributed import Communicator, replicas_of_rank
from .optim import trust_region_step
from .replicas import LocalSolveResult, batched_local_solves, local_solves
from .trust_region import DEFAULT_RADIUS, StopReason, TrustRegionConfig, reduction_ratio, update_radius

__all__ = ["APTS", "APTSConfig", "APTSStepInfo", "resolve_replicas"]


@dataclass(frozen=True)
class APTSConfig:
    """The APTS-specific settings (the trust-region constants are a :class:`TrustRegionConfig`).

    Parameters
    ----------
    num_subdomains:
        ``D``, the number of replicas and of parts of the interior set (paper default 4).
    local_steps:
        ``J``, local trust-region steps per replica (paper: 3).
    combine:
        ``"average"`` (paper) or ``"sum"`` of the replica corrections.
    local_retry:
        Retry a rejected local step with the smaller radius instead of counting it as one of ``J``.
    replicas:
        ``"sequential"``: the replicas one after another on the model's parameters;
        ``"batched"``: all as one batched computation (needs ``batched_local_loss``);
        ``"auto"``: whichever :func:`resolve_replicas` picks for the device, where it was faster.
    stage1_radius:
        How Stage I moves ``Delta`` (see :func:`stage1_radius_update`): ``"keep"`` (default),
        ``"decrease"`` or ``"ratio"``.
    """

    num_subdomains: int = 4
    local_steps: int = 3
    combine: Literal["average", "sum"] = "average"
    local_retry: bool = False
    replicas: Literal["sequential", "batched", "auto"] = "auto"
    stage1_radius: Literal["ratio", "decrease", "keep"] = "keep"

    def __post_init__(self) -> None:
        for name in ("num_subdomains", "local_steps"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if self.combine not in ("average", "sum"):
            raise ValueError(f"combine must be 'average' or 'sum', got {self.combine!r}")
        if self.replicas not in ("sequential", "batched", "auto"):
            raise ValueError(f"replicas must be 'sequential', 'batched' or 'auto', got {self.replicas!r}")
        if self.stage1_radius not in ("ratio", "decrease", "keep"):
            raise ValueError(f"stage1_radius must be 'ratio', 'decrease' or 'keep', got {self.stage1_radius!r}")
        if self.replicas == "batched" and self.local_retry:
            raise ValueError("local_retry must be False with replicas='batched'")


@dataclass
class APTSStepInfo:
    """What one outer iteration did (plain types: checkpoint-safe)."""

    loss: float  #: L(theta_k)
    stage1_loss: float  #: L(theta_k + s_bar), the preconditioner's trial loss
    stage1_accepted: bool
    stage1_rho: float
    stage1_radius: float  #: Delta_{k+1/2}
    correction_norm: float  #: |s_bar|
    max_replica_norm: float  #: max_d |s_k^d| (at most Delta_k)
    local_accepted: int
    local_steps: int
    local_cg_iterations: int
    local_reasons: dict[str, int]
    stage2: dict  #: the global step's :class:`~pinn_apts.optim.StepInfo` as a dict
    radius: float  #: Delta_{k+1}
    new_loss: float  #: L(theta_{k+1})
    stage1_seconds: float
    stage2_seconds: float


class APTS(torch.optim.Optimizer):
    """Data-parallel Additively Preconditioned Trust-Region Strategy (Algorithm 1).

    ``step(closure, local_loss)``: ``closure()`` evaluates the full loss ``L`` at the current
    parameters and ``local_loss(d)`` replica ``d``'s objective ``L_k^d``, both returning the loss
    with its graph and without calling backward.  See the module docstring for the algorithm
    and the choices made where the paper is silent.

    Parameters
    ----------
    params:
        Parameters ``theta`` (one group).
    num_subdomains, local_steps, combine, local_retry, replicas, stage1_radius:
        See :class:`APTSConfig`.
    radius:
        Initial radius ``Delta_0`` (default 1.0, in ``[min_radius, max_radius]``).
    max_radius, min_radius, eta1, eta2, shrink, grow, cg_max_iter, damping, cg_rtol:
        Trust-region constants for the global and local steps (:class:`TrustRegionConfig`, where
        each default is defined: the paper's).
    communicator:
        Across processes (:class:`~pinn_apts.distributed.TorchDistributed`): this rank solves
        only its own ``D/W`` replicas (``local_loss(d)`` is asked for those alone, and
        ``batched_local_loss`` gets them stacked), the corrections are summed with one
        collective, and ``closure()`` returns this rank's *share* of the full loss (see
        :func:`~pinn_apts.loss.pinn_loss_share`), whose
        values, gradients and Hessian-vector products are summed.  Every rank then holds the
        same parameters and radius.  Default: one process.

    The radius, counters and the last iteration's record live in ``state_dict()``.
    """

    def __init__(
        self,
        params: Iterable[Tensor],
        num_subdomains: int = APTSConfig.num_subdomains,
        local_steps: int = APTSConfig.local_steps,
        radius: float = DEFAULT_RADIUS,
        max_radius: float = TrustRegionConfig.max_radius,
        min_radius: float = TrustRegionConfig.min_radius,
        eta1: float = TrustRegionConfig.eta1,
        eta2: float = TrustRegionConfig.eta2,
        shrink: float = TrustRegionConfig.shrink,
        grow: float = TrustRegionConfig.grow,
        cg_max_iter: int = TrustRegionConfig.cg_max_iter,
        damping: float = TrustRegionConfig.damping,
        cg_rtol: float | None = TrustRegionConfig.cg_rtol,
        combine: Literal["average", "sum"] = APTSConfig.combine,
        local_retry: bool = APTSConfig.local_retry,
        replicas: Literal["sequential", "batched", "auto"] = APTSConfig.replicas,
        stage1_radius: Literal["ratio", "decrease", "keep"] = APTSConfig.stage1_radius,
        communicator: Communicator | None = None,
    ) -> None:
        tr = TrustRegionConfig(max_radius, min_radius, eta1, eta2, shrink, grow, cg_max_iter, damping, cg_rtol)
        tr.check_radius("radius", radius)
        apts = APTSConfig(num_subdomains, local_steps, combine, local_retry, replicas, stage1_radius)
        super().__init__(params, {**asdict(tr), **asdict(apts)})
        if len(self.param_groups) != 1:
            raise ValueError("APTS supports a single parameter group")
        self.communicator = communicator or Communicator()
        replicas_of_rank(num_subdomains, self.communicator.rank, self.communicator.world_size)
        self.state["apts"] = {
            "radius": float(radius),
            "iterations": 0,
            "stage1_accepted": 0,
            "stage2_tries": 0,
            "stage2_floor_hits": 0,
            "last": None,
        }

    @property
    def trust_region_config(self) -> TrustRegionConfig:
        return TrustRegionConfig.from_mapping(self.param_groups[0])

    @property
    def apts_config(self) -> APTSConfig:
        group = self.param_groups[0]
        return APTSConfig(**{k: group[k] for k in APTSConfig.__dataclass_fields__})

    @property
    def radius(self) -> float:
        return self.state["apts"]["radius"]

    @property
    def last_step(self) -> APTSStepInfo | None:
        last = self.state["apts"]["last"]
        return None if last is None else APTSStepInfo(**last)

    @property
    def acceptance_rate(self) -> float:
        """Fraction of outer iterations whose Stage I trial step was accepted."""
        record = self.state["apts"]
        return record["stage1_accepted"] / max(record["iterations"], 1)

    def step(  # type: ignore[override]
        self,
        closure: Callable[[], Tensor],
        local_loss: Callable[[int], Tensor] | None = None,
        batched_local_loss: Callable[[list[Tensor]], Tensor] | None = None,
    ) -> Tensor:
        """One outer iteration.

        ``batched_local_loss(stacked)``, needed with ``replicas="batched"``, maps the parameters
        stacked as ``(D, *p.shape)`` to the ``D`` local losses.
        """
        params = [p for p in self.param_groups[0]["params"] if p.requires_grad]
        apts, comm = self.apts_config, self.communicator
        replicas = replicas_of_rank(apts.num_subdomains, comm.rank, comm.world_size)
        mode = resolve_replicas(apts.replicas, params[0].device, len(replicas), apts.local_retry,
                                can_batch=batched_local_loss is not None)
        local = local_loss if mode == "sequential" else batched_local_loss
        if closure is None or local is None:
            raise ValueError(
                f"APTS.step needs closure() (the full loss) and, for replicas={apts.replicas!r}, "
                + ("local_loss(d)" if mode == "sequential" else "batched_local_loss(stacked)")
            )
        start = parameters_to_vector(params).detach().clone()
        try:
            return self._outer_iteration(params, start, closure, local, mode, replicas)
        except FloatingPointError:
            with torch.no_grad():  # never leave a half-done iteration behind
                vector_to_parameters(start, params)
            raise

    def _outer_iteration(self, params: list[Tensor], start: Tensor, closure: Callable[[], Tensor],
                         local: Callable, mode: str, replicas: range) -> Tensor:
        tr, apts = self.trust_region_config, self.apts_config
        record = self.state["apts"]
        radius = record["radius"]
        comm = self.communicator
        total = comm.all_reduce_sum
        reduce = total if comm.world_size > 1 else None

        # ---- Stage I: additive preconditioning ----------------------------------------
        t0 = time.perf_counter()
        with torch.enable_grad():
            loss = closure()
        loss_value = float(total(loss.detach()))
        if not math.isfinite(loss_value):
            raise FloatingPointError(f"non-finite loss {loss_value} at the start of the APTS iteration")
        if mode == "batched":
            solved = batched_local_solves(params, local, radius, tr, replicas, apts.local_steps)
        else:
            solved = local_solves(params, local, replicas, radius, tr, apts.local_steps, apts.local_retry)
        # one collective: this rank's corrections and counters, summed over the ranks
        summed = _unpack(total(_pack(solved, apts.num_subdomains)), start.numel(), apts.num_subdomains)
        scale = 1.0 / apts.num_subdomains if apts.combine == "average" else 1.0
        correction = scale * summed.correction_sum
        with torch.no_grad():
            vector_to_parameters(start + correction, params)
        with torch.enable_grad():
            trial = closure()
        trial_value = float(total(trial.detach()))
        accepted = math.isfinite(trial_value) and trial_value < loss_value
        rho = reduction_ratio(loss_value - trial_value, scale * summed.predicted_sum)
        radius = stage1_radius_update(apts.stage1_radius, radius, accepted, rho, summed.hit_boundary, tr)
        if not accepted:
            with torch.no_grad():
                vector_to_parameters(start, params)
        stage1_radius = radius
        t1 = time.perf_counter()

        # ---- Stage II: global trust-region refinement ---------------------------------
        global_step, _ = trust_region_step(closure, params, radius, tr, retry=True,
                                           loss=trial if accepted else loss, reduce=reduce)
        radius = global_step.radius  # update_radius keeps it in [min_radius, max_radius]
        t2 = time.perf_counter()

        info = APTSStepInfo(
            loss=loss_value,
            stage1_loss=trial_value,
            stage1_accepted=accepted,
            stage1_rho=rho,
            stage1_radius=stage1_radius,
            correction_norm=float(correction.norm()),
            max_replica_norm=max(summed.correction_norms.values()),
            local_accepted=summed.local_accepted,
            local_steps=summed.local_steps,
            local_cg_iterations=summed.cg_iterations,
            local_reasons=summed.reasons,
            stage2=asdict(global_step),
            radius=radius,
            new_loss=global_step.new_loss,
            stage1_seconds=t1 - t0,
            stage2_seconds=t2 - t1,
        )
        record["radius"] = radius
        record["iterations"] += 1
        record["stage1_accepted"] += int(accepted)
        record["stage2_tries"] += global_step.tries
        record["stage2_floor_hits"] += int(not global_step.accepted)
        record["last"] = asdict(info)
        return torch.tensor(loss_value)


def resolve_replicas(mode: str, device: torch.device, owned: int, local_retry: bool = False,
                     can_batch: bool = True) -> str:
    """``"sequential"`` or ``"batched"``: ``mode`` itself, or for ``"auto"`` the faster one measured.

    ``benchmarks/parallel.py`` (tables in ``benchmarks/results/``): on an H200 the batched
    replicas cut Stage I by 1.5x (D = 2, 4) to 7.5x (D = 8) and cost 1.5x more with one replica;
    on a CPU they were no faster (0.97-1.18x, noise of tens of percent). So ``"auto"`` batches
    on a CUDA device when this rank owns two replicas or more, and runs them one after another
    otherwise: always with ``local_retry``, which only the sequential replicas support, and when
    the caller gives no batched loss (``can_batch=False``).
    """
    if mode != "auto":
        return mode
    batch = device.type == "cuda" and owned >= 2 and not local_retry and can_batch
    return "batched" if batch else "sequential"


def stage1_radius_update(
    rule: str, radius: float, accepted: bool, rho: float, hit_boundary: bool, config: TrustRegionConfig
) -> float:
    """``Delta_{k+1/2}`` after Stage I, by one of three rules.

    - ``"keep"`` (default): Stage I leaves the radius to Stage II.
    - ``"ratio"``: :func:`~pinn_apts.trust_region.update_radius` with ``rho_I``, the actual
      decrease of the full loss over the combined predicted decreases of the accepted local
      steps (shrink if ``rho_I < eta1``, grow if ``rho_I >= eta2`` and a local step hit its
      boundary), whatever the plain acceptance test said.
    - ``"decrease"``: follow the acceptance test: shrink on rejection, keep on acceptance.
    """
    if rule == "ratio":
        return update_radius(radius, rho, hit_boundary, config)[1]
    if rule == "decrease" and not accepted:
        radius = radius * config.shrink
    return min(max(radius, config.min_radius), config.max_radius)


_REASONS = list(StopReason)


def _pack(solved: LocalSolveResult, num_replicas: int) -> Tensor:
    """This rank's Stage I results as one vector, so that one all-reduce sums them all."""
    norms = torch.zeros(num_replicas, dtype=solved.correction_sum.dtype)
    for d, norm in solved.correction_norms.items():
        norms[d] = norm
    counters = [solved.predicted_sum, float(solved.hit_boundary), solved.local_accepted, solved.local_steps,
                solved.cg_iterations, *(solved.reasons.get(r.value, 0) for r in _REASONS)]
    tail = torch.tensor(counters, dtype=solved.correction_sum.dtype)
    return torch.cat([solved.correction_sum, tail.to(solved.correction_sum.device), norms.to(solved.correction_sum.device)])


def _unpack(packed: Tensor, size: int, num_replicas: int) -> LocalSolveResult:
    values = packed[size:].tolist()
    counters, norms = values[: 5 + len(_REASONS)], values[5 + len(_REASONS):]
    reasons = {r.value: int(n) for r, n in zip(_REASONS, counters[5:]) if n}
    return LocalSolveResult(
        packed[:size], counters[0], dict(enumerate(norms)), local_steps=int(counters[3]),
        local_accepted=int(counters[2]), cg_iterations=int(counters[4]), hit_boundary=counters[1] > 0,
        reasons=reasons,
    )
