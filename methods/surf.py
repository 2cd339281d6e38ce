"""SURF (Park et al., ICLR 2022): semi-supervised reward learning, as a loss term the reward trainer adds
(ALGORITHM.md §5).

Every training minibatch also draws `mu` x `reward_train_batch` unlabelled pairs of windows (`segment` +
2 x `dataaug_window` steps) uniformly from the episode store, pseudo-labels those whose prediction on the central
`segment` steps has max P > `threshold_u`, and adds `lambda_u` x their cross-entropy on a crop of
`segment` ± `crop_range` steps (pairs below the threshold count as zero, as in SURF).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

import utils
from episodes import EpisodeStore
from preferences import crop_windows, window_sums
from reward_model import EnsembleMLP


def pseudo_labels(returns: torch.Tensor, threshold: float) -> tuple[torch.Tensor, torch.Tensor]:
    """SURF's pseudo-labels from predicted returns [..., 2]: (argmax label [...], mask [...] of max P > threshold)."""
    confidence, labels = F.softmax(returns, dim=-1).max(-1)
    return labels, confidence > threshold


class PseudoLabelLoss:
    """`lambda_u` x the pseudo-label cross-entropy of fresh unlabelled pairs, per minibatch; `generator` is its own
    stream, so that the term leaves every other random draw of training unchanged."""

    def __init__(
        self,
        episodes: EpisodeStore,
        *,
        segment: int,
        dataaug_window: int,
        crop_range: int,
        num_pairs: int,
        threshold: float,
        weight: float,
        generator: torch.Generator,
    ) -> None:
        self.episodes = episodes
        self.segment = segment
        self.dataaug_window = dataaug_window
        self.crop_range = crop_range
        self.num_pairs = num_pairs
        self.threshold = threshold
        self.weight = weight
        self.generator = generator
        self.device = generator.device
        self.counts = torch.zeros(2, device=self.device)  # pseudo-labelled, drawn unlabelled pairs: since `start`
        self._source: tuple[int, torch.Tensor, torch.Tensor, torch.Tensor] | None = None

    @property
    def window(self) -> int:
        return self.segment + 2 * self.dataaug_window

    def start(self) -> None:
        self.counts.zero_()

    def __call__(self, net: EnsembleMLP, members: int) -> torch.Tensor:
        return self.weight * self.member_losses(net, members).sum()

    def member_losses(self, net: EnsembleMLP, members: int) -> torch.Tensor:
        """Per-member mean over the unlabelled pairs of the pseudo-label cross-entropy on SURF's crop: [members]."""
        num, window = self.num_pairs, self.window
        pairs = self.sample_unlabelled(members, num)
        rewards = net(pairs.reshape(members, -1, pairs.shape[-1])).view(members, num, 2, window)
        centre = self.dataaug_window
        labels, confident = pseudo_labels(rewards[..., centre : centre + self.segment].sum(-1).detach(),
                                          self.threshold)  # fmt: skip
        lengths = (self.segment - self.crop_range, self.segment + self.crop_range)
        starts, crop = crop_windows((members, num), window, lengths, 1, self.generator, self.device)
        log_prob = F.log_softmax(window_sums(rewards, starts, crop).squeeze(-1), dim=-1)
        cross_entropy = -log_prob.gather(-1, labels.unsqueeze(-1)).squeeze(-1)
        self.counts[0] += confident.sum()
        self.counts[1] += confident.numel()
        return (cross_entropy * confident).mean(1)

    def sample_unlabelled(self, members: int, num: int) -> torch.Tensor:
        """Pairs of windows [members, num, 2, window, ds + da], each window from an episode drawn uniformly (with
        replacement) from the store and a uniform start in it: one gather, no loop over pairs."""
        rows, first_row, lengths = self._unlabelled_source()
        episode = torch.randint(len(lengths), (members, num, 2), generator=self.generator, device=self.device)
        uniform = torch.rand((members, num, 2), generator=self.generator, device=self.device)
        start = first_row[episode] + (uniform * (lengths[episode] - self.window + 1)).long()
        return rows[start.unsqueeze(-1) + torch.arange(self.window, device=self.device)]

    def _unlabelled_source(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The episodes long enough for a window, concatenated on the device: rows [T, ds + da], and each episode's
        first row and length. Rebuilt only when an episode has closed since the last call."""
        if self._source is None or self._source[0] != self.episodes.closed:
            eligible = [episode.sa for episode in self.episodes if len(episode.sa) >= self.window]
            if not eligible:
                raise ValueError(
                    f"no stored episode has segment + 2 * dataaug_window = {self.window} steps; allowed: train "
                    "the semi-supervised model once add_data has closed such an episode"
                )
            lengths = torch.tensor([len(sa) for sa in eligible], device=self.device)
            starts = F.pad(lengths.cumsum(0)[:-1], (1, 0))
            rows = torch.as_tensor(np.concatenate(eligible), device=self.device)
            self._source = (self.episodes.closed, rows, starts, lengths)
        return self._source[1:]

    def metrics(self) -> dict[str, float]:
        pseudo, drawn = utils.to_np(self.counts)
        return {"pseudo_label_fraction": float(pseudo / max(drawn, 1.0))}

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generator.set_state(state["generator"])
