"""SURF (Park et al., ICLR 2022): semi-supervised reward learning, as a loss term the reward trainer adds
(ALGORITHM.md §5); on while `semi_supervised` is true (config/method/surf.yaml), with its keys below.

Every training minibatch also draws `mu` x `reward_train_batch` unlabelled pairs of windows (`segment` +
2 x `dataaug_window` steps) uniformly from the episode store, pseudo-labels those whose prediction on the central
`segment` steps has max P > `threshold_u`, and adds `lambda_u` x their cross-entropy on a crop of
`segment` ± `crop_range` steps (pairs below the threshold count as zero, as in SURF).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F

import registry
import utils
from config_rules import Int, Number, Section, boolean, fail, key
from episodes import EpisodeStore
from preferences import crop_windows, window_sums
from reward_model import EnsembleMLP

if TYPE_CHECKING:
    from feedback import Run


@registry.register_keys
@dataclass
class SurfKeys(Section):
    """SURF's keys (values and sources in config/method/surf.yaml)."""

    semi_supervised: bool = key(
        False, boolean, "SURF: pseudo-labelled unlabelled pairs in every minibatch", switch=True
    )
    threshold_u: float = key(
        0.99, Number(0.5, 1.0, closed=True), "SURF τ: pseudo-label a pair when max P > τ", switch=True
    )
    mu: int = key(4, Int(), "SURF: unlabelled pairs per labelled pair in a minibatch", switch=True)
    lambda_u: float = key(1.0, Number(0.0, closed=True), "SURF: weight of the pseudo-label loss", switch=True)
    crop_range: int = key(5, Int(0), "SURF: unlabelled crops last U{segment ± crop_range} steps", switch=True)
    dataaug_window: int = key(5, Int(0), "SURF: context steps on each side of an unlabelled segment", switch=True)

    def check_relations(self) -> None:
        # Called on the whole config (TrainConfig.check_relations), so the core's keys are there too.
        if not self.semi_supervised:
            return
        env, segment = self.env, self.segment  # type: ignore[attr-defined]
        steps = utils.episode_steps(env)
        if self.crop_range >= segment:
            fail("crop_range", self.crop_range, f"must be < segment ({segment}) so every crop keeps a step")
        if self.crop_range > 2 * self.dataaug_window:
            fail(
                "crop_range",
                self.crop_range,
                f"must be <= 2 * dataaug_window ({2 * self.dataaug_window}): "
                "a crop longer than the segment needs that much context",
            )
        if segment + 2 * self.dataaug_window > steps:
            fail(
                "dataaug_window",
                self.dataaug_window,
                f"segment + 2 * dataaug_window must be <= the episode length of {env} ({steps} steps)",
            )


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


def pseudo_label_term(cfg: Any, episodes: EpisodeStore, device: torch.device, seed: int) -> PseudoLabelLoss:
    """SURF's term with the config's keys (`cfg`: the run's config, or the sections that hold them)."""
    return PseudoLabelLoss(
        episodes, segment=cfg.segment, dataaug_window=cfg.dataaug_window, crop_range=cfg.crop_range,
        num_pairs=cfg.mu * cfg.reward_train_batch, threshold=cfg.threshold_u, weight=cfg.lambda_u,
        generator=torch.Generator(device=device).manual_seed(seed),
    )  # fmt: skip


@registry.register_extension("surf_pseudo_labels", active=lambda cfg: cfg.semi_supervised)
class SemiSupervisedReward:
    """Adds the pseudo-label term to every reward-training minibatch (the `reward_loss_term` hook), drawing its
    unlabelled pairs from the extension stream of the run's reward learning."""

    def __init__(self, run: Run) -> None:
        device, seed = run.reward_model.device, run.reward_seeds.extension
        self.reward_loss_term = pseudo_label_term(run.cfg, run.episodes, device, seed)
