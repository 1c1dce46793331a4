"""The PINN loss, its gradient and its Hessian-vector products as compiled functions of the flat parameters.

The trust-region steps spend their time in Hessian-vector products of a small network's loss:
hundreds of small tensor operations each.  :class:`CompiledPINNLoss` writes the loss of
:func:`~pinn_apts.pde.loss.pinn_loss` as a function of one flat parameter vector and the point
sets, and compiles three functions of it with ``torch.compile`` (shapes dynamic, so one
compilation serves the local and the full objectives and both curriculum phases):

- ``loss(flat, data)``;
- ``loss_and_grad(flat, data)``: ``torch.func.grad_and_value``;
- ``hvp(flat, v, data)``: the derivative of the gradient along ``v`` (reverse over reverse,
  ``torch.func.vjp`` of ``torch.func.grad``): the whole product fused into a few kernels
  instead of a double backward through a retained graph;
- ``gnvp(flat, v, data)``: the Gauss–Newton product ``2 J^T J v`` of the weighted residual vector
  whose sum of squares is the loss (``torch.func.jvp``, then ``vjp``): the Hessian without the
  residuals' own curvature, positive semi-definite (APTS's ``local_curvature="gauss_newton"``).

What compiling saves and costs, measured, is in ``docs/speed.md`` (``benchmarks/hvp_cost.py``,
``benchmarks/compare_speed.py``).  A loss that cannot be compiled (an
operation ``torch.compile`` does not support in a user's residual, no C++ compiler, an old
torch) falls back to the eager functions with one warning.

Every :class:`CompiledPINNLoss` compiles the same code (its methods, torch.func's wrappers), and
torch.compile keeps one list of compilations per code object, capped by
``torch._dynamo.config.recompile_limit`` (8).  A process that trains several problems or layouts (a
notebook, the test suite) reaches it: past it, a ``fullgraph`` compilation fails.  :meth:`CompiledPINNLoss.call`
then compiles again with the limits raised to :data:`RECOMPILES_PER_LOSS` per loss the process has
built, so each loss still gets its compilations and the process's other compiled code keeps the
global limits (torch logs once that it hit the limit; the call then goes on compiled).  No check or
patch runs on a call that finds its compilation: the normal path costs nothing.

torch 2.11 (the lent GPUs' image, as of 2026-12-07) cannot print a shape guard whose framework
location is unknown (``SLoc.__str__`` formats ``None`` as a frame): on CUDA every compilation of
these functions then failed with ``InternalTorchDynamoError: AttributeError: 'NoneType' object has
no attribute 'filename'`` and ran eagerly.  When a :class:`CompiledPINNLoss` is built (not at
import), :func:`_mend_guard_locations` gives such a torch the newer torch's rule (an unknown location
prints as empty); a torch that has it, 2.13 included, is left alone.  Remove the mend once the lent
GPUs' image runs a newer torch.

The functions depend only on the architecture, the problem and the dtype, so they are kept
per (problem, layer sizes) for the life of the process (:func:`compiled_pinn_loss`).
"""

from __future__ import annotations

import math
import warnings
from functools import partial
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from ..core.trust_region import GraphDerivatives
from .jet import MLPJet
from .loss import LossData, residual_of, terms_of, weighted_parts
from .problems import PDEProblem

__all__ = ["CURVATURES", "RECOMPILES_PER_LOSS", "CompiledDerivatives", "CompiledPINNLoss", "compiled_pinn_loss"]


def _mend_guard_locations() -> bool:
    """Give ``torch._guards.SLoc`` the ``__str__`` of torch 2.13, which prints an unknown framework
    location as empty, where this torch's fails on one (torch 2.11 on CUDA; see the module's
    docstring).  Returns whether it had to."""
    try:
        from torch._guards import SLoc
        from torch.utils._traceback import format_frame
        str(SLoc(None, None))
        return False
    except (ImportError, TypeError):  # another torch's internals: nothing known to mend
        return False
    except AttributeError:
        pass

    def __str__(self) -> str:
        loc = self.framework_loc
        floc = loc if isinstance(loc, str) else "" if loc is None else format_frame(loc)
        return f"({floc})" if self.maybe_user_loc is None else f"{self.maybe_user_loc} ({floc})"

    SLoc.__str__ = __str__
    return True


#: compilations of one code object that each :class:`CompiledPINNLoss` may add past the recompile
#: limit (dtypes, stacked layouts, shape specialisations: two or three in practice)
RECOMPILES_PER_LOSS = 8


#: the curvature a :class:`CompiledDerivatives`' products use, and the function that gives them
CURVATURES = {"hessian": "hvp", "gauss_newton": "gnvp"}


class CompiledDerivatives:
    """One objective's compiled loss, gradient and Hessian-vector products on ``data``.

    One objective (``stacked=False``): a :class:`~pinn_apts.core.trust_region.FlatDerivatives`
    of the flat parameters ``(P,)``.  ``R`` stacked replicas (``stacked=True``, ``data.interior``
    ``(R, size, 2)`` and ``data.interior_weight`` ``(R, size)``, the padded parts of
    :func:`~pinn_apts.pde.loss.padded_parts`): a :class:`~pinn_apts.core.replicas.StackedDerivatives`
    of ``(R, P)``, with losses ``(R,)``.
    """

    def __init__(self, functions: CompiledPINNLoss, data: LossData, stacked: bool = False,
                 curvature: str = "hessian", compiled: bool = True) -> None:
        if curvature not in CURVATURES:
            raise ValueError(f"curvature must be one of {', '.join(map(repr, CURVATURES))}, got {curvature!r}")
        self.functions, self.data = functions, data
        self.prefix = "stacked_" if stacked else ""
        #: the products :meth:`hvp` gives: the Hessian's or the Gauss–Newton matrix's
        self.product = CURVATURES[curvature]
        #: ``False``: the same functions, eagerly (never compiled)
        self.compiled = compiled
        #: eager Hessian products: one backward each through the gradient's graph, kept per point
        self._graph = GraphDerivatives(partial(self._call, "loss")) if not compiled and curvature == "hessian" else None

    def _call(self, name: str, *args: Tensor):
        if self.compiled:
            return self.functions.call(self.prefix + name, *args, *self.data)
        return self.functions.eager[self.prefix + name](*args, *self.data)

    def loss(self, flat: Tensor) -> Tensor:
        return self._call("loss", flat)

    def loss_and_grad(self, flat: Tensor) -> tuple[Tensor, Tensor]:
        if self._graph is not None:
            return self._graph.loss_and_grad(flat)
        grad, value = self._call("loss_and_grad", flat)
        return value, grad

    def hvp(self, flat: Tensor, v: Tensor) -> Tensor:
        if self._graph is not None:
            return self._graph.hvp(flat, v)
        return self._call(self.product, flat, v)

    def residuals_and_jacobian(self, flat: Tensor) -> tuple[Tensor, Tensor]:
        """The weighted residual vector ``(M,)`` and its Jacobian ``(M, P)`` (one objective; eager:
        :meth:`CompiledPINNLoss.residuals_and_jacobian`)."""
        if self.prefix:
            raise ValueError("stacked replicas: use stacked_residuals_and_jacobian")
        return self.functions.residuals_and_jacobian(flat, *self.data)

    def stacked_residuals_and_jacobian(self, flat: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``R`` stacked replicas' weighted residuals ``(R, M)``, their Jacobians ``(R, M, P)`` and which
        rows are the replicas' own ``(R, M)`` (the padding of a smaller part is not; eager:
        :meth:`CompiledPINNLoss.stacked_residuals_and_jacobian`)."""
        if not self.prefix:
            raise ValueError("one objective: use residuals_and_jacobian")
        return self.functions.stacked_residuals_and_jacobian(flat, *self.data)


class CompiledPINNLoss:
    """The compiled loss, gradient and Hessian-vector product of a tanh MLP's PINN loss on ``problem``.

    ``layer_sizes`` fixes how a flat parameter vector splits into ``(W_l, b_l)`` (the order of
    ``MLP.parameters()``).  :attr:`failed` holds the error if compilation failed; the functions
    then run eagerly.
    """

    #: how many have been built in this process: they share torch.compile's per-code-object limit
    built = 0

    def __init__(self, problem: PDEProblem, layer_sizes: Sequence[int]) -> None:
        if CompiledPINNLoss.built == 0:
            _mend_guard_locations()  # torch 2.11 only (2026-12-07: the lent GPUs' image); see the module's docstring
        CompiledPINNLoss.built += 1
        self.problem = problem
        sizes = list(layer_sizes)
        self.shapes = [s for a, b in zip(sizes[:-1], sizes[1:]) for s in ((b, a), (b,))]
        self.failed: Exception | None = None
        eager = {
            "loss": self._loss,
            "loss_and_grad": torch.func.grad_and_value(self._loss),
            "hvp": partial(self._product, self._loss),
            "stacked_loss": self._stacked_loss,
            "stacked_loss_and_grad": self._stacked_loss_and_grad,
            "stacked_hvp": partial(self._product, self._stacked_total),
            "gnvp": partial(self._gauss_newton, self._residuals),
            "stacked_gnvp": partial(self._gauss_newton, self._stacked_residuals),
        }
        self.eager: dict[str, Callable] = eager
        self.compiled: dict[str, Callable] = {
            name: torch.compile(fn, dynamic=True, fullgraph=True) for name, fn in eager.items()
        }

    def _loss(self, flat: Tensor, *data: Tensor) -> Tensor:
        """The loss at one flat parameter vector: the sum of squares of :meth:`_residuals`."""
        return terms_of(self._parts(*self._layers(flat), LossData(*data))).total

    def _parts(self, weights: list[Tensor], biases: list[Tensor], d: LossData) -> tuple[Tensor, Tensor, Tensor]:
        """The three parts of the weighted residual vector (:func:`~pinn_apts.pde.loss.weighted_parts`) of
        the network of ``weights`` and ``biases``: one network's ``(out, in)`` and ``(out,)``, the same
        operations as the module's own loss, or ``R`` stacked ones' ``(R, out, in)`` and ``(R, out)``
        (then every part is ``(R, .)``)."""
        residual = residual_of(self.problem, MLPJet(weights, biases, d.interior)).squeeze(-1)
        edge = MLPJet(weights, biases, torch.cat([d.initial, d.boundary])).u.squeeze(-1)
        return weighted_parts(residual, edge, d)

    def _layers(self, flat: Tensor) -> tuple[list[Tensor], list[Tensor]]:
        """The layers' weights and biases of one flat parameter vector."""
        chunks = [c.view(shape) for c, shape in zip(flat.split([math.prod(s) for s in self.shapes]), self.shapes)]
        return chunks[0::2], chunks[1::2]

    def residuals_and_jacobian(self, flat: Tensor, *data: Tensor) -> tuple[Tensor, Tensor]:
        """The weighted residual vector ``r`` ``(M,)`` of :meth:`_residuals` and its Jacobian ``J`` ``(M, P)``.

        Each residual depends on its own point only, so ``J`` is the gradient of one point's residual,
        vectorized over the points (``vmap`` of ``grad``): reverse mode at the cost of about three
        residual evaluations in all, where ``jacfwd`` would take ``P`` of them and ``jacrev`` of the
        whole vector one backward pass per residual.
        """
        d = LossData(*data)

        def interior_residual(x: Tensor, point: Tensor) -> Tensor:
            weights, biases = self._layers(x)
            return residual_of(self.problem, MLPJet(weights, biases, point.unsqueeze(0))).reshape(())

        def value(x: Tensor, point: Tensor) -> Tensor:
            weights, biases = self._layers(x)
            return MLPJet(weights, biases, point.unsqueeze(0)).u.reshape(())

        def per_point(fn: Callable[[Tensor, Tensor], Tensor], points: Tensor) -> tuple[Tensor, Tensor]:
            return torch.func.vmap(torch.func.grad_and_value(fn), in_dims=(None, 0))(flat, points)

        j_interior, r_interior = per_point(interior_residual, d.interior)
        j_edge, u_edge = per_point(value, torch.cat([d.initial, d.boundary]))
        # each row of J scales as its residual: by sqrt of its weight (the parts of ones, without targets)
        untargeted = d._replace(initial_values=torch.zeros_like(d.initial_values),
                                boundary_values=torch.zeros_like(d.boundary_values))
        scale = torch.cat(weighted_parts(torch.ones_like(r_interior), torch.ones_like(u_edge), untargeted))
        return torch.cat(weighted_parts(r_interior, u_edge, d)), scale.unsqueeze(1) * torch.cat([j_interior, j_edge])

    def stacked_residuals_and_jacobian(self, flat: Tensor, *data: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """:meth:`residuals_and_jacobian` of ``R`` stacked replicas (``flat`` ``(R, P)``, ``interior``
        ``(R, size, 2)`` and ``interior_weight`` ``(R, size)``, padded as in
        :func:`~pinn_apts.pde.loss.padded_parts`), vectorized over them: the residuals ``(R, M)``, the
        Jacobians ``(R, M, P)`` and ``(R, M)`` true on each replica's own rows (a padding point has
        weight 0, so its row is zero, and is not one of them)."""
        d = LossData(*data)

        def one(x: Tensor, interior: Tensor, weight: Tensor) -> tuple[Tensor, Tensor]:
            return self.residuals_and_jacobian(x, interior, weight, *data[2:])

        residuals, jacobian = torch.func.vmap(one)(flat, d.interior, d.interior_weight)
        edge = torch.ones(flat.shape[0], residuals.shape[1] - d.interior.shape[1], dtype=torch.bool,
                          device=flat.device)
        return residuals, jacobian, torch.cat([d.interior_weight > 0, edge], dim=1)

    def _residuals(self, flat: Tensor, *data: Tensor) -> Tensor:
        """The weighted residuals whose sum of squares is :meth:`_loss`: ``sqrt(weight) * r`` of every
        interior, initial and boundary point, one vector."""
        return torch.cat(self._parts(*self._layers(flat), LossData(*data)))

    def _stacked_parts(self, flat: Tensor, *data: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """The three parts ``(R, .)`` of the ``R`` replicas' weighted residual vectors
        (:func:`~pinn_apts.pde.loss.weighted_parts`; ``interior_weight`` ``(R, size)`` or a scalar)."""
        d = LossData(*data)
        if d.interior.dim() == 2:
            d = d._replace(interior=d.interior.expand(flat.shape[0], *d.interior.shape))
        return self._parts(*self._stacked_layers(flat), d)

    def _stacked_residuals(self, flat: Tensor, *data: Tensor) -> Tensor:
        """The ``R`` replicas' weighted residual vectors, ``(R, M)``: the sum of squares of row ``i`` is
        :meth:`_stacked_loss`'s entry ``i``."""
        return torch.cat(self._stacked_parts(flat, *data), dim=-1)

    def _stacked_layers(self, flat: Tensor) -> tuple[list[Tensor], list[Tensor]]:
        """The layers' weights ``(R, out, in)`` and biases ``(R, out)`` of ``R`` stacked flat parameter rows."""
        count = flat.shape[0]
        chunks = [c.reshape(count, *shape)
                  for c, shape in zip(flat.split([math.prod(s) for s in self.shapes], dim=1), self.shapes)]
        return chunks[0::2], chunks[1::2]

    def _stacked_loss(self, flat: Tensor, *data: Tensor) -> Tensor:
        """The ``R`` replicas' local losses, ``(R,)``, at their parameters ``flat`` ``(R, P)``: the loss
        terms' sums of squares of :meth:`_stacked_residuals`, as the graph path sums them."""
        return terms_of(self._stacked_parts(flat, *data)).total

    def _stacked_total(self, flat: Tensor, *data: Tensor) -> Tensor:
        """``F = sum_d L^d``: its gradient is the replicas' gradients, its Hessian block diagonal."""
        return self._stacked_loss(flat, *data).sum()

    def _stacked_loss_and_grad(self, flat: Tensor, *data: Tensor) -> tuple[Tensor, Tensor]:
        """The replicas' gradients ``(R, P)`` and losses ``(R,)``."""
        def total_and_losses(x: Tensor) -> tuple[Tensor, Tensor]:
            losses = self._stacked_loss(x, *data)
            return losses.sum(), losses

        grad, (_, losses) = torch.func.grad_and_value(total_and_losses, has_aux=True)(flat)
        return grad, losses

    @staticmethod
    def _product(total: Callable[..., Tensor], flat: Tensor, v: Tensor, *data: Tensor) -> Tensor:
        """The Hessian of ``total`` at ``flat`` times ``v``: the derivative of its gradient along ``v``
        (``vjp`` of ``grad``; the Hessian is symmetric)."""
        _, product = torch.func.vjp(lambda x: torch.func.grad(total)(x, *data), flat)
        return product(v)[0]

    @staticmethod
    def _gauss_newton(residuals: Callable[..., Tensor], flat: Tensor, v: Tensor, *data: Tensor) -> Tensor:
        """``2 J^T J v``, ``J`` the Jacobian of ``residuals`` at ``flat``: the Gauss–Newton part of the
        Hessian of their sum of squares (of each replica's, block by block, when stacked)."""
        def of(x: Tensor) -> Tensor:
            return residuals(x, *data)

        _, jv = torch.func.jvp(of, (flat,), (v,))
        _, pull = torch.func.vjp(of, flat)
        return 2 * pull(jv)[0]

    def call(self, name: str, *args: Tensor):
        """``name``'s compiled function on ``args``; the eager one if compilation failed (warned once)."""
        if self.failed is None:
            try:
                return self._compiled_call(name, args)
            except Exception as err:  # noqa: BLE001 - any compiler failure falls back to eager
                self.failed = err
                warnings.warn(
                    f"compile: could not compile the loss of {type(self.problem).__name__} "
                    f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}); running eagerly",
                    RuntimeWarning, stacklevel=2,
                )
        return self.eager[name](*args)

    def _compiled_call(self, name: str, args: tuple[Tensor, ...]):
        """``name``'s compiled function on ``args``, compiled again under raised recompile limits if
        the losses built so far have used up torch.compile's (see the module's docstring)."""
        try:
            return self.compiled[name](*args)
        except Exception as err:  # noqa: BLE001 - re-raised unless it is the recompile limit
            if type(err).__name__ != "FailOnRecompileLimitHit":
                raise
        config = torch._dynamo.config
        limit = RECOMPILES_PER_LOSS * CompiledPINNLoss.built
        raised = {"recompile_limit": max(config.recompile_limit, limit),
                  "accumulated_recompile_limit": max(config.accumulated_recompile_limit,
                                                     limit * len(self.compiled))}
        with config.patch(**raised):
            return self.compiled[name](*args)

    def derivatives(self, data: LossData, stacked: bool = False, curvature: str = "hessian",
                    compiled: bool = True) -> CompiledDerivatives | None:
        """The functions on ``data`` (of ``R`` stacked replicas if ``stacked``; products of the
        ``curvature``, see :data:`CURVATURES`), or, ``compiled`` and once compilation has failed,
        ``None`` (use the eager functions); with ``compiled=False`` the same functions eagerly (the
        Hessian's products by a retained graph of the flat parameters' gradient)."""
        if compiled and self.failed is not None:
            return None
        return CompiledDerivatives(self, data, stacked, curvature, compiled)


_CACHE: dict[tuple, CompiledPINNLoss] = {}


def compiled_pinn_loss(problem: PDEProblem, layer_sizes: Sequence[int]) -> CompiledPINNLoss:
    """The process's :class:`CompiledPINNLoss` for ``problem`` and ``layer_sizes`` (built on first use).

    Problems of the same class built with the same arguments share one (their residuals are the
    same function); a problem that does not record its arguments gets its own.
    """
    args = getattr(problem, "_init_args", None)
    try:
        identity = (type(problem), tuple(sorted(args.items()))) if args is not None else (id(problem),)
        hash(identity)
    except TypeError:
        identity = (id(problem),)
    key = (*identity, tuple(layer_sizes))
    if key not in _CACHE:
        _CACHE[key] = CompiledPINNLoss(problem, layer_sizes)
    return _CACHE[key]
