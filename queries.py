"""Query selection: which pairs of segments a query round puts to the teacher.

Every scheme is one function registered under its config name (`query_scheme=<name>`); the CLI, the sweeps,
`feed_type` and validation all read this registry, so a new scheme is one decorated function:

    @register("my_scheme")
    def my_scheme(model: RewardModel, num: int) -> SegmentPairs:
        pairs, rewards = history_candidates(model, num * model.large_batch)
        chosen = ...  # indices of `num` candidates
        return pairs[chosen], rewards[chosen]

A selector returns `num` candidate pairs [num, 2, S, ds + da] with their true rewards [num, 2, S]; the reward
model then labels them with the teacher and stores them (`RewardModel.query`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

import utils

if TYPE_CHECKING:
    from reward_model import RewardModel

SegmentPairs = tuple[np.ndarray, np.ndarray]  # pairs [num, 2, S, ds + da], true rewards [num, 2, S]
Selector = Callable[["RewardModel", int], SegmentPairs]
EXPLORE_NEWEST_EPISODES = 10  # with `explore`, the non-exploring share of queries comes from this many episodes
LABELLED_PER_DISTANCE = 512  # labelled pairs per k-center distance matrix, to bound its memory


@dataclass(frozen=True)
class QueryScheme:
    select: Selector
    recent_only: bool  # draws only from the N most recent episodes, so the episode store keeps just those
    uses_reward_model: bool  # scores candidates with the ensemble: meaningless before its first training
    feed_type: int | None  # B-Pref's number for the scheme, for `feed_type=<n>`


QUERY_SCHEMES: dict[str, QueryScheme] = {}


def register(
    name: str, *, recent_only: bool = False, uses_reward_model: bool = False, feed_type: int | None = None
) -> Callable[[Selector], Selector]:
    """Add a selector to the registry under `name`."""

    def add(select: Selector) -> Selector:
        if name in QUERY_SCHEMES:
            raise ValueError(f"query scheme {name!r} is already registered")
        QUERY_SCHEMES[name] = QueryScheme(select, recent_only, uses_reward_model, feed_type)
        return select

    return add


def scheme_for_feed_type(feed_type: int) -> str:
    """The scheme B-Pref numbers `feed_type` (0 uniform, 1 disagreement, ...)."""
    return next(name for name, scheme in QUERY_SCHEMES.items() if scheme.feed_type == feed_type)


def feed_types() -> dict[int, str]:
    return {scheme.feed_type: name for name, scheme in QUERY_SCHEMES.items() if scheme.feed_type is not None}


def history_candidates(model: RewardModel, num: int) -> SegmentPairs:
    """`num` uniformly drawn pairs from every stored episode."""
    return model.sample_segment_pairs(num, list(model.episodes))


def top(score: torch.Tensor, num: int) -> np.ndarray:
    return utils.to_np(torch.topk(score, min(num, len(score))).indices)


@register("policy_aligned", recent_only=True)
def policy_aligned(model: RewardModel, num: int) -> SegmentPairs:
    """QPA's policy-aligned selection: uniform pairs from the recent-episode window, the N = `max_size` most recent
    episodes. With `explore` = x, a fraction x comes from all N and the rest from the 10 newest."""
    recent = list(model.episodes)[-model.max_size :]
    if not model.explore:
        return model.sample_segment_pairs(num, recent)
    num_wide = round(model.explore * num)
    wide = model.sample_segment_pairs(num_wide, recent)
    newest = model.sample_segment_pairs(num - num_wide, recent[-EXPLORE_NEWEST_EPISODES:])
    return np.concatenate([wide[0], newest[0]]), np.concatenate([wide[1], newest[1]])


@register("uniform", feed_type=0)
def uniform(model: RewardModel, num: int) -> SegmentPairs:
    """PEBBLE's uniform selection over the whole episode store."""
    return history_candidates(model, num)


@register("disagreement", uses_reward_model=True, feed_type=1)
def disagreement(model: RewardModel, num: int) -> SegmentPairs:
    """The `num` of `num × large_batch` history candidates with the largest ensemble disagreement."""
    pairs, rewards = history_candidates(model, num * model.large_batch)
    chosen = top(model.disagreement(pairs), num)
    return pairs[chosen], rewards[chosen]


@register("entropy", uses_reward_model=True, feed_type=2)
def entropy(model: RewardModel, num: int) -> SegmentPairs:
    """The `num` of `num × large_batch` history candidates with the largest preference entropy."""
    pairs, rewards = history_candidates(model, num * model.large_batch)
    chosen = top(model.entropy(pairs), num)
    return pairs[chosen], rewards[chosen]


@register("kcenter", uses_reward_model=True, feed_type=3)
def kcenter(model: RewardModel, num: int) -> SegmentPairs:
    """Greedy k-center over state features of history candidates, against the already-labelled pairs."""
    pairs, rewards = history_candidates(model, num * model.large_batch)
    chosen = kcenter_indices(model, pairs, num)
    return pairs[chosen], rewards[chosen]


def _kcenter_of_shortlist(model: RewardModel, num: int, score: Callable[[np.ndarray], torch.Tensor]) -> SegmentPairs:
    """k-center among the best-scored half of `num × large_batch` history candidates (B-Pref's hybrids)."""
    pairs, rewards = history_candidates(model, num * model.large_batch)
    shortlist = top(score(pairs), len(pairs) // 2)
    chosen = shortlist[kcenter_indices(model, pairs[shortlist], num)]
    return pairs[chosen], rewards[chosen]


@register("kcenter_disagree", uses_reward_model=True, feed_type=4)
def kcenter_disagree(model: RewardModel, num: int) -> SegmentPairs:
    return _kcenter_of_shortlist(model, num, model.disagreement)


@register("kcenter_entropy", uses_reward_model=True, feed_type=5)
def kcenter_entropy(model: RewardModel, num: int) -> SegmentPairs:
    return _kcenter_of_shortlist(model, num, model.entropy)


@torch.inference_mode()
def kcenter_indices(model: RewardModel, pairs: np.ndarray, num: int) -> np.ndarray:
    """Indices of `num` candidates picked greedily to be farthest from the labelled pairs and each other.

    Features are the states of both segments, flattened (as in B-Pref); actions are left out.
    """
    num = min(num, len(pairs))
    features = torch.as_tensor(pairs[..., : model.ds], device=model.device).flatten(1)
    nearest = torch.full((len(pairs),), torch.inf, device=model.device)
    labelled_pairs, _ = model.labelled_data()
    for chunk in labelled_pairs[..., : model.ds].flatten(1).split(LABELLED_PER_DISTANCE) if len(labelled_pairs) else ():
        nearest = torch.minimum(nearest, torch.cdist(features, chunk).amin(1))
    chosen = torch.empty(num, dtype=torch.long, device=model.device)
    for pick in range(num):
        index = torch.argmax(nearest)
        chosen[pick] = index
        nearest = torch.minimum(nearest, torch.cdist(features, features[index].unsqueeze(0)).squeeze(1))
        nearest[index] = -torch.inf  # never re-pick, even when every candidate is a duplicate
    return utils.to_np(chosen)
