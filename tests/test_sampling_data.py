import math
import numpy as np
import pytest
import torch

from pinn_apts.pde.problems import get_problem
from pinn_apts.pde.sampling import CollocationSampler, Curriculum, partition_collocation
from pinn_apts.training.data import PINNDataModule


def make_sampler(**kwargs):
    defaults = dict(problem=get_problem("burgers"), total_iterations=100, resample_every=10, seed=3)
    defaults.update(kwargs)
    return CollocationSampler(**defaults)


def test_same_seed_and_iteration_give_same_points():
    a, b = make_sampler(), make_sampler()
    for k in (0, 7, 35, 99):
        ba, bb = a.batch(k), b.batch(k)
        assert torch.equal(ba.interior, bb.interior)
        assert torch.equal(ba.initial, bb.initial) and torch.equal(ba.boundary_values, bb.boundary_values)
        assert all(torch.equal(x, y) for x, y in zip(a.partition(k, 4), b.partition(k, 4)))
    assert not torch.equal(make_sampler(seed=4).batch(0).interior, a.batch(0).interior)


def test_resampled_every_r_iterations():
    sampler = make_sampler(resample_every=10)
    block = [sampler.batch(k).interior for k in range(10)]
    assert all(torch.equal(block[0], x) for x in block)
    assert not torch.equal(block[0], sampler.batch(10).interior)
    assert torch.equal(sampler.batch(10).interior, sampler.batch(19).interior)
    every = make_sampler(resample_every=1)
    assert not torch.equal(every.batch(0).interior, every.batch(1).interior)


def test_partition_changes_every_iteration():
    sampler = make_sampler()
    assert not all(torch.equal(x, y) for x, y in zip(sampler.partition(0, 4), sampler.partition(1, 4)))


def test_curriculum_switch():
    sampler = make_sampler(total_iterations=100)
    assert sampler.curriculum.switch_iteration(100) == 30
    early, late = sampler.batch(29), sampler.batch(30)
    assert (len(early.interior), len(early.initial), len(early.boundary)) == (1000, 800, 50)
    assert (len(late.interior), len(late.initial), len(late.boundary)) == (1000, 100, 100)
    custom = make_sampler(curriculum=Curriculum((64, 32, 8), (128, 16, 4), 0.5), total_iterations=10)
    assert custom.sizes(4) == (64, 32, 8) and custom.sizes(5) == (128, 16, 4)
    assert make_sampler(curriculum=Curriculum(fraction=0.0)).sizes(0) == (1000, 100, 100)
    with pytest.raises(ValueError, match=r"curriculum_fraction must lie in \[0, 1\]"):
        Curriculum(fraction=1.5)


@pytest.mark.parametrize("n,parts", [(1000, 4), (1001, 4), (10, 3), (7, 7), (5, 1)])
def test_partition_is_disjoint_cover_with_balanced_sizes(n, parts):
    pieces = partition_collocation(n, parts, np.random.default_rng(0))
    assert len(pieces) == parts
    sizes = [len(p) for p in pieces]
    assert max(sizes) - min(sizes) <= 1
    assert torch.equal(torch.sort(torch.cat(pieces)).values, torch.arange(n))


def test_partition_bad_input():
    with pytest.raises(ValueError, match=r"num_parts \(D\) must be an integer >= 1"):
        partition_collocation(10, 0, np.random.default_rng(0))
    with pytest.raises(ValueError, match="must not exceed the number of interior points"):
        partition_collocation(3, 4, np.random.default_rng(0))


def test_datamodule_bad_input():
    with pytest.raises(ValueError, match="unknown problem"):
        PINNDataModule("navier")
    with pytest.raises(ValueError, match=r"early_sizes N_IC must be an integer >= 1"):
        PINNDataModule("heat", early_sizes=(100, 0, 10))
    with pytest.raises(ValueError, match=r"late_sizes N_BC must be an integer >= 3"):
        PINNDataModule("laplace", late_sizes=(100, 10, 2))
    with pytest.raises(ValueError, match=r"early_sizes must be three integers"):
        PINNDataModule("heat", early_sizes=(100, 10))
    with pytest.raises(ValueError, match=r"resample_every \(r\) must be an integer >= 1"):
        PINNDataModule("heat", resample_every=0)
    with pytest.raises(ValueError, match=r"curriculum_fraction must lie in \[0, 1\]"):
        PINNDataModule("heat", curriculum_fraction=-0.1)
    dm = PINNDataModule("heat")
    with pytest.raises(ValueError, match="set trainer.max_steps"):
        dm.setup("fit")


def test_datamodule_stream_starts_at_iteration():
    dm = PINNDataModule("heat", total_iterations=25, seed=1)
    dm.setup("fit")
    batches = list(dm.train_dataloader())
    assert [b.iteration for b in batches] == list(range(25))
    assert torch.equal(batches[13].interior, dm.sampler.batch(13).interior)


def test_residual_sampling_puts_points_where_the_residual_is_large():
    """RAD: with the residual 100 in a band of 10% of the candidates and 0 elsewhere (floor 1), a point
    of the band is 11 times as likely as one outside (100 over the mean 10, plus 1): drawn without
    replacement, about half of the chosen points lie in it. The same rng gives the same points; power 0,
    or non-finite residuals, choose uniformly (10% in the band)."""
    from pinn_apts.pde.sampling import ResidualSampling

    candidates = get_problem("burgers").sample_interior(10000, np.random.default_rng(0))
    band = candidates[:, 1].abs() < 0.1  # x in (-0.1, 0.1): a tenth of [-1, 1]
    residuals = torch.where(band, 100.0, 0.0).double()
    sampling = ResidualSampling(pool=10000)
    chosen = sampling.choose(candidates, residuals, 1000, np.random.default_rng(1))
    assert chosen.shape == (1000, 2) and len(torch.unique(chosen, dim=0)) == 1000  # without replacement
    share = float((chosen[:, 1].abs() < 0.1).double().mean())
    assert 0.4 < share < 0.56
    assert torch.equal(chosen, sampling.choose(candidates, residuals, 1000, np.random.default_rng(1)))
    for uniform, values in ((ResidualSampling(power=0.0), residuals), (sampling, residuals * math.nan)):
        share = float((uniform.choose(candidates, values, 1000, np.random.default_rng(1))[:, 1].abs() < 0.1).double().mean())
        assert 0.05 < share < 0.15
    with pytest.raises(ValueError, match=r"residual_pool \(10000\) must be at least N_coll \(20000\)"):
        sampling.choose(candidates, residuals, 20000, np.random.default_rng(1))


def test_residual_sampling_settings_are_checked():
    with pytest.raises(ValueError, match="interior_sampling must be 'uniform' or 'residual', got 'rar'"):
        PINNDataModule("burgers", interior_sampling="rar")
    with pytest.raises(ValueError, match=r"residual_pool must be at least the largest N_coll \(1000\), got 500"):
        PINNDataModule("burgers", interior_sampling="residual", residual_pool=500)
    with pytest.raises(ValueError, match="residual_power must be a finite number >= 0, got -1"):
        PINNDataModule("burgers", interior_sampling="residual", residual_power=-1)
    with pytest.raises(ValueError, match="residual_floor must be a finite number >= 0, got inf"):
        PINNDataModule("burgers", interior_sampling="residual", residual_floor=math.inf)
