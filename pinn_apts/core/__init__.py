"""The optimizer core, on flat parameter tensors and loss functions: no Lightning, no PDE.

``trust_region`` (stacked Steihaug CG, ratio test, radius rule, constants), ``optim``
(one trust-region step; the ``TrustRegion`` optimizer), ``apts`` (Algorithm 1), ``replicas``
(Stage I's local solves, sequential and batched), ``distributed`` (replicas across processes).
"""
