#!/usr/bin/env python3
"""Train QPA (or a preference-based baseline) with one Hydra config: the loop of ALGORITHM.md §2.

    python train_QPA.py env=walker_walk seed=1 max_feedback=100 reward_batch=10 num_interact=20000
    python train_QPA.py +preset=quick env=walker_walk        # a complete scaled-down run on a CPU

Per env step: evaluate/reset at episode ends, act (random during the seed phase), ask the teacher when a round is
due and run the method's feedback steps once its labels are in, update SAC (state entropy while PEBBLE pre-trains,
then r̂ with hybrid replay while feedback remains), step the env and store the transition.
"""

from __future__ import annotations

import _thread
import dataclasses
import math
import os
import signal
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, NoReturn

import hydra
import numpy as np
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig
from tqdm import tqdm

import utils
from agent.sac import SACAgent
from config_schema import (
    ConfigError,
    RewardConfig,
    TeacherConfig,
    TrainConfig,
    check_boolean_overrides,
    check_config,
    check_overrides,
    import_modules,
    requested_imports,
)  # fmt: skip
from cuda_graphs import GraphedSteps
from episodes import EpisodeStore
from evaluation import evaluate_policy
from feedback import ask_queries, build_steps, hooks
from human_teacher import HumanTeacher, ReplayTeacher, SimStateRecorder
from logger import Logger
from methods.rune import RuneBonus
from methods.surf import PseudoLabelLoss
from preferences import PreferenceDataset
from replay_buffer import Batch, ReplayBuffer
from reward_model import RewardModel
from reward_trainer import RewardTrainer
from run_dir import (
    CHECKPOINT_NAME,
    RunRefusedError,
    load_checkpoint,
    prepare_run_dir,
    save_checkpoint,
    write_final_status,
    write_status,
)  # fmt: skip
from run_lock import RunLock, RunLockedError
from run_summary import summarise_run
from schedule import FeedbackSchedule, Phase
from teacher import ScriptedTeacher, Teacher, TeacherError, wait_for_answers
from utils import NonFiniteError, WriteError
from video import VideoRecorder

EVAL_SEED_OFFSET = 1_000_003  # evaluation episodes never share a seed with training episodes
# wandb receives the original release's metric names, so existing dashboards keep working.
REFERENCE_WANDB_NAMES = {
    "eval/episode_reward": "episode_reward",
    "eval/episode_reward_hat": "episode_reward_hat",
    "eval/success_rate": "success_rate",
    "train/reward_train_acc": "train_acc",
    "train/reward_loss": "reward_loss",
}


class RunFailedError(RuntimeError):
    """Ends one job of a --multirun sweep; its message is in the run directory's status.json."""


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


class RewardSeeds(NamedTuple):
    """The seeds of everything preference learning draws at random, each its own stream."""

    net: int  # the ensemble's initial weights
    queries: int  # query selection
    training: int  # minibatch order and crops
    teacher: int  # the scripted teacher's noise
    unlabelled: int  # SURF's unlabelled pairs

    @classmethod
    def of(cls, net: int) -> RewardSeeds:
        """The streams that follow from the seed of the ensemble's weights."""
        queries, training, teacher, unlabelled = (int(s) for s in np.random.SeedSequence(net).generate_state(4))
        return cls(net, queries, training, teacher, unlabelled)


def make_reward_model(cfg: RewardConfig, input_dim: int, device: torch.device, seed: int) -> RewardModel:
    return RewardModel(input_dim, cfg.reward_hidden_dim, cfg.reward_hidden_depth, cfg.ensemble_size, cfg.activation,
                       device, seed)  # fmt: skip


def make_reward_trainer(
    cfg: RewardConfig, model: RewardModel, preferences: PreferenceDataset, episodes: EpisodeStore, seeds: RewardSeeds
) -> RewardTrainer:
    """The trainer of r̂, with SURF's pseudo-label term when `semi_supervised`."""
    terms = []
    if cfg.semi_supervised:
        terms.append(PseudoLabelLoss(
            episodes, segment=cfg.segment, dataaug_window=cfg.dataaug_window, crop_range=cfg.crop_range,
            num_pairs=cfg.mu * cfg.reward_train_batch, threshold=cfg.threshold_u, weight=cfg.lambda_u,
            generator=torch.Generator(device=model.device).manual_seed(seeds.unlabelled),
        ))  # fmt: skip
    return RewardTrainer(
        model, preferences, utils.adam(model.net.parameters(), lr=cfg.reward_lr),
        batch_size=cfg.reward_train_batch, data_aug_ratio=cfg.data_aug_ratio, label_margin=cfg.label_margin,
        generator=torch.Generator(device=model.device).manual_seed(seeds.training), loss_terms=terms,
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
    """A training episode's figures as it runs: length, true and predicted return, Meta-World's success."""

    return_hat: torch.Tensor  # summed on the device, so a step never waits for it
    length: int = 0
    reward: float = 0.0
    success: float = 0.0
    start: float = field(default_factory=time.perf_counter)

    def add(self, reward: float, info: dict[str, Any]) -> None:
        self.reward += reward
        self.length += 1
        if "success" in info:  # Meta-World: succeeded at some step
            self.success = max(self.success, float(info["success"]))


def check_finite(metrics: dict[str, Any], step: int) -> None:
    for name, value in metrics.items():
        if not math.isfinite(float(value)):
            raise NonFiniteError(f"{name} became {float(value)} at step {step}")


def log_episode(run: Workspace, stats: EpisodeStats) -> None:
    """train.csv's row of the training episode that just ended (docs/RUNS.md lists its columns)."""
    log, schedule, step = run.logger.log, run.schedule, run.step
    log("train/episode", run.episode, step)
    log("train/episode_reward", stats.reward, step)
    if schedule.learns_reward:
        log("train/episode_reward_hat", stats.return_hat, step)
        log("train/total_feedback", schedule.total_feedback, step)
        log("train/labeled_feedback", schedule.labeled_feedback, step)
    if run.is_metaworld:
        log("train/success_rate", 100.0 * stats.success, step)
    for name, value in run.update_metrics.items():
        log(f"train/{name}", value, step)
    duration = time.perf_counter() - stats.start
    log("train/fps", stats.length / max(duration, 1e-9), step)
    log("train/duration", duration, step)
    log("train/total_time", time.perf_counter() - run.start_time, step)


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
        seeds = RewardSeeds.of(int(reward_seed.generate_state(1)[0]))

        self.env = utils.make_env(cfg.env, cfg.seed)
        self.eval_env = utils.make_env(cfg.env, cfg.seed + EVAL_SEED_OFFSET)
        self.is_metaworld = utils.is_metaworld(cfg.env)
        self.max_episode_steps = self.env.max_episode_steps
        (obs_dim,), (action_dim,) = self.env.observation_space.shape, self.env.action_space.shape
        action_range = float(self.env.action_space.low.min()), float(self.env.action_space.high.max())
        self.agent = make_agent(cfg, obs_dim, action_dim, action_range, self.device)
        self.replay_buffer = ReplayBuffer((obs_dim,), (action_dim,), cfg.replay_buffer_capacity, self.device,
                                          max_episode_len=self.max_episode_steps, seed=replay_seed,
                                          store_reward_std=cfg.rune_beta_init > 0)  # fmt: skip
        self.episodes = EpisodeStore(obs_dim, action_dim, cfg.history_size)
        self.preferences = PreferenceDataset(cfg.segment, obs_dim + action_dim, cfg.max_feedback, self.device)
        self.reward_model = make_reward_model(cfg, obs_dim + action_dim, self.device, seeds.net)
        self.reward_trainer = make_reward_trainer(cfg, self.reward_model, self.preferences, self.episodes, seeds)
        # The per-step GPU work replayed from CUDA graphs (cuda_graphs.py); None: the eager code, always on a CPU
        self.graphs = GraphedSteps.of(cfg.cuda_graphs, self.agent, self.replay_buffer, self.reward_model)
        # The simulator state of every step, to show a person the segments of a query (teacher=human only)
        self.recorder = SimStateRecorder(self.env, self.episodes) if cfg.teacher_type == "human" else None
        self.teacher = make_teacher(cfg, work_dir, self.recorder, seeds.teacher)
        self.schedule = FeedbackSchedule.of(cfg)
        self.updates_per_step = cfg.gradient_update
        self.feedback_steps = build_steps(cfg.feedback_steps, self)
        self.update_hooks = hooks(self.feedback_steps, "after_update")
        self.behaviour = next(iter(hooks(self.feedback_steps, "behaviour_action")), None)  # e.g. PPE's, else the agent
        self.batch_transforms = [RuneBonus(cfg.rune_beta_init, cfg.rune_beta_decay)] if cfg.rune_beta_init > 0 else []
        # seed-phase actions, query selection, and the history windows of log_query_alignment
        self.rngs = utils.RandomStreams(actions=np.random.default_rng(action_seed),
                                        queries=np.random.default_rng(seeds.queries),
                                        diagnostic=np.random.default_rng(diagnostic_seed))  # fmt: skip

        self.step = self.episode = 0
        self.last_eval_step, self.last_eval_return = -1, float("nan")
        self.recent_returns: deque[float] = deque(maxlen=10)  # the teacher's thresholds (ALGORITHM.md §4)
        self.update_metrics: dict[str, torch.Tensor] = {}
        self.checkpointed_step = self.restore_checkpoint()  # None until a checkpoint exists
        self.logger = make_logger(cfg, work_dir, self.checkpointed_step)
        self.video_recorder = VideoRecorder.from_config(cfg, work_dir, self.logger)

    # ------------------------------------------------------------------ the loop of ALGORITHM.md §2
    def run(self) -> None:
        cfg = self.cfg
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
                    # RUNE's bonus needs the ensemble's std beside r̂
                    with_std = self.replay_buffer.reward_std is not None
                    stored_reward, reward_std = (self.graphs or self.reward_model).predict_step(obs, action, with_std)
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
            action = self.behaviour(self, obs) if self.behaviour else (self.graphs or self.agent).act(obs, sample=True)
        if not np.isfinite(action).all():  # a diverged update; caught here before it reaches the physics
            raise NonFiniteError(f"the policy produced a non-finite action at step {self.step}")
        return action

    # ------------------------------------------------------------------ learning
    def update_agent(self, phase: Phase) -> None:
        """This step's SAC update: on PEBBLE's state entropy while it pre-trains, on r̂ after the first round (hybrid
        replay while feedback remains: QPA), on the environment's reward for method=sac_true."""
        cfg, agent = self.cfg, self.agent
        if phase is Phase.UNSUPERVISED:
            self.update_metrics = agent.update_state_ent(self.replay_buffer, self.step, K=cfg.topK)
        elif phase in (Phase.FEEDBACK, Phase.TRUE_REWARD):  # sac_true: uniform batches, gradient_update of them
            hybrid = phase is Phase.FEEDBACK and cfg.hybrid_replay and self.schedule.budget_left
            if self.graphs is not None and not self.batch_transforms:  # RUNE's bonus weight changes every step
                self.update_metrics = self.graphs.update(lambda: self.draw(hybrid), self.step, self.updates_per_step)
            else:
                self.update_metrics = agent.update(lambda: self.sample(hybrid), self.step, self.updates_per_step)
            if phase is Phase.FEEDBACK:
                for hook in self.update_hooks:
                    hook(self, self.update_metrics)

    def sample(self, hybrid: bool) -> Batch:
        """A SAC batch on the learned reward: QPA's hybrid replay (`her_ratio` of it from the N newest episodes) or
        uniform, with the method's batch transforms (RUNE's bonus) applied."""
        cfg, batch_size = self.cfg, self.agent.batch_size
        if hybrid:
            batch = self.replay_buffer.sample_hybrid(batch_size, cfg.max_reward_buffer_size, cfg.her_ratio)
        else:
            batch = self.replay_buffer.sample(batch_size)
        for transform in self.batch_transforms:
            batch = transform(batch, self.step)
        return batch

    def draw(self, hybrid: bool) -> np.ndarray:
        """The replay slots `sample(hybrid)` gathers, drawn alike, for the graphed update (no transforms there)."""
        cfg, batch_size = self.cfg, self.agent.batch_size
        if hybrid:
            return self.replay_buffer.hybrid_indices(batch_size, cfg.max_reward_buffer_size, cfg.her_ratio)
        return self.replay_buffer.uniform_indices(batch_size)

    def feedback(self) -> None:
        """A query round when one is due; once its labels are in, store them and run the method's feedback steps
        (QPA, PEBBLE: train r̂, relabel the buffer, restart the critic after the first round)."""
        if self.schedule.open_round is None:
            ask_queries(self)
        answers = self.teacher.answers(self.step)
        if answers is None and self.cfg.human_mode == "sync":
            answers = wait_for_answers(self.teacher, self.step, self.progress, lambda shown: report_wait(self, shown))
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
        log_episode(self, stats)
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
        if checkpoint_requests:
            checkpoint_on_signal(self)

    def evaluate(self) -> None:
        cfg, log = self.cfg, self.logger.log
        reward_model = self.reward_model if self.schedule.learns_reward else None
        first_seed = cfg.seed * 100_003 + EVAL_SEED_OFFSET + self.step
        film = self.video_recorder.wants(self.step, self.last_eval_step, final=self.step >= cfg.num_train_steps)
        result = evaluate_policy(self.agent, self.eval_env, cfg.num_eval_episodes, first_seed, reward_model,
                                 self.is_metaworld, self.video_recorder if film else None, self.step,
                                 act=(self.graphs or self.agent).act)  # fmt: skip
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
        return parts

    def save_checkpoint(self) -> None:
        if not self.cfg.save_checkpoint:
            return
        counters = {name: getattr(self, name) for name in self.COUNTERS}
        save_checkpoint(self.work_dir / CHECKPOINT_NAME, counters, self.checkpointed_parts())
        self.checkpointed_step = self.step
        write_status(self.work_dir, "running", self.step)

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


def select_agent_config(cfg: DictConfig) -> DictConfig:
    """Meta-World tasks use the Meta-World SAC config unless the command line picked an agent itself."""
    overrides = list(HydraConfig.get().overrides.task)
    if not utils.is_metaworld(str(cfg.env)) or any(item.startswith("agent=") for item in overrides):
        return cfg
    return hydra.compose(config_name="train_QPA", overrides=[*overrides, "agent=sac_metaworld"])


class Interrupted(BaseException):
    """SIGTERM (a scheduler's stop, `kill`) or SIGINT: the run ends, keeping its last checkpoint; SIGUSR2: the same,
    at the next episode end, after a checkpoint there."""


def interrupt(signum: int, frame: Any) -> NoReturn:
    raise Interrupted(signal.Signals(signum).name)


# Signals that ask for a checkpoint at the next episode end instead of an immediate stop (docs/CLUSTER.md). An
# episode end is where a resume is exact: training episodes are seeded by index, while a mid-episode simulator
# state is not saved. SIGUSR2 (SLURM's warning before the time limit) then stops the run, and in a submitit job
# its handler requeues the job. SIGTERM inside a SLURM job (preemption, `scontrol requeue`, `scancel`) lets the
# run go on until SLURM kills it: SLURM requeues a preempted job only if it is still running when its grace time
# ends, so stopping early would lose the requeue.
checkpoint_requests: set[signal.Signals] = set()


def request_checkpoint(signum: int, frame: Any) -> None:
    checkpoint_requests.add(signal.Signals(signum))


def checkpoint_on_signal(workspace: Workspace) -> None:
    """At an episode end, the checkpoint a signal asked for; SIGUSR2 then stops the run."""
    if workspace.checkpointed_step != workspace.step:
        workspace.save_checkpoint()
    if signal.SIGUSR2 in checkpoint_requests:
        raise Interrupted("SIGUSR2")
    checkpoint_requests.clear()


@hydra.main(version_base="1.3", config_path="config", config_name="train_QPA")
def main(cfg: DictConfig) -> None:
    work_dir = Path(HydraConfig.get().runtime.output_dir)
    try:  # before anything else: a second process on this directory must not touch it, status.json included
        # SIGINT's handler stops at once; in a SLURM job SIGTERM's would first write a checkpoint in the directory
        run_lock = RunLock(work_dir, on_lost=lambda holder: _thread.interrupt_main(signal.SIGINT))
    except (RunLockedError, WriteError) as error:
        stop(str(error))
    try:
        train(cfg, work_dir, run_lock)
    finally:
        run_lock.release()


def train(cfg: DictConfig, work_dir: Path, run_lock: RunLock) -> None:
    """Check the config and the run directory, train, and leave status.json saying how the run ended."""
    try:
        check_boolean_overrides(list(HydraConfig.get().overrides.task))  # a multirun's job too: -m skips the pre-check
        cfg = select_agent_config(cfg)
        config = check_config(cfg)
        if not prepare_run_dir(cfg, work_dir):
            return
    except RunRefusedError as error:  # another run's directory: its status.json stays as that run left it
        stop(str(error))
    except ConfigError as error:
        write_final_status(work_dir, "failed", 0, str(error))
        stop(str(error))
    except WriteError as error:
        message = f"{error}; once it can be written, re-run the same command"
        write_final_status(work_dir, "failed", 0, message)
        stop(message)
    workspace = None
    handlers = {
        signal.SIGTERM: request_checkpoint if "SLURM_JOB_ID" in os.environ else interrupt,
        signal.SIGINT: interrupt,
        signal.SIGUSR2: request_checkpoint,
    }
    checkpoint_requests.clear()  # a multirun's earlier job in this process may have left one
    previous_handlers = {sig: signal.signal(sig, handler) for sig, handler in handlers.items()}
    started = time.perf_counter()
    try:
        workspace = Workspace(config, work_dir)
        first_step = workspace.step
        follow_steps(workspace)
        write_status(work_dir, "running", workspace.step)
        workspace.run()
        write_status(work_dir, "finished", workspace.step)
        print(summarise_run(work_dir, time.perf_counter() - started, first_step), flush=True)
    except Interrupted as signal_name:
        if run_lock.lost_to is not None:  # the directory is another process's now: write nothing more there
            stop(f"{run_lock.lost_to.describe()} took over {work_dir} after this run missed its heartbeats for "
                 f"{run_lock.stale_s:.0f} s (suspended?); this run stopped and left the directory to it")  # fmt: skip
        step = checkpointed_step(workspace)
        write_final_status(work_dir, "interrupted", step, f"stopped by {signal_name}")
        if str(signal_name) == "SIGUSR2" and callable(previous_handlers[signal.SIGUSR2]):
            previous_handlers[signal.SIGUSR2](signal.SIGUSR2, None)  # submitit's: requeues this SLURM job
        # SystemExit even in a --multirun: a stopped sweep should stop, not go on to its next run.
        sys.exit(f"error: stopped by {signal_name}; re-run the same command to resume from step {step}")
    except WriteError as error:  # no space, quota, a read-only filesystem: earlier files and labels are whole
        step = checkpointed_step(workspace)
        message = f"{error}; once it can be written, re-run the same command to resume from step {step}"
        write_final_status(work_dir, "failed", step, message)
        stop(message)
    except NonFiniteError as error:
        write_final_status(work_dir, "failed", checkpointed_step(workspace), str(error))
        stop(f"{error}; the last good checkpoint is {work_dir / CHECKPOINT_NAME}")
    except TeacherError as error:
        write_final_status(work_dir, "failed", checkpointed_step(workspace), str(error))
        stop(str(error))
    except BaseException as error:
        write_final_status(work_dir, "failed", checkpointed_step(workspace), f"{type(error).__name__}: {error}")
        raise
    finally:
        stop_labelling_page(workspace)
        for sig, handler in previous_handlers.items():
            signal.signal(sig, handler)


def follow_steps(workspace: Workspace) -> None:
    """A person's page shows the run's current step, also between query rounds."""
    if isinstance(workspace.teacher, HumanTeacher):
        workspace.teacher.step_source = lambda: workspace.step


def report_wait(workspace: Workspace, progress: str | None) -> None:
    """status.json says that the run waits for a person's labels, at which step and how far they are (`progress`);
    None: it waits no more."""
    waiting = None if progress is None else {"current_step": workspace.step, "waiting_for_labels": progress}
    write_status(workspace.work_dir, "running", workspace.checkpointed_step or 0, waiting=waiting)


def stop_labelling_page(workspace: Workspace | None) -> None:
    """However the run ends, stop a person's page and its render thread now: that thread's OpenGL context must be
    freed in that thread, before the interpreter exits (dm_control's exit hook fails with an EGLError otherwise)."""
    if workspace is not None and isinstance(workspace.teacher, HumanTeacher):
        workspace.teacher.abort()


def checkpointed_step(workspace: Workspace | None) -> int:
    """The step a re-run resumes from (0 when no checkpoint was written)."""
    return workspace.checkpointed_step or 0 if workspace is not None else 0


def stop(message: str) -> NoReturn:
    """End the run with a one-line error. In a --multirun, raise instead: sys.exit would end the whole sweep (the
    basic, joblib and submitit launchers all let SystemExit through), while Hydra records an exception as this
    job's failure and runs the other jobs."""
    if HydraConfig.get().mode == RunMode.MULTIRUN:
        raise RunFailedError(message)
    sys.exit(f"error: {message}")


if __name__ == "__main__":
    # The `imports` modules first: their query schemes, feedback steps and method presets must be registered before
    # Hydra composes the config. A plain run (no Hydra flags, no sweep) is then composed once up front, so that
    # Hydra's own errors (an unknown key or group option) come out as the same one-line message as every other.
    try:
        import_modules(requested_imports(sys.argv[1:]))
        if not any(arg.startswith("-") for arg in sys.argv[1:]):
            check_overrides(sys.argv[1:])
    except ConfigError as error:
        sys.exit(f"error: {error}")
    main()
