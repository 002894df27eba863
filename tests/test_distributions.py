"""Policy distributions against torch.distributions references, and the Actor's choice of distribution."""

import pytest
import torch
from torch import distributions as D

from amago_like.nets.distributions import Discrete, MultiBinary, ScaledBeta, TanhGaussian, TanhGMM
from amago_like.nets.heads import Actor

B, A, K = 6, 3, 4
TOL = dict(atol=1e-4, rtol=1e-4)


def _unsaturated(n: int) -> torch.Tensor:
    """Actions away from +-1, where float32 tanh / affine maps invert accurately."""
    return torch.rand(n, B, A) * 1.9 - 0.95


def _mc_entropy(ref: D.Distribution, n: int = 20000) -> torch.Tensor:
    return -ref.log_prob(ref.sample((n,))).mean(0)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def test_discrete():
    logits = torch.randn(B, 5)
    ours, ref = Discrete(logits), D.Categorical(logits=logits)
    a = ref.sample((7,))  # (7, B)
    torch.testing.assert_close(ours.log_prob(a), ref.log_prob(a), **TOL)
    torch.testing.assert_close(ours.entropy(), ref.entropy(), **TOL)
    torch.testing.assert_close(ours.probs, ref.probs, **TOL)
    assert ours.sample().shape == (B,) and ours.sample(7).shape == (7, B)
    assert torch.equal(ours.mode(), logits.argmax(-1))
    freq = torch.nn.functional.one_hot(ours.sample(20000), 5).float().mean(0)  # (B, 5)
    torch.testing.assert_close(freq, ref.probs, atol=0.02, rtol=0)


def test_tanh_gaussian():
    mean, log_std = torch.randn(B, A), torch.randn(B, A).clamp(-1.5, 0.5)
    ours = TanhGaussian(mean, log_std)
    ref = D.TransformedDistribution(D.Independent(D.Normal(mean, log_std.exp()), 1), [D.TanhTransform()])
    a = _unsaturated(5)
    torch.testing.assert_close(ours.log_prob(a), ref.log_prob(a), **TOL)
    assert ours.rsample(5).shape == (5, B, A) and ours.rsample(5).abs().max() <= 1
    torch.testing.assert_close(ours.entropy(n=20000), _mc_entropy(ref), atol=0.05, rtol=0.02)
    torch.testing.assert_close(ours.mode(), torch.tanh(mean))


def test_scaled_beta():
    alpha, beta = 1 + torch.rand(B, A) * 4, 1 + torch.rand(B, A) * 4
    ours = ScaledBeta(alpha, beta)
    ref = D.TransformedDistribution(D.Beta(alpha, beta), [D.AffineTransform(-1.0, 2.0)])
    a = _unsaturated(5)
    torch.testing.assert_close(ours.log_prob(a), ref.log_prob(a).sum(-1), **TOL)
    # exact entropy: H(Beta) + log|scale| per dim
    torch.testing.assert_close(ours.entropy(), (D.Beta(alpha, beta).entropy() + torch.log(torch.tensor(2.0))).sum(-1))
    torch.testing.assert_close(ours.entropy(), _mc_entropy(ref).sum(-1), atol=0.05, rtol=0.02)
    x = ours.rsample(4)
    assert x.shape == (4, B, A) and x.abs().max() <= 1
    # the mode maximises the density
    m = ours.mode()
    for eps in (-0.01, 0.01):
        assert (ours.log_prob(m) >= ours.log_prob((m + eps).clamp(-0.999, 0.999)) - 1e-5).all()
    # reparameterised: gradients reach the concentrations
    alpha.requires_grad_(True)
    ScaledBeta(alpha, beta).rsample(3).sum().backward()
    assert alpha.grad is not None and alpha.grad.abs().sum() > 0


def test_tanh_gmm():
    logits, means, log_stds = torch.randn(B, K), torch.randn(B, K, A), torch.randn(B, K, A).clamp(-1.5, 0.0)
    ours = TanhGMM(logits, means, log_stds)
    base = D.MixtureSameFamily(D.Categorical(logits=logits), D.Independent(D.Normal(means, log_stds.exp()), 1))
    ref = D.TransformedDistribution(base, [D.TanhTransform()])
    a = _unsaturated(5)
    torch.testing.assert_close(ours.log_prob(a), ref.log_prob(a), **TOL)
    torch.testing.assert_close(ours.entropy(n=20000), _mc_entropy(ref), atol=0.06, rtol=0.02)
    x = ours.rsample(4)
    assert x.shape == (4, B, A) and x.abs().max() <= 1
    # samples follow the mixture: compare means of the pre-tanh samples
    u = torch.atanh(ours.sample(40000).clamp(-1 + 1e-6, 1 - 1e-6))
    torch.testing.assert_close(u.mean(0), base.mean, atol=0.05, rtol=0)
    k = logits.argmax(-1)
    torch.testing.assert_close(ours.mode(), torch.tanh(means[torch.arange(B), k]))


def test_multi_binary():
    logits = torch.randn(B, A) * 2
    ours, ref = MultiBinary(logits), D.Independent(D.Bernoulli(logits=logits), 1)
    a = ref.sample((7,))
    torch.testing.assert_close(ours.log_prob(a), ref.log_prob(a), **TOL)
    torch.testing.assert_close(ours.entropy(), ref.entropy(), **TOL)
    assert torch.equal(ours.mode(), (logits > 0).float())
    s = ours.sample(5)
    assert s.shape == (5, B, A) and set(s.unique().tolist()) <= {0.0, 1.0}
    logits.requires_grad_(True)
    r = MultiBinary(logits).rsample(3)  # straight-through: values are samples, gradients those of the probabilities
    assert set(r.detach().unique().tolist()) <= {0.0, 1.0}
    r.sum().backward()
    torch.testing.assert_close(logits.grad, 3 * torch.sigmoid(logits) * (1 - torch.sigmoid(logits)))


@pytest.mark.parametrize(
    "kwargs,cls",
    [
        (dict(discrete=True), Discrete),
        (dict(discrete=False, multi_binary=True), MultiBinary),
        (dict(discrete=False, continuous_dist="tanh_gaussian"), TanhGaussian),
        (dict(discrete=False, continuous_dist="beta"), ScaledBeta),
        (dict(discrete=False, continuous_dist="gmm", gmm_components=3), TanhGMM),
    ],
)
def test_actor_builds_each_distribution(kwargs, cls):
    actor = Actor(8, A, hidden=(16,), **kwargs)
    dist = actor(torch.randn(2, 5, 8))
    assert isinstance(dist, cls)
    a = dist.mode()
    assert a.shape == ((2, 5) if cls is Discrete else (2, 5, A))
    logp, ent = dist.log_prob(a), dist.entropy()
    assert logp.shape == ent.shape == (2, 5) and torch.isfinite(logp).all() and torch.isfinite(ent).all()
    (logp.sum() + ent.sum()).backward()
    assert all(p.grad is not None for p in actor.parameters())


def test_actor_rejects_unknown_distribution():
    with pytest.raises(ValueError, match="continuous_dist"):
        Actor(8, A, False, continuous_dist="cauchy")
