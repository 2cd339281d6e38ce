"""Soft Actor-Critic: one update loop on batches the caller draws, and PEBBLE's state-entropy batches
(ALGORITHM.md §2, §6).

Every update returns its metrics as detached 0-d tensors on the agent's device, so a training step never
waits for the device; the caller converts them only when it logs.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

import utils
from agent.actor import ACTION_BOUND, DiagGaussianActor
from agent.critic import DoubleQCritic
from agent.state_entropy import RunningMeanStd, knn_distance
from replay_buffer import Batch, ReplayBuffer

Metrics = dict[str, torch.Tensor]


class SacUpdate(NamedTuple):
    """What one step's SAC update exposes (to a method's `after_update` hook, feedback.HOOKS)."""

    metrics: Metrics  # the update's metrics, device tensors (e.g. `actor_q`, the actor's mean Q)
    last_batch: Callable[[], Batch]  # the last batch it trained on, gathered when asked for


def _require(ok: bool, name: str, value: Any, allowed: str) -> None:
    if not ok:
        raise ValueError(f"{name}={value!r} is not valid; allowed: {allowed}")


class SACAgent:
    """SAC with a double-Q critic, a tanh-Gaussian actor and a learned temperature (target entropy -|A|)."""

    def __init__(
        self,
        obs_dim: int,
        action_dim: int,
        action_range: Sequence[float],
        device: str | torch.device,
        critic_cfg: Mapping[str, Any],
        actor_cfg: Mapping[str, Any],
        discount: float,
        init_temperature: float,
        alpha_lr: float,
        alpha_betas: Sequence[float],
        actor_lr: float,
        actor_betas: Sequence[float],
        actor_update_frequency: int,
        critic_lr: float,
        critic_betas: Sequence[float],
        critic_tau: float,
        critic_target_update_frequency: int,
        batch_size: int,
        learnable_temperature: bool,
        normalize_state_entropy: bool = True,
    ) -> None:
        _require(
            len(action_range) == 2 and action_range[0] < action_range[1],
            "action_range",
            action_range,
            "[low, high] with low < high",
        )

        self.obs_dim = int(obs_dim)
        self.action_dim = int(action_dim)
        self.action_range = (float(action_range[0]), float(action_range[1]))
        self.device = torch.device(device)
        self.critic_cfg = dict(critic_cfg)
        self.actor_cfg = dict(actor_cfg)
        self.discount = float(discount)
        self.init_temperature = float(init_temperature)
        self.alpha_lr, self.alpha_betas = float(alpha_lr), tuple(alpha_betas)
        self.actor_lr, self.actor_betas = float(actor_lr), tuple(actor_betas)
        self.critic_lr, self.critic_betas = float(critic_lr), tuple(critic_betas)
        self.actor_update_frequency = int(actor_update_frequency)
        self.critic_tau = float(critic_tau)
        self.critic_target_update_frequency = int(critic_target_update_frequency)
        self.batch_size = int(batch_size)
        self.learnable_temperature = bool(learnable_temperature)
        self.normalize_state_entropy = bool(normalize_state_entropy)
        self.target_entropy = -float(action_dim)
        self.s_ent_stats = RunningMeanStd(shape=(1,), device=self.device)
        self.reset_critic()
        self.reset_actor()

    # ------------------------------------------------------------------ construction and resets
    def reset_critic(self) -> None:
        """Fresh critic, target critic and critic optimiser; the actor and temperature are kept."""
        self.critic = DoubleQCritic(self.obs_dim, self.action_dim, **self.critic_cfg).to(self.device)
        self.critic_target = copy.deepcopy(self.critic).requires_grad_(False)
        self.critic_optimizer = utils.adam(self.critic.parameters(), self.critic_lr, self.critic_betas)

    def reset_actor(self) -> None:
        """Fresh actor and optimiser, and the temperature back to `init_temperature` (as B-Pref does)."""
        self.log_alpha = torch.tensor(
            np.log(self.init_temperature), dtype=torch.float32, device=self.device, requires_grad=True
        )
        self.log_alpha_optimizer = utils.adam([self.log_alpha], self.alpha_lr, self.alpha_betas)
        self.actor = DiagGaussianActor(self.obs_dim, self.action_dim, **self.actor_cfg).to(self.device)
        self.actor_params = list(self.actor.parameters())
        self.actor_optimizer = utils.adam(self.actor_params, self.actor_lr, self.actor_betas)

    @property
    def alpha(self) -> torch.Tensor:
        return self.log_alpha.exp()

    # ------------------------------------------------------------------ acting
    @torch.inference_mode()
    def act(self, obs: np.ndarray, sample: bool = False) -> np.ndarray:
        """Action for one observation [obs_dim] (or a batch [N, obs_dim]): tanh(mu), or a policy sample."""
        obs_t = torch.as_tensor(obs, dtype=torch.float32, device=self.device)
        if obs_t.shape[-1:] != (self.obs_dim,) or obs_t.dim() > 2:
            raise ValueError(f"obs has shape {tuple(obs_t.shape)}; allowed: ({self.obs_dim},) or (N, {self.obs_dim})")
        return self.policy_action(obs_t, sample).cpu().numpy()

    def policy_action(self, obs: torch.Tensor, sample: bool) -> torch.Tensor:
        """`act` on a device tensor, left on the device (what cuda_graphs.py captures); call it without autograd."""
        dist = self.actor(obs)
        action = dist.sample() if sample else dist.mean
        return action.clamp_(*self.action_range)

    @torch.inference_mode()
    def log_likelihood(self, obs: torch.Tensor, action: torch.Tensor, bound: float = ACTION_BOUND) -> torch.Tensor:
        """log π(a|s) [N, 1] of state-action rows under the current stochastic policy, actions clamped to ±`bound`."""
        return self.actor(obs.to(self.device)).log_prob(action.to(self.device), bound)

    # ------------------------------------------------------------------ learning
    def critic_loss(self, batch: Batch) -> torch.Tensor:
        """The clipped double-Q TD loss of a replay batch; `not_done_no_max` lets time-limit cuts bootstrap."""
        # no_grad rather than inference_mode: the target is saved by the loss's autograd graph.
        with torch.no_grad():
            next_action, next_log_prob = self.actor(batch.next_obs).rsample_with_log_prob()
            target_q1, target_q2 = self.critic_target(batch.next_obs, next_action)
            target_v = torch.min(target_q1, target_q2) - self.alpha * next_log_prob
            target_q = torch.addcmul(batch.reward, batch.not_done_no_max, target_v, value=self.discount)
        q1, q2 = self.critic(batch.obs, batch.action)
        return F.mse_loss(q1, target_q) + F.mse_loss(q2, target_q)

    def actor_loss(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """SAC's policy loss on a batch of observations, the log-probabilities [B, 1] of its actions, and the mean
        of min(Q1, Q2) at them, Q(s, π(s))."""
        action, log_prob = self.actor(obs).rsample_with_log_prob()
        q = torch.min(*self.critic(obs, action))
        return (self.alpha.detach() * log_prob - q).mean(), log_prob, q.detach().mean()

    def update(
        self, sample: Callable[[], Batch], step: int, gradient_update: int = 1, policy_update: bool = True
    ) -> Metrics:
        """`gradient_update` SAC steps on batches from `sample`: each a critic step, then (when `policy_update` and
        `step` is a multiple of the actor's frequency) an actor and a temperature step; the target critic follows
        its own frequency in `step`. Where the batches come from (uniform, hybrid, state entropy, with a bonus) is
        the caller's choice, so every variant PEBBLE and QPA need is this one loop."""
        _require(gradient_update >= 1, "gradient_update", gradient_update, "a positive integer")
        update_actor = policy_update and step % self.actor_update_frequency == 0
        highest_q = None  # of the actor steps below: PoLiCER's reset watches the highest one
        for _ in range(gradient_update):
            batch = sample()
            critic_loss = self.critic_loss(batch)
            self.critic_optimizer.zero_grad(set_to_none=True)
            critic_loss.backward()
            self.critic_optimizer.step()
            metrics = {"critic_loss": critic_loss.detach(), "batch_reward": batch.reward.mean()}
            if not update_actor:
                continue
            actor_loss, log_prob, actor_q = self.actor_loss(batch.obs)
            self.actor_optimizer.zero_grad(set_to_none=True)
            # Only the actor's gradients: autograd then skips the critic's weight gradients entirely.
            actor_loss.backward(inputs=self.actor_params)
            self.actor_optimizer.step()
            highest_q = actor_q if highest_q is None else torch.maximum(highest_q, actor_q)
            metrics.update(actor_loss=actor_loss.detach(), actor_entropy=-log_prob.detach().mean(), actor_q=highest_q)
            if self.learnable_temperature:
                alpha_loss = (self.alpha * (-log_prob.detach() - self.target_entropy)).mean()
                self.log_alpha_optimizer.zero_grad(set_to_none=True)
                alpha_loss.backward()
                self.log_alpha_optimizer.step()
                metrics["alpha_loss"] = alpha_loss.detach()
            metrics["alpha"] = self.alpha.detach()
        if step % self.critic_target_update_frequency == 0:
            utils.soft_update_params(self.critic, self.critic_target, self.critic_tau)
        return metrics

    def update_state_ent(self, replay_buffer: ReplayBuffer, step: int, gradient_update: int = 1, K: int = 5) -> Metrics:
        """PEBBLE unsupervised pre-training: the reward is the k-NN state entropy of the batch's observations.

        The bonus is the distance from each batch observation to its K-th nearest neighbour among all stored
        observations; the batch rows are themselves stored, so that is the (K+1)-th smallest distance. With
        `normalize_state_entropy` it is divided by a running estimate of its standard deviation.
        """
        _require(K >= 1, "K", K, "a positive integer")
        entropies = []

        def intrinsic_batch() -> Batch:
            batch, stored_obs = replay_buffer.sample_state_ent(self.batch_size)
            state_entropy = knn_distance(batch.obs, stored_obs, K + 1)
            self.s_ent_stats.update(state_entropy)
            entropies.append(state_entropy.mean())
            reward = state_entropy * self.s_ent_stats.inverse_std if self.normalize_state_entropy else state_entropy
            return batch._replace(reward=reward)

        metrics = self.update(intrinsic_batch, step, gradient_update)
        return {**metrics, "state_entropy": entropies[-1]}

    # ------------------------------------------------------------------ persistence
    def save(self, model_dir: str | Path, step: int) -> None:
        """Network weights as actor_{step}.pt, critic_{step}.pt and critic_target_{step}.pt."""
        model_dir = Path(model_dir)
        for name in ("actor", "critic", "critic_target"):
            utils.atomic_torch_save(getattr(self, name).state_dict(), model_dir / f"{name}_{step}.pt")

    def load(self, model_dir: str | Path, step: int) -> None:
        model_dir = Path(model_dir)
        for name in ("actor", "critic", "critic_target"):
            path = model_dir / f"{name}_{step}.pt"
            if not path.exists():
                raise ValueError(f"model file {str(path)!r} does not exist; save(model_dir, {step}) writes it")
            getattr(self, name).load_state_dict(torch.load(path, map_location=self.device, weights_only=True))

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume training exactly: networks, target, optimisers, temperature, bonus stats."""
        return {
            "actor": self.actor.state_dict(),
            "critic": self.critic.state_dict(),
            "critic_target": self.critic_target.state_dict(),
            "log_alpha": self.log_alpha.detach().clone(),
            "actor_optimizer": self.actor_optimizer.state_dict(),
            "critic_optimizer": self.critic_optimizer.state_dict(),
            "log_alpha_optimizer": self.log_alpha_optimizer.state_dict(),
            "s_ent_stats": self.s_ent_stats.state_dict(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.actor.load_state_dict(state["actor"])
        self.critic.load_state_dict(state["critic"])
        self.critic_target.load_state_dict(state["critic_target"])
        with torch.no_grad():
            self.log_alpha.copy_(state["log_alpha"])
        self.actor_optimizer.load_state_dict(state["actor_optimizer"])
        self.critic_optimizer.load_state_dict(state["critic_optimizer"])
        self.log_alpha_optimizer.load_state_dict(state["log_alpha_optimizer"])
        self.s_ent_stats.load_state_dict(state["s_ent_stats"])
