"""Evaluation episodes of the deterministic policy (ALGORITHM.md §2): the true return, the return r̂ predicts for
the same episodes, and the success rate where the task reports success (Meta-World, some Gymnasium tasks)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

import utils
from agent.sac import SACAgent
from reward_model import RewardModel
from video import VideoRecorder


@dataclass(frozen=True)
class Evaluation:
    episode_reward: float  # mean true return
    episode_reward_hat: float | None  # mean predicted return (None without a learned reward)
    success_rate: float | None  # % of episodes that succeeded at some step (None: the task reports no success)


def evaluate_policy(
    agent: SACAgent,
    env: Any,
    num_episodes: int,
    first_seed: int,
    reward_model: RewardModel | None,
    recorder: VideoRecorder | None = None,
    step: int = 0,
    act: Callable[..., np.ndarray] | None = None,
) -> Evaluation:
    """`num_episodes` episodes of tanh(mu), episode i reset with seed `first_seed` + i; with a `recorder`, the first
    episode is filmed to video/eval_<step>.mp4. `act` stands in for `agent.act` (cuda_graphs.GraphedSteps.act)."""
    act = act or agent.act
    returns, returns_hat, successes = [], [], []
    obs_actions = np.empty((env.max_episode_steps, agent.obs_dim + agent.action_dim), dtype=np.float32)
    for index in range(num_episodes):
        obs, _ = env.reset(seed=first_seed + index)
        filming = recorder is not None and index == 0
        if filming:
            recorder.init(env)
        done, length, episode_return, success = False, 0, 0.0, None
        while not done:
            with utils.eval_mode(agent.actor):
                action = act(obs, sample=False)
            obs_actions[length] = np.concatenate([obs, action])
            obs, reward, terminated, truncated, info = env.step(action)
            if filming:
                recorder.record(env)
            done = terminated or truncated
            episode_return += reward
            length += 1
            if "success" in info:
                success = max(success or 0.0, float(info["success"]))
        if filming:
            recorder.save(f"eval_{step}.mp4", step)
        returns.append(episode_return)
        successes.append(success)
        if reward_model is not None:
            predicted = reward_model.predict_reward(torch.as_tensor(obs_actions[:length], device=reward_model.device))
            returns_hat.append(float(predicted.sum()))
    return Evaluation(
        episode_reward=float(np.mean(returns)),
        episode_reward_hat=float(np.mean(returns_hat)) if reward_model is not None else None,
        success_rate=None if None in successes else 100.0 * float(np.mean(successes)),
    )
