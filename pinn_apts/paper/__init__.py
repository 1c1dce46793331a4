"""The paper's experiment matrix (``python -m pinn_apts.paper.experiments``) and its tables and
figures (``python -m pinn_apts.paper.report``)."""
