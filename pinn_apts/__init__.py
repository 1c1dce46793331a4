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
