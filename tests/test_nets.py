"""Fast CPU tests for amago_like.nets (toy sizes)."""

import gin
import gymnasium as gym
import numpy as np
import pytest
import torch

from amago_like.checks import ConfigTypeError
from amago_like.nets import (
    CNNTstepEncoder,
    FFTrajEncoder,
    FFTstepEncoder,
    GRUTrajEncoder,
    IdentityTrajEncoder,
    KVCache,
    SigmaReparamLinear,
    TformerTrajEncoder,
)
from amago_like.nets.heads import CriticEnsemble
from amago_like.nets.tstep_encoders import RunningNorm
from amago_like.nets.values import PopArt

TSTEP_DIM, ATOL = 6, 1e-5
GAMMAS = (0.9, 0.99, 0.999)  # the discount factors the critic tests pass


pytestmark = pytest.mark.usefixtures("one_thread")


def _tformer(max_seq_len=8, n_layers=2, **kw) -> TformerTrajEncoder:
    torch.manual_seed(0)
    kw = dict(d_model=16, n_layers=n_layers, n_heads=2, d_ff=32, max_time_idx=100) | kw
    return TformerTrajEncoder(TSTEP_DIM, max_seq_len, **kw).eval()


def _gru() -> GRUTrajEncoder:
    torch.manual_seed(0)
    return GRUTrajEncoder(TSTEP_DIM, 8, d_hidden=12, n_layers=2, d_output=10).eval()


def _times(B: int, L: int, start: int = 0) -> torch.Tensor:  # (B, L, 1)
    return (torch.arange(L) + start).view(1, L, 1).expand(B, L, 1)


def _spaces():
    obs = gym.spaces.Dict(
        {
            "b_img": gym.spaces.Box(-1, 1, (2, 3)),
            "a_vec": gym.spaces.Box(-1, 1, (4,)),
        }
    )
    return obs, gym.spaces.Box(-1, 1, (3,))  # rl2 = reward + 2-dim action


def _obs(B, L, scale=1.0, shift=0.0):
    return {"a_vec": torch.randn(B, L, 4) * scale + shift, "b_img": torch.randn(B, L, 2, 3) * scale + shift}


# ------------------------------------------------------------------ shapes
def test_tstep_encoder_shape():
    torch.manual_seed(0)
    enc = FFTstepEncoder(*_spaces(), n_layers=2, d_hidden=16, d_output=8)
    out = enc(_obs(3, 5), torch.randn(3, 5, 3))
    assert out.shape == (3, 5, 8) and enc.emb_dim == 8


@pytest.mark.parametrize("make", [_tformer, _gru, lambda: FFTrajEncoder(TSTEP_DIM, 8, d_hidden=12, d_output=10)])
def test_traj_encoder_shapes(make):
    enc = make()
    B, L = 3, 7
    out, h = enc(torch.randn(B, L, TSTEP_DIM), _times(B, L))
    assert out.shape == (B, L, enc.emb_dim) and h is None
    h = enc.init_hidden_state(B, torch.device("cpu"))
    out, h = enc(torch.randn(B, 1, TSTEP_DIM), _times(B, 1), h)
    assert out.shape == (B, 1, enc.emb_dim)
    h = enc.reset_hidden_state(h, np.array([True, False, False]))
    out, h = enc(torch.randn(B, 1, TSTEP_DIM), _times(B, 1), h)
    assert out.shape == (B, 1, enc.emb_dim)


def test_kv_cache_layout():
    enc = _tformer(max_seq_len=8, n_layers=2)
    cache = enc.init_hidden_state(5, torch.device("cpu"))
    assert isinstance(cache, KVCache)
    assert cache.k[0].shape == (5, 2, 8, 8) and cache.n.shape == (5,)


# ------------------------------------------------------------------ causality
@pytest.mark.parametrize("make", [_tformer, _gru])
def test_causal(make):
    enc = make()
    seq = torch.randn(2, 8, TSTEP_DIM)
    out1, _ = enc(seq, _times(2, 8))
    seq2 = seq.clone()
    seq2[:, 5:] = torch.randn(2, 3, TSTEP_DIM)
    out2, _ = enc(seq2, _times(2, 8))
    torch.testing.assert_close(out1[:, :5], out2[:, :5], atol=0, rtol=0)
    assert not torch.allclose(out1[:, 5:], out2[:, 5:])


# ------------------------------------------------------------------ rollout == full forward
def _rollout(enc, seq, times, resets=None):
    """Step through seq (B, T, d) one token at a time; resets[t] = (B,) bool applied before step t."""
    B, T, _ = seq.shape
    h = enc.init_hidden_state(B, torch.device("cpu"))
    outs = []
    with torch.no_grad():
        for t in range(T):
            if resets is not None and resets[t] is not None:
                h = enc.reset_hidden_state(h, resets[t])
            out, h = enc(seq[:, t : t + 1], times[:, t : t + 1], h)
            outs.append(out)
    return torch.cat(outs, 1)  # (B, T, emb)


@pytest.mark.parametrize("make", [_tformer, _gru])
def test_rollout_matches_full_forward_with_reset(make):
    enc = make()
    torch.manual_seed(1)
    B, T, r = 3, 7, 3  # actor 1 resets before step r; no context overflow (T <= max_seq_len)
    seq = torch.randn(B, T, TSTEP_DIM)
    times = _times(B, T).clone()
    times[1, r:] = torch.arange(T - r).view(-1, 1)  # env restarts its time index
    resets = [None] * T
    resets[r] = np.array([False, True, False])
    roll = _rollout(enc, seq, times, resets)
    with torch.no_grad():
        full, _ = enc(seq, times)
        post, _ = enc(seq[1:2, r:], times[1:2, r:])  # fresh forward over the post-reset history only
    torch.testing.assert_close(roll[[0, 2]], full[[0, 2]], atol=ATOL, rtol=0)
    torch.testing.assert_close(roll[1, :r], full[1, :r], atol=ATOL, rtol=0)
    torch.testing.assert_close(roll[1:2, r:], post, atol=ATOL, rtol=0)


def _windowed_full(enc, seq, times, S):
    """Output at each t of a full forward over the last S timesteps ending at t."""
    outs = []
    with torch.no_grad():
        for t in range(seq.shape[1]):
            lo = max(0, t - S + 1)
            out, _ = enc(seq[:, lo : t + 1], times[:, lo : t + 1])
            outs.append(out[:, -1:])
    return torch.cat(outs, 1)


@pytest.mark.parametrize("n_layers,overflow", [(1, "slide"), (3, "recompute")])
@pytest.mark.parametrize("pos_emb", ["learned", "fixed"])
def test_rollout_past_context_limit(n_layers, overflow, pos_emb):
    S, B, T = 5, 3, 14
    # without token shift: a full forward over a window gives its first token no predecessor, a rollout does
    enc = _tformer(max_seq_len=S, n_layers=n_layers, overflow=overflow, pos_emb=pos_emb, token_shift=False)
    torch.manual_seed(2)
    seq = torch.randn(B, T, TSTEP_DIM)
    times = _times(B, T)
    resets = [None] * T
    resets[4] = np.array([False, False, True])  # rows with different fill levels overflow at different steps
    roll = _rollout(enc, seq, times.clone(), resets)
    ref = _windowed_full(enc, seq[:2], times[:2], S)
    torch.testing.assert_close(roll[:2], ref, atol=ATOL, rtol=0)
    ref2 = _windowed_full(enc, seq[2:, 4:], times[2:, 4:], S)
    torch.testing.assert_close(roll[2:, 4:], ref2, atol=ATOL, rtol=0)


def test_slide_multilayer_is_exact_until_overflow():
    """Documents the known limit: with >1 layer, 'slide' keeps upper-layer K/V computed with
    older context, so it only equals the windowed full forward until the first overflow."""
    S, T = 5, 10
    enc = _tformer(max_seq_len=S, n_layers=2, overflow="slide")
    seq, times = torch.randn(2, T, TSTEP_DIM), _times(2, T)
    roll, ref = _rollout(enc, seq, times), _windowed_full(enc, seq, times, S)
    torch.testing.assert_close(roll[:, :S], ref[:, :S], atol=ATOL, rtol=0)
    assert (roll[:, S:] - ref[:, S:]).abs().max() > 1e-4


def test_tformer_pos_embs_differ_and_time_idx_matters():
    seq = torch.randn(2, 6, TSTEP_DIM)
    for pos_emb in ["learned", "fixed"]:  # (RoPE sees only relative time: test_rope_depends_only_on_relative_time)
        enc = _tformer(pos_emb=pos_emb)
        a, _ = enc(seq, _times(2, 6))
        b, _ = enc(seq, _times(2, 6, start=200))  # clamped to max_time_idx=100, must not crash
        assert torch.isfinite(a).all() and not torch.allclose(a, b)
    assert isinstance(_tformer(pos_emb="fixed").pos, torch.nn.Module)
    with pytest.raises(ValueError):
        _tformer(pos_emb="bogus")


def test_tformer_backward():
    enc = _tformer().train()
    out, _ = enc(torch.randn(2, 6, TSTEP_DIM), _times(2, 6))
    out.pow(2).mean().backward()
    assert all(p.grad is not None for p in enc.parameters() if p.requires_grad)


# ------------------------------------------------------------------ input normalisation
def test_norm_ignores_padding_and_eval():
    torch.manual_seed(0)
    enc = FFTstepEncoder(*_spaces(), d_hidden=16, d_output=8)
    B, L = 4, 6
    obs, rl2 = _obs(B, L), torch.randn(B, L, 3)
    mask = torch.ones(B, L, 1, dtype=torch.bool)
    mask[:, 4:] = False
    obs_pad = {k: v.clone() for k, v in obs.items()}
    for v in obs_pad.values():
        v[:, 4:] = 1e6  # garbage in padded slots
    rl2_pad = rl2.clone()
    rl2_pad[:, 4:] = -1e6

    ref = FFTstepEncoder(*_spaces(), d_hidden=16, d_output=8)
    enc.train(), ref.train()
    enc(obs_pad, rl2_pad, pad_mask=mask)
    ref({k: v[:, :4] for k, v in obs.items()}, rl2[:, :4])  # same real data, no padding
    for name in ["mean", "var", "count"]:
        torch.testing.assert_close(getattr(enc.norm, name), getattr(ref.norm, name))
    assert enc.norm.count.item() == B * 4
    flat = torch.cat(
        [obs["a_vec"][:, :4].reshape(-1, 4), obs["b_img"][:, :4].reshape(-1, 6), rl2[:, :4].reshape(-1, 3)], -1
    )
    torch.testing.assert_close(enc.norm.mean, flat.mean(0), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(enc.norm.var, flat.var(0, unbiased=False), atol=1e-5, rtol=1e-5)

    stats = {k: v.clone() for k, v in enc.norm.state_dict().items()}
    enc.eval()
    out = enc(_obs(B, L, scale=5.0, shift=3.0), torch.randn(B, L, 3))
    for k, v in enc.norm.state_dict().items():
        assert torch.equal(v, stats[k])
    assert torch.isfinite(out).all()
    assert "norm.mean" in enc.state_dict()


def test_norm_running_update_and_clamp():
    torch.manual_seed(0)
    enc = FFTstepEncoder(*_spaces(), d_hidden=16, d_output=8).train()
    chunks = [(_obs(2, 3, shift=s), torch.randn(2, 3, 3)) for s in (0.0, 4.0)]
    for o, r in chunks:
        enc(o, r)
    allx = torch.cat([enc.flatten_inputs(o, r).reshape(-1, 13) for o, r in chunks])
    torch.testing.assert_close(enc.norm.mean, allx.mean(0), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(enc.norm.var, allx.var(0, unbiased=False), atol=1e-4, rtol=1e-4)
    big = enc.norm(torch.full((1, 13), 1e6))
    assert big.max().item() == pytest.approx(10.0)


def test_norm_disabled():
    enc = FFTstepEncoder(*_spaces(), d_hidden=16, d_output=8, normalize_inputs=False)
    assert enc.norm is None
    assert enc(_obs(2, 3), torch.randn(2, 3, 3)).shape == (2, 3, 8)


def test_gin_configurable():
    gin.clear_config()
    try:
        gin.parse_config("TformerTrajEncoder.d_model = 32\nFFTstepEncoder.d_output = 7")
        assert TformerTrajEncoder(TSTEP_DIM, 8, n_heads=2).emb_dim == 32
        assert FFTstepEncoder(*_spaces()).emb_dim == 7
    finally:
        gin.clear_config()


# ------------------------------------------------------------------ transformer options
OPTIONS = {
    "rope": dict(pos_emb="rope"),
    "normformer": dict(normformer_norms=True),
    "sigma_reparam": dict(sigma_reparam=True),
    "window": dict(attention_window=3),
    "no_token_shift": dict(token_shift=False),
    "all": dict(pos_emb="rope", normformer_norms=True, sigma_reparam=True, attention_window=3, token_shift=True),
}


def _with_trained_shift(enc: TformerTrajEncoder) -> TformerTrajEncoder:
    """``enc`` with its token-shift map (zero at the start, see the test below) as after some training."""
    if enc.shift is not None:
        torch.nn.init.normal_(enc.shift.weight, std=0.3)
    return enc


@pytest.mark.parametrize("option", list(OPTIONS))
def test_tformer_option_cache_matches_full_forward(option):
    """Each option keeps the KV-cache rollout equal to a full forward (with an actor reset mid-way)."""
    enc = _with_trained_shift(_tformer(max_seq_len=8, n_layers=2, **OPTIONS[option]))
    torch.manual_seed(1)
    B, T, r = 3, 8, 3
    seq = torch.randn(B, T, TSTEP_DIM)
    times = _times(B, T).clone() + 5  # start away from 0: RoPE must rotate by the global index
    times[1, r:] = torch.arange(T - r).view(-1, 1)
    resets = [None] * T
    resets[r] = np.array([False, True, False])
    roll = _rollout(enc, seq, times, resets)
    with torch.no_grad():
        full, _ = enc(seq, times)
        post, _ = enc(seq[1:2, r:], times[1:2, r:])
    torch.testing.assert_close(roll[[0, 2]], full[[0, 2]], atol=ATOL, rtol=0)
    torch.testing.assert_close(roll[1, :r], full[1, :r], atol=ATOL, rtol=0)
    torch.testing.assert_close(roll[1:2, r:], post, atol=ATOL, rtol=0)
    # the options change the network
    with torch.no_grad():
        plain, _ = _with_trained_shift(_tformer(max_seq_len=8, n_layers=2))(seq, times)
    assert not torch.allclose(full, plain, atol=1e-3)


def test_token_shift_starts_as_the_encoder_without_it_and_trains():
    """The shift's map starts at zero, so a new encoder's outputs are those of one without the option; the map
    still gets a gradient, so training takes in as much of the previous input as helps."""
    seq, times = torch.randn(2, 6, TSTEP_DIM), _times(2, 6)
    shifted = _tformer(token_shift=True)
    full, _ = shifted(seq, times)
    with torch.no_grad():
        plain, _ = _tformer(token_shift=False)(seq, times)
    torch.testing.assert_close(full, plain, atol=0, rtol=0)
    full.square().sum().backward()
    assert shifted.shift.weight.grad.abs().sum() > 0


def test_rope_recompute_past_context_limit():
    """overflow='recompute' re-rotates the stored window with its own time indices."""
    S, B, T = 5, 2, 12
    enc = _tformer(max_seq_len=S, n_layers=2, overflow="recompute", pos_emb="rope", token_shift=False)
    seq, times = torch.randn(B, T, TSTEP_DIM), _times(B, T)
    torch.testing.assert_close(_rollout(enc, seq, times), _windowed_full(enc, seq, times, S), atol=ATOL, rtol=0)


def test_rope_depends_only_on_relative_time():
    enc = _tformer(pos_emb="rope")
    seq = torch.randn(2, 6, TSTEP_DIM)
    with torch.no_grad():
        a, _ = enc(seq, _times(2, 6))
        b, _ = enc(seq, _times(2, 6, start=37))
    torch.testing.assert_close(a, b, atol=1e-4, rtol=0)
    assert enc.pos is None and not any("pos" in k for k in enc.state_dict())


def test_attention_window_is_exact_past_the_window_and_context():
    """With a window the cache keeps only `window` tokens per layer, yet a rollout longer than the
    window (and than max_seq_len) equals one full windowed forward over the whole history, at any depth."""
    S, w, T = 8, 3, 14
    enc = _tformer(max_seq_len=S, n_layers=3, attention_window=w)
    assert enc.init_hidden_state(2, torch.device("cpu")).k.shape[3] == w
    seq, times = torch.randn(2, T, TSTEP_DIM), _times(2, T)
    with torch.no_grad():
        full, _ = enc(seq, times)
    torch.testing.assert_close(_rollout(enc, seq, times), full, atol=ATOL, rtol=0)


def test_attention_window_limits_the_receptive_field():
    enc = _tformer(n_layers=1, attention_window=3, token_shift=False)  # a shifted token would see one further back
    seq = torch.randn(1, 8, TSTEP_DIM)
    seq2 = seq.clone()
    seq2[:, 0] += 5.0
    with torch.no_grad():
        a, _ = enc(seq, _times(1, 8))
        b, _ = enc(seq2, _times(1, 8))
    assert not torch.allclose(a[:, :3], b[:, :3])  # tokens 0..2 see token 0
    torch.testing.assert_close(a[:, 3:], b[:, 3:], atol=0, rtol=0)  # token 3 on does not
    with pytest.raises(ValueError, match="recompute"):
        _tformer(attention_window=3, overflow="recompute")


def test_sigma_reparam_linear():
    torch.manual_seed(0)
    lin = SigmaReparamLinear(12, 7)
    w_eff = lin.weight * lin.gamma / lin.sigma()
    assert torch.linalg.matrix_norm(w_eff.detach(), ord=2).item() == pytest.approx(1.0, rel=1e-3)
    lin.eval()
    u = lin.u.clone()
    lin(torch.randn(3, 12))
    assert torch.equal(lin.u, u)  # eval: singular vectors frozen
    lin.train()
    with torch.no_grad():
        lin.weight.mul_(3.0)  # the reparameterisation is invariant to the scale of W
    y = lin(torch.randn(5, 12))
    y.pow(2).sum().backward()
    assert lin.gamma.grad is not None and lin.weight.grad is not None
    assert "u" in lin.state_dict() and "v" in lin.state_dict()


def test_identity_traj_encoder():
    enc = IdentityTrajEncoder(TSTEP_DIM, 8)
    seq = torch.randn(2, 5, TSTEP_DIM)
    out, h = enc(seq, _times(2, 5))
    assert enc.emb_dim == TSTEP_DIM and h is None and torch.equal(out, seq)
    out, h = enc(seq[:, :1], _times(2, 1), enc.init_hidden_state(2, torch.device("cpu")))
    assert out.shape == (2, 1, TSTEP_DIM)


# ------------------------------------------------------------------ image observations
def _image_spaces():
    obs = gym.spaces.Dict(
        {
            "pixels": gym.spaces.Box(0, 255, (64, 64, 3), np.uint8),
            "proprio": gym.spaces.Box(-1, 1, (4,)),
        }
    )
    return obs, gym.spaces.Box(-1, 1, (3,))


def _image_obs(B, L, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {
        "pixels": torch.randint(0, 256, (B, L, 64, 64, 3), generator=g, dtype=torch.uint8),
        "proprio": torch.randn(B, L, 4, generator=g),
    }


@pytest.mark.parametrize("cnn", ["nature", "impala"])
def test_cnn_tstep_encoder_shapes(cnn):
    torch.manual_seed(0)
    enc = CNNTstepEncoder(*_image_spaces(), cnn=cnn, d_image=32, d_hidden=32, d_output=16)
    assert enc.image_key == "pixels" and enc.keys == ["proprio"]
    out = enc(_image_obs(2, 3), torch.randn(2, 3, 3))
    assert out.shape == (2, 3, 16) and enc.emb_dim == 16 and torch.isfinite(out).all()
    out.pow(2).mean().backward()
    assert all(p.grad is not None for p in enc.cnn.parameters())


def test_cnn_tstep_encoder_padding():
    torch.manual_seed(0)
    enc = CNNTstepEncoder(*_image_spaces(), d_image=32, d_hidden=32, d_output=16).train()
    ref = CNNTstepEncoder(*_image_spaces(), d_image=32, d_hidden=32, d_output=16).train()
    ref.load_state_dict(enc.state_dict())
    B, L = 2, 4
    obs, rl2 = _image_obs(B, L), torch.randn(B, L, 3)
    mask = torch.ones(B, L, 1, dtype=torch.bool)
    mask[1, 2:] = False
    noisy = {k: v.clone() for k, v in obs.items()}
    noisy["pixels"][1, 2:] = 255 - noisy["pixels"][1, 2:]
    noisy["proprio"][1, 2:] = 1e6
    a = enc(obs, rl2, pad_mask=mask)
    b = ref(noisy, rl2, pad_mask=mask)
    real = mask[..., 0]
    torch.testing.assert_close(a[real], b[real])  # real outputs ignore padded content
    for name in ["mean", "var", "count"]:
        torch.testing.assert_close(getattr(enc.norm, name), getattr(ref.norm, name))
    assert enc.norm.count.item() == 6
    with torch.no_grad():  # real timesteps equal an unmasked forward
        enc.eval()
        torch.testing.assert_close(enc(obs, rl2, pad_mask=mask)[real], enc(obs, rl2)[real])
    with pytest.raises(ValueError, match="image_key"):
        CNNTstepEncoder(*_spaces())


def test_running_norm_merges_only_real_rows_across_batches():
    torch.manual_seed(0)
    norm, real_rows = RunningNorm(3), []
    for n in (5, 0, 7, 1):  # one batch with no real row at all
        x = torch.randn(n + 4, 3) * 3 + 1
        x[n:] = float("inf")  # padding may hold anything
        mask = torch.arange(n + 4) < n
        norm.update(x, mask)
        real_rows.append(x[:n])
    real = torch.cat(real_rows)
    assert norm.count.item() == len(real)
    torch.testing.assert_close(norm.mean, real.mean(0))
    torch.testing.assert_close(norm.var, real.var(0, unbiased=False))


# ------------------------------------------------------------------ critic's action input
def _critic_action_fit(action_repeat: int, steps: int = 150, state_dim: int = 128) -> float:
    """Fit Q(s, a) = -|a - c(s)| (c: a linear read-out of a wide state) by regression for ``steps`` Adam steps;
    return the mean over held-out states of the correlation across a 7 x 7 action grid between fit and truth."""
    g = torch.Generator().manual_seed(0)
    read_out = torch.randn(state_dim, 2, generator=g) / state_dim**0.5

    def draw(n: int):
        s, a = torch.randn(n, state_dim, generator=g), torch.rand(n, 2, generator=g) * 2 - 1  # (n, D), (n, 2)
        c = (s @ read_out).clamp(-1, 1)  # (n, 2): the best action of each state
        return s, a, -(a - c).norm(dim=-1, keepdim=True), c

    torch.manual_seed(0)
    critic = CriticEnsemble(state_dim, 2, (0.99,), num_critics=2, hidden=(64, 64), action_repeat=action_repeat)
    optimizer = torch.optim.Adam(critic.parameters(), lr=3e-4)
    for _ in range(steps):
        s, a, q, _ = draw(256)
        loss = ((critic(s, a) - q) ** 2).mean()  # (C, n, 1) against (n, 1)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    s, _, _, c = draw(64)
    axis = torch.linspace(-1, 1, 7)
    grid = torch.stack(torch.meshgrid(axis, axis, indexing="ij"), -1).view(49, 1, 2)
    with torch.no_grad():
        fit = critic(s.unsqueeze(0), grid).mean(0)[..., 0]  # (49, 64)
    truth = -(grid - c.unsqueeze(0)).norm(dim=-1)  # (49, 64)
    fit, truth = fit - fit.mean(0), truth - truth.mean(0)
    return ((fit * truth).sum(0) / (fit.norm(dim=0) * truth.norm(dim=0))).mean().item()


def test_repeating_the_action_makes_the_critic_learn_its_effect_sooner():
    # a 2-D action beside a 128-D state: entered once, the critic has barely begun to bend in the action;
    # entered 16 times, it is well on its way (docs/RESULTS.md: the contextual bandit)
    once, repeated = _critic_action_fit(1), _critic_action_fit(16)
    assert repeated > 0.5 and repeated > once + 0.2, (once, repeated)


def test_critic_action_repeat_keeps_shapes_and_refuses_bad_values():
    critic = CriticEnsemble(8, 2, GAMMAS, num_critics=2, hidden=(16,), action_repeat=4)
    assert critic.layers[0].weight.shape == (2, 8 + 2 * 4, 16)
    assert critic(torch.randn(5, 7, 8), torch.randn(5, 7, 2)).shape == (2, 5, 7, 3)
    assert critic(torch.randn(1, 7, 8), torch.randn(4, 1, 7, 2)).shape == (2, 4, 1, 7, 3)  # K action samples
    with pytest.raises(ValueError, match=r"CriticEnsemble.action_repeat must be >= 1, got 0"):
        CriticEnsemble(8, 2, GAMMAS, action_repeat=0)
    with pytest.raises(ConfigTypeError, match="CriticEnsemble.action_repeat must be an integer"):
        CriticEnsemble(8, 2, GAMMAS, action_repeat=2.0)


@pytest.mark.parametrize("bins", [1, 7])
def test_discrete_head_reads_the_taken_actions_output_from_the_state_alone(bins):
    torch.manual_seed(0)
    critic = CriticEnsemble(8, 5, GAMMAS, num_critics=2, hidden=(16,), num_bins=bins, discrete=True, discrete_head=True)
    assert critic.layers[0].weight.shape == (2, 8, 16) and critic.out.weight.shape == (2, 16, 5 * 3 * bins)
    state = torch.randn(4, 6, 8)
    every = critic(state.unsqueeze(0), torch.eye(5).view(5, 1, 1, 5))  # (C, A, B, L, G[, bins]): every action
    taken = torch.randint(0, 5, (4, 6))
    q = critic(state, torch.nn.functional.one_hot(taken, 5).float())  # (C, B, L, G[, bins])
    assert q.shape == (2, 4, 6, 3) + ((bins,) if bins > 1 else ())
    index = taken.view(1, 1, 4, 6, *[1] * (every.dim() - 4)).expand(2, 1, 4, 6, *every.shape[4:])
    torch.testing.assert_close(every.gather(1, index).squeeze(1), q)
    assert not torch.allclose(every[:, 0], every[:, 1])  # each action has its own outputs
    # continuous actions have no per-action outputs: the option leaves them as they were
    box = CriticEnsemble(8, 2, GAMMAS, num_critics=2, hidden=(16,), action_repeat=4, discrete=False, discrete_head=True)
    assert box.layers[0].weight.shape == (2, 8 + 2 * 4, 16)


@pytest.mark.parametrize("discrete", [False, True])
def test_gamma_input_gives_each_discount_factor_its_own_pass(discrete):
    torch.manual_seed(0)
    A, bins = (5, 7) if discrete else (2, 1)
    kw = dict(num_critics=2, hidden=(16,), num_bins=bins, action_repeat=4, discrete=discrete)
    critic, plain = CriticEnsemble(8, A, GAMMAS, gamma_input=True, **kw), CriticEnsemble(8, A, GAMMAS, **kw)
    assert critic.layers[0].weight.shape[1] == plain.layers[0].weight.shape[1] + 4  # the code, entered 4 times
    state, taken = torch.randn(4, 6, 8), torch.randint(0, A, (4, 6))
    action = torch.nn.functional.one_hot(taken, A).float() if discrete else torch.rand(4, 6, A) * 2 - 1
    q = critic(state, action)  # (C, B, L, G[, bins])
    assert q.shape == (2, 4, 6, 3) + ((bins,) if bins > 1 else ())

    def by_hand(g: int, code: torch.Tensor) -> torch.Tensor:  # gamma g's outputs from one pass with ``code``
        s, a = state.reshape(24, 8), action.reshape(24, A)
        h = torch.cat([s] + ([] if discrete else [a] * 4) + [code.expand(24, 4)], -1).expand(2, -1, -1)
        for layer in critic.layers:
            h = torch.nn.functional.leaky_relu(layer(h))
        out = critic.out(h).unflatten(-1, (-1, 3, bins))[:, :, :, g]  # (C, N, K, bins)
        out = (out * a.view(1, 24, A, 1)).sum(2) if discrete else out[:, :, 0]  # (C, N, bins)
        return out.reshape(q[:, :, :, g].shape)

    codes = torch.log1p(1 / (1 - torch.tensor(GAMMAS)))
    for g in range(3):
        torch.testing.assert_close(by_hand(g, codes[g]), q[:, :, :, g])
        assert not torch.allclose(by_hand(g, codes[(g + 1) % 3]), q[:, :, :, g])  # the code changes the pass
    if bins == 1:  # PopArt still rescales each discount factor's own last-layer weights exactly
        popart = PopArt(3)
        before = popart.unnormalize(q)
        popart.rescale_(critic.out, *popart.update(torch.randn(50, 3) * 5 + 2))
        torch.testing.assert_close(popart.unnormalize(critic(state, action)), before)


def test_discrete_is_the_agents_to_pass_not_a_binding():
    with pytest.raises(ValueError, match="denylist"):
        gin.parse_config("CriticEnsemble.discrete = True")


def test_critic_layer_norm_normalises_each_critics_hidden_layers_with_its_own_gain():
    """layer_norm: every hidden layer is Linear -> LayerNorm -> activation, each critic with its own gain and bias,
    so a critic's outputs no longer depend on the scale of its first layer; off (the default), there are no norms."""
    torch.manual_seed(0)
    critic = CriticEnsemble(8, 2, GAMMAS, num_critics=3, hidden=(16, 16), action_repeat=4, layer_norm=True)
    state, action = torch.randn(4, 6, 8), torch.rand(4, 6, 2) * 2 - 1
    q = critic(state, action)  # (C, B, L, G)
    assert q.shape == (3, 4, 6, 3)

    def by_hand(c: int) -> torch.Tensor:  # critic c alone, its layers written out
        h = torch.cat([state, *[action] * 4], -1)  # (B, L, 8 + 2 * 4)
        for layer, norm in zip(critic.layers, critic.norms):
            h = h @ layer.weight[c] + layer.bias[c, 0]
            h = (h - h.mean(-1, keepdim=True)) / (h.var(-1, unbiased=False, keepdim=True) + 1e-5).sqrt()
            h = torch.nn.functional.leaky_relu(h * norm.weight[c, 0] + norm.bias[c, 0])
        return h @ critic.out.weight[c] + critic.out.bias[c, 0]

    for c in range(3):
        torch.testing.assert_close(by_hand(c), q[c])
    with torch.no_grad():  # one critic's gain is its own
        critic.norms[0].weight[1].mul_(3.0)
    q2 = critic(state, action)
    torch.testing.assert_close(q2[[0, 2]], q[[0, 2]])
    assert not torch.allclose(q2[1], q[1])
    # the first layer's output is normalised, so scaling its weights and bias changes nothing
    with torch.no_grad():
        critic.layers[0].weight.mul_(10.0)
        critic.layers[0].bias.mul_(10.0)
    torch.testing.assert_close(critic(state, action), q2, rtol=1e-4, atol=1e-4)
    assert CriticEnsemble(8, 2, GAMMAS, hidden=(16,)).norms is None


def test_critic_dropout_drops_hidden_features_in_training_only():
    """dropout: in training, hidden features are dropped at random, so two passes differ and the masks are the only
    randomness; in eval mode every pass gives the values of the same critic without dropout. A rate outside
    [0, 1) is refused with the parameter's name."""
    torch.manual_seed(0)
    state, action = torch.randn(4, 6, 8), torch.rand(4, 6, 2) * 2 - 1
    critic = CriticEnsemble(8, 2, GAMMAS, num_critics=2, hidden=(32, 32), dropout=0.5)
    critic.train()
    first, second = critic(state, action), critic(state, action)
    assert not torch.allclose(first, second)
    torch.manual_seed(1)
    masked = critic(state, action)
    torch.manual_seed(1)
    torch.testing.assert_close(critic(state, action), masked)  # the masks are the only randomness
    critic.eval()
    torch.testing.assert_close(critic(state, action), critic(state, action))
    plain = CriticEnsemble(8, 2, GAMMAS, num_critics=2, hidden=(32, 32))
    plain.load_state_dict(critic.state_dict())
    torch.testing.assert_close(plain.train()(state, action), critic(state, action))  # eval with dropout = no dropout
    for bad in (1.0, -0.1):
        with pytest.raises(ValueError, match=r"CriticEnsemble.dropout must be in \[0, 1\)"):
            CriticEnsemble(8, 2, GAMMAS, dropout=bad)
