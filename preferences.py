"""The labelled preferences r̂ is trained on, and QPA's temporal cropping of them (ALGORITHM.md §3).

A label y = 1 means σ1 is preferred, 0 means σ0, 0.5 equally preferable (trained as (0.5, 0.5) targets).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

QPA_CROP_SHRINK = (5, 15)  # QPA temporal cropping removes 5 to 15 of a segment's steps


class PreferenceDataset:
    """Labelled segment pairs [M, 2, S, ds + da] and their labels [M] on the training device.

    Storage grows on demand, by doubling, up to the feedback budget `max_feedback` (ALGORITHM.md §9).
    """

    def __init__(self, segment: int, input_dim: int, max_feedback: int, device: torch.device) -> None:
        self.max_feedback = max_feedback
        self.device = device
        self.pairs = torch.empty((0, 2, segment, input_dim), device=device)
        self.labels = torch.empty(0, device=device)
        self.num_labelled = 0

    def __len__(self) -> int:
        return self.num_labelled

    @property
    def capacity(self) -> int:
        return len(self.labels)

    def data(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Views of the labelled pairs [M, 2, S, ds + da] and labels [M]."""
        return self.pairs[: self.num_labelled], self.labels[: self.num_labelled]

    def add(self, pairs: np.ndarray, labels: np.ndarray) -> None:
        needed = self.num_labelled + len(labels)
        if needed > self.capacity:
            # Doubling keeps appends amortised O(1); the cap keeps memory at the feedback budget.
            capacity = max(needed, min(2 * self.capacity, self.max_feedback))
            grown_pairs = torch.empty((capacity, *self.pairs.shape[1:]), device=self.device)
            grown_labels = torch.empty(capacity, device=self.device)
            grown_pairs[: self.num_labelled] = self.pairs[: self.num_labelled]
            grown_labels[: self.num_labelled] = self.labels[: self.num_labelled]
            self.pairs, self.labels = grown_pairs, grown_labels
        self.pairs[self.num_labelled : needed] = torch.as_tensor(pairs, device=self.device)
        self.labels[self.num_labelled : needed] = torch.as_tensor(labels, device=self.device)
        self.num_labelled = needed

    def shuffled_order(self, members: int, generator: torch.Generator) -> torch.Tensor:
        """An independent permutation of the labelled pairs per ensemble member [E, M] (as the original release's
        ensemble draws them)."""
        keys = torch.rand((members, self.num_labelled), generator=generator, device=self.device)
        return keys.argsort(dim=1)

    def minibatches(
        self, num_steps: int, members: int, batch_size: int, generator: torch.Generator
    ) -> Iterator[torch.Tensor]:
        """Indices [E, B] of `num_steps` minibatches: consecutive slices of one permutation per member, a new
        permutation after each pass (the last slice of a pass may be shorter)."""
        order, position = self.shuffled_order(members, generator), 0
        for _ in range(num_steps):
            yield order[:, position : position + batch_size]
            position += batch_size
            if position >= self.num_labelled:
                order, position = self.shuffled_order(members, generator), 0

    def state_dict(self) -> dict[str, Any]:
        pairs, labels = self.data()
        return {"pairs": pairs.clone(), "labels": labels.clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.pairs = state["pairs"].to(self.device).clone()
        self.labels = state["labels"].to(self.device).clone()
        self.num_labelled = len(self.labels)


def crop_windows(
    batch_shape: tuple[int, ...],
    window_len: int,
    lengths: tuple[int, int],
    num_copies: int,
    generator: torch.Generator,
    device: torch.device,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Temporal crops of pairs of `window_len`-step windows, `num_copies` per pair: starts [*batch, 2, copies] and
    lengths [*batch, 1, copies]. The length L ~ U{lengths[0] ... lengths[1]} is shared by both windows of a pair;
    each window gets its own start in [0, window_len - L]. QPA crops its labelled segments (`qpa_crop_lengths`),
    SURF its unlabelled windows (L ~ U{S - crop_range ... S + crop_range})."""
    shortest, longest = lengths
    crop_lengths = torch.randint(shortest, longest + 1, (*batch_shape, 1, num_copies), generator=generator,
                                 device=device)  # fmt: skip
    uniform = torch.rand((*batch_shape, 2, num_copies), generator=generator, device=device)
    starts = (uniform * (window_len - crop_lengths + 1)).long()
    return starts, crop_lengths


def qpa_crop_lengths(segment_len: int) -> tuple[int, int]:
    """The shortest and longest crop QPA's temporal cropping keeps of an S-step segment: S - 15 and S - 5."""
    return segment_len - QPA_CROP_SHRINK[1], segment_len - QPA_CROP_SHRINK[0]


def window_sums(rewards: torch.Tensor, starts: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Sums of rewards [..., S] over the windows [start, start + length) indexed [..., K]: one cumsum, two gathers."""
    cumulative = F.pad(rewards.cumsum(-1), (1, 0))
    return cumulative.gather(-1, starts + lengths) - cumulative.gather(-1, starts)
