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

Choices where the paper leaves room (documented here, in docs/choices.md, and parameters where a
researcher would vary them):

- *Stage I radius.*  The paper updates ``Delta`` after Stage I "using trust-region
  heuristics" without saying which.  Three rules are here (:func:`stage1_radius_update`):
  ``"keep"`` (default) leaves ``Delta`` to Stage II's ratio test; ``"decrease"`` shrinks it when
  the Stage I step is rejected; ``"ratio"`` forms ``rho_I = (L(theta_k) - L(theta_k + s_bar)) /
  pred_I`` with ``pred_I`` the combined predicted reductions of the accepted local steps and
  follows :func:`~pinn_apts.core.trust_region.update_radius`.  On 500-iteration runs (D = 4, seeds
  1 and 2, ``benchmarks/stage1_radius.py``) ``"keep"`` gave the lowest error on Burgers and
  Laplace and tied on Heat: the Stage I test often fails while its direction still helps, and
  the other rules then shrink the radius that Stage II needs (docs/RESULTS.md).  Acceptance
  itself is the paper's plain decrease test.
  A fourth, ``"own"``, gives Stage I a radius of its own, ``Delta_I``: the replicas solve with
  ``Delta_I / J``, ``Delta_I`` follows Stage I's acceptance test (shrink on rejection, grow on an
  acceptance whose local steps reached their boundary), and ``Delta`` is Stage II's alone, so a
  failing Stage I neither takes steps that fill Stage II's radius nor shrinks it.  (``rho_I`` is
  no guide for it: averaging ``D`` corrections that point different ways realizes only part of
  the predicted decreases, so on Burgers ``rho_I`` stayed below ``eta1`` and drove ``Delta_I``
  to ``Delta_min`` within 60 iterations.)
- *Coherent local objectives* (``coherent=True``, not in the paper): each replica's objective
  gets the linear term ``(grad L(theta_k) - grad L_k^d(theta_k)) . (theta - theta_k)``, so that
  all replicas start from the full gradient and differ only in curvature (the first-order
  coherence of multilevel trust-region methods).  On Burgers the paper's replicas' corrections
  are close to orthogonal (``apts/replica_coherence`` about ``1/D``).
- *Step length.*  With ``stage1_search = m`` a rejected ``s_bar`` is halved up to ``m`` times
  (``theta_k + alpha s_bar``, one full-loss evaluation each) before Stage I gives up.
- *Local steps.*  Each local step has its own ratio test on ``L_k^d``: a rejected local step
  leaves the replica where it is and halves the local radius (which may grow back, at most
  to ``Delta_k / J``).  With ``local_retry`` a rejected local step is retried at once with the
  smaller radius instead of using up one of the ``J`` steps.
- *Combination.*  ``combine="average"`` (paper) or ``"sum"`` (the additive-Schwarz form).
- *Curvature and subproblem solver* (not in the paper).  ``local_curvature="gauss_newton"`` solves
  the replicas' subproblems with the Gauss–Newton matrix ``2 J^T J`` of their residuals instead of
  the Hessian, ``curvature="gauss_newton"`` Stage II's; ``local_subproblem="exact"`` and
  ``subproblem="exact"`` solve those Gauss–Newton subproblems exactly instead of by 12 CG
  iterations (:mod:`~pinn_apts.core.least_squares`: trust-region Levenberg–Marquardt).
- *Loss reuse.*  The loss of the acceptance test, at ``theta_{k+1/2}``, starts Stage II, so
  the full loss is evaluated once less per iteration; nothing in the results changes.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, fields, replace
from functools import partial
from typing import Literal, Protocol

import torch
from torch import Tensor
from torch.nn.utils import parameters_to_vector, vector_to_parameters

from .distributed import Communicator, replicas_of_rank
from .optim import RecordingOptimizer, StepInfo, check_compile, flat_derivatives, offered, trust_region_step
from .replicas import LocalSolveResult, batched_local_solves, flat_gradient, local_solves
from .trust_region import (
    DEFAULT_RADIUS,
    SUBPROBLEMS,
    StopReason,
    TrustRegionConfig,
    check_choice,
    check_exact_needs_gauss_newton,
    reduction_ratio,
    update_radius,
)

__all__ = ["APTS", "APTSConfig", "APTSObjective", "APTSStepInfo", "APTSTotals", "Objective", "resolve_replicas"]


@dataclass(frozen=True)
class APTSConfig:
    """The settings of APTS: its own and, in ``trust_region``, those of every trust-region step.

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
        ``"batched"``: all as one batched computation (needs an objective with ``stacked_local``);
        ``"auto"``: whichever :func:`resolve_replicas` picks for the device, where it was faster.
    stage1_radius:
        How Stage I moves ``Delta`` (see :func:`stage1_radius_update`): ``"keep"`` (default),
        ``"decrease"`` or ``"ratio"``; or ``"own"``: Stage I has a radius of its own, ``Delta_I``
        (its replicas solve with ``Delta_I / J``), moved by Stage I's acceptance test alone,
        and Stage II's ``Delta`` is left to Stage II.
    coherent:
        First-order coherent local objectives (not in the paper): replica ``d`` minimizes
        ``L_k^d(theta) + (grad L(theta_k) - grad L_k^d(theta_k)) . (theta - theta_k)``, whose gradient
        at ``theta_k`` is the full one and whose curvature is its own (one full and one local
        gradient more per iteration).  Default ``False``.
    stage1_search:
        Halvings of a rejected combined correction: the trial steps are ``theta_k + alpha s_bar``
        with ``alpha = 1, 1/2, ..., 2**-stage1_search``, the first that lowers the full loss is
        accepted (0, the paper: ``alpha = 1`` only).
    local_curvature:
        The curvature of the replicas' subproblems: ``"hessian"`` (the paper) or ``"gauss_newton"``
        (``2 J^T J`` of the local objective's residuals: positive semi-definite, without the
        residuals' own second derivatives).  Gauss–Newton needs an objective that gives its
        residuals as a function of the flat parameters (the package's PINN objective).
    local_subproblem:
        How the replicas' subproblems are solved: ``"cg"`` (Steihaug CG, the paper) or ``"exact"``
        (the Gauss–Newton model's minimizer within the radius; needs ``local_curvature="gauss_newton"``
        and the replicas one after the other).
    trust_region:
        The constants of the global and the local trust-region steps (defaults: the paper's); its
        ``curvature`` and ``subproblem`` are Stage II's.
    """

    num_subdomains: int = 4
    local_steps: int = 3
    combine: Literal["average", "sum"] = "average"
    local_retry: bool = False
    replicas: Literal["sequential", "batched", "auto"] = "auto"
    stage1_radius: Literal["ratio", "decrease", "keep", "own"] = "keep"
    stage1_search: int = 0
    coherent: bool = False
    local_curvature: Literal["hessian", "gauss_newton"] = "hessian"
    local_subproblem: Literal["cg", "exact"] = "cg"
    trust_region: TrustRegionConfig = TrustRegionConfig()

    def __post_init__(self) -> None:
        for name in ("num_subdomains", "local_steps"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if self.combine not in ("average", "sum"):
            raise ValueError(f"combine must be 'average' or 'sum', got {self.combine!r}")
        if self.replicas not in ("sequential", "batched", "auto"):
            raise ValueError(f"replicas must be 'sequential', 'batched' or 'auto', got {self.replicas!r}")
        if self.stage1_radius not in ("ratio", "decrease", "keep", "own"):
            raise ValueError(
                f"stage1_radius must be 'ratio', 'decrease', 'keep' or 'own', got {self.stage1_radius!r}")
        if not isinstance(self.coherent, bool):
            raise ValueError(f"coherent must be True or False, got {self.coherent!r}")
        search = self.stage1_search
        if isinstance(search, bool) or not isinstance(search, int) or not 0 <= search <= 30:
            raise ValueError(f"stage1_search must be an integer in [0, 30], got {search!r}")
        if self.local_curvature not in ("hessian", "gauss_newton"):
            raise ValueError(
                f"local_curvature must be 'hessian' or 'gauss_newton', got {self.local_curvature!r}")
        check_choice("local_subproblem", self.local_subproblem, SUBPROBLEMS)
        check_exact_needs_gauss_newton("local_subproblem", self.local_subproblem, "local_curvature",
                                       self.local_curvature)
        if self.replicas == "batched" and self.local_retry:
            raise ValueError("local_retry must be False with replicas='batched'")
        if self.coherent and self.local_subproblem == "exact":
            raise ValueError("coherent=True adds a linear term to the replicas' objectives, which are then no "
                             "sums of squares: use local_subproblem='cg' with it")
        if self.replicas == "batched" and self.local_subproblem == "exact":
            raise ValueError("local_subproblem='exact' solves the replicas one after the other: use "
                             "replicas='sequential' or 'auto'")

    @property
    def local_trust_region(self) -> TrustRegionConfig:
        """The constants of the replicas' steps: Stage II's, with the local curvature and solver."""
        return replace(self.trust_region, curvature=self.local_curvature, subproblem=self.local_subproblem)

    def flat(self) -> dict:
        """Every setting under its own name, the trust-region constants beside the APTS ones
        (as an optimizer's parameter group and the modules' arguments hold them)."""
        own = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "trust_region"}
        return {**asdict(self.trust_region), **own}

    @classmethod
    def from_mapping(cls, mapping: Mapping) -> APTSConfig:
        """The config held flat in ``mapping`` (an optimizer's parameter group), other keys ignored.

        A setting the mapping lacks takes its default: the state of an optimizer saved before the
        setting existed (a checkpoint of an older version) ran with what is now the default."""
        own = {f.name: mapping.get(f.name, f.default) for f in fields(cls) if f.name != "trust_region"}
        return cls(**own, trust_region=TrustRegionConfig.from_mapping(mapping))


@dataclass(frozen=True)
class APTSStepInfo:
    """What one outer iteration did.

    The optimizer keeps it in its state as :meth:`to_state` (plain types: checkpoint-safe).
    """

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
    local_reasons: dict[StopReason, int]  #: local subproblems by why their CG stopped
    stage2: StepInfo  #: the global trust-region step
    radius: float  #: Delta_{k+1}
    new_loss: float  #: L(theta_{k+1})
    stage1_seconds: float
    stage2_seconds: float
    #: ``|sum_d s_k^d|^2 / (D sum_d |s_k^d|^2)``: 1 when the replicas' corrections agree, 1/D when
    #: they are orthogonal with equal norms, near 0 when they cancel (NaN: no replica moved)
    replica_coherence: float = math.nan
    #: ``alpha`` of the accepted trial step ``theta_k + alpha s_bar`` (0: rejected; see ``stage1_search``)
    stage1_step: float = math.nan
    #: ``Delta_I`` after Stage I, with ``stage1_radius="own"`` (else None)
    stage1_own_radius: float | None = None

    def to_state(self) -> dict:
        return {**asdict(self), "local_reasons": {r.value: n for r, n in self.local_reasons.items()},
                "stage2": self.stage2.to_state()}

    @classmethod
    def from_state(cls, state: dict) -> APTSStepInfo:
        return cls(**{**state, "local_reasons": {StopReason(r): n for r, n in state["local_reasons"].items()},
                      "stage2": StepInfo.from_state(state["stage2"])})

    def metrics(self) -> dict[str, float]:
        """The logged scalars of the iteration (``apts/...``, ``time/stage1``, ``time/stage2``)."""
        local = max(self.local_steps, 1)
        metrics = {
            "apts/radius": self.radius,
            "apts/stage1_radius": self.stage1_radius,
            "apts/stage1_accepted": float(self.stage1_accepted),
            "apts/stage1_rho": self.stage1_rho if math.isfinite(self.stage1_rho) else -1.0,
            "apts/correction_norm": self.correction_norm,
            "apts/max_replica_norm": self.max_replica_norm,
            "apts/replica_coherence": self.replica_coherence,
            "apts/stage1_step": self.stage1_step,
            "apts/local_acceptance": self.local_accepted / local,
            "apts/local_cg_iterations": self.local_cg_iterations,
            "apts/stage1_non_finite": float(not math.isfinite(self.stage1_loss)),
            **self.stage2.metrics("apts/stage2_"),
            "time/stage1": self.stage1_seconds,
            "time/stage2": self.stage2_seconds,
        }
        if self.stage1_own_radius is not None:
            metrics["apts/stage1_own_radius"] = self.stage1_own_radius
        metrics.update({f"apts/local_stop/{r.value}": self.local_reasons.get(r, 0) / local for r in StopReason})
        return metrics


@dataclass(frozen=True)
class APTSTotals:
    """Counters of an :class:`APTS` optimizer over its whole run."""

    iterations: int = 0
    stage1_accepted: int = 0
    stage2_tries: int = 0
    stage2_floor_hits: int = 0  #: Stage II steps that reached min_radius without an acceptable step

    @property
    def acceptance_rate(self) -> float:
        """Fraction of outer iterations whose Stage I trial step was accepted."""
        return self.stage1_accepted / max(self.iterations, 1)

    @property
    def mean_stage2_tries(self) -> float:
        return self.stage2_tries / max(self.iterations, 1)

    def metrics(self) -> dict[str, float]:
        return {"apts/stage1_acceptance_rate": self.acceptance_rate, "apts/stage2_mean_tries": self.mean_stage2_tries}


class APTSObjective(Protocol):
    """What :meth:`APTS.step` minimizes; :class:`~pinn_apts.pde.objective.PINNObjective` is one.

    Each method evaluates at the optimizer's parameters as they are when called and returns
    the loss with its graph, without calling backward.
    """

    def full(self) -> Tensor:
        """The full loss ``L`` (across processes: this process's share, summed by the optimizer)."""

    def local(self, d: int) -> Tensor:
        """Replica ``d``'s objective ``L_k^d`` (sequential replicas)."""


@dataclass
class Objective:
    """An :class:`APTSObjective` from plain functions, for any model.

    ``full()`` and ``local(d)`` as in :class:`APTSObjective`; ``stacked_local(flat)``, needed by
    batched replicas only, maps the parameters of this process's replicas stacked as ``(R, P)``
    (each row in the order of ``parameters_to_vector``) to their ``(R,)`` local losses.
    """

    full: Callable[[], Tensor]
    local: Callable[[int], Tensor] | None = None
    stacked_local: Callable[[Tensor], Tensor] | None = None

    @property
    def can_stack(self) -> bool:
        return self.stacked_local is not None


class APTS(RecordingOptimizer):
    """Data-parallel Additively Preconditioned Trust-Region Strategy (Algorithm 1).

    ``step(objective)`` is one outer iteration on an :class:`APTSObjective`:
    ``objective.full()`` evaluates the full loss ``L`` at the current parameters and
    ``objective.local(d)`` replica ``d``'s objective ``L_k^d``.  See the module docstring for
    the algorithm and the choices made where the paper is silent.

    Parameters
    ----------
    params:
        Parameters ``theta`` (one group).
    num_subdomains, local_steps, combine, local_retry, replicas, stage1_radius, stage1_search, coherent, \
    local_curvature, local_subproblem:
        See :class:`APTSConfig`.
    radius:
        Initial radius ``Delta_0`` (default 1.0, in ``[min_radius, max_radius]``).
    max_radius, min_radius, eta1, eta2, shrink, grow, cg_max_iter, damping, cg_rtol:
        Trust-region constants for the global and local steps (:class:`TrustRegionConfig`, where
        each default is defined: the paper's).
    curvature, subproblem:
        Stage II's model and solver (:class:`TrustRegionConfig`; the paper's: ``"hessian"``, ``"cg"``).
    compile:
        Run Stage I's local solves and Stage II on the objective's compiled loss, gradient and
        Hessian-vector products (``objective.compiled(d)``, for batched replicas
        ``objective.compiled_stacked()``; see :mod:`pinn_apts.pde.compiled`) where it offers them.
        An execution choice, not a setting of the method: it is not stored in checkpoints.
        Default ``False``.
    communicator:
        Across processes (:class:`~pinn_apts.core.distributed.TorchDistributed`): this rank solves
        only its own ``D/W`` replicas (:attr:`replicas`; ``objective.local(d)`` is asked for those
        alone, and ``objective.stacked_local`` gets them stacked), the corrections are summed
        with one collective, and ``objective.full()`` returns this rank's *share* of the full
        loss (see :func:`~pinn_apts.pde.loss.pinn_loss_share`), whose values, gradients and
        Hessian-vector products are summed.  Every rank then holds the same parameters and
        radius.  Default: one process.

    The radius, the counters (:attr:`totals`) and the last iteration's record
    (:attr:`last_step`) live in ``state_dict()``.
    """

    key = "apts"
    config_type = APTSConfig
    totals_type = APTSTotals
    info_type = APTSStepInfo

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
        stage1_radius: Literal["ratio", "decrease", "keep", "own"] = APTSConfig.stage1_radius,
        stage1_search: int = APTSConfig.stage1_search,
        coherent: bool = APTSConfig.coherent,
        local_curvature: Literal["hessian", "gauss_newton"] = APTSConfig.local_curvature,
        local_subproblem: Literal["cg", "exact"] = APTSConfig.local_subproblem,
        curvature: Literal["hessian", "gauss_newton"] = TrustRegionConfig.curvature,
        subproblem: Literal["cg", "exact"] = TrustRegionConfig.subproblem,
        communicator: Communicator | None = None,
        compile: bool = False,
    ) -> None:
        tr = TrustRegionConfig(max_radius, min_radius, eta1, eta2, shrink, grow, cg_max_iter, damping, cg_rtol,
                               curvature, subproblem)
        tr.check_radius("radius", radius)
        config = APTSConfig(num_subdomains, local_steps, combine, local_retry, replicas, stage1_radius,
                            stage1_search, coherent, local_curvature, local_subproblem, trust_region=tr)
        super().__init__(params, config.flat(), radius)
        self.state[self.key]["stage1_own_radius"] = float(radius)
        self.communicator = communicator or Communicator()
        #: use the objective's compiled derivatives where it offers them
        self.compile = check_compile(compile)
        #: the replicas this process owns
        self.replicas = replicas_of_rank(num_subdomains, self.communicator.rank, self.communicator.world_size)

    @property
    def acceptance_rate(self) -> float:
        """Fraction of outer iterations whose Stage I trial step was accepted."""
        return self.totals.acceptance_rate

    @property
    def stage1_own_radius(self) -> float:
        """``Delta_I``, Stage I's own radius (used with ``stage1_radius="own"``; a checkpoint from
        before it existed starts it at ``Delta``)."""
        record = self.state[self.key]
        return record.get("stage1_own_radius", record["radius"])

    def step(  # type: ignore[override]
        self, objective: APTSObjective | None = None, closure: Callable[[], object] | None = None
    ) -> Tensor:
        """One outer iteration on ``objective``; returns ``L(theta_k)``.

        ``closure`` is there for Lightning's manual optimization (``optimizers().step(objective=...)``
        hands one that runs its hooks): it is called once, before the iteration, and its value is
        not used.  With ``replicas="batched"`` the objective needs ``stacked_local``.
        """
        config = self.config
        if objective is None or not callable(getattr(objective, "full", None)):
            raise ValueError(
                "APTS.step needs objective=, an object with full() and local(d) (the full loss and replica "
                "d's loss): a pinn_apts.PINNObjective, or pinn_apts.core.apts.Objective(full, local) of plain functions"
            )
        owned = getattr(objective, "replicas", None)
        if owned is not None and list(owned) != list(self.replicas):
            raise ValueError(
                f"the objective's replicas {list(owned)} are not this process's {list(self.replicas)}: build it with "
                f"num_subdomains={config.num_subdomains} and the optimizer's communicator"
            )
        params = [p for p in self.param_groups[0]["params"] if p.requires_grad]
        can_batch = bool(getattr(objective, "can_stack", False)) and config.local_subproblem != "exact"
        mode = resolve_replicas(config.replicas, params[0].device, len(self.replicas), config.local_retry,
                                can_batch=can_batch)
        needs = "local" if mode == "sequential" else "stacked_local"
        local = getattr(objective, needs, None)
        if local is None:
            raise ValueError(f"APTS.step with replicas={config.replicas!r} needs an objective with {needs}()")
        if closure is not None:
            closure()
        start = parameters_to_vector(params).detach().clone()
        try:
            return self._outer_iteration(params, start, objective, local, mode)
        except FloatingPointError:
            with torch.no_grad():  # never leave a half-done iteration behind
                vector_to_parameters(start, params)
            raise

    def _outer_iteration(self, params: list[Tensor], start: Tensor, objective: APTSObjective,
                         local: Callable, mode: str) -> Tensor:
        config, closure = self.config, objective.full
        tr, replicas = config.trust_region, self.replicas
        radius = self.radius
        own = config.stage1_radius == "own"
        stage1_delta = self.stage1_own_radius if own else radius  # the replicas solve with stage1_delta / J
        comm = self.communicator
        total = comm.all_reduce_sum
        reduce = total if comm.world_size > 1 else None

        # ---- Stage I: additive preconditioning ----------------------------------------
        t0 = time.perf_counter()
        global_derivatives = flat_derivatives(objective, tr.curvature, self.compile)
        local_tr = config.local_trust_region
        if local_tr.curvature == "hessian":  # the paper's: compiled where Stage II is (then per replica too)
            compiled = objective.compiled if offered(objective, "compiled", self.compile) is not None else None
        else:
            flat_derivatives(objective, local_tr.curvature, self.compile)  # refuses an objective without them
            compiled = partial(flat_derivatives, objective, local_tr.curvature, self.compile)
        curvature = {} if local_tr.curvature == "hessian" else {"curvature": local_tr.curvature}  # batched replicas
        graph = torch.enable_grad() if global_derivatives is None else torch.no_grad()  # flat functions: no graph
        with graph:
            loss = closure()
        loss_value = float(total(loss.detach()))
        if not math.isfinite(loss_value):
            raise FloatingPointError(f"non-finite loss {loss_value} at the start of the APTS iteration")
        full_gradient = self._full_gradient(loss, params, start, global_derivatives) if config.coherent else None
        if mode == "batched":
            stacked = offered(objective, "compiled_stacked", self.compile, **curvature)
            if stacked is None and curvature:  # Gauss–Newton products: eagerly if not compiled
                stacked = offered(objective, "compiled_stacked", True, compiled=False, **curvature)
            solved = batched_local_solves(params, local, stage1_delta, local_tr, replicas, config.local_steps,
                                          derivatives=stacked, full_gradient=full_gradient)
        else:
            solved = local_solves(params, local, replicas, stage1_delta, local_tr, config.local_steps,
                                  config.local_retry, derivatives=compiled, full_gradient=full_gradient)
        # one collective: this rank's corrections and counters, summed over the ranks
        summed = _unpack(total(_pack(solved, config.num_subdomains)), start.numel(), config.num_subdomains)
        scale = 1.0 / config.num_subdomains if config.combine == "average" else 1.0
        correction = scale * summed.correction_sum
        alpha = 1.0
        for halvings in range(config.stage1_search + 1):  # theta_k + alpha s_bar, alpha = 1, 1/2, ...
            with torch.no_grad():
                vector_to_parameters(start + alpha * correction, params)  # alpha = 1: bit for bit s_bar
            with graph:
                trial = closure()
            trial_value = float(total(trial.detach()))
            accepted = math.isfinite(trial_value) and trial_value < loss_value
            if accepted or halvings == config.stage1_search:
                break
            alpha *= 0.5
        # the predicted decrease of a shortened step: the combined one scaled by alpha (to first order)
        rho = reduction_ratio(loss_value - trial_value, alpha * scale * summed.predicted_sum)
        if own:
            self.state[self.key]["stage1_own_radius"] = stage1_radius_update(
                "own", stage1_delta, accepted, rho, summed.hit_boundary, tr)
        else:
            radius = stage1_radius_update(config.stage1_radius, radius, accepted, rho, summed.hit_boundary, tr)
        if not accepted:
            with torch.no_grad():
                vector_to_parameters(start, params)
        stage1_radius = radius
        t1 = time.perf_counter()

        # ---- Stage II: global trust-region refinement ---------------------------------
        last = self.last_step
        global_step, _ = trust_region_step(closure, params, radius, tr, retry=True,
                                           loss=trial if accepted else loss, reduce=reduce,
                                           derivatives=global_derivatives,
                                           multiplier=last.stage2.multiplier if last is not None else 0.0)
        radius = global_step.radius  # update_radius keeps it in [min_radius, max_radius]
        t2 = time.perf_counter()

        info = APTSStepInfo(
            loss=loss_value,
            stage1_loss=trial_value,
            stage1_accepted=accepted,
            stage1_rho=rho,
            stage1_radius=stage1_radius,
            correction_norm=float(correction.norm()),
            stage1_step=alpha if accepted else 0.0,
            stage1_own_radius=self.stage1_own_radius if own else None,
            max_replica_norm=max(summed.correction_norms.values()),
            local_accepted=summed.local_accepted,
            local_steps=summed.local_steps,
            local_cg_iterations=summed.cg_iterations,
            local_reasons=summed.reasons,
            stage2=global_step,
            radius=radius,
            new_loss=global_step.new_loss,
            stage1_seconds=t1 - t0,
            stage2_seconds=t2 - t1,
            replica_coherence=replica_coherence(summed.correction_sum, summed.correction_norms.values()),
        )
        self._record(info, radius, iterations=1, stage1_accepted=int(accepted), stage2_tries=global_step.tries,
                     stage2_floor_hits=int(not global_step.accepted))
        return torch.tensor(loss_value)

    def _full_gradient(self, loss: Tensor, params: list[Tensor], start: Tensor, derivatives) -> Tensor:
        """``grad L(theta_k)`` (summed over the processes) for coherent local objectives; the graph of
        ``loss`` (eager) is kept for Stage II."""
        if derivatives is not None:
            gradient = derivatives.loss_and_grad(start)[1].detach()
        else:
            gradient = flat_gradient(loss, params, retain_graph=True)
        gradient = self.communicator.all_reduce_sum(gradient)
        if not bool(torch.isfinite(gradient).all()):
            raise FloatingPointError("non-finite gradient at the start of the APTS iteration")
        return gradient


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
    - ``"ratio"``: :func:`~pinn_apts.core.trust_region.update_radius` with ``rho_I``, the actual
      decrease of the full loss over the combined predicted decreases of the accepted local
      steps (shrink if ``rho_I < eta1``, grow if ``rho_I >= eta2`` and a local step hit its
      boundary), whatever the plain acceptance test said.
    - ``"decrease"``: follow the acceptance test: shrink on rejection, keep on acceptance.
    - ``"own"`` (for Stage I's own radius ``Delta_I``): shrink on rejection, grow on acceptance
      when a local step reached its boundary.
    """
    if rule == "ratio":
        return update_radius(radius, rho, hit_boundary, config)[1]
    if rule in ("decrease", "own") and not accepted:
        radius = radius * config.shrink
    elif rule == "own" and hit_boundary:
        radius = radius * config.grow
    return min(max(radius, config.min_radius), config.max_radius)


_REASONS = list(StopReason)


def replica_coherence(correction_sum: Tensor, norms: Iterable[float]) -> float:
    """``|sum_d s^d|^2 / (D sum_d |s^d|^2)`` from the summed corrections and the replicas' norms.

    How much the replicas' corrections pull the same way, whatever their lengths: 1 when they are
    parallel and equal, 1/D when orthogonal with equal norms, 0 when they cancel.  Computed from
    what Stage I's one all-reduce already sums, so it costs no communication.
    """
    norms = list(norms)
    squares = sum(n * n for n in norms)
    if not squares > 0:
        return math.nan
    return float(correction_sum.norm()) ** 2 / (len(norms) * squares)


def _pack(solved: LocalSolveResult, num_replicas: int) -> Tensor:
    """This rank's Stage I results as one vector, so that one all-reduce sums them all."""
    norms = torch.zeros(num_replicas, dtype=solved.correction_sum.dtype)
    for d, norm in solved.correction_norms.items():
        norms[d] = norm
    counters = [solved.predicted_sum, float(solved.hit_boundary), solved.local_accepted, solved.local_steps,
                solved.cg_iterations, *(solved.reasons.get(r, 0) for r in _REASONS)]
    tail = torch.tensor(counters, dtype=solved.correction_sum.dtype)
    return torch.cat([solved.correction_sum, tail.to(solved.correction_sum.device), norms.to(solved.correction_sum.device)])


def _unpack(packed: Tensor, size: int, num_replicas: int) -> LocalSolveResult:
    values = packed[size:].tolist()
    counters, norms = values[: 5 + len(_REASONS)], values[5 + len(_REASONS):]
    reasons = {r: int(n) for r, n in zip(_REASONS, counters[5:]) if n}
    return LocalSolveResult(
        packed[:size], counters[0], dict(enumerate(norms)), local_steps=int(counters[3]),
        local_accepted=int(counters[2]), cg_iterations=int(counters[4]), hit_boundary=counters[1] > 0,
        reasons=reasons,
    )
