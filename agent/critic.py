"""Clipped double-Q critic (ALGORITHM.md §6)."""

from __future__ import annotations

import functools

import torch
from torch import nn

import utils

# In-place ReLU: one allocation fewer per layer (autograd needs only the ReLU's output), ~5% of an update.
_RELU_INPLACE = functools.partial(nn.ReLU, inplace=True)


class DoubleQCritic(nn.Module):
    """Two independent Q(s, a) MLPs on concat(obs, action); SAC uses their minimum against overestimation.

    Two plain MLPs rather than one batched (stacked-weight bmm) network: on a 2-core CPU the batched pair was no
    faster at hidden 256 and slower at hidden 1024.
    """

    def __init__(self, obs_dim: int, action_dim: int, hidden_dim: int, hidden_depth: int) -> None:
        super().__init__()
        self.Q1 = utils.mlp(obs_dim + action_dim, hidden_dim, 1, hidden_depth, activation=_RELU_INPLACE)
        self.Q2 = utils.mlp(obs_dim + action_dim, hidden_dim, 1, hidden_depth, activation=_RELU_INPLACE)
        self.apply(utils.weight_init)

    def forward(self, obs: torch.Tensor, action: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        obs_action = torch.cat([obs, action], dim=-1)
        return self.Q1(obs_action), self.Q2(obs_action)
