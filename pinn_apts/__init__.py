"""pinn-apts: physics-informed neural networks trained with the data-parallel
Additively Preconditioned Trust-Region Strategy (APTS) and its baselines.

The package in four layers, each importing only those above it:

- :mod:`pinn_apts.core`: the optimizers on flat parameter tensors (trust region, APTS, replicas,
  processes); no Lightning, no PDE;
- :mod:`pinn_apts.pde`: problems, jets, sampling, the network, the loss and the objective the
  optimizers minimize; no Lightning;
- :mod:`pinn_apts.training`: the Lightning glue (modules, data module, callbacks, metrics, CLI);
- :mod:`pinn_apts.paper`: the paper's experiment matrix and its report.
"""

import importlib as _importlib
import importlib.abc as _importlib_abc
import importlib.machinery as _importlib_machinery
import importlib.util as _importlib_util
import sys as _sys

from .core.apts import APTS, APTSConfig
from .core.optim import TrustRegion
from .core.trust_region import StopReason, TrustRegionConfig, steihaug_cg, update_radius
from .pde.jet import AutogradJet, Jet, MLPJet
from .pde.loss import LossTerms, pinn_loss
from .pde.model import MLP
from .pde.objective import PINNObjective
from .pde.sampling import CollocationBatch, CollocationSampler, Curriculum, partition_collocation
from .training.apts import APTSPINN
from .training.baselines import AdamPINN, LBFGSPINN, TrustRegionPINN
from .training.data import PINNDataModule
from .training.metrics import RelativeL2Error
from .training.module import PINNModule
from .pde.problems import (
    Burgers,
    Heat,
    Laplace,
    PDEProblem,
    available_problems,
    get_problem,
    register_problem,
)

__all__ = [
    "APTS",
    "APTSConfig",
    "APTSPINN",
    "AdamPINN",
    "Burgers",
    "CollocationBatch",
    "CollocationSampler",
    "Curriculum",
    "AutogradJet",
    "Heat",
    "Jet",
    "MLPJet",
    "LBFGSPINN",
    "Laplace",
    "LossTerms",
    "MLP",
    "PDEProblem",
    "PINNDataModule",
    "PINNModule",
    "PINNObjective",
    "RelativeL2Error",
    "StopReason",
    "TrustRegion",
    "TrustRegionConfig",
    "TrustRegionPINN",
    "available_problems",
    "get_problem",
    "partition_collocation",
    "pinn_loss",
    "register_problem",
    "steihaug_cg",
    "update_radius",
]

__version__ = "0.1.0"

#: the modules' paths before the subpackages (checkpoints, run configs and scripts may name them)
_MOVED = {
    **{name: f"core.{name}" for name in ("trust_region", "optim", "apts", "replicas", "distributed")},
    **{name: f"pde.{name}" for name in ("problems", "jet", "loss", "objective", "sampling", "model")},
    **{name: f"training.{name}" for name in ("data", "cli", "metrics", "callbacks", "checkpoints")},
    "modules": "training",  # the four modules lived in one file, modules.py
    **{name: f"paper.{name}" for name in ("experiments", "report")},
}


class _MovedSpec(_importlib_machinery.ModuleSpec):
    """The spec of an old path: its package is the new module's (``python -m`` runs the new
    module's code with it, so that its relative imports work)."""

    def __init__(self, name: str, loader, moved) -> None:
        super().__init__(name, loader, origin=moved.origin)
        self.moved = moved

    @property
    def parent(self) -> str:
        return self.moved.parent


class _MovedModules(_importlib_abc.MetaPathFinder, _importlib_abc.Loader):
    """``import pinn_apts.problems`` (an old path) gives the module ``pinn_apts.pde.problems`` itself;
    ``python -m pinn_apts.experiments`` runs ``pinn_apts.paper.experiments``."""

    @staticmethod
    def _target(name: str) -> str | None:
        package, _, module = name.partition(".")
        return f"{__name__}.{_MOVED[module]}" if package == __name__ and module in _MOVED else None

    def find_spec(self, name, path=None, target=None):
        moved = self._target(name)
        return None if moved is None else _MovedSpec(name, self, _importlib_util.find_spec(moved))

    def create_module(self, spec):
        return _importlib.import_module(spec.moved.name)

    def exec_module(self, module):
        if isinstance(module.__spec__, _MovedSpec):  # the import gave the module the old path's spec
            module.__spec__ = module.__spec__.moved

    def get_code(self, name):  # for python -m
        moved = self._target(name)
        return _importlib_util.find_spec(moved).loader.get_code(moved)


if not any(isinstance(f, _MovedModules) for f in _sys.meta_path):
    _sys.meta_path.append(_MovedModules())
