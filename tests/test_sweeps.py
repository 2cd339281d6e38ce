"""run_QPA.sh / scripts/sweep.py: the paper's commands, joblib multiruns, resume, skip and failures (on SLURM:
tests/test_slurm.py).

The runs are real (walker_walk, real networks) with budgets small enough for CI.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO_ROOT, SMALL_NETWORKS, compose_config
from omegaconf import OmegaConf

from run_lock import RunLock

pytestmark = pytest.mark.slow  # every test here trains in subprocesses

# ALGORITHM.md §8, written out here independently of config/task/ and scripts/sweeps/qpa.yaml:
# task: (env, num_train_steps, lr, num_interact, max_feedback, reward_batch, Meta-World max_reward_buffer_size)
PAPER = {
    "walker_walk": ("walker_walk", 500_000, 5e-4, 20000, 100, 10, None),
    "cheetah_run": ("cheetah_run", 1_000_000, 5e-4, 20000, 100, 10, None),
    "walker_run": ("walker_run", 1_000_000, 5e-4, 20000, 250, 10, None),
    "quadruped_walk": ("quadruped_walk", 1_000_000, 1e-4, 30000, 1000, 100, None),
    "quadruped_run": ("quadruped_run", 1_000_000, 1e-4, 30000, 1000, 100, None),
    "humanoid_stand": ("humanoid_stand", 2_000_000, 1e-4, 5000, 10000, 50, None),
    "metaworld_drawer-open": ("metaworld_drawer-open-v3", 1_000_000, 1e-4, 5000, 3000, 30, 30),
    "metaworld_door-open": ("metaworld_door-open-v3", 1_000_000, 1e-4, 5000, 3000, 30, 60),
    "metaworld_door-unlock": ("metaworld_door-unlock-v3", 1_000_000, 1e-4, 20000, 2000, 100, 30),
}
PAPER_COMMON = {
    "gradient_update": 1, "activation": "tanh", "num_unsup_steps": 9000, "segment": 50, "ensemble_size": 1,
    "explore": "false", "her_ratio": 0.5, "teacher_beta": -1, "teacher_gamma": 1, "teacher_eps_mistake": 0,
    "teacher_eps_skip": 0, "teacher_eps_equal": 0,
}  # fmt: skip
SEEDS = [1, 2, 3, 4, 5]
# A complete run in seconds: random actions for the first episode, then one query batch and SAC updates. The
# replay buffer keeps one capacity across the budgets below, so every resume reloads the buffer exactly as saved.
TINY = [
    "num_seed_steps=1000", "num_unsup_steps=0", "num_interact=500", "max_feedback=20", "reward_batch=10",
    "reward_update=20", "segment=20", "eval_frequency=1000", "agent.params.batch_size=64",
    "replay_buffer_capacity=2000", *SMALL_NETWORKS,
]  # fmt: skip
RUN_NAME = "maxFeedback20_numInteract500_seed{}"
SUMMARY_LINE = re.compile(
    r"^\s+(finished|failed|running|incomplete|not started)\s+walker_walk seed (\d+)\s+(\d+)/(\d+) steps"
)


def paper_overrides(task: str) -> dict[str, float | str]:
    env, steps, lr, interact, feedback, batch, buffer_size = PAPER[task]
    expected = {**PAPER_COMMON, "env": env, "num_train_steps": steps, "agent.params.actor_lr": lr,
                "agent.params.critic_lr": lr, "num_interact": interact, "max_feedback": feedback,
                "reward_batch": batch}  # fmt: skip
    if buffer_size is None:
        expected.update(reward_update=2000, max_reward_buffer_size=10, data_aug_ratio=20)
    else:
        expected.update(reward_update=200, max_reward_buffer_size=buffer_size, num_eval_episodes=100)
    return {key: normalise(value) for key, value in expected.items()}


def normalise(value: object) -> float | str:
    if isinstance(value, bool):
        return str(value).lower()
    try:
        return float(value)
    except ValueError:
        return str(value)


def sweep_environment(env: dict[str, str] | None) -> dict[str, str]:
    return {**os.environ, "PYTHON": sys.executable, "MUJOCO_GL": "egl", "OMP_NUM_THREADS": "1", **(env or {})}


def sweep(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    command = ["bash", str(REPO_ROOT / "run_QPA.sh"), *args]
    return subprocess.run(command, capture_output=True, text=True, env=sweep_environment(env), timeout=600,
                          cwd=REPO_ROOT)  # fmt: skip


def summary(output: str) -> dict[int, tuple[str, int, int]]:
    """{seed: (state, step, target)} from the summary the sweep prints last."""
    tail = output[output.rindex("[sweep] qpa:") :]
    return {int(m[2]): (m[1], int(m[3]), int(m[4])) for line in tail.splitlines() if (m := SUMMARY_LINE.match(line))}


def status(run_dir: Path) -> dict:
    return json.loads((run_dir / "status.json").read_text())


@pytest.mark.parametrize("launcher", ["local", "joblib", "slurm"])
def test_dry_run_prints_the_paper_commands(launcher: str) -> None:
    result = sweep("--dry-run", "--launcher", launcher)
    assert result.returncode == 0, result.stderr
    commands = [shlex.split(line) for line in result.stdout.splitlines()]
    assert all(command[:2] == [sys.executable, "train_QPA.py"] for command in commands)
    found = {}
    for command in commands:
        overrides = dict(item.split("=", 1) for item in command[2:] if item != "--multirun")
        seeds = [int(seed) for seed in overrides.pop("seed").split(",")]
        if launcher == "local":
            assert "--multirun" not in command and len(seeds) == 1
        else:
            assert command[2] == "--multirun" and seeds == SEEDS
            assert overrides.pop("hydra/launcher") == launcher
            if launcher == "joblib":  # the parallel runs split the cores between them
                jobs, threads = int(overrides.pop("hydra.launcher.n_jobs")), int(overrides.pop("num_threads"))
                assert jobs >= 1 and threads == max(1, len(os.sched_getaffinity(0)) // jobs)
        assert overrides.pop("method") == "qpa" and not set(overrides) - {"task"}, overrides
        task = overrides["task"]
        cfg = compose_config(f"task={task}", "method=qpa")
        composed = {key: normalise(OmegaConf.select(cfg, key)) for key in paper_overrides(task)}
        assert composed == paper_overrides(task), task
        found.setdefault(task, []).extend(seeds)
    assert found == {task: SEEDS for task in PAPER}


def test_unknown_task_is_a_one_line_error() -> None:
    result = sweep("walker_wlak", "--dry-run")
    assert result.returncode == 2 and result.stdout == ""
    assert len(result.stderr.strip().splitlines()) == 1
    assert "walker_wlak" in result.stderr and all(task in result.stderr for task in PAPER)


@pytest.fixture(scope="module")
def joblib_sweep(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess]:
    """Seeds 4, 1, 2 of walker_walk, two at a time; seed 4's directory holds logs of another run, so it fails."""
    root = tmp_path_factory.mktemp("sweep")
    stray = root / "walker_walk" / RUN_NAME.format(4)
    stray.mkdir(parents=True)
    (stray / "eval.csv").write_text("step,episode_reward\n0,1.0\n1000,2.0\n")
    result = sweep("walker_walk", "--launcher", "joblib", "--jobs", "2", "--seeds", "4 1 2", "--root", str(root),
                   "--", "num_train_steps=1000", *TINY)  # fmt: skip
    return root, result


def test_joblib_sweep_finishes_every_run_but_the_failing_one(joblib_sweep) -> None:
    root, result = joblib_sweep
    output = result.stdout + result.stderr
    assert "hydra.launcher.n_jobs=2" in output
    assert result.returncode == 1  # not every run finished
    # seed 4 failed first, and the runs after it still ran
    assert summary(result.stdout) == {4: ("failed", 0, 1000), 1: ("finished", 1000, 1000), 2: ("finished", 1000, 1000)}
    assert "holds logs up to step 1000 but no checkpoint.pt" in result.stdout[result.stdout.rindex("[sweep] qpa:") :]
    assert status(root / "walker_walk" / RUN_NAME.format(4))["state"] == "failed"
    for seed in (1, 2):
        run_dir = root / "walker_walk" / RUN_NAME.format(seed)
        assert {"config.yaml", "train.csv", "eval.csv", "checkpoint.pt"} <= {p.name for p in run_dir.iterdir()}
        assert status(run_dir) == {"state": "finished", "step": 1000, "error": None}
        saved_config = (run_dir / "config.yaml").read_text()
        assert f"seed: {seed}" in saved_config
        assert f"num_threads: {max(1, len(os.sched_getaffinity(0)) // 2)}" in saved_config  # cores split 2 ways
    assert (root / "sweep_logs" / "qpa" / "walker_walk.log").stat().st_size > 0


def test_rerun_resumes_an_interrupted_run(joblib_sweep) -> None:
    root, _ = joblib_sweep
    seed2 = root / "walker_walk" / RUN_NAME.format(2)
    # A larger budget makes the finished run interrupted; the local launcher resumes it from its checkpoint.
    result = sweep("walker_walk", "--seeds", "2", "--root", str(root), "--", "num_train_steps=2000", *TINY)
    assert result.returncode == 0, result.stdout[-3000:]
    assert f"resumed from {seed2 / 'checkpoint.pt'} at step 1000" in result.stdout
    assert summary(result.stdout) == {2: ("finished", 2000, 2000)}
    assert (root / "sweep_logs" / "qpa" / "walker_walk_seed2.log").is_file()


def test_the_summary_names_the_process_that_holds_a_run(joblib_sweep) -> None:
    """A run another process holds (a sweep started twice, a requeued job whose old copy lives) shows as running,
    with its holder; a second launch of it would be refused by train_QPA.py itself (tests/test_run_dir.py)."""
    root, _ = joblib_sweep
    lock = RunLock(root / "walker_walk" / RUN_NAME.format(1))
    try:
        result = sweep("walker_walk", "--seeds", "1 2", "--root", str(root), "--summary", "--",
                       "num_train_steps=9000", *TINY)  # fmt: skip
    finally:
        lock.release()
    assert summary(result.stdout)[1][0] == "running" and summary(result.stdout)[2][0] == "incomplete"
    assert f"held by PID {os.getpid()} on host {socket.gethostname()}, since" in result.stdout
    assert result.returncode == 1


@pytest.mark.parametrize("table", ["benchmark", "compare_quick", "noisy_teachers", "pilot", "successors"])
def test_every_run_of_the_cpu_scale_tables_composes_into_a_checked_config(table) -> None:
    """A table's typo (a key, a value, a preset on the wrong family) fails here, not hours into a long comparison.
    (Of the paper-scale tables, qpa is composed task by task above, policer and ppe run by run in
    test_successors.py; baselines and ablations are not composed by any test.)"""
    sys.path.insert(0, str(REPO_ROOT / "scripts"))
    import sweep
    from conftest import load_config

    runs = sweep.plan_runs(sweep.load_table(table), [], [], [1], [])
    assert runs
    for run in runs:
        load_config(*run.overrides, "seed=1")
