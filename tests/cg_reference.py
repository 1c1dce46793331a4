"""The scalar Steihaug CG of commit 39f1b19, kept as a test oracle for the stacked solver.

Nocedal & Wright, Algorithm 7.2, on Python floats with a host read per quantity: slow, but
plain enough to check by eye.  Returns ``(step, predicted_reduction, iterations, reason)``.
"""

import math

import torch

from pinn_apts.core.trust_region import StopReason


def reference_boundary_step(z, d, radius):
    a, b = float(d @ d), float(z @ d)
    c = min(float(z @ z) - radius * radius, 0.0)
    disc = math.sqrt(max(b * b - a * c, 0.0))
    q = -(b + math.copysign(disc, b))
    if q == 0.0:
        tau = radius / math.sqrt(a)
        return -tau, tau
    return tuple(sorted((q / a, c / q)))


def reference_steihaug_cg(grad, hvp, radius, max_iter=12, damping=1e-3, rtol=None):
    z, r = torch.zeros_like(grad), grad.clone()
    g_norm = float(grad.norm())
    if g_norm == 0.0:
        return z, 0.0, 0, StopReason.CONVERGED
    tol = (rtol if rtol is not None else min(0.5, math.sqrt(g_norm))) * g_norm
    d, rr = -r, g_norm * g_norm

    def model(s, bs):
        return float(grad @ s + 0.5 * (s @ bs))

    for iteration in range(1, max_iter + 1):
        bd = hvp(d) + damping * d
        if not torch.isfinite(bd).all():
            return z, -model(z, r - grad), iteration, StopReason.NON_FINITE
        dbd = float(d @ bd)
        if dbd <= 0:
            bz = r - grad
            candidates = [(z + tau * d, bz + tau * bd) for tau in reference_boundary_step(z, d, radius)]
            values = [model(s, bs) for s, bs in candidates]
            best = min(range(2), key=values.__getitem__)
            return candidates[best][0], -values[best], iteration, StopReason.NEGATIVE_CURVATURE
        alpha = rr / dbd
        z_next = z + alpha * d
        if float(z_next.norm()) >= radius:
            tau = reference_boundary_step(z, d, radius)[1]
            s, bs = z + tau * d, (r - grad) + tau * bd
            return s, -model(s, bs), iteration, StopReason.BOUNDARY
        z, r = z_next, r + alpha * bd
        rr_next = float(r @ r)
        if math.sqrt(rr_next) <= tol:
            return z, -model(z, r - grad), iteration, StopReason.CONVERGED
        d, rr = -r + (rr_next / rr) * d, rr_next
    return z, -model(z, r - grad), max_iter, StopReason.MAX_ITER
