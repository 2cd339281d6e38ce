"""Evaluation videos (`save_video=true`): which evaluations are filmed, playable mp4s on DMC and Meta-World that
change nothing the run computes, a run without OpenGL that goes on after one warning line, and resume."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from conftest import REPO_ROOT, SMALL_NETWORKS, train
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from test_golden import assert_golden_logs, run_golden
from test_train import TINY

import utils
from video import VIDEO_KEY, decode, films_evaluation

# Small frames at 10 frames per second keep the rendering of these runs to seconds.
VIDEO = ["save_video=true", "video_height=64", "video_width=96", "video_fps=10"]


def filmed(video_evals: str, eval_steps: list[int], eval_frequency: int = 1000, start: int = -1) -> list[int]:
    """The filmed steps of a run evaluating at `eval_steps`, the last one final; `start` is the previous
    evaluation's step (a resumed run's checkpoint holds it)."""
    chosen, previous = [], start
    for step in eval_steps:
        if films_evaluation(video_evals, step, previous, step == eval_steps[-1], eval_frequency):
            chosen.append(step)
        previous = step
    return chosen


def test_which_evaluations_are_filmed() -> None:
    steps = list(range(0, 10_001, 1000))
    assert filmed("all", steps) == steps
    assert filmed("first_last", steps) == [0, 10_000]
    assert filmed("last", steps) == [10_000]
    assert filmed("every_3", steps) == [0, 3000, 6000, 9000, 10_000]
    # Evaluations off the grid (eval_frequency 1500 with 1000-step episodes): one per 3000 steps all the same.
    assert filmed("every_2", [0, 2000, 4000, 6000, 8000], eval_frequency=1500) == [0, 4000, 6000, 8000]
    # A run resumed after its step-4000 checkpoint films what the uninterrupted run films after step 4000.
    assert filmed("every_3", steps[5:], start=4000) == [6000, 9000, 10_000]
    assert filmed("first_last", steps[5:], start=4000) == [10_000]


def test_meta_world_renders_at_the_size_of_its_first_frame() -> None:
    env = utils.make_env("metaworld_drawer-open-v3", 0)
    env.reset(seed=0)
    assert env.render(height=64, width=96).shape == (64, 96, 3)  # not a squeezed 480 x 480 frame
    assert env.render().shape == (64, 96, 3)
    with pytest.raises(ValueError, match=r"render size \(128, 128\) is not valid; allowed: \(64, 96\)"):
        env.render(height=128, width=128)
    env.close()


@pytest.mark.slow
@pytest.mark.parametrize(
    ("name", "filmed_steps", "frames"),
    [
        ("qpa_walker_walk", [0, 2000], 1 + 1000 // 4),  # 40 Hz control at 10 fps: a frame every 4 steps
        ("surf_metaworld_drawer-open", [0, 1000, 2000], 1 + 500 // 8),  # 80 Hz: every 8 steps
    ],
)
def test_filmed_golden_runs_write_playable_videos_and_the_golden_logs(name, filmed_steps, frames, tmp_path):
    """Rendering only reads the simulator: the golden runs filmed write the golden logs, and their videos decode
    to the first evaluation episode's frames at the asked size."""
    run_dir = tmp_path / name
    assert_golden_logs(name, run_golden(name, run_dir, *VIDEO, "video_evals=every_2"))
    assert sorted(path.name for path in (run_dir / "video").iterdir()) == sorted(f"eval_{s}.mp4" for s in filmed_steps)
    video = decode(run_dir / "video" / f"eval_{filmed_steps[-1]}.mp4")
    assert video.shape == (frames, 64, 96, 3)
    assert video.std() > 10  # a rendered scene, not a blank frame


@pytest.mark.slow
@pytest.mark.parametrize("env", ["walker_walk", "metaworld_drawer-open-v3"])
def test_a_run_without_an_opengl_backend_warns_once_and_goes_on(env, tmp_path):
    """MUJOCO_GL=disable is dm_control's way of saying there is no OpenGL: the physics runs, no frame renders."""
    run_dir = tmp_path / "no_gl"
    steps = ["num_train_steps=1000", "num_seed_steps=500", "num_unsup_steps=500", "eval_frequency=500"]
    command = [sys.executable, "train_QPA.py", f"env={env}", *steps, "agent.params.batch_size=32", *SMALL_NETWORKS,
               *VIDEO, "video_evals=all", f"hydra.run.dir={run_dir}"]  # fmt: skip
    result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=600,
                            env={**os.environ, "MUJOCO_GL": "disable"})  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    warnings = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(warnings) == 1 and warnings[0].startswith("warning: save_video=true but frames cannot be rendered")
    assert "MUJOCO_GL='disable'" in warnings[0] and warnings[0].endswith("the run goes on without videos")
    assert pd.read_csv(run_dir / "eval.csv").step.iloc[-1] == 1000
    assert not list(run_dir.glob("video/*"))
    assert "video: none (no frame could be rendered" in result.stdout


def tensorboard_video_steps(run_dir: Path) -> list[int]:
    steps = []
    for events in sorted((run_dir / "tb").glob("events.out.tfevents.*")):
        accumulator = EventAccumulator(str(events), size_guidance={"images": 0})
        accumulator.Reload()
        if VIDEO_KEY in accumulator.Tags()["images"]:
            for image in accumulator.Images(VIDEO_KEY):
                assert image.encoded_image_string.startswith(b"GIF89a") and (image.width, image.height) == (96, 64)
                steps.append(image.step)
    return sorted(steps)


@pytest.mark.slow
def test_a_resumed_run_neither_films_again_nor_loses_a_video_and_logs_them_to_tensorboard_and_wandb(tmp_path):
    """A finished run given a longer budget resumes from its last checkpoint: the videos it made stay as they are,
    its first evaluation after the resume is not taken for the run's first, the new last evaluation is filmed, and
    TensorBoard and wandb get each video once."""
    run_dir = tmp_path / "run"
    overrides = [o for o in TINY if not o.startswith("num_train_steps")] + VIDEO + ["log_save_tb=true", "wandb=true"]
    env = {**os.environ, "WANDB_MODE": "offline"}

    def run(steps: int) -> subprocess.CompletedProcess:
        command = [sys.executable, "train_QPA.py", "env=walker_walk", *overrides, f"num_train_steps={steps}",
                   f"hydra.run.dir={run_dir}"]  # fmt: skip
        result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=600, env=env)
        assert result.returncode == 0, result.stderr[-3000:]
        return result

    run(1000)  # first_last: the untrained policy at step 0 and the last evaluation, at 1000
    first = {path.name: (path.read_bytes(), path.stat().st_mtime_ns) for path in (run_dir / "video").iterdir()}
    assert sorted(first) == ["eval_0.mp4", "eval_1000.mp4"]
    assert "resumed from" in run(3000).stderr  # evaluates at 2000 (not filmed) and 3000
    second = {path.name: (path.read_bytes(), path.stat().st_mtime_ns) for path in (run_dir / "video").iterdir()}
    assert sorted(second) == ["eval_0.mp4", "eval_1000.mp4", "eval_3000.mp4"]
    assert all(second[name] == first[name] for name in first)  # neither filmed again nor rewritten
    assert tensorboard_video_steps(run_dir) == [0, 1000, 3000]
    assert len(list(run_dir.glob("wandb/offline-run-*/files/media/videos/**/*.mp4"))) == 3


@pytest.mark.slow
def test_a_rerun_removes_stale_video_temp_files_and_overwrite_removes_the_videos(tmp_path):
    run_dir = tmp_path / "run"
    short = [o for o in TINY if not o.startswith("num_train_steps")] + ["num_train_steps=1000"]
    train(run_dir, "env=walker_walk", *short, *VIDEO, "video_evals=all")
    assert sorted(path.name for path in (run_dir / "video").iterdir()) == ["eval_0.mp4", "eval_1000.mp4"]
    stale = run_dir / "video" / ".eval_2000.mp4.x1y2.tmp"  # what a kill during a video write leaves
    stale.write_bytes(b"partial")
    assert "already finished" in train(run_dir, "env=walker_walk", *short, *VIDEO, "video_evals=all").stderr
    assert not stale.exists()
    train(run_dir, "env=walker_walk", *short, "overwrite=true")
    assert not (run_dir / "video").exists()
