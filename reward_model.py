"""Preference-learned reward r̂(s, a): a Bradley-Terry ensemble, the episode and query stores, query selection.

The learner only ever sees segments of (s, a) and the teacher's labels; the true rewards kept beside the episodes
go to the scripted teacher and nowhere else (ALGORITHM.md §4).

Segment pairs are stored as one array [num, 2, segment, ds + da]: index 0 is σ0, index 1 is σ1, and a label
y = 1 means σ1 is preferred (0.5 = equally preferable).
"""

from __future__ import annotations

import itertools
import math
from collections import deque
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

import queries
import utils
from config_schema import QPA_CROP_SHRINK, ConfigError, QueryConfig, RewardConfig, TeacherConfig
from teacher import ScriptedTeacher

# train_reward_iter stops at the first step where the accuracy, counted over every step of the call, reaches this
DMC_STOP_ACCURACY = 0.98
EPISODE_PREALLOC = 1000  # rows preallocated for the episode being collected; doubled when a longer one shows up
# On CPU, 4096-row blocks keep a layer's activations (4 MB) in cache, which relabelling a large buffer gains from
# (bench/bench_replay.py compares relabelling chunk sizes). GPUs prefer one large launch, so they get the rows unsplit.
_CPU_BLOCK_ROWS = 4096
_PAIRS_PER_FORWARD = 512  # keeps scoring many candidate pairs within a few hundred MB of activations
_OUTPUT_ACTIVATIONS: dict[str, type[nn.Module]] = {"tanh": nn.Tanh, "sig": nn.Sigmoid, "relu": nn.ReLU}


class EnsembleMLP(nn.Module):
    """`ensemble_size` independent MLPs evaluated as one batched matmul per layer.

    Layer weights are stacked [E, in, out] so every layer is one `baddbmm` over all members. Input is either
    [N, in] (the same rows for every member) or [E, N, in] (one batch per member); output is [E, N, 1].
    """

    def __init__(
        self,
        input_dim: int,
        hidden_dim: int,
        hidden_depth: int,
        ensemble_size: int,
        activation: str,
        generator: torch.Generator,
    ) -> None:
        super().__init__()
        self.activation = activation
        self.ensemble_size = ensemble_size
        self.output_activation = _OUTPUT_ACTIVATIONS[activation]()
        dims = [input_dim] + [hidden_dim] * hidden_depth + [1]
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList()
        for fan_in, fan_out in itertools.pairwise(dims):
            # nn.Linear's default init (kaiming_uniform with a=sqrt(5)) is U(±1/sqrt(fan_in)) for weight and bias.
            bound = 1.0 / math.sqrt(fan_in)
            weight = torch.empty(ensemble_size, fan_in, fan_out).uniform_(-bound, bound, generator=generator)
            bias = torch.empty(ensemble_size, 1, fan_out).uniform_(-bound, bound, generator=generator)
            self.weights.append(nn.Parameter(weight))
            self.biases.append(nn.Parameter(bias))
        # Iterating a ParameterList is slow next to a per-env-step prediction; a plain list of the same Parameter
        # objects stays valid through .to() and load_state_dict, which update them in place.
        self._layers = list(zip(self.weights, self.biases))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        last = len(self._layers) - 1
        # In-place activations save a [rows, hidden] allocation per layer when relabelling without autograd.
        inplace = not torch.is_grad_enabled()
        h = x.expand(self.ensemble_size, *x.shape) if x.dim() == 2 else x
        for layer, (weight, bias) in enumerate(self._layers):
            h = torch.baddbmm(bias, h, weight)
            h = F.leaky_relu(h, inplace=inplace) if layer < last else self.output_activation(h)
        return h

    def member(self, index: int) -> nn.Sequential:
        """A standalone copy of one member as ordinary nn.Linear layers (for checks and export)."""
        layers: list[nn.Module] = []
        for weight, bias in zip(self.weights, self.biases):
            linear = nn.Linear(weight.shape[1], weight.shape[2], device=weight.device)
            with torch.no_grad():
                linear.weight.copy_(weight[index].T)
                linear.bias.copy_(bias[index, 0])
            layers += [linear, nn.LeakyReLU()]
        layers[-1] = _OUTPUT_ACTIVATIONS[self.activation]()
        return nn.Sequential(*layers)


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


def pseudo_labels(returns: torch.Tensor, threshold: float) -> tuple[torch.Tensor, torch.Tensor]:
    """SURF's pseudo-labels from predicted returns [..., 2]: (argmax label [...], mask [...] of max P > threshold)."""
    confidence, labels = F.softmax(returns, dim=-1).max(-1)
    return labels, confidence > threshold


class RewardModel:
    """Ensemble reward model trained from scripted-teacher preferences (PEBBLE / QPA), built from its config sections
    (config_schema.RewardConfig, QueryConfig, TeacherConfig).

    The labelled-query store is sized from `max_feedback` and grown on demand (ALGORITHM.md §9). The episode store
    keeps `queries.history_size` episodes: the N most recent for policy-aligned selection, else history_episodes.
    The attributes `size_segment`, `mb_size`, `max_size`, `large_batch` keep B-Pref's names, which query schemes read.

    `semi_supervised` switches on SURF (Park et al., ICLR 2022): every training minibatch also draws
    `mu` x `reward_train_batch` unlabelled pairs of windows (`segment` + 2 x `dataaug_window` steps) uniformly
    from the episode store, pseudo-labels those whose prediction on the central `segment` steps has
    max P > `threshold_u`, and adds `lambda_u` x their cross-entropy on a crop of `segment` ± `crop_range` steps.
    """

    def __init__(
        self,
        reward: RewardConfig,
        queries: QueryConfig,
        teacher: TeacherConfig,
        obs_dim: int,
        action_dim: int,
        device: str | torch.device = "cpu",
        seed: int = 0,
    ) -> None:
        self.cfg = reward
        self.ds, self.da, self.input_dim = obs_dim, action_dim, obs_dim + action_dim
        self.ensemble_size = reward.ensemble_size
        self.size_segment = reward.segment
        self.mb_size = self.origin_mb_size = queries.reward_batch  # the current round's size and the configured one
        self.max_size = queries.max_reward_buffer_size  # N
        self.large_batch = queries.large_batch
        self.explore = float(queries.explore or 0.0)
        self.max_feedback = queries.max_feedback
        self.device = torch.device(device)
        self.pseudo_label_fraction = float("nan")  # share of unlabelled pairs pseudo-labelled in the last training
        self._pseudo_counts = torch.zeros(2, device=self.device)  # pseudo-labelled, drawn unlabelled pairs

        seeds = np.random.SeedSequence(seed).generate_state(4)
        self.net = EnsembleMLP(
            self.input_dim,
            reward.reward_hidden_dim,
            reward.reward_hidden_depth,
            reward.ensemble_size,
            reward.activation,
            torch.Generator().manual_seed(seed),
        )
        self.net.to(self.device)
        # One Adam over the stacked weights is per-member Adam: the update is elementwise and members are disjoint.
        self.opt = torch.optim.Adam(self.net.parameters(), lr=reward.reward_lr)
        self.rng = np.random.default_rng(seeds[0])
        self.torch_rng = torch.Generator(device=self.device).manual_seed(int(seeds[1]))
        # Its own stream, so that the semi-supervised term leaves every other random draw of training unchanged.
        self.unlabelled_rng = torch.Generator(device=self.device).manual_seed(int(seeds[3]))
        self.teacher = ScriptedTeacher(
            teacher.teacher_beta,
            teacher.teacher_gamma,
            teacher.teacher_eps_mistake,
            teacher.teacher_eps_skip,
            teacher.teacher_eps_equal,
            seed=int(seeds[2]),
        )

        # Complete episodes as (sa [len, ds + da], true reward [len]) float32 arrays, oldest first.
        self.episodes: deque[tuple[np.ndarray, np.ndarray]] = deque(maxlen=queries.history_size)
        self._episode_sa = np.empty((EPISODE_PREALLOC, self.input_dim), dtype=np.float32)
        self._episode_rew = np.empty(EPISODE_PREALLOC, dtype=np.float32)
        self._episode_len = 0
        self.episodes_closed = 0  # ever, so a cache of the store knows when it is stale
        self._unlabelled_source: tuple[int, torch.Tensor, torch.Tensor, torch.Tensor] | None = None

        shape = (0, 2, self.size_segment, self.input_dim)
        self.last_queries = np.empty(shape, dtype=np.float32)  # the latest batch asked
        self.num_labelled = 0
        self._pairs, self._labels = torch.empty(shape, device=self.device), torch.empty(0, device=self.device)

    # ------------------------------------------------------------------ prediction

    @torch.inference_mode()
    def predict_reward(self, x: torch.Tensor) -> torch.Tensor:
        """Ensemble-mean r̂ for rows x [N, ds + da] on `device`: [N, 1] on `device`, no host sync."""
        x = x.to(self.device, torch.float32)
        if self.device.type == "cpu" and len(x) > _CPU_BLOCK_ROWS:
            return torch.cat([self._mean_reward(block) for block in x.split(_CPU_BLOCK_ROWS)])
        return self._mean_reward(x)

    def _mean_reward(self, x: torch.Tensor) -> torch.Tensor:
        rewards = self.net(x)
        return rewards[0] if self.ensemble_size == 1 else rewards.mean(0)

    @torch.inference_mode()
    def predict_reward_and_std(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Ensemble mean and (population) std of r̂, each [N, 1]."""
        rewards = self.net(x.to(self.device, torch.float32))
        return rewards.mean(0), rewards.std(0, correction=0)

    def r_hat(self, x: np.ndarray) -> float:
        """Mean r̂ of one (s, a) row given as a numpy vector."""
        return float(self.predict_reward(torch.as_tensor(np.asarray(x, dtype=np.float32)).reshape(1, -1)))

    def r_hat_batch(self, x: np.ndarray) -> np.ndarray:
        """Mean r̂ of numpy rows [N, ds + da]: numpy [N, 1]."""
        return utils.to_np(self.predict_reward(torch.as_tensor(np.asarray(x, dtype=np.float32))))

    @torch.inference_mode()
    def r_hat_member(self, x: np.ndarray | torch.Tensor, member: int) -> torch.Tensor:
        """r̂ of one ensemble member for rows [N, ds + da]: [N, 1] on `device`."""
        return self.net(torch.as_tensor(x, dtype=torch.float32, device=self.device))[member]

    @torch.inference_mode()
    def _pair_returns(self, pairs: np.ndarray) -> torch.Tensor:
        """Per-member predicted returns [E, num, 2] of segment pairs [num, 2, S, ds + da]."""
        returns = []
        for chunk in torch.as_tensor(pairs, device=self.device).split(_PAIRS_PER_FORWARD):
            rewards = self.net(chunk.reshape(-1, self.input_dim))
            returns.append(rewards.view(self.ensemble_size, *chunk.shape[:3]).sum(-1))
        return torch.cat(returns, dim=1)

    def disagreement(self, pairs: np.ndarray) -> torch.Tensor:
        """Std over members of P[σ1 ≻ σ0] for each pair [num] (0 for a single member)."""
        returns = self._pair_returns(pairs)
        return torch.sigmoid(returns[..., 1] - returns[..., 0]).std(0, correction=0)

    def entropy(self, pairs: np.ndarray) -> torch.Tensor:
        """Bradley-Terry entropy of each pair [num], averaged over members (B-Pref's `get_entropy`)."""
        log_prob = F.log_softmax(self._pair_returns(pairs), dim=-1)
        return -(log_prob.exp() * log_prob).sum(-1).mean(0)

    # ------------------------------------------------------------------ episode store

    def add_data(self, obs: np.ndarray, act: np.ndarray, rew: float, done: bool | float) -> None:
        """Append one step (s, a, true r); `done` closes the episode and moves it into the store."""
        n = self._episode_len
        if n == len(self._episode_rew):
            self._episode_sa = np.concatenate([self._episode_sa, np.empty_like(self._episode_sa)])
            self._episode_rew = np.concatenate([self._episode_rew, np.empty_like(self._episode_rew)])
        self._episode_sa[n, : self.ds] = obs
        self._episode_sa[n, self.ds :] = act
        self._episode_rew[n] = rew
        self._episode_len = n + 1
        if done:
            self.episodes.append((self._episode_sa[: n + 1].copy(), self._episode_rew[: n + 1].copy()))
            self._episode_len = 0
            self.episodes_closed += 1

    def sample_segment_pairs(
        self, num: int, episodes: list[tuple[np.ndarray, np.ndarray]]
    ) -> tuple[np.ndarray, np.ndarray]:
        """`num` pairs: two episodes drawn uniformly with replacement, a uniform start in each.

        Starts are drawn from 0 ... len - S - 1, as the original release draws them, so a segment never holds an
        episode's last step. Returns (pairs [num, 2, S, ds + da], true rewards [num, 2, S]).
        """
        length = self.size_segment
        eligible = [episode for episode in episodes if len(episode[1]) > length]
        if not eligible:
            raise ValueError(
                f"no complete episode longer than segment={length} steps is stored "
                f"({len(episodes)} candidates); allowed: query after add_data has closed such an episode"
            )
        lengths = np.array([len(episode[1]) for episode in eligible])
        episode_index = self.rng.integers(len(eligible), size=(num, 2))
        starts = self.rng.integers(0, lengths[episode_index] - length)
        pairs = np.empty((num, 2, length, self.input_dim), dtype=np.float32)
        rewards = np.empty((num, 2, length), dtype=np.float32)
        for query, side in np.ndindex(num, 2):
            sa, rew = eligible[episode_index[query, side]]
            start = starts[query, side]
            pairs[query, side] = sa[start : start + length]
            rewards[query, side] = rew[start : start + length]
        return pairs, rewards

    # ------------------------------------------------------------------ labelled store

    @property
    def labelled_capacity(self) -> int:
        return len(self._labels)

    def labelled_data(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Views of the labelled store: pairs [M, 2, S, ds + da] and labels [M] in {0, 1, 0.5}."""
        return self._pairs[: self.num_labelled], self._labels[: self.num_labelled]

    def _store(self, pairs: np.ndarray, labels: np.ndarray) -> None:
        needed = self.num_labelled + len(labels)
        if needed > self.labelled_capacity:
            # Doubling keeps appends amortised O(1); the cap keeps memory at the feedback budget.
            capacity = max(needed, min(2 * self.labelled_capacity, self.max_feedback))
            grown_pairs = torch.empty((capacity, *self._pairs.shape[1:]), device=self.device)
            grown_labels = torch.empty(capacity, device=self.device)
            grown_pairs[: self.num_labelled] = self._pairs[: self.num_labelled]
            grown_labels[: self.num_labelled] = self._labels[: self.num_labelled]
            self._pairs, self._labels = grown_pairs, grown_labels
        self._pairs[self.num_labelled : needed] = torch.as_tensor(pairs, device=self.device)
        self._labels[self.num_labelled : needed] = torch.as_tensor(labels, device=self.device)
        self.num_labelled = needed

    def store_labels(self, pairs: np.ndarray, keep_index: np.ndarray, labels: np.ndarray) -> int:
        """Store the answered queries `pairs[keep_index]` with their labels; returns how many were stored."""
        self._store(pairs[keep_index], labels)
        return len(keep_index)

    def segment_origins(self, pairs: np.ndarray) -> np.ndarray:
        """(episode, start step) of each segment of pairs [num, 2, S, ds + da] in the episode store: [num, 2, 2].
        Episodes are numbered from 0, the run's first; a person's answers are filed under these numbers."""
        rows = np.concatenate([sa for sa, _ in self.episodes])
        ends = np.cumsum([len(sa) for sa, _ in self.episodes])
        first_episode = self.episodes_closed - len(self.episodes)
        origins = np.empty((*pairs.shape[:2], 2), dtype=np.int64)
        for query, side in np.ndindex(*pairs.shape[:2]):
            segment = pairs[query, side]
            for row in np.flatnonzero(rows[:, 0] == segment[0, 0]):
                episode = int(np.searchsorted(ends, row, side="right"))
                if row + len(segment) <= ends[episode] and np.array_equal(rows[row : row + len(segment)], segment):
                    origins[query, side] = first_episode + episode, row - (ends[episode - 1] if episode else 0)
                    break
            else:
                raise ValueError(f"segment {side} of query {query} is not in the episode store")
        return origins

    # ------------------------------------------------------------------ query selection

    def change_batch(self, new_frac: float) -> None:
        self.mb_size = int(self.origin_mb_size * new_frac)

    def set_batch(self, new_batch: int) -> None:
        self.mb_size = int(new_batch)

    def set_teacher_thres_skip(self, new_margin: float) -> None:
        self.teacher.set_thres_skip(new_margin)

    def set_teacher_thres_equal(self, new_margin: float) -> None:
        self.teacher.set_thres_equal(new_margin)

    def select_queries(self, scheme: str) -> tuple[np.ndarray, np.ndarray]:
        """`mb_size` pairs [mb_size, 2, S, ds + da] chosen by the registered `scheme` (see queries.py), with their
        true rewards [mb_size, 2, S] for a scripted teacher."""
        pairs, rewards = queries.QUERY_SCHEMES[scheme].select(self, self.mb_size)
        self.last_queries = pairs
        return pairs, rewards

    def query(self, scheme: str) -> int:
        """One query round with the scripted teacher: select, label, store. Returns how many were labelled (the
        teacher may skip some)."""
        pairs, rewards = self.select_queries(scheme)
        return self.store_labels(pairs, *self.teacher.label(rewards[:, 0], rewards[:, 1]))

    # B-Pref's method names, kept for code written against it.
    def uniform_sampling(self) -> int:
        """QPA's `uniform_sampling`: policy-aligned selection from the N most recent episodes."""
        return self.query("policy_aligned")

    def disagreement_sampling(self) -> int:
        return self.query("disagreement")

    def entropy_sampling(self) -> int:
        return self.query("entropy")

    def kcenter_sampling(self) -> int:
        return self.query("kcenter")

    def kcenter_disagree_sampling(self) -> int:
        return self.query("kcenter_disagree")

    def kcenter_entropy_sampling(self) -> int:
        return self.query("kcenter_entropy")

    # ------------------------------------------------------------------ training

    def train_reward_iter(self, num_iters: int) -> tuple[np.ndarray, float]:
        """DMC rule of the original release: up to `num_iters` minibatch steps, reshuffling after every pass.

        The accuracy is a running count over every step of this call (never reset between passes), on the
        cropped returns when temporal cropping is on (each of the `data_aug_ratio` copies is one prediction);
        training stops after the first step at which its mean over the ensemble reaches 0.98.
        Returns (per-member running accuracy, mean loss per member and step).
        """
        return self._train(int(num_iters), augment=True, stop_accuracy=DMC_STOP_ACCURACY)

    def train_reward(self) -> tuple[np.ndarray, float]:
        """One epoch over the labelled store on whole segments (the original release's Meta-World trainer; the
        caller repeats it until the epoch's mean accuracy exceeds 0.97). Temporal cropping belongs to the DMC
        rule, `train_reward_iter`. Returns (per-member accuracy of the epoch, mean loss per member and step)."""
        return self._train(math.ceil(self.num_labelled / self.cfg.reward_train_batch), augment=False)

    def _train(self, num_steps: int, augment: bool, stop_accuracy: float | None = None) -> tuple[np.ndarray, float]:
        """`num_steps` Adam steps, counting accuracy over all of them; with `stop_accuracy`, stop after the first
        step at which the running accuracy (mean over members) reaches it."""
        if self.num_labelled == 0:
            raise ValueError("num_labelled=0: the reward model has no labelled queries; allowed: query before training")
        self._pseudo_counts.zero_()
        copies = (self.cfg.data_aug_ratio or 1) if augment else 1
        counts = torch.zeros(2, self.ensemble_size, device=self.device)  # correct, counted: since the call began
        loss_sum = torch.zeros((), device=self.device)
        # The host reads the counts only when the stop is possible at all: `seen` holds the counts it last read,
        # and `unseen` bounds the predictions counted since. (correct + x) / (counted + x) grows with x, so
        # (seen correct + unseen) / (seen counted + unseen) bounds each member's accuracy from above.
        seen, unseen, steps = np.zeros((2, self.ensemble_size)), 0, 0
        for index in self._minibatches(num_steps):
            loss, correct, counted = self._train_minibatch(index, augment)
            loss_sum += loss
            counts[0] += correct
            counts[1] += counted
            steps += 1
            unseen += index.shape[1] * copies
            if stop_accuracy is not None and np.mean((seen[0] + unseen) / (seen[1] + unseen)) >= stop_accuracy:
                seen, unseen = utils.to_np(counts).astype(np.float64), 0
                if _accuracy(seen).mean() >= stop_accuracy:
                    break
        return self._finish_training(counts, loss_sum, steps)

    def _minibatches(self, num_steps: int) -> Iterator[torch.Tensor]:
        """Indices [E, B] of `num_steps` minibatches: consecutive slices of one permutation per member, a new
        permutation after each pass (the last slice of a pass may be shorter)."""
        order, position = self._shuffled_order(), 0
        for _ in range(num_steps):
            yield order[:, position : position + self.cfg.reward_train_batch]
            position += self.cfg.reward_train_batch
            if position >= self.num_labelled:
                order, position = self._shuffled_order(), 0

    def _finish_training(self, counts: torch.Tensor, loss_sum: torch.Tensor, steps: int) -> tuple[np.ndarray, float]:
        if self.cfg.semi_supervised:
            pseudo, drawn = utils.to_np(self._pseudo_counts)
            self.pseudo_label_fraction = float(pseudo / max(drawn, 1.0))
        return _accuracy(utils.to_np(counts)), float(loss_sum) / (max(steps, 1) * self.ensemble_size)

    def _shuffled_order(self) -> torch.Tensor:
        """An independent permutation of the labelled store per member [E, M] (as the original release's ensemble)."""
        keys = torch.rand((self.ensemble_size, self.num_labelled), generator=self.torch_rng, device=self.device)
        return keys.argsort(dim=1)

    def _train_minibatch(self, index: torch.Tensor, augment: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One Adam step on the pairs index [E, B] (member e trains on row e).

        Returns the loss summed over members and, per member, the number of correct and of counted predictions:
        one prediction per crop copy with `augment` and temporal cropping on, else one per pair (whole
        segments). A prediction is σ1 when its return is strictly larger (a tie predicts σ0, as argmax does).
        Equal labels (0.5) train as (0.5, 0.5) targets and are left out of the accuracy.
        """
        members, batch = index.shape
        pairs = self._pairs[index]
        labels = self._labels[index]
        rewards = self.net(pairs.reshape(members, -1, self.input_dim)).view(members, batch, 2, self.size_segment)
        if augment and self.cfg.data_aug_ratio:
            starts, lengths = crop_windows((members, batch), self.size_segment, qpa_crop_lengths(self.size_segment),
                                           self.cfg.data_aug_ratio, self.torch_rng, self.device)  # fmt: skip
            returns = window_sums(rewards, starts, lengths).transpose(-1, -2)  # [E, B, copies, 2]
            targets = labels.unsqueeze(-1).expand(-1, -1, self.cfg.data_aug_ratio)
        else:
            returns, targets = rewards.sum(-1), labels
        smoothed = targets * (1.0 - 2.0 * self.cfg.label_margin) + self.cfg.label_margin
        log_prob = F.log_softmax(returns, dim=-1)
        member_loss = -(smoothed * log_prob[..., 1] + (1.0 - smoothed) * log_prob[..., 0]).flatten(1).mean(1)
        loss = member_loss.sum()
        if self.cfg.semi_supervised:
            loss = loss + self.cfg.lambda_u * self._unlabelled_loss(members).sum()
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        decided = (targets != 0.5).flatten(1)
        correct = ((returns[..., 1] > returns[..., 0]).flatten(1) == (targets > 0.5).flatten(1)) & decided
        return loss.detach(), correct.sum(1), decided.sum(1)

    # ------------------------------------------------------------------ SURF: semi-supervised term

    def _unlabelled_store(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The episodes long enough for an unlabelled window, concatenated on `device`: rows [T, ds + da], and each
        episode's first row and length. Rebuilt only when an episode has closed since the last call."""
        if self._unlabelled_source is None or self._unlabelled_source[0] != self.episodes_closed:
            window = self.size_segment + 2 * self.cfg.dataaug_window
            eligible = [sa for sa, _ in self.episodes if len(sa) >= window]
            if not eligible:
                raise ValueError(
                    f"no stored episode has segment + 2 * dataaug_window = {window} steps; allowed: train "
                    "the semi-supervised model once add_data has closed such an episode"
                )
            lengths = torch.tensor([len(sa) for sa in eligible], device=self.device)
            starts = F.pad(lengths.cumsum(0)[:-1], (1, 0))
            rows = torch.as_tensor(np.concatenate(eligible), device=self.device)
            self._unlabelled_source = (self.episodes_closed, rows, starts, lengths)
        return self._unlabelled_source[1:]

    def sample_unlabelled(self, members: int, num: int) -> torch.Tensor:
        """Pairs of windows [members, num, 2, S + 2 x dataaug_window, ds + da], each window from an episode drawn
        uniformly (with replacement) from the store and a uniform start in it: one gather, no loop over pairs."""
        rows, first_row, lengths = self._unlabelled_store()
        window = self.size_segment + 2 * self.cfg.dataaug_window
        episode = torch.randint(len(lengths), (members, num, 2), generator=self.unlabelled_rng, device=self.device)
        uniform = torch.rand((members, num, 2), generator=self.unlabelled_rng, device=self.device)
        start = first_row[episode] + (uniform * (lengths[episode] - window + 1)).long()
        return rows[start.unsqueeze(-1) + torch.arange(window, device=self.device)]

    def _unlabelled_loss(self, members: int) -> torch.Tensor:
        """Per-member mean over `mu` x `reward_train_batch` unlabelled pairs of the pseudo-label cross-entropy on
        SURF's crop (pairs below the confidence threshold count as zero, as in SURF): [members]."""
        num = self.cfg.mu * self.cfg.reward_train_batch
        window = self.size_segment + 2 * self.cfg.dataaug_window
        pairs = self.sample_unlabelled(members, num)
        rewards = self.net(pairs.reshape(members, -1, self.input_dim)).view(members, num, 2, window)
        centre = self.cfg.dataaug_window
        labels, confident = pseudo_labels(rewards[..., centre : centre + self.size_segment].sum(-1).detach(),
                                          self.cfg.threshold_u)  # fmt: skip
        surf_lengths = (self.size_segment - self.cfg.crop_range, self.size_segment + self.cfg.crop_range)
        starts, lengths = crop_windows((members, num), window, surf_lengths, 1, self.unlabelled_rng, self.device)
        log_prob = F.log_softmax(window_sums(rewards, starts, lengths).squeeze(-1), dim=-1)
        cross_entropy = -log_prob.gather(-1, labels.unsqueeze(-1)).squeeze(-1)
        self._pseudo_counts[0] += confident.sum()
        self._pseudo_counts[1] += confident.numel()
        return (cross_entropy * confident).mean(1)

    # ------------------------------------------------------------------ persistence

    def save(self, model_dir: str | Path, step: int) -> None:
        utils.atomic_torch_save(self.net.state_dict(), Path(model_dir) / f"reward_model_{step}.pt")

    def load(self, model_dir: str | Path, step: int) -> None:
        path = Path(model_dir) / f"reward_model_{step}.pt"
        self.net.load_state_dict(torch.load(path, map_location=self.device, weights_only=True))

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume: weights, optimiser, both stores, teacher, RNGs, query batch size."""
        lengths = [len(rew) for _, rew in self.episodes]
        return {
            "net": self.net.state_dict(),
            "opt": self.opt.state_dict(),
            "episode_lengths": torch.tensor(lengths, dtype=torch.long),
            "episode_sa": torch.from_numpy(np.concatenate([sa for sa, _ in self.episodes] or [self._episode_sa[:0]])),
            "episode_rew": torch.from_numpy(
                np.concatenate([rew for _, rew in self.episodes] or [self._episode_rew[:0]])
            ),
            "open_episode_sa": torch.from_numpy(self._episode_sa[: self._episode_len].copy()),
            "open_episode_rew": torch.from_numpy(self._episode_rew[: self._episode_len].copy()),
            "labelled_pairs": self._pairs[: self.num_labelled].clone(),
            "labels": self._labels[: self.num_labelled].clone(),
            "teacher": self.teacher.state_dict(),
            "rng": self.rng.bit_generator.state,
            "torch_rng": self.torch_rng.get_state(),
            "unlabelled_rng": self.unlabelled_rng.get_state(),
            "episodes_closed": self.episodes_closed,
            "mb_size": self.mb_size,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.net.load_state_dict(state["net"])
        self.opt.load_state_dict(state["opt"])
        boundaries = np.cumsum([0, *state["episode_lengths"].tolist()])
        episode_sa, episode_rew = state["episode_sa"].numpy(), state["episode_rew"].numpy()
        self.episodes.clear()
        for start, end in itertools.pairwise(boundaries):
            self.episodes.append((episode_sa[start:end].copy(), episode_rew[start:end].copy()))
        open_len = len(state["open_episode_rew"])
        capacity = max(EPISODE_PREALLOC, open_len)
        self._episode_sa = np.empty((capacity, self.input_dim), dtype=np.float32)
        self._episode_rew = np.empty(capacity, dtype=np.float32)
        self._episode_sa[:open_len] = state["open_episode_sa"].numpy()
        self._episode_rew[:open_len] = state["open_episode_rew"].numpy()
        self._episode_len = open_len
        self._pairs = state["labelled_pairs"].to(self.device).clone()
        self._labels = state["labels"].to(self.device).clone()
        self.num_labelled = len(self._labels)
        self.teacher.load_state_dict(state["teacher"])
        self.rng.bit_generator.state = state["rng"]
        self.torch_rng.set_state(state["torch_rng"])
        self.unlabelled_rng.set_state(state["unlabelled_rng"])
        self.episodes_closed = int(state["episodes_closed"])
        self._unlabelled_source = None
        self.mb_size = int(state["mb_size"])


def reward_model_from_keys(
    obs_dim: int, action_dim: int, device: str | torch.device = "cpu", seed: int = 0, **keys: Any
) -> RewardModel:
    """A RewardModel outside a training run (tests, benchmarks, a notebook): its config keys by name
    (`segment=20, ensemble_size=3`), the schema's defaults for the rest."""
    sections = [
        section(**{name: value for name, value in keys.items() if name in section.__dataclass_fields__})
        for section in (RewardConfig, QueryConfig, TeacherConfig)
    ]
    unknown = set(keys).difference(*(section.__dataclass_fields__ for section in sections))
    if unknown:
        raise ConfigError(
            f"{sorted(unknown)[0]} is not a RewardModel config key; allowed: the fields of "
            "RewardConfig, QueryConfig and TeacherConfig (config_schema.py)"
        )
    return RewardModel(*sections, obs_dim, action_dim, device, seed)


def _accuracy(counts: np.ndarray) -> np.ndarray:
    """Per-member accuracy from [correct, counted]; nothing counted (only equal labels) counts as fully correct."""
    correct, counted = counts.astype(np.float64)
    return np.where(counted > 0, correct / np.maximum(counted, 1.0), 1.0)
