"""Agent losses, padding masks, target updates, rollout actions, PopArt, policy distributions and the
classification critic of MultiTaskAgent."""

import copy
import functools
from typing import Any

import gin
import gymnasium as gym
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from amago_like.agents import Agent, MultiTaskAgent, masked_mean, n_step_targets
from amago_like.checks import ConfigTypeError
from amago_like.data.dataset import Batch
from amago_like.nets.averaging import AveragedPolicy
from amago_like.nets.heads import TanhGaussian
from amago_like.nets.novelty import AUTO_NOVELTY_BONUS, episodic_novelty, resolve_novelty_bonus
from amago_like.nets.traj_encoders import GRUTrajEncoder, IdentityTrajEncoder, TformerTrajEncoder
from amago_like.nets.tstep_encoders import CNNTstepEncoder
from amago_like.nets.values import ValueBins

OBS_DIM = 5


pytestmark = pytest.mark.usefixtures("one_thread")


def make_agent(
    discrete: bool | str, traj_encoder_type=TformerTrajEncoder, max_seq_len: int = 12, agent_type=Agent, **kw
) -> Agent:
    """discrete: True (Discrete(3)), False (Box 2-d) or "multi_binary" (MultiBinary(3))."""
    torch.manual_seed(0)
    if discrete == "multi_binary":
        action_space, a_dim = gym.spaces.MultiBinary(3), 3
    elif discrete:
        action_space, a_dim = gym.spaces.Discrete(3), 3
    else:
        action_space, a_dim = gym.spaces.Box(-1, 1, (2,), np.float32), 2
    return agent_type(
        obs_space=gym.spaces.Dict({"observation": gym.spaces.Box(-np.inf, np.inf, (OBS_DIM,), np.float32)}),
        rl2_space=gym.spaces.Box(-np.inf, np.inf, (1 + a_dim,), np.float32),
        action_space=action_space,
        max_seq_len=max_seq_len,
        traj_encoder_type=traj_encoder_type,
        **kw,
    )


def make_batch(agent: Agent, B: int = 4, L: int = 8, lengths=(8, 5, 3, 8), seed: int = 1) -> Batch:
    g = torch.Generator().manual_seed(seed)
    a_dim = agent.action_dim
    if agent.discrete:
        actions = torch.nn.functional.one_hot(torch.randint(0, a_dim, (B, L - 1), generator=g), a_dim).float()
    elif agent.multi_binary:
        actions = torch.randint(0, 2, (B, L - 1, a_dim), generator=g).float()
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
    # ... and so would the sampled entropy estimate that the (default, learned) entropy bonus uses
    monkeypatch.setattr(TanhGaussian, "_rsample_u", lambda self, n: self.mean.expand(n, *self.mean.shape))
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
    agent = make_agent(True, novelty_bonus=0.0).eval()  # the targets are then the rewards alone
    batch = make_batch(agent, lengths=(8, 8, 8, 8))
    batch.dones[:] = 1.0
    torch.manual_seed(0)
    _, _, m_done = agent(batch)
    assert m_done["td_target_mean"].item() == pytest.approx(
        masked_mean(batch.rews, batch.transition_mask).item(), rel=1e-5
    )


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
@pytest.mark.parametrize("encoder", [TformerTrajEncoder, GRUTrajEncoder, IdentityTrajEncoder])
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


@pytest.mark.parametrize("encoder", [TformerTrajEncoder, IdentityTrajEncoder])
def test_targets_and_the_averaged_policy_follow_an_update_whatever_the_trunk_holds(encoder):
    """A memoryless trunk (IdentityTrajEncoder) has no parameters to average; the heads still move."""
    agent = make_agent(False, encoder)
    assert agent.averaged_policy is not None
    before = [p.clone() for p in agent.averaged_policy.parts["actor"].parameters()]
    loss, _ = agent.loss(make_batch(agent, lengths=(8, 8)))
    loss.backward()
    with torch.no_grad():
        for p in agent.parameters():
            p.add_(0.1)
    agent.soft_sync_targets()
    after = list(agent.averaged_policy.parts["actor"].parameters())
    assert all(not torch.equal(b, a) for b, a in zip(before, after))


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


def _train_bc(actions: torch.Tensor | float, steps: int = 150, **agent_kw) -> tuple[dict[str, float], Any, Agent]:
    """Pure BC (no critic signal) on the given actions; returns (last metrics, final policy, agent).
    No entropy target unless given: these tests are about what BC alone does to the policy. The critics keep the
    width these tests were tuned with: which transitions the filter passes depends on the random critic."""
    gin.bind_parameter("CriticEnsemble.hidden", (256, 256))  # (the conftest fixture clears gin after the test)
    agent = make_agent(False, online_coeff=0.0, offline_coeff=1.0, **{"target_entropy": None, **agent_kw})
    batch = make_batch(agent)
    batch.actions = torch.broadcast_to(torch.as_tensor(actions, dtype=torch.float32), batch.actions.shape).clone()
    opt = torch.optim.Adam(agent.param_groups(1e-3))
    for _ in range(steps):
        with torch.no_grad():  # let BC act on every transition, not only those the (random) critic favours
            agent.critics.out.bias.fill_(0.0)
        _, actor_loss, metrics = agent(batch)
        opt.zero_grad()
        actor_loss.backward()
        opt.step()
    with torch.no_grad():
        states, _ = agent.encode(batch.obs, batch.rl2s, batch.time_idxs, pad_mask=batch.pad_mask)
        return metrics, agent.actor(states[:, :-1]), agent


def test_learned_entropy_coeff_holds_entropy_against_saturating_bc():
    # actions pinned at the edge of [-1, 1]: the fixed point of a policy imitating its own bang-bang actions
    learned = {"target_entropy": -2.0, "entropy_coeff": 0.01, "entropy_coeff_lr": 0.05}
    # 300 steps: by 150 the free policy's mean is only just past 2, and whether the held one's is below half of
    # that depended on the CPU's kernels (1.30 against 2.19 on an AVX-512 machine)
    free, free_pi, _ = _train_bc(0.9999, steps=300)
    held, held_pi, agent = _train_bc(0.9999, steps=300, **learned)
    assert free["policy_entropy"] < -6.0 and free_pi.mean.abs().mean() > 2.0  # into the tanh's flat tails
    assert held["policy_entropy"] > -5.0  # the learned coefficient pulls entropy towards -2 ...
    assert held_pi.mean.abs().mean() < free_pi.mean.abs().mean() / 2
    assert agent.log_entropy_coeff.exp().item() > 0.01  # ... by raising the coefficient


def test_bc_action_limit_keeps_clipped_noise_from_widening_the_policy():
    # exploration noise clipped to exactly +-1, in either direction: BC on it drives the std to its cap
    signs = torch.sign(torch.randn(4, 7, 2, generator=torch.Generator().manual_seed(3)))
    # the signs are random per transition, so the limited policy narrows only once the trunk has memorised them:
    # three transformer layers without token shift do within 150 steps (two, today's default, do not)
    trunk = {"traj_encoder_type": functools.partial(TformerTrajEncoder, n_layers=3, token_shift=False)}
    _, free_pi, _ = _train_bc(signs, **trunk)
    _, limited_pi, _ = _train_bc(signs, bc_action_limit=0.99, **trunk)
    assert free_pi.std.mean() > 5.0
    assert limited_pi.std.mean() < free_pi.std.mean() / 2
    with pytest.raises(ValueError, match="bc_action_limit"):
        make_agent(False, bc_action_limit=1.5)


def test_learned_entropy_coeff_falls_when_entropy_is_above_target():
    agent = make_agent(False, target_entropy=-50.0, entropy_coeff=0.1)
    groups = agent.param_groups(1e-4)
    assert [g["lr"] for g in groups] == [1e-4, agent.entropy_coeff_lr]
    assert sum(len(g["params"]) for g in groups) == len(list(agent.parameters()))
    opt = torch.optim.Adam(groups)
    for _ in range(20):
        _, actor_loss, metrics = agent(make_batch(agent))
        opt.zero_grad()
        actor_loss.backward()
        opt.step()
    assert metrics["entropy_coeff"].item() < 0.1 * 0.95


@pytest.mark.parametrize("discrete", [True, False])
def test_actor_lr_scale_gives_the_actor_head_its_own_rate_and_every_parameter_one_group(discrete):
    agent = make_agent(discrete, actor_lr_scale=0.3)
    groups = agent.param_groups(1e-4)
    ids = [id(p) for g in groups for p in g["params"]]
    assert sorted(ids) == sorted(id(p) for p in agent.parameters())  # each parameter in exactly one group
    actor = next(g for g in groups if {id(p) for p in g["params"]} == {id(p) for p in agent.actor.parameters()})
    assert actor["lr"] == pytest.approx(3e-5) and groups[0]["lr"] == 1e-4
    assert len(make_agent(discrete).param_groups(1e-4)) == len(groups) - 1  # scale 1: no group of its own
    for bad in (0.0, -0.5, float("nan")):
        with pytest.raises(ValueError, match="Agent.actor_lr_scale must be > 0"):
            make_agent(discrete, actor_lr_scale=bad)
    with pytest.raises(TypeError, match="Agent.actor_lr_scale must be a number"):
        make_agent(discrete, actor_lr_scale="0.5")


def test_counts_and_rates_out_of_range_are_refused_with_their_name():
    for name, bad in [("num_actions_for_value", 0), ("n_step", -1), ("num_critics", 0), ("tau", 0.0), ("tau", 1.5)]:
        with pytest.raises(ValueError, match=f"Agent.{name} must be"):
            make_agent(False, **{name: bad})
    for name, bad in [("num_actions_for_value", 2.0), ("n_step", 1.5), ("tau", "0.01"), ("bc_action_limit", True)]:
        with pytest.raises(ConfigTypeError, match=f"Agent.{name} must be"):
            make_agent(False, **{name: bad})


def _n_step_by_hand(r, d, length, v, gamma, n):
    """One row, written as the definition: sum rewards from t until n steps, a done, or the last real one."""
    out = []
    for t in range(length):
        y, k = 0.0, 0
        while True:
            y += gamma**k * r[t + k]
            if d[t + k]:
                break
            if k == n - 1 or t + k + 1 == length:
                y += gamma ** (k + 1) * v[t + k]
                break
            k += 1
        out.append(y)
    return out


@given(
    st.integers(1, 9),
    st.integers(1, 5),
    st.lists(st.floats(-2, 2), min_size=9, max_size=9),
    st.lists(st.booleans(), min_size=9, max_size=9),
    st.integers(0, 2**16),
)
@settings(max_examples=60, deadline=None)
def test_n_step_targets_match_their_definition(length, n, rews, dones, seed):
    v = torch.randn(9, generator=torch.Generator().manual_seed(seed))
    gammas = torch.tensor([0.9, 0.5])
    rews_t, dones_t = (torch.tensor(x, dtype=torch.float32).view(1, 9, 1) for x in (rews, dones))
    real = (torch.arange(9) < length).view(1, 9, 1)
    got = n_step_targets(rews_t, dones_t, real, v.view(1, 9, 1).expand(1, 9, 2), gammas, n)
    for g, gamma in enumerate(gammas.tolist()):
        want = _n_step_by_hand(rews, dones, length, v.tolist(), gamma, n)
        assert got[0, :length, g].tolist() == pytest.approx(want, rel=1e-5, abs=1e-5)


def test_one_step_targets_are_the_td_zero_targets():
    rews, dones = torch.randn(3, 6, 1), (torch.rand(3, 6, 1) < 0.3).float()
    v_next, gammas = torch.randn(3, 6, 2), torch.tensor([0.9, 0.99])
    real = torch.ones(3, 6, 1, dtype=torch.bool)
    want = rews + gammas * (1.0 - dones) * v_next
    assert torch.equal(n_step_targets(rews, dones, real, v_next, gammas, 1), want)


def test_n_step_agent_trains():
    agent = make_agent(True, n_step=3)
    batch = make_batch(agent, lengths=(8, 5, 8, 3))
    critic_loss, actor_loss, _ = agent(batch)
    (critic_loss + actor_loss).backward()
    assert torch.isfinite(critic_loss) and torch.isfinite(actor_loss)


def _novelty_by_hand(xs: list[list[float]], length: int) -> list[float]:
    """One row as the definition reads: each next observation's distance to the nearest earlier one."""
    return [min(float(np.linalg.norm(np.subtract(xs[t + 1], xs[j]))) for j in range(t + 1)) for t in range(length - 1)]


@given(
    st.lists(st.lists(st.integers(-3, 3), min_size=2, max_size=2), min_size=2, max_size=8),
    st.lists(st.integers(1, 8), min_size=1, max_size=3),
)
@settings(max_examples=60, deadline=None)
def test_episodic_novelty_is_the_distance_to_the_nearest_earlier_observation_over_its_mean(cells, lengths):
    """Grid walks (integer cells): revisits score exactly 0, padding scores 0, the rest is d / mean(d) capped at 1."""
    B, L = len(lengths), len(cells)
    lengths = [min(n, L) for n in lengths]
    x = torch.tensor(cells, dtype=torch.float32).expand(B, L, 2)
    pad_mask = (torch.arange(L).view(1, L) < torch.tensor(lengths).view(B, 1)).unsqueeze(-1)
    got = episodic_novelty({"pos": x}, pad_mask)[..., 0]  # (B, L-1)
    rows = [_novelty_by_hand(cells, n) for n in lengths]
    mean = sum(map(sum, rows)) / max(sum(map(len, rows)), 1)
    for b, row in enumerate(rows):
        want = [min(d / mean, 1.0) if mean > 0 else 0.0 for d in row] + [0.0] * (L - 1 - len(row))
        assert got[b].tolist() == pytest.approx(want, abs=1e-5)
        for t in range(len(row)):  # a cell seen before in the row is no bonus at all
            if cells[t + 1] in cells[: t + 1]:
                assert got[b, t].item() == 0.0


def test_novelty_bonus_raises_td_targets_where_observations_are_new_only():
    """The bonus raises the TD targets where observations are new; a constant observation earns none."""
    agent = make_agent(True, novelty_bonus=0.0).eval()
    batch = make_batch(agent, lengths=(8, 8, 8, 8))
    torch.manual_seed(0)
    base = agent(batch)[2]["td_target_mean"].item()
    agent.novelty.strength = 0.5
    torch.manual_seed(0)
    assert agent(batch)[2]["td_target_mean"].item() > base + 0.1  # random observations are all new
    batch.obs["observation"][:] = 1.0
    agent.novelty.strength, plain = 0.0, agent(batch)[2]["td_target_mean"].item()
    agent.novelty.strength = 0.5
    assert agent(batch)[2]["td_target_mean"].item() == pytest.approx(plain)
    with pytest.raises(ValueError, match="Agent.novelty_bonus must be >= 0"):
        make_agent(True, novelty_bonus=-0.1)


def test_soft_targets_add_the_entropy_the_policy_keeps_at_the_next_state():
    """SAC's soft value: each TD target gains gamma * entropy_coeff * H(pi(s_t+1)), and nothing else changes."""
    agent = make_agent(True, novelty_bonus=0.0, entropy_coeff=0.5).eval()
    batch = make_batch(agent)
    plain = agent(batch)[2]
    agent.soft_targets = True
    soft = agent(batch)[2]
    with torch.no_grad():
        states, _ = agent.encode(batch.obs, batch.rl2s, batch.time_idxs, pad_mask=batch.pad_mask)
        h_next = agent.actor(states[:, 1:]).entropy().unsqueeze(-1)  # (B, L-1, 1)
    gamma = agent.gammas[agent.actor_gamma_idx]
    expected = masked_mean(gamma * 0.5 * h_next, batch.transition_mask)
    assert expected > 0.1
    assert soft["td_target_mean"].item() == pytest.approx(plain["td_target_mean"].item() + expected.item(), rel=1e-5)
    assert soft["actor_loss"].item() == pytest.approx(plain["actor_loss"].item())  # the actor's objective is as it was


def test_a_fading_novelty_bonus_falls_linearly_to_nothing_over_its_fraction_of_the_run():
    agent = make_agent(True, novelty_bonus=0.5, novelty_fade=0.5).eval()
    batch = make_batch(agent, lengths=(8, 8, 8, 8))

    def td_target_mean(progress: float, bonus: float = 0.5) -> float:
        agent.training_progress.fill_(progress)
        agent.novelty.strength = bonus
        torch.manual_seed(0)
        return agent(batch)[2]["td_target_mean"].item()

    plain, start = td_target_mean(0.0, bonus=0.0), td_target_mean(0.0)
    assert start > plain + 0.1
    assert td_target_mean(0.125) == pytest.approx(plain + 0.75 * (start - plain), rel=1e-4)
    assert td_target_mean(0.5) == pytest.approx(plain) == td_target_mean(0.9)  # none from half the run on
    for bad in (0.0, 1.5):
        with pytest.raises(ValueError, match=r"Agent.novelty_fade must be in \(0, 1\] or None"):
            make_agent(True, novelty_fade=bad)


def test_auto_novelty_bonus_is_on_for_flat_observations_only():
    flat = gym.spaces.Dict({"observation": gym.spaces.Box(-1, 1, (5,), np.float32)})
    image = gym.spaces.Dict({"image": gym.spaces.Box(0, 255, (8, 8, 3), np.uint8), "observation": flat["observation"]})
    assert resolve_novelty_bonus("auto", flat) == AUTO_NOVELTY_BONUS > 0
    assert resolve_novelty_bonus("auto", image) == 0.0
    assert resolve_novelty_bonus(0.25, image) == 0.25  # a number is taken as given
    with pytest.raises(ValueError, match='novelty_bonus must be a number >= 0 or "auto"'):
        resolve_novelty_bonus("on", flat)
    with pytest.raises(ConfigTypeError, match="Agent.novelty_bonus must be a number"):
        resolve_novelty_bonus(True, flat)


def test_target_entropy_needs_a_positive_starting_coeff():
    with pytest.raises(ValueError, match="entropy_coeff"):
        make_agent(False, target_entropy=-2.0, entropy_coeff=0.0)


def test_auto_target_entropy_is_minus_action_dim_for_continuous_actions_only():
    continuous = make_agent(False)  # Box(2): SAC's target, a learned coefficient from 0.1
    assert continuous.target_entropy == -2.0
    assert continuous.log_entropy_coeff.exp().item() == pytest.approx(0.1)
    _, _, metrics = continuous(make_batch(continuous))
    assert "entropy_coeff" in metrics
    for kind in (True, "multi_binary"):  # no target: a fixed coefficient, off unless bound
        agent = make_agent(kind)
        assert agent.target_entropy is None and agent.log_entropy_coeff is None and agent.entropy_coeff == 0.0
    assert make_agent(True, entropy_coeff=0.01).entropy_coeff == 0.01
    off = make_agent(False, target_entropy=None)
    assert off.log_entropy_coeff is None and off.entropy_coeff == 0.0
    with pytest.raises(ValueError, match='"auto"'):
        make_agent(False, target_entropy="sac")


# ------------------------------------------------------------------ PopArt
def _critic_probe(agent: Agent, seed: int = 5):
    g = torch.Generator().manual_seed(seed)
    d = agent.traj_encoder.emb_dim
    if agent.discrete:
        actions = torch.eye(agent.action_dim)[torch.randint(0, agent.action_dim, (6, 5), generator=g)]
        return torch.randn(6, 5, d, generator=g), actions
    return torch.randn(6, 5, d, generator=g), torch.rand(6, 5, agent.action_dim, generator=g) * 2 - 1


@torch.no_grad()
def _unnormalised_q(agent: Agent, s, a):
    return agent.q_values(agent.critics(s, a)), agent.q_values(agent.target_critics(s, a))  # 2 x (C, 6, 5, G)


@pytest.mark.parametrize("discrete", [False, True])
def test_popart_updates_preserve_unnormalised_predictions(discrete):
    gin.bind_parameter("CriticEnsemble.discrete_head", True)  # discrete: one output per action and gamma
    agent = make_agent(discrete)
    assert agent.critics.per_action == discrete
    assert agent.popart is not None and "popart.mean" in agent.state_dict() and "popart.sq_mean" in agent.state_dict()
    with torch.no_grad():  # targets differ from the critics' outputs so the target heads matter too
        agent.target_critics.out.bias.add_(0.3)
    s, a = _critic_probe(agent)
    batch = make_batch(agent)
    for scale in (1.0, 40.0, 0.05):  # move the statistics a lot, both ways
        batch.rews = batch.rews * scale
        before = _unnormalised_q(agent, s, a)
        stats = agent.popart.mean.clone(), agent.popart.std.clone()
        _, _, metrics = agent(batch)
        assert not torch.allclose(agent.popart.std, stats[1])
        after = _unnormalised_q(agent, s, a)
        for x, y in zip(before, after):
            torch.testing.assert_close(y, x, atol=1e-4, rtol=1e-4)
    assert {"popart_mean", "popart_std"} <= metrics.keys()
    assert metrics["popart_std"].item() == pytest.approx(agent.popart.std[agent.actor_gamma_idx].item())


def test_popart_first_update_is_the_batch_mean_and_the_loss_is_in_normalised_units():
    agent = make_agent(True, gammas=(0.99,), actor_gamma=0.99)
    agent.tstep_encoder.eval()  # keep the input statistics fixed: only PopArt's may move
    plain = copy.deepcopy(agent)
    plain.popart = None  # same weights, regression on unnormalised targets
    batch = make_batch(agent)
    batch.rews = batch.rews * 100.0 + 500.0
    plain_loss, _, _ = plain(batch)
    _, _, m = agent(batch)
    assert m["popart_mean"].item() == pytest.approx(m["td_target_mean"].item(), rel=1e-5)  # first step: exact average
    assert agent.popart.updates.item() == 1
    agent.eval()
    stats = {k: v.clone() for k, v in agent.popart.state_dict().items()}
    loss, _, _ = agent(batch)  # eval: statistics frozen
    assert all(torch.equal(v, stats[k]) for k, v in agent.popart.state_dict().items())
    # predictions were preserved, so the loss is the unnormalised squared error in units of std^2
    assert loss.item() == pytest.approx(plain_loss.item() / agent.popart.std.item() ** 2, rel=1e-4)


def test_popart_ignores_padded_transitions():
    clean = make_agent(True)
    noisy_agent = copy.deepcopy(clean)
    batch, noisy = make_batch(clean), make_batch(clean)
    pad = ~noisy.pad_mask[:, 1:]
    noisy.rews += 1e4 * pad
    noisy.dones += 1.0 * pad
    noisy.obs["observation"] += 50.0 * ~noisy.pad_mask
    torch.manual_seed(0)  # the same dropout masks in both passes
    clean(batch)
    torch.manual_seed(0)
    noisy_agent(noisy)
    for k, v in clean.popart.state_dict().items():
        torch.testing.assert_close(noisy_agent.popart.state_dict()[k], v)
    # a real transition does move the statistics (the check above is not vacuous)
    real = make_batch(clean)
    real.rews[0, 0] += 1e4
    other = copy.deepcopy(noisy_agent)
    other(real), noisy_agent(make_batch(clean))
    assert not torch.allclose(other.popart.mean, noisy_agent.popart.mean)


def test_popart_skips_non_finite_targets():
    agent = make_agent(False)
    agent(make_batch(agent))
    stats = {k: v.clone() for k, v in agent.popart.state_dict().items()}
    out = [p.clone() for p in agent.critics.out.parameters()]
    agent.reward_multiplier = float("nan")
    agent(make_batch(agent))
    for k, v in agent.popart.state_dict().items():
        assert torch.equal(v, stats[k]), k
    assert all(torch.equal(a, b) for a, b in zip(out, agent.critics.out.parameters()))


def test_popart_off():
    agent = make_agent(False, popart=False)
    assert agent.popart is None and not any(k.startswith("popart") for k in agent.state_dict())
    _, _, m = agent(make_batch(agent))
    assert "popart_mean" not in m


# ------------------------------------------------------------------ policy distributions in the agent
@pytest.mark.parametrize("dist", ["beta", "gmm", "multi_binary"])
def test_agent_trains_and_acts_with_each_distribution(dist):
    if dist != "multi_binary":
        gin.parse_config(f"Actor.continuous_dist = '{dist}'")
    agent = make_agent("multi_binary" if dist == "multi_binary" else False)
    critic_loss, actor_loss, m = agent(make_batch(agent))
    assert torch.isfinite(critic_loss) and torch.isfinite(actor_loss) and torch.isfinite(m["policy_entropy"])
    (critic_loss + actor_loss).backward()
    for name, p in agent.named_parameters():
        if p.requires_grad:
            assert p.grad is not None and p.grad.abs().sum() > 0, name
    agent.eval()
    batch = make_batch(agent, lengths=(8, 8, 8, 8))
    hidden = agent.init_hidden_state(4, torch.device("cpu"))
    obs = {"observation": batch.obs["observation"][:, :1]}
    for sample in (True, False):
        a, _ = agent.get_actions(obs, batch.rl2s[:, :1], batch.time_idxs[:, :1], hidden, sample=sample)
        assert a.shape == (4, agent.action_dim)
        if dist == "multi_binary":
            assert a.dtype == torch.long and set(a.unique().tolist()) <= {0, 1}
        else:
            assert a.abs().max() <= 1


# ------------------------------------------------------------------ MultiTaskAgent (classification critic)
def test_two_hot_round_trip_and_clipping():
    bins = ValueBins(num_bins=41, limit=5.0)
    x = torch.cat([torch.linspace(-7.0, 7.0, 301), torch.tensor([-5.0, 5.0, 0.0, 4.9999, -4.75])])
    probs = bins.two_hot(x)  # (N, 41)
    assert probs.shape == (x.shape[0], 41) and (probs >= 0).all()
    torch.testing.assert_close(probs.sum(-1), torch.ones(x.shape[0]))
    assert ((probs > 0).sum(-1) <= 2).all()
    torch.testing.assert_close(bins.decode(probs), x.clamp(-5.0, 5.0), atol=1e-5, rtol=0)
    edge = bins.two_hot(torch.tensor([5.0, 100.0, -100.0]))  # at and beyond the edges: all mass on the end bin
    assert edge[0, -1] == 1.0 and edge[1, -1] == 1.0 and edge[2, 0] == 1.0


def test_hl_gauss_target():
    bins = ValueBins(num_bins=64, limit=8.0, sigma=0.75)
    x = torch.linspace(-7.0, 7.0, 201)
    probs = bins.hl_gauss(x)
    assert (probs >= 0).all()
    torch.testing.assert_close(probs.sum(-1), torch.ones_like(x))
    torch.testing.assert_close(bins.decode(probs), x, atol=1e-3, rtol=0)
    spread = (probs * (bins.centers - x[:, None]) ** 2).sum(-1).sqrt()  # std ~ sigma * bin width
    assert spread.mean().item() == pytest.approx(0.75 * bins.width, rel=0.1)
    far = bins.hl_gauss(torch.tensor([50.0]))  # clipped to the edge, still a distribution
    assert far.sum().item() == pytest.approx(1.0) and far.argmax().item() == 63


TINY = """
TformerTrajEncoder.d_model = 16
TformerTrajEncoder.n_layers = 1
TformerTrajEncoder.n_heads = 2
TformerTrajEncoder.d_ff = 32
FFTstepEncoder.d_hidden = 16
FFTstepEncoder.d_output = 16
Actor.hidden = (32,)
CriticEnsemble.hidden = (32, 32)
"""


@pytest.mark.parametrize("value_target,discrete", [("two_hot", False), ("hl_gauss", True)])
def test_multitask_agent_trains_on_a_fixed_batch(value_target, discrete):
    gin.parse_config(TINY)
    agent = make_agent(discrete, agent_type=MultiTaskAgent, num_bins=32, bin_limit=5.0, value_target=value_target)
    assert agent.popart is None and agent.critics.num_bins == 32
    batch = make_batch(agent, seed=3)
    batch.rews = batch.rews * 10.0  # returns beyond 1, so symlog matters
    opt = torch.optim.Adam(agent.parameters(), lr=3e-3)
    losses_seen, gaps = [], []
    for _ in range(50):
        critic_loss, actor_loss, m = agent(batch)
        opt.zero_grad()
        (critic_loss + actor_loss).backward()
        opt.step()
        agent.soft_sync_targets()
        losses_seen.append(critic_loss.item())
        gaps.append(abs(m["q_mean"] - m["td_target_mean"]).item())
    assert np.isfinite(losses_seen).all()
    assert np.mean(losses_seen[-5:]) < 0.6 * np.mean(losses_seen[:5]), losses_seen
    assert gaps[-1] < 0.3 * gaps[0], gaps  # Q = symexp(E[bin]) moves to the (unnormalised) targets


def test_multitask_agent_options():
    with pytest.raises(ValueError, match="value_target"):
        make_agent(False, agent_type=MultiTaskAgent, value_target="mse")
    with pytest.raises(ValueError, match="PopArt"):
        make_agent(False, agent_type=MultiTaskAgent, popart=True)
    gin.parse_config("MultiTaskAgent.num_bins = 16\nMultiTaskAgent.bin_limit = 3.0\nAgent.num_critics = 3")
    agent = make_agent(True, agent_type=MultiTaskAgent)
    assert agent.bins.num_bins == 16 and agent.bins.limit == 3.0 and agent.critics.num_critics == 3
    s, a = _critic_probe(agent)
    assert agent.critics(s, a).shape == (3, 6, 5, 3, 16)  # (C, ..., G, bins)


def test_agent_with_image_observations():
    gin.parse_config(TINY + "CNNTstepEncoder.d_image = 16\nCNNTstepEncoder.d_hidden = 16")
    torch.manual_seed(0)
    spaces = dict(
        obs_space=gym.spaces.Dict(
            {"image": gym.spaces.Box(0, 255, (64, 64, 3), np.uint8), "state": gym.spaces.Box(-1, 1, (2,))}
        ),
        rl2_space=gym.spaces.Box(-np.inf, np.inf, (3,), np.float32),
        action_space=gym.spaces.Discrete(2),
        max_seq_len=4,
    )
    agent = Agent(**spaces, tstep_encoder_type=CNNTstepEncoder)
    B, L = 2, 4
    pad_mask = torch.ones(B, L, 1, dtype=torch.bool)
    pad_mask[1, 3:] = False
    batch = Batch(
        obs={"image": torch.randint(0, 256, (B, L, 64, 64, 3), dtype=torch.uint8), "state": torch.randn(B, L, 2)},
        rl2s=torch.randn(B, L, 3),
        time_idxs=torch.arange(L).view(1, L, 1).expand(B, L, 1).clone(),
        pad_mask=pad_mask,
        actions=torch.nn.functional.one_hot(torch.randint(0, 2, (B, L - 1)), 2).float(),
        rews=torch.rand(B, L - 1, 1),
        dones=torch.zeros(B, L - 1, 1),
    )
    critic_loss, actor_loss, _ = agent(batch)
    (critic_loss + actor_loss).backward()
    assert torch.isfinite(critic_loss) and all(p.grad is not None for p in agent.tstep_encoder.cnn.parameters())
    with pytest.raises(ValueError, match="needs flat .* observations.*reward_decoder_coeff = 0"):  # no pixel input
        Agent(**spaces, tstep_encoder_type=CNNTstepEncoder, reward_decoder_coeff=1.0)


@pytest.mark.parametrize("space", [True, False, "multi_binary"])
def test_policy_per_gamma_trains_every_gamma_and_acts_with_actor_gamma(space):
    agent = make_agent(space, multigamma_actor=True, gammas=(0.5, 0.9, 0.99), actor_gamma=0.9)
    batch = make_batch(agent)
    critic_loss, actor_loss, metrics = agent(batch)
    assert torch.isfinite(critic_loss) and torch.isfinite(actor_loss)
    actor_loss.backward()
    # the actor's output layer holds G policies; each gets a gradient from its own gamma's loss
    out_grad = agent.actor.net[-1].weight.grad.view(3, agent.actor.d_out, -1)
    assert all(out_grad[i].abs().sum() > 0 for i in range(3))
    # rollouts act with actor_gamma's policy: the actions of the middle policy's distribution
    obs = {"observation": torch.randn(4, 1, OBS_DIM)}
    rl2s, t = torch.zeros(4, 1, 1 + agent.action_dim), torch.zeros(4, 1, 1, dtype=torch.long)
    agent.eval()
    actions, _ = agent.get_actions(obs, rl2s, t, agent.init_hidden_state(4, torch.device("cpu")), sample=False)
    states, _ = agent.encode(obs, rl2s, t)
    torch.testing.assert_close(actions.float(), agent.actor(states[:, -1]).mode()[:, 1].float())


def test_random_critic_subset_for_td_targets_takes_the_minimum_of_a_subset():
    agent = make_agent(True, num_critics=4, num_critics_td=2)
    q = torch.arange(4.0).view(4, 1, 1).expand(4, 200, 3).clone()  # critic c predicts c everywhere
    chosen = agent._td_critics(q)
    assert chosen.shape == (2, 200, 3)
    mins = chosen.min(0).values
    # the minimum of two distinct critics out of 0..3 is 0, 1 or 2, each often; never 3
    assert set(mins.unique().tolist()) == {0.0, 1.0, 2.0}
    assert make_agent(True, num_critics=4)._td_critics(q) is q
    with pytest.raises(ValueError, match="num_critics_td"):
        make_agent(True, num_critics=2, num_critics_td=3)


def test_target_actor_trails_the_actor_by_tau():
    agent = make_agent(False, target_actor=True, tau=0.1)
    before = [p.clone() for p in agent.target_actor.parameters()]
    with torch.no_grad():
        for p in agent.actor.parameters():
            p.add_(1.0)
    agent.soft_sync_targets()
    for b, tp, p in zip(before, agent.target_actor.parameters(), agent.actor.parameters()):
        torch.testing.assert_close(tp, b + 0.1 * (p - b))
    assert all(not p.requires_grad for p in agent.target_actor.parameters())


def test_target_actor_tau_sets_the_target_actors_rate_apart_from_the_critics():
    agent = make_agent(False, target_actor=True, tau=0.1, target_actor_tau=0.5)
    actor_before = [p.clone() for p in agent.target_actor.parameters()]
    critic_before = [p.clone() for p in agent.target_critics.parameters()]
    with torch.no_grad():
        for p in [*agent.actor.parameters(), *agent.critics.parameters()]:
            p.add_(1.0)
    agent.soft_sync_targets()
    for b, tp, p in zip(actor_before, agent.target_actor.parameters(), agent.actor.parameters()):
        torch.testing.assert_close(tp, b + 0.5 * (p - b))
    for b, tp, p in zip(critic_before, agent.target_critics.parameters(), agent.critics.parameters()):
        torch.testing.assert_close(tp, b + 0.1 * (p - b))
    with pytest.raises(ValueError, match="target_actor_tau is set but target_actor is False"):
        make_agent(False, target_actor_tau=0.5)
    for bad in (0.0, 1.5):
        with pytest.raises(ValueError, match="target_actor_tau must be"):
            make_agent(False, target_actor=True, target_actor_tau=bad)


def test_averaged_policy_is_the_mean_of_the_updates_until_its_window_fills_then_a_polyak_average():
    live = torch.nn.BatchNorm1d(1)  # a weight, a bias and running-statistics buffers
    live.register_buffer("table", torch.zeros(1), persistent=False)  # fixed, like a position table
    averaged = AveragedPolicy({"net": live}, rate=0.25)
    seen = []
    for value in (4.0, 8.0, 0.0, 4.0, 12.0):
        with torch.no_grad():
            live.weight.fill_(value)
            live.running_mean.fill_(-value)
            live.table.fill_(value)
        averaged.update_({"net": live})
        seen.append(averaged.parts["net"].weight.item())
    # the plain mean of the first 1 / rate = 4 updates (4, 6, 4, 4), then 4 + 0.25 * (12 - 4)
    assert seen == pytest.approx([4.0, 6.0, 4.0, 4.0, 6.0])
    assert averaged.parts["net"].running_mean.item() == -12.0  # persistent buffers are the live module's own
    assert averaged.parts["net"].table.item() == 0.0  # non-persistent ones are never copied
    assert not any(p.requires_grad for p in averaged.parameters())


@pytest.mark.parametrize("discrete", [True, False])
def test_evaluations_act_with_the_averaged_policy_which_follows_the_live_weights_at_each_sync(discrete):
    agent = make_agent(discrete, averaged_policy_rate=0.1).eval()
    n = 32  # actors: enough that a moved actor changes some of their discrete modes (4 could all stay put)
    obs = {"observation": torch.randn(n, 1, OBS_DIM)}
    rl2s, t = torch.zeros(n, 1, 1 + agent.action_dim), torch.zeros(n, 1, 1, dtype=torch.long)

    def act(averaged: bool = True) -> torch.Tensor:
        hidden = agent.init_hidden_state(n, torch.device("cpu"))
        actions, _ = agent.get_actions(obs, rl2s, t, hidden, sample=False, averaged=averaged)
        return actions.float()

    def live_actions() -> torch.Tensor:
        states, _ = agent.encode(obs, rl2s, t)
        return agent.actor(states[:, -1], gamma_index=agent.actor_gamma_idx).mode().float()

    before = act()
    with torch.no_grad():  # an update that moves only the live actor: evaluations still act as before
        for p in agent.actor.parameters():
            p.add_(torch.randn_like(p))
    assert not torch.allclose(live_actions(), before)
    torch.testing.assert_close(act(), before)
    torch.testing.assert_close(act(averaged=False), live_actions())  # training collection: the live weights
    agent.soft_sync_targets()  # the first sync averages one update: the averaged policy is the live one
    torch.testing.assert_close(act(), live_actions())
    state = agent.state_dict()  # saved and resumed with the run's weights
    assert state["averaged_policy.updates"].item() == 1.0
    restored = make_agent(discrete, averaged_policy_rate=0.1).eval()
    restored.load_state_dict(state)
    torch.testing.assert_close(restored.averaged_policy.parts["actor"].net[-1].weight, agent.actor.net[-1].weight)
    off = make_agent(discrete, averaged_policy_rate=None)
    assert "averaged_policy.updates" not in off.state_dict()  # off: the weights are as before


def test_reward_decoder_trains_the_policy_trunk_and_learns_rewards_it_can_infer():
    agent = make_agent(False, reward_decoder_coeff=1.0)
    batch = make_batch(agent)
    _, actor_loss, metrics = agent(batch)
    trunk = torch.nn.ModuleList([agent.tstep_encoder, agent.traj_encoder])
    grads = torch.autograd.grad(actor_loss, list(trunk.parameters()), allow_unused=True)
    assert any(g is not None and g.abs().sum() > 0 for g in grads) and "reward_decoder_loss" in metrics
    # each window's reward is its own constant (a hidden task), shown to the trunk through the previous rewards:
    # the decoder's error falls far below the targets' variance (1 in its units) as it learns to read it
    batch.rews = torch.tensor([0.0, 1.0, 2.0, 3.0]).view(4, 1, 1).expand_as(batch.rews).clone()
    batch.rl2s[:, 1:, :1] = batch.rews
    batch.rews[~batch.transition_mask] = 0
    opt = torch.optim.Adam(agent.parameters(), lr=3e-3)
    start = None
    for _ in range(150):
        loss = agent.reward_decoder.loss(
            agent.encode(batch.obs, batch.rl2s, batch.time_idxs, batch.pad_mask)[0][:, :-1],
            batch.obs,
            batch.actions,
            batch.rews,
            batch.transition_mask,
        )
        start = loss.item() if start is None else start
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.1 < start
    with pytest.raises(ValueError, match="reward_decoder_coeff"):
        make_agent(False, reward_decoder_coeff=-1.0)
