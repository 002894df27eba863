"""Agent losses, padding masks, target updates, rollout actions and the tanh-Gaussian policy."""

import gymnasium as gym
import numpy as np
import pytest
import torch

from amago_like.agents import Agent, masked_mean
from amago_like.data.dataset import Batch
from amago_like.nets.heads import TanhGaussian
from amago_like.nets.traj_encoders import GRUTrajEncoder, TformerTrajEncoder

OBS_DIM = 5


def make_agent(discrete: bool, traj_encoder_type=TformerTrajEncoder, max_seq_len: int = 12) -> Agent:
    torch.manual_seed(0)
    action_space = gym.spaces.Discrete(3) if discrete else gym.spaces.Box(-1, 1, (2,), np.float32)
    a_dim = 3 if discrete else 2
    return Agent(
        obs_space=gym.spaces.Dict({"observation": gym.spaces.Box(-np.inf, np.inf, (OBS_DIM,), np.float32)}),
        rl2_space=gym.spaces.Box(-np.inf, np.inf, (1 + a_dim,), np.float32),
        action_space=action_space,
        max_seq_len=max_seq_len,
        traj_encoder_type=traj_encoder_type,
    )


def make_batch(agent: Agent, B: int = 4, L: int = 8, lengths=(8, 5, 3, 8), seed: int = 1) -> Batch:
    g = torch.Generator().manual_seed(seed)
    a_dim = agent.action_dim
    if agent.discrete:
        actions = torch.nn.functional.one_hot(torch.randint(0, a_dim, (B, L - 1), generator=g), a_dim).float()
    else:
        actions = torch.rand(B, L - 1, a_dim, generator=g) * 2 - 1
    pad_mask = torch.zeros(B, L, 1, dtype=torch.bool)
    for i, n in enumerate(lengths):
        pad_mask[i, :n] = True
    batch = Batch(
        obs={"observation": torch.randn(B, L, OBS_DIM, generator=g)},
        rl2s=torch.randn(B, L, 1 + a_dim, generator=g),
        time_idxs=torch.arange(L).view(1, L, 1).expand(B, L, 1).clone(),
        pad_mask=pad_mask,
        actions=actions,
        rews=torch.rand(B, L - 1, 1, generator=g),
        dones=torch.zeros(B, L - 1, 1),
    )
    # zero the padding like the data loader does
    for f in ("rl2s", "time_idxs"):
        getattr(batch, f)[~pad_mask.expand_as(getattr(batch, f))] = 0
    batch.obs["observation"][~pad_mask.expand(B, L, OBS_DIM)] = 0
    tmask = pad_mask[:, 1:]
    batch.actions[~tmask.expand_as(batch.actions)] = 0
    batch.rews[~tmask] = 0
    return batch


def losses(agent: Agent, batch: Batch) -> tuple[float, float]:
    torch.manual_seed(123)  # continuous policies sample actions inside the loss
    critic_loss, actor_loss, _ = agent(batch)
    return critic_loss.item(), actor_loss.item()


@pytest.mark.parametrize("discrete", [True, False])
def test_losses_are_finite_and_reach_every_trainable_parameter(discrete):
    agent = make_agent(discrete)
    critic_loss, actor_loss, metrics = agent(make_batch(agent))
    assert torch.isfinite(critic_loss) and torch.isfinite(actor_loss)
    (critic_loss + actor_loss).backward()
    for name, p in agent.named_parameters():
        if p.requires_grad:
            assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert all(p.grad is None for p in agent.target_critics.parameters())
    assert {"critic_loss", "actor_loss", "q_mean", "bc_filter_rate"} <= metrics.keys()


@pytest.mark.parametrize("discrete", [True, False])
def test_padding_content_and_extra_padding_do_not_change_losses(discrete, monkeypatch):
    # sampled actions would differ with the batch shape: make the continuous policy's samples deterministic
    monkeypatch.setattr(TanhGaussian, "rsample", lambda self, n: torch.tanh(self.mean).expand(n, *self.mean.shape))
    agent = make_agent(discrete).eval()  # eval: input normalisation statistics stay fixed
    batch = make_batch(agent)
    base = losses(agent, batch)

    # garbage in padded positions changes nothing
    noisy = make_batch(agent)
    pad = ~noisy.pad_mask
    noisy.obs["observation"] += 50.0 * pad
    noisy.rl2s += 50.0 * pad
    noisy.rews += 50.0 * ~noisy.pad_mask[:, 1:]
    noisy.dones += 1.0 * ~noisy.pad_mask[:, 1:]
    assert losses(agent, noisy) == pytest.approx(base, rel=1e-5, abs=1e-6)

    # four more padded timesteps at the end change nothing either
    B, L = batch.rl2s.shape[:2]
    extra = 4

    def grow(x, n):
        return torch.cat([x, torch.zeros(x.shape[0], n, *x.shape[2:], dtype=x.dtype)], dim=1)

    longer = Batch(
        obs={"observation": grow(batch.obs["observation"], extra)},
        rl2s=grow(batch.rl2s, extra),
        time_idxs=grow(batch.time_idxs, extra),
        pad_mask=grow(batch.pad_mask, extra),
        actions=grow(batch.actions, extra),
        rews=grow(batch.rews, extra),
        dones=grow(batch.dones, extra),
    )
    assert losses(agent, longer) == pytest.approx(base, rel=1e-4, abs=1e-5)


def test_real_data_changes_losses():
    """The masks must not hide real timesteps (guards the padding test against a vacuous pass)."""
    agent = make_agent(True).eval()
    batch = make_batch(agent)
    base = losses(agent, batch)
    batch.rews[0, 0] += 3.0  # a real transition
    assert losses(agent, batch)[0] != pytest.approx(base[0], rel=1e-4)


def test_terminal_transitions_do_not_bootstrap():
    agent = make_agent(True).eval()
    batch = make_batch(agent, lengths=(8, 8, 8, 8))
    batch.dones[:] = 1.0
    torch.manual_seed(0)
    _, _, m_done = agent(batch)
    assert m_done["td_target_mean"] == pytest.approx(masked_mean(batch.rews, batch.transition_mask).item(), rel=1e-5)


def test_soft_sync_moves_targets_by_tau():
    agent = make_agent(False)
    with torch.no_grad():
        for p in agent.critics.parameters():
            p.add_(1.0)
    before = [tp.clone() for tp in agent.target_critics.parameters()]
    agent.soft_sync_targets()
    for b, tp, p in zip(before, agent.target_critics.parameters(), agent.critics.parameters()):
        torch.testing.assert_close(tp, b + agent.tau * (p - b))


@pytest.mark.parametrize("discrete", [True, False])
@pytest.mark.parametrize("encoder", [TformerTrajEncoder, GRUTrajEncoder])
def test_rollout_actions_match_a_full_forward(discrete, encoder):
    """Step-by-step actions with the rollout hidden state equal the greedy actions of a full forward."""
    agent = make_agent(discrete, encoder).eval()
    batch = make_batch(agent, lengths=(8, 8, 8, 8))
    hidden = agent.init_hidden_state(4, torch.device("cpu"))
    stepped = []
    for t in range(8):
        obs = {"observation": batch.obs["observation"][:, t : t + 1]}
        a, hidden = agent.get_actions(
            obs, batch.rl2s[:, t : t + 1], batch.time_idxs[:, t : t + 1], hidden, sample=False
        )
        stepped.append(a)
    with torch.no_grad():
        states, _ = agent.encode(batch.obs, batch.rl2s, batch.time_idxs)
        dist = agent.actor(states)
        full = dist.probs.argmax(-1) if discrete else dist.mode()
    stepped = torch.stack(stepped, dim=1)
    if discrete:
        assert stepped.shape == (4, 8) and torch.equal(stepped, full)
    else:
        assert stepped.shape == (4, 8, 2) and stepped.abs().max() < 1
        torch.testing.assert_close(stepped, full, atol=1e-5, rtol=1e-4)


def test_tanh_gaussian_log_prob_matches_torch():
    torch.manual_seed(0)
    mean, log_std = torch.randn(6, 3), torch.randn(6, 3).clamp(-2, 1)
    ours = TanhGaussian(mean, log_std)
    ref = torch.distributions.TransformedDistribution(
        torch.distributions.Normal(mean, log_std.exp()), [torch.distributions.transforms.TanhTransform()]
    )
    assert ours.rsample(5).abs().max() <= 1
    # compare away from saturation, where float32 tanh cannot be inverted accurately by either
    a = torch.rand(5, 6, 3) * 1.98 - 0.99
    torch.testing.assert_close(ours.log_prob(a), ref.log_prob(a).sum(-1), atol=1e-4, rtol=1e-4)


def test_actor_gamma_must_be_one_of_gammas():
    with pytest.raises(ValueError, match="actor_gamma"):
        Agent(
            obs_space=gym.spaces.Dict({"observation": gym.spaces.Box(-1, 1, (2,))}),
            rl2_space=gym.spaces.Box(-1, 1, (3,)),
            action_space=gym.spaces.Discrete(2),
            max_seq_len=4,
            gammas=(0.9, 0.99),
            actor_gamma=0.95,
        )
