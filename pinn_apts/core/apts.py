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

:meth:`APTS._outer_iteration` reads as Algorithm 1: :meth:`~APTS._stage1` (the local solves,
summed over the processes), :meth:`~APTS._acceptance_test` (a :class:`Stage1Trial`),
:meth:`~APTS._stage2` (a :class:`~pinn_apts.core.optim.StepInfo`) and the record,
:class:`APTSStepInfo`.  The variants are chosen once per iteration, not branched on inside it:
where each stage gets its derivatives (:class:`StageDerivatives`: the graph, compiled functions,
Gauss–Newton products) and how Stage I uses and moves a radius (:class:`Stage1Radius`).

Where the paper leaves room, the choices are parameters of :class:`APTSConfig` (the Stage I
radius rule, a step-length search, coherent local objectives, local retries, the combination,
the curvature and subproblem solver of each stage); what each does and what it measured are in
``docs/choices.md``.
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
from .optim import (
    RecordingOptimizer,
    StepInfo,
    check_compile,
    flat_derivatives,
    offered,
    trust_region_step,
)
from .replicas import (
    LocalSolveResult,
    batched_local_solves,
    flat_gradient,
    local_solves,
)
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

__all__ = ["APTS", "APTSConfig", "APTSObjective", "APTSStepInfo", "APTSTotals", "Objective", "Stage1Radius", "Stage1Trial",
           "StageDerivatives", "resolve_replicas"]


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
        (the Gauss–Newton model's minimizer within the radius; needs ``local_curvature="gauss_newton"``).
        Batched replicas compute their residuals' Jacobians as one batch and solve their models row
        by row; ``replicas="auto"`` runs exact replicas one after the other (batching them is not
        measured to be faster anywhere yet).
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


@dataclass(frozen=True)
class Stage1Trial:
    """The acceptance test of Stage I's combined correction."""

    correction: Tensor  #: ``s_bar``, the average (or sum) of the replicas' corrections
    alpha: float  #: the step length tried last: ``theta_k + alpha s_bar``
    loss: Tensor  #: the full loss there (with its graph when no flat derivatives are used)
    value: float  #: its value, summed over the processes
    accepted: bool  #: whether it is below ``L(theta_k)``
    rho: float  #: ``(L(theta_k) - L(theta_k + alpha s_bar)) / (alpha * predicted)``


@dataclass(frozen=True)
class StageDerivatives:
    """Where each stage gets its loss, gradient and products, chosen once per outer iteration:
    flat functions of the parameters (compiled, or for Gauss–Newton models eager) or, where ``None``,
    the graph of the loss."""

    #: the full loss's (Stage II's curvature): ``None`` takes the graph
    full: object | None
    #: replica ``d``'s, for sequential replicas (``local(d)``), or ``None``: the graph
    local: Callable[[int], object | None] | None
    objective: APTSObjective
    config: APTSConfig
    compile: bool

    @classmethod
    def of(cls, objective: APTSObjective, config: APTSConfig, compile: bool, mode: str) -> StageDerivatives:
        full = flat_derivatives(objective, config.trust_region.curvature, compile)
        local_curvature = config.local_trust_region.curvature
        # refuses Gauss–Newton products of an objective without flat functions; for the Hessian, None: the graph
        has_flat = flat_derivatives(objective, local_curvature, compile) is not None
        local = partial(flat_derivatives, objective, local_curvature, compile) if has_flat else None
        return cls(full, local, objective, config, compile)

    def graph(self):
        """The context of a full-loss evaluation: a graph only where no flat functions replace it."""
        return torch.enable_grad() if self.full is None else torch.no_grad()

    def stacked(self) -> object | None:
        """The batched replicas' stacked functions (compiled, or eager), or ``None`` (an objective
        without them): the graph of the stacked loss."""
        local_curvature = self.config.local_trust_region.curvature
        curvature = {} if local_curvature == "hessian" else {"curvature": local_curvature}
        return (offered(self.objective, "compiled_stacked", self.compile, **curvature)
                or offered(self.objective, "compiled_stacked", True, compiled=False, **curvature))


@dataclass(frozen=True)
class Stage1Radius:
    """How Stage I uses and moves a radius (``stage1_radius``, :func:`stage1_radius_update`): the
    shared ``Delta`` for ``"keep"``, ``"decrease"`` and ``"ratio"``; Stage I's own ``Delta_I``
    for ``"own"``, which leaves ``Delta`` to Stage II."""

    rule: str
    optimizer: APTS

    @classmethod
    def of(cls, optimizer: APTS) -> Stage1Radius:
        return cls(optimizer.config.stage1_radius, optimizer)

    def solve_radius(self, radius: float) -> float:
        """The radius the replicas solve with (each ``/ J``)."""
        return self.optimizer.stage1_own_radius if self.rule == "own" else radius

    def after(self, radius: float, trial: Stage1Trial, hit_boundary: bool) -> float:
        """``Delta_{k+1/2}``, Stage II's starting radius, after the acceptance test (and ``Delta_I``
        moved in the optimizer's state, for ``"own"``)."""
        tr = self.optimizer.config.trust_region
        if self.rule == "own":
            optimizer = self.optimizer
            optimizer.state[optimizer.key]["stage1_own_radius"] = stage1_radius_update(
                "own", optimizer.stage1_own_radius, trial.accepted, trial.rho, hit_boundary, tr)
            return radius
        return stage1_radius_update(self.rule, radius, trial.accepted, trial.rho, hit_boundary, tr)


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

    @property
    def local_multipliers(self) -> list[float]:
        """By replica, the multiplier of its last exact local step, where its next root find starts
        (0: none yet, or a checkpoint from before they were kept)."""
        return self.state[self.key].get("local_multipliers", [0.0] * self.config.num_subdomains)

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
        """Algorithm 1, one outer iteration: Stage I's corrections, their acceptance test, Stage II."""
        config = self.config
        t0 = time.perf_counter()
        derivatives = StageDerivatives.of(objective, config, self.compile, mode)
        with derivatives.graph():
            loss = objective.full()  # at theta_k: its terms (entry_terms), and the graph of plain functions
        if derivatives.full is not None:  # the value the stages compare with, from the functions they step on
            loss = derivatives.full.loss(start)
        loss_value = float(self.communicator.all_reduce_sum(loss.detach()))
        if not math.isfinite(loss_value):
            raise FloatingPointError(f"non-finite loss {loss_value} at the start of the APTS iteration")
        radius_rule = Stage1Radius.of(self)
        solved = self._stage1(params, start, loss, local, mode, derivatives, radius_rule.solve_radius(self.radius))
        trial = self._acceptance_test(params, start, objective.full, derivatives, solved, loss_value)
        radius = radius_rule.after(self.radius, trial, solved.hit_boundary)
        t1 = time.perf_counter()
        stage2 = self._stage2(objective.full, params, radius, derivatives, trial.loss if trial.accepted else loss)
        t2 = time.perf_counter()

        info = APTSStepInfo(
            loss=loss_value,
            stage1_loss=trial.value,
            stage1_accepted=trial.accepted,
            stage1_rho=trial.rho,
            stage1_radius=radius,
            correction_norm=float(trial.correction.norm()),
            stage1_step=trial.alpha if trial.accepted else 0.0,
            stage1_own_radius=self.stage1_own_radius if config.stage1_radius == "own" else None,
            max_replica_norm=max(solved.correction_norms.values()),
            local_accepted=solved.local_accepted,
            local_steps=solved.local_steps,
            local_cg_iterations=solved.cg_iterations,
            local_reasons=solved.reasons,
            stage2=stage2,
            radius=stage2.radius,  # update_radius keeps it in [min_radius, max_radius]
            new_loss=stage2.new_loss,
            stage1_seconds=t1 - t0,
            stage2_seconds=t2 - t1,
            replica_coherence=replica_coherence(solved.correction_sum, solved.correction_norms.values()),
        )
        self._record(info, stage2.radius, iterations=1, stage1_accepted=int(trial.accepted),
                     stage2_tries=stage2.tries, stage2_floor_hits=int(not stage2.accepted))
        return torch.tensor(loss_value)

    def _stage1(self, params: list[Tensor], start: Tensor, loss: Tensor, local: Callable, mode: str,
                derivatives: StageDerivatives, radius: float) -> LocalSolveResult:
        """Stage I's local solves from ``theta_k`` (``start``) with radius ``radius / J`` each, this
        process's replicas one after another or batched, their corrections and counters summed over
        the processes with one collective."""
        config = self.config
        full_gradient = self._full_gradient(loss, params, start, derivatives.full) if config.coherent else None
        multipliers = dict(enumerate(self.local_multipliers))
        if mode == "batched":
            solved = batched_local_solves(params, local, radius, config.local_trust_region, self.replicas,
                                          config.local_steps, derivatives=derivatives.stacked(),
                                          full_gradient=full_gradient, multipliers=multipliers)
        else:
            solved = local_solves(params, local, self.replicas, radius, config.local_trust_region, config.local_steps,
                                  config.local_retry, derivatives=derivatives.local, full_gradient=full_gradient,
                                  multipliers=multipliers)
        summed = _unpack(self.communicator.all_reduce_sum(_pack(solved, config.num_subdomains)), start.numel(),
                         config.num_subdomains)
        if config.local_subproblem == "exact":  # every process keeps every replica's, so that checkpoints do
            self.state[self.key]["local_multipliers"] = [summed.multipliers[d] for d in range(config.num_subdomains)]
        return summed

    def _acceptance_test(self, params: list[Tensor], start: Tensor, full: Callable[[], Tensor],
                         derivatives: StageDerivatives, solved: LocalSolveResult, loss_value: float) -> Stage1Trial:
        """The combined correction ``s_bar`` (average or sum), tried at ``theta_k + alpha s_bar`` for
        ``alpha = 1, 1/2, ...`` (``stage1_search`` halvings) until the full loss decreases; the
        parameters are left at the accepted point, or at ``theta_k``."""
        config = self.config
        scale = 1.0 / config.num_subdomains if config.combine == "average" else 1.0
        correction = scale * solved.correction_sum
        alpha = 1.0
        for halvings in range(config.stage1_search + 1):
            point = start + alpha * correction  # alpha = 1: bit for bit s_bar
            if derivatives.full is not None:  # the flat functions: the parameters stay at theta_k
                trial = derivatives.full.loss(point).detach()
            else:  # plain functions of the parameters: moved to the trial point, with the graph for Stage II
                with torch.no_grad():
                    vector_to_parameters(point, params)
                with torch.enable_grad():
                    trial = full()
            trial_value = float(self.communicator.all_reduce_sum(trial.detach()))
            accepted = math.isfinite(trial_value) and trial_value < loss_value
            if accepted or halvings == config.stage1_search:
                break
            alpha *= 0.5
        with torch.no_grad():
            vector_to_parameters(point if accepted else start, params)
        # the predicted decrease of a shortened step: the combined one scaled by alpha (to first order)
        rho = reduction_ratio(loss_value - trial_value, alpha * scale * solved.predicted_sum)
        return Stage1Trial(correction, alpha, trial, trial_value, accepted, rho)

    def _stage2(self, full: Callable[[], Tensor], params: list[Tensor], radius: float,
                derivatives: StageDerivatives, loss: Tensor) -> StepInfo:
        """One global trust-region step on the full loss, shrinking and retrying until accepted
        (``loss``: the full loss at the current parameters, reused)."""
        last = self.last_step
        communicator = self.communicator
        step, _ = trust_region_step(full, params, radius, self.config.trust_region, retry=True, loss=loss,
                                    reduce=communicator.all_reduce_sum if communicator.world_size > 1 else None,
                                    derivatives=derivatives.full,
                                    multiplier=last.stage2.multiplier if last is not None else 0.0,
                                    multiplier_radius=last.stage2.multiplier_radius if last is not None else 0.0)
        return step

    def _full_gradient(self, loss: Tensor, params: list[Tensor], start: Tensor, derivatives: object | None) -> Tensor:
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
    """``"sequential"`` or ``"batched"``: ``mode`` itself, or for ``"auto"`` the faster one measured
    (``benchmarks/parallel.py``, tables in ``benchmarks/results/``): batched on a CUDA device when
    this rank owns two replicas or more, one after another otherwise (a CPU, where batching was no
    faster), always with ``local_retry``, which only the sequential replicas support, and when the
    caller gives no batched loss (``can_batch=False``).
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
    norms = torch.zeros(2 * num_replicas, dtype=solved.correction_sum.dtype)  # and the multipliers after them
    for d, norm in solved.correction_norms.items():
        norms[d] = norm
    for d, multiplier in solved.multipliers.items():
        norms[num_replicas + d] = multiplier
    counters = [solved.predicted_sum, float(solved.hit_boundary), solved.local_accepted, solved.local_steps,
                solved.cg_iterations, *(solved.reasons.get(r, 0) for r in _REASONS)]
    tail = torch.tensor(counters, dtype=solved.correction_sum.dtype)
    return torch.cat([solved.correction_sum, tail.to(solved.correction_sum.device), norms.to(solved.correction_sum.device)])


def _unpack(packed: Tensor, size: int, num_replicas: int) -> LocalSolveResult:
    values = packed[size:].tolist()
    counters, rest = values[: 5 + len(_REASONS)], values[5 + len(_REASONS):]
    norms, multipliers = rest[:num_replicas], rest[num_replicas:]
    reasons = {r: int(n) for r, n in zip(_REASONS, counters[5:]) if n}
    return LocalSolveResult(
        packed[:size], counters[0], dict(enumerate(norms)), local_steps=int(counters[3]),
        local_accepted=int(counters[2]), cg_iterations=int(counters[4]), hit_boundary=counters[1] > 0,
        reasons=reasons, multipliers=dict(enumerate(multipliers)),
    )
