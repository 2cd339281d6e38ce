"""Shared test setup and helpers: headless rendering, single-threaded torch (CI has 2 cores), the repo root on
sys.path, config composition, a CLI training run, the network sizes of every tiny run, and the `slow` marker."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

os.environ.setdefault("MUJOCO_GL", "egl")
# One thread per process: tests start training subprocesses side by side on 2 cores, and oversubscribed OpenMP
# threads spin-wait each other into a many-fold slowdown.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from config_schema import (  # noqa: E402
    TrainConfig,
    check_config,
    compose_checked,
)
from reward_model import RewardModel, reward_model_from_keys  # noqa: E402

# Columns that hold wall-clock figures, so two runs' logs differ in them and nowhere else.
TIME_COLUMNS = ["fps", "duration", "total_time"]
# Real networks, small enough that a tiny run takes seconds; each test file adds the schedule it needs.
SMALL_NETWORKS = [
    "double_q_critic.params.hidden_dim=32",
    "diag_gaussian_actor.params.hidden_dim=32",
    "reward_hidden_dim=32",
    "num_eval_episodes=1",
]


def compose_config(*overrides: str, hydra_config: bool = False) -> DictConfig:
    """The training config as `train_QPA.py` composes it from these command-line overrides."""
    with initialize_config_dir(config_dir=str(REPO_ROOT / "config"), version_base="1.3", job_name="train_QPA"):
        return compose("train_QPA", list(overrides), return_hydra_config=hydra_config)


def train(run_dir: Path, *overrides: str, check: bool = True) -> subprocess.CompletedProcess:
    """`python train_QPA.py overrides... hydra.run.dir=run_dir`; with check, the run must succeed."""
    command = [sys.executable, "train_QPA.py", *overrides, f"hydra.run.dir={run_dir}"]
    result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    if check:
        assert result.returncode == 0, result.stderr[-3000:]
    return result


@contextmanager
def small_filesystem(path: Path, size: str = "16m") -> Iterator[Path]:
    """A tmpfs of `size` mounted at `path` for the duration (needs root, as CI has): a real disk that fills up."""
    path.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], check=True)


def fill(filesystem: Path, leave: int = 0) -> Path:
    """Fill `filesystem` until at most `leave` bytes are free (0: until a write fails); returns the filler file
    (delete it to free them)."""
    filler = filesystem / "filler"
    stats = os.statvfs(filesystem)
    to_write = stats.f_bavail * stats.f_frsize - leave if leave else sys.maxsize
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
    try:
        while to_write > 0:
            to_write -= os.write(fd, bytes(min(to_write, 1 << 20)))
    except OSError:  # ENOSPC: full
        pass
    finally:
        os.close(fd)
    return filler


def pytest_configure(config) -> None:
    # The quick loop while editing is `pytest -m "not slow"`; CI and `make test` run everything.
    config.addinivalue_line("markers", "slow: trains in subprocesses or for hundreds of steps")


# RewardModel takes its config sections; these tests build one from config key names. The defaults are what the
# tests were written against (B-Pref's constructor defaults): a 3-member ensemble, 128-query batches, every
# episode kept and drawn from uniformly.
REWARD_MODEL_TEST_KEYS = {
    "ensemble_size": 3,
    "reward_batch": 128,
    "max_reward_buffer_size": 100,
    "max_feedback": 1400,
    "large_batch": 1,
    "query_scheme": "uniform",
    "history_episodes": None,
}


def make_reward_model(obs_dim: int, action_dim: int, **keys: Any) -> RewardModel:
    """A RewardModel from config keys (`segment=20`, `reward_batch=16`, `seed=3`, ...): REWARD_MODEL_TEST_KEYS, then
    the schema's defaults, for the rest."""
    return reward_model_from_keys(obs_dim, action_dim, **{**REWARD_MODEL_TEST_KEYS, **keys})


def load_config(*overrides: str) -> TrainConfig:
    """The typed, checked config of these command-line overrides, as `train_QPA.py` checks it (ConfigError)."""
    return check_config(compose_checked(list(overrides)))
