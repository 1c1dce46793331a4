"""pinn-apts: physics-informed neural networks trained with the data-parallel
Additively Preconditioned Trust-Region Strategy (APTS) and its baselines."""

from .data import PINNDataModule
from .sampling import CollocationBatch, CollocationSampler, Curriculum, partition_collocation
from .jet import AutogradJet, Jet, MLPJet
from .loss import LossTerms, pinn_loss
from .metrics import RelativeL2Error
from .model import MLP
from .apts import APTS, APTSConfig
from .objective import PINNObjective
from .modules import APTSPINN, AdamPINN, LBFGSPINN, PINNModule, TrustRegionPINN
from .optim import TrustRegion
from .trust_region import StopReason, TrustRegionConfig, steihaug_cg, update_radius
from .problems import (
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
