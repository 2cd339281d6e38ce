"""Teachers, and the scripted one: the B-Pref model of a (possibly irrational) human labelling segment pairs.

The training loop hands every teacher a `QueryRound` (`ask`) and collects its labels (`answers`, None while a
person is still answering); human_teacher.py holds the person (`teacher=human`) and the replay of their answers.

Given the true rewards of both segments of each query it returns which queries it answers and a label per
answered query: 0 = segment 1 preferred, 1 = segment 2 preferred, 0.5 = equally preferable.

Order of the irrationalities follows B-Pref (Lee et al., NeurIPS 2021 Datasets and Benchmarks, §3):
skip and "equal" look at the undiscounted returns; the preference itself uses the myopic (discounted) returns;
mistakes flip the preference; "equal" overrides everything, so an equal label is never flipped.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
from tqdm import tqdm

Answers = tuple[np.ndarray, np.ndarray]  # the answered queries' indices (int64) and their labels (float32)
# A person's answers as labels: left 0 (σ0 preferred), right 1, equal 0.5, and skip leaves the query out.
ANSWER_LABELS: dict[str, float | None] = {"left": 0.0, "right": 1.0, "equal": 0.5, "skip": None}


@dataclass
class QueryRound:
    """One round of queries as the training loop hands it to a teacher."""

    index: int  # 0 for the first round of the run
    pairs: np.ndarray  # [num, 2, S, ds + da]
    rewards: np.ndarray  # true rewards [num, 2, S]: the scripted teacher's input, never shown to a person
    origins: np.ndarray | None  # (episode, start) of each segment [num, 2, 2]; None for the scripted teacher
    opened_step: int
    feedback_before: int  # queries asked in earlier rounds
    feedback_budget: int  # max_feedback
    first: bool  # the run's first round, after which the critic restarts

    @property
    def number(self) -> int:
        """The round's number wherever a person reads it (the labelling page, the console, labels.sqlite): 1 for
        the first."""
        return self.index + 1


class TeacherError(RuntimeError):
    """A teacher that cannot answer (recorded labels that do not fit this run, a segment that does not render):
    the run stops with this one line."""


class Teacher(Protocol):
    def set_thres_skip(self, new_margin: float) -> None: ...
    def set_thres_equal(self, new_margin: float) -> None: ...
    def ask(self, query_round: QueryRound) -> None: ...
    def answers(self, step: int) -> Answers | None: ...
    def wait(self, seconds: float) -> None: ...
    def progress(self) -> str: ...
    def metrics(self, query_round: QueryRound, step: int) -> dict[str, float]: ...
    def close(self) -> None: ...
    def state_dict(self) -> dict[str, Any]: ...
    def load_state_dict(self, state: dict[str, Any]) -> None: ...


def wait_for_answers(teacher: Teacher, step: int, progress: Any, report: Callable[[str | None], None]) -> Answers:
    """Wait until a person has answered the open round (human_mode=sync), showing how far they are on the tqdm bar
    `progress` and telling `report` whenever that changes (status.json), then `report(None)` once the wait ends."""
    tqdm.write(f"step {step}: waiting for labels ({teacher.progress()})", file=sys.stderr)
    reported = None
    answers = teacher.answers(step)
    while answers is None:
        if (now := teacher.progress()) != reported:
            report(reported := now)
        progress.set_description(f"waiting for labels: {now}", refresh=True)
        teacher.wait(1.0)
        answers = teacher.answers(step)
    progress.set_description("")
    if reported is not None:
        report(None)
    return answers


class ScriptedTeacher:
    """Labels segment pairs from their true rewards.

    beta > 0: stochastic Bradley-Terry teacher, P[segment 2 preferred] = sigmoid(beta * (R2 - R1));
    beta <= 0: perfectly rational (argmax, exact ties are "equal").
    gamma: myopic weight gamma^(T-1-t) on step t, so early steps count less.
    eps_mistake: probability of flipping a (non-equal) label.
    eps_skip / eps_equal: scale the thresholds set by `set_thres_skip` / `set_thres_equal`
    (threshold = new_margin * eps). A threshold <= 0 disables that behaviour, as in B-Pref.
    """

    def __init__(
        self,
        beta: float = -1.0,
        gamma: float = 1.0,
        eps_mistake: float = 0.0,
        eps_skip: float = 0.0,
        eps_equal: float = 0.0,
        seed: int = 0,
    ) -> None:
        self.beta = float(beta)
        self.gamma = float(gamma)
        self.eps_mistake = float(eps_mistake)
        self.eps_skip = float(eps_skip)
        self.eps_equal = float(eps_equal)
        self.thres_skip = 0.0
        self.thres_equal = 0.0
        self.rng = np.random.default_rng(seed)
        self._answers: Answers | None = None

    def set_thres_skip(self, new_margin: float) -> None:
        self.thres_skip = float(new_margin) * self.eps_skip

    def set_thres_equal(self, new_margin: float) -> None:
        self.thres_equal = float(new_margin) * self.eps_equal

    def label(self, rewards_1: np.ndarray, rewards_2: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Label a batch of queries from the true rewards [B, T] of both segments.

        Returns (keep_index, labels): the int64 indices of the answered queries and their float32 labels.
        """
        rewards_1 = np.asarray(rewards_1, dtype=np.float64)
        rewards_2 = np.asarray(rewards_2, dtype=np.float64)
        if rewards_1.ndim != 2 or rewards_1.shape != rewards_2.shape:
            raise ValueError(
                f"teacher rewards of shapes {rewards_1.shape} and {rewards_2.shape} are not valid; "
                "allowed: two equal [batch, segment] arrays"
            )
        return_1 = rewards_1.sum(axis=1)
        return_2 = rewards_2.sum(axis=1)

        # A query is answered when at least one segment clears the bar (B-Pref keeps max return > threshold).
        if self.thres_skip > 0:
            keep_index = np.flatnonzero(np.maximum(return_1, return_2) > self.thres_skip)
        else:
            keep_index = np.arange(len(return_1))
        rewards_1, rewards_2 = rewards_1[keep_index], rewards_2[keep_index]
        return_1, return_2 = return_1[keep_index], return_2[keep_index]

        segment_len = rewards_1.shape[1]
        myopic_weights = self.gamma ** np.arange(segment_len - 1, -1, -1, dtype=np.float64)
        discounted_1 = rewards_1 @ myopic_weights
        discounted_2 = rewards_2 @ myopic_weights

        if self.beta > 0:
            prob_2 = 1.0 / (1.0 + np.exp(-self.beta * (discounted_2 - discounted_1)))
            labels = (self.rng.random(len(prob_2)) < prob_2).astype(np.float32)
            equal = np.zeros(len(labels), dtype=bool)
        else:
            labels = (discounted_1 < discounted_2).astype(np.float32)
            equal = discounted_1 == discounted_2

        flip = self.rng.random(len(labels)) < self.eps_mistake
        labels[flip] = 1.0 - labels[flip]

        if self.thres_equal > 0:
            equal |= np.abs(return_1 - return_2) < self.thres_equal
        labels[equal] = 0.5
        return keep_index.astype(np.int64), labels

    def ask(self, query_round: QueryRound) -> None:
        self._answers = self.label(query_round.rewards[:, 0], query_round.rewards[:, 1])

    def answers(self, step: int) -> Answers | None:
        return self._answers

    def wait(self, seconds: float) -> None:
        """The script answers at once."""

    def progress(self) -> str:
        return "scripted"

    def metrics(self, query_round: QueryRound, step: int) -> dict[str, float]:
        """The script answers at once: nothing to report."""
        return {}

    def close(self) -> None:
        """Nothing to release."""

    def state_dict(self) -> dict[str, Any]:
        return {
            "rng": self.rng.bit_generator.state,
            "thres_skip": self.thres_skip,
            "thres_equal": self.thres_equal,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rng.bit_generator.state = state["rng"]
        self.thres_skip = float(state["thres_skip"])
        self.thres_equal = float(state["thres_equal"])
