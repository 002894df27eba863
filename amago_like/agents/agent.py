"""Actor-critic agents over a (timestep encoder -> trajectory encoder) trunk.

Loss, per real (unpadded) transition t and discount factor gamma_g:
    critic:  (Q_c(s_t, a_t)[g] - y_t[g])^2,  y_t[g] = r_t + gamma_g (1 - done_t) V_target(s_{t+1})[g]
             (with ``n_step`` = n: y_t[g] = sum_{k<m} gamma_g^k r_{t+k} + gamma_g^m (1 - done) V_target(s_{t+m})[g],
             m = n, or fewer where the episode ends or the window's real transitions run out first; with
             ``novelty_bonus`` b: r_t + b x how new observation t+1 is in the window, ``nets.novelty``; with
             ``novelty_fade`` f, b falls linearly to 0 over the first f of the run's planned updates)
             V_target(s) = E_{a~pi'(s)} min_{c in S} Q'_c(s, a)   (Q' = polyak-averaged target critic heads;
             S = ``num_critics_td`` critics drawn at random per transition, or all of them;
             pi' = the polyak-averaged target actor (rate ``target_actor_tau``) with ``target_actor``, else the actor)
             with ``soft_targets``, V_target(s) also adds entropy_coeff * H(pi'(s)) (SAC's soft value)
    actor:   online_coeff * -E_{a~pi(s_t)} Q(s_t, a)[actor_gamma]   (policy gradient through the critic; Q: the critics'
                                                            mean, or their minimum with ``pessimistic_actor``)
           + offline_coeff * -log pi(a_t | s_t) * 1[Q(s_t, a_t) > E_pi Q(s_t, .)]  (advantage-filtered BC)
           - entropy_coeff * H(pi(s_t))
           + reward_decoder_coeff * (D(s_t, o_j, a_j, o_j+1) - r_j)^2   (an auxiliary loss on the trunk, off by default:
                                                            j = other transitions of the window, ``nets.reward_decoder``)
With a target entropy, entropy_coeff is learned (starting from the given value, or 0.1 when unbound) by a
SAC-style dual step on log(entropy_coeff) * (H - target_entropy): it rises while the policy's entropy is below
the target and falls while above. The default ``target_entropy="auto"`` is SAC's -action_dim for continuous
actions (a continuous policy without an entropy floor collapses onto a corner of the action box that a
critic nearly linear in the action points to) and no target for discrete and multi-binary actions, which
keep a fixed entropy_coeff (0 when unbound). For a tanh-squashed policy H counts the squashing: actions piled
up at +-1 have low entropy, whether from large pre-tanh means or from a wide pre-tanh std.
The critics learn every gamma at once (a cheap auxiliary signal); the actor follows ``actor_gamma``,
or, with ``multigamma_actor``, has one policy per gamma, each trained on its own gamma's values
(the actor loss averages them; rollouts act with ``actor_gamma``'s policy).

With ``popart`` the critics predict values normalised by running per-gamma target statistics (the critic loss is
then in normalised units and the actor maximises normalised Q). ``MultiTaskAgent`` (``multitask.py``) classifies
symlog-value bins.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from typing import Any

import gin
import gymnasium as gym
import numpy as np
import torch
from torch import nn

from amago_like.checks import check_fraction, check_ints, check_number, check_positive
from amago_like.data.batches import Batch
from amago_like.nets.averaging import AveragedPolicy, polyak_
from amago_like.nets.heads import Actor, CriticEnsemble
from amago_like.nets.novelty import NoveltyBonus
from amago_like.nets.reward_decoder import RewardDecoder
from amago_like.nets.traj_encoders import TformerTrajEncoder, TrajEncoder
from amago_like.nets.tstep_encoders import FFTstepEncoder, TstepEncoder
from amago_like.nets.values import PopArt, masked_mean, n_step_targets

# where a learned entropy coefficient starts when entropy_coeff is left unbound: high enough that the
# entropy bonus is felt before the policy's std collapses (a start of 0.01 came too late, see docs/RESULTS.md)
AUTO_ENTROPY_COEFF_START = 0.1


@gin.configurable
class Agent(nn.Module):
    """Actor + critic ensemble on a shared trunk; see the module docstring for the losses.

    Discrete, MultiBinary and Box ([-1, 1]) action spaces. ``popart`` normalises the critics'
    outputs by running per-gamma TD-target statistics (PopArt).
    """

    def __init__(
        self,
        obs_space: gym.spaces.Dict,
        rl2_space: gym.spaces.Box,
        action_space: gym.Space,
        max_seq_len: int,
        tstep_encoder_type: type[TstepEncoder] = FFTstepEncoder,
        traj_encoder_type: type[TrajEncoder] = TformerTrajEncoder,
        num_critics: int = 2,
        num_critics_td: int | None = None,
        target_actor: bool = False,
        target_actor_tau: float | None = None,
        multigamma_actor: bool = False,
        pessimistic_actor: bool = False,
        gammas: tuple[float, ...] = (0.9, 0.99, 0.999),
        actor_gamma: float = 0.99,
        tau: float = 0.005,
        reward_multiplier: float = 1.0,
        online_coeff: float = 1.0,
        offline_coeff: float = 0.1,
        entropy_coeff: float | None = None,
        target_entropy: float | str | None = "auto",
        entropy_coeff_lr: float = 3e-3,
        actor_lr_scale: float = 1.0,
        bc_action_limit: float | None = None,
        num_actions_for_value: int = 1,
        n_step: int = 1,
        popart: bool = True,
        averaged_policy_rate: float | None = 0.02,
        novelty_bonus: float | str = "auto",
        novelty_fade: float | None = None,
        reward_decoder_coeff: float = 0.0,
        soft_targets: bool = False,
    ):
        super().__init__()
        if actor_gamma not in gammas:
            raise ValueError(f"actor_gamma={actor_gamma} must be one of gammas={gammas}")
        check_ints("Agent", 1, num_critics=num_critics, num_actions_for_value=num_actions_for_value, n_step=n_step)
        for name, rate in (("tau", tau), ("target_actor_tau", target_actor_tau), ("bc_action_limit", bc_action_limit)):
            check_fraction(f"Agent.{name}", rate, allow_none=name != "tau")
        check_fraction("Agent.averaged_policy_rate", averaged_policy_rate, allow_none=True)
        if target_actor_tau is not None and not target_actor:
            raise ValueError("Agent.target_actor_tau is set but target_actor is False; bind Agent.target_actor = True")
        if num_critics_td is not None and not 1 <= num_critics_td <= num_critics:
            raise ValueError(
                f"Agent.num_critics_td must be None (all critics) or between 1 and num_critics={num_critics}, "
                f"got {num_critics_td}"
            )
        self.discrete = isinstance(action_space, gym.spaces.Discrete)
        self.multi_binary = isinstance(action_space, gym.spaces.MultiBinary)
        self.action_dim = int(action_space.n) if self.discrete else math.prod(action_space.shape)
        target_entropy = self._resolve_target_entropy(target_entropy)
        if entropy_coeff is None:  # a learned coefficient starts here; a fixed one is off
            entropy_coeff = AUTO_ENTROPY_COEFF_START if target_entropy is not None else 0.0
        if target_entropy is not None and not entropy_coeff > 0:
            raise ValueError(
                f"target_entropy learns entropy_coeff from its starting value, which must be > 0 (got "
                f"{entropy_coeff}); bind e.g. Agent.entropy_coeff = 0.1, or leave it unbound"
            )
        self.max_seq_len = max_seq_len
        self.tau, self.reward_multiplier, self.actor_lr_scale = tau, reward_multiplier, actor_lr_scale
        self.novelty = NoveltyBonus(obs_space, novelty_bonus, novelty_fade)
        # the fraction of the run's planned updates done, which the learner sets before each update
        self.register_buffer("training_progress", torch.zeros(()), persistent=False)
        self.online_coeff, self.offline_coeff, self.entropy_coeff = online_coeff, offline_coeff, entropy_coeff
        check_positive("Agent.actor_lr_scale", actor_lr_scale)
        self.target_entropy, self.entropy_coeff_lr = target_entropy, entropy_coeff_lr
        # continuous BC targets clamped to [-limit, limit]; exploration noise clipped to exactly +-1 is
        # otherwise a pre-tanh target of +-6 (the distributions' own guard), which widens the policy's std
        self.bc_action_limit = bc_action_limit
        self.log_entropy_coeff = None if target_entropy is None else nn.Parameter(torch.tensor(math.log(entropy_coeff)))
        self.num_actions_for_value, self.n_step = num_actions_for_value, n_step
        self.num_critics_td, self.multigamma_actor = num_critics_td, multigamma_actor
        self.pessimistic_actor, self.soft_targets = pessimistic_actor, soft_targets
        self.register_buffer("gammas", torch.tensor(gammas, dtype=torch.float32))
        self.actor_gamma_idx = list(gammas).index(actor_gamma)

        self.tstep_encoder = tstep_encoder_type(obs_space, rl2_space)
        self.traj_encoder = traj_encoder_type(self.tstep_encoder.emb_dim, max_seq_len)
        d = self.traj_encoder.emb_dim
        num_policies = len(gammas) if multigamma_actor else 1
        self.actor = Actor(d, self.action_dim, self.discrete, multi_binary=self.multi_binary, num_gammas=num_policies)
        self.critics = CriticEnsemble(d, self.action_dim, gammas, num_critics, num_bins=1, discrete=self.discrete)
        self.reward_decoder_coeff = check_number("Agent.reward_decoder_coeff", reward_decoder_coeff, minimum=0.0)
        self.reward_decoder = RewardDecoder(d, obs_space, self.action_dim) if reward_decoder_coeff else None
        self.target_critics = copy.deepcopy(self.critics).requires_grad_(False)
        # TD targets act with a slowly moving copy of the actor, so targets do not chase every actor step
        self.target_actor = copy.deepcopy(self.actor).requires_grad_(False) if target_actor else None
        self.target_actor_tau = tau if target_actor_tau is None else target_actor_tau  # it trails by ~1/rate updates
        self.popart = PopArt(len(gammas)) if popart else None
        # evaluations act with an average of the recent updates' weights, which evens out the policy's swings from
        # update to update; training collection and learning use the live weights
        rate = averaged_policy_rate
        self.averaged_policy = None if rate is None else AveragedPolicy(self.acting_parts(), rate)

    def _resolve_target_entropy(self, target: float | str | None) -> float | None:
        """``"auto"``: -action_dim for continuous actions (SAC's choice), none for discrete and multi-binary."""
        if isinstance(target, str):
            if target != "auto":
                raise ValueError(f'Agent.target_entropy must be a number, "auto" or None, got {target!r}')
            return None if self.discrete or self.multi_binary else -float(self.action_dim)
        return target

    def param_groups(self, lr: float) -> list[dict[str, Any]]:
        """Optimizer parameter groups: everything at ``lr``; the actor head at ``lr * actor_lr_scale`` (its own group
        only when the scale is not 1; below 1 it trails the critics); a learned entropy coefficient at its own rate."""
        actor = list(self.actor.parameters()) if self.actor_lr_scale != 1.0 else []
        own = {id(p) for p in [*actor, self.log_entropy_coeff] if p is not None}
        groups = [{"params": [p for p in self.parameters() if id(p) not in own], "lr": lr}]
        if actor:
            groups.append({"params": actor, "lr": lr * self.actor_lr_scale})
        if self.log_entropy_coeff is not None:
            groups.append({"params": [self.log_entropy_coeff], "lr": self.entropy_coeff_lr, "weight_decay": 0.0})
        return groups

    # ------------------------------------------------------------------ trunk
    def acting_parts(self) -> dict[str, nn.Module]:
        """The modules a rollout acts with (``averaged_policy`` holds its copies under the same names)."""
        return {"tstep_encoder": self.tstep_encoder, "traj_encoder": self.traj_encoder, "actor": self.actor}

    def acting(self, averaged: bool) -> nn.Module:
        """What holds the modules that act: the averaged policy's copies when ``averaged`` and kept, else self."""
        return self.averaged_policy.parts if averaged and self.averaged_policy is not None else self

    def encode(
        self,
        obs: dict[str, torch.Tensor],
        rl2s: torch.Tensor,
        time_idxs: torch.Tensor,
        pad_mask=None,
        hidden_state=None,
        parts: nn.Module | None = None,
    ):
        """The trunk's states; ``parts``: other copies of the encoders to run (the averaged policy's)."""
        parts = self if parts is None else parts
        emb = parts.tstep_encoder(obs, rl2s, pad_mask=pad_mask)  # (B, L, D_t)
        return parts.traj_encoder(emb, time_idxs, hidden_state=hidden_state)  # (B, L, D), state

    # ------------------------------------------------------------------ value heads
    # Critics emit raw outputs; these hooks (overridden by MultiTaskAgent) turn them into values.
    def q_values(self, raw: torch.Tensor) -> torch.Tensor:
        """Raw critic outputs (C, ..., G) -> Q in reward units (C, ..., G)."""
        return raw if self.popart is None else self.popart.unnormalize(raw)

    def actor_values(self, raw: torch.Tensor) -> torch.Tensor:
        """The values the actor maximises (normalised under PopArt, so the actor's scale does not grow with returns)."""
        return raw

    def critic_loss(self, raw: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """raw (C, B, L-1, G), target (B, L-1, G) in reward units, mask (B, L-1, 1)."""
        y = target if self.popart is None else self.popart.normalize(target)
        return masked_mean((raw - y.unsqueeze(0)) ** 2, mask.unsqueeze(0))

    @torch.no_grad()
    def update_value_stats(self, target: torch.Tensor, mask: torch.Tensor) -> None:
        """PopArt: merge the real targets into the statistics and rescale the critics' last layers
        so that their unnormalised predictions do not change. Training mode only."""
        if self.popart is None or not self.training:
            return
        old_mean, old_std = self.popart.update(target, mask)
        for critics in (self.critics, self.target_critics):
            self.popart.rescale_(critics.out, old_mean, old_std)

    def _all_actions(self, like: torch.Tensor) -> torch.Tensor:
        """(A, 1, ..., 1, A) one-hot rows to evaluate critics on every discrete action."""
        eye = torch.eye(self.action_dim, device=like.device, dtype=like.dtype)
        return eye.view(self.action_dim, *([1] * (like.dim() - 1)), self.action_dim)

    def _policy_values(
        self, critics: nn.Module, state: torch.Tensor, dist, to_values
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Values of the policy's actions for every gamma, q (C, B, L, G, N) over N actions, and their
        probabilities (B, L, G or 1, N); None means N equally likely samples. Discrete: N = every
        action; otherwise N = ``num_actions_for_value`` reparameterised samples. With a policy per
        gamma, gamma g's values are of its own policy's actions."""
        if self.discrete:
            q = to_values(critics(state.unsqueeze(0), self._all_actions(state)))  # (C, A, B, L, G)
            probs = dist.probs if self.multigamma_actor else dist.probs.unsqueeze(-2)  # (B, L, G|1, A)
            return q.movedim(1, -1), probs  # (C, B, L, G, A)
        actions = dist.rsample(self.num_actions_for_value)  # (K, B, L, [G,] A)
        if self.multigamma_actor:
            q = to_values(critics(state.unsqueeze(0).unsqueeze(-2), actions))  # (C, K, B, L, G_actor, G)
            q = q.diagonal(dim1=-2, dim2=-1)  # (C, K, B, L, G)
        else:
            q = to_values(critics(state.unsqueeze(0), actions))  # (C, K, B, L, G)
        return q.movedim(1, -1), None  # (C, B, L, G, K)

    @staticmethod
    def _expectation(q: torch.Tensor, probs: torch.Tensor | None) -> torch.Tensor:
        """E over the last (action) dim of q (..., N) under probs (None: a mean over samples)."""
        return q.mean(-1) if probs is None else (q * probs).sum(-1)

    # ------------------------------------------------------------------ training
    def forward(
        self, batch: Batch, critic_mask: torch.Tensor | None = None, actor_mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """(critic_loss, actor_loss, metrics as 0-dim tensors) of a batch; the caller weighs and sums the losses.

        ``critic_mask`` / ``actor_mask`` (B, L-1, 1) bool choose the transitions each loss averages
        over (default: every real transition). Training goes through ``forward`` so that a
        DDP-wrapped agent synchronises gradients.
        """
        states, _ = self.encode(batch.obs, batch.rl2s, batch.time_idxs, pad_mask=batch.pad_mask)  # (B, L, D)
        s, s_next = states[:, :-1], states[:, 1:]  # (B, L-1, D)
        mask = batch.transition_mask if critic_mask is None else critic_mask  # (B, L-1, 1)
        actor_mask = batch.transition_mask if actor_mask is None else actor_mask
        g = self.actor_gamma_idx
        learned = self.log_entropy_coeff is not None
        ent_coeff = self.log_entropy_coeff.exp().detach() if learned else self.entropy_coeff

        # critic: TD targets from target heads on the (detached) next states
        with torch.no_grad():
            next_dist = (self.actor if self.target_actor is None else self.target_actor)(s_next.detach())
            q_next, probs = self._policy_values(self.target_critics, s_next.detach(), next_dist, self.q_values)
            v_next = self._expectation(self._td_critics(q_next).min(0).values, probs)  # (B, L-1, G)
            if self.soft_targets:  # the next state's value counts the entropy the policy keeps there
                v_next = v_next + ent_coeff * self._per_policy(next_dist.entropy())
            bonus = self.novelty(batch.obs, batch.pad_mask, self.training_progress)  # rollouts never see it
            rews = (batch.rews + bonus) * self.reward_multiplier  # (B, L-1, 1)
            target = n_step_targets(rews, batch.dones, batch.transition_mask, v_next, self.gammas, self.n_step)
            self.update_value_stats(target, mask)
        raw_taken = self.critics(s, batch.actions)  # (C, B, L-1, G[, bins])
        critic_loss = self.critic_loss(raw_taken, target, mask)

        # actor: policy gradient through frozen critics (on detached states) + filtered BC, for the policy
        # of actor_gamma, or for each gamma's own policy (P = G policies, their losses averaged)
        dist = self.actor(s)  # batch (B, L-1[, G])
        gs = slice(None) if self.multigamma_actor else slice(g, g + 1)  # the gammas with a policy
        q_pi, probs = self._policy_values(_frozen(self.critics), s.detach(), dist, self.actor_values)
        # pessimistic: the policy climbs the ensemble's minimum, so it cannot chase one critic's error
        # into actions the data never tried (where critics disagree)
        q_ens = q_pi.min(0).values if self.pessimistic_actor else q_pi.mean(0)
        value = self._expectation(q_ens, probs)[..., gs]  # (B, L-1, P)
        entropy = self._per_policy(dist.entropy())  # (B, L-1, P)
        with torch.no_grad():  # the filter compares like with like: the critics' mean for both terms
            baseline = value if not self.pessimistic_actor else self._expectation(q_pi.mean(0), probs)[..., gs]
            advantage = self.actor_values(raw_taken).mean(0)[..., gs] - baseline  # (B, L-1, P)
            bc_filter = (advantage > 0).float()
        if self.discrete:
            bc_actions = batch.actions.argmax(-1)  # (B, L-1)
        elif self.bc_action_limit is not None and not self.multi_binary:
            bc_actions = batch.actions.clamp(-self.bc_action_limit, self.bc_action_limit)  # (B, L-1, A)
        else:
            bc_actions = batch.actions
        if self.multigamma_actor:  # the same taken action for every gamma's policy: (B, L-1, G[, A])
            bc_actions = bc_actions.unsqueeze(2).expand(*bc_actions.shape[:2], len(self.gammas), *bc_actions.shape[2:])
        logp = self._per_policy(dist.log_prob(bc_actions))  # (B, L-1, P)
        actor_loss = masked_mean(
            -self.online_coeff * value - self.offline_coeff * bc_filter * logp - ent_coeff * entropy,
            actor_mask,
        )
        if learned:  # dual step: d/d log_coeff = H - target (descent raises the coefficient while H < target)
            ent_gap = masked_mean(entropy.detach(), actor_mask) - self.target_entropy
            actor_loss = actor_loss + self.log_entropy_coeff * ent_gap
        with torch.no_grad():  # 0-dim tensors: reading them waits for the GPU, so the caller does it once
            metrics = {
                "critic_loss": critic_loss.detach(),
                "actor_loss": actor_loss.detach(),
                "q_mean": masked_mean(self.q_values(raw_taken)[..., g : g + 1], mask.unsqueeze(0)),
                "td_target_mean": masked_mean(target[..., g : g + 1], mask),
                "bc_filter_rate": masked_mean(bc_filter, actor_mask),
                "policy_entropy": masked_mean(entropy, actor_mask),
                "reward_mean": masked_mean(batch.rews, mask),
            }
            if learned:
                metrics["entropy_coeff"] = ent_coeff
            if self.popart is not None:
                metrics["popart_mean"] = self.popart.mean[g]
                metrics["popart_std"] = self.popart.std[g]
        if self.reward_decoder is not None:  # the trunk also learns to predict the window's rewards
            decoder_loss = self.reward_decoder.loss(s, batch.obs, batch.actions, batch.rews, batch.transition_mask)
            actor_loss = actor_loss + self.reward_decoder_coeff * decoder_loss
            metrics["reward_decoder_loss"] = decoder_loss.detach()
        return critic_loss, actor_loss, metrics

    def _per_policy(self, x: torch.Tensor) -> torch.Tensor:
        """A per-state quantity of the actor (B, L-1[, G]) -> (B, L-1, P): one column per policy."""
        return x if self.multigamma_actor else x.unsqueeze(-1)

    def _td_critics(self, q: torch.Tensor) -> torch.Tensor:
        """q (C, ...) -> (num_critics_td, ...): a random subset of critics per entry (all with None),
        so the minimum over them is pessimistic without the bias of always taking the whole ensemble's."""
        C = q.shape[0]
        if self.num_critics_td is None or self.num_critics_td == C:
            return q
        idx = torch.rand(C, *q.shape[1:], device=q.device).argsort(0)[: self.num_critics_td]
        return q.gather(0, idx)

    # ------------------------------------------------------------------ objective: loss weights and masks
    #: weight of the critic loss in the total; ``Experiment.critic_loss_weight`` sets it (one binding, not two)
    critic_loss_weight: float = 10.0

    def edit_critic_mask(self, batch: Batch, mask: torch.Tensor) -> torch.Tensor:
        """Hook: which transitions (B, L-1, 1) bool train the critics. Default: every real one."""
        return mask

    def edit_actor_mask(self, batch: Batch, mask: torch.Tensor) -> torch.Tensor:
        """Hook: which transitions (B, L-1, 1) bool train the actor (e.g. drop exploratory or demo steps)."""
        return mask

    def loss(
        self,
        batch: Batch,
        forward: Callable[..., Any] | None = None,
        edit_critic_mask: Callable[[Batch, torch.Tensor], torch.Tensor] | None = None,
        edit_actor_mask: Callable[[Batch, torch.Tensor], torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The training objective: ``critic_loss_weight`` x critic loss + actor loss, each over the transitions
        its mask hook keeps, and the metrics (0-dim tensors, still on the device).

        ``forward``: the module to run (the DDP-wrapped or compiled agent; default this one). The mask hooks
        default to this agent's; the experiment passes its own, which forward here unless overridden."""
        critic_mask = (edit_critic_mask or self.edit_critic_mask)(batch, batch.transition_mask.clone())
        actor_mask = (edit_actor_mask or self.edit_actor_mask)(batch, batch.transition_mask.clone())
        forward = self if forward is None else forward  # (not `or`: a compiled module has no truth value)
        critic_loss, actor_loss, metrics = forward(batch, critic_mask=critic_mask, actor_mask=actor_mask)
        return self.critic_loss_weight * critic_loss + actor_loss, metrics

    @torch.no_grad()
    def soft_sync_targets(self) -> None:
        """Polyak averaging after each update: the target critics, the target actor, the averaged policy."""
        polyak_(self.target_critics, self.critics, self.tau)
        if self.target_actor is not None:
            polyak_(self.target_actor, self.actor, self.target_actor_tau)
        if self.averaged_policy is not None:
            self.averaged_policy.update_(self.acting_parts())

    # ------------------------------------------------------------------ rollouts
    def init_hidden_state(self, batch_size: int, device: torch.device) -> Any:
        return self.traj_encoder.init_hidden_state(batch_size, device)

    def reset_hidden_state(self, hidden_state: Any, dones: np.ndarray) -> Any:
        return self.traj_encoder.reset_hidden_state(hidden_state, dones)

    @torch.no_grad()
    def get_actions(
        self,
        obs: dict[str, torch.Tensor],
        rl2s: torch.Tensor,
        time_idxs: torch.Tensor,
        hidden_state: Any,
        sample: bool = True,
        averaged: bool = False,
    ) -> tuple[torch.Tensor, Any]:
        """One step for N actors: inputs (N, 1, ...) -> actions (N,) long, (N, A) long for
        multi-binary, or (N, A) float; and the new hidden state. ``averaged`` (evaluations): act with the averaged
        weights where ``averaged_policy_rate`` keeps them; otherwise the live weights act."""
        parts = self.acting(averaged)
        states, hidden_state = self.encode(obs, rl2s, time_idxs, hidden_state=hidden_state, parts=parts)  # (N, 1, D)
        dist = parts.actor(states[:, -1], gamma_index=self.actor_gamma_idx)
        if self.discrete:
            actions = dist.sample() if sample else dist.mode()
        else:
            actions = dist.sample(1)[0] if sample else dist.mode()
        return (actions.long() if self.multi_binary else actions), hidden_state


def _frozen(module: nn.Module) -> Callable[..., Any]:
    """``module`` called with its parameters detached: gradients reach its inputs but not its weights
    (without toggling requires_grad, which torch.compile cannot trace)."""
    params = {name: p.detach() for name, p in module.named_parameters()}
    return lambda *args: torch.func.functional_call(module, params, args)
