import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pinn_apts.core.trust_region import (
    StopReason,
    TrustRegionConfig,
    boundary_step,
    reduction_ratio,
    stacked_steihaug_cg,
    steihaug_cg,
    update_radius,
)

from .cg_reference import reference_steihaug_cg


def quadratic(seed: int, n: int, kind: str):
    """A random symmetric matrix (SPD, indefinite or negative definite) and gradient."""
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.standard_normal((n, n)))
    if kind == "spd":
        eig = rng.uniform(0.1, 10.0, n)
    elif kind == "indefinite":
        eig = rng.uniform(-5.0, 5.0, n)
        eig[0], eig[-1] = -abs(eig[0]) - 0.1, abs(eig[-1]) + 0.1
    else:
        eig = -rng.uniform(0.1, 5.0, n)
    b = torch.from_numpy(q @ np.diag(eig) @ q.T)
    g = torch.from_numpy(rng.standard_normal(n))
    return b, g


def model_decrease(g, b, s, damping=0.0):
    return -float(g @ s + 0.5 * s @ (b @ s) + 0.5 * damping * s @ s)


def cauchy_decrease(g, b, radius, damping=0.0):
    gbg = float(g @ (b @ g)) + damping * float(g @ g)
    gn = float(g.norm())
    t = radius / gn if gbg <= 0 else min(gn**2 / gbg, radius / gn)
    return t * gn**2 - 0.5 * t**2 * gbg


settings_ = settings(max_examples=150, deadline=None)


@settings_
@given(
    seed=st.integers(0, 10**6),
    n=st.integers(1, 8),
    kind=st.sampled_from(["spd", "indefinite", "negative"]),
    radius=st.floats(1e-3, 20.0),
    max_iter=st.integers(1, 12),
    damping=st.sampled_from([0.0, 1e-3, 0.5]),
)
def test_step_within_radius_and_beats_cauchy_point(seed, n, kind, radius, max_iter, damping):
    b, g = quadratic(seed, n, kind)
    result = steihaug_cg(g, lambda v: b @ v, radius, max_iter=max_iter, damping=damping)
    norm = float(result.step.norm())
    assert norm <= radius * (1 + 1e-10)
    exact = model_decrease(g, b, result.step, damping)
    assert result.predicted_reduction == pytest.approx(exact, rel=1e-9, abs=1e-12)
    assert result.predicted_reduction >= cauchy_decrease(g, b, radius, damping) * (1 - 1e-9) - 1e-12
    assert 1 <= result.iterations <= max_iter
    if result.hits_boundary:
        assert norm == pytest.approx(radius, rel=1e-9)


@settings_
@given(seed=st.integers(0, 10**6), n=st.integers(1, 8))
def test_spd_large_radius_gives_newton_step(seed, n):
    b, g = quadratic(seed, n, "spd")
    result = steihaug_cg(g, lambda v: b @ v, 1e6, max_iter=4 * n, damping=0.0, rtol=1e-12)
    newton = -torch.linalg.solve(b, g)
    assert result.reason == StopReason.CONVERGED
    assert torch.allclose(result.step, newton, rtol=1e-7, atol=1e-9)


@settings_
@given(seed=st.integers(0, 10**6), n=st.integers(1, 8), radius=st.floats(1e-2, 10.0))
def test_negative_curvature_gives_boundary_step(seed, n, radius):
    b, g = quadratic(seed, n, "negative")
    result = steihaug_cg(g, lambda v: b @ v, radius, max_iter=12, damping=0.0)
    assert result.reason == StopReason.NEGATIVE_CURVATURE
    assert float(result.step.norm()) == pytest.approx(radius, rel=1e-10)
    # the first direction is -g: the boundary point along it with the lower model value
    assert torch.allclose(result.step, -radius * g / g.norm(), rtol=1e-10, atol=1e-12)


def test_negative_curvature_later_in_cg_keeps_lower_model_boundary_point():
    # positive curvature along g, negative along the next conjugate direction
    b = torch.diag(torch.tensor([2.0, -1.0], dtype=torch.float64))
    g = torch.tensor([1.0, 0.3], dtype=torch.float64)
    result = steihaug_cg(g, lambda v: b @ v, 5.0, max_iter=10, damping=0.0, rtol=1e-12)
    assert result.reason == StopReason.NEGATIVE_CURVATURE and result.iterations == 2
    assert float(result.step.norm()) == pytest.approx(5.0)
    # recompute the two boundary points along the second direction and compare model values
    first = steihaug_cg(g, lambda v: b @ v, 5.0, max_iter=1, damping=0.0, rtol=1e-12).step
    r = g + b @ first
    d = -r + float(r @ r) / float(g @ g) * (-g)
    values = [model_decrease(g, b, first + tau * d) for tau in boundary_step(first, d, 5.0)]
    assert result.predicted_reduction == pytest.approx(max(values), rel=1e-12)
    assert min(values) < max(values)


@settings_
@given(
    z=st.lists(st.floats(-1, 1), min_size=3, max_size=3),
    d=st.lists(st.floats(-10, 10), min_size=3, max_size=3).filter(lambda v: sum(x * x for x in v) > 1e-6),
    extra=st.floats(0.0, 5.0),
)
def test_boundary_roots_lie_on_the_sphere(z, d, extra):
    z, d = torch.tensor(z, dtype=torch.float64), torch.tensor(d, dtype=torch.float64)
    radius = float(z.norm()) + extra + 1e-3
    low, high = boundary_step(z, d, radius)
    assert low <= 0 <= high
    for tau in (low, high):
        assert float((z + tau * d).norm()) == pytest.approx(radius, rel=1e-9)


def test_zero_gradient_gives_zero_step():
    result = steihaug_cg(torch.zeros(3, dtype=torch.float64), lambda v: v, 1.0)
    assert result.reason == StopReason.CONVERGED and result.iterations == 0 and float(result.step.norm()) == 0.0


def test_non_finite_hvp_is_reported():
    g = torch.ones(3, dtype=torch.float64)
    result = steihaug_cg(g, lambda v: v * math.nan, 1.0)
    assert result.reason == StopReason.NON_FINITE and float(result.step.norm()) == 0.0


def test_ratio():
    assert reduction_ratio(1.0, 2.0) == 0.5
    assert reduction_ratio(math.nan, 1.0) == -math.inf
    assert reduction_ratio(-math.inf, 1.0) == -math.inf
    assert reduction_ratio(1.0, 0.0) == -math.inf


@pytest.mark.parametrize(
    "rho, boundary, accepted, radius",
    [
        (-1.0, True, False, 0.5),
        (0.05, False, False, 0.5),
        (0.1, True, True, 1.0),
        (0.3, True, True, 1.0),
        (0.5, True, True, 2.0),
        (0.9, False, True, 1.0),  # interior: no growth
        (-math.inf, False, False, 0.5),
    ],
)
def test_update_radius_rule(rho, boundary, accepted, radius):
    assert update_radius(1.0, rho, boundary, TrustRegionConfig()) == (accepted, radius)


def test_update_radius_clamps():
    config = TrustRegionConfig()
    assert update_radius(8.0, 0.9, True, config) == (True, 10.0)
    assert update_radius(1.5e-10, -1.0, True, config) == (False, 1e-10)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(eta1=0.6, eta2=0.5), r"eta2 must lie in \(eta1, 1\)"),
        (dict(eta1=0.0), r"eta1 must lie in \(0, 1\)"),
        (dict(shrink=1.5), r"shrink must lie in \(0, 1\)"),
        (dict(grow=0.5), "grow must be > 1"),
        (dict(min_radius=1.0, max_radius=0.5), "max_radius must be >= min_radius"),
        (dict(min_radius=0.0), "min_radius must be positive"),
        (dict(damping=-1.0), "damping must be >= 0"),
        (dict(cg_max_iter=0), "cg_max_iter must be an integer >= 1"),
        (dict(cg_rtol=2.0), r"cg_rtol must lie in \(0, 1\)"),
        (dict(max_radius=math.inf), "must be finite"),
    ],
)
def test_config_validation(kwargs, message):
    with pytest.raises(ValueError, match=message):
        TrustRegionConfig(**kwargs)
    with pytest.raises(ValueError, match=r"radius must lie in \[min_radius, max_radius\]"):
        TrustRegionConfig().check_radius("radius", 11.0)


# ------------------------------------------------------------- the stacked solver, row by row
def _stacked(problems):
    """Stack ``(B_i, g_i)`` pairs of one size into ``(R, n, n)`` and ``(R, n)``."""
    return torch.stack([b for b, _ in problems]), torch.stack([g for _, g in problems])


def _assert_row_matches_reference(result, i, b, g, radius, **cg):
    step, predicted, iterations, reason = reference_steihaug_cg(g, lambda v: b @ v, radius, **cg)
    assert result.reasons[i] == reason
    assert int(result.iterations[i]) == iterations
    assert torch.allclose(result.step[i], step, rtol=1e-9, atol=1e-12)
    assert float(result.predicted_reduction[i]) == pytest.approx(predicted, rel=1e-9, abs=1e-12)


@settings(max_examples=80, deadline=None, derandomize=True)
@given(
    seeds=st.lists(st.integers(0, 10**6), min_size=1, max_size=5),
    n=st.integers(1, 8),
    kinds=st.lists(st.sampled_from(["spd", "indefinite", "negative"]), min_size=5, max_size=5),
    radii=st.lists(st.floats(1e-3, 20.0), min_size=5, max_size=5),
    max_iter=st.integers(1, 12),
    damping=st.sampled_from([0.0, 1e-3, 0.5]),
    rtol=st.sampled_from([None, 1e-10, 0.3]),
)
def test_stacked_cg_rows_equal_the_scalar_reference(seeds, n, kinds, radii, max_iter, damping, rtol):
    problems = [quadratic(seed, n, kind) for seed, kind in zip(seeds, kinds)]
    bs, gs = _stacked(problems)
    radius = torch.tensor(radii[: len(seeds)], dtype=torch.float64)
    cg = dict(max_iter=max_iter, damping=damping, rtol=rtol)
    result = stacked_steihaug_cg(gs, lambda v: torch.einsum("rij,rj->ri", bs, v), radius, **cg)
    for i, (b, g) in enumerate(problems):
        _assert_row_matches_reference(result, i, b, g, float(radius[i]), **cg)
    # the same without any host read inside the loop (all max_iter iterations, finished rows masked)
    fixed = stacked_steihaug_cg(gs, lambda v: torch.einsum("rij,rj->ri", bs, v), radius, host_reads=False, **cg)
    assert torch.equal(fixed.step, result.step) and torch.equal(fixed.codes, result.codes)
    assert torch.equal(fixed.iterations, result.iterations)
    assert torch.equal(fixed.predicted_reduction, result.predicted_reduction)


def test_stacked_cg_rows_stop_at_different_iterations_for_different_reasons():
    n = 6
    spd, g_spd = quadratic(1, n, "spd")
    indefinite, g_ind = quadratic(2, n, "indefinite")
    rows = [
        (torch.eye(n, dtype=torch.float64), g_spd, 100.0),  # one CG iteration reaches the Newton step
        (spd, g_spd, 1e-3),  # leaves the tiny region at once
        (indefinite, g_ind, 50.0),  # negative curvature later on
        (spd, torch.zeros(n, dtype=torch.float64), 1.0),  # zero gradient: nothing to do
        (spd, g_spd, 1e6),  # interior: runs to the tolerance or the limit
    ]
    bs, gs = _stacked([(b, g) for b, g, _ in rows])
    radius = torch.tensor([r for _, _, r in rows], dtype=torch.float64)
    for host_reads in (True, False):
        result = stacked_steihaug_cg(gs, lambda v: torch.einsum("rij,rj->ri", bs, v), radius, max_iter=12,
                                     damping=0.0, rtol=1e-12, host_reads=host_reads)
        assert result.reasons[:4] == [StopReason.CONVERGED, StopReason.BOUNDARY,
                                      StopReason.NEGATIVE_CURVATURE, StopReason.CONVERGED]
        assert result.iterations[:2].tolist() == [1, 1] and int(result.iterations[3]) == 0
        assert int(result.iterations[4]) > 1 and len(set(result.iterations.tolist())) >= 3
        for i, (b, g, r) in enumerate(rows):
            _assert_row_matches_reference(result, i, b, g, r, max_iter=12, damping=0.0, rtol=1e-12)


def test_stacked_cg_non_finite_row_leaves_the_others_alone():
    spd, g = quadratic(3, 5, "spd")
    bs, gs = _stacked([(spd, g), (spd, g)])

    def hvp(v):
        out = torch.einsum("rij,rj->ri", bs, v)
        out[1] = float("nan")
        return out

    result = stacked_steihaug_cg(gs, hvp, torch.tensor([1.0, 1.0], dtype=torch.float64), max_iter=12)
    assert result.reasons[1] == StopReason.NON_FINITE and result.reasons[0] != StopReason.NON_FINITE
    _assert_row_matches_reference(result, 0, spd, g, 1.0, max_iter=12)


@settings(max_examples=100, deadline=None, derandomize=True)
@given(
    rho=st.lists(st.one_of(st.floats(-2.0, 2.0), st.just(-math.inf)), min_size=1, max_size=6),
    boundary=st.lists(st.booleans(), min_size=6, max_size=6),
    radius=st.lists(st.floats(1e-12, 20.0), min_size=6, max_size=6),
)
def test_radius_rule_on_tensors_equals_the_rule_on_floats(rho, boundary, radius):
    config = TrustRegionConfig()
    n = len(rho)
    accepted, new = update_radius(torch.tensor(radius[:n], dtype=torch.float64), torch.tensor(rho, dtype=torch.float64),
                                  torch.tensor(boundary[:n]), config)
    for i in range(n):
        assert (bool(accepted[i]), float(new[i])) == update_radius(radius[i], rho[i], boundary[i], config)


@settings(max_examples=120, deadline=None, derandomize=True)
@given(
    seed=st.integers(0, 10**6),
    n=st.integers(1, 40),
    kind=st.sampled_from(["spd", "indefinite", "negative"]),
    radius=st.floats(1e-3, 1e4),
    max_iter=st.integers(1, 12),
    damping=st.sampled_from([0.0, 1e-3, 0.5]),
)
def test_one_subproblem_matches_the_scalar_reference(seed, n, kind, radius, max_iter, damping):
    # R = 1 (TR, Stage II, sequential replicas), through the one-subproblem view, up to larger
    # problems and radii than the stacked test's: the same stop, the step to rounding
    b, g = quadratic(seed, n, kind)
    step, predicted, iterations, reason = reference_steihaug_cg(g, lambda v: b @ v, radius, max_iter=max_iter,
                                                                damping=damping)
    result = steihaug_cg(g, lambda v: b @ v, radius, max_iter=max_iter, damping=damping)
    assert (result.iterations, result.reason) == (iterations, reason)
    assert torch.allclose(result.step, step, rtol=1e-9, atol=1e-12 * max(1.0, float(step.norm())))
    assert result.predicted_reduction == pytest.approx(predicted, rel=1e-9, abs=1e-12)


def test_one_try_on_rows_judges_each_row_on_its_own():
    """try_rows: a row whose step reached the boundary and did better than predicted is accepted and its
    radius grows to at most the cap; a row that did worse is rejected and shrunk; a row whose solve was
    non-finite is rejected without its trial loss being asked for."""
    from pinn_apts.core.trust_region import StackedCGResult, try_rows

    config = TrustRegionConfig()
    codes = {reason: i for i, reason in enumerate(StopReason)}
    result = StackedCGResult(
        torch.tensor([[0.5, 0.0], [0.0, 0.25], [math.nan, 0.0]], dtype=torch.float64),
        torch.tensor([1.0, 1.0, 1.0], dtype=torch.float64), torch.tensor([2, 3, 1]),
        torch.tensor([codes[StopReason.BOUNDARY], codes[StopReason.CONVERGED], codes[StopReason.NON_FINITE]]))
    asked = []

    def trial_losses(steps, finite):
        asked.append(finite.tolist())
        return torch.where(finite, torch.tensor([1.0, 2.95, 0.0], dtype=torch.float64), math.nan)

    radii = torch.tensor([0.5, 0.5, 0.5], dtype=torch.float64)
    tried = try_rows(torch.full((3,), 3.0, dtype=torch.float64), lambda r: result, trial_losses, radii, 0.8, config)
    assert asked == [[True, True, False]]
    assert tried.accepted.tolist() == [True, False, False]
    assert tried.rho[0] == 2.0 and tried.rho[2] == -math.inf and math.isnan(tried.trial[2])
    # grown by 2 to 1.0, capped at 0.8; the rejected shrunk by half
    assert tried.radii.tolist() == [0.8, 0.25, 0.25]
