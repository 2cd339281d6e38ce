"""PoLiCER (Heo et al., ICLR 2026): policy-likelihood sampling of queries, and a reset of the critic and the reward
model triggered by the critic's own Q (ALGORITHM.md §11). Read from the authors' public code (JongKook-Heo/PoLiCER:
`reward_model/pls_reward_model.py`, `train_PoLiCER.py`, `scripts/synthetic.sh`); written here anew.

- `policy_likelihood` (query scheme): 2 x `reward_batch` x `large_batch` segments drawn uniformly from the stored
  episodes (B-Pref's store of the `history_episodes` newest), each scored by the mean log π(a|s) of its steps under
  the current policy and ranked, rank 1 the likeliest; 2 x `reward_batch` of them are drawn without replacement
  with probability ∝ (1 / rank)^`policer_tau`, shuffled, and paired: the first half are the σ0, the second the σ1.
- `critic_triggered_reset` (feedback step): while feedback remains, the highest mean Q(s, π(s)) the actor updates
  have seen since the last reset is watched; at a round after the first, when it passes the threshold
  (`policer_q_threshold`), every reward model is re-initialised and trained again on all labels, the buffer is
  relabelled and the critic reset (the actor is kept). The threshold then rises by `policer_q_increase` (at most to
  `policer_q_threshold_max`), the increase shrinks by `policer_q_increase_decay`, and the replay ratio (SAC updates
  per env step) rises by 1 up to `policer_max_replay_ratio`; after the last round's step it is 1 again.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

import feedback
import queries
import registry
from config_rules import Int, Number, Section, key
from episodes import SegmentPairs

if TYPE_CHECKING:
    from agent.sac import SacUpdate
    from feedback import Run
    from teacher import QueryRound


@registry.register_keys
@dataclass
class PolicerKeys(Section):
    """PoLiCER's keys: defaults from its public code and scripts/synthetic.sh (config/method/policer.yaml)."""

    policer_tau: float = key(1.0, Number(0.0), "PoLiCER: query segments drawn with P ∝ (1/rank)^tau", switch=True)
    policer_q_threshold: float = key(
        25.0, Number(), "PoLiCER: first threshold on the highest mean Q(s, π(s)) that triggers a reset", switch=True
    )
    policer_q_increase: float = key(
        5.0, Number(0.0, closed=True), "PoLiCER: threshold rise after a reset (DMC 5.0, Meta-World 7.5)", switch=True
    )
    policer_q_increase_decay: float = key(
        0.9, Number(0.0, 1.0, closed=True), "PoLiCER: the rise is multiplied by this after each reset", switch=True
    )
    policer_q_threshold_max: float = key(100.0, Number(), "PoLiCER: the threshold rises to at most this", switch=True)
    policer_max_replay_ratio: int = key(
        4, Int(), "PoLiCER: SAC updates per env step rise by 1 per reset up to this, until the last round", switch=True
    )


# The code's clamp of actions before atanh in its likelihood score (pls_reward_model.py: EPSILON = 1e-4).
ACTION_BOUND = 1.0 - 1e-4
# The code's value for "no Q seen yet": any mean Q passes it, so the first update after a reset sets the maximum.
NO_Q_SEEN = -1e-6


def rank_probabilities(scores: np.ndarray, tau: float) -> np.ndarray:
    """P[i] ∝ (1 / rank_i)^tau, rank 1 for the highest score (ties ranked in index order)."""
    ranks = np.empty(len(scores))
    ranks[np.argsort(-scores, kind="stable")] = np.arange(1, len(scores) + 1)
    weights = ranks**-tau
    return weights / weights.sum()


@queries.register("policy_likelihood")
def policy_likelihood(ctx: queries.QueryContext) -> SegmentPairs:
    """PoLiCER's policy-likelihood sampling (see the module docstring)."""
    candidates = ctx.sample_pairs(2 * ctx.num * ctx.large_batch, ctx.history())
    segments = SegmentPairs(*(array.reshape(-1, *array.shape[2:]) for array in candidates))  # [2n, ...] one each
    score = ctx.log_likelihood(candidates, ACTION_BOUND).mean(-1).reshape(-1)  # mean per-step log π of each segment
    probabilities = rank_probabilities(score.cpu().numpy(), ctx.cfg.policer_tau)
    chosen = ctx.rng.choice(len(score), size=2 * ctx.num, replace=False, p=probabilities)
    ctx.rng.shuffle(chosen)
    ranks = np.argsort(np.argsort(-score.cpu().numpy(), kind="stable"), kind="stable")  # 0: the likeliest
    ctx.report("query_rank_percentile", float(100.0 * ranks[chosen].mean() / max(len(score) - 1, 1)))
    first, second = segments.take(chosen[: ctx.num]), segments.take(chosen[ctx.num :])
    return SegmentPairs(*(np.stack(sides, axis=1) for sides in zip(first, second, strict=True)))


@feedback.register_step("critic_triggered_reset")
class CriticTriggeredReset:
    """PoLiCER's critic-triggered reset and its replay ratio (see the module docstring)."""

    def __init__(self, run: Run) -> None:
        cfg = run.cfg
        self.threshold = float(cfg.policer_q_threshold)
        self.increase = float(cfg.policer_q_increase)
        self.decay = float(cfg.policer_q_increase_decay)
        self.threshold_max = float(cfg.policer_q_threshold_max)
        self.max_replay_ratio = int(cfg.policer_max_replay_ratio)
        # The step of the last round the budget allows: after it, one SAC update per step again.
        rounds = int(cfg.max_feedback / cfg.reward_batch)
        self.last_round_step = cfg.num_seed_steps + cfg.num_unsup_steps + cfg.num_interact * (rounds - 1)
        self.replay_ratio = 1
        self.best_q: torch.Tensor | float = NO_Q_SEEN  # a device tensor once seen: no host sync per update
        self.resets = 0
        self.raise_ratio = False  # set by a reset: the ratio rises after the SAC update of the same step

    def __call__(self, run: Run, query_round: QueryRound) -> None:
        if query_round.first:  # the first round's critic restart forgets what the pre-training critic saw
            self.best_q = NO_Q_SEEN
        elif float(self.best_q) > self.threshold:
            self.reset(run, query_round)
        log = run.logger.log
        log("train/policer_best_q", float(self.best_q), run.step)
        log("train/policer_q_threshold", self.threshold, run.step)
        log("train/policer_resets", self.resets, run.step)
        log("train/replay_ratio", self.replay_ratio, run.step)

    def reset(self, run: Run, query_round: QueryRound) -> None:
        run.reward_model.reset_weights(run.reward_trainer.generator)
        feedback.train_reward(run, query_round)
        feedback.relabel(run, query_round)
        run.agent.reset_critic()
        self.resets += 1
        self.threshold = min(self.threshold + self.increase, self.threshold_max)
        self.increase *= self.decay
        self.raise_ratio = True

    def after_update(self, run: Run, update: SacUpdate) -> None:
        """Track the highest mean Q(s, π(s)); after a reset, forget it and raise the ratio; set the next step's."""
        if "actor_q" in update.metrics:
            q = update.metrics["actor_q"]
            self.best_q = q.clamp(min=self.best_q) if isinstance(self.best_q, float) else torch.maximum(self.best_q, q)
        if self.raise_ratio:
            self.best_q, self.raise_ratio = NO_Q_SEEN, False
            self.replay_ratio = min(self.replay_ratio + 1, self.max_replay_ratio)
        run.updates_per_step = self.replay_ratio if run.step + 1 <= self.last_round_step else 1

    def state_dict(self) -> dict[str, Any]:
        names = ("threshold", "increase", "replay_ratio", "best_q", "resets", "raise_ratio")
        return {name: getattr(self, name) for name in names}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for name, value in state.items():
            setattr(self, name, value)
