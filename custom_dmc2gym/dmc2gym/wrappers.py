"""A dm_control suite environment behind the Gymnasium API, following dmc2gym's conventions.

Observations: the task's observation dict flattened to one float32 vector, keys in the order of the task's
`observation_spec()` (listed in `observation_keys`), each entry raveled (scalars become length 1); or, with
`from_pixels`, a uint8 camera image. Actions: Box(-1, 1) mapped linearly onto the task's action-spec bounds.
Episodes: exactly `max_episode_steps` agent steps, then `truncated=True`; dm_control's own time limit is disabled
so this counter is the only clock.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from custom_dmcontrol import configure_rendering_backend


class DMCEnv(gym.Env):
    def __init__(
        self,
        dm_env: Any,
        *,
        seed: int,
        max_episode_steps: int,
        frame_skip: int = 1,
        from_pixels: bool = False,
        height: int = 84,
        width: int = 84,
        camera_id: int = 0,
        channels_first: bool = True,
    ) -> None:
        self._env = dm_env
        self._frame_skip = frame_skip
        self._from_pixels = from_pixels
        self._height = height
        self._width = width
        self._camera_id = camera_id
        self._channels_first = channels_first
        self.max_episode_steps = int(max_episode_steps)
        self.render_mode = "rgb_array"
        self.metadata = {
            "render_modes": ["rgb_array"],
            "render_fps": round(1.0 / (dm_env.control_timestep() * frame_skip)),
        }

        action_spec = dm_env.action_spec()
        self._action_low = np.broadcast_to(action_spec.minimum, action_spec.shape).astype(np.float64)
        self._action_high = np.broadcast_to(action_spec.maximum, action_spec.shape).astype(np.float64)
        self.action_space = spaces.Box(-1.0, 1.0, shape=action_spec.shape, dtype=np.float32, seed=seed)

        observation_spec = dm_env.observation_spec()
        self.observation_keys = tuple(observation_spec)
        if from_pixels:
            image_shape = (3, height, width) if channels_first else (height, width, 3)
            self.observation_space = spaces.Box(0, 255, shape=image_shape, dtype=np.uint8, seed=seed)
        else:
            dim = sum(int(np.prod(observation_spec[key].shape)) for key in self.observation_keys)
            self.observation_space = spaces.Box(-np.inf, np.inf, shape=(dim,), dtype=np.float32, seed=seed)

        # None until the first reset, so that stepping a fresh or finished episode is caught.
        self._elapsed_steps: int | None = None

    @property
    def dm_env(self) -> Any:
        """The wrapped dm_control environment, for its physics and specs."""
        return self._env

    @property
    def sim(self) -> tuple[Any, Any]:
        """The raw MuJoCo model and data (mujoco.MjModel, mujoco.MjData), to save and restore simulator states."""
        return self._env.physics.model.ptr, self._env.physics.data.ptr

    def _to_spec_bounds(self, action: np.ndarray) -> np.ndarray:
        # Clipping first keeps a policy's float rounding just outside [-1, 1] from leaving the spec.
        unit = (np.clip(action, -1.0, 1.0) + 1.0) / 2.0
        return self._action_low + unit * (self._action_high - self._action_low)

    def _observation(self, time_step: Any) -> np.ndarray:
        if self._from_pixels:
            image = self._render_frame(self._height, self._width, self._camera_id)
            return image.transpose(2, 0, 1).copy() if self._channels_first else image
        parts = [np.asarray(time_step.observation[key], dtype=np.float32).ravel() for key in self.observation_keys]
        return np.concatenate(parts)

    def _render_frame(self, height: int, width: int, camera_id: int) -> np.ndarray:
        backend = configure_rendering_backend()
        try:
            return self._env.physics.render(height=height, width=width, camera_id=camera_id)
        except Exception as error:
            reason = str(error).splitlines()[0] if str(error) else type(error).__name__
            raise RuntimeError(
                f"MuJoCo rendering failed with MUJOCO_GL={backend!r} ({reason}); set MUJOCO_GL=egl or osmesa "
                "before Python starts, or call custom_dmcontrol.configure_rendering_backend() before dm_control loads"
            ) from error

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        if seed is not None:
            # The task draws every initial state from this RandomState, so re-seeding it replays the same episodes.
            self._env.task.random.seed(seed)
            self.action_space.seed(seed)
            self.observation_space.seed(seed)
        time_step = self._env.reset()
        self._elapsed_steps = 0
        return self._observation(time_step), {}

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        if self._elapsed_steps is None or self._elapsed_steps >= self.max_episode_steps:
            raise RuntimeError("step() called before reset() or after the episode was truncated; call reset() first")
        action = np.asarray(action, dtype=np.float64)
        if action.shape != self.action_space.shape:
            raise ValueError(f"action shape {action.shape} is not valid; allowed: {self.action_space.shape}")
        spec_action = self._to_spec_bounds(action)
        reward = 0.0
        for _ in range(self._frame_skip):
            time_step = self._env.step(spec_action)
            reward += time_step.reward or 0.0
            if time_step.last():
                break
        self._elapsed_steps += 1
        # With the time limit disabled, dm_control only ends an episode when the task itself terminates (of the
        # suite's tasks only lqr does); locomotion and manipulation tasks always return terminated=False.
        terminated = time_step.last()
        truncated = self._elapsed_steps >= self.max_episode_steps and not terminated
        if terminated:
            self._elapsed_steps = self.max_episode_steps
        info = {"discount": float(time_step.discount)}
        return self._observation(time_step), float(reward), terminated, truncated, info

    def render(self, height: int | None = None, width: int | None = None, camera_id: int | None = None) -> np.ndarray:
        """An RGB uint8 frame (height, width, 3); defaults to the size and camera given at construction."""
        return self._render_frame(
            height or self._height, width or self._width, self._camera_id if camera_id is None else camera_id
        )

    def close(self) -> None:
        self._env.close()
