"""The episodes a run keeps for its queries: (s, a) rows and true rewards of the most recent episodes, numbered from
the run's first, with the simulator states a person's videos are drawn from (teacher=human), and the segment pairs
queries are made of (ALGORITHM.md §3).

The learner only ever sees the (s, a) rows and the teacher's labels; the true rewards kept beside them go to the
scripted teacher and nowhere else (ALGORITHM.md §4). A segment pair is one array [2, S, ds + da]: index 0 is σ0,
index 1 is σ1.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import torch

EPISODE_PREALLOC = 1000  # rows preallocated for the episode being collected; doubled when a longer one shows up
# An episode's layout, its per-step simulator states and the success each step reported (None where the
# environment reports none)
SimStates = tuple[dict[str, np.ndarray], np.ndarray, np.ndarray | None]


class SegmentPairs(NamedTuple):
    """Query candidates: `pairs` [num, 2, S, ds + da], their true rewards [num, 2, S] (for a scripted teacher only)
    and where each segment starts, (episode, step) [num, 2, 2]."""

    pairs: np.ndarray
    rewards: np.ndarray
    origins: np.ndarray

    def take(self, index: np.ndarray | slice) -> SegmentPairs:
        return SegmentPairs(self.pairs[index], self.rewards[index], self.origins[index])

    @staticmethod
    def concat(*parts: SegmentPairs) -> SegmentPairs:
        return SegmentPairs(*(np.concatenate(arrays) for arrays in zip(*parts)))


@dataclass
class Episode:
    index: int  # 0 for the run's first episode
    sa: np.ndarray  # [length, ds + da]
    reward: np.ndarray  # true rewards [length]
    sim: SimStates | None = None  # set by human_teacher.SimStateRecorder when a person labels


class EpisodeStore:
    """The `max_episodes` most recent complete episodes that can hold a segment (longer than `min_length` steps;
    None: all), with any shorter ones among them, oldest first, and the one being collected. Where every episode is
    long enough (DeepMind Control, Meta-World) that is the `max_episodes` newest; a task whose episodes can end early
    (a Gymnasium hopper that falls) keeps as many usable ones.

    `closed` counts every episode ever completed, so a cache of the store knows when it is stale and an episode keeps
    its number when older ones are dropped.
    """

    def __init__(self, obs_dim: int, action_dim: int, max_episodes: int | None, min_length: int = 0) -> None:
        self.obs_dim = obs_dim
        self.episodes: deque[Episode] = deque()
        self.max_episodes = max_episodes
        self.min_length = min_length
        self.closed = 0
        self._sa = np.empty((EPISODE_PREALLOC, obs_dim + action_dim), dtype=np.float32)
        self._reward = np.empty(EPISODE_PREALLOC, dtype=np.float32)
        self._length = 0

    @property
    def maxlen(self) -> int | None:
        return self.max_episodes

    def _keep(self, episode: Episode) -> None:
        """Append `episode`, then drop the oldest until the store starts at its `max_episodes`-th usable episode
        from the end."""
        self.episodes.append(episode)
        if self.max_episodes is None:
            return
        usable = sum(map(self._usable, self.episodes))
        while usable > self.max_episodes or (usable == self.max_episodes and not self._usable(self.episodes[0])):
            usable -= self._usable(self.episodes.popleft())

    def _usable(self, episode: Episode) -> bool:
        return len(episode.reward) > self.min_length

    def __len__(self) -> int:
        return len(self.episodes)

    def __iter__(self) -> Iterator[Episode]:
        return iter(self.episodes)

    def recent(self, num: int) -> list[Episode]:
        """The `num` most recent episodes that can hold a segment."""
        return [episode for episode in self.episodes if self._usable(episode)][-num:]

    def episode(self, index: int) -> Episode:
        """The episode numbered `index`; KeyError once it is no longer kept."""
        first = self.closed - len(self.episodes)
        if not first <= index < self.closed:
            raise KeyError(f"episode {index} is no longer kept (episodes {first} ... {self.closed - 1})")
        return self.episodes[index - first]

    def add(self, obs: np.ndarray, action: np.ndarray, reward: float, done: bool | float) -> None:
        """Append one step (s, a, true r); `done` closes the episode and moves it into the store."""
        n = self._length
        if n == len(self._reward):
            self._sa = np.concatenate([self._sa, np.empty_like(self._sa)])
            self._reward = np.concatenate([self._reward, np.empty_like(self._reward)])
        self._sa[n, : self.obs_dim] = obs
        self._sa[n, self.obs_dim :] = action
        self._reward[n] = reward
        self._length = n + 1
        if done:
            self._keep(Episode(self.closed, self._sa[: n + 1].copy(), self._reward[: n + 1].copy()))
            self._length = 0
            self.closed += 1

    add_data = add  # B-Pref's name

    def sample_segment_pairs(
        self, num: int, episodes: list[Episode], length: int, rng: np.random.Generator
    ) -> SegmentPairs:
        """`num` pairs of `length`-step segments: two of `episodes` drawn uniformly with replacement, a uniform start
        in each. Starts are drawn from 0 ... len - S - 1, as the original release draws them, so a segment never
        holds an episode's last step."""
        eligible = [episode for episode in episodes if len(episode.reward) > length]
        if not eligible:
            raise ValueError(
                f"no complete episode longer than segment={length} steps is stored "
                f"({len(episodes)} candidates); allowed: query after add_data has closed such an episode"
            )
        lengths = np.array([len(episode.reward) for episode in eligible])
        episode_index = rng.integers(len(eligible), size=(num, 2))
        starts = rng.integers(0, lengths[episode_index] - length)
        indices = np.array([episode.index for episode in eligible])[episode_index]
        return self.segment_pairs(np.stack([indices, starts], axis=-1), length)

    def segment_pairs(self, origins: np.ndarray, length: int) -> SegmentPairs:
        """The pairs of `length`-step segments that start at `origins`, (episode, step) [num, 2, 2]."""
        num = len(origins)
        pairs = np.empty((num, 2, length, self._sa.shape[1]), dtype=np.float32)
        rewards = np.empty((num, 2, length), dtype=np.float32)
        for query, side in np.ndindex(num, 2):
            episode, start = self.episode(int(origins[query, side, 0])), int(origins[query, side, 1])
            pairs[query, side] = episode.sa[start : start + length]
            rewards[query, side] = episode.reward[start : start + length]
        return SegmentPairs(pairs, rewards, origins.astype(np.int64))

    def state_dict(self) -> dict[str, Any]:
        """Tensors, so that a store without simulator states loads with torch.load(weights_only=True)."""
        return {
            "lengths": torch.tensor([len(episode.reward) for episode in self.episodes], dtype=torch.long),
            "sa": torch.from_numpy(np.concatenate([episode.sa for episode in self.episodes] or [self._sa[:0]])),
            "reward": torch.from_numpy(
                np.concatenate([episode.reward for episode in self.episodes] or [self._reward[:0]])
            ),
            "sim": [episode.sim for episode in self.episodes] if any(e.sim for e in self.episodes) else None,
            "open_sa": torch.from_numpy(self._sa[: self._length].copy()),
            "open_reward": torch.from_numpy(self._reward[: self._length].copy()),
            "closed": self.closed,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.closed = int(state["closed"])
        lengths = state["lengths"].tolist()
        sims = state["sim"] or [None] * len(lengths)
        sa, reward = state["sa"].numpy(), state["reward"].numpy()
        first = self.closed - len(lengths)
        self.episodes.clear()
        for offset, ((start, end), sim) in enumerate(zip(itertools.pairwise(np.cumsum([0, *lengths])), sims)):
            self._keep(Episode(first + offset, sa[start:end].copy(), reward[start:end].copy(), sim))
        self._length = len(state["open_reward"])
        capacity = max(EPISODE_PREALLOC, self._length)
        self._sa = np.empty((capacity, self._sa.shape[1]), dtype=np.float32)
        self._reward = np.empty(capacity, dtype=np.float32)
        self._sa[: self._length] = state["open_sa"].numpy()
        self._reward[: self._length] = state["open_reward"].numpy()
