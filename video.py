"""Evaluation videos (`save_video=true`): the first episode of the chosen evaluations, rendered headless to mp4.

    recorder = VideoRecorder.from_config(cfg, run_dir, logger)
    recorder.init(env, enabled=recorder.wants(step, previous_eval_step, final))  # after env.reset
    recorder.record(env)                                                      # after every env.step
    recorder.save(f"eval_{step}.mp4", step)                                   # after the episode

Frames come from the environment's own renderer, through the OpenGL backend custom_dmcontrol settles for the
labelling page too (MUJOCO_GL=egl, else osmesa). They are encoded to H.264 mp4 by imageio's ffmpeg plugin, whose
pinned imageio-ffmpeg wheel carries its own ffmpeg binary, and written atomically to `<run>/video/eval_<step>.mp4`.
A resumed run films what an uninterrupted one films: which evaluations are filmed follows from the steps alone,
and an evaluation done again after a crash writes the same file again. Rendering only reads the simulator, so
filming changes nothing the run computes. When no frame can be rendered (no OpenGL backend) the recorder prints
one warning line and stays off for the rest of the run: a video is never worth a crashed run.
"""

from __future__ import annotations

import atexit
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

import utils

if TYPE_CHECKING:
    from config_schema import TrainConfig
    from logger import Logger

VIDEO_DIR = "video"
VIDEO_KEY = "eval/video"  # the TensorBoard tag and wandb key
# H.264 plays in every browser, wandb and the usual players; quality is imageio's variable-bit-rate default (5 of 10).
CODEC, QUALITY = "libx264", 5


def films_evaluation(video_evals: str, step: int, previous_step: int, final: bool, eval_frequency: int) -> bool:
    """Whether the evaluation at `step` is filmed under the `video_evals` key (config_schema); `previous_step`
    is the step of the evaluation before it, -1 for the first. Only steps decide, so a resumed run, which restores
    the previous evaluation's step from its checkpoint, films exactly what an uninterrupted one does."""
    if video_evals == "all" or final:
        return True
    if video_evals == "last":
        return False
    if previous_step < 0:
        return True
    every = re.fullmatch(r"every_(\d+)", video_evals)
    if every is None:
        return False  # first_last
    period = int(every.group(1)) * eval_frequency
    return step // period > previous_step // period


def decode(path: str | Path) -> np.ndarray:
    """Every frame of an mp4 written here, [frames, height, width, 3] uint8."""
    import imageio.v3 as iio

    return iio.imread(path, plugin="FFMPEG")


class VideoRecorder:
    """Films one episode at a time, in the spirit of drqv2's VideoRecorder: `init` after a reset (the episode's
    first frame), `record` after each step, `save` at the end. Frames are held in memory until `save`: height x
    width x 3 bytes each, 74 MB for a 1000-step DMC episode at the defaults (256 x 192, a frame every 2 steps)."""

    def __init__(
        self,
        video_dir: Path,
        enabled: bool,
        video_evals: str = "first_last",
        height: int = 192,
        width: int = 256,
        fps: int = 20,
        eval_frequency: int = 10_000,
        logger: Logger | None = None,
    ) -> None:
        self.video_dir = video_dir
        self.enabled = enabled  # off for good after a rendering failure
        self.video_evals = video_evals
        self.height, self.width, self.fps = height, width, fps
        self.eval_frequency = eval_frequency
        self.logger = logger
        self.frames: list[np.ndarray] = []
        self.recording = False
        self.stride = 1
        self.frame_rate = float(fps)
        self.steps = 0
        self._closed_at_exit: set[int] = set()

    @classmethod
    def from_config(cls, cfg: TrainConfig, run_dir: Path, logger: Logger | None = None) -> VideoRecorder:
        return cls(run_dir / VIDEO_DIR, cfg.save_video, cfg.video_evals, cfg.video_height, cfg.video_width,
                   cfg.video_fps, cfg.eval_frequency, logger)  # fmt: skip

    def wants(self, step: int, previous_step: int, final: bool) -> bool:
        """Whether the evaluation at `step` is to be filmed (see `films_evaluation`)."""
        return self.enabled and films_evaluation(self.video_evals, step, previous_step, final, self.eval_frequency)

    def init(self, env: Any, enabled: bool = True) -> None:
        """Start an episode just reset: film it when `enabled`, beginning with its first frame."""
        self.frames = []
        self.recording = self.enabled and enabled
        if not self.recording:
            return
        control_rate = float(env.metadata["render_fps"])
        # A whole number of steps between frames, and the frame rate that makes them play in real time.
        self.stride = max(1, round(control_rate / self.fps))
        self.frame_rate = control_rate / self.stride
        self.steps = 0
        self._render(env)

    def record(self, env: Any) -> None:
        """After a step: a frame every `stride` steps."""
        if not self.recording:
            return
        self.steps += 1
        if self.steps % self.stride == 0:
            self._render(env)

    def save(self, name: str, step: int) -> Path | None:
        """Encode the episode's frames to `<video_dir>/<name>` (and TensorBoard / wandb when they are on); the path,
        or None when this episode was not filmed."""
        if not self.recording or not self.frames:
            return None
        import imageio.v3 as iio

        frames = np.stack(self.frames)
        self.frames, self.recording = [], False
        data = iio.imwrite("<bytes>", frames, extension=".mp4", plugin="FFMPEG", fps=self.frame_rate, codec=CODEC,
                           quality=QUALITY, macro_block_size=16)  # fmt: skip
        path = self.video_dir / name
        utils.atomic_write_bytes(path, data)
        if self.logger is not None:
            self.logger.log_video(VIDEO_KEY, path, frames, self.frame_rate, step)
        return path

    def _render(self, env: Any) -> None:
        try:
            frame = env.render(height=self.height, width=self.width)
        except Exception as error:  # no OpenGL backend, or one that fails at the first frame
            reason = str(error).splitlines()[0] if str(error) else type(error).__name__
            print(f"warning: save_video=true but frames cannot be rendered ({reason}); the run goes on without videos",
                  file=sys.stderr, flush=True)  # fmt: skip
            self.enabled = self.recording = False
            self.frames = []
            return
        if id(env) not in self._closed_at_exit:
            # Meta-World's OpenGL context must be freed before the interpreter tears down the modules that free it,
            # or every run would end with pages of EGL tracebacks.
            atexit.register(env.close)
            self._closed_at_exit.add(id(env))
        self.frames.append(frame)
