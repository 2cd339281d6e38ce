"""r̂(s, a): an ensemble of reward MLPs on concat(s, a), its mean and spread, and how it scores query candidates
(ALGORITHM.md §3). Training is reward_trainer.py's job, the labelled pairs preferences.py's.
"""

from __future__ import annotations

import itertools
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

import utils

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


class RewardModel:
    """An ensemble of `ensemble_size` reward MLPs (`hidden_depth` x `hidden_dim`, LeakyReLU, output `activation`),
    members initialised independently from `seed`."""

    def __init__(
        self,
        input_dim: int,
        hidden_dim: int,
        hidden_depth: int,
        ensemble_size: int,
        activation: str,
        device: torch.device,
        seed: int,
    ) -> None:
        self.input_dim = input_dim
        self.ensemble_size = ensemble_size
        self.device = torch.device(device)
        generator = torch.Generator().manual_seed(seed)
        self.net = EnsembleMLP(input_dim, hidden_dim, hidden_depth, ensemble_size, activation, generator)
        self.net.to(self.device)

    @torch.no_grad()
    def reset_weights(self, generator: torch.Generator) -> None:
        """Draw every member's weights afresh from the initial distribution (U(±1/sqrt(fan_in)), as nn.Linear's),
        in place, so an optimiser over them keeps its state (PoLiCER's reset)."""
        for weight, bias in self.net._layers:
            bound = 1.0 / math.sqrt(weight.shape[1])
            weight.uniform_(-bound, bound, generator=generator)
            bias.uniform_(-bound, bound, generator=generator)

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

    def predict_step(
        self, obs: np.ndarray, action: np.ndarray, with_std: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """r̂(s, a) of one step [1, 1] and, `with_std`, the ensemble's std (else None): device tensors, which the
        replay buffer stores without a host sync."""
        obs_action = torch.as_tensor(np.concatenate([obs, action])[None], device=self.device)
        if with_std:
            return self.predict_reward_and_std(obs_action)
        return self.predict_reward(obs_action), None

    @torch.inference_mode()
    def predict_reward_and_std(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Ensemble mean and (population) std of r̂, each [N, 1]."""
        rewards = self.net(x.to(self.device, torch.float32))
        return rewards.mean(0), rewards.std(0, correction=0)

    # B-Pref's names for predictions on numpy rows.
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
    def pair_returns(self, pairs: np.ndarray) -> torch.Tensor:
        """Per-member predicted returns [E, num, 2] of segment pairs [num, 2, S, ds + da]."""
        returns = []
        for chunk in torch.as_tensor(pairs, device=self.device).split(_PAIRS_PER_FORWARD):
            rewards = self.net(chunk.reshape(-1, self.input_dim))
            returns.append(rewards.view(self.ensemble_size, *chunk.shape[:3]).sum(-1))
        return torch.cat(returns, dim=1)

    def disagreement(self, pairs: np.ndarray) -> torch.Tensor:
        """Std over members of P[σ1 ≻ σ0] for each pair [num] (0 for a single member)."""
        returns = self.pair_returns(pairs)
        return torch.sigmoid(returns[..., 1] - returns[..., 0]).std(0, correction=0)

    def entropy(self, pairs: np.ndarray) -> torch.Tensor:
        """Bradley-Terry entropy of each pair [num], averaged over members (B-Pref's `get_entropy`)."""
        log_prob = F.log_softmax(self.pair_returns(pairs), dim=-1)
        return -(log_prob.exp() * log_prob).sum(-1).mean(0)

    def save(self, model_dir: str | Path, step: int) -> None:
        utils.atomic_torch_save(self.net.state_dict(), Path(model_dir) / f"reward_model_{step}.pt")

    def load(self, model_dir: str | Path, step: int) -> None:
        path = Path(model_dir) / f"reward_model_{step}.pt"
        self.net.load_state_dict(torch.load(path, map_location=self.device, weights_only=True))

    def state_dict(self) -> dict[str, Any]:
        return self.net.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.net.load_state_dict(state)
