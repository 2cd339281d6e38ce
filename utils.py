"""The bottom floor: seeding, devices, small torch helpers, atomic files, env creation.

Imports no other module of this project (SPEC §10).
"""

from __future__ import annotations

import os
import random
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn


def set_seed_everywhere(seed: int) -> None:
    """Seed python, numpy and torch (CPU and every GPU)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


def choose_device(device: str, strict: bool = False) -> torch.device:
    """Resolve `auto`/`cpu`/`cuda[:i]` to a usable device.

    A reference command line saying `device='cuda'` still runs on a CPU-only
    machine (with a warning) unless `strict` asks for a hard failure.
    """
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not (device == "cpu" or device.startswith("cuda")):
        raise ValueError(f"device={device!r} is not valid; allowed: auto, cpu, cuda, cuda:<index>")
    if device.startswith("cuda") and not torch.cuda.is_available():
        if strict:
            raise ValueError(f"device={device!r} was requested with strict_device=true but no CUDA GPU is available")
        warnings.warn(f"device={device!r} requested but no CUDA GPU is available; falling back to cpu", stacklevel=2)
        return torch.device("cpu")
    return torch.device(device)


class eval_mode:
    """Context manager that puts modules in eval mode and restores their previous mode."""

    def __init__(self, *models: nn.Module) -> None:
        self.models = models
        self.prev_states: list[bool] = []

    def __enter__(self) -> None:
        self.prev_states = [model.training for model in self.models]
        for model in self.models:
            model.train(False)

    def __exit__(self, *args: Any) -> None:
        for model, state in zip(self.models, self.prev_states):
            model.train(state)


@torch.no_grad()
def soft_update_params(net: nn.Module, target_net: nn.Module, tau: float) -> None:
    """target <- tau * net + (1 - tau) * target, in one fused foreach call."""
    target_params = list(target_net.parameters())
    torch._foreach_lerp_(target_params, list(net.parameters()), tau)


def weight_init(module: nn.Module) -> None:
    """Orthogonal weights and zero biases for linear layers, as in pytorch_sac."""
    if isinstance(module, nn.Linear):
        nn.init.orthogonal_(module.weight.data)
        if module.bias is not None:
            module.bias.data.fill_(0.0)


def mlp(
    input_dim: int,
    hidden_dim: int,
    output_dim: int,
    hidden_depth: int,
    output_mod: nn.Module | None = None,
    activation: Callable[[], nn.Module] = nn.ReLU,
) -> nn.Sequential:
    """An MLP with `hidden_depth` hidden layers of `hidden_dim` units."""
    if hidden_depth == 0:
        layers: list[nn.Module] = [nn.Linear(input_dim, output_dim)]
    else:
        layers = [nn.Linear(input_dim, hidden_dim), activation()]
        for _ in range(hidden_depth - 1):
            layers += [nn.Linear(hidden_dim, hidden_dim), activation()]
        layers.append(nn.Linear(hidden_dim, output_dim))
    if output_mod is not None:
        layers.append(output_mod)
    return nn.Sequential(*layers)


def to_np(tensor: torch.Tensor) -> np.ndarray:
    return tensor.detach().cpu().numpy()


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` to `path` so that a crash leaves either the old or the new file, never half of one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        if os.path.exists(tmp_name):
            os.unlink(tmp_name)
        raise


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """`torch.save` through a temporary file and an atomic rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        torch.save(obj, tmp_name)
        with open(tmp_name, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        if os.path.exists(tmp_name):
            os.unlink(tmp_name)
        raise
