"""The Lightning glue: the modules (``module``, ``baselines``, ``apts``), the data module, callbacks,
metrics, checkpoint checks and the ``pinn-apts`` command line."""

from .apts import APTSPINN
from .baselines import AdamPINN, LBFGSPINN, TrustRegionPINN
from .data import PINNDataModule
from .module import PINNModule

__all__ = ["APTSPINN", "AdamPINN", "LBFGSPINN", "PINNDataModule", "PINNModule", "TrustRegionPINN"]
