"""The process around a training run: one writer per run directory, the signals that stop a run or ask it for a
checkpoint, status.json, and how a run ends (docs/RUNS.md, docs/RELIABILITY.md, docs/CLUSTER.md).

`run_training(cfg, work_dir, make_workspace)` is what train_QPA.py's Hydra entry point calls for each run: it takes
the run directory's lock, checks the config and the directory, trains, and leaves status.json saying how the run
ended; every way it can end is one line on stderr (or, in a --multirun, this job's failure).
"""

from __future__ import annotations

import _thread
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn, Protocol

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from command_line import check_boolean_overrides, import_modules, select_agent_config
from config_rules import ConfigError
from config_schema import TrainConfig, check_config
from run_dir import CHECKPOINT_NAME, RunRefusedError, prepare_run_dir, write_final_status, write_status
from run_lock import RunLock, RunLockedError
from run_summary import summarise_run
from teacher import TeacherError
from utils import NonFiniteError, WriteError


class RunFailedError(RuntimeError):
    """Ends one job of a --multirun sweep; its message is in the run directory's status.json."""


class Interrupted(BaseException):
    """SIGTERM (a scheduler's stop, `kill`) or SIGINT: the run ends, keeping its last checkpoint; SIGUSR2: the same,
    at the next episode end, after a checkpoint there."""


class Workspace(Protocol):
    """What the process needs of a training run (train_QPA.Workspace)."""

    step: int
    checkpointed_step: int | None

    def run(self, on_episode_end: Callable[[Workspace], None] | None = None) -> None: ...
    def save_checkpoint(self) -> None: ...
    def abort(self) -> None: ...


class Signals:
    """The run's signal handlers, installed while it trains.

    SIGINT, and SIGTERM outside SLURM, stop the run at once (Interrupted). SIGUSR2 (SLURM's warning before the time
    limit) asks for a checkpoint at the next episode end and then stops the run; in a submitit job the handler it
    replaced then requeues the job. SIGTERM inside a SLURM job (preemption, `scontrol requeue`, `scancel`) asks for
    the checkpoint and lets the run go on until SLURM kills it: SLURM requeues a preempted job only if it is still
    running when its grace time ends, so stopping early would lose the requeue. An episode end is where a resume is
    exact: training episodes are seeded by index, while a mid-episode simulator state is not saved.
    """

    def __init__(self) -> None:
        self.checkpoint_requests: set[signal.Signals] = set()
        self.replaced: dict[signal.Signals, Any] = {}

    @contextmanager
    def installed(self) -> Iterator[Signals]:
        in_slurm = "SLURM_JOB_ID" in os.environ
        handlers = {
            signal.SIGTERM: self.request_checkpoint if in_slurm else self.interrupt,
            signal.SIGINT: self.interrupt,
            signal.SIGUSR2: self.request_checkpoint,
        }
        self.replaced = {sig: signal.signal(sig, handler) for sig, handler in handlers.items()}
        try:
            yield self
        finally:
            for sig, handler in self.replaced.items():
                signal.signal(sig, handler)

    def interrupt(self, signum: int, frame: Any) -> NoReturn:
        raise Interrupted(signal.Signals(signum).name)

    def request_checkpoint(self, signum: int, frame: Any) -> None:
        self.checkpoint_requests.add(signal.Signals(signum))

    def at_episode_end(self, workspace: Workspace) -> None:
        """The checkpoint a signal asked for; SIGUSR2 then stops the run."""
        if not self.checkpoint_requests:
            return
        if workspace.checkpointed_step != workspace.step:
            workspace.save_checkpoint()
        if signal.SIGUSR2 in self.checkpoint_requests:
            raise Interrupted("SIGUSR2")
        self.checkpoint_requests.clear()

    def pass_on_sigusr2(self) -> None:
        """Call the SIGUSR2 handler this run replaced (submitit's requeues the SLURM job)."""
        if callable(self.replaced.get(signal.SIGUSR2)):
            self.replaced[signal.SIGUSR2](signal.SIGUSR2, None)


def run_training(cfg: DictConfig, work_dir: Path, make_workspace: Callable[[TrainConfig, Path], Workspace]) -> None:
    """One run in `work_dir`: its lock first (a second process on the directory must not touch it, status.json
    included), then `train`."""
    try:  # SIGINT's handler stops at once; in a SLURM job SIGTERM's would first write a checkpoint in the directory
        run_lock = RunLock(work_dir, on_lost=lambda holder: _thread.interrupt_main(signal.SIGINT))
    except (RunLockedError, WriteError) as error:
        stop(str(error))
    try:
        train(cfg, work_dir, run_lock, make_workspace)
    finally:
        run_lock.release()


def checked_config(cfg: DictConfig, work_dir: Path) -> TrainConfig | None:
    """The run's typed config, or None when its directory holds a finished run; stops with one line when the
    config or the directory cannot be used."""
    try:
        check_boolean_overrides(list(HydraConfig.get().overrides.task))  # a multirun's job too: -m skips it up front
        import_modules(cfg.get("imports") or [])  # a multirun's job imports its own
        cfg = select_agent_config(cfg)
        config = check_config(cfg)
        return config if prepare_run_dir(cfg, work_dir) else None
    except RunRefusedError as error:  # another run's directory: its status.json stays as that run left it
        stop(str(error))
    except ConfigError as error:
        write_final_status(work_dir, "failed", 0, str(error))
        stop(str(error))
    except WriteError as error:
        message = f"{error}; once it can be written, re-run the same command"
        write_final_status(work_dir, "failed", 0, message)
        stop(message)


def train(
    cfg: DictConfig, work_dir: Path, run_lock: RunLock, make_workspace: Callable[[TrainConfig, Path], Workspace]
) -> None:
    """Check the config and the run directory, train, and leave status.json saying how the run ended."""
    config = checked_config(cfg, work_dir)
    if config is None:
        return
    workspace = None
    signals = Signals()
    started = time.perf_counter()
    try:
        with signals.installed():
            workspace = make_workspace(config, work_dir)
            first_step = workspace.step
            write_status(work_dir, "running", workspace.step)
            workspace.run(on_episode_end=signals.at_episode_end)
        write_status(work_dir, "finished", workspace.step)
        print(summarise_run(work_dir, time.perf_counter() - started, first_step), flush=True)
    except Interrupted as signal_name:
        if run_lock.lost_to is not None:  # the directory is another process's now: write nothing more there
            stop(f"{run_lock.lost_to.describe()} took over {work_dir} after this run missed its heartbeats for "
                 f"{run_lock.stale_s:.0f} s (suspended?); this run stopped and left the directory to it")  # fmt: skip
        step = resume_step(workspace)
        write_final_status(work_dir, "interrupted", step, f"stopped by {signal_name}")
        if str(signal_name) == "SIGUSR2":
            signals.pass_on_sigusr2()
        # SystemExit even in a --multirun: a stopped sweep should stop, not go on to its next run.
        sys.exit(f"error: stopped by {signal_name}; re-run the same command to resume from step {step}")
    except WriteError as error:  # no space, quota, a read-only filesystem: earlier files and labels are whole
        step = resume_step(workspace)
        message = f"{error}; once it can be written, re-run the same command to resume from step {step}"
        write_final_status(work_dir, "failed", step, message)
        stop(message)
    except NonFiniteError as error:
        write_final_status(work_dir, "failed", resume_step(workspace), str(error))
        stop(f"{error}; the last good checkpoint is {work_dir / CHECKPOINT_NAME}")
    except TeacherError as error:
        write_final_status(work_dir, "failed", resume_step(workspace), str(error))
        stop(str(error))
    except BaseException as error:
        write_final_status(work_dir, "failed", resume_step(workspace), f"{type(error).__name__}: {error}")
        raise
    finally:
        if workspace is not None:
            workspace.abort()


def resume_step(workspace: Workspace | None) -> int:
    """The step a re-run resumes from (0 when no checkpoint was written)."""
    return (workspace.checkpointed_step or 0) if workspace is not None else 0


def stop(message: str) -> NoReturn:
    """End the run with a one-line error. In a --multirun, raise instead: sys.exit would end the whole sweep (the
    basic, joblib and submitit launchers all let SystemExit through), while Hydra records an exception as this
    job's failure and runs the other jobs."""
    if HydraConfig.get().mode == RunMode.MULTIRUN:
        raise RunFailedError(message)
    sys.exit(f"error: {message}")
