#!/usr/bin/env python3
"""Train QPA (or a preference-based baseline) with one Hydra config: the loop of ALGORITHM.md §2.

    python train_QPA.py env=walker_walk seed=1 max_feedback=100 reward_batch=10 num_interact=20000
    python train_QPA.py +preset=quick env=walker_walk        # a complete scaled-down run on a CPU

Per env step: evaluate/reset at episode ends, act (random during the seed phase), update (PEBBLE
state-entropy pre-training, then preference feedback every `num_interact` steps and SAC on the learned
reward with hybrid replay while feedback remains), step the env and store the transition.
"""

from __future__ import annotations

import dataclasses
import math
import random
import signal
import sys
import time
from collections import deque
from pathlib import Path
from typing import Any, NoReturn

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
    QueryConfig,
    RewardConfig,
    TeacherConfig,
    TrainConfig,
    check_config,
    check_overrides,
)  # fmt: skip
from human_teacher import HumanTeacher, ReplayTeacher, SimStateRecorder
from logger import Logger
from methods.rune import RuneBonus
from queries import QUERY_SCHEMES
from replay_buffer import Batch, ReplayBuffer
from reward_model import RewardModel
from run_dir import CHECKPOINT_NAME, RunRefusedError, prepare_run_dir, write_status
from run_summary import summarise_run
from teacher import QueryRound, Teacher, TeacherError
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
METAWORLD_REWARD_ACCURACY = 0.97  # Meta-World reward training stops once the mean accuracy passes this


class NonFiniteError(RuntimeError):
    """A loss or predicted reward became NaN/inf; the run stops and keeps its last good checkpoint."""


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


def make_reward_model(
    cfg: TrainConfig, obs_dim: int, action_dim: int, device: torch.device, seed: np.random.SeedSequence
) -> RewardModel:
    """The reward model (with its scripted teacher) from its sections of the config."""
    sections = RewardConfig.of(cfg), QueryConfig.of(cfg), TeacherConfig.of(cfg)
    return RewardModel(*sections, obs_dim, action_dim, device, seed=int(seed.generate_state(1)[0]))


def make_teacher(cfg: TrainConfig, work_dir: Path, env: Any, reward_model: RewardModel) -> Teacher:
    """The reward model's scripted teacher, a person in the browser, or the replay of a person's answers."""
    if cfg.teacher_type == "scripted":
        return reward_model.teacher
    if cfg.teacher_type == "replay":
        return ReplayTeacher(TeacherConfig.of(cfg))
    recorder = SimStateRecorder(env, cfg.history_size)
    return HumanTeacher(TeacherConfig.of(cfg), work_dir, cfg.env, cfg.seed, recorder, cfg.segment)


class Workspace:
    def __init__(self, cfg: TrainConfig, work_dir: Path) -> None:
        self.cfg = cfg
        self.work_dir = work_dir
        self.device = utils.choose_device(cfg.device, strict=cfg.strict_device)
        if cfg.num_threads is not None:
            torch.set_num_threads(cfg.num_threads)
        utils.set_seed_everywhere(cfg.seed)
        # One independent stream per consumer: the same raw stream in two places would correlate their draws.
        action_seed, replay_seed, reward_seed, diagnostic_seed = np.random.SeedSequence(cfg.seed).spawn(4)

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

        self.learns_reward = cfg.reward_source == "learned"
        self.query_scheme = cfg.scheme
        self.reward_model = make_reward_model(cfg, obs_dim, action_dim, self.device, reward_seed)
        self.batch_transforms = [RuneBonus(cfg.rune_beta_init, cfg.rune_beta_decay)] if cfg.rune_beta_init > 0 else []
        self.teacher = make_teacher(cfg, work_dir, self.env, self.reward_model)
        # The simulator state of every step, to show a person the segments of a query (teacher=human only)
        self.recorder = self.teacher.recorder if isinstance(self.teacher, HumanTeacher) else None

        self.rng = np.random.default_rng(action_seed)  # seed-phase actions
        self.diagnostic_rng = np.random.default_rng(diagnostic_seed)  # history windows of log_query_alignment
        self.step = 0
        self.episode = 0
        self.total_feedback = 0
        self.labeled_feedback = 0
        self.feedback_rounds = 0
        self.open_round: QueryRound | None = None  # asked, not yet answered (a person, human_mode=async)
        self.interact_count = 0
        self.last_eval_step = -1
        self.recent_returns: deque[float] = deque(maxlen=10)  # teacher thresholds (ALGORITHM.md §4)
        self.last_update_metrics: dict[str, torch.Tensor] = {}
        self.last_eval_return = float("nan")

        resumed_step = self.restore_checkpoint()
        self.checkpointed_step = resumed_step  # None until a checkpoint exists
        self.logger = Logger(
            work_dir,
            save_tb=cfg.log_save_tb,
            use_wandb=cfg.wandb,
            resume_step=resumed_step,
            wandb_names=REFERENCE_WANDB_NAMES,
            wandb_init=dict(
                project=cfg.wandb_project,
                entity=cfg.wandb_entity,
                name=f"{cfg.env}_{cfg.experiment}_{cfg.max_feedback}_{cfg.num_interact}_{cfg.seed}",
                config=dataclasses.asdict(cfg),
            ),
        )
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
            obs = self.reset_episode()
            episode_start_time = time.perf_counter()
            episode_step, episode_return, episode_success = 0, 0.0, 0.0
            episode_return_hat = torch.zeros((), device=self.device)
            done = False
            while not done and self.step < cfg.num_train_steps:
                action = self.act(obs)
                self.update(self.phase())
                if self.recorder is not None:
                    self.recorder.record()

                next_obs, reward, terminated, truncated, info = self.env.step(action)
                done = terminated or truncated
                # dm_control and Meta-World episodes end only at the time limit: bootstrap through it
                done_no_max = float(terminated)
                if self.learns_reward:
                    stored_reward, reward_std = self.predict_step_reward(obs, action)
                    episode_return_hat += stored_reward.squeeze()
                    self.reward_model.add_data(obs, action, reward, done)
                    if done and self.recorder is not None:
                        self.recorder.end_episode()
                else:
                    stored_reward, reward_std = reward, None
                self.replay_buffer.add(obs, action, stored_reward, next_obs, float(done), done_no_max, reward_std)

                episode_return += reward
                if self.is_metaworld:
                    episode_success = max(episode_success, float(info["success"]))
                obs = next_obs
                episode_step += 1
                self.step += 1
                self.interact_count += 1
            self.finish_episode(
                episode_step,
                episode_return,
                episode_return_hat,
                episode_success,
                time.perf_counter() - episode_start_time,
            )
        if self.last_eval_step != self.step:
            self.evaluate()
            self.save_checkpoint()
        self.progress.close()
        if cfg.save_model:
            self.agent.save(self.work_dir, self.step)
            self.reward_model.save(self.work_dir, self.step)
        self.teacher.close()
        self.logger.close()

    def phase(self) -> str:
        """The part of the loop the current step is in (ALGORITHM.md §2); each test stands on its own, so the
        phases do not depend on the order they are checked in.

        seed: no updates (also at step num_seed_steps itself, as in the original); unsupervised: PEBBLE's
        state-entropy pre-training; first_feedback: the step of the first queries; feedback: every later step;
        true_reward: SAC on the environment's reward (method=sac_true), which has no queries."""
        cfg = self.cfg
        feedback_start = cfg.num_seed_steps + cfg.num_unsup_steps
        if not self.learns_reward:
            return "seed" if self.step < cfg.num_seed_steps else "true_reward"
        if self.step == feedback_start:
            return "first_feedback"
        if self.step <= cfg.num_seed_steps:
            return "seed"
        return "unsupervised" if self.step < feedback_start else "feedback"

    def act(self, obs: np.ndarray) -> np.ndarray:
        """Uniform random actions for the first num_seed_steps, then a sample from the policy."""
        if self.step < self.cfg.num_seed_steps:
            return self.rng.uniform(-1.0, 1.0, self.env.action_space.shape).astype(np.float32)
        with utils.eval_mode(self.agent.actor):
            action = self.agent.act(obs, sample=True)
        if not np.isfinite(action).all():  # a diverged update; caught here before it reaches the physics
            raise NonFiniteError(f"the policy produced a non-finite action at step {self.step}")
        return action

    def update(self, phase: str) -> None:
        """This step's learning, the one entry point of the feedback schedule: queries when they are due, then
        the SAC update of the phase."""
        cfg = self.cfg
        if phase == "true_reward":
            uniform = lambda: self.replay_buffer.sample(self.agent.batch_size)  # noqa: E731
            self.last_update_metrics = self.agent.update(uniform, self.step, cfg.gradient_update)
        elif phase == "unsupervised":
            self.last_update_metrics = self.agent.update_state_ent(self.replay_buffer, self.step, K=cfg.topK)
        elif phase == "first_feedback":
            self.first_feedback()
        elif phase == "feedback":
            if self.open_round is not None:
                self.receive_labels(block=False)
            elif self.total_feedback < cfg.max_feedback and self.interact_count >= cfg.num_interact:
                self.collect_feedback()
            self.update_agent()

    def reset_episode(self) -> np.ndarray:
        # Seeding every episode makes a resumed run continue exactly like an uninterrupted one.
        obs, _ = self.env.reset(seed=self.cfg.seed * 100_003 + self.episode)
        return obs

    def predict_step_reward(self, obs: np.ndarray, action: np.ndarray) -> tuple[torch.Tensor, torch.Tensor | None]:
        """r̂(s, a) and, for RUNE's bonus, the ensemble's std (else None), as device tensors: they go straight into
        the replay buffer without a host sync."""
        obs_action = torch.as_tensor(np.concatenate([obs, action])[None], device=self.device)
        if self.replay_buffer.reward_std is None:
            return self.reward_model.predict_reward(obs_action), None
        return self.reward_model.predict_reward_and_std(obs_action)

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

    def update_agent(self) -> None:
        """One SAC update after the first feedback: hybrid replay while feedback remains (QPA), else uniform."""
        cfg = self.cfg
        hybrid = cfg.hybrid_replay and self.total_feedback < cfg.max_feedback
        self.last_update_metrics = self.agent.update(lambda: self.sample(hybrid), self.step, cfg.gradient_update)

    # ------------------------------------------------------------------ preference feedback
    def first_feedback(self) -> None:
        """First queries; once answered, relabel everything collected so far and restart the critic (ALGORITHM.md
        §2, `receive_labels`)."""
        self.collect_feedback(first=True)

    def collect_feedback(self, first: bool = False) -> None:
        """Open a query round: its size and the scripted teacher's thresholds, the queries, and their labels (at
        once, unless a person answers with human_mode=async: then at a later step)."""
        cfg = self.cfg
        self.reward_model.change_batch(self.batch_fraction())
        margin = (np.mean(self.recent_returns) if self.recent_returns else 0.0) * cfg.segment / self.max_episode_steps
        self.teacher.set_thres_skip(margin)
        self.teacher.set_thres_equal(margin)
        if self.reward_model.mb_size + self.total_feedback > cfg.max_feedback:
            self.reward_model.set_batch(cfg.max_feedback - self.total_feedback)

        scheme = self.query_scheme
        if first and QUERY_SCHEMES[scheme].uses_reward_model:
            scheme = "uniform"  # ensemble-based scores mean nothing before the first training (B-Pref)
        pairs, rewards = self.reward_model.select_queries(scheme)
        self.log_query_alignment()
        origins = None if cfg.teacher_type == "scripted" else self.reward_model.segment_origins(pairs)
        self.open_round = QueryRound(self.feedback_rounds, pairs, rewards, origins, self.step, self.total_feedback,
                                     cfg.max_feedback, first)  # fmt: skip
        self.feedback_rounds += 1
        self.total_feedback += self.reward_model.mb_size
        self.interact_count = 0
        self.teacher.ask(self.open_round)
        self.receive_labels(block=cfg.human_mode == "sync")
        if self.open_round is not None:
            tqdm.write(f"step {self.step}: waiting for labels ({self.teacher.progress()}); training goes on "
                       "(human_mode=async)", file=sys.stderr)  # fmt: skip

    def receive_labels(self, block: bool) -> None:
        """Take the open round's labels when they are all in (with `block`, wait for them), then train r̂ on every
        label so far and relabel the replay buffer; after the first round, restart the critic."""
        labels = self.teacher.answers(self.step)
        if labels is None and block:
            tqdm.write(f"step {self.step}: waiting for labels ({self.teacher.progress()})", file=sys.stderr)
            while labels is None:
                self.progress.set_description(f"waiting for labels: {self.teacher.progress()}", refresh=True)
                self.teacher.wait(1.0)
                labels = self.teacher.answers(self.step)
            self.progress.set_description("")
        if labels is None:
            return
        query_round, self.open_round = self.open_round, None
        self.labeled_feedback += self.reward_model.store_labels(query_round.pairs, *labels)
        if self.cfg.teacher_type != "scripted":
            self.logger.log("train/label_wait_steps", self.step - query_round.opened_step, self.step)
        if self.recorder is not None:
            self.logger.log("train/sim_state_mb", self.recorder.nbytes / 2**20, self.step)
            self.logger.log("train/render_seconds", self.teacher.render_seconds, self.step)
        if self.labeled_feedback > 0:
            self.train_reward()
        self.replay_buffer.relabel_with_predictor(self.reward_model)
        if query_round.first:
            self.agent.reset_critic()
            # The frequencies count these updates, so the actor and target keep pace with the many critic steps.
            for index in range(self.cfg.reset_update):
                self.last_update_metrics = self.agent.update(lambda: self.sample(hybrid=False), index)

    def log_query_alignment(self) -> None:
        """Query-policy alignment (the QPA paper's Figure 11): the mean per-step log π(a|s) under the current
        policy of the (s, a) in the segments just queried, and, for contrast, of as many windows of `segment`
        transitions drawn uniformly from the whole replay history."""
        queries = self.reward_model.last_queries
        if len(queries) == 0:
            return
        obs_dim = self.env.observation_space.shape[0]
        rows = torch.as_tensor(queries.reshape(-1, queries.shape[-1]), device=self.device)
        query_ll = self.agent.log_likelihood(rows[:, :obs_dim], rows[:, obs_dim:]).mean()
        self.logger.log("train/query_log_likelihood", float(query_ll), self.step)
        if len(self.replay_buffer) >= self.cfg.segment:
            history_obs, history_action = self.replay_buffer.sample_windows(
                2 * len(queries), self.cfg.segment, self.diagnostic_rng
            )
            history_ll = self.agent.log_likelihood(history_obs, history_action).mean()
            self.logger.log("train/history_log_likelihood", float(history_ll), self.step)

    def batch_fraction(self) -> float:
        """B-Pref's `reward_schedule`: 0 keeps the query batch, 1 shrinks it, 2 grows it over training.

        As in the original release, schedule 1's fraction becomes 0.01 only when it is exactly 0."""
        cfg = self.cfg
        if cfg.reward_schedule == 1:
            return (cfg.num_train_steps - self.step) / cfg.num_train_steps or 0.01
        if cfg.reward_schedule == 2:
            return cfg.num_train_steps / (cfg.num_train_steps - self.step + 1)
        return 1.0

    def train_reward(self) -> None:
        cfg = self.cfg
        if self.is_metaworld:
            for _ in range(cfg.reward_update):
                accuracy, loss = self.reward_model.train_reward()
                if np.mean(accuracy) > METAWORLD_REWARD_ACCURACY:
                    break
        else:
            num_iters = math.ceil(cfg.reward_update * self.labeled_feedback / cfg.reward_train_batch)
            accuracy, loss = self.reward_model.train_reward_iter(num_iters)
        if not math.isfinite(loss):
            raise NonFiniteError(f"reward-model loss became {loss} at step {self.step}")
        self.logger.log("train/reward_train_acc", float(np.mean(accuracy)), self.step)
        self.logger.log("train/reward_loss", loss, self.step)
        if cfg.semi_supervised:
            self.logger.log("train/pseudo_label_fraction", self.reward_model.pseudo_label_fraction, self.step)

    # ------------------------------------------------------------------ episode ends, evaluation, logging
    def finish_episode(
        self, length: int, episode_return: float, episode_return_hat: torch.Tensor, success: float, duration: float
    ) -> None:
        self.episode += 1
        self.recent_returns.append(episode_return)
        log = self.logger.log
        log("train/episode", self.episode, self.step)
        log("train/episode_reward", episode_return, self.step)
        if self.learns_reward:
            log("train/episode_reward_hat", episode_return_hat, self.step)
            log("train/total_feedback", self.total_feedback, self.step)
            log("train/labeled_feedback", self.labeled_feedback, self.step)
        if self.is_metaworld:
            log("train/success_rate", 100.0 * success, self.step)
        for name, value in self.last_update_metrics.items():
            log(f"train/{name}", value, self.step)
        log("train/fps", length / max(duration, 1e-9), self.step)
        log("train/duration", duration, self.step)
        log("train/total_time", time.perf_counter() - self.start_time, self.step)
        self.check_finite(self.last_update_metrics)
        self.logger.dump(self.step)
        self.progress.update(length)
        self.progress.set_postfix(
            feedback=f"{self.total_feedback}/{self.cfg.max_feedback}",
            **({"labels": self.teacher.progress()} if self.open_round is not None else {}),
            eval_return=f"{self.last_eval_return:.1f}",
            refresh=False,
        )

        if self.step - self.last_eval_step >= self.cfg.eval_frequency:
            self.evaluate()
            self.save_checkpoint()

    def check_finite(self, metrics: dict[str, Any]) -> None:
        for name, value in metrics.items():
            if not math.isfinite(float(value)):
                raise NonFiniteError(f"{name} became {float(value)} at step {self.step}")

    def evaluate(self) -> None:
        cfg = self.cfg
        returns, returns_hat, successes = [], [], []
        obs_actions = np.empty(
            (self.max_episode_steps, self.env.observation_space.shape[0] + self.env.action_space.shape[0]),
            dtype=np.float32,
        )
        film = self.video_recorder.wants(self.step, self.last_eval_step, final=self.step >= cfg.num_train_steps)
        for index in range(cfg.num_eval_episodes):
            obs, _ = self.eval_env.reset(seed=cfg.seed * 100_003 + EVAL_SEED_OFFSET + self.step + index)
            self.video_recorder.init(self.eval_env, enabled=film and index == 0)
            done, length, episode_return, success = False, 0, 0.0, 0.0
            while not done:
                with utils.eval_mode(self.agent.actor):
                    action = self.agent.act(obs, sample=False)
                obs_actions[length] = np.concatenate([obs, action])
                obs, reward, terminated, truncated, info = self.eval_env.step(action)
                self.video_recorder.record(self.eval_env)
                done = terminated or truncated
                episode_return += reward
                length += 1
                if self.is_metaworld:
                    success = max(success, float(info["success"]))
            self.video_recorder.save(f"eval_{self.step}.mp4", self.step)
            returns.append(episode_return)
            successes.append(success)
            if self.learns_reward:
                predicted = self.reward_model.predict_reward(torch.as_tensor(obs_actions[:length], device=self.device))
                returns_hat.append(float(predicted.sum()))

        log = self.logger.log
        log("eval/episode", self.episode, self.step)
        log("eval/episode_reward", float(np.mean(returns)) if returns else float("nan"), self.step)
        if self.learns_reward:
            self.check_finite({"eval/episode_reward_hat": np.mean(returns_hat) if returns_hat else 0.0})
            log("eval/episode_reward_hat", float(np.mean(returns_hat)) if returns_hat else float("nan"), self.step)
        if self.is_metaworld:
            log("eval/success_rate", 100.0 * float(np.mean(successes)) if successes else float("nan"), self.step)
        log("eval/total_feedback", self.total_feedback, self.step)
        log("eval/labeled_feedback", self.labeled_feedback, self.step)
        self.logger.dump(self.step)
        self.last_eval_return = float(np.mean(returns)) if returns else float("nan")
        self.last_eval_step = self.step

    # ------------------------------------------------------------------ checkpoint and resume
    def save_checkpoint(self) -> None:
        if not self.cfg.save_checkpoint:
            return
        state = {
            "step": self.step,
            "episode": self.episode,
            "total_feedback": self.total_feedback,
            "labeled_feedback": self.labeled_feedback,
            "feedback_rounds": self.feedback_rounds,
            "open_round": dataclasses.asdict(self.open_round) if self.open_round is not None else None,
            "sim_states": self.recorder.state_dict() if self.recorder is not None else None,
            "interact_count": self.interact_count,
            "last_eval_step": self.last_eval_step,
            "recent_returns": list(self.recent_returns),
            "last_eval_return": self.last_eval_return,
            "rng": self.rng.bit_generator.state,
            "diagnostic_rng": self.diagnostic_rng.bit_generator.state,
            "python_rng": random.getstate(),
            "numpy_rng": np.random.get_state(),
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
            "agent": self.agent.state_dict(),
            "replay_buffer": self.replay_buffer.state_dict(),
            "reward_model": self.reward_model.state_dict(),
        }
        utils.atomic_torch_save(state, self.work_dir / CHECKPOINT_NAME)
        self.checkpointed_step = self.step
        write_status(self.work_dir, "running", self.step)

    def restore_checkpoint(self) -> int | None:
        """Load the run directory's checkpoint when there is one; return its step (None for a fresh run)."""
        path = self.work_dir / CHECKPOINT_NAME
        if not path.exists():
            return None
        state = torch.load(path, map_location=self.device, weights_only=False)
        self.step, self.episode = state["step"], state["episode"]
        self.total_feedback, self.labeled_feedback = state["total_feedback"], state["labeled_feedback"]
        self.interact_count, self.last_eval_step = state["interact_count"], state["last_eval_step"]
        self.recent_returns.extend(state["recent_returns"])
        self.last_eval_return = state["last_eval_return"]
        self.rng.bit_generator.state = state["rng"]
        self.diagnostic_rng.bit_generator.state = state["diagnostic_rng"]
        random.setstate(state["python_rng"])
        np.random.set_state(state["numpy_rng"])
        torch.set_rng_state(state["torch_rng"])
        if state["cuda_rng"] is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        self.agent.load_state_dict(state["agent"])
        self.replay_buffer.load_state_dict(state["replay_buffer"])
        self.reward_model.load_state_dict(state["reward_model"])
        self.feedback_rounds = state["feedback_rounds"]
        if self.recorder is not None:
            self.recorder.load_state_dict(state["sim_states"])
        if state["open_round"] is not None:
            self.open_round = QueryRound(**state["open_round"])
            self.teacher.ask(self.open_round)
        print(f"resumed from {path} at step {self.step}", file=sys.stderr)
        return self.step


def select_agent_config(cfg: DictConfig) -> DictConfig:
    """Meta-World tasks use the Meta-World SAC config unless the command line picked an agent itself."""
    overrides = list(HydraConfig.get().overrides.task)
    if not utils.is_metaworld(str(cfg.env)) or any(item.startswith("agent=") for item in overrides):
        return cfg
    return hydra.compose(config_name="train_QPA", overrides=[*overrides, "agent=sac_metaworld"])


class Interrupted(BaseException):
    """SIGTERM (a scheduler's stop, `kill`) or SIGINT: the run ends, keeping its last checkpoint."""


def interrupt(signum: int, frame: Any) -> NoReturn:
    raise Interrupted(signal.Signals(signum).name)


@hydra.main(version_base="1.3", config_path="config", config_name="train_QPA")
def main(cfg: DictConfig) -> None:
    work_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        cfg = select_agent_config(cfg)
        config = check_config(cfg)
        if not prepare_run_dir(cfg, work_dir):
            return
    except RunRefusedError as error:  # another run's directory: its status.json stays as that run left it
        stop(str(error))
    except ConfigError as error:
        write_status(work_dir, "failed", 0, str(error))
        stop(str(error))
    workspace = None
    previous_handlers = {sig: signal.signal(sig, interrupt) for sig in (signal.SIGTERM, signal.SIGINT)}
    started = time.perf_counter()
    try:
        workspace = Workspace(config, work_dir)
        first_step = workspace.step
        write_status(work_dir, "running", workspace.step)
        workspace.run()
    except Interrupted as signal_name:
        step = checkpointed_step(workspace)
        write_status(work_dir, "interrupted", step, f"stopped by {signal_name}")
        # SystemExit even in a --multirun: a stopped sweep should stop, not go on to its next run.
        sys.exit(f"error: stopped by {signal_name}; re-run the same command to resume from step {step}")
    except NonFiniteError as error:
        write_status(work_dir, "failed", checkpointed_step(workspace), str(error))
        stop(f"{error}; the last good checkpoint is {work_dir / CHECKPOINT_NAME}")
    except TeacherError as error:
        write_status(work_dir, "failed", checkpointed_step(workspace), str(error))
        stop(str(error))
    except BaseException as error:
        write_status(work_dir, "failed", checkpointed_step(workspace), f"{type(error).__name__}: {error}")
        raise
    finally:
        for sig, handler in previous_handlers.items():
            signal.signal(sig, handler)
    write_status(work_dir, "finished", workspace.step)
    print(summarise_run(work_dir, time.perf_counter() - started, first_step), flush=True)


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
    # A plain run (no Hydra flags, no sweep) is composed once up front, so that Hydra's own errors (an unknown
    # key or group option) come out as the same one-line message as every other bad value.
    if not any(arg.startswith("-") for arg in sys.argv[1:]):
        try:
            check_overrides(sys.argv[1:])
        except ConfigError as error:
            sys.exit(f"error: {error}")
    main()
