#!/usr/bin/env python3
"""Train QPA (or a preference-based baseline) with one Hydra config: the loop of ALGORITHM.md §2.

    python train_QPA.py env=walker_walk seed=1 max_feedback=100 reward_batch=10 num_interact=20000
    python train_QPA.py +preset=quick env=walker_walk        # a complete scaled-down run on a CPU

Per env step: evaluate/reset at episode ends, act (random during the seed phase), ask the teacher when a round is
due and run the method's feedback steps once its labels are in, update SAC (state entropy during unsupervised
pre-training, then r̂ with hybrid replay while feedback remains), step the env and store the transition.
"""

from __future__ import annotations

import dataclasses
import math
import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig
from tqdm import tqdm

import methods  # noqa: F401 (the built-in methods register their keys, query schemes, steps and extensions)
import run_naming  # noqa: F401 (the run directory's and run_label's resolvers)
import utils
from agent.sac import SACAgent, SacUpdate
from command_line import check_overrides, import_modules, requested_imports
from config_rules import ConfigError
from config_schema import RewardConfig, TeacherConfig, TrainConfig, store_schema
from episodes import EpisodeStore
from evaluation import evaluate_policy
from feedback import ask_queries, build_extensions, build_steps, hooks
from human_teacher import HumanTeacher, ReplayTeacher, SimStateRecorder
from logger import Logger
from per_step import per_step_work
from preferences import PreferenceDataset
from registry import active_extensions
from replay_buffer import Batch, ReplayBuffer
from reward_model import RewardModel
from reward_trainer import LossTerm, RewardSeeds, RewardTrainer
from run_dir import CHECKPOINT_NAME, load_checkpoint, save_checkpoint, write_status
from run_process import run_training
from schedule import FeedbackSchedule, Phase
from teacher import ScriptedTeacher, Teacher, wait_for_answers
from utils import NonFiniteError
from video import VideoRecorder

store_schema()  # the built-in methods' keys; __main__ adds those of the `imports` modules

EVAL_SEED_OFFSET = 1_000_003  # evaluation episodes never share a seed with training episodes
# wandb receives the original release's metric names, so existing dashboards keep working.
REFERENCE_WANDB_NAMES = {
    "eval/episode_reward": "episode_reward",
    "eval/episode_reward_hat": "episode_reward_hat",
    "eval/success_rate": "success_rate",
    "train/reward_train_acc": "train_acc",
    "train/reward_loss": "reward_loss",
}


def make_agent(
    cfg: TrainConfig, obs_dim: int, action_dim: int, action_range: tuple[float, float], device: torch.device
) -> SACAgent:
    """SAC from `agent.params` and the two networks' sections, with the sizes and action range of the environment."""
    return SACAgent(
        obs_dim=obs_dim,
        action_dim=action_dim,
        action_range=action_range,
        device=device,
        critic_cfg=dataclasses.asdict(cfg.double_q_critic.params),
        actor_cfg=dataclasses.asdict(cfg.diag_gaussian_actor.params),
        **dataclasses.asdict(cfg.agent.params),
    )


def make_reward_model(cfg: RewardConfig, input_dim: int, device: torch.device, seed: int) -> RewardModel:
    return RewardModel(input_dim, cfg.reward_hidden_dim, cfg.reward_hidden_depth, cfg.ensemble_size, cfg.activation,
                       device, seed)  # fmt: skip


def make_reward_trainer(
    cfg: RewardConfig,
    model: RewardModel,
    preferences: PreferenceDataset,
    seeds: RewardSeeds,
    loss_terms: list[LossTerm],
) -> RewardTrainer:
    """The trainer of r̂, with the loss terms of the run's extensions."""
    return RewardTrainer(
        model, preferences, utils.adam(model.net.parameters(), lr=cfg.reward_lr),
        batch_size=cfg.reward_train_batch, data_aug_ratio=cfg.data_aug_ratio, label_margin=cfg.label_margin,
        generator=torch.Generator(device=model.device).manual_seed(seeds.training), loss_terms=loss_terms,
    )  # fmt: skip


def make_teacher(cfg: TrainConfig, work_dir: Path, recorder: SimStateRecorder | None, seed: int) -> Teacher:
    """B-Pref's scripted teacher, a person in the browser (shown the segments `recorder` keeps), or the replay of a
    person's answers."""
    if cfg.teacher_type == "human":
        return HumanTeacher(TeacherConfig.of(cfg), work_dir, cfg.env, cfg.seed, recorder, cfg.segment)
    if cfg.teacher_type == "replay":
        return ReplayTeacher(TeacherConfig.of(cfg))
    return ScriptedTeacher(cfg.teacher_beta, cfg.teacher_gamma, cfg.teacher_eps_mistake, cfg.teacher_eps_skip,
                           cfg.teacher_eps_equal, seed)  # fmt: skip


def make_logger(cfg: TrainConfig, work_dir: Path, resume_step: int | None) -> Logger:
    """Console and CSV, and TensorBoard and wandb when asked, continuing at `resume_step` after a resume."""
    wandb_init = dict(
        project=cfg.wandb_project,
        entity=cfg.wandb_entity,
        name=f"{cfg.env}_{cfg.experiment}_{cfg.max_feedback}_{cfg.num_interact}_{cfg.seed}",
        config=dataclasses.asdict(cfg),
    )
    return Logger(work_dir, save_tb=cfg.log_save_tb, use_wandb=cfg.wandb, resume_step=resume_step,
                  wandb_names=REFERENCE_WANDB_NAMES, wandb_init=wandb_init)  # fmt: skip


@dataclass
class EpisodeStats:
    """A training episode's figures as it runs: length, true and predicted return, success where the task reports it
    (Meta-World, some Gymnasium tasks)."""

    return_hat: torch.Tensor  # summed on the device, so a step never waits for it
    length: int = 0
    reward: float = 0.0
    success: float | None = None
    start: float = field(default_factory=time.perf_counter)

    def add(self, reward: float, info: dict[str, Any]) -> None:
        self.reward += reward
        self.length += 1
        if "success" in info:  # succeeded at some step
            self.success = max(self.success or 0.0, float(info["success"]))


def check_finite(metrics: dict[str, Any], step: int) -> None:
    for name, value in metrics.items():
        if not math.isfinite(float(value)):
            raise NonFiniteError(f"{name} became {float(value)} at step {step}")


class Workspace:
    # What a checkpoint holds besides `checkpointed_parts`
    COUNTERS = ("step", "episode", "last_eval_step", "last_eval_return", "recent_returns", "updates_per_step")

    def __init__(self, cfg: TrainConfig, work_dir: Path) -> None:
        self.cfg = cfg
        self.work_dir = work_dir
        self.device = utils.choose_device(cfg.device, strict=cfg.strict_device)
        utils.set_tf32(cfg.tf32, self.device)
        if cfg.num_threads is not None:
            torch.set_num_threads(cfg.num_threads)
        utils.set_seed_everywhere(cfg.seed)
        # One independent stream per consumer: the same raw stream in two places would correlate their draws.
        action_seed, replay_seed, reward_seed, diagnostic_seed = np.random.SeedSequence(cfg.seed).spawn(4)
        self.reward_seeds = seeds = RewardSeeds.of(int(reward_seed.generate_state(1)[0]))

        self.env = utils.make_env(cfg.env, cfg.seed)
        self.eval_env = utils.make_env(cfg.env, cfg.seed + EVAL_SEED_OFFSET)
        self.is_metaworld = utils.is_metaworld(cfg.env)
        self.max_episode_steps = self.env.max_episode_steps
        (obs_dim,), (action_dim,) = self.env.observation_space.shape, self.env.action_space.shape
        action_range = float(self.env.action_space.low.min()), float(self.env.action_space.high.max())
        self.agent = make_agent(cfg, obs_dim, action_dim, action_range, self.device)
        needs_reward_std = any(getattr(ext.build, "needs_reward_std", False) for ext in active_extensions(cfg).values())
        self.replay_buffer = ReplayBuffer((obs_dim,), (action_dim,), cfg.replay_buffer_capacity, self.device,
                                          max_episode_len=self.max_episode_steps, seed=replay_seed,
                                          store_reward_std=needs_reward_std)  # fmt: skip
        self.episodes = EpisodeStore(obs_dim, action_dim, cfg.history_size, min_length=cfg.segment)
        self.preferences = PreferenceDataset(cfg.segment, obs_dim + action_dim, cfg.max_feedback, self.device)
        self.reward_model = make_reward_model(cfg, obs_dim + action_dim, self.device, seeds.net)
        self.extensions = build_extensions(self)  # the method's parts its switches turn on (feedback.HOOKS)
        self.reward_trainer = make_reward_trainer(cfg, self.reward_model, self.preferences, seeds,
                                                  hooks(self.extensions, "reward_loss_term"))  # fmt: skip
        self.batch_transforms = hooks(self.extensions, "transform_batch")
        self.steps = per_step_work(cfg.cuda_graphs, self.agent, self.replay_buffer, self.reward_model, self.sample,
                                   self.draw, transforms_batches=bool(self.batch_transforms))  # fmt: skip
        # The simulator state of every step, to show a person the segments of a query (teacher=human only)
        self.recorder = SimStateRecorder(self.env, self.episodes) if cfg.teacher_type == "human" else None
        self.teacher = make_teacher(cfg, work_dir, self.recorder, seeds.teacher)
        if isinstance(self.teacher, HumanTeacher):  # the page shows the run's step, also between rounds
            self.teacher.step_source = lambda: self.step
        self.schedule = FeedbackSchedule.of(cfg)
        self.updates_per_step = cfg.gradient_update
        self.feedback_steps = build_steps(cfg.feedback_steps, self)
        parts = {**self.extensions, **self.feedback_steps}
        self.update_hooks = hooks(parts, "after_update")
        self.pretraining_hooks = hooks(parts, "after_pretraining_update")
        self.update_replacements = hooks(parts, "replace_update")
        self.behaviour = next(iter(hooks(parts, "behaviour_action")), None)  # a method's own, else the policy's
        # seed-phase actions, query selection, and the history windows of log_query_alignment
        self.rngs = utils.RandomStreams(actions=np.random.default_rng(action_seed),
                                        queries=np.random.default_rng(seeds.queries),
                                        diagnostic=np.random.default_rng(diagnostic_seed))  # fmt: skip

        self.step = self.episode = 0
        self.last_eval_step, self.last_eval_return = -1, float("nan")
        self.recent_returns: deque[float] = deque(maxlen=10)  # the teacher's thresholds (ALGORITHM.md §4)
        self.update_metrics: dict[str, torch.Tensor] = {}
        self.on_episode_end: Callable[[Workspace], None] | None = None
        self.checkpointed_step = self.restore_checkpoint()  # None until a checkpoint exists
        self.logger = make_logger(cfg, work_dir, self.checkpointed_step)
        self.video_recorder = VideoRecorder.from_config(cfg, work_dir, self.logger)

    # ------------------------------------------------------------------ the loop of ALGORITHM.md §2
    def run(self, on_episode_end: Callable[[Workspace], None] | None = None) -> None:
        """Train to `num_train_steps`; `on_episode_end(self)` after each episode's bookkeeping (the process's signal
        handling: a checkpoint a signal asked for)."""
        cfg = self.cfg
        self.on_episode_end = on_episode_end
        self.start_time = time.perf_counter()
        self.progress = tqdm(
            total=int(cfg.num_train_steps), initial=self.step, unit="step", dynamic_ncols=True, disable=None
        )
        if self.last_eval_step < 0:
            self.evaluate()  # the untrained policy: every curve starts from the same point
            self.save_checkpoint()
        while self.step < cfg.num_train_steps:
            # Seeding every episode makes a resumed run continue exactly like an uninterrupted one.
            obs, _ = self.env.reset(seed=cfg.seed * 100_003 + self.episode)
            stats, done = EpisodeStats(return_hat=torch.zeros((), device=self.device)), False
            while not done and self.step < cfg.num_train_steps:
                action = self.act(obs)
                phase = self.schedule.phase(self.step)
                if self.schedule.feedback_due(self.step):
                    self.feedback()
                self.update_agent(phase)

                # A person's run keeps the simulator states of each step, for the videos of its queries
                next_obs, reward, terminated, truncated, info = (self.recorder or self.env).step(action)
                done = terminated or truncated
                # dm_control and Meta-World episodes end only at the time limit: bootstrap through it
                done_no_max = float(terminated)
                if self.schedule.learns_reward:
                    with_std = self.replay_buffer.reward_std is not None  # a method reads the ensemble's std of r̂
                    stored_reward, reward_std = self.steps.predict_step(obs, action, with_std)
                    stats.return_hat += stored_reward.squeeze()
                    self.episodes.add(obs, action, reward, done)
                    if done and self.recorder is not None:
                        self.recorder.end_episode()
                else:
                    stored_reward, reward_std = reward, None
                self.replay_buffer.add(obs, action, stored_reward, next_obs, float(done), done_no_max, reward_std)

                stats.add(reward, info)
                obs = next_obs
                self.step += 1
                self.schedule.count_step()
            self.finish_episode(stats)
        if self.last_eval_step != self.step:
            self.evaluate()
            self.save_checkpoint()
        self.progress.close()
        if cfg.save_model:
            self.agent.save(self.work_dir, self.step)
            self.reward_model.save(self.work_dir, self.step)
        self.teacher.close()
        self.logger.close()

    def act(self, obs: np.ndarray) -> np.ndarray:
        """Uniform random actions for the first num_seed_steps, then a sample from the policy."""
        if self.step < self.cfg.num_seed_steps:
            return self.rngs.actions.uniform(-1.0, 1.0, self.env.action_space.shape).astype(np.float32)
        with utils.eval_mode(self.agent.actor):
            action = self.behaviour(self, obs) if self.behaviour else self.steps.act(obs, sample=True)
        if not np.isfinite(action).all():  # a diverged update; caught here before it reaches the physics
            raise NonFiniteError(f"the policy produced a non-finite action at step {self.step}")
        return action

    # ------------------------------------------------------------------ learning
    def update_agent(self, phase: Phase) -> None:
        """This step's SAC update: on the state entropy during unsupervised pre-training, on r̂ after the first round
        (hybrid replay while feedback remains: QPA), on the environment's reward for method=sac_true."""
        cfg, agent = self.cfg, self.agent
        if phase is Phase.UNSUPERVISED:
            self.update_metrics = agent.update_state_ent(self.replay_buffer, self.step, K=cfg.topK)
            for hook in self.pretraining_hooks:
                hook(self)
        elif phase in (Phase.FEEDBACK, Phase.TRUE_REWARD):  # sac_true: uniform batches, gradient_update of them
            hybrid = phase is Phase.FEEDBACK and cfg.hybrid_replay and self.schedule.budget_left
            update = self.replaced_update(hybrid) if phase is Phase.FEEDBACK else None
            if update is None:
                update = self.steps.sac_update(hybrid, self.step, self.updates_per_step)
            self.update_metrics = update.metrics
            if phase is Phase.FEEDBACK:
                for hook in self.update_hooks:
                    hook(self, update)

    def replaced_update(self, hybrid: bool) -> SacUpdate | None:
        """The SAC update a method does itself at this step in place of the loop's (its `replace_update`), if any."""
        for replace in self.update_replacements:
            update = replace(self, hybrid)
            if update is not None:
                return update
        return None

    def sample(self, hybrid: bool) -> Batch:
        """A SAC batch on the learned reward: QPA's hybrid replay (`her_ratio` of it from the N newest episodes) or
        uniform, with the method's batch transforms applied."""
        cfg, batch_size = self.cfg, self.agent.batch_size
        if hybrid:
            batch = self.replay_buffer.sample_hybrid(batch_size, cfg.max_reward_buffer_size, cfg.her_ratio)
        else:
            batch = self.replay_buffer.sample(batch_size)
        for transform in self.batch_transforms:
            batch = transform(batch, self.step)
        return batch

    def draw(self, hybrid: bool) -> np.ndarray:
        """The replay slots `sample(hybrid)` gathers, drawn alike, for the graphed update (a run with batch
        transforms updates eagerly)."""
        cfg, batch_size = self.cfg, self.agent.batch_size
        if hybrid:
            return self.replay_buffer.hybrid_indices(batch_size, cfg.max_reward_buffer_size, cfg.her_ratio)
        return self.replay_buffer.uniform_indices(batch_size)

    def feedback(self) -> None:
        """A query round when one is due; once its labels are in, store them and run the method's feedback steps
        (by default: train r̂, relabel the buffer, restart the critic after the first round)."""
        if self.schedule.open_round is None:
            ask_queries(self)
        answers = self.teacher.answers(self.step)
        if answers is None and self.cfg.human_mode == "sync":
            answers = wait_for_answers(self.teacher, self.step, self.progress, self.report_wait)
        if answers is None:  # a person is still answering (human_mode=async)
            if self.schedule.open_round.opened_step == self.step:
                tqdm.write(f"step {self.step}: waiting for labels ({self.teacher.progress()}); training goes on "
                           "(human_mode=async)", file=sys.stderr)  # fmt: skip
            return
        keep, labels = answers
        query_round = self.schedule.close(len(keep))
        self.preferences.add(query_round.pairs[keep], labels)
        for name, value in self.teacher.metrics(query_round, self.step).items():
            self.logger.log(f"train/{name}", value, self.step)
        for feedback_step in self.feedback_steps.values():
            feedback_step(self, query_round)

    # ------------------------------------------------------------------ episode ends, evaluation, logging
    def finish_episode(self, stats: EpisodeStats) -> None:
        self.episode += 1
        self.recent_returns.append(stats.reward)
        self.log_episode(stats)
        check_finite(self.update_metrics, self.step)
        self.logger.dump(self.step)
        self.progress.update(stats.length)
        schedule = self.schedule
        self.progress.set_postfix(
            feedback=f"{schedule.total_feedback}/{self.cfg.max_feedback}",
            **({"labels": self.teacher.progress()} if schedule.open_round is not None else {}),
            eval_return=f"{self.last_eval_return:.1f}",
            refresh=False,
        )
        if self.step - self.last_eval_step >= self.cfg.eval_frequency:
            self.evaluate()
            self.save_checkpoint()
        if self.on_episode_end is not None:
            self.on_episode_end(self)

    def log_episode(self, stats: EpisodeStats) -> None:
        """train.csv's row of the training episode that just ended (docs/RUNS.md lists its columns)."""
        log, schedule, step = self.logger.log, self.schedule, self.step
        log("train/episode", self.episode, step)
        log("train/episode_reward", stats.reward, step)
        if schedule.learns_reward:
            log("train/episode_reward_hat", stats.return_hat, step)
            log("train/total_feedback", schedule.total_feedback, step)
            log("train/labeled_feedback", schedule.labeled_feedback, step)
        if stats.success is not None:
            log("train/success_rate", 100.0 * stats.success, step)
        for name, value in self.update_metrics.items():
            log(f"train/{name}", value, step)
        duration = time.perf_counter() - stats.start
        log("train/fps", stats.length / max(duration, 1e-9), step)
        log("train/duration", duration, step)
        log("train/total_time", time.perf_counter() - self.start_time, step)

    def evaluate(self) -> None:
        cfg, log = self.cfg, self.logger.log
        reward_model = self.reward_model if self.schedule.learns_reward else None
        first_seed = cfg.seed * 100_003 + EVAL_SEED_OFFSET + self.step
        film = self.video_recorder.wants(self.step, self.last_eval_step, final=self.step >= cfg.num_train_steps)
        result = evaluate_policy(self.agent, self.eval_env, cfg.num_eval_episodes, first_seed, reward_model,
                                 self.video_recorder if film else None, self.step, act=self.steps.act)  # fmt: skip
        log("eval/episode", self.episode, self.step)
        for name, value in dataclasses.asdict(result).items():
            if value is not None:
                check_finite({f"eval/{name}": value}, self.step)
                log(f"eval/{name}", value, self.step)
        log("eval/total_feedback", self.schedule.total_feedback, self.step)
        log("eval/labeled_feedback", self.schedule.labeled_feedback, self.step)
        self.logger.dump(self.step)
        self.last_eval_return, self.last_eval_step = result.episode_reward, self.step

    # ------------------------------------------------------------------ checkpoint and resume
    def checkpointed_parts(self) -> dict[str, Any]:
        """Every stateful part of the run, by the name its state is saved under (each has state_dict and
        load_state_dict); with COUNTERS, all a resumed run needs to continue exactly."""
        parts = {
            "schedule": self.schedule, "agent": self.agent, "replay_buffer": self.replay_buffer,
            "episodes": self.episodes, "preferences": self.preferences, "reward_model": self.reward_model,
            "reward_trainer": self.reward_trainer, "teacher": self.teacher, "rngs": self.rngs,
        }  # fmt: skip
        if self.recorder is not None:
            parts["recorder"] = self.recorder
        for name, step in self.feedback_steps.items():
            if hasattr(step, "state_dict"):
                parts[f"feedback_step.{name}"] = step
        for name, extension in self.extensions.items():
            if hasattr(extension, "state_dict"):
                parts[f"extension.{name}"] = extension
        return parts

    def save_checkpoint(self) -> None:
        if not self.cfg.save_checkpoint:
            return
        counters = {name: getattr(self, name) for name in self.COUNTERS}
        save_checkpoint(self.work_dir / CHECKPOINT_NAME, counters, self.checkpointed_parts())
        self.checkpointed_step = self.step
        write_status(self.work_dir, "running", self.step)

    def report_wait(self, progress: str | None) -> None:
        """status.json says that the run waits for a person's labels, at which step and how far they are
        (`progress`); None: it waits no more."""
        waiting = None if progress is None else {"current_step": self.step, "waiting_for_labels": progress}
        write_status(self.work_dir, "running", self.checkpointed_step or 0, waiting=waiting)

    def abort(self) -> None:
        """However the run ends, stop a person's page and its render thread now: that thread's OpenGL context must
        be freed in that thread, before the interpreter exits (dm_control's exit hook fails with an EGLError
        otherwise)."""
        if isinstance(self.teacher, HumanTeacher):
            self.teacher.abort()

    def restore_checkpoint(self) -> int | None:
        """Load the run directory's checkpoint when there is one; return its step (None for a fresh run)."""
        path = self.work_dir / CHECKPOINT_NAME
        if not path.exists():
            return None
        for name, value in load_checkpoint(path, self.device, self.checkpointed_parts()).items():
            setattr(self, name, value)
        if self.schedule.open_round is not None:  # a person was still answering it (human_mode=async)
            self.teacher.ask(self.schedule.open_round)
        print(f"resumed from {path} at step {self.step}", file=sys.stderr)
        return self.step


@hydra.main(version_base="1.3", config_path="config", config_name="train_QPA")
def main(cfg: DictConfig) -> None:
    run_training(cfg, Path(HydraConfig.get().runtime.output_dir), Workspace)


if __name__ == "__main__":
    # The `imports` modules first: their query schemes, feedback steps and method presets must be registered before
    # Hydra composes the config. A plain run (no Hydra flags, no sweep) is then composed once up front, so that
    # Hydra's own errors (an unknown key or group option) come out as the same one-line message as every other.
    try:
        import_modules(requested_imports(sys.argv[1:]))  # and the schema with their keys
        if not any(arg.startswith("-") for arg in sys.argv[1:]):
            check_overrides(sys.argv[1:])
    except ConfigError as error:
        sys.exit(f"error: {error}")
    main()
