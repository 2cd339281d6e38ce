"""When a run learns what (ALGORITHM.md §2): the phases of the loop, when a query round is due and how large it is,
the feedback budget, and the round a person may still be answering. No environment and no networks.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from episodes import SegmentPairs
from teacher import QueryRound


class Phase(StrEnum):
    SEED = "seed"  # uniform random actions, no updates (also at step num_seed_steps itself, as in the original)
    UNSUPERVISED = "unsupervised"  # PEBBLE's state-entropy pre-training
    FIRST_FEEDBACK = "first_feedback"  # the step of the first queries: no SAC update
    FEEDBACK = "feedback"  # every later step: queries when due, SAC on r̂
    TRUE_REWARD = "true_reward"  # SAC on the environment's reward (method=sac_true): no queries


@dataclass
class FeedbackSchedule:
    """The feedback schedule and its counters: `total_feedback` queries asked, `labeled_feedback` answered."""

    num_train_steps: int
    num_seed_steps: int
    num_unsup_steps: int
    num_interact: int
    max_feedback: int
    reward_batch: int
    reward_schedule: int
    learns_reward: bool
    total_feedback: int = 0
    labeled_feedback: int = 0
    rounds: int = 0
    steps_since_round: int = 0
    open_round: QueryRound | None = None  # asked and not yet answered (a person, human_mode=async)

    @classmethod
    def of(cls, cfg: Any) -> FeedbackSchedule:
        """The schedule of a training config (TrainConfig or any object with its keys)."""
        names = [item.name for item in dataclasses.fields(cls) if item.default is dataclasses.MISSING]
        values = {name: getattr(cfg, name) for name in names if name != "learns_reward"}
        return cls(**values, learns_reward=cfg.reward_source == "learned")

    @property
    def feedback_start(self) -> int:
        return self.num_seed_steps + self.num_unsup_steps

    @property
    def budget_left(self) -> bool:
        return self.total_feedback < self.max_feedback

    def phase(self, step: int) -> Phase:
        """The part of the loop `step` is in; each test stands on its own, so the order they are checked in does
        not matter."""
        if not self.learns_reward:
            return Phase.SEED if step < self.num_seed_steps else Phase.TRUE_REWARD
        if step == self.feedback_start:
            return Phase.FIRST_FEEDBACK
        if step <= self.num_seed_steps:
            return Phase.SEED
        return Phase.UNSUPERVISED if step < self.feedback_start else Phase.FEEDBACK

    def feedback_due(self, step: int) -> bool:
        """The first round, a round every `num_interact` steps while budget remains, or labels still to collect."""
        phase = self.phase(step)
        if phase is Phase.FIRST_FEEDBACK:
            return True
        if phase is not Phase.FEEDBACK:
            return False
        return self.open_round is not None or (self.budget_left and self.steps_since_round >= self.num_interact)

    def batch_fraction(self, step: int) -> float:
        """B-Pref's `reward_schedule`: 0 keeps the query batch, 1 shrinks it, 2 grows it over training.

        As in the original release, schedule 1's fraction becomes 0.01 only when it is exactly 0."""
        if self.reward_schedule == 1:
            return (self.num_train_steps - step) / self.num_train_steps or 0.01
        if self.reward_schedule == 2:
            return self.num_train_steps / (self.num_train_steps - step + 1)
        return 1.0

    def round_size(self, step: int) -> int:
        """Queries in a round opened at `step`: the scheduled batch, cut so the total never passes the budget."""
        return min(int(self.reward_batch * self.batch_fraction(step)), self.max_feedback - self.total_feedback)

    def open(self, queried: SegmentPairs, size: int, step: int) -> QueryRound:
        """Count a round of `size` queries asked at `step` and keep it open until its labels are in."""
        self.open_round = QueryRound(self.rounds, *queried, step, self.total_feedback, self.max_feedback,
                                     first=self.rounds == 0)  # fmt: skip
        self.rounds += 1
        self.total_feedback += size
        self.steps_since_round = 0
        return self.open_round

    def close(self, answered: int) -> QueryRound:
        """The open round, now that its labels are in (`answered` of its queries: a teacher may skip some)."""
        query_round, self.open_round = self.open_round, None
        self.labeled_feedback += answered
        return query_round

    def count_step(self) -> None:
        self.steps_since_round += 1

    def state_dict(self) -> dict[str, Any]:
        return {
            "total_feedback": self.total_feedback,
            "labeled_feedback": self.labeled_feedback,
            "rounds": self.rounds,
            "steps_since_round": self.steps_since_round,
            "open_round": dataclasses.asdict(self.open_round) if self.open_round is not None else None,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.total_feedback = state["total_feedback"]
        self.labeled_feedback = state["labeled_feedback"]
        self.rounds = state["rounds"]
        self.steps_since_round = state["steps_since_round"]
        self.open_round = QueryRound(**state["open_round"]) if state["open_round"] is not None else None
