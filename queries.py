"""Query selection: which pairs of segments a query round puts to the teacher (ALGORITHM.md §5).

Every scheme is one function registered under its config name (`query_scheme=<name>`) in registry.QUERY_SCHEMES;
the CLI, the sweeps, `feed_type` and validation all read that registry, so a new scheme is one decorated function
(`register` here is `registry.register_scheme`), in this repository or in a module of yours named by the `imports`
key:

    @register("most_likely")
    def most_likely(ctx: QueryContext) -> SegmentPairs:
        candidates = ctx.sample_pairs(ctx.num * ctx.large_batch, ctx.history())
        score = ctx.log_likelihood(candidates).mean((1, 2))  # per-step log π(a|s), averaged per pair
        return candidates.take(top(score, ctx.num))

A selector gets a `QueryContext`, everything a scheme may need and nothing else, and returns `ctx.num` candidate
pairs with their true rewards and origins; the training loop then asks the teacher and stores the labels.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import torch

import utils
from agent.actor import ACTION_BOUND
from episodes import Episode, EpisodeStore, SegmentPairs
from registry import register_scheme as register

if TYPE_CHECKING:
    from reward_model import RewardModel

Selector = Callable[["QueryContext"], SegmentPairs]
EXPLORE_NEWEST_EPISODES = 10  # with `explore`, the non-exploring share of queries comes from this many episodes
LABELLED_PER_DISTANCE = 512  # labelled pairs per k-center distance matrix, to bound its memory


class Policy(Protocol):
    def log_likelihood(self, obs: torch.Tensor, action: torch.Tensor, bound: float = ...) -> torch.Tensor: ...


@dataclass(frozen=True)
class QueryContext:
    """What a scheme selects from: the round's size, the episode store and the round's random stream, the ensemble's
    scores, the labelled pairs, the current policy's log-likelihood, and, for a method's own scheme, its config keys
    and the feedback steps that train its models (PPE's Morse network)."""

    num: int  # queries this round
    episodes: EpisodeStore
    segment: int  # steps per segment
    recent: int  # N: the policy-aligned window (max_reward_buffer_size)
    large_batch: int  # candidates per query for the ensemble-scored schemes
    explore: float  # QPA's `explore` share (0: off)
    rng: np.random.Generator
    reward_model: RewardModel
    labelled_pairs: torch.Tensor  # [M, 2, S, ds + da]
    policy: Policy | None  # None outside a training run (the reward model's own tests)
    cfg: Any = None  # the training config, for a scheme's own keys (declared in its method's module)
    feedback_steps: Mapping[str, Any] = field(default_factory=dict)  # the method's steps by their config names
    metrics: dict[str, float] = field(default_factory=dict)  # what the scheme reports about its selection

    @property
    def obs_dim(self) -> int:
        return self.episodes.obs_dim

    def history(self) -> list[Episode]:
        """Every stored episode (the `history_episodes` newest)."""
        return list(self.episodes)

    def recent_episodes(self, num: int | None = None) -> list[Episode]:
        """The `num` (default N) most recent episodes."""
        return self.episodes.recent(num or self.recent)

    def sample_pairs(self, num: int, episodes: list[Episode]) -> SegmentPairs:
        """`num` uniformly drawn pairs from `episodes`, from this round's random stream."""
        return self.episodes.sample_segment_pairs(num, episodes, self.segment, self.rng)

    def disagreement(self, candidates: SegmentPairs) -> torch.Tensor:
        """Std over the ensemble of P[σ1 ≻ σ0], per pair [num]."""
        return self.reward_model.disagreement(candidates.pairs)

    def entropy(self, candidates: SegmentPairs) -> torch.Tensor:
        """Bradley-Terry entropy averaged over the ensemble, per pair [num]."""
        return self.reward_model.entropy(candidates.pairs)

    def log_likelihood(self, candidates: SegmentPairs, bound: float = ACTION_BOUND) -> torch.Tensor:
        """log π(a|s) of every step of every segment under the current policy, actions clamped to ±`bound`:
        [num, 2, S]."""
        if self.policy is None:
            raise ValueError("policy=None: this selection has no policy; allowed: schemes that do not use one")
        pairs = candidates.pairs
        rows = torch.as_tensor(pairs.reshape(-1, pairs.shape[-1]), device=self.labelled_pairs.device)
        log_prob = self.policy.log_likelihood(rows[:, : self.obs_dim], rows[:, self.obs_dim :], bound)
        return log_prob.view(pairs.shape[:3])

    def report(self, name: str, value: float) -> None:
        """A figure about this round's selection, logged as train/<name> with the round (e.g. a rank percentile)."""
        self.metrics[name] = value


def top(score: torch.Tensor, num: int) -> np.ndarray:
    return utils.to_np(torch.topk(score, min(num, len(score))).indices)


@register("policy_aligned", recent_only=True)
def policy_aligned(ctx: QueryContext) -> SegmentPairs:
    """QPA's policy-aligned selection: uniform pairs from the recent-episode window, the N most recent episodes.
    With `explore` = x, a fraction x comes from all N and the rest from the 10 newest."""
    recent = ctx.recent_episodes()
    if not ctx.explore:
        return ctx.sample_pairs(ctx.num, recent)
    num_wide = round(ctx.explore * ctx.num)
    wide = ctx.sample_pairs(num_wide, recent)
    newest = ctx.sample_pairs(ctx.num - num_wide, recent[-EXPLORE_NEWEST_EPISODES:])
    return SegmentPairs.concat(wide, newest)


@register("uniform", feed_type=0)
def uniform(ctx: QueryContext) -> SegmentPairs:
    """PEBBLE's uniform selection over the whole episode store."""
    return ctx.sample_pairs(ctx.num, ctx.history())


@register("disagreement", uses_reward_model=True, feed_type=1)
def disagreement(ctx: QueryContext) -> SegmentPairs:
    """The `num` of `num × large_batch` history candidates with the largest ensemble disagreement."""
    candidates = ctx.sample_pairs(ctx.num * ctx.large_batch, ctx.history())
    return candidates.take(top(ctx.disagreement(candidates), ctx.num))


@register("entropy", uses_reward_model=True, feed_type=2)
def entropy(ctx: QueryContext) -> SegmentPairs:
    """The `num` of `num × large_batch` history candidates with the largest preference entropy."""
    candidates = ctx.sample_pairs(ctx.num * ctx.large_batch, ctx.history())
    return candidates.take(top(ctx.entropy(candidates), ctx.num))


@register("kcenter", uses_reward_model=True, feed_type=3)
def kcenter(ctx: QueryContext) -> SegmentPairs:
    """Greedy k-center over state features of history candidates, against the already-labelled pairs."""
    candidates = ctx.sample_pairs(ctx.num * ctx.large_batch, ctx.history())
    return candidates.take(kcenter_indices(ctx, candidates.pairs, ctx.num))


def _kcenter_of_shortlist(ctx: QueryContext, score: Callable[[SegmentPairs], torch.Tensor]) -> SegmentPairs:
    """k-center among the best-scored half of `num × large_batch` history candidates (B-Pref's hybrids)."""
    candidates = ctx.sample_pairs(ctx.num * ctx.large_batch, ctx.history())
    shortlist = top(score(candidates), len(candidates.pairs) // 2)
    return candidates.take(shortlist[kcenter_indices(ctx, candidates.pairs[shortlist], ctx.num)])


@register("kcenter_disagree", uses_reward_model=True, feed_type=4)
def kcenter_disagree(ctx: QueryContext) -> SegmentPairs:
    return _kcenter_of_shortlist(ctx, ctx.disagreement)


@register("kcenter_entropy", uses_reward_model=True, feed_type=5)
def kcenter_entropy(ctx: QueryContext) -> SegmentPairs:
    return _kcenter_of_shortlist(ctx, ctx.entropy)


def squared_distances(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """|a_i - b_j|² [len(a), len(b)], expanded as |a|² + |b|² - 2 a·b (one matrix product, as torch.cdist does for
    large inputs). k-center only compares distances, so it skips cdist's square root, which on a CPU rounds by
    processor (see utils.adam)."""
    return torch.addmm(a.square().sum(1, keepdim=True) + b.square().sum(1), a, b.T, alpha=-2.0).clamp_min_(0.0)


@torch.inference_mode()
def kcenter_indices(ctx: QueryContext, pairs: np.ndarray, num: int) -> np.ndarray:
    """Indices of `num` candidates picked greedily to be farthest from the labelled pairs and each other.

    Features are the states of both segments, flattened (as in B-Pref); actions are left out. Distances are
    compared squared: the same order, without a square root.
    """
    num = min(num, len(pairs))
    device = ctx.labelled_pairs.device
    features = torch.as_tensor(pairs[..., : ctx.obs_dim], device=device).flatten(1)
    nearest = torch.full((len(pairs),), torch.inf, device=device)
    labelled = ctx.labelled_pairs[..., : ctx.obs_dim].flatten(1)
    for chunk in labelled.split(LABELLED_PER_DISTANCE) if len(labelled) else ():
        nearest = torch.minimum(nearest, squared_distances(features, chunk).amin(1))
    chosen = torch.empty(num, dtype=torch.long, device=device)
    for pick in range(num):
        index = torch.argmax(nearest)
        chosen[pick] = index
        nearest = torch.minimum(nearest, squared_distances(features, features[index].unsqueeze(0)).squeeze(1))
        nearest[index] = -torch.inf  # never re-pick, even when every candidate is a duplicate
    return utils.to_np(chosen)
