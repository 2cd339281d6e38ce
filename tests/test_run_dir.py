"""Run-directory integrity and resume exactness: damaged files, stale temp files, kills at seeded moments, SIGTERM,
one writer per directory, writes that fail (a full disk, a file size limit, permissions), and status.json after
every outcome. Every case is a real tiny walker_walk run driven through the CLI."""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import REPO_ROOT, TIME_COLUMNS, built_once, fill, small_filesystem, train
from test_train import TINY

pytestmark = pytest.mark.slow  # every test here trains in subprocesses

RUN = ["env=walker_walk", *TINY]


def status(run_dir: Path) -> dict:
    return json.loads((run_dir / "status.json").read_text())


def status_step(run_dir: Path) -> int:
    """The status's step, -1 before the run has written one."""
    return status(run_dir)["step"] if (run_dir / "status.json").exists() else -1


def logs_without_timings(run_dir: Path) -> dict[str, pd.DataFrame]:
    return {name: pd.read_csv(run_dir / name).drop(columns=TIME_COLUMNS, errors="ignore")
            for name in ("eval.csv", "train.csv")}  # fmt: skip


def assert_same_logs(run_dir: Path, reference: Path) -> None:
    for name, frame in logs_without_timings(run_dir).items():
        pd.testing.assert_frame_equal(frame, logs_without_timings(reference)[name], obj=name)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return built_once(tmp_path_factory, "finished", train_to_the_end)


def train_to_the_end(root: Path) -> Path:
    train(root / "run", *RUN)
    return root / "run"


def copy_run(source: Path, target: Path) -> Path:
    shutil.copytree(source, target)
    return target


def one_line_error(result: subprocess.CompletedProcess) -> str:
    assert result.returncode != 0
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    return result.stderr.strip().splitlines()[-1]


def test_a_runs_files_get_the_permissions_open_would_give_them(finished_run) -> None:
    """Written atomically through a temporary file, yet readable by whoever may read the directory: mkstemp's 0600
    is kept only for the labelling page's URL (tests/test_human_teacher.py)."""
    umask = os.umask(0)
    os.umask(umask)
    for name in ("checkpoint.pt", "config.yaml", "eval.csv", "train.csv", "status.json"):
        assert (finished_run / name).stat().st_mode & 0o777 == 0o666 & ~umask, name


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        ("truncated checkpoint", "checkpoint.pt is damaged"),
        ("empty checkpoint", "checkpoint.pt is damaged"),
        ("garbage checkpoint", "checkpoint.pt is damaged"),
        ("garbled config", "config.yaml cannot be read"),
        ("missing config", "config.yaml is missing"),
        ("missing eval.csv", "eval.csv lacks the evaluation at step 2000"),
        ("eval.csv cut short", "eval.csv lacks the evaluation at step 2000"),
    ],
)
def test_a_damaged_run_directory_is_reported_in_one_line(finished_run, tmp_path, damage, message) -> None:
    run_dir = copy_run(finished_run, tmp_path / "run")
    checkpoint = run_dir / "checkpoint.pt"
    if damage == "truncated checkpoint":
        checkpoint.write_bytes(checkpoint.read_bytes()[: checkpoint.stat().st_size // 2])
    elif damage == "empty checkpoint":
        checkpoint.write_bytes(b"")
    elif damage == "garbage checkpoint":
        checkpoint.write_bytes(np.random.default_rng(0).bytes(4096))
    elif damage == "garbled config":
        (run_dir / "config.yaml").write_text("env: [walker_walk\nseed: {")
    elif damage == "missing config":
        (run_dir / "config.yaml").unlink()
    elif damage == "missing eval.csv":
        (run_dir / "eval.csv").unlink()
    else:
        lines = (run_dir / "eval.csv").read_text().splitlines(keepends=True)
        (run_dir / "eval.csv").write_text("".join(lines[:-1]))
    line = one_line_error(train(run_dir, *RUN, check=False))
    assert line.startswith("error: ") and message in line and "overwrite=true" in line, line
    assert status(run_dir)["state"] == "failed" and message in status(run_dir)["error"]
    assert train(run_dir, *RUN, "overwrite=true").returncode == 0  # the way out the message names
    assert_same_logs(run_dir, finished_run)


def test_a_refused_resume_leaves_the_status_of_the_run_alone(finished_run, tmp_path) -> None:
    run_dir = copy_run(finished_run, tmp_path / "run")
    for change in ("segment=25", "resume=false"):
        line = one_line_error(train(run_dir, *RUN, change, check=False))
        assert "refusing to resume" in line or "resume=false" in line, line
        assert status(run_dir) == {"state": "finished", "step": 2000, "error": None}


def test_a_run_started_before_keys_were_added_resumes_while_they_keep_their_defaults(finished_run, tmp_path) -> None:
    added = ("ppe_kappa", "policer_tau", "cuda_graphs")  # keys of later issues than some users' runs
    for name in ("older", "changed"):
        run_dir = copy_run(finished_run, tmp_path / name)
        saved = yaml.safe_load((run_dir / "config.yaml").read_text())
        (run_dir / "config.yaml").write_text(yaml.safe_dump({k: v for k, v in saved.items() if k not in added}))
    train(tmp_path / "older", *RUN, "num_train_steps=2500")
    assert status(tmp_path / "older") == {"state": "finished", "step": 2500, "error": None}
    line = one_line_error(train(tmp_path / "changed", *RUN, "ppe_kappa=0.25", check=False))
    assert "refusing to resume" in line and "ppe_kappa (None -> 0.25)" in line, line


def test_a_config_that_cannot_be_written_stops_the_run_before_it_starts(tmp_path) -> None:
    run_dir = tmp_path / "run"
    (run_dir / "config.yaml").mkdir(parents=True)  # the atomic rename onto it fails: a real OS error, also for root
    line = one_line_error(train(run_dir, *RUN, check=False))
    reason = "[Errno 21] Is a directory"
    message = f"cannot write {run_dir / 'config.yaml'}: {reason}; once it can be written, re-run the same command"
    assert line == f"error: {message}"
    assert status(run_dir) == {"state": "failed", "step": 0, "error": message}


def test_stale_temp_files_are_removed_and_a_finished_run_stays_finished(finished_run, tmp_path) -> None:
    run_dir = copy_run(finished_run, tmp_path / "run")
    (run_dir / ".checkpoint.pt.x1y2.tmp").write_bytes(b"\0" * 1000)
    result = train(run_dir, *RUN)
    assert "already finished" in result.stderr
    assert not list(run_dir.glob(".*.tmp"))
    assert status(run_dir) == {"state": "finished", "step": 2000, "error": None}


def test_a_run_stopped_before_its_first_checkpoint_starts_over(finished_run, tmp_path) -> None:
    """Killed between the untrained policy's evaluation row and the first checkpoint (mid-write)."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    shutil.copy(finished_run / "config.yaml", run_dir)
    lines = (finished_run / "eval.csv").read_text().splitlines(keepends=True)
    (run_dir / "eval.csv").write_text("".join(lines[:2]))  # the step-0 row only
    (run_dir / ".checkpoint.pt.half.tmp").write_bytes(b"\0" * 100_000)
    train(run_dir, *RUN)
    assert not list(run_dir.glob(".*.tmp"))
    assert_same_logs(run_dir, finished_run)


def wait_for(predicate, process: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline and process.poll() is None and not predicate():
        time.sleep(0.05)
    assert process.poll() is None, "the run ended before the moment to stop it"


def start(run_dir: Path, *overrides: str) -> subprocess.Popen:
    command = [sys.executable, "train_QPA.py", *(overrides or RUN), f"hydra.run.dir={run_dir}"]
    return subprocess.Popen(command, cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


@pytest.mark.parametrize("delay", [0.0, 0.7, 2.3])
def test_sigkill_at_seeded_moments_then_rerun_gives_the_uninterrupted_logs(finished_run, tmp_path, delay) -> None:
    """Killed at the first write of eval.csv (before the step-0 checkpoint, or while it is being written) or a
    seeded moment after it, then re-run with the same command."""
    run_dir = tmp_path / "run"
    process = start(run_dir)
    wait_for(lambda: (run_dir / "eval.csv").exists(), process)
    time.sleep(delay)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    rerun = train(run_dir, *RUN)
    assert f"PID {process.pid} on host {socket.gethostname()}" in rerun.stderr  # its lock, taken over
    assert_same_logs(run_dir, finished_run)
    assert status(run_dir) == {"state": "finished", "step": 2000, "error": None}
    assert not list(run_dir.glob(".*.tmp"))


def test_sigterm_marks_the_run_interrupted_at_its_last_checkpoint_and_it_resumes(finished_run, tmp_path) -> None:
    run_dir = tmp_path / "run"
    process = start(run_dir)
    # status.json names step 1000 once the step-1000 checkpoint is written: stop during the next episode.
    wait_for(lambda: status_step(run_dir) == 1000, process)
    os.kill(process.pid, signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode != 0
    last_line = stderr.strip().splitlines()[-1]
    assert last_line == "error: stopped by SIGTERM; re-run the same command to resume from step 1000"
    assert status(run_dir) == {"state": "interrupted", "step": 1000, "error": "stopped by SIGTERM"}
    train(run_dir, *RUN)
    assert_same_logs(run_dir, finished_run)
    assert status(run_dir)["state"] == "finished"


def test_sigusr2_stops_at_the_next_episode_end_after_a_checkpoint_there_and_it_resumes(tmp_path) -> None:
    """SIGUSR2, what SLURM sends before a job's time limit (docs/CLUSTER.md): the run checkpoints at the end of the
    episode it is in, between two evaluations, and stops; the re-run continues from there exactly."""
    run = [*(item for item in RUN if not item.startswith("eval_frequency=")), "eval_frequency=2000"]
    reference = start(tmp_path / "reference", *run)  # beside the interrupted run: the machine has cores for both
    run_dir = tmp_path / "run"
    process = start(run_dir, *run)
    wait_for(lambda: status_step(run_dir) == 0, process)  # in the first episode, which ends at step 1000
    os.kill(process.pid, signal.SIGUSR2)
    _, stderr = process.communicate(timeout=300)
    last_line = stderr.strip().splitlines()[-1]
    assert last_line == "error: stopped by SIGUSR2; re-run the same command to resume from step 1000"
    assert status(run_dir) == {"state": "interrupted", "step": 1000, "error": "stopped by SIGUSR2"}
    assert list(pd.read_csv(run_dir / "eval.csv").step) == [0]  # the checkpoint came from the signal alone
    result = train(run_dir, *run)
    assert f"resumed from {run_dir / 'checkpoint.pt'} at step 1000" in result.stderr
    assert reference.wait(timeout=300) == 0, reference.stderr.read()[-3000:]
    assert_same_logs(run_dir, tmp_path / "reference")


def test_status_follows_the_last_checkpoint_while_running(tmp_path) -> None:
    run_dir = tmp_path / "run"
    process = start(run_dir)
    wait_for(lambda: status_step(run_dir) == 1000, process)
    assert status(run_dir) == {"state": "running", "step": 1000, "error": None}
    os.kill(process.pid, signal.SIGKILL)  # no handler runs: the status still names the step to resume from
    process.wait()
    assert status(run_dir) == {"state": "running", "step": 1000, "error": None}


def test_a_second_process_on_a_run_directory_is_refused_naming_the_first(finished_run, tmp_path) -> None:
    """The first run is suspended (as a scheduler may do) while the second starts: it holds the directory still."""
    run_dir = tmp_path / "run"
    first = start(run_dir)
    wait_for(lambda: status_step(run_dir) == 1000, first)
    first.send_signal(signal.SIGSTOP)
    try:
        before = (run_dir / "status.json").read_bytes()
        second = train(run_dir, *RUN, check=False)
    finally:
        first.send_signal(signal.SIGCONT)
    assert second.returncode == 1
    line = one_line_error(second)
    assert line.startswith(f"error: {run_dir} is in use by another run: PID {first.pid} on host {socket.gethostname()}"
                           ", since "), line  # fmt: skip
    assert "resumed" not in second.stderr
    assert (run_dir / "status.json").read_bytes() == before
    assert first.wait(300) == 0, first.stderr.read()[-3000:]
    assert_same_logs(run_dir, finished_run)


# fault, the file whose write fails, the OS error, who can cause it
FAULTS = [
    ("no space left", "train.csv", "[Errno 28] No space left on device", "root"),  # its header widens at 2000
    ("no room for a checkpoint", "checkpoint.pt", "[Errno 28] No space left on device", "root"),
    ("file size limit", "checkpoint.pt", "[Errno 27] File too large", "anyone"),
    ("permission denied", "train.csv", "[Errno 13] Permission denied", "not root"),  # root may write anyway
]


@pytest.mark.parametrize(("fault", "name", "reason", "who"), FAULTS)
def test_a_write_that_fails_stops_the_run_in_one_line_and_a_rerun_resumes_exactly(
    finished_run, tmp_path, fault, name, reason, who
) -> None:
    """A small filesystem (a tmpfs: needs root, as CI has) filled up, or a fault the kernel raises at the write
    call for anyone; status.json says failed even on the full disk."""
    root = os.geteuid() == 0
    if (who == "root" and not root) or (who == "not root" and root):
        pytest.skip(f"{fault}: needs {'root (to mount a small filesystem)' if who == 'root' else 'a user but root'}")
    with small_filesystem(tmp_path / "fs") if who == "root" else nullcontext(tmp_path) as filesystem:
        run_dir = filesystem / "run"
        process = start(run_dir)
        wait_for(lambda: status_step(run_dir) == 1000, process)
        process.send_signal(signal.SIGSTOP)  # the fault arrives between two writes, not during one
        filler = None
        if fault == "no space left":
            filler = fill(filesystem)
        elif fault == "no room for a checkpoint":  # the logs still fit
            filler = fill(filesystem, leave=300_000)
        elif fault == "file size limit":  # no file of the process may grow past 300 kB: the logs may, a checkpoint not
            resource.prlimit(process.pid, resource.RLIMIT_FSIZE, (300_000, 300_000))
        else:  # the logs are appended to, but every atomic write needs a new file
            run_dir.chmod(0o555)
        process.send_signal(signal.SIGCONT)
        _, stderr = process.communicate(timeout=300)
        message = f"cannot write {run_dir / name}: {reason}; once it can be written, re-run the same command to " \
                  "resume from step 1000"  # fmt: skip
        assert process.returncode == 1
        assert "Traceback" not in stderr, stderr[-3000:]
        assert stderr.strip().splitlines()[-1] == f"error: {message}"
        assert status(run_dir) == {"state": "failed", "step": 1000, "error": message}
        assert not list(run_dir.glob(".*.tmp"))
        if filler is not None:
            filler.unlink()
        run_dir.chmod(0o755)
        train(run_dir, *RUN)  # the file size limit was the stopped process's own
        assert_same_logs(run_dir, finished_run)
        assert status(run_dir) == {"state": "finished", "step": 2000, "error": None}
