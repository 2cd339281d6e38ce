"""Scalar logging to the console, CSV files, and optionally TensorBoard and wandb (which also take videos).

Knows nothing of RL: it averages whatever scalars it is given under `train/<name>` or `eval/<name>` between two
dumps and writes one row per group and dump. Console and CSV always work; TensorBoard and wandb are optional and
imported only when asked for, so a run never depends on them (ALGORITHM.md §9).
"""

from __future__ import annotations

import csv
import io
import math
import numbers
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from termcolor import colored

from utils import WriteError, atomic_write_bytes

GROUPS = ("train", "eval")
GROUP_COLORS = {"train": "yellow", "eval": "green"}
CONSOLE_KINDS = ("int", "float", "time")

# Metric name -> (short console label, kind). Metrics not listed print under their own name.
DEFAULT_CONSOLE_FORMATS: dict[str, tuple[str, str]] = {
    "episode": ("E", "int"),
    "duration": ("D", "time"),
    "episode_reward": ("R", "float"),
    "episode_reward_hat": ("R_hat", "float"),
    "true_episode_reward": ("R_true", "float"),
    "success_rate": ("SR", "float"),
    "total_feedback": ("FB", "int"),
    "labeled_feedback": ("LFB", "int"),
    "fps": ("FPS", "float"),
    "batch_reward": ("BR", "float"),
    "actor_loss": ("A_LOSS", "float"),
    "critic_loss": ("CR_LOSS", "float"),
    "alpha_loss": ("TEMP_LOSS", "float"),
    "alpha": ("TEMP", "float"),
    "actor_entropy": ("ENT", "float"),
    "reward_loss": ("RM_LOSS", "float"),
    "reward_train_acc": ("RM_ACC", "float"),
    "total_time": ("T", "time"),
}


def _split_key(key: str) -> tuple[str, str]:
    group, _, name = key.partition("/")
    if group not in GROUPS or not name or "/" in name or name == "step":
        raise ValueError(f"log key {key!r} is not valid; allowed: 'train/<name>' or 'eval/<name>', name not 'step'")
    return group, name


def _check_scalar(key: str, value: Any) -> None:
    """Reject non-scalars at log time without reading a tensor's value (that would force a device sync)."""
    if isinstance(value, bool | str | bytes) or not (
        isinstance(value, numbers.Number | np.generic | np.ndarray) or hasattr(value, "numel")
    ):
        raise ValueError(
            f"value for {key!r} has type {type(value).__name__}; allowed: int, float, numpy or torch scalar"
        )
    size = value.numel() if hasattr(value, "numel") else np.size(value)
    if size != 1:
        raise ValueError(f"value for {key!r} has {size} elements; allowed: a single scalar")


def _average(values: list[Any]) -> float | int:
    """Mean of logged values, converting tensors with a single host transfer for the whole list."""
    if all(hasattr(v, "detach") for v in values) and len({v.device for v in values}) == 1:
        import torch

        return torch.stack([v.detach().reshape(()).double() for v in values]).mean().item()
    mean = sum(float(v.reshape(())) if isinstance(v, np.ndarray) else float(v) for v in values) / len(values)
    if all(isinstance(v, numbers.Integral) for v in values) and mean.is_integer():
        return int(mean)
    return mean


def _format_float(value: float) -> str:
    if value == 0 or 1e-3 <= abs(value) < 1e5:
        return f"{value:.4f}"
    return f"{value:.4e}"


def format_value(value: float | int, kind: str) -> str:
    """Console text for one metric value of the given kind (`int`, `float` or `time`)."""
    if not math.isfinite(value):
        return str(value)
    if kind == "int":
        return str(round(value))
    if kind == "time":
        return f"{value:.1f}s"
    return _format_float(value)


def _gif_summary(tag: str, frames: np.ndarray, fps: float) -> Any:
    """A TensorBoard image summary holding `frames` as an animated GIF (what SummaryWriter.add_video writes, without
    its moviepy dependency)."""
    from PIL import Image
    from tensorboard.compat.proto.summary_pb2 import Summary

    images = [Image.fromarray(frame) for frame in frames]
    buffer = io.BytesIO()
    images[0].save(buffer, format="GIF", save_all=True, append_images=images[1:], duration=round(1000 / fps), loop=0)
    _, height, width, channels = frames.shape
    image = Summary.Image(height=height, width=width, colorspace=channels, encoded_image_string=buffer.getvalue())
    return Summary(value=[Summary.Value(tag=tag, image=image)])


class _CsvFile:
    """One CSV of complete rows: each row is one unbuffered append, new columns widen the header atomically.

    Unbuffered, so that a failed write (a full disk) leaves nothing pending that a later flush could half-write;
    a row cut short by it is a partial last line, which a resumed run ignores. A failure raises WriteError."""

    def __init__(self, path: Path, resume_step: int | None) -> None:
        self.path = path
        self.columns: list[str] = []
        self._fd: int | None = None
        if resume_step is not None and path.exists():
            self._keep_rows_up_to(resume_step)
        elif path.exists():
            # A fresh run in an existing directory starts fresh logs instead of mixing two runs in one file.
            path.unlink()

    def _read_rows(self) -> tuple[list[str], list[list[str]]]:
        with open(self.path, newline="") as handle:
            text = handle.read()
        if text and not text.endswith("\n"):
            # A process killed inside a write can leave a partial last line; it is not a row.
            text = text[: text.rfind("\n") + 1]
        lines = list(csv.reader(io.StringIO(text, newline="")))
        if not lines:
            return [], []
        header, rows = lines[0], lines[1:]
        return header, [row for row in rows if len(row) == len(header)]

    def _keep_rows_up_to(self, resume_step: int) -> None:
        header, rows = self._read_rows()
        if not header:
            self.path.unlink()
            return
        if header[0] != "step":
            raise ValueError(f"{self.path} has first column {header[0]!r}; allowed: 'step' (a file written by Logger)")
        self.columns = header
        self._rewrite([row for row in rows if float(row[0]) <= resume_step])

    def _rewrite(self, rows: list[list[str]]) -> None:
        self.close()
        buffer = io.StringIO(newline="")
        writer = csv.writer(buffer)
        writer.writerow(self.columns)
        writer.writerows(row + [""] * (len(self.columns) - len(row)) for row in rows)
        atomic_write_bytes(self.path, buffer.getvalue().encode())
        try:
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND)
        except OSError as error:
            raise WriteError.of(self.path, error) from None

    def write(self, row: Mapping[str, float | int]) -> None:
        new_columns = [key for key in row if key not in self.columns]
        if new_columns or self._fd is None:
            old_rows = self._read_rows()[1] if self.path.exists() else []
            self.columns += new_columns
            self._rewrite(old_rows)
        buffer = io.StringIO(newline="")
        csv.writer(buffer).writerow([row.get(column, "") for column in self.columns])
        data = memoryview(buffer.getvalue().encode())
        try:
            while data:  # a write may take only part of the row (a disk filling up); the rest follows or fails
                data = data[os.write(self._fd, data) :]
        except OSError as error:
            raise WriteError.of(self.path, error) from None

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class Logger:
    """Averages scalars between dumps; writes `<log_dir>/train.csv`, `<log_dir>/eval.csv` and a console line.

    `resume_step`: a resumed run keeps the CSV rows with `step <= resume_step` and appends after them.
    `wandb_init`: keyword arguments for `wandb.init` (project, entity, name, config as a plain dict, mode, ...);
    the run directory defaults to `log_dir`. `wandb_names` renames keys for wandb only (e.g.
    `eval/episode_reward` -> `episode_reward`, so dashboards built on another codebase's names keep working).
    `console_formats` maps metric names to (label, kind) pairs and overrides `DEFAULT_CONSOLE_FORMATS`.
    """

    def __init__(
        self,
        log_dir: str | Path,
        save_tb: bool = False,
        use_wandb: bool = False,
        wandb_init: Mapping[str, Any] | None = None,
        resume_step: int | None = None,
        console_formats: Mapping[str, tuple[str, str]] | None = None,
        wandb_names: Mapping[str, str] | None = None,
    ) -> None:
        self.log_dir = Path(log_dir)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.console_formats = {**DEFAULT_CONSOLE_FORMATS, **(console_formats or {})}
        for name, (_, kind) in self.console_formats.items():
            if kind not in CONSOLE_KINDS:
                raise ValueError(f"console format kind {kind!r} for {name!r} is not valid; allowed: {CONSOLE_KINDS}")
        self._meters: dict[str, dict[str, list[Any]]] = {group: {} for group in GROUPS}
        self._last_step: dict[str, int] = {}
        self._csv = {group: _CsvFile(self.log_dir / f"{group}.csv", resume_step) for group in GROUPS}

        self._tb_writer = None
        if save_tb:
            from torch.utils.tensorboard import SummaryWriter

            # purge_step drops events a crashed run wrote after the checkpoint it resumes from.
            purge_step = None if resume_step is None else resume_step + 1
            self._tb_writer = SummaryWriter(str(self.log_dir / "tb"), purge_step=purge_step)

        self._wandb_run = None
        if use_wandb:
            try:
                import wandb
            except ImportError as error:
                raise ImportError("use_wandb=true needs the `wandb` package (pip install wandb)") from error
            kwargs = {"dir": str(self.log_dir), **(wandb_init or {})}
            self._wandb_run = wandb.init(**kwargs)
            # Each group carries its own step so train and eval rows may arrive in any order.
            for group in GROUPS:
                self._wandb_run.define_metric(f"{group}/step")
                self._wandb_run.define_metric(f"{group}/*", step_metric=f"{group}/step")
            self.wandb_names = dict(wandb_names or {})
            for key, wandb_name in self.wandb_names.items():
                self._wandb_run.define_metric(wandb_name, step_metric=f"{key.partition('/')[0]}/step")

    def log(self, key: str, value: Any, step: int) -> None:
        """Record `value` under `key` (`train/<name>` or `eval/<name>`); converted to a float only at dump."""
        group, name = _split_key(key)
        _check_scalar(key, value)
        self._meters[group].setdefault(name, []).append(value)
        self._last_step[group] = step

    def dump(self, step: int | None = None, group: str | None = None) -> None:
        """Write one averaged row per group holding data (or only `group`); `step` defaults to the last logged."""
        if group is not None and group not in GROUPS:
            raise ValueError(f"group {group!r} is not valid; allowed: {GROUPS}")
        for name in GROUPS if group is None else (group,):
            meters = self._meters[name]
            if not meters:
                continue
            row_step = self._last_step[name] if step is None else step
            values = {metric: _average(logged) for metric, logged in meters.items()}
            meters.clear()
            self._write(name, row_step, values)

    def log_video(self, key: str, path: Path, frames: np.ndarray, fps: float, step: int) -> None:
        """Send a video already saved at `path` (mp4, its `frames` [T, H, W, 3] uint8) to TensorBoard and wandb when
        they are on. TensorBoard shows moving images only as animated GIFs, so it gets one made from `frames`."""
        group, _ = _split_key(key)
        if self._tb_writer is not None:
            self._tb_writer.file_writer.add_summary(_gif_summary(key, frames, fps), step)
            self._tb_writer.flush()
        if self._wandb_run is not None:
            import wandb

            self._wandb_run.log({f"{group}/step": step, key: wandb.Video(str(path), format="mp4")})

    def _write(self, group: str, step: int, values: dict[str, float | int]) -> None:
        self._csv[group].write({"step": step, **values})
        print(self._console_line(group, step, values), flush=True)
        if self._tb_writer is not None:
            for name, value in values.items():
                self._tb_writer.add_scalar(f"{group}/{name}", value, step)
            self._tb_writer.flush()
        if self._wandb_run is not None:
            renamed = {self.wandb_names.get(f"{group}/{name}", f"{group}/{name}"): v for name, v in values.items()}
            self._wandb_run.log({f"{group}/step": step, **renamed})

    def _console_line(self, group: str, step: int, values: Mapping[str, float | int]) -> str:
        parts = [colored(f"| {group:<5}", GROUP_COLORS[group]), f"S: {step}"]
        for name, value in values.items():
            label, kind = self.console_formats.get(name, (name, "int" if isinstance(value, int) else "float"))
            parts.append(f"{label}: {format_value(value, kind)}")
        return " | ".join(parts)

    def close(self) -> None:
        """Dump nothing further; flush and close the CSVs, TensorBoard and wandb. Safe to call twice."""
        for csv_file in self._csv.values():
            csv_file.close()
        if self._tb_writer is not None:
            self._tb_writer.close()
            self._tb_writer = None
        if self._wandb_run is not None:
            self._wandb_run.finish()
            self._wandb_run = None

    def __enter__(self) -> Logger:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()
