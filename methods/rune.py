"""RUNE (Liang et al., ICLR 2022): SAC trains on r̂_mean + β_t · r̂_std, the reward ensemble's mean and (population)
std of r̂(s, a), with β_t = β_0 (1 - ρ)^t decaying with the environment step t (ALGORITHM.md §5); on while
`rune_beta_init` > 0 (config/method/rune.yaml), with its keys below.

The buffer stores the std beside r̂ (the extension's `needs_reward_std`); the bonus is added to each sampled batch
(the `transform_batch` hook), so β_t is always the one of the step that samples.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import registry
from config_rules import Number, Section, fail, key
from replay_buffer import Batch

if TYPE_CHECKING:
    from feedback import Run


@registry.register_keys
@dataclass
class RuneKeys(Section):
    rune_beta_init: float = key(0.0, Number(0.0, closed=True), "RUNE β_0 of r̂_mean + β_t r̂_std; 0 = off", switch=True)
    rune_beta_decay: float = key(
        1e-5, Number(0.0, 1.0, closed=True, high_open=True), "RUNE: β_t = β_0 (1 - decay)^step", switch=True
    )

    def check_relations(self) -> None:
        # Called on the whole config (TrainConfig.check_relations), so the core's keys are there too.
        if self.rune_beta_init <= 0:
            return
        reward_source, ensemble_size = self.reward_source, self.ensemble_size  # type: ignore[attr-defined]
        if reward_source != "learned":
            fail("rune_beta_init", self.rune_beta_init, "needs reward_source=learned (the bonus is the models' std)")
        if ensemble_size < 2:
            fail(
                "rune_beta_init",
                self.rune_beta_init,
                f"needs ensemble_size >= 2 (got {ensemble_size}): the bonus is the std over the ensemble",
            )


@registry.register_extension("rune_bonus", active=lambda cfg: cfg.rune_beta_init > 0)
class RuneBonus:
    """reward + β_t · reward_std on every SAC batch sampled on the learned reward."""

    needs_reward_std = True  # the replay buffer keeps the ensemble's std of r̂ beside r̂

    def __init__(self, run: Run) -> None:
        self.beta_init = run.cfg.rune_beta_init
        self.decay = run.cfg.rune_beta_decay

    def weight(self, step: int) -> float:
        return self.beta_init * (1.0 - self.decay) ** step

    def transform_batch(self, batch: Batch, step: int) -> Batch:
        beta = self.weight(step)
        if not beta:
            return batch
        return batch._replace(reward=batch.reward.add(batch.reward_std, alpha=beta))
