"""MRN, Meta-Reward-Net (Liu et al., NeurIPS 2022, "Meta-Reward-Net: Implicitly Differentiable Reward Learning for
Preference-based Reinforcement Learning"): PEBBLE whose reward model is also trained through the critic it produces,
so that the critic it leads to ranks the labelled pairs as the teacher did (ALGORITHM.md §14). Read from its
authors' code (RyanLiu112/MRN: `train_MRN.py`; the same update in CJReinforce/RIME_ICML2024's `train_MRN.py`) and
written here anew; config/method/mrn.yaml is its preset.

Every `mrn_meta_steps` steps while feedback remains, the step's SAC update is MRN's bi-level update instead
(the `replace_update` hook):

1. a uniform replay batch; r̂ = the ensemble's mean, differentiable in the reward model's weights φ;
2. the inner target y = r̂ + γ · not_done · V̄(s'), V̄ from the target critic and the actor, fixed;
3. a virtual critic θ' = θ − critic_lr · ∇_θ [MSE(Q1, y) + MSE(Q2, y)], one SGD step that keeps its graph;
4. the outer loss `mrn_outer_weight` × [CE(Q1'), CE(Q2')] on the round's newest labelled pairs (`reward_batch`
   of them), each segment's logit the virtual critic's Q at its first state-action;
5. one step of the reward model's Adam on ∇_φ of the outer loss (through θ' and y);
6. the step's real SAC update on the same batch with the updated r̂, then every stored transition relabelled.

Between meta updates and for the reward model's own training it is PEBBLE (cross-entropy on the labels after each
round, the critic reset at the first).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch.func import functional_call

import registry
from agent.sac import SacUpdate
from config_rules import Int, Number, Section, key

if TYPE_CHECKING:
    from feedback import Run


@registry.register_keys
@dataclass
class MrnKeys(Section):
    """MRN's keys: defaults from its README's walker_walk command."""

    mrn_meta_steps: int = key(
        0, Int(0), "MRN: a bi-level update of r̂ every this many steps while feedback remains; 0: off", switch=True
    )
    mrn_outer_weight: float = key(0.1, Number(0.0), "MRN: weight of the outer (preference) loss", switch=True)


def preference_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of pair logits [n, 2] against labels [n] in [0, 1] (an equal label is (0.5, 0.5))."""
    log_prob = F.log_softmax(logits, dim=-1)
    return -(labels * log_prob[:, 1] + (1.0 - labels) * log_prob[:, 0]).mean()


@registry.register_extension("mrn_bilevel", active=lambda cfg: cfg.mrn_meta_steps > 0)
class BilevelRewardUpdate:
    """MRN's meta update of the reward model through a virtual critic step (module docstring)."""

    def __init__(self, run: Run) -> None:
        self.every = run.cfg.mrn_meta_steps
        self.outer_weight = run.cfg.mrn_outer_weight

    def replace_update(self, run: Run, hybrid: bool) -> SacUpdate | None:
        if run.step % self.every or not run.schedule.budget_left or len(run.preferences) == 0:
            return None
        agent, model = run.agent, run.reward_model
        batch = run.replay_buffer.sample(agent.batch_size)
        obs_action = torch.cat([batch.obs, batch.action], dim=-1)
        reward = model.net(obs_action).mean(0)  # [B, 1], differentiable in φ
        with torch.no_grad():
            next_action, next_log_prob = agent.actor(batch.next_obs).rsample_with_log_prob()
            target_v = torch.min(*agent.critic_target(batch.next_obs, next_action)) - agent.alpha * next_log_prob
        target = reward + agent.discount * batch.not_done * target_v
        weights = dict(agent.critic.named_parameters())
        q1, q2 = functional_call(agent.critic, weights, (batch.obs, batch.action))
        inner_loss = F.mse_loss(q1, target) + F.mse_loss(q2, target)
        gradients = torch.autograd.grad(inner_loss, list(weights.values()), create_graph=True)
        virtual = {name: weight - agent.critic_lr * gradient
                   for (name, weight), gradient in zip(weights.items(), gradients, strict=True)}  # fmt: skip
        outer_loss = self.outer_weight * self.outer_loss(run, virtual)
        trainer = run.reward_trainer
        trainer.opt.zero_grad(set_to_none=True)
        outer_loss.backward(inputs=list(model.net.parameters()))
        trainer.opt.step()
        with torch.no_grad():
            relabelled = batch._replace(reward=model.predict_reward(obs_action))
        metrics = agent.update(lambda: relabelled, run.step)
        run.replay_buffer.relabel_with_predictor(model)
        run.logger.log("train/mrn_outer_loss", outer_loss.detach(), run.step)
        return SacUpdate(metrics, lambda: relabelled)

    def outer_loss(self, run: Run, virtual: dict[str, torch.Tensor]) -> torch.Tensor:
        """CE of the virtual critic's Q at the first state-action of each segment of the newest labelled pairs."""
        pairs, labels = run.preferences.data()
        newest = slice(max(len(labels) - run.cfg.reward_batch, 0), len(labels))
        first = pairs[newest, :, 0]  # [n, 2, ds + da]
        obs_dim = run.agent.obs_dim
        q1, q2 = functional_call(run.agent.critic, virtual, (first[..., :obs_dim], first[..., obs_dim:]))
        return preference_cross_entropy(q1.squeeze(-1), labels[newest]) + preference_cross_entropy(
            q2.squeeze(-1), labels[newest])  # fmt: skip
