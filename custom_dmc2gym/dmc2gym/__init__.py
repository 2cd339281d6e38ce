"""DeepMind Control Suite tasks as Gymnasium environments, with the dmc2gym calling convention.

    env = dmc2gym.make(domain_name="walker", task_name="walk", seed=1)

See `dmc2gym.wrappers.DMCEnv` for the observation, action and episode conventions.
"""

from __future__ import annotations

from typing import Any

from custom_dmcontrol import check_versions, configure_rendering_backend, load_task, split_task_name
from dmc2gym.wrappers import DMCEnv

__all__ = ["DMCEnv", "make"]


def make(
    domain_name: str,
    task_name: str,
    seed: int = 1,
    visualize_reward: bool = False,
    from_pixels: bool = False,
    height: int = 84,
    width: int = 84,
    camera_id: int = 0,
    frame_skip: int = 1,
    episode_length: int = 1000,
    environment_kwargs: dict[str, Any] | None = None,
    time_limit: float | None = None,
    channels_first: bool = True,
) -> DMCEnv:
    """A seeded Gymnasium env for one suite task.

    `episode_length` counts environment (physics control) steps; the agent sees `episode_length // frame_skip`
    steps, each repeating its action `frame_skip` times and summing the rewards. `time_limit`, in simulated
    seconds, replaces `episode_length` when given. The task's RandomState is seeded with `seed`, so the same
    seed and actions give identical trajectories.
    """
    domain, task = split_task_name(f"{domain_name}_{task_name}")
    if (domain, task) != (domain_name, task_name):
        raise ValueError(
            f"domain_name={domain_name!r}, task_name={task_name!r} is not a suite task; "
            f"did you mean domain_name={domain!r}, task_name={task!r}?"
        )
    if not isinstance(frame_skip, int) or frame_skip < 1:
        raise ValueError(f"frame_skip={frame_skip!r} is not valid; allowed: an int >= 1")
    check_versions()
    if from_pixels:
        # Pixel observations render from the first reset, so the backend must be settled before dm_control loads.
        configure_rendering_backend()
    dm_env = load_task(
        f"{domain}_{task}",
        seed,
        task_kwargs={"time_limit": float("inf")},
        environment_kwargs=environment_kwargs,
        visualize_reward=visualize_reward,
    )
    if time_limit is not None:
        episode_length = round(time_limit / dm_env.control_timestep())
    max_episode_steps = episode_length // frame_skip
    if max_episode_steps < 1:
        raise ValueError(
            f"episode_length={episode_length!r} with frame_skip={frame_skip} leaves no agent step; allowed: "
            "episode_length >= frame_skip"
        )
    return DMCEnv(
        dm_env,
        seed=seed,
        max_episode_steps=max_episode_steps,
        frame_skip=frame_skip,
        from_pixels=from_pixels,
        height=height,
        width=width,
        camera_id=camera_id,
        channels_first=channels_first,
    )
