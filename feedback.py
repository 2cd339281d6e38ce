"""Preference feedback in the training loop (ALGORITHM.md §2): opening a query round, what a method does once its
labels are in (its `feedback_steps`), and the hooks through which a method's parts take part in the loop.

A feedback step is a function of the run and the round, registered under its config name (`register_step`, in this
repository or in a module of yours named by the `imports` key); the config lists a method's steps in order (QPA's
and PEBBLE's: `[train_reward, relabel, reset_critic_after_first_round]`):

    @register_step("reset_critic_every_round")
    def reset_critic_every_round(run: Run, query_round: QueryRound) -> None:
        run.agent.reset_critic()

A step that keeps state, owns a model or watches training is a class instead, built with the run (`Step(run)`, its
config is `run.cfg`), and is called the same way. An extension (`registry.register_extension`) is a class built
with the run in every run whose switches turn it on, whatever its steps. Steps and extensions take part in the
loop through the hooks they define (HOOKS), and `state_dict` / `load_state_dict` put their state in the checkpoint.
A query scheme finds the steps by name in its `QueryContext`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from queries import QueryContext
from registry import FEEDBACK_STEPS, QUERY_SCHEMES, active_extensions, register_step
from reward_trainer import DMC_STOP_ACCURACY, METAWORLD_STOP_ACCURACY, RewardSeeds
from utils import NonFiniteError

if TYPE_CHECKING:
    from collections import deque

    import torch

    from agent.sac import SACAgent
    from config_schema import TrainConfig
    from episodes import EpisodeStore, SegmentPairs
    from logger import Logger
    from preferences import PreferenceDataset
    from replay_buffer import Batch, ReplayBuffer
    from reward_model import RewardModel
    from reward_trainer import RewardTrainer
    from schedule import FeedbackSchedule
    from teacher import QueryRound, Teacher
    from utils import RandomStreams


class Run(Protocol):
    """What a feedback step may read and change: the training loop's parts (train_QPA.Workspace is one)."""

    cfg: TrainConfig
    step: int
    is_metaworld: bool
    max_episode_steps: int
    agent: SACAgent
    replay_buffer: ReplayBuffer
    episodes: EpisodeStore
    preferences: PreferenceDataset
    reward_model: RewardModel
    reward_trainer: RewardTrainer
    schedule: FeedbackSchedule
    teacher: Teacher
    rngs: RandomStreams  # `queries`: query selection; `diagnostic`: the history windows of the alignment log
    recent_returns: deque[float]  # the last training returns, which set the scripted teacher's thresholds
    logger: Logger
    update_metrics: dict[str, torch.Tensor]  # the last SAC update's, logged at the end of each episode
    updates_per_step: int  # SAC updates per env step after the first round (gradient_update; a step may raise it)
    feedback_steps: dict[str, Any]  # the method's steps by name
    extensions: dict[str, Any]  # the extensions the config turns on, by name
    reward_seeds: RewardSeeds  # the seeds of reward learning's streams; `extension` is an extension's own

    def sample(self, hybrid: bool) -> Batch: ...


def ask_queries(run: Run) -> None:
    """Open a query round: its size, the scripted teacher's thresholds (ALGORITHM.md §4), the scheme's queries."""
    cfg = run.cfg
    size = run.schedule.round_size(run.step)
    margin = (np.mean(run.recent_returns) if run.recent_returns else 0.0) * cfg.segment / run.max_episode_steps
    run.teacher.set_thres_skip(margin)
    run.teacher.set_thres_equal(margin)
    scheme = QUERY_SCHEMES[cfg.scheme]
    if run.schedule.rounds == 0 and scheme.uses_reward_model:
        scheme = QUERY_SCHEMES["uniform"]  # ensemble-based scores mean nothing before the first training (B-Pref)
    context = QueryContext(size, run.episodes, cfg.segment, cfg.max_reward_buffer_size, cfg.large_batch,
                           float(cfg.explore or 0.0), run.rngs.queries, run.reward_model, run.preferences.data()[0],
                           run.agent, cfg, run.feedback_steps)  # fmt: skip
    queried = scheme.select(context)
    log_query_alignment(run, context, queried)
    for name, value in context.metrics.items():
        run.logger.log(f"train/{name}", value, run.step)
    run.teacher.ask(run.schedule.open(queried, size, run.step))


def log_query_alignment(run: Run, context: QueryContext, queried: SegmentPairs) -> None:
    """Query-policy alignment (the QPA paper's Figure 11): the per-step log π(a|s) under the current policy of the
    segments just queried, and of as many `segment`-step windows drawn uniformly from the replay history, each as a
    mean and as a median. A few steps the policy finds very unlikely pull a mean far down, so the two can rank
    methods differently; the median is what the typical queried step looks like."""
    if len(queried.pairs) == 0:
        return
    queried_steps = context.log_likelihood(queried)
    run.logger.log("train/query_log_likelihood", float(queried_steps.mean()), run.step)
    run.logger.log("train/query_log_likelihood_median", float(queried_steps.median()), run.step)
    if len(run.replay_buffer) >= run.cfg.segment:
        windows = run.replay_buffer.sample_windows(2 * len(queried.pairs), run.cfg.segment, run.rngs.diagnostic)
        history_steps = run.agent.log_likelihood(*windows)
        run.logger.log("train/history_log_likelihood", float(history_steps.mean()), run.step)
        run.logger.log("train/history_log_likelihood_median", float(history_steps.median()), run.step)


FeedbackStep = Callable[["Run", "QueryRound"], None]


# The hooks a feedback step or an extension may define; the loop calls each that its parts have, in their order.
HOOKS = {
    "after_update": "(run, update: agent.sac.SacUpdate) after every SAC update of the feedback phase: a trigger "
    "computes what it watches from the update's metrics, its last batch and the run; it may set run.updates_per_step",
    "after_pretraining_update": "(run) after every SAC update of PEBBLE's unsupervised pre-training",
    "replace_update": "(run, hybrid) -> agent.sac.SacUpdate | None: at a step of the feedback phase, the method's own "
    "SAC update in place of the loop's, or None for the loop's (the first part that returns one wins)",
    "behaviour_action": "(run, obs) -> action: every training action after the seed phase (the first part that "
    "defines it wins)",
    "transform_batch": "(batch, step) -> batch: every SAC batch sampled on the learned reward; a method with one "
    "runs its SAC updates eagerly (a CUDA graph would freeze the transform)",
    "reward_loss_term": "an attribute: a reward_trainer.LossTerm added to every reward-training minibatch loss",
    "needs_reward_std": "a class attribute, True: the replay buffer keeps the ensemble's std of r̂ beside r̂",
}


def build_steps(names: list[str], run: Run) -> dict[str, FeedbackStep]:
    """The method's steps by name, in order: functions as they are, classes built with the run."""
    steps = {name: FEEDBACK_STEPS[name] for name in names}
    return {name: step(run) if isinstance(step, type) else step for name, step in steps.items()}


def build_extensions(run: Run) -> dict[str, Any]:
    """The extensions the run's config turns on, built with the run, by name."""
    return {name: extension.build(run) for name, extension in active_extensions(run.cfg).items()}


def hooks(parts: dict[str, Any], name: str) -> list[Any]:
    """The parts' hooks called `name` (HOOKS), in the parts' order."""
    return [getattr(part, name) for part in parts.values() if hasattr(part, name)]


@register_step("train_reward")
def train_reward(run: Run, query_round: QueryRound) -> None:
    """Train r̂ on every label so far: the original release's DMC rule (a running-accuracy stop within
    ceil(reward_update x labels / reward_train_batch) steps, with cropping), or Meta-World's (whole epochs until
    one's accuracy passes 0.97, at most reward_update; on whole segments, or on crops with `metaworld_crop`)."""
    cfg, trainer = run.cfg, run.reward_trainer
    if run.schedule.labeled_feedback == 0:  # the teacher skipped every query so far
        return
    if run.is_metaworld:
        for _ in range(cfg.reward_update):
            accuracy, loss = trainer.fit(trainer.epoch(), augment=cfg.metaworld_crop)
            if np.mean(accuracy) > METAWORLD_STOP_ACCURACY:
                break
    else:
        num_steps = math.ceil(cfg.reward_update * run.schedule.labeled_feedback / cfg.reward_train_batch)
        accuracy, loss = trainer.fit(trainer.minibatches(num_steps), augment=True, stop_accuracy=DMC_STOP_ACCURACY)
    if not math.isfinite(loss):
        raise NonFiniteError(f"reward-model loss became {loss} at step {run.step}")
    run.logger.log("train/reward_train_acc", float(np.mean(accuracy)), run.step)
    run.logger.log("train/reward_loss", loss, run.step)
    for name, value in trainer.metrics().items():
        run.logger.log(f"train/{name}", value, run.step)


@register_step("relabel")
def relabel(run: Run, query_round: QueryRound) -> None:
    """Every stored transition gets the new r̂ (and, for RUNE, its ensemble std)."""
    run.replay_buffer.relabel_with_predictor(run.reward_model)


@register_step("reset_critic_after_first_round")
def reset_critic_after_first_round(run: Run, query_round: QueryRound) -> None:
    """PEBBLE's and QPA's restart after the first round: a fresh critic (the actor and temperature are kept), then
    `reset_update` SAC updates on uniform batches of the relabelled buffer. Their frequencies count these updates,
    so the actor and the target critic keep pace with the many critic steps."""
    if not query_round.first:
        return
    run.agent.reset_critic()
    for index in range(run.cfg.reset_update):
        run.update_metrics = run.agent.update(lambda: run.sample(hybrid=False), index)
