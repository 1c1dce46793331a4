"""Overhead of the Steihaug CG loop itself, apart from its Hessian-vector products.

Usage::

    python benchmarks/cg_overhead.py                          # this checkout's pinn_apts
    PYTHONPATH=/path/to/old/checkout python benchmarks/cg_overhead.py   # another version, same machine

The product is a diagonal matrix times the vector (a few microseconds for 921 parameters, the
paper's network), so the time per solve is the loop's own tensor operations and host reads.
Prints the best of 7 repeats of 200 solves for a solve that stops on the boundary after one
iteration and for one that runs all 12 iterations.
"""

import timeit

import torch

from pinn_apts.core.trust_region import steihaug_cg

torch.set_num_threads(1)
torch.set_default_dtype(torch.float64)
diag = torch.logspace(-2, 2, 921)
g = torch.randn(921, generator=torch.Generator().manual_seed(0))


def product(v):
    return diag * v


for radius in (1e-3, 1e4):
    result = steihaug_cg(g, product, radius, max_iter=12, rtol=1e-14)
    best = min(timeit.repeat(lambda: steihaug_cg(g, product, radius, max_iter=12, rtol=1e-14), number=200, repeat=7))
    print(f"{result.reason.value:10s} {result.iterations:2d} iterations: {best / 200 * 1e6:7.0f} us per solve")
