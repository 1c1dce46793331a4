"""The PDE side: problems, jets (input derivatives), collocation sampling, the network, the PINN
loss and :class:`~pinn_apts.pde.objective.PINNObjective`, the loss as the optimizers minimize it.
No Lightning."""
