"""What `teacher=human` costs per query round: the memory of the recorded simulator states and the time to render a
round's segments after the fact, for the paper's walker_walk and Meta-World drawer-open settings.

    python bench/bench_human_render.py            # about a minute with software OpenGL
    MUJOCO_GL=osmesa python bench/bench_human_render.py

Recording happens on every env step of a human run; rendering happens in its own thread while the person labels,
one query at a time, so the person waits for one query's frames, not the round's.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

os.environ.setdefault("MUJOCO_GL", "egl")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import utils
from episodes import EpisodeStore
from human_teacher import SimStateRecorder, render_segment

# env, segment length S, queries per round, episodes kept by QPA (N) and by the other schemes (history_episodes)
SETTINGS = [
    ("walker_walk", 50, 10, 10, 100),
    ("metaworld_drawer-open-v3", 50, 30, 30, 100),
]


def measure(env_name: str, segment: int, queries: int, recent: int, history: int) -> None:
    env = utils.make_env(env_name, 0)
    obs, _ = env.reset(seed=0)
    episodes = EpisodeStore(env.observation_space.shape[0], env.action_space.shape[0], max_episodes=1)
    recorder = SimStateRecorder(env, episodes)
    recording = 0.0
    for step in range(env.max_episode_steps):
        action = env.action_space.sample()
        start = time.perf_counter()
        recorder.record()
        recording += time.perf_counter() - start
        next_obs, reward, *_, info = env.step(action)
        recorder.record_outcome(info)
        episodes.add(obs, action, reward, done=step == env.max_episode_steps - 1)
        obs = next_obs
    record_us = recording / env.max_episode_steps * 1e6
    recorder.end_episode()
    episode_mb = recorder.nbytes / 2**20

    render_env = utils.make_env(env_name, 1)
    render_env.reset(seed=1)
    layout, states = recorder.segment(0, 0, segment)
    render_segment(render_env, layout, states[:2])  # the OpenGL context is made on the first frame
    start = time.perf_counter()
    jpeg = render_segment(render_env, layout, states)
    segment_s = time.perf_counter() - start
    print(
        f"{env_name}: record {record_us:.1f} us/step, {episode_mb:.2f} MB/episode "
        f"-> {recent * episode_mb:.1f} MB for QPA's N={recent}, {history * episode_mb:.0f} MB for "
        f"history_episodes={history}; render {segment_s / segment * 1e3:.0f} ms/frame, {2 * segment_s:.1f} s per "
        f"query (2 x {segment} frames, {2 * len(jpeg) / 1e3:.0f} kB of JPEG), {2 * segment_s * queries:.0f} s per "
        f"round of {queries}"
    )


if __name__ == "__main__":
    print(f"MUJOCO_GL={os.environ['MUJOCO_GL']}")
    for setting in SETTINGS:
        measure(*setting)
    os._exit(0)  # dm_control's OpenGL contexts complain when freed at interpreter exit
