"""The PINN loss of one outer iteration as the objective the trust-region engine minimizes.

:class:`PINNObjective` is built from the network, the problem, the iteration's batch, the
number of replicas ``D`` and the communicator.  It gives the optimizers (no Lightning) all they
evaluate:

- :meth:`~PINNObjective.full`: the full loss ``L`` at the network's current parameters, or,
  across processes, this process's share of it (:func:`~pinn_apts.pde.loss.pinn_loss_share`);
- :meth:`~PINNObjective.local`: replica ``d``'s objective ``L_k^d`` (equation 3);
- :meth:`~PINNObjective.stacked_local`: the local objectives of the replicas this process owns,
  as a function of their parameters stacked as one flat ``(R, P)`` tensor (batched replicas).

It alone knows the network's parameter layout and the loss terms, so it also names the term
that went non-finite (:meth:`~PINNObjective.naming_non_finite`).  :class:`~pinn_apts.core.apts.APTS`
and :class:`~pinn_apts.core.optim.TrustRegion` take any object with the same methods
(:class:`~pinn_apts.core.apts.Objective` wraps plain functions, for a model that is not a PINN).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from functools import cached_property

import torch
from torch import Tensor, nn

from ..core.distributed import Communicator, replicas_of_rank
from .compiled import CompiledDerivatives, CompiledPINNLoss, compiled_pinn_loss
from .loss import (
    LossData,
    LossTerms,
    check_loss_finite,
    loss_data,
    module_terms,
    padded_parts,
    share_of_data,
    stacked_pinn_loss,
)
from .model import MLP
from .problems import PDEProblem
from .sampling import CollocationBatch

__all__ = ["PINNObjective"]


class PINNObjective:
    """The PINN loss on ``batch`` as the full, local and stacked local objectives of one outer iteration.

    Parameters
    ----------
    net:
        The network ``u_theta``; the objectives are evaluated at its current parameters
        (:meth:`stacked_local` at the parameters it is given).
    problem:
        The PDE problem of the residual and the targets.
    batch:
        The point sets of the outer iteration.
    num_subdomains:
        ``D``: the interior set is split by the batch's random partition into ``D`` parts, one per
        replica.  ``1`` (default) for an objective without replicas (TR, Adam, L-BFGS).
    communicator:
        The processes over which the replicas are spread (default: one process).  With more
        than one, :meth:`full` is this process's share of ``L`` and the ``D / W`` replicas of
        this rank are :attr:`replicas`.
    """

    def __init__(
        self,
        net: nn.Module,
        problem: PDEProblem,
        batch: CollocationBatch,
        num_subdomains: int = 1,
        communicator: Communicator | None = None,
    ) -> None:
        self.net, self.problem, self.batch = net, problem, batch
        self.communicator = communicator or Communicator()
        self.num_subdomains = num_subdomains
        #: the replicas this process owns
        self.replicas = replicas_of_rank(num_subdomains, self.communicator.rank, self.communicator.world_size)
        #: the loss terms at the parameters of the first evaluation of :meth:`full` (``theta_k``),
        #: summed over the processes
        self.entry_terms: LossTerms | None = None
        self._last: LossTerms | None = None  # the terms of the latest full or local evaluation

    # ------------------------------------------------------------------ layout
    @property
    def parameters(self) -> list[Tensor]:
        """The trainable parameters in the order of the flat vectors (``parameters_to_vector``)."""
        return [p for p in self.net.parameters() if p.requires_grad]

    @property
    def can_stack(self) -> bool:
        """Whether :meth:`stacked_local` is available (the network is this package's tanh MLP)."""
        return isinstance(self.net, MLP)

    @cached_property
    def parts(self) -> list[Tensor]:
        """The batch's random partition of the interior set into ``num_subdomains`` index sets
        (drawn when a replica first needs it: never for an objective without replicas)."""
        return self.batch.partition(self.num_subdomains)

    def _interior(self, d: int) -> Tensor:
        return self.batch.interior[self.parts[d]]

    def _own_interior(self) -> Tensor:
        """The interior points of this process's replicas (its share of the full loss)."""
        return torch.cat([self._interior(d) for d in self.replicas])

    # -------------------------------------------------------------- objectives
    def full(self) -> Tensor:
        """``L`` at the network's parameters (or, across processes, this process's share), with its graph.

        The first call also sums the terms over the processes into :attr:`entry_terms` and
        raises ``FloatingPointError`` naming the iteration and the term if one is not finite.
        """
        comm = self.communicator
        data = self._data(None)
        terms = module_terms(self.net, self.problem, data)
        if self.entry_terms is None:
            entry = LossTerms(*comm.all_reduce_sum(torch.stack([t.detach() for t in terms])))
            check_loss_finite(entry, self.batch.iteration)
            self.entry_terms = entry
        self._last = terms
        return terms.total

    __call__ = full  # the closure of torch.optim's optimizers

    @property
    def last_terms(self) -> LossTerms | None:
        """The loss terms of the latest :meth:`full` or :meth:`local` evaluation."""
        return self._last

    def local(self, d: int) -> Tensor:
        """Replica ``d``'s objective ``L_k^d`` at the network's parameters: its part of the interior
        set and the shared initial and boundary sets (equation 3)."""
        data = self._data(d)
        terms = module_terms(self.net, self.problem, data)
        self._last = terms
        return terms.total

    def stacked_local(self, flat: Tensor) -> Tensor:
        """The objectives of this process's replicas, ``(R,)``, at their parameters ``flat`` ``(R, P)``.

        Row ``i`` holds replica ``replicas[i]``'s parameters in the order of :attr:`parameters`.
        """
        if not self.can_stack:
            raise ValueError(
                f"batched replicas need the package's MLP network, got {type(self.net).__name__}: "
                "use replicas='sequential'"
            )
        names, shapes = self._layout
        chunks = flat.split([shape.numel() for shape in shapes], dim=1)
        stacked = {name: c.reshape(flat.shape[0], *shape) for name, c, shape in zip(names, chunks, shapes)}
        layers = range(len(self.net.layers))
        weights = [stacked[f"layers.{i}.weight"] for i in layers]
        biases = [stacked[f"layers.{i}.bias"] for i in layers]
        return stacked_pinn_loss(weights, biases, self.problem, self.batch, [self.parts[d] for d in self.replicas])

    def compiled(self, d: int | None = None, curvature: str = "hessian",
                 compiled: bool = True) -> CompiledDerivatives | None:
        """Compiled loss, gradient and Hessian-vector products (:mod:`~pinn_apts.pde.compiled`) of
        replica ``d``'s objective, or with ``d=None`` of :meth:`full` (this process's share across
        processes), as functions of the flat parameters; ``None`` where they are not available
        (a network other than the package's MLP, or compilation failed: use the graph path).
        ``curvature="gauss_newton"``: Gauss–Newton products instead of the Hessian's.
        ``compiled=False``: the same functions eagerly (for the Gauss–Newton products and the
        residuals' Jacobian, which the graph path does not give)."""
        if not self._compilable:
            return None
        return self._functions.derivatives(self._data(d), False, curvature, compiled)

    def compiled_stacked(self, curvature: str = "hessian", compiled: bool = True) -> CompiledDerivatives | None:
        """:meth:`stacked_local` compiled, with its gradients and Hessian-vector (or, with
        ``curvature="gauss_newton"``, Gauss–Newton) products, as functions of the stacked flat
        parameters ``(R, P)`` (batched Stage I); ``None`` where not available."""
        if not self._compilable:
            return None
        index, weight = padded_parts([self.parts[d] for d in self.replicas], self.batch.interior)
        return self._functions.derivatives(loss_data(self.batch, self.batch.interior[index], weight), True,
                                           curvature, compiled)

    @property
    def _compilable(self) -> bool:
        """The package's MLP with every parameter trained: the layout the compiled functions assume."""
        return self.can_stack and all(p.requires_grad for p in self.net.parameters())

    @property
    def _functions(self) -> CompiledPINNLoss:
        """The process's compiled (and eager) functions of this problem and network layout."""
        return compiled_pinn_loss(self.problem, self.net.layer_sizes)

    def _data(self, d: int | None) -> LossData:
        """The point sets and weights of replica ``d``'s objective (its part of the interior set, the
        shared initial and boundary sets), or with ``d=None`` of :meth:`full`: the whole batch, or
        across processes this process's share (as :func:`~pinn_apts.pde.loss.pinn_loss_share`)."""
        batch, comm = self.batch, self.communicator
        if d is not None:
            return loss_data(batch, self._interior(d))
        if comm.world_size == 1:
            return loss_data(batch, batch.interior)
        return loss_data(batch, self._own_interior(), 1.0 / len(batch.interior),
                         share_of_data(batch, comm.rank, comm.world_size))

    @cached_property
    def _layout(self) -> tuple[list[str], list[torch.Size]]:
        """The names and shapes of the trainable parameters, in the order of the flat vectors."""
        named = [(name, p.shape) for name, p in self.net.named_parameters() if p.requires_grad]
        return [name for name, _ in named], [shape for _, shape in named]

    # ------------------------------------------------------------ non-finite
    @contextmanager
    def naming_non_finite(self, earlier: int | None = None) -> Iterator[None]:
        """Re-raise an optimizer's ``FloatingPointError`` naming the iteration and the loss term of the
        latest evaluation that is not finite (and ``earlier``, the last outer iteration whose trial
        losses were non-finite)."""
        try:
            yield
        except FloatingPointError as err:
            history = "" if earlier is None else f"; trial losses were last non-finite at outer iteration {earlier}"
            for terms in self._terms_to_name():
                try:
                    check_loss_finite(terms, self.batch.iteration)
                except FloatingPointError as named:
                    raise FloatingPointError(f"{named} ({err}){history}") from err
            if history:
                raise FloatingPointError(f"{err}{history}") from err
            raise

    def _terms_to_name(self) -> Iterator[LossTerms]:
        """The loss terms that may name a non-finite value: the latest evaluation's, then (the steps on
        the flat functions evaluate no terms) those of this process's objectives at the network's
        current parameters (the optimizers leave ``theta_k`` there when they raise)."""
        if self._last is not None:
            yield self._last
        with torch.no_grad():
            for d in [None, *self.replicas] if self.num_subdomains > 1 else [None]:
                yield module_terms(self.net, self.problem, self._data(d))
