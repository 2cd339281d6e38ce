"""RUNE (Liang et al., ICLR 2022): SAC trains on r̂_mean + β_t · r̂_std, the reward ensemble's mean and (population)
std of r̂(s, a), with β_t = β_0 (1 - ρ)^t decaying with the environment step t (ALGORITHM.md §5).

The buffer stores the std beside r̂ (`ReplayBuffer(store_reward_std=True)`); the bonus is added to each sampled batch,
so β_t is always the one of the step that samples.
"""

from __future__ import annotations

from dataclasses import dataclass

from replay_buffer import Batch


@dataclass(frozen=True)
class RuneBonus:
    """A batch transform: reward + β_t · reward_std (rune_beta_init = β_0, rune_beta_decay = ρ)."""

    beta_init: float
    decay: float

    def weight(self, step: int) -> float:
        return self.beta_init * (1.0 - self.decay) ** step

    def __call__(self, batch: Batch, step: int) -> Batch:
        beta = self.weight(step)
        if not beta:
            return batch
        return batch._replace(reward=batch.reward.add(batch.reward_std, alpha=beta))
