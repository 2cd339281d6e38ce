"""The bottom floor: seeding, devices, small torch helpers, atomic files, env creation.

Imports no other module of this project (ALGORITHM.md §10).
"""

from __future__ import annotations

import difflib
import functools
import os
import random
import re
import tempfile
import warnings
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from torch import nn

import gymnasium_env


class NonFiniteError(RuntimeError):
    """A loss or predicted reward became NaN/inf; the run stops and keeps its last good checkpoint."""


def set_seed_everywhere(seed: int) -> None:
    """Seed python, numpy and torch (CPU and every GPU)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


class RandomStreams:
    """A run's own numpy generators, by name (`streams.actions`), and the global python, numpy, torch and CUDA
    states, saved and restored together."""

    def __init__(self, **generators: np.random.Generator) -> None:
        self.generators = generators

    def __getattr__(self, name: str) -> np.random.Generator:
        try:
            return self.__dict__["generators"][name]
        except KeyError:
            raise AttributeError(name) from None

    def state_dict(self) -> dict[str, Any]:
        return {
            **{name: generator.bit_generator.state for name, generator in self.generators.items()},
            "python": random.getstate(),
            "numpy": np.random.get_state(),
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for name, generator in self.generators.items():
            generator.bit_generator.state = state[name]
        random.setstate(state["python"])
        np.random.set_state(state["numpy"])
        torch.set_rng_state(state["torch"])
        if state["cuda"] is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])


def choose_device(device: str, strict: bool = False) -> torch.device:
    """Resolve `auto`/`cpu`/`cuda[:i]` to a usable device.

    A reference command line saying `device='cuda'` still runs on a CPU-only
    machine (with a warning) unless `strict` asks for a hard failure.
    """
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not isinstance(device, str) or re.fullmatch(r"cpu|cuda(:\d+)?", device) is None:
        raise ValueError(f"device={device!r} is not valid; allowed: auto, cpu, cuda, cuda:<index>")
    if device.startswith("cuda") and not torch.cuda.is_available():
        if strict:
            raise ValueError(f"device={device!r} was requested with strict_device=true but no CUDA GPU is available")
        warnings.warn(f"device={device!r} requested but no CUDA GPU is available; falling back to cpu", stacklevel=2)
        return torch.device("cpu")
    index = int(device.partition(":")[2] or 0)
    if device.startswith("cuda") and index >= torch.cuda.device_count():
        raise ValueError(f"device={device!r} is not valid; allowed: cuda:0 ... cuda:{torch.cuda.device_count() - 1}")
    return torch.device(device)


def set_tf32(enabled: bool, device: torch.device) -> None:
    """TF32 (10-bit mantissa) float32 matrix multiplies on a CUDA device, or IEEE float32 (PyTorch's default).

    Set either way on a GPU, since a joblib worker process runs one sweep job after another; left alone on a CPU.
    """
    if device.type != "cuda":
        return
    precision = "tf32" if enabled else "ieee"
    try:
        torch.backends.cuda.matmul.fp32_precision = precision
    except AttributeError:  # before torch 2.9; mixing the two APIs in one process is an error in later versions
        torch.backends.cuda.matmul.allow_tf32 = enabled


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


def adam(
    params: Iterable[torch.Tensor], lr: float, betas: tuple[float, ...] = (0.9, 0.999), weight_decay: float = 0.0
) -> torch.optim.Adam:
    """Adam with the fused kernel, for every optimiser of a run. On a CPU the default kernel takes the square root
    of the second moment with torch.sqrt, which calls MKL's vector math library, and that picks its code by
    processor: an AMD EPYC and an Intel Xeon round the same input differently (docs/TESTING.md). The fused kernel
    uses the IEEE square-root instruction, exact on every processor; it is also the faster one on a CPU."""
    return torch.optim.Adam(params, lr=lr, betas=betas, weight_decay=weight_decay, fused=True)


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


class WriteError(OSError):
    """A file of the run could not be written (no space, quota, read-only filesystem, permission); str() is one
    line naming the file and the reason."""

    def __init__(self, path: str | os.PathLike, reason: str) -> None:
        super().__init__(f"cannot write {path}: {reason}")
        self.path = Path(path)

    @classmethod
    def of(cls, path: str | os.PathLike, error: OSError) -> WriteError:
        if isinstance(error, WriteError):
            return error
        return cls(path, f"[Errno {error.errno}] {error.strerror}" if error.errno else str(error))


def _process_umask() -> int:
    mask = os.umask(0)  # the only way to read it is to set it
    os.umask(mask)
    return mask


# Read once, at import: reading it means setting it for a moment, which another thread could observe.
_PUBLIC_MODE = 0o666 & ~_process_umask()


@contextmanager
def _atomic_replace(path: str | os.PathLike, private: bool = False) -> Iterator[str]:
    """Yield a temporary file name beside `path`; once written, it is fsynced and renamed over `path`, so a
    crash leaves either the old or the new file, never half of one. An OSError becomes a WriteError naming `path`.
    The file gets the permissions `open` would give it (mkstemp's 0600 only when `private`)."""
    path = Path(path)
    tmp_name = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        if not private:
            os.fchmod(fd, _PUBLIC_MODE)
        os.close(fd)
        yield tmp_name
        with open(tmp_name, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException as error:
        if tmp_name is not None and os.path.exists(tmp_name):
            os.unlink(tmp_name)
        if isinstance(error, OSError):
            raise WriteError.of(path, error) from None
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes, private: bool = False) -> None:
    """Write `data` to `path` atomically (see `_atomic_replace`); `private`: readable by the owner only."""
    with _atomic_replace(path, private) as tmp_name:
        Path(tmp_name).write_bytes(data)


class _WriteRecorder:
    """A file torch.save writes through, keeping the OSError of a failed write: torch reports that failure as a
    RuntimeError that names neither the file nor the reason."""

    def __init__(self, handle: Any) -> None:
        self.handle = handle
        self.error: OSError | None = None

    def write(self, data: Any) -> int:
        try:
            return self.handle.write(data)
        except OSError as error:
            self.error = error
            raise

    def flush(self) -> None:
        self.handle.flush()


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    with _atomic_replace(path) as tmp_name, open(tmp_name, "wb") as handle:
        recorder = _WriteRecorder(handle)
        try:
            torch.save(obj, recorder)
        except RuntimeError:
            if recorder.error is None:
                raise
            raise recorder.error from None


# ======================================================================================================================
# Environments
#
# `make_env` is the one door to both benchmarks. dm_control and metaworld are imported inside functions: importing
# this module must stay cheap, and name validation must fail fast, before any model is compiled.
# ======================================================================================================================

METAWORLD_PREFIX = "metaworld_"
_METAWORLD_REGISTRY_SUFFIX = "-goal-observable"
_announced_aliases: set[str] = set()  # v2 names whose v3 mapping was already announced in this process


DMC_EPISODE_STEPS = 1000
METAWORLD_EPISODE_STEPS = 500


def is_metaworld(name: str) -> bool:
    """True for `metaworld_<task>` names; whether the task exists is `canonical_env_name`'s job."""
    return isinstance(name, str) and name.startswith(METAWORLD_PREFIX)


def env_family(name: str) -> str:
    """`metaworld`, `gymnasium` (a registered Gymnasium id) or `dmc`, for a name `canonical_env_name` accepts."""
    if is_metaworld(name):
        return "metaworld"
    return "gymnasium" if gymnasium_env.is_gymnasium(name) else "dmc"


def episode_steps(name: str) -> int:
    """The most steps of an episode of the task: Meta-World's 500 and DeepMind Control's 1000 (their episodes end only
    there), a Gymnasium task's time limit (its episodes may end before)."""
    family = env_family(name)
    if family == "gymnasium":
        return gymnasium_env.episode_steps(name)
    return METAWORLD_EPISODE_STEPS if family == "metaworld" else DMC_EPISODE_STEPS


@functools.cache
def _dmc_env_names() -> frozenset[str]:
    from custom_dmcontrol import task_names

    return frozenset(task_names())


@functools.cache
def _metaworld_env_names() -> frozenset[str]:
    # Loads the class registry only (about 0.4 s, no model compiled).
    from metaworld.env_dict import ALL_V3_ENVIRONMENTS_GOAL_OBSERVABLE

    tasks = (key.removesuffix(_METAWORLD_REGISTRY_SUFFIX) for key in ALL_V3_ENVIRONMENTS_GOAL_OBSERVABLE)
    return frozenset(METAWORLD_PREFIX + task for task in tasks)


def env_names() -> frozenset[str]:
    """Every DeepMind Control and Meta-World name `canonical_env_name` accepts as it is (not counting Meta-World's v2
    aliases); Gymnasium's ids are its registry's. The labelling page's goal table (task_goals.py) covers them all,
    and Gymnasium's MuJoCo tasks."""
    return _dmc_env_names() | _metaworld_env_names()


def canonical_env_name(name: str) -> str:
    """Validate an environment name and return the one `make_env` builds.

    DMC names are `domain_task` (`walker_walk`, `ball_in_cup_catch`); Meta-World names are `metaworld_<task>-v3`;
    any registered Gymnasium id with a flat continuous action space and a flat observation (`HalfCheetah-v5`). The
    reference's `metaworld_<task>-v2` names map to their v3 task with a one-time notice. Anything else raises a
    one-line ValueError naming the value and the closest valid names, or why a Gymnasium task cannot be trained.
    """
    if isinstance(name, str) and name in _dmc_env_names():
        return name
    wanted = name if isinstance(name, str) else ""
    if is_metaworld(wanted):
        if wanted.endswith("-v2"):
            wanted = wanted.removesuffix("-v2") + "-v3"
        if wanted in _metaworld_env_names():
            if wanted != name and name not in _announced_aliases:
                _announced_aliases.add(name)
                warnings.warn(
                    f"{name} is the original's Meta-World v2 name; running {wanted} (metaworld 3.1.1 has only v3)",
                    stacklevel=2,
                )
            return wanted
    elif gymnasium_env.is_gymnasium(wanted):
        reason = gymnasium_env.unsupported_reason(wanted)
        if reason:
            raise ValueError(reason)
        return wanted
    valid = sorted(env_names())
    suggestions = difflib.get_close_matches(wanted, valid, n=3) + gymnasium_env.close_ids(wanted)
    raise ValueError(
        f"unknown environment {name!r}; valid names are DMC domain_task, metaworld_<task>-v3 or a Gymnasium id, "
        f"closest: {', '.join(suggestions[:3] or ['walker_walk', 'metaworld_drawer-open-v3', 'HalfCheetah-v5'])}"
    )


class MetaWorldEnv(gym.Env):
    """A Meta-World v3 goal-observable task with a new seeded goal/object layout every reset.

    Episodes are exactly `max_episode_steps` (500) steps ending with `truncated=True` (never `terminated`, not even
    on success), observations float32 of dim 39, actions Box(-1, 1) of dim 4, `info['success']` from Meta-World.
    """

    def __init__(self, task: str, seed: int) -> None:
        from metaworld.env_dict import ALL_V3_ENVIRONMENTS_GOAL_OBSERVABLE

        env_cls = ALL_V3_ENVIRONMENTS_GOAL_OBSERVABLE[task + _METAWORLD_REGISTRY_SUFFIX]
        self._env = env_cls(seed=seed, render_mode="rgb_array")
        # The class freezes the layout drawn at construction. Unfreezing alone would draw from numpy's global RNG;
        # `seeded_rand_vec` draws from the env's own seeded generator, so the sequence of layouts is reproducible.
        self._env._freeze_rand_vec = False
        self._env.seeded_rand_vec = True
        self._seed = seed
        self._seeded = False
        self._elapsed_steps: int | None = None
        self._render_size: tuple[int, int] | None = None  # (height, width), fixed by the first frame
        self.max_episode_steps = int(self._env.max_path_length)
        self.metadata = {"render_modes": ["rgb_array"], "render_fps": self._env.metadata["render_fps"]}
        self.render_mode = "rgb_array"
        # `self._env.observation_space` is stale (built before the goal became observable, goal bounds are zero);
        # `sawyer_observation_space` holds the bounds Meta-World clips observations to.
        sawyer_space = self._env.sawyer_observation_space
        self.observation_space = gym.spaces.Box(
            sawyer_space.low.astype(np.float32), sawyer_space.high.astype(np.float32), dtype=np.float32, seed=seed
        )
        self.action_space = gym.spaces.Box(-1.0, 1.0, shape=self._env.action_space.shape, dtype=np.float32, seed=seed)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        if seed is None and not self._seeded:
            seed = self._seed
        if seed is not None:
            # Meta-World's reset ignores its seed argument; `seed()` re-seeds the generator the layouts come from.
            self._env.seed(seed)
            self.action_space.seed(seed)
            self.observation_space.seed(seed)
            self._seeded = True
        obs, info = self._env.reset()
        self._elapsed_steps = 0
        return obs.astype(np.float32), info

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        if self._elapsed_steps is None or self._elapsed_steps >= self.max_episode_steps:
            raise RuntimeError("step() called before reset() or after the episode was truncated; call reset() first")
        action = np.clip(np.asarray(action, dtype=np.float32), -1.0, 1.0)
        if action.shape != self.action_space.shape:
            raise ValueError(f"action shape {action.shape} is not valid; allowed: {self.action_space.shape}")
        obs, reward, _, _, info = self._env.step(action)
        self._elapsed_steps += 1
        # Our own counter decides the end: Meta-World skips its truncation flag on a step that hit a simulator error.
        truncated = self._elapsed_steps >= self.max_episode_steps
        return obs.astype(np.float32), float(reward), False, truncated, info

    @property
    def sim(self) -> tuple[Any, Any]:
        """The MuJoCo model and data (mujoco.MjModel, mujoco.MjData), to save and restore simulator states."""
        return self._env.model, self._env.data

    def render(self, height: int | None = None, width: int | None = None) -> np.ndarray:
        """An RGB uint8 frame from Meta-World's default camera, (480, 480, 3) unless a size is given. The
        OpenGL context is made at the first frame's size, so every later frame must have that size too."""
        from custom_dmcontrol import configure_rendering_backend

        backend = configure_rendering_backend()
        if backend not in ("egl", "osmesa", "glfw"):  # Gymnasium's renderer knows only these; refuse before it fails
            raise RuntimeError(f"Meta-World cannot render with MUJOCO_GL={backend!r}; allowed: egl, osmesa, glfw")
        renderer = self._env.mujoco_renderer
        size = (height or renderer.height, width or renderer.width)
        if self._render_size is None:
            # Rendering at the wanted size, not resizing a 480 x 480 frame, keeps a non-square frame undistorted.
            renderer.height, renderer.width = self._render_size = size
        elif size != self._render_size:
            raise ValueError(f"render size {size} is not valid; allowed: {self._render_size}, the first frame's size")
        return self._env.render()

    def close(self) -> None:
        self._env.close()


def make_env(name: str, seed: int) -> gym.Env:
    """A seeded Gymnasium env for a DMC (`walker_walk`, 1000-step episodes), Meta-World (`metaworld_<task>-v3`,
    500-step episodes) or Gymnasium (`HalfCheetah-v5`) name; see `canonical_env_name` for the accepted names."""
    name = canonical_env_name(name)
    if is_metaworld(name):
        return MetaWorldEnv(name.removeprefix(METAWORLD_PREFIX), seed)
    if gymnasium_env.is_gymnasium(name):
        return gymnasium_env.GymnasiumEnv(name, seed)
    import dmc2gym

    from custom_dmcontrol import split_task_name

    domain, task = split_task_name(name)
    return dmc2gym.make(domain_name=domain, task_name=task, seed=seed, visualize_reward=False)
