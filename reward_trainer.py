"""Training r̂ on the labelled preferences (ALGORITHM.md §3): Bradley-Terry cross-entropy over the ensemble, QPA's
temporal cropping, loss terms a method adds (SURF's pseudo-labels), and the original release's stopping rules.

DMC: up to `ceil(reward_update x labels / reward_train_batch)` minibatch steps, stopping at the first step where the
running accuracy of the call reaches DMC_STOP_ACCURACY (`fit(minibatches(n), augment=True, stop_accuracy=...)`).
Meta-World: whole epochs on uncropped segments until an epoch's mean accuracy exceeds METAWORLD_STOP_ACCURACY
(`fit(epoch(), augment=False)`, repeated by the caller, as the original's training script does).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from typing import Any, NamedTuple, Protocol

import numpy as np
import torch
import torch.nn.functional as F

import utils
from preferences import PreferenceDataset, crop_windows, qpa_crop_lengths, window_sums
from reward_model import EnsembleMLP, RewardModel

DMC_STOP_ACCURACY = 0.98
METAWORLD_STOP_ACCURACY = 0.97


class RewardSeeds(NamedTuple):
    """The seeds of everything preference learning draws at random, each its own stream."""

    net: int  # the ensemble's initial weights
    queries: int  # query selection
    training: int  # minibatch order and crops
    teacher: int  # the scripted teacher's noise
    extension: int  # an extension's own draws (SURF's unlabelled pairs)

    @classmethod
    def of(cls, net: int) -> RewardSeeds:
        """The streams that follow from the seed of the ensemble's weights."""
        queries, training, teacher, extension = (int(s) for s in np.random.SeedSequence(net).generate_state(4))
        return cls(net, queries, training, teacher, extension)


class LossTerm(Protocol):
    """A term a method adds to every minibatch loss (e.g. methods/surf.py); `metrics` reports on the last `fit`."""

    def start(self) -> None: ...
    def __call__(self, net: EnsembleMLP, members: int) -> torch.Tensor: ...
    def metrics(self) -> dict[str, float]: ...
    def state_dict(self) -> dict[str, Any]: ...
    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class RewardTrainer:
    """Trains every member of `model` at once with `optimizer` over its stacked weights (Adam over them is
    per-member Adam: its update is elementwise and members are disjoint), on minibatches of `preferences`.

    `generator` draws the minibatch order and the crops; `data_aug_ratio` crop copies per pair (0: whole segments),
    `label_margin` smooths the targets.
    """

    def __init__(
        self,
        model: RewardModel,
        preferences: PreferenceDataset,
        optimizer: torch.optim.Optimizer,
        *,
        batch_size: int,
        data_aug_ratio: int,
        label_margin: float,
        generator: torch.Generator,
        loss_terms: Iterable[LossTerm] = (),
    ) -> None:
        self.model = model
        self.preferences = preferences
        self.batch_size = batch_size
        self.data_aug_ratio = data_aug_ratio
        self.label_margin = label_margin
        self.generator = generator
        self.loss_terms = list(loss_terms)
        self.opt = optimizer

    def minibatches(self, num_steps: int) -> Iterator[torch.Tensor]:
        return self.preferences.minibatches(num_steps, self.model.ensemble_size, self.batch_size, self.generator)

    def epoch(self) -> Iterator[torch.Tensor]:
        """One pass over the labelled pairs."""
        return self.minibatches(math.ceil(len(self.preferences) / self.batch_size))

    def fit(
        self, minibatches: Iterable[torch.Tensor], augment: bool, stop_accuracy: float | None = None
    ) -> tuple[np.ndarray, float]:
        """An Adam step on each minibatch of indices [E, B], counting accuracy over all of them; with
        `stop_accuracy`, stop after the first step at which the running accuracy (mean over members) reaches it.

        The accuracy counts one prediction per crop copy with `augment` and cropping on, else one per pair.
        Returns (per-member accuracy, mean loss per member and step).
        """
        if len(self.preferences) == 0:
            raise ValueError("num_labelled=0: the reward model has no labelled queries; allowed: query before training")
        for term in self.loss_terms:
            term.start()
        members = self.model.ensemble_size
        copies = (self.data_aug_ratio or 1) if augment else 1
        counts = torch.zeros(2, members, device=self.model.device)  # correct, counted: since the call began
        loss_sum = torch.zeros((), device=self.model.device)
        # The host reads the counts only when the stop is possible at all: `seen` holds the counts it last read,
        # and `unseen` bounds the predictions counted since. (correct + x) / (counted + x) grows with x, so
        # (seen correct + unseen) / (seen counted + unseen) bounds each member's accuracy from above.
        seen, unseen, steps = np.zeros((2, members)), 0, 0
        for index in minibatches:
            loss, correct, counted = self.loss(index, augment)
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()
            loss_sum += loss.detach()
            counts[0] += correct
            counts[1] += counted
            steps += 1
            unseen += index.shape[1] * copies
            if stop_accuracy is not None and np.mean((seen[0] + unseen) / (seen[1] + unseen)) >= stop_accuracy:
                seen, unseen = utils.to_np(counts).astype(np.float64), 0
                if accuracy_of(seen).mean() >= stop_accuracy:
                    break
        return accuracy_of(utils.to_np(counts)), float(loss_sum) / (max(steps, 1) * members)

    def loss(self, index: torch.Tensor, augment: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The loss of the pairs index [E, B] (member e trains on row e), summed over members, with the loss terms;
        and, per member, the number of correct and of counted predictions.

        A prediction is σ1 when its return is strictly larger (a tie predicts σ0, as argmax does). Equal labels
        (0.5) train as (0.5, 0.5) targets and are left out of the accuracy.
        """
        members, batch = index.shape
        pairs = self.preferences.pairs[index]
        labels = self.preferences.labels[index]
        segment = pairs.shape[-2]
        rewards = self.model.net(pairs.reshape(members, -1, self.model.input_dim)).view(members, batch, 2, segment)
        if augment and self.data_aug_ratio:
            starts, lengths = crop_windows((members, batch), segment, qpa_crop_lengths(segment), self.data_aug_ratio,
                                           self.generator, self.model.device)  # fmt: skip
            returns = window_sums(rewards, starts, lengths).transpose(-1, -2)  # [E, B, copies, 2]
            targets = labels.unsqueeze(-1).expand(-1, -1, self.data_aug_ratio)
        else:
            returns, targets = rewards.sum(-1), labels
        smoothed = targets * (1.0 - 2.0 * self.label_margin) + self.label_margin
        log_prob = F.log_softmax(returns, dim=-1)
        member_loss = -(smoothed * log_prob[..., 1] + (1.0 - smoothed) * log_prob[..., 0]).flatten(1).mean(1)
        loss = member_loss.sum()
        for term in self.loss_terms:
            loss = loss + term(self.model.net, members)
        decided = (targets != 0.5).flatten(1)
        correct = ((returns[..., 1] > returns[..., 0]).flatten(1) == (targets > 0.5).flatten(1)) & decided
        return loss, correct.sum(1), decided.sum(1)

    def metrics(self) -> dict[str, float]:
        """What the loss terms report on the last `fit`."""
        return {name: value for term in self.loss_terms for name, value in term.metrics().items()}

    # The original release's names for its two rules (the training loop calls `fit` itself).
    def train_reward_iter(self, num_iters: int) -> tuple[np.ndarray, float]:
        return self.fit(self.minibatches(num_iters), augment=True, stop_accuracy=DMC_STOP_ACCURACY)

    def train_reward(self) -> tuple[np.ndarray, float]:
        return self.fit(self.epoch(), augment=False)

    def state_dict(self) -> dict[str, Any]:
        return {
            "opt": self.opt.state_dict(),
            "generator": self.generator.get_state(),
            "loss_terms": [term.state_dict() for term in self.loss_terms],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.opt.load_state_dict(state["opt"])
        self.generator.set_state(state["generator"])
        for term, term_state in zip(self.loss_terms, state["loss_terms"], strict=True):
            term.load_state_dict(term_state)


def accuracy_of(counts: np.ndarray) -> np.ndarray:
    """Per-member accuracy from [correct, counted]; nothing counted (only equal labels) counts as fully correct."""
    correct, counted = counts.astype(np.float64)
    return np.where(counted > 0, correct / np.maximum(counted, 1.0), 1.0)
