"""The training loop's per-step work: the action, r̂ of the step, and the SAC update. `per_step_work` chooses once,
when the run starts, who does it: the agent and the reward model themselves (`EagerSteps`), or, on a GPU with
`cuda_graphs=true`, their CUDA-graph replays (cuda_graphs.GraphedSteps); the loop calls the one it gets."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Protocol

import numpy as np
import torch

from agent.sac import SACAgent, SacUpdate
from cuda_graphs import GraphedSteps, graphs_enabled
from replay_buffer import Batch, ReplayBuffer
from reward_model import RewardModel


class PerStepWork(Protocol):
    def act(self, obs: np.ndarray, sample: bool = False) -> np.ndarray: ...

    def predict_step(
        self, obs: np.ndarray, action: np.ndarray, with_std: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None]: ...

    def sac_update(self, hybrid: bool, step: int, gradient_update: int = 1) -> SacUpdate: ...


class EagerSteps:
    """The agent's and the reward model's own calls. `sample(hybrid)` gives a SAC batch on the learned reward (the
    loop's sampling, with the method's batch transforms)."""

    def __init__(self, agent: SACAgent, reward_model: RewardModel, sample: Callable[[bool], Batch]) -> None:
        self.agent = agent
        self.reward_model = reward_model
        self.sample = sample
        self.act = agent.act

    def predict_step(
        self, obs: np.ndarray, action: np.ndarray, with_std: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        return self.reward_model.predict_step(obs, action, with_std)

    def sac_update(self, hybrid: bool, step: int, gradient_update: int = 1) -> SacUpdate:
        batches: list[Batch] = []

        def sample() -> Batch:
            batches.append(self.sample(hybrid))
            return batches[-1]

        return SacUpdate(self.agent.update(sample, step, gradient_update), lambda: batches[-1])


def per_step_work(
    cuda_graphs: bool | str,
    agent: SACAgent,
    replay_buffer: ReplayBuffer,
    reward_model: RewardModel,
    sample: Callable[[bool], Batch],
    draw: Callable[[bool], np.ndarray],
    transforms_batches: bool,
) -> PerStepWork:
    """CUDA-graph replays when the `cuda_graphs` key turns them on for the agent's device and no batch transform
    is on (a graph would freeze its per-step values), else the eager calls."""
    if graphs_enabled(cuda_graphs, agent.device) and not transforms_batches:
        warnings.warn("cuda_graphs=true: the graphed path has not yet been shown to write the eager path's logs on "
                      "a GPU (docs/PERFORMANCE.md); cuda_graphs=false runs the eager path", stacklevel=2)  # fmt: skip
        return GraphedSteps(agent, replay_buffer, reward_model, draw)
    return EagerSteps(agent, reward_model, sample)
