"""PDE problems: domain, residual, initial/boundary data and exact solution.

A problem is declared as data plus one residual function.  Points are ``(N, 2)``
tensors whose columns are ``(t, x)``; a steady (elliptic) problem sets ``steady = True``:
its columns are ``(y, x)``, the edge ``y = lo`` is the set ``I`` and the other three edges
form ``B`` (Laplace, and the Poisson example of docs/extending.md).

Define your own PDE by subclassing :class:`PDEProblem` and registering it::

    @register_problem
    class Advection(PDEProblem):
        '''u_t + c u_x = 0 on (0, 1] x [0, 1], exact u = sin(2 pi (x - c t)).'''

        name = "advection"

        def __init__(self, c: float = 1.0) -> None:
            super().__init__(bounds=((0.0, 1.0), (0.0, 1.0)))
            self.c = check_finite("c", c)

        def residual(self, jet):
            return jet.d(0) + self.c * jet.d(1)   # u_t + c u_x; a source: jet.coordinate(i)

        def exact_solution(self, points):
            t, x = points[:, 0:1], points[:, 1:2]
            return torch.sin(2 * torch.pi * (x - self.c * t))

``jet.d(i)`` / ``jet.d2(i, j)`` are derivatives with respect to input column ``i`` (0: t, 1: x),
``jet.coordinate(i)`` the column itself (for source terms: under batched replicas the points
carry a leading replica dimension, so index them only through the jet).
Initial and boundary targets default to the exact solution; override
:meth:`PDEProblem.initial_values` / :meth:`PDEProblem.boundary_values` when a
problem has none.

A problem is stored in checkpoints as data, :meth:`PDEProblem.spec` (its class path and
``__init__`` arguments), and rebuilt from it by :func:`resolve_problem`: checkpoints load with
``torch.load(..., weights_only=True)``.
"""

from __future__ import annotations

import importlib
import inspect
import math
import sys
from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import Any, ClassVar, TypeVar

import numpy as np
import torch
from scipy.special import roots_hermite
from torch import Tensor

from .jet import Jet

__all__ = [
    "Burgers",
    "Heat",
    "Laplace",
    "PDEProblem",
    "available_problems",
    "check_finite",
    "check_int",
    "check_positive",
    "get_problem",
    "problem_from_spec",
    "register_problem",
    "resolve_problem",
]

Bounds = tuple[tuple[float, float], tuple[float, float]]


def check_finite(name: str, value: float) -> float:
    """Return ``value`` as a float, or raise ``ValueError`` naming ``name`` if it is not finite."""
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value}")
    return value


def check_positive(name: str, value: float) -> float:
    """Return ``value`` as a float, or raise ``ValueError`` naming ``name`` unless ``0 < value < inf``."""
    value = check_finite(name, value)
    if value <= 0:
        raise ValueError(f"{name} must be positive, got {value}")
    return value


def _uniform_grid(low: float, high: float, n: int, *, open_interval: bool) -> Tensor:
    if open_interval:
        return torch.linspace(low, high, n + 2, dtype=torch.float64)[1:-1]
    if n == 1:
        return torch.tensor([(low + high) / 2], dtype=torch.float64)
    return torch.linspace(low, high, n, dtype=torch.float64)


def check_int(name: str, n: int, minimum: int = 1) -> int:
    """Return ``n`` as an int, or raise ``ValueError`` naming ``name`` unless it is an integer >= ``minimum``."""
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {n!r}")
    return int(n)


class PDEProblem(ABC):
    """A PDE on a rectangle ``[lo0, hi0] x [lo1, hi1]`` with initial and boundary sets.

    Columns of a point are ``(t, x)``.  The interior set is drawn uniformly at
    random from the rectangle; the initial set ``I`` is a uniform grid on
    ``t = lo0`` over the open interval ``(lo1, hi1)``; the boundary set ``B`` is a
    uniform grid in ``t`` on each of the edges ``x = lo1`` and ``x = hi1``.

    A steady (elliptic) problem sets the class attribute ``steady = True``: its columns are
    ``(y, x)``, ``I`` is the edge ``y = lo0`` (its term is logged as ``loss/initial``) and
    ``B`` the three other edges ``y = hi0``, ``x = lo1`` and ``x = hi1``, so that every edge
    carries Dirichlet data (``N_BC`` is then split over three edges).

    Subclasses set :attr:`name`, pass ``bounds`` and implement :meth:`residual`
    and, where known, :meth:`exact_solution`.  The arguments a problem is built with are
    recorded (:meth:`spec`), so that a checkpoint can store it as data.
    """

    name: ClassVar[str] = ""
    input_dim: ClassVar[int] = 2
    input_names: ClassVar[tuple[str, str]] = ("t", "x")
    #: a steady problem: columns (y, x), Dirichlet data on all four edges (see the class docstring)
    steady: ClassVar[bool] = False
    #: number of edges the boundary set is split over (``n_bc`` must be at least this)
    boundary_edges: ClassVar[int] = 2

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.steady:  # the steady defaults, unless the class sets its own
            if "input_names" not in cls.__dict__:
                cls.input_names = ("y", "x")
            if "boundary_edges" not in cls.__dict__:
                cls.boundary_edges = 3

    def __new__(cls, *args: Any, **kwargs: Any) -> PDEProblem:
        # Record the __init__ arguments (defaults filled in) for spec(); a call that does not
        # bind is left to __init__ to refuse with Python's own message.
        self = super().__new__(cls)
        signature = inspect.signature(cls.__init__)
        try:
            bound = signature.bind(self, *args, **kwargs)
        except TypeError:
            self._init_args = None
        else:
            bound.apply_defaults()
            arguments: dict[str, Any] = {}
            for name, value in list(bound.arguments.items())[1:]:
                kind = signature.parameters[name].kind
                if kind is inspect.Parameter.VAR_KEYWORD:
                    arguments.update(value)
                elif kind is inspect.Parameter.VAR_POSITIONAL:
                    self._init_args = None  # positional varargs have no names to store
                    return self
                else:
                    arguments[name] = value
            self._init_args = arguments
        return self

    def __init__(self, bounds: Bounds) -> None:
        (lo0, hi0), (lo1, hi1) = bounds
        for i, (lo, hi) in enumerate(bounds):
            check_finite(f"bounds[{i}][0]", lo)
            check_finite(f"bounds[{i}][1]", hi)
            if not lo < hi:
                raise ValueError(f"bounds[{i}] must satisfy low < high, got ({lo}, {hi})")
        self.bounds: Bounds = ((float(lo0), float(hi0)), (float(lo1), float(hi1)))

    # ----------------------------------------------------------------- physics
    @abstractmethod
    def residual(self, jet: Jet) -> Tensor:
        """PDE residual ``F`` at ``jet.points`` (N, 2), an (N, 1) tensor whose mean square is ``L_Omega``.

        ``jet.u`` is the network's value; ``jet.d(i)`` and ``jet.d2(i, j)`` its first and
        second derivatives with respect to input column ``i`` (and ``j``), computed on demand.
        """

    def exact_solution(self, points: Tensor) -> Tensor:
        """Exact solution at ``points`` (N, 2), shape (N, 1). Not every problem has one."""
        raise NotImplementedError(f"problem {self.name!r} has no exact solution")

    @property
    def has_exact_solution(self) -> bool:
        return type(self).exact_solution is not PDEProblem.exact_solution

    def initial_values(self, points: Tensor) -> Tensor:
        """Targets on the initial set; by default the exact solution."""
        return self.exact_solution(points)

    def boundary_values(self, points: Tensor) -> Tensor:
        """Targets on the boundary set; by default the exact solution."""
        return self.exact_solution(points)

    # ---------------------------------------------------------------- sampling
    def sample_interior(self, n: int, rng: np.random.Generator) -> Tensor:
        """``n`` points drawn uniformly from the rectangle (float64)."""
        n = check_int("n_coll", n)
        (lo0, hi0), (lo1, hi1) = self.bounds
        u = torch.from_numpy(rng.random((n, 2)))
        # hi - (hi - lo) * U with U in [0, 1) gives t in (lo0, hi0], as in the paper
        t = hi0 - (hi0 - lo0) * u[:, 0]
        x = lo1 + (hi1 - lo1) * u[:, 1]
        return torch.stack([t, x], dim=1)

    def initial_points(self, n: int) -> Tensor:
        """``n`` points of a uniform grid on ``t = lo0``, ``x`` in the open interval."""
        n = check_int("n_ic", n)
        (lo0, _), (lo1, hi1) = self.bounds
        x = _uniform_grid(lo1, hi1, n, open_interval=True)
        return torch.stack([torch.full_like(x, lo0), x], dim=1)

    def boundary_points(self, n: int) -> Tensor:
        """``n`` points split over the edges ``x = lo1`` and ``x = hi1``, uniform in ``t``.

        For a steady problem: split over the edges ``y = hi0`` (uniform in ``x``), ``x = lo1``
        and ``x = hi1`` (uniform in ``y``), each grid including its corners.
        """
        n = check_int("n_bc", n, self.boundary_edges)
        (lo0, hi0), (lo1, hi1) = self.bounds
        if self.steady:
            n_far, n_low, n_high = _split(n, 3)
            x_far = _uniform_grid(lo1, hi1, n_far, open_interval=False)
            y_low = _uniform_grid(lo0, hi0, n_low, open_interval=False)
            y_high = _uniform_grid(lo0, hi0, n_high, open_interval=False)
            return torch.cat(
                [
                    torch.stack([torch.full_like(x_far, hi0), x_far], dim=1),
                    torch.stack([y_low, torch.full_like(y_low, lo1)], dim=1),
                    torch.stack([y_high, torch.full_like(y_high, hi1)], dim=1),
                ]
            )
        parts = []
        for edge_x, m in zip((lo1, hi1), _split(n, 2)):
            t = _uniform_grid(lo0, hi0, m, open_interval=False)
            parts.append(torch.stack([t, torch.full_like(t, edge_x)], dim=1))
        return torch.cat(parts)

    def evaluation_grid(self, n0: int, n1: int) -> Tensor:
        """A uniform ``n0 x n1`` tensor-product grid over the closed rectangle, row-major in column 0."""
        n0 = check_int("eval_points[0]", n0, 2)
        n1 = check_int("eval_points[1]", n1, 2)
        (lo0, hi0), (lo1, hi1) = self.bounds
        a = torch.linspace(lo0, hi0, n0, dtype=torch.float64)
        b = torch.linspace(lo1, hi1, n1, dtype=torch.float64)
        g0, g1 = torch.meshgrid(a, b, indexing="ij")
        return torch.stack([g0.reshape(-1), g1.reshape(-1)], dim=1)

    def coefficients(self) -> dict[str, float]:
        """The problem's coefficients (its ``__init__`` arguments) by name."""
        return dict(getattr(self, "_init_args", None) or {})

    def spec(self) -> dict[str, Any]:
        """The problem as data: ``{"class_path": "module.Class", "init_args": {...}}``.

        :func:`resolve_problem` rebuilds an equal problem from it; checkpoints and
        hyper-parameter files store it instead of the object.
        """
        cls = type(self)
        init_args = getattr(self, "_init_args", None)
        if init_args is None:
            raise TypeError(
                f"{cls.__name__} cannot be stored as data: its __init__ takes positional varargs (*args); "
                "give it named parameters"
            )
        return {"class_path": class_path(cls), "init_args": dict(init_args)}

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, PDEProblem):
            return NotImplemented
        return type(self) is type(other) and self._init_args == other._init_args

    def __hash__(self) -> int:
        return hash(type(self))  # equal problems have the same type; their arguments may not be hashable

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.coefficients().items())
        return f"{type(self).__name__}({args})"


def _split(n: int, parts: int) -> list[int]:
    """Split ``n`` into ``parts`` integers differing by at most one, largest first."""
    q, r = divmod(n, parts)
    return [q + (i < r) for i in range(parts)]


# ------------------------------------------------------------------ registry
_REGISTRY: dict[str, type[PDEProblem]] = {}
P = TypeVar("P", bound=type[PDEProblem])


def register_problem(cls: P) -> P:
    """Class decorator: make ``cls`` available as ``get_problem(cls.name)``."""
    if not (isinstance(cls, type) and issubclass(cls, PDEProblem)):
        raise TypeError(f"register_problem expects a PDEProblem subclass, got {cls!r}")
    if not cls.name:
        raise ValueError(f"{cls.__name__}.name must be a non-empty string")
    _REGISTRY[cls.name.lower()] = cls
    return cls


def available_problems() -> list[str]:
    """Names accepted by :func:`get_problem`."""
    return sorted(_REGISTRY)


def get_problem(name: str, **coefficients: float) -> PDEProblem:
    """Build a registered problem by name, e.g. ``get_problem("heat", kappa=0.4)``."""
    key = str(name).lower()
    if key not in _REGISTRY:
        raise ValueError(f"unknown problem {name!r}; known problems: {', '.join(available_problems())}")
    cls = _REGISTRY[key]
    try:
        return cls(**coefficients)
    except TypeError as err:
        known = ", ".join(inspect.signature(cls).parameters) or "none"
        raise ValueError(
            f"invalid coefficients {sorted(coefficients)} for problem {key!r}; its coefficients: {known}"
        ) from err


def class_path(cls: type) -> str:
    """How a class is named in checkpoints and configs.

    ``"pinn_apts.Name"`` for a class the package exports (a name that stays when the package's
    files move), ``"module.Class"`` for any other.
    """
    package = sys.modules.get("pinn_apts")
    if getattr(package, cls.__qualname__, None) is cls:
        return f"pinn_apts.{cls.__qualname__}"
    return f"{cls.__module__}.{cls.__qualname__}"


def import_class_path(path: str) -> Any:
    """The object ``"module.Name"`` names (``ImportError``/``AttributeError``/``ValueError`` if none)."""
    module_name, _, qualname = path.rpartition(".")
    obj: Any = importlib.import_module(module_name)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj


def problem_from_spec(spec: Mapping[str, Any]) -> PDEProblem:
    """Rebuild a problem from :meth:`PDEProblem.spec` (``class_path`` and ``init_args``)."""
    if "class_path" not in spec or not isinstance(spec["class_path"], str):
        raise ValueError(f"a problem given as data needs a 'class_path' string, got {dict(spec)!r}")
    extra = set(spec) - {"class_path", "init_args"}
    if extra:
        raise ValueError(f"a problem given as data has only 'class_path' and 'init_args', got also {sorted(extra)}")
    path = spec["class_path"]
    try:
        obj = import_class_path(path)
    except (ImportError, AttributeError, ValueError) as err:
        raise ValueError(
            f"cannot import the problem class {path!r}: {err} (is its module on the Python path?)"
        ) from err
    if not (isinstance(obj, type) and issubclass(obj, PDEProblem)):
        raise TypeError(f"problem class_path {path!r} is not a PDEProblem subclass")
    return obj(**dict(spec.get("init_args") or {}))


def resolve_problem(problem: PDEProblem | str | Mapping[str, Any]) -> PDEProblem:
    """Accept a problem instance, a registered name or a spec (:meth:`PDEProblem.spec`)."""
    if isinstance(problem, PDEProblem):
        return problem
    if isinstance(problem, str):
        return get_problem(problem)
    if isinstance(problem, Mapping):
        return problem_from_spec(problem)
    raise TypeError(
        f"problem must be a PDEProblem, a registered name or a spec dict, got {type(problem).__name__}"
    )


# ------------------------------------------------------------------ problems
@register_problem
class Heat(PDEProblem):
    r"""Heat equation :math:`u_t = \kappa u_{xx}` on :math:`(0, 1] \times [0, 1]`.

    ``u(0, x) = sin(pi x)``, ``u(t, 0) = u(t, 1) = 0``; exact
    :math:`u = e^{-\kappa \pi^2 t} \sin(\pi x)`.
    """

    name = "heat"

    def __init__(self, kappa: float = 0.4) -> None:
        super().__init__(bounds=((0.0, 1.0), (0.0, 1.0)))
        self.kappa = check_positive("kappa", kappa)

    def coefficients(self) -> dict[str, float]:
        return {"kappa": self.kappa}

    def residual(self, jet: Jet) -> Tensor:
        return jet.d(0) - self.kappa * jet.d2(1)

    def exact_solution(self, points: Tensor) -> Tensor:
        t, x = points[:, 0:1], points[:, 1:2]
        return torch.exp(-self.kappa * math.pi**2 * t) * torch.sin(math.pi * x)


@register_problem
class Burgers(PDEProblem):
    r"""Viscous Burgers :math:`u_t + u u_x = \nu u_{xx}` on :math:`(0, 1] \times [-1, 1]`.

    ``u(0, x) = -sin(pi x)``, ``u(t, \pm 1) = 0``, :math:`\nu = 0.01/\pi` (Raissi et al., 2019).
    The exact solution comes from the Cole--Hopf transform (Basdevant et al., 1986),

    .. math:: u(t, x) = -\frac{\int \sin(\pi(x - a z)) f(x - a z) e^{-z^2} dz}
                               {\int f(x - a z) e^{-z^2} dz},
              \quad f(y) = e^{-\cos(\pi y) / (2 \pi \nu)}, \quad a = \sqrt{4 \nu t},

    evaluated with ``quadrature_order``-point Gauss--Hermite quadrature in log
    space (the weights and ``f`` span hundreds of orders of magnitude).  With
    the default 200 points it agrees with 1000 points to about 1e-14 on the
    whole domain, including beside the shock at ``x = 0``.
    """

    name = "burgers"

    def __init__(self, nu: float = 0.01 / math.pi, quadrature_order: int = 200) -> None:
        super().__init__(bounds=((0.0, 1.0), (-1.0, 1.0)))
        self.nu = check_positive("nu", nu)
        self.quadrature_order = check_int("quadrature_order", quadrature_order, 2)

    def coefficients(self) -> dict[str, float]:
        return {"nu": self.nu}

    def residual(self, jet: Jet) -> Tensor:
        return jet.d(0) + jet.u * jet.d(1) - self.nu * jet.d2(1)

    def exact_solution(self, points: Tensor) -> Tensor:
        z, w = roots_hermite(self.quadrature_order)
        with np.errstate(divide="ignore"):  # weights of the outermost nodes underflow to 0
            log_w = np.log(w)
        pts = points.detach().cpu().to(torch.float64).numpy()
        out = np.empty(len(pts))
        for start in range(0, len(pts), 4096):  # bounded memory: chunk x nodes
            t = pts[start : start + 4096, 0:1]
            x = pts[start : start + 4096, 1:2]
            y = x - np.sqrt(4.0 * self.nu * t) * z
            log_f = log_w - np.cos(np.pi * y) / (2.0 * np.pi * self.nu)
            f = np.exp(log_f - log_f.max(axis=1, keepdims=True))
            out[start : start + 4096] = -(np.sin(np.pi * y) * f).sum(axis=1) / f.sum(axis=1)
        return torch.from_numpy(out).to(device=points.device, dtype=points.dtype).unsqueeze(1)


@register_problem
class Laplace(PDEProblem):
    r"""Laplace :math:`u_{xx} + u_{yy} = 0` on :math:`[0, 1]^2`, columns ``(y, x)`` (a steady problem).

    Dirichlet data from the exact :math:`u = \sin(\pi x) \sinh(\pi y) / \sinh(\pi)`.  The edge
    ``y = 0`` is the initial set ``I``; the edges ``y = 1``, ``x = 0`` and ``x = 1`` form ``B``.
    """

    name = "laplace"
    steady = True

    def __init__(self) -> None:
        super().__init__(bounds=((0.0, 1.0), (0.0, 1.0)))

    def residual(self, jet: Jet) -> Tensor:
        return jet.d2(1) + jet.d2(0)

    def exact_solution(self, points: Tensor) -> Tensor:
        y, x = points[:, 0:1], points[:, 1:2]
        return torch.sin(math.pi * x) * torch.sinh(math.pi * y) / math.sinh(math.pi)
