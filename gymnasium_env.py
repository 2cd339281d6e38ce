"""Any Gymnasium task by its id (`env=HalfCheetah-v5`), as the training loop takes an environment: a continuous
(Box) action space rescaled to [-1, 1], a flat float32 observation, a time limit, `info["success"]` where the task
reports success, frames at any size, and MuJoCo's model and data for a person's videos where the task has them.

An episode ends where Gymnasium ends it: `terminated` (the task's own end, e.g. a hopper that falls: no bootstrap
past it) or `truncated` (the time limit: the critic bootstraps through it), so episodes may be shorter than the
limit. Gymnasium is imported when a name is checked, not when this module loads.
"""

from __future__ import annotations

import difflib
import functools
from typing import Any

import gymnasium as gym
import numpy as np


@functools.cache
def registered_ids() -> tuple[str, ...]:
    return tuple(sorted(gym.envs.registration.registry))


def is_gymnasium(name: Any) -> bool:
    return isinstance(name, str) and name in registered_ids()


def close_ids(name: str) -> list[str]:
    """Registered ids close to `name`, for an error message."""
    return difflib.get_close_matches(name, registered_ids(), n=3, cutoff=0.5)


@functools.cache
def unsupported_reason(name: str) -> str | None:
    """Why the registered task `name` cannot be trained here, or None. Makes the environment once (no rendering)."""
    spec = gym.spec(name)
    if spec.max_episode_steps is None:
        return f"env={name} has no time limit (max_episode_steps); allowed: a task registered with one"
    try:
        env = gym.make(name)
    except Exception as error:  # a missing extra (Box2D, ale-py) or a task that needs arguments
        return f"env={name} cannot be made here ({type(error).__name__}: {str(error).splitlines()[0]})"
    action, observation = env.action_space, env.observation_space
    env.close()
    if not isinstance(action, gym.spaces.Box) or len(action.shape) != 1:
        return f"env={name} is not supported: its action space {action} is not a flat continuous Box"
    if not (np.isfinite(action.low).all() and np.isfinite(action.high).all()):
        return f"env={name} is not supported: its action space {action} is unbounded (SAC's actions are squashed)"
    if not isinstance(observation, gym.spaces.Box) or len(observation.shape) != 1:
        return f"env={name} is not supported: its observation space {observation} is not a flat Box (one vector)"
    return None


def episode_steps(name: str) -> int:
    """The task's time limit: the most steps an episode has."""
    return int(gym.spec(name).max_episode_steps)


class GymnasiumEnv(gym.Env):
    """A registered Gymnasium task with actions in [-1, 1] (rescaled to the task's bounds), float32 observations,
    Meta-World's `info["success"]` name for a task's `is_success`, and frames at the size asked for."""

    def __init__(self, name: str, seed: int) -> None:
        self._env = gym.wrappers.RescaleAction(gym.make(name, render_mode="rgb_array"), -1.0, 1.0)
        self._seed = seed
        self._seeded = False
        self.max_episode_steps = episode_steps(name)
        self.metadata = {"render_modes": ["rgb_array"], "render_fps": self._env.metadata.get("render_fps", 30)}
        self.render_mode = "rgb_array"
        low, high = self._env.observation_space.low, self._env.observation_space.high
        self.observation_space = gym.spaces.Box(low.astype(np.float32), high.astype(np.float32), dtype=np.float32)
        self.action_space = self._env.action_space
        self.observation_space.seed(seed)
        self.action_space.seed(seed)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        if seed is None and not self._seeded:
            seed = self._seed
        self._seeded = self._seeded or seed is not None
        obs, info = self._env.reset(seed=seed, options=options)
        return np.asarray(obs, dtype=np.float32), self._with_success(info)

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        action = np.clip(np.asarray(action, dtype=np.float32), -1.0, 1.0)
        obs, reward, terminated, truncated, info = self._env.step(action)
        return np.asarray(obs, dtype=np.float32), float(reward), bool(terminated), bool(truncated), self._with_success(
            info)  # fmt: skip

    @staticmethod
    def _with_success(info: dict[str, Any]) -> dict[str, Any]:
        if "is_success" in info and "success" not in info:
            return {**info, "success": float(info["is_success"])}
        return info

    @property
    def sim(self) -> tuple[Any, Any]:
        """The MuJoCo model and data (mujoco.MjModel, mujoco.MjData) of a MuJoCo task, to save and restore states."""
        unwrapped = self._env.unwrapped
        if not hasattr(unwrapped, "model") or not hasattr(unwrapped, "data"):
            raise AttributeError(f"{unwrapped.spec.id} is not a MuJoCo task: it has no simulator state to replay")
        return unwrapped.model, unwrapped.data

    def render(self, height: int | None = None, width: int | None = None) -> np.ndarray:
        """An RGB uint8 frame; a MuJoCo task renders at the size asked for (set at the first frame, as OpenGL's
        buffer is), any other task's frame is resized to it."""
        from custom_dmcontrol import configure_rendering_backend

        configure_rendering_backend()  # MUJOCO_GL: EGL headless, else OSMesa, before the first MuJoCo frame
        renderer = getattr(self._env.unwrapped, "mujoco_renderer", None)
        if renderer is not None and height and width and renderer.viewer is None:
            renderer.height, renderer.width = height, width
        frame = np.asarray(self._env.render())
        if height and width and frame.shape[:2] != (height, width):
            from PIL import Image

            frame = np.asarray(Image.fromarray(frame).resize((width, height), Image.BILINEAR))
        return frame

    def center_camera(self, height: int, width: int) -> None:
        """Place the free camera on the current state as Gymnasium does when its viewer draws a first frame (at the
        geoms' median position, then the task's camera settings). Its camera does not follow the body, so a
        person's segment rendered after the fact would otherwise be framed wherever the first one was."""
        renderer = getattr(self._env.unwrapped, "mujoco_renderer", None)
        if renderer is None:
            return
        self.render(height, width)  # Gymnasium makes its viewer at the first frame
        camera = renderer.viewer.cam
        camera.lookat[:] = np.median(self._env.unwrapped.data.geom_xpos, axis=0)
        for key, value in (renderer.default_cam_config or {}).items():
            if isinstance(value, np.ndarray):
                getattr(camera, key)[:] = value
            else:
                setattr(camera, key, value)

    def close(self) -> None:
        self._env.close()
