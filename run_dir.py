"""A run directory: what it holds, whether a run may start or resume in it, and its status file.

A directory from an earlier run is resumed only when its config matches (except RESUME_MUTABLE_KEYS) and its files
are whole; otherwise the run stops with one line naming the file and the way out (README, "Checkpoint and resume").
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

import utils
from config_schema import ConfigError

CHECKPOINT_NAME = "checkpoint.pt"
CONFIG_NAME = "config.yaml"
LABELS_NAME = "labels.sqlite"  # a person's answers (human_teacher.py)
# status.json: {"state": running | finished | failed | interrupted, "step": last checkpoint, "error": ...}
STATUS_NAME = "status.json"
RUN_FILES = (CHECKPOINT_NAME, CONFIG_NAME, STATUS_NAME, "train.csv", "eval.csv")
# Keys a resumed run may change: the step budget (and the buffer sized from it) and where/how it runs.
RESUME_MUTABLE_KEYS = (
    "num_train_steps",
    "replay_buffer_capacity",
    "resume",
    "overwrite",
    "device",
    "strict_device",
    "num_threads",
    "wandb",
    "wandb_project",
    "wandb_entity",
    "log_save_tb",
    "save_model",
    "save_video",
    "video_evals",
    "video_height",
    "video_width",
    "video_fps",
    "human_host",
    "human_port",
    "human_timeout",
)


def flatten(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


class RunRefusedError(ConfigError):
    """The run directory holds another run, or this run with another config: nothing is touched, status kept."""


class RunDirDamagedError(ConfigError):
    """A file the run needs is missing or unreadable; the message says which and what to do."""


def prepare_run_dir(cfg: DictConfig, work_dir: Path) -> bool:
    """Check that `work_dir` may hold this run; save its config. Returns False when the run already finished.

    A directory from an earlier run is resumed only when its config matches (except RESUME_MUTABLE_KEYS) and its
    files are whole: a checkpoint that loads, the config it was saved with, and every evaluation row up to the
    checkpoint. Stale temp files of interrupted atomic writes are removed. A run that stopped before its first
    checkpoint had only evaluated the untrained policy, so it starts over.
    """
    config_path = work_dir / CONFIG_NAME
    checkpoint_path = work_dir / CHECKPOINT_NAME
    if cfg.overwrite:
        for name in RUN_FILES:
            (work_dir / name).unlink(missing_ok=True)
        shutil.rmtree(work_dir / "tb", ignore_errors=True)
        shutil.rmtree(work_dir / "video", ignore_errors=True)
        labels = work_dir / LABELS_NAME
        if labels.exists():  # a person's work is never deleted, only moved aside
            kept = labels.with_name(f"labels-replaced-{time.strftime('%Y%m%d-%H%M%S')}.sqlite")
            labels.rename(kept)
            print(f"overwrite=true: the earlier answers are kept in {kept}", file=sys.stderr)
    for stale in [*work_dir.glob(".*.tmp"), *work_dir.glob("video/.*.tmp")]:
        stale.unlink(missing_ok=True)
    logs = [work_dir / name for name in ("train.csv", "eval.csv") if (work_dir / name).exists()]
    resolved = OmegaConf.to_container(cfg, resolve=True)
    if (checkpoint_path.exists() or logs) and not cfg.resume:
        raise RunRefusedError(
            f"resume=false but {work_dir} already holds a run; pick another directory "
            "(hydra.run.dir=...) or start it over with overwrite=true"
        )
    if checkpoint_path.exists():
        compare_saved_config(work_dir, resolved)
        step, last_eval_step = checkpoint_position(checkpoint_path)
        if last_eval_step >= 0 and last_eval_step not in logged_steps(work_dir / "eval.csv"):
            raise RunDirDamagedError(
                f"{work_dir / 'eval.csv'} lacks the evaluation at step {last_eval_step} that {CHECKPOINT_NAME} "
                "was saved after; restore the file or start over with overwrite=true"
            )
        if step >= cfg.num_train_steps:
            print(f"{work_dir} already finished ({step} steps); nothing to do", file=sys.stderr)
            write_status(work_dir, "finished", step)
            return False
    elif logs:
        later = [step for path in logs for step in logged_steps(path) if step > 0]
        if later:
            raise RunDirDamagedError(
                f"{work_dir} holds logs up to step {max(later)} but no {CHECKPOINT_NAME}; restore it or start "
                "over with overwrite=true"
            )
        for path in logs:  # only the untrained policy's evaluation: nothing is lost by starting again
            path.unlink()
    work_dir.mkdir(parents=True, exist_ok=True)
    utils.atomic_write_bytes(config_path, OmegaConf.to_yaml(resolved).encode())
    return True


def compare_saved_config(work_dir: Path, current: dict[str, Any]) -> None:
    """Refuse to resume when the saved config is missing, unreadable or differs outside RESUME_MUTABLE_KEYS."""
    config_path = work_dir / CONFIG_NAME
    try:
        saved = flatten(OmegaConf.to_container(OmegaConf.load(config_path), resolve=True))
    except FileNotFoundError:
        raise RunDirDamagedError(
            f"{config_path} is missing beside {CHECKPOINT_NAME}; restore it or start over with overwrite=true"
        ) from None
    except Exception as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise RunDirDamagedError(
            f"{config_path} cannot be read ({reason}); restore it or start over with overwrite=true"
        ) from None
    flat = flatten(current)
    differing = sorted(
        key
        for key in saved.keys() | flat.keys()
        if saved.get(key) != flat.get(key)
        and not any(key == mutable or key.startswith(f"{mutable}.") for mutable in RESUME_MUTABLE_KEYS)
    )
    if differing:
        details = ", ".join(f"{key} ({saved.get(key)!r} -> {flat.get(key)!r})" for key in differing)
        raise RunRefusedError(f"refusing to resume {work_dir}: its saved config differs in {details}")


def checkpoint_position(path: Path) -> tuple[int, int]:
    """(step, last evaluation step) of a checkpoint; RunDirDamagedError when it does not load."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=False, mmap=True)
        return int(state["step"]), int(state["last_eval_step"])
    except Exception as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise RunDirDamagedError(
            f"{path} is damaged ({type(error).__name__}: {reason[:120]}); restore it or start over with overwrite=true"
        ) from None


def logged_steps(csv_path: Path) -> set[int]:
    """The steps of the complete rows of a log file (none when it is missing or empty)."""
    if not csv_path.exists():
        return set()
    lines = csv_path.read_text().splitlines(keepends=True)
    complete = [line for line in lines[1:] if line.endswith("\n")]
    steps = set()
    for line in complete:
        field = line.split(",", 1)[0]
        try:
            steps.add(int(float(field)))
        except ValueError:
            continue
    return steps


def write_status(work_dir: Path, state: str, step: int, error: str | None = None) -> None:
    status = {"state": state, "step": step, "error": error}
    utils.atomic_write_bytes(work_dir / STATUS_NAME, json.dumps(status).encode())
