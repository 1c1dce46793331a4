import math

import pytest
import torch

from pinn_apts.pde.jet import AutogradJet, MLPJet
from pinn_apts.pde.loss import LossTerms, check_loss_finite, pinn_loss
from pinn_apts.pde.model import MLP
from pinn_apts.pde.problems import get_problem
from pinn_apts.pde.sampling import CollocationSampler


def setup(name="heat"):
    torch.set_default_dtype(torch.float64)
    problem = get_problem(name)
    sampler = CollocationSampler(problem, total_iterations=10, seed=0)
    return problem, sampler, MLP(seed=0)


def test_loss_terms_are_mean_squares():
    problem, sampler, net = setup("burgers")
    batch = sampler.batch(0)
    terms = pinn_loss(net, problem, batch)
    residual = problem.residual(AutogradJet(net, batch.interior))
    assert terms.interior.item() == pytest.approx(residual.square().mean().item(), rel=1e-14)
    initial = (net(batch.initial) - batch.initial_values).square().mean()
    assert terms.initial.item() == pytest.approx(initial.item(), rel=1e-14)
    assert terms.total.item() == pytest.approx((terms.interior + terms.initial + terms.boundary).item(), rel=1e-14)


def test_loss_on_subsets_shares_initial_and_boundary_terms():
    problem, sampler, net = setup("heat")
    batch = sampler.batch(0)
    full = pinn_loss(net, problem, batch)
    parts = sampler.partition(0, 4)  # 1000 points: four parts of 250
    local = [pinn_loss(net, problem, batch, batch.interior[idx]) for idx in parts]
    for terms in local:
        assert terms.initial.item() == full.initial.item() and terms.boundary.item() == full.boundary.item()
    mean_interior = sum(t.interior for t in local) / 4
    assert mean_interior.item() == pytest.approx(full.interior.item(), rel=1e-12)
    assert local[0].interior.item() != pytest.approx(full.interior.item(), rel=1e-6)


def test_loss_gradient_flows_to_parameters():
    problem, sampler, net = setup("laplace")
    pinn_loss(net, problem, sampler.batch(0)).total.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in net.parameters())


def test_check_loss_finite_names_iteration_and_term():
    one = torch.tensor(1.0)
    check_loss_finite(LossTerms(one, one, one, one), 3)
    bad = LossTerms(torch.tensor(math.nan), one, torch.tensor(math.inf), one)
    with pytest.raises(FloatingPointError, match="outer iteration 12: the initial term is inf"):
        check_loss_finite(bad, 12)


def test_mlp_seeded_and_validated():
    a, b, c = MLP(seed=1), MLP(seed=1), MLP(seed=2)
    assert all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters()))
    assert not torch.equal(a.layers[0].weight, c.layers[0].weight)
    assert [l.weight.shape for l in a.layers] == [(20, 2), (20, 20), (20, 20), (1, 20)]
    assert all((l.bias == 0).all() for l in a.layers)
    with pytest.raises(ValueError, match=r"layer_sizes\[1\] must be an integer >= 1"):
        MLP([2, 0, 1])
    with pytest.raises(ValueError, match="at least two widths"):
        MLP([2])


@pytest.mark.parametrize("columns", [(0, 0), (1, 1), (0, 1), (1, 0)])
def test_mlp_jet_matches_autograd(columns):
    torch.set_default_dtype(torch.float64)
    net = MLP((2, 16, 16, 1), seed=3)
    points = torch.rand(50, 2)
    fast, slow = net.jet(points), AutogradJet(net, points)
    assert torch.allclose(fast.u, slow.u, rtol=0, atol=1e-14)
    for i in (0, 1):
        assert torch.allclose(fast.d(i), slow.d(i), rtol=1e-12, atol=1e-13)
    assert torch.allclose(fast.d2(*columns), slow.d2(*columns), rtol=1e-11, atol=1e-12)


def test_mlp_jet_with_batched_weights():
    torch.set_default_dtype(torch.float64)
    nets = [MLP((2, 8, 8, 1), seed=s) for s in range(3)]
    points = torch.rand(3, 20, 2)
    weights = [torch.stack([n.layers[l].weight for n in nets]) for l in range(3)]
    biases = [torch.stack([n.layers[l].bias for n in nets]) for l in range(3)]
    batched = MLPJet(weights, biases, points)
    for r, net in enumerate(nets):
        single = net.jet(points[r])
        assert torch.allclose(batched.u[r], single.u, atol=1e-14)
        assert torch.allclose(batched.d2(1)[r], single.d2(1), atol=1e-13)
        assert torch.allclose(batched.d(0)[r], single.d(0), atol=1e-13)


def test_loss_of_generic_network_uses_autograd():
    problem, sampler, net = setup("burgers")
    batch = sampler.batch(0)
    generic = lambda x: net(x)  # no .jet: derivatives by autograd
    assert pinn_loss(generic, problem, batch).total.item() == pytest.approx(
        pinn_loss(net, problem, batch).total.item(), rel=1e-12
    )


def test_loss_shares_sum_to_the_loss():
    from pinn_apts.pde.loss import pinn_loss_share

    problem, sampler, net = setup("burgers")
    batch = sampler.batch(0)
    parts = batch.partition(4)
    shares = [
        pinn_loss_share(net, problem, batch, torch.cat([batch.interior[parts[d]] for d in ranks]), rank, 2)
        for rank, ranks in enumerate([(0, 1), (2, 3)])
    ]
    full = pinn_loss(net, problem, batch)
    for name in ("total", "interior", "initial", "boundary"):
        assert sum(getattr(s, name) for s in shares).item() == pytest.approx(getattr(full, name).item(), rel=1e-12)
