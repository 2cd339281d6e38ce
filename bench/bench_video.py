"""What `save_video=true` costs per filmed evaluation at the config defaults (config_schema.LogConfig): rendering
and encoding time per frame and the size of the mp4, for walker_walk (what `make demo` films) and Meta-World.

    python bench/bench_video.py                       # both tasks, each in its own process
    python bench/bench_video.py --env cheetah_run --height 480 --width 640 --fps 50

One episode of uniformly random actions is filmed through `video.VideoRecorder`, exactly as an evaluation films
its first episode. A trained policy moves differently, so its videos differ in size, not in time per frame. Each
task runs in its own process: DMC (dm_control's renderer) and Meta-World (Gymnasium's) in one process share EGL
state badly. Training is single-threaded here, so close nothing else for a fair figure on a small machine.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("MUJOCO_GL", "egl")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import utils
from config_schema import ConfigError, LogConfig
from video import VideoRecorder, decode

TASKS = ("walker_walk", "metaworld_drawer-open-v3")
DEMO_VIDEOS = 2  # make demo: video_evals=first_last


def measure(env_name: str, height: int, width: int, fps: int) -> None:
    env = utils.make_env(env_name, 0)
    env.reset(seed=0)
    env.render(height=height, width=width)  # the OpenGL context is made on the first frame; not counted
    with tempfile.TemporaryDirectory() as scratch:
        recorder = VideoRecorder(Path(scratch), True, height=height, width=width, fps=fps)
        env.reset(seed=1)
        rendering = time.perf_counter()
        recorder.init(env)
        done = False
        while not done:
            _, _, terminated, truncated, _ = env.step(env.action_space.sample())
            recorder.record(env)
            done = terminated or truncated
        rendering = time.perf_counter() - rendering
        frames = len(recorder.frames)
        encoding = time.perf_counter()
        path = recorder.save("bench.mp4", 0)
        encoding = time.perf_counter() - encoding
        assert path is not None and len(decode(path)) == frames
        size_mb = path.stat().st_size / 2**20
    per_video = rendering + encoding
    demo = f"; make demo ({DEMO_VIDEOS} videos): {DEMO_VIDEOS * per_video:.0f} s, {DEMO_VIDEOS * size_mb:.1f} MB"
    print(
        f"{env_name} at {width}x{height}, {recorder.frame_rate:g} fps (a frame every {recorder.stride} steps): "
        f"{frames} frames; render + step {rendering / frames * 1e3:.1f} ms/frame, encode {encoding / frames * 1e3:.1f}"
        f" ms/frame; {per_video:.1f} s and {size_mb:.2f} MB per video" + (demo if env_name == "walker_walk" else "")
    )


def main() -> None:
    defaults = LogConfig()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--env", help="one task (default: each of walker_walk and Meta-World drawer-open)")
    parser.add_argument("--height", type=int, default=defaults.video_height)
    parser.add_argument("--width", type=int, default=defaults.video_width)
    parser.add_argument("--fps", type=int, default=defaults.video_fps)
    args = parser.parse_args()
    try:
        LogConfig(video_height=args.height, video_width=args.width, video_fps=args.fps)  # the keys' own checks
    except ConfigError as error:
        sys.exit(f"error: {error}")
    if args.env:
        measure(args.env, args.height, args.width, args.fps)
        return
    for env_name in TASKS:
        sizes = ["--height", str(args.height), "--width", str(args.width), "--fps", str(args.fps)]
        subprocess.run([sys.executable, __file__, "--env", env_name, *sizes], check=True)


if __name__ == "__main__":
    main()
