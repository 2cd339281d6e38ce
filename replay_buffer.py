"""Replay buffer for SAC with QPA's hybrid experience replay.

Transitions live in preallocated float32 tensors on the training device, so a
SAC batch is an index gather with no host->device copy of the data. The buffer
is a ring: once `capacity` transitions are stored the oldest is overwritten.

Hybrid experience replay (QPA, ALGORITHM.md §1): while feedback budget remains, a SAC
batch mixes transitions drawn uniformly from the N most recent episodes (near
on-policy data, where the reward model was just queried) with transitions drawn
uniformly from the whole buffer. `sample_onpolicy` draws the recent part,
`sample` the uniform part and `sample_hybrid` both in one gather.

Deliberate fix over the original release (ALGORITHM.md §9): the original drew recent
indices from [write position - N * max_episode_len, write position). Early in
training that range is negative, and numpy's negative indexing then reads the
never-written end of the array; the window is also a fixed slot count, not the
episodes themselves. Here episode starts are recorded as they happen (the
episode being collected counts as the most recent one once it has a
transition); the window holds exactly the transitions of the N most recent
episodes, stops at the oldest transition still stored and maps into the ring
with a modulo, so it never reaches an unwritten or overwritten slot.
Relabelling likewise covers every stored slot once the ring has wrapped (the
original relabelled only the slots before the write position).

For RUNE (Liang et al., ICLR 2022), `store_reward_std` keeps a second column, the
reward ensemble's std of r̂(s, a), which batches carry as `reward_std`; the bonus
itself is a transform of the sampled batch (methods/rune.py).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from typing import Any, NamedTuple, Protocol

import numpy as np
import torch


class Batch(NamedTuple):
    """A SAC minibatch, one row per transition; `not_done_no_max` is 0 only at true terminal states, so episodes
    cut by the time limit still bootstrap."""

    obs: torch.Tensor
    action: torch.Tensor
    reward: torch.Tensor
    next_obs: torch.Tensor
    not_done: torch.Tensor
    not_done_no_max: torch.Tensor
    reward_std: torch.Tensor | None = None  # the reward ensemble's std of r̂, in buffers with `store_reward_std`


class RewardPredictor(Protocol):
    def predict_reward(self, x: torch.Tensor) -> torch.Tensor: ...


class RewardStdPredictor(RewardPredictor, Protocol):
    """What a buffer with `store_reward_std` relabels with: an ensemble's mean and std of r̂."""

    def predict_reward_and_std(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]: ...


def _as_shape(shape: int | Sequence[int]) -> tuple[int, ...]:
    return (int(shape),) if isinstance(shape, int | np.integer) else tuple(int(d) for d in shape)


class ReplayBuffer:
    """Ring buffer of (s, a, r, s', not_done, not_done_no_max) on `device`.

    `max_episode_len` bounds the recent-episode bookkeeping: an episode that
    runs longer without `done` is counted in chunks of that many transitions.
    `store_reward_std` adds the `reward_std` column RUNE's bonus reads (see the module docstring).
    """

    def __init__(
        self,
        obs_shape: int | Sequence[int],
        action_shape: int | Sequence[int],
        capacity: int | float,
        device: str | torch.device,
        max_episode_len: int = 1000,
        seed: int | np.random.SeedSequence = 0,
        store_reward_std: bool = False,
    ) -> None:
        if int(capacity) < 1 or int(capacity) != capacity:
            raise ValueError(f"capacity={capacity!r} is not valid; allowed: a positive whole number")
        if int(max_episode_len) < 1:
            raise ValueError(f"max_episode_len={max_episode_len!r} is not valid; allowed: a positive integer")
        self.obs_shape = _as_shape(obs_shape)
        self.action_shape = _as_shape(action_shape)
        self.capacity = int(capacity)
        self.device = torch.device(device)
        self.max_episode_len = int(max_episode_len)

        # Never read before written, so no need to pay for zero-filling a million rows.
        def storage(*shape: int) -> torch.Tensor:
            return torch.empty((self.capacity, *shape), dtype=torch.float32, device=self.device)

        self.obs = storage(*self.obs_shape)
        self.action = storage(*self.action_shape)
        self.reward = storage(1)
        self.next_obs = storage(*self.obs_shape)
        self.not_done = storage(1)
        self.not_done_no_max = storage(1)
        self.reward_std = storage(1) if store_reward_std else None
        self._fields = Batch._fields if store_reward_std else Batch._fields[:-1]

        self.rng = np.random.default_rng(seed)
        # Positions are absolute (ever-growing) step counts; slot = position % capacity.
        self.num_added = 0
        # Start of every episode that still has a stored transition; the last one is the episode being collected.
        self.episode_starts: deque[int] = deque([0])

    def __len__(self) -> int:
        return min(self.num_added, self.capacity)

    @property
    def full(self) -> bool:
        return self.num_added >= self.capacity

    def add(
        self,
        obs: np.ndarray,
        action: np.ndarray,
        reward: float | np.floating | torch.Tensor,
        next_obs: np.ndarray,
        done: float | bool,
        done_no_max: float | bool,
        reward_std: float | np.floating | torch.Tensor | None = None,
    ) -> None:
        """Store one transition; `reward_std` (same types as `reward`) fills the RUNE column, 0 when not given."""
        slot = self.num_added % self.capacity
        self.obs[slot].copy_(self._staged(obs, np.float32), non_blocking=True)
        self.action[slot].copy_(self._staged(action, np.float32), non_blocking=True)
        self.next_obs[slot].copy_(self._staged(next_obs, np.float32), non_blocking=True)
        self._write_scalar(self.reward, slot, reward, "reward")
        if self.reward_std is not None:
            self._write_scalar(self.reward_std, slot, 0.0 if reward_std is None else reward_std, "reward_std")
        self.not_done[slot, 0] = 1.0 - float(done)
        self.not_done_no_max[slot, 0] = 1.0 - float(done_no_max)

        self.num_added += 1
        starts = self.episode_starts
        if done or self.num_added - starts[-1] >= self.max_episode_len:
            starts.append(self.num_added)
        # Forget episodes whose every transition has been overwritten.
        oldest_stored = self.num_added - self.capacity
        while len(starts) > 1 and starts[1] <= oldest_stored:
            starts.popleft()

    @staticmethod
    def _write_scalar(column: torch.Tensor, slot: int, value: float | np.floating | torch.Tensor, name: str) -> None:
        if isinstance(value, torch.Tensor):
            if value.numel() != 1:
                raise ValueError(f"{name} tensor has shape {tuple(value.shape)}; allowed: exactly one element")
            # Stays on the device: the reward model's prediction is stored without a sync.
            column[slot].copy_(value.reshape(1), non_blocking=True)
        else:
            column[slot, 0] = float(value)

    def _staged(self, array: np.ndarray, dtype: type[np.number]) -> torch.Tensor:
        """`array` as a host tensor that a non_blocking copy to `device` can take without a sync.

        A copy from pageable memory waits for every kernel queued on the GPU stream; from pinned memory it is
        queued like a kernel and the host runs on (the caching host allocator keeps the block until it is done).
        """
        host = torch.from_numpy(np.asarray(array, dtype=dtype))
        return host.pin_memory() if self.device.type == "cuda" else host

    def _check_batch_size(self, batch_size: int) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size!r} is not valid; allowed: a positive integer")
        if self.num_added == 0:
            raise ValueError("cannot sample from an empty replay buffer; add transitions first")

    def uniform_indices(self, batch_size: int) -> np.ndarray:
        """The slots of a uniform batch over every stored transition, drawn from the buffer's own stream."""
        self._check_batch_size(batch_size)
        return self.rng.integers(0, len(self), size=batch_size)

    def hybrid_indices(self, batch_size: int, num_episodes: int, recent_ratio: float) -> np.ndarray:
        """The slots of a hybrid batch: round(recent_ratio * batch_size) recent-episode slots first, then uniform."""
        if not 0.0 <= recent_ratio <= 1.0:
            raise ValueError(f"recent_ratio={recent_ratio!r} is not valid; allowed: a number in [0, 1]")
        self._check_batch_size(batch_size)
        num_recent = round(recent_ratio * batch_size)
        recent = self._recent_indices(num_recent, num_episodes)
        return np.concatenate([recent, self.rng.integers(0, len(self), size=batch_size - num_recent)])

    def recent_window(self, num_episodes: int) -> tuple[int, int]:
        """(first slot, length) of the transitions of the `num_episodes` most recent episodes.

        The episode being collected counts once it has a transition; the window
        starts no earlier than the oldest transition still stored.
        """
        if num_episodes < 1:
            raise ValueError(f"num_episodes={num_episodes!r} is not valid; allowed: a positive integer")
        starts = self.episode_starts
        current_is_empty = starts[-1] == self.num_added
        back = min(num_episodes + current_is_empty, len(starts))
        first = max(starts[-back], self.num_added - self.capacity)
        return first % self.capacity, self.num_added - first

    def _recent_indices(self, batch_size: int, num_episodes: int) -> np.ndarray:
        first_slot, length = self.recent_window(num_episodes)
        idx = self.rng.integers(0, length, size=batch_size)
        idx += first_slot
        np.remainder(idx, self.capacity, out=idx)
        return idx

    def sample_windows(self, num: int, length: int, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Observations [num * length, ds] and actions [num * length, da] of `num` windows of `length`
        consecutive stored transitions, each starting uniformly anywhere in the buffer (a window may span an
        episode boundary). `rng` is the caller's, so these draws leave the buffer's own stream alone."""
        first = max(self.num_added - self.capacity, 0)
        if self.num_added - first < length:
            raise ValueError(f"length={length} is not valid; allowed: at most the {self.num_added - first} stored")
        starts = rng.integers(first, self.num_added - length + 1, size=num)
        idx = np.remainder(starts[:, None] + np.arange(length), self.capacity).reshape(-1)
        idx_t = self._staged(idx, np.int64).to(self.device, non_blocking=True)
        return self.obs.index_select(0, idx_t), self.action.index_select(0, idx_t)

    def gather(self, idx: np.ndarray) -> Batch:
        """The batch of the slots `idx` (host indices, copied to the device without a sync)."""
        return self.take(self._staged(idx, np.int64).to(self.device, non_blocking=True))

    def take(self, idx: torch.Tensor) -> Batch:
        """The batch of the slots `idx`, an int64 tensor already on the device (a CUDA graph's fixed input)."""
        return Batch(*(getattr(self, name).index_select(0, idx) for name in self._fields))

    def sample(self, batch_size: int) -> Batch:
        """Uniform over every stored transition."""
        return self.gather(self.uniform_indices(batch_size))

    def sample_onpolicy(self, batch_size: int, num_episodes: int) -> Batch:
        """Uniform over the transitions of the `num_episodes` most recent episodes (all, if fewer exist)."""
        self._check_batch_size(batch_size)
        return self.gather(self._recent_indices(batch_size, num_episodes))

    def sample_hybrid(self, batch_size: int, num_episodes: int, recent_ratio: float) -> Batch:
        """One batch: round(recent_ratio * batch_size) recent-episode rows first, the rest uniform."""
        return self.gather(self.hybrid_indices(batch_size, num_episodes, recent_ratio))

    def sample_state_ent(self, batch_size: int) -> tuple[Batch, torch.Tensor]:
        """A uniform batch plus every stored observation (a view) for the k-NN state-entropy bonus."""
        return self.sample(batch_size), self.obs[: len(self)]

    def relabel_with_predictor(self, predictor: RewardPredictor | RewardStdPredictor, batch_size: int = 4096) -> None:
        """Overwrite every stored reward with predictor.predict_reward(concat(obs, action)), in chunks (and, with
        `store_reward_std`, both columns with predictor.predict_reward_and_std).

        4096-row chunks keep a 3x256 MLP's activations in CPU cache (bench/bench_replay.py compares chunk sizes);
        on a GPU even a full 1M buffer is only ~250 chunks.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size!r} is not valid; allowed: a positive integer")
        size = len(self)
        with torch.inference_mode():
            for start in range(0, size, batch_size):
                end = min(start + batch_size, size)
                inputs = torch.cat([self.obs[start:end], self.action[start:end]], dim=-1)
                if self.reward_std is None:
                    predicted = predictor.predict_reward(inputs)
                else:
                    predicted, std = predictor.predict_reward_and_std(inputs)
                    self.reward_std[start:end].copy_(std.reshape(end - start, 1))
                if predicted.shape != (end - start, 1):
                    raise ValueError(
                        f"predict_reward returned shape {tuple(predicted.shape)}; allowed: ({end - start}, 1)"
                    )
                self.reward[start:end].copy_(predicted)

    def state_dict(self) -> dict[str, Any]:
        """Stored transitions (on the CPU), write position, episode bookkeeping and sampling RNG state."""
        size = len(self)
        state: dict[str, Any] = {
            name: getattr(self, name)[:size].detach().to("cpu", copy=True) for name in self._fields
        }
        state.update(
            obs_shape=self.obs_shape,
            action_shape=self.action_shape,
            capacity=self.capacity,
            max_episode_len=self.max_episode_len,
            num_added=self.num_added,
            episode_starts=list(self.episode_starts),
            rng_state=self.rng.bit_generator.state,
        )
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a saved buffer. The capacity may differ (a resumed run with a larger step budget) as long as the
        saved buffer never wrapped, since then every transition still sits at its global index."""
        layout = {
            "obs_shape": self.obs_shape,
            "action_shape": self.action_shape,
            "capacity": self.capacity,
            "max_episode_len": self.max_episode_len,
        }
        if int(state["num_added"]) <= min(int(state["capacity"]), self.capacity):
            del layout["capacity"]
        if ("reward_std" in state) != (self.reward_std is not None):
            raise ValueError(
                f"saved buffer {'has' if 'reward_std' in state else 'lacks'} a reward_std column and "
                f"this one {'has' if self.reward_std is not None else 'lacks'} it; allowed: the same"
            )
        for key, expected in layout.items():
            saved = tuple(state[key]) if isinstance(expected, tuple) else state[key]
            if saved != expected:
                raise ValueError(f"saved {key}={saved!r} does not match this buffer's {key}={expected!r}")
        self.num_added = int(state["num_added"])
        size = len(self)
        for name in self._fields:
            getattr(self, name)[:size].copy_(state[name])
        self.episode_starts = deque(int(s) for s in state["episode_starts"])
        self.rng.bit_generator.state = state["rng_state"]
