"""A run directory: what it holds, whether a run may start or resume in it, and its status file.

A directory from an earlier run is resumed only when its config matches (except RESUME_MUTABLE_KEYS) and its files
are whole; otherwise the run stops with one line naming the file and the way out (docs/RUNS.md, "Checkpoint and
resume").
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

import utils
from config_rules import ConfigError
from config_schema import plain_defaults

CHECKPOINT_NAME = "checkpoint.pt"
# The layout of checkpoint.pt (train_QPA.Workspace.checkpointed_parts); a file of another layout is refused in one
# line. 2: one entry per part (schedule, episodes, preferences, reward model and trainer, teacher, ...), 2026-12.
CHECKPOINT_FORMAT = 2
CONFIG_NAME = "config.yaml"
LABELS_NAME = "labels.sqlite"  # a person's answers (human_teacher.py)
URL_NAME = "labelling_url.txt"  # the labelling page's URL with its token, while the page is up (teacher=human)
# status.json: {"state": running | finished | failed | interrupted, "step": last checkpoint, "error": ...}, and
# "labelling_url_file" while a labelling page is up; WAITING_KEYS while a run waits for a person's labels
STATUS_NAME = "status.json"
WAITING_KEYS = ("current_step", "waiting_for_labels")  # the step the run waits at, and how far the round is
RUN_FILES = (CHECKPOINT_NAME, CONFIG_NAME, STATUS_NAME, "train.csv", "eval.csv")
# Keys a resumed run may change: the step budget (and the buffer sized from it) and where/how it runs (`tf32` too,
# like `device`: both change the float rounding, and a run cut off on one machine may go on on another).
RESUME_MUTABLE_KEYS = (
    "num_train_steps",
    "replay_buffer_capacity",
    "resume",
    "overwrite",
    "device",
    "strict_device",
    "num_threads",
    "cuda_graphs",
    "tf32",
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
    "human_undo_window",
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
    (work_dir / URL_NAME).unlink(missing_ok=True)  # this run holds the directory: a page named there is gone
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
    """Refuse to resume when the saved config is missing, unreadable or differs outside RESUME_MUTABLE_KEYS. A key
    the saved config lacks (one added to the code since the run started) is no difference while it keeps its
    default: every key is added so that its default leaves earlier behaviour as it was."""
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
    defaults = plain_defaults()
    differing = sorted(
        key
        for key in saved.keys() | flat.keys()
        if saved.get(key) != flat.get(key)
        and not any(key == mutable or key.startswith(f"{mutable}.") for mutable in RESUME_MUTABLE_KEYS)
        and not (key not in saved and key in defaults and flat.get(key) == defaults[key])
    )
    if differing:
        details = ", ".join(f"{key} ({saved.get(key)!r} -> {flat.get(key)!r})" for key in differing)
        raise RunRefusedError(f"refusing to resume {work_dir}: its saved config differs in {details}")


def checkpoint_position(path: Path) -> tuple[int, int]:
    """(step, last evaluation step) of a checkpoint; RunDirDamagedError when it does not load or has another
    layout than this code writes."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=False, mmap=True)
        counters = state["counters"] if state.get("format") == CHECKPOINT_FORMAT else None
    except Exception as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise RunDirDamagedError(
            f"{path} is damaged ({type(error).__name__}: {reason[:120]}); restore it or start over with overwrite=true"
        ) from None
    if counters is None:
        raise RunDirDamagedError(
            f"{path} has checkpoint format {state.get('format', 1)}, this code reads format {CHECKPOINT_FORMAT}; "
            "resume it with the commit that wrote it, or start over with overwrite=true"
        )
    return int(counters["step"]), int(counters["last_eval_step"])


def save_checkpoint(path: Path, counters: dict[str, Any], parts: dict[str, Any]) -> None:
    """Write the run's counters and the state of each part atomically: the old file or the new, never half."""
    state = {"format": CHECKPOINT_FORMAT, "counters": counters}
    state |= {name: part.state_dict() for name, part in parts.items()}
    utils.atomic_torch_save(state, path)


def load_checkpoint(path: Path, device: torch.device, parts: dict[str, Any]) -> dict[str, Any]:
    """Restore each part from `path` (written by save_checkpoint) and return the counters."""
    state = torch.load(path, map_location=device, weights_only=False)
    for name, part in parts.items():
        part.load_state_dict(state[name])
    return state["counters"]


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


def status_bytes(
    work_dir: Path, state: str, step: int, error: str | None, waiting: dict[str, Any] | None = None
) -> bytes:
    status: dict[str, Any] = {"state": state, "step": step, "error": error}
    if state == "running":
        status.update(waiting or {})
        if (work_dir / URL_NAME).exists():
            status["labelling_url_file"] = str(work_dir / URL_NAME)
    return json.dumps(status).encode()


def write_status(
    work_dir: Path, state: str, step: int, error: str | None = None, waiting: dict[str, Any] | None = None
) -> None:
    """status.json, atomically; WriteError when it cannot be written. `waiting`: the WAITING_KEYS of a run that
    waits for a person's labels."""
    utils.atomic_write_bytes(work_dir / STATUS_NAME, status_bytes(work_dir, state, step, error, waiting))


def write_final_status(work_dir: Path, state: str, step: int, error: str) -> None:
    """The status of a run that stops with its own one-line message, as far as it can be written; never raises.

    A full disk has no room for the new file of an atomic write, but the old status.json has room for the new one:
    it is then overwritten in place. A crash in that instant could leave it torn, which its readers take for an
    unknown state; a status that says `running` for a run that stopped would mislead them every time."""
    data = status_bytes(work_dir, state, step, error)
    try:
        utils.atomic_write_bytes(work_dir / STATUS_NAME, data)
    except OSError:
        try:
            with open(work_dir / STATUS_NAME, "r+b") as handle:
                handle.write(data)
                handle.truncate()
                handle.flush()
                os.fsync(handle.fileno())
        except OSError:
            pass  # a read-only filesystem: the run's one-line message is all that can be said


def publish_url(work_dir: Path, url: str) -> Path:
    """Write the labelling page's URL to URL_NAME and name that file in status.json, so that the token survives a
    lost console. The URL holds the page's token, so the file is readable by its owner only (0600)."""
    path = work_dir / URL_NAME
    utils.atomic_write_bytes(path, f"{url}\n".encode(), private=True)
    status_path = work_dir / STATUS_NAME
    if status_path.exists():
        status = json.loads(status_path.read_text())
        waiting = {key: status[key] for key in WAITING_KEYS if key in status}
        write_status(work_dir, status["state"], status["step"], status["error"], waiting)
    return path


def withdraw_url(work_dir: Path, url: str) -> None:
    """The page is down: its URL file goes, unless it names another run's page by now (a run that took the directory
    over); the run's next status write drops the file's name. Never raises: the run is ending, and on a read-only
    filesystem the next run removes the file (`prepare_run_dir`)."""
    path = work_dir / URL_NAME
    with contextlib.suppress(OSError):
        if path.read_text() == f"{url}\n":
            path.unlink()
