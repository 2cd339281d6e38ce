"""RIME (Cheng et al., ICML 2024, "RIME: Robust Preference-based Reinforcement Learning with Noisy Preferences"):
PEBBLE whose reward training keeps the labels it trusts, flips the ones it is sure are wrong, and starts from a
reward model warmed up on the pre-training's intrinsic reward (ALGORITHM.md §13). Read from its authors' code
(CJReinforce/RIME_ICML2024: `reward_model_RIME.py`, `train_RIME.py`, `utils.py`, `run_parallel.sh`) and written
here anew; config/method/rime.yaml is its preset.

- Sample selection (`rime_train_reward`, in place of `train_reward`). Before every reward-training epoch, over all
  labelled pairs: p̂ = the members' mean of softmax(segment returns), and KL = −Σ ỹ log p̂ against the label ỹ (an
  equal label: (0.5, 0.5)). A pair is trusted when KL < −ln(x + 1e-8) + α x + min(β_t σ², 3), with x the running
  maximum and σ² the running variance of the trusted KLs (`KLStatistics`) and β_t falling linearly from
  `rime_beta_init` to `rime_beta_min` over `rime_beta_decay_epochs` epochs; its label is flipped for the epoch when
  KL > −ln(`rime_flip_probability`). The epoch trains on the trusted pairs and the flipped ones (a pair can be both,
  then twice, flipped), each member on its own permutation, minibatches of `reward_train_batch`, on whole segments.
  A round trains at most `reward_update` epochs and stops after an epoch whose accuracy is above 0.98 once more
  than `rime_least_epochs` epochs have run. The learning rate rises linearly from 0 over the first W epochs of the
  run, W = round(⅓ × rounds × `rime_least_epochs`) (the code's constant schedule with warm-up).
- Warm start (extension `rime_warm_start`): after every SAC update of the unsupervised pre-training,
  `rime_warm_start_steps` Adam steps of the reward model on fresh batches, towards the batch's k-NN state entropy
  normalised by the agent's running mean and std and scaled into [−1, 1] by the largest normalised value seen.
- After the first round the critic is kept (no reset); the `reset_update` SAC updates still follow
  (`updates_after_first_round`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F

import feedback
import registry
from agent.state_entropy import knn_distance
from config_rules import Int, Number, Section, fail, key

if TYPE_CHECKING:
    from feedback import Run
    from teacher import QueryRound

STOP_ACCURACY = 0.98  # the code's early stop, on DeepMind Control and Meta-World alike
STATISTICS_RATE = 0.1  # the code's running mean and maximum of the trusted KLs move this far per epoch
UNCERTAINTY_CAP = 3.0  # the code caps β_t σ² at this


@registry.register_keys
@dataclass
class RimeKeys(Section):
    """RIME's keys: defaults from its scripts' DeepMind Control runs (run_parallel.sh)."""

    rime_alpha: float = key(0.5, Number(0.0, closed=True), "RIME: α of the lower bound -ln x + α x + β σ²", switch=True)
    rime_beta_init: float = key(3.0, Number(0.0, closed=True), "RIME: β_t of the lower bound at first", switch=True)
    rime_beta_min: float = key(1.0, Number(0.0, closed=True), "RIME: β_t at the end of its decay", switch=True)
    rime_beta_decay_epochs: int = key(
        60, Int(), "RIME: reward-training epochs over which β_t falls (its code: 60 DMC, 600 Meta-World)", switch=True
    )
    rime_flip_probability: float = key(
        0.001, Number(0.0, 0.5), "RIME: flip a label r̂ gives less than this probability (τ_upper = -ln p)", switch=True
    )
    rime_least_epochs: int = key(
        15, Int(0), "RIME: epochs a round trains before its early stop may end it (its code: 15 DMC, 5 MW)", switch=True
    )
    rime_warm_start_steps: int = key(
        5, Int(0), "RIME: r̂ steps on the intrinsic reward after every pre-training step; 0: no warm start", switch=True
    )

    def check_relations(self) -> None:
        if self.rime_beta_min > self.rime_beta_init:
            fail("rime_beta_min", self.rime_beta_min, f"must be <= rime_beta_init ({self.rime_beta_init})")


class KLStatistics:
    """The running statistics of the trusted pairs' KLs (the code's RunningMeanStd in its 'fixed' mode): mean and
    maximum move by STATISTICS_RATE towards each epoch's, the variance pools every epoch's with its count."""

    def __init__(self) -> None:
        self.mean, self.var, self.max, self.count = 0.0, 1.0, 0.0, 0

    def update(self, values: np.ndarray) -> None:
        if len(values) == 0:
            return
        batch_mean, batch_var, total = float(values.mean()), float(values.var()), self.count + len(values)
        delta = batch_mean - self.mean
        self.var = (
            self.var * self.count + batch_var * len(values) + delta**2 * self.count * len(values) / total
        ) / total
        self.mean += STATISTICS_RATE * delta
        self.max += STATISTICS_RATE * (float(values.max()) - self.max)
        self.count = total

    def state_dict(self) -> dict[str, float]:
        return {"mean": self.mean, "var": self.var, "max": self.max, "count": self.count}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.mean, self.var, self.max, self.count = state["mean"], state["var"], state["max"], int(state["count"])


def pair_kl(model: Any, pairs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """−Σ ỹ log p̂ per pair [M]: p̂ the members' mean of softmax(segment returns), ỹ the label as a distribution."""
    with torch.no_grad():
        rewards = model.net(pairs.reshape(-1, model.input_dim))  # [E, M * 2 * S, 1]
        returns = rewards.view(model.ensemble_size, *pairs.shape[:3]).sum(-1)
        predicted = F.softmax(returns, dim=-1).mean(0)
    target = torch.stack([1.0 - labels, labels], dim=-1)
    return -(target * predicted.log()).sum(-1)


@feedback.register_step("rime_train_reward")
class RobustRewardTraining:
    """RIME's reward training: sample selection and label flipping before every epoch (module docstring)."""

    def __init__(self, run: Run) -> None:
        cfg = run.cfg
        self.cfg = cfg
        self.statistics = KLStatistics()
        self.epochs = 0  # since the first round: β_t's and the learning rate's clock
        rounds = cfg.max_feedback / cfg.reward_batch
        self.warmup_epochs = int(rounds * cfg.rime_least_epochs / 3 + 0.5)
        self.base_lr = cfg.reward_lr

    def beta(self) -> float:
        cfg = self.cfg
        falling = (
            cfg.rime_beta_init - (cfg.rime_beta_init - cfg.rime_beta_min) * self.epochs / cfg.rime_beta_decay_epochs
        )
        return max(cfg.rime_beta_min, falling)

    def lower_bound(self) -> float:
        x = self.statistics.max
        return -math.log(x + 1e-8) + self.cfg.rime_alpha * x + min(self.beta() * self.statistics.var, UNCERTAINTY_CAP)

    def select(self, kl: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(trusted, flipped) pair indices for an epoch from the pairs' KLs; the trusted KLs update the statistics."""
        trusted = torch.nonzero(kl < self.lower_bound()).flatten()
        flipped = torch.nonzero(kl > -math.log(self.cfg.rime_flip_probability)).flatten()
        self.statistics.update(kl[trusted].cpu().numpy())
        return trusted, flipped

    def __call__(self, run: Run, query_round: QueryRound) -> None:
        cfg, trainer = self.cfg, run.reward_trainer
        if run.schedule.labeled_feedback == 0:  # the teacher skipped every query so far
            return
        pairs, labels = run.preferences.data()
        for epoch in range(cfg.reward_update):
            trusted, flipped = self.select(pair_kl(run.reward_model, pairs, labels))
            for group in trainer.opt.param_groups:
                group["lr"] = self.base_lr * min(1.0, self.epochs / max(self.warmup_epochs, 1))
            original = labels[flipped].clone()
            labels[flipped] = 1.0 - original  # for this epoch only: equal labels (0.5) stay as they are
            try:
                accuracy, loss = trainer.fit(self.minibatches(torch.cat([trusted, flipped]), run), augment=False)
            finally:
                labels[flipped] = original
            self.epochs += 1
            if np.mean(accuracy) > STOP_ACCURACY and epoch > cfg.rime_least_epochs:
                break
        run.logger.log("train/reward_train_acc", float(np.mean(accuracy)), run.step)
        run.logger.log("train/reward_loss", loss, run.step)
        run.logger.log("train/rime_trusted_fraction", float(len(trusted)) / len(labels), run.step)
        run.logger.log("train/rime_flipped_fraction", float(len(flipped)) / len(labels), run.step)
        run.logger.log("train/rime_lower_bound", self.lower_bound(), run.step)

    def minibatches(self, selected: torch.Tensor, run: Run) -> list[torch.Tensor]:
        """One pass over `selected` [n]: each member its own permutation, minibatches [E, ≤ reward_train_batch]."""
        trainer = run.reward_trainer
        members = run.reward_model.ensemble_size
        generator = trainer.generator
        orders = [torch.randperm(len(selected), generator=generator, device=generator.device) for _ in range(members)]
        order = torch.stack([selected[permutation] for permutation in orders])
        return list(order.split(self.cfg.reward_train_batch, dim=1))

    def state_dict(self) -> dict[str, Any]:
        return {"statistics": self.statistics.state_dict(), "epochs": self.epochs}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.statistics.load_state_dict(state["statistics"])
        self.epochs = int(state["epochs"])


@feedback.register_step("updates_after_first_round")
def updates_after_first_round(run: Run, query_round: QueryRound) -> None:
    """RIME keeps the critic at the first round (PEBBLE and QPA reset it) but still takes its `reset_update` SAC
    updates on uniform batches of the relabelled buffer."""
    if not query_round.first:
        return
    for index in range(run.cfg.reset_update):
        run.update_metrics = run.agent.update(lambda: run.sample(hybrid=False), index)


@registry.register_extension(
    "rime_warm_start", active=lambda cfg: "rime_train_reward" in cfg.feedback_steps and cfg.rime_warm_start_steps > 0
)
class WarmStart:
    """r̂ fitted to the normalised intrinsic reward during the unsupervised pre-training (module docstring)."""

    def __init__(self, run: Run) -> None:
        self.steps = run.cfg.rime_warm_start_steps
        self.lowest, self.highest = math.inf, -math.inf  # the state entropies seen, for the scale

    def after_pretraining_update(self, run: Run) -> None:
        agent, model, trainer = run.agent, run.reward_model, run.reward_trainer
        mean, inverse_std = agent.s_ent_stats.mean, agent.s_ent_stats.inverse_std
        for _ in range(self.steps):
            batch, stored_obs = run.replay_buffer.sample_state_ent(agent.batch_size)
            entropy = knn_distance(batch.obs, stored_obs, run.cfg.topK + 1)
            self.lowest = min(self.lowest, float(entropy.min()))
            self.highest = max(self.highest, float(entropy.max()))
            scale = torch.maximum((self.lowest - mean).abs(), (self.highest - mean).abs()) * inverse_std
            target = (entropy - mean) * inverse_std / scale
            obs_action = torch.cat([batch.obs, batch.action], dim=-1)
            predicted = model.net(obs_action.unsqueeze(0).expand(model.ensemble_size, -1, -1))
            loss = F.mse_loss(predicted, target.expand_as(predicted), reduction="none").mean((1, 2)).sum()
            trainer.opt.zero_grad(set_to_none=True)
            loss.backward()
            trainer.opt.step()
        run.logger.log("train/rime_warm_start_loss", loss.detach(), run.step)

    def state_dict(self) -> dict[str, Any]:
        return {"lowest": self.lowest, "highest": self.highest}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.lowest, self.highest = float(state["lowest"]), float(state["highest"])
