"""Sweeps on a real single-node SLURM (scripts/slurm_local.sh: slurmctld, slurmd, slurmdbd, munge): a job array
with a failing run, a re-run that skips finished runs, and runs that SLURM requeues, signals before their time
limit, preempts or cancels, each resuming to the logs of the same run without interruption (docs/CLUSTER.md).

The cluster is started for these tests and stopped after them; it needs root and Debian's packages. Without them
the tests are skipped, except on CI, which installs them (.ci/run). There is one such cluster per machine, so
these tests run on one pytest-xdist worker (tests/conftest.py).
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import REPO_ROOT
from test_run_dir import assert_same_logs
from test_sweeps import RUN_NAME, TINY, status, summary, sweep, sweep_environment

pytestmark = pytest.mark.slow  # every test here trains in subprocesses

SLURM_LOCAL = REPO_ROOT / "scripts" / "slurm_local.sh"
# What a job asks of the test node: no GPU, and one core, so that at most two runs share two cores.
SLURM_JOB = ["hydra.launcher.gpus_per_node=null", "hydra.launcher.cpus_per_task=1", "hydra.launcher.mem_gb=1"]
# The interrupted runs: six 1000-step episodes, evaluated (and checkpointed) only at steps 0 and 6000, so that a
# checkpoint at any other episode end comes from a signal. The first two episodes are random actions, about a
# second each: signalled right after its step-0 checkpoint, a run reaches an episode end well within the 5 s the
# test cluster gives between SIGTERM and SIGKILL, and the four training episodes after them take longer than
# that, so SLURM ends the job mid-run.
INTERRUPTED = [*(item for item in TINY if not item.startswith(("eval_frequency=", "num_seed_steps="))),
               "num_seed_steps=2000", "eval_frequency=6000", "num_train_steps=6000"]  # fmt: skip
SIGNAL_STEPS = (1000, 2000, 3000, 4000, 5000)  # the episode ends without an evaluation


@pytest.fixture(scope="module")
def slurm() -> Iterator[dict[str, str]]:
    """The environment for SLURM's commands. The cluster starts here and stops after this module's last SLURM test,
    whatever its outcome; one that was already running (`scripts/slurm_local.sh start` by hand) is used and left
    running. Without root or the packages the tests are skipped, except on CI, where that is a failure."""
    local = ["bash", str(SLURM_LOCAL)]
    already = subprocess.run([*local, "status"], capture_output=True, text=True, timeout=60)
    output = already.stdout
    if already.returncode != 0:
        started = subprocess.run([*local, "start"], capture_output=True, text=True, timeout=300)
        if started.returncode == 3:  # not root, or a package missing: the script says which
            if os.environ.get("CI"):
                pytest.fail(f"CI runs the SLURM tests, but {started.stderr.strip()}")
            pytest.skip(started.stderr.strip())
        assert started.returncode == 0, started.stdout + started.stderr
        output = started.stdout
    (conf,) = re.findall(r"^export SLURM_CONF=(\S+)$", output, re.MULTILINE)
    try:
        yield {"SLURM_CONF": conf}
    finally:
        if already.returncode != 0:
            stopped = subprocess.run([*local, "stop"], capture_output=True, text=True, timeout=300)
            assert stopped.returncode == 0, stopped.stderr  # it names any job process that outlived its job


def slurm_command(slurm: dict[str, str], *command: str) -> str:
    result = subprocess.run(command, env={**os.environ, **slurm}, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, f"{shlex.join(command)}: {result.stderr}"
    return result.stdout


def queue_state(slurm: dict[str, str], job: str) -> str:
    """`squeue`'s state and reason of a job, empty once SLURM has ended it and its processes."""
    command = ["squeue", "-h", "-j", job, "-o", "%T %r"]
    result = subprocess.run(command, env={**os.environ, **slurm}, capture_output=True, text=True, timeout=60)
    return result.stdout.strip()


def accounting(slurm: dict[str, str], job: str, *options: str) -> list[str]:
    """sacct's lines about a job once the accounting database has its end, which slurmctld sends it a moment later."""
    command = ["sacct", "-X", "-n", "-P", *options, "-j", job]
    lines: list[str] = []

    def ended() -> bool:
        lines[:] = slurm_command(slurm, *command).splitlines()
        return bool(lines) and not any(line.endswith(("PENDING", "RUNNING", "COMPLETING")) for line in lines)

    wait_until(ended, f"the accounting database has the end of job {job}", timeout=60)
    return lines


def attempts(slurm: dict[str, str], job: str) -> list[str]:
    """How each run of a job ended, oldest first (sacct keeps a requeued job's earlier runs); CANCELLED without the
    canceller's user id."""
    return [line.split()[0] for line in accounting(slurm, job, "-D", "-o", "State")]


def wait_until_idle(slurm: dict[str, str]) -> None:
    """Until no job is left in the queue: a test's job may still be ending (its result written) when the next test
    starts, and a preemption needs the node to itself."""
    wait_until(lambda: slurm_command(slurm, "squeue", "-h") == "", "the cluster's earlier jobs have ended")


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        time.sleep(0.2)


def status_step(run_dir: Path) -> int:
    """The step of the run's last checkpoint, -1 before it has written a status."""
    return status(run_dir)["step"] if (run_dir / "status.json").exists() else -1


def latest_job(root: Path) -> str:
    """The job the latest sweep under root submitted for its one run: submitit keeps a folder per job id."""
    return max((path.name for path in (root / ".submitit").iterdir() if path.is_dir()), key=int)


def job_log(root: Path, job: str) -> str:
    """The run's stderr in the job, across every time SLURM ran it."""
    return (root / ".submitit" / job / f"{job}_0_log.err").read_text()


def resumed_step(log: str, run_dir: Path) -> int | None:
    match = re.search(rf"resumed from {re.escape(str(run_dir / 'checkpoint.pt'))} at step (\d+)", log)
    return int(match[1]) if match else None


def start_sweep(root: Path, slurm: dict[str, str] | None, *args: str) -> subprocess.Popen:
    """Seed 1 of walker_walk under root in the background; its output goes to root/sweep.out."""
    root.mkdir(parents=True, exist_ok=True)
    command = ["bash", str(REPO_ROOT / "run_QPA.sh"), "walker_walk", "--seeds", "1", "--root", str(root), *args]
    with (root / "sweep.out").open("w") as output:
        return subprocess.Popen(command, cwd=REPO_ROOT, env=sweep_environment(slurm), stdout=output,
                                stderr=subprocess.STDOUT)  # fmt: skip


def finish_sweep(process: subprocess.Popen, root: Path) -> str:
    process.wait(timeout=600)
    return (root / "sweep.out").read_text()


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[[], Path]]:
    """The interrupted runs' sweep run through without a stop, on this machine, beside the SLURM tests; the callable
    waits for it and returns its run directory."""
    root = tmp_path_factory.mktemp("uninterrupted")
    process = start_sweep(root, None, "--", *INTERRUPTED)

    def run_dir() -> Path:
        output = finish_sweep(process, root)
        assert process.returncode == 0, output[-3000:]
        return root / "walker_walk" / RUN_NAME.format(1)

    yield run_dir
    process.kill()
    process.wait()


def interrupted_sweep(slurm: dict[str, str], root: Path, interrupt: Callable[[str], None], *args: str) -> str:
    """A SLURM sweep of the interrupted run, interrupted right after its step-0 checkpoint, which must bring the job
    back in the queue to finish; returns the job id."""
    wait_until_idle(slurm)
    process = start_sweep(root, slurm, "--launcher", "slurm", "--", *INTERRUPTED, *SLURM_JOB, *args)
    try:
        run_dir = root / "walker_walk" / RUN_NAME.format(1)
        wait_until(lambda: status_step(run_dir) == 0 or process.poll() is not None, "the run has started")
        assert process.poll() is None, (root / "sweep.out").read_text()[-3000:]
        job = latest_job(root)
        interrupt(job)
        output = finish_sweep(process, root)
    finally:
        process.kill()
        process.wait()
    assert process.returncode == 0, output[-3000:]
    assert summary(output) == {1: ("finished", 6000, 6000)}
    return job


def test_slurm_local_says_why_it_cannot_start_here() -> None:
    """Exit status 3 and the reason, which the SLURM tests skip with (and fail with on CI)."""

    def start(*command: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        # the script on stdin, since a user other than the checkout's owner may not be allowed to read it there
        return subprocess.run([*command, "bash", "-s", "start"], input=SLURM_LOCAL.read_text(), env=env, cwd="/",
                              capture_output=True, text=True, timeout=60)  # fmt: skip

    if os.geteuid() == 0:
        no_daemons = start(env={**os.environ, "PATH": "/usr/bin:/bin"})
        assert no_daemons.returncode == 3, no_daemons.stderr
        assert "missing munged" in no_daemons.stderr and "apt-get install slurmctld" in no_daemons.stderr
        not_root = start("setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups")
    else:
        not_root = start()
    assert not_root.returncode == 3 and "needs root" in not_root.stderr, not_root.stderr


def test_sweep_runs_a_job_array_reports_the_failed_run_and_skips_finished_ones(slurm, tmp_path) -> None:
    """Seeds 1, 2, 4 as one array, two at a time; seed 4's directory holds logs of another run, so it fails."""
    stray = tmp_path / "walker_walk" / RUN_NAME.format(4)
    stray.mkdir(parents=True)
    (stray / "eval.csv").write_text("step,episode_reward\n0,1.0\n1000,2.0\n")
    args = ["walker_walk", "--launcher", "slurm", "--jobs", "2", "--seeds", "1 2 4", "--root", str(tmp_path),
            "--", "num_train_steps=1000", *TINY, *SLURM_JOB]  # fmt: skip
    expected = {1: ("finished", 1000, 1000), 2: ("finished", 1000, 1000), 4: ("failed", 0, 1000)}
    result = sweep(*args, env=slurm)
    assert result.returncode == 1, result.stdout[-3000:] + result.stderr[-3000:]
    assert summary(result.stdout) == expected
    assert "holds logs up to step 1000 but no checkpoint.pt" in result.stdout[result.stdout.rindex("[sweep] qpa:") :]
    listed = sweep("--summary", *args, env=slurm)
    assert listed.returncode == 1 and summary(listed.stdout) == expected

    (array,) = {path.name.split("_")[0] for path in (tmp_path / ".submitit").iterdir() if path.is_dir()}
    tasks = sorted(accounting(slurm, array, "-o", "JobID,State"))
    assert tasks == [f"{array}_{task}|COMPLETED" for task in range(3)]  # seed 4's failure is Hydra's
    script = (tmp_path / ".submitit" / array / f"{array}_submission.sh").read_text()
    for flag in ("--array=0-2%2", "--cpus-per-task=1", "--mem=1GB", "--job-name=train_QPA_walker_walk",
                 "--time=2880", "--signal=USR2@600", "--requeue"):  # fmt: skip
        assert f"#SBATCH {flag}\n" in script  # the launcher config as sbatch received it
    assert "--gpus-per-node" not in script and "--partition" not in script

    checkpoints = {path: path.stat().st_mtime_ns for path in (tmp_path / "walker_walk").glob("*/checkpoint.pt")}
    assert len(checkpoints) == 2
    again = sweep(*args, env=slurm)
    assert again.returncode == 1 and summary(again.stdout) == expected
    assert {path: path.stat().st_mtime_ns for path in checkpoints} == checkpoints  # skipped, not run again
    job_logs = "".join(path.read_text() for path in (tmp_path / ".submitit").rglob("*_log.err"))
    assert job_logs.count("already finished (1000 steps); nothing to do") == 2


def test_requeued_running_job_resumes_from_the_checkpoint_at_the_episode_end(slurm, uninterrupted, tmp_path) -> None:
    """`scontrol requeue`: SLURM sends SIGTERM, SIGKILL 5 s later, and runs the job again."""
    job = interrupted_sweep(slurm, tmp_path, lambda job: slurm_command(slurm, "scontrol", "requeue", job))
    assert attempts(slurm, job) == ["REQUEUED", "COMPLETED"]
    run_dir = tmp_path / "walker_walk" / RUN_NAME.format(1)
    assert resumed_step(job_log(tmp_path, job), run_dir) in SIGNAL_STEPS
    assert_same_logs(run_dir, uninterrupted())


def test_usr2_before_the_time_limit_checkpoints_and_submitit_requeues_the_job(slurm, uninterrupted, tmp_path) -> None:
    """SIGUSR2, which SLURM sends `signal_delay_s` before the time limit: the run stops at its episode end after a
    checkpoint there, and submitit's handler requeues the job."""
    job = interrupted_sweep(slurm, tmp_path, lambda job: slurm_command(slurm, "scancel", "--signal=USR2", job))
    assert attempts(slurm, job) == ["REQUEUED", "COMPLETED"]
    run_dir = tmp_path / "walker_walk" / RUN_NAME.format(1)
    log = job_log(tmp_path, job)
    assert "Caught signal SIGUSR2" in log and resumed_step(log, run_dir) in SIGNAL_STEPS
    assert_same_logs(run_dir, uninterrupted())


def test_preempted_job_is_requeued_and_resumes_from_the_checkpoint_at_the_episode_end(
    slurm, uninterrupted, tmp_path
) -> None:
    """A job of the preemptible partition gives way to an urgent one that needs the whole node: SIGTERM, then
    SIGKILL once the partition's 5 s grace time is over, and the job is back in the queue. The run checkpoints
    at its episode end and keeps running, since SLURM requeues only a job still running when its grace ends."""
    run_dir = tmp_path / "walker_walk" / RUN_NAME.format(1)
    cpus = slurm_command(slurm, "sinfo", "-h", "-N", "-p", "urgent", "-o", "%c").split()[0]

    def preempt(job: str) -> None:
        slurm_command(slurm, "sbatch", "-p", "urgent", "-c", cpus, "-o", "/dev/null", "--wrap", "true")
        wait_until(lambda: status_step(run_dir) in SIGNAL_STEPS, "the run's checkpoint at its episode end")
        # SLURM notices the end of a grace time at a periodic check, seconds late, and this tiny run could finish
        # first; stopped (SIGSTOP) after its checkpoint, the run is still there to be ended, as a long run would be.
        (task,) = (line.split()[0] for line in slurm_command(slurm, "scontrol", "listpids", job).splitlines()
                   if line.split()[2:4] == ["0", "0"])  # fmt: skip  # step 0, task 0: the run's process
        os.kill(int(task), signal.SIGSTOP)

    job = interrupted_sweep(slurm, tmp_path, preempt, "hydra.launcher.partition=preemptible")
    assert attempts(slurm, job) == ["PREEMPTED", "COMPLETED"]
    assert resumed_step(job_log(tmp_path, job), run_dir) in SIGNAL_STEPS
    assert_same_logs(run_dir, uninterrupted())


def test_cancelled_run_resumes_when_the_sweep_is_run_again(slurm, uninterrupted, tmp_path) -> None:
    """`scancel`: SIGTERM, SIGKILL 5 s later, and the sweep reports the run incomplete; run again, it resumes from
    the checkpoint the run wrote at its episode end after SIGTERM."""
    run_dir = tmp_path / "walker_walk" / RUN_NAME.format(1)
    args = ["--launcher", "slurm", "--", *INTERRUPTED, *SLURM_JOB]
    wait_until_idle(slurm)
    process = start_sweep(tmp_path, slurm, *args)
    try:
        wait_until(lambda: status_step(run_dir) == 0 or process.poll() is not None, "the run has started")
        assert process.poll() is None, (tmp_path / "sweep.out").read_text()[-3000:]
        cancelled = latest_job(tmp_path)
        slurm_command(slurm, "scancel", cancelled)
        output = finish_sweep(process, tmp_path)
    finally:
        process.kill()
        process.wait()
    assert process.returncode == 1, output[-3000:]
    assert summary(output)[1][0] in ("running", "incomplete")  # running: the job's process is still ending
    assert attempts(slurm, cancelled) == ["CANCELLED"]
    # SLURM lists a cancelled job until its processes have ended: only then may the run start again
    wait_until(lambda: queue_state(slurm, cancelled) == "", f"job {cancelled} has ended")
    listed = sweep("walker_walk", "--seeds", "1", "--root", str(tmp_path), "--summary", *args, env=slurm)
    assert summary(listed.stdout)[1][0] == "incomplete"

    again = sweep("walker_walk", "--seeds", "1", "--root", str(tmp_path), *args, env=slurm)
    assert again.returncode == 0, again.stdout[-3000:]
    assert summary(again.stdout) == {1: ("finished", 6000, 6000)}
    resumed = latest_job(tmp_path)
    assert resumed != cancelled and resumed_step(job_log(tmp_path, resumed), run_dir) in SIGNAL_STEPS
    assert_same_logs(run_dir, uninterrupted())
