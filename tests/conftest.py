"""Shared test setup and helpers: headless rendering, single-threaded torch (CI has 2 cores), the repo root on
sys.path, config composition, a CLI training run, the network sizes of every tiny run, the `slow` marker, and the
modules one pytest-xdist worker runs whole (the SLURM tests, the demo's)."""

from __future__ import annotations

import dataclasses
import os
import pickle
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import Any, TypeVar

import pytest
from filelock import FileLock
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

os.environ.setdefault("MUJOCO_GL", "egl")
# One thread per process: tests start training subprocesses side by side on 2 cores, and oversubscribed OpenMP
# threads spin-wait each other into a many-fold slowdown.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
# The tests' runs are outside SLURM even when pytest itself runs in a SLURM job, where train_QPA.py answers SIGTERM
# with a checkpoint instead of stopping (the SLURM tests' jobs get their own job id).
os.environ.pop("SLURM_JOB_ID", None)

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

import registry  # noqa: E402
import train_QPA  # noqa: E402
from command_line import compose_checked  # noqa: E402
from config_rules import ConfigError, default_of  # noqa: E402
from config_schema import QueryConfig, RewardConfig, TeacherConfig, TrainConfig, check_config  # noqa: E402
from episodes import EpisodeStore, SegmentPairs  # noqa: E402
from methods.surf import SurfKeys, pseudo_label_term  # noqa: E402
from preferences import PreferenceDataset  # noqa: E402
from queries import QueryContext  # noqa: E402
from reward_trainer import RewardSeeds  # noqa: E402
from teacher import ScriptedTeacher  # noqa: E402

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


Built = TypeVar("Built")


def built_once(tmp_path_factory: pytest.TempPathFactory, name: str, build: Callable[[Path], Built]) -> Built:
    """A module fixture's expensive runs made once per test session instead of once per pytest-xdist worker whose
    tests ask for it (pytest-xdist's documented recipe): the first worker builds them in a directory every worker
    sees, under a file lock, and the others wait for its pickled result. Its tests only read what it built."""
    if "PYTEST_XDIST_WORKER" not in os.environ:
        return build(tmp_path_factory.mktemp(name))
    shared = tmp_path_factory.getbasetemp().parent / name  # the parent of the workers' own temporary directories
    with FileLock(f"{shared}.lock"):
        result = shared.with_suffix(".pickle")
        if result.exists():
            return pickle.loads(result.read_bytes())
        shutil.rmtree(shared, ignore_errors=True)  # what a worker whose build failed left
        shared.mkdir()
        built = build(shared)
        result.write_bytes(pickle.dumps(built))
        return built


# test_slurm.py's tests share the machine's one SLURM cluster. Every test of test_demo.py but two quick ones reads the
# demo run: spread over both workers, the second would wait idle while the first trains it.
ONE_WORKER_MODULES = ("test_slurm.py", "test_demo.py")


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """`-n auto` (Makefile) spreads the tests one by one over the workers, except those of a module in
    `ONE_WORKER_MODULES`, which one worker runs together. (xdist's `--dist loadgroup` would, but under pytest 9.2 it
    groups nothing: pytest-xdist issue 1386.)"""
    if config.getvalue("dist") != "load":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class ModulesTogether(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            module = nodeid.split("::", 1)[0]
            return module if module.rsplit("/", 1)[-1] in ONE_WORKER_MODULES else nodeid

    return ModulesTogether(config, log)


def pytest_configure(config) -> None:
    # The quick loop while editing is `pytest -m "not slow"`; CI and `make test` run everything.
    config.addinivalue_line("markers", "slow: trains in subprocesses or for hundreds of steps")


# The preference-learning parts take their config sections; these tests build them from config key names. The
# defaults are what the tests were written against (B-Pref's constructor defaults): a 3-member ensemble, 128-query
# batches, every episode kept and drawn from uniformly.
REWARD_MODEL_TEST_KEYS = {
    "ensemble_size": 3,
    "reward_batch": 128,
    "max_reward_buffer_size": 100,
    "max_feedback": 1400,
    "large_batch": 1,
    "query_scheme": "uniform",
    "history_episodes": None,
}


class PreferenceLearner:
    """The preference-learning parts of a run (episode store, labelled pairs, reward ensemble and trainer, query
    stream, scripted teacher), built by train_QPA's own builders and wired as its loop wires them, for the tests that
    drive them without an environment: `query` selects with a registered scheme, labels with the teacher and stores."""

    def __init__(self, obs_dim: int, action_dim: int, device: str = "cpu", seed: int = 0, **keys: Any) -> None:
        sections = [
            section(**{name: value for name, value in keys.items() if name in section.__dataclass_fields__})
            for section in (RewardConfig, QueryConfig, TeacherConfig)
        ]
        unknown = set(keys).difference(*(section.__dataclass_fields__ for section in (*sections, SurfKeys)))
        if unknown:
            raise ConfigError(f"{sorted(unknown)[0]} is not a preference-learning config key")
        self.reward_cfg, self.query_cfg, teacher_cfg = sections
        seeds = RewardSeeds.of(seed)
        self.device = torch.device(device)
        self.episodes = EpisodeStore(obs_dim, action_dim, self.query_cfg.history_size)
        self.preferences = PreferenceDataset(self.reward_cfg.segment, obs_dim + action_dim,
                                             self.query_cfg.max_feedback, self.device)  # fmt: skip
        self.model = train_QPA.make_reward_model(self.reward_cfg, obs_dim + action_dim, self.device, seeds.net)
        # SURF's term, as its extension adds it in a training run
        surf = {item.name: keys.get(item.name, default_of(item)) for item in dataclasses.fields(SurfKeys)}
        settings = SimpleNamespace(**vars(self.reward_cfg), **surf)
        terms = []
        if surf["semi_supervised"]:
            terms.append(pseudo_label_term(settings, self.episodes, self.device, seeds.extension))
        self.trainer = train_QPA.make_reward_trainer(self.reward_cfg, self.model, self.preferences, seeds, terms)
        self.rng = np.random.default_rng(seeds.queries)
        self.teacher = ScriptedTeacher(teacher_cfg.teacher_beta, teacher_cfg.teacher_gamma,
                                       teacher_cfg.teacher_eps_mistake, teacher_cfg.teacher_eps_skip,
                                       teacher_cfg.teacher_eps_equal, seeds.teacher)  # fmt: skip

    def add_data(self, obs: np.ndarray, action: np.ndarray, reward: float, done: bool) -> None:
        self.episodes.add(obs, action, reward, done)

    def context(self, num: int | None = None) -> QueryContext:
        cfg = self.query_cfg
        return QueryContext(cfg.reward_batch if num is None else num, self.episodes, self.reward_cfg.segment,
                            cfg.max_reward_buffer_size, cfg.large_batch, float(cfg.explore or 0.0), self.rng,
                            self.model, self.preferences.data()[0], policy=None)  # fmt: skip

    def select(self, scheme: str, num: int | None = None) -> SegmentPairs:
        return registry.QUERY_SCHEMES[scheme].select(self.context(num))

    def query(self, scheme: str = "policy_aligned", num: int | None = None) -> int:
        """One round with the scripted teacher: select, label, store; returns how many were labelled."""
        queried = self.select(scheme, num)
        keep, labels = self.teacher.label(queried.rewards[:, 0], queried.rewards[:, 1])
        self.preferences.add(queried.pairs[keep], labels)
        return len(keep)

    def state_dict(self) -> dict[str, Any]:
        parts = ("episodes", "preferences", "model", "trainer", "teacher")
        return {name: getattr(self, name).state_dict() for name in parts} | {"rng": self.rng.bit_generator.state}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for name in ("episodes", "preferences", "model", "trainer", "teacher"):
            getattr(self, name).load_state_dict(state[name])
        self.rng.bit_generator.state = state["rng"]


def make_reward_model(obs_dim: int, action_dim: int, **keys: Any) -> PreferenceLearner:
    """The preference-learning parts from config keys (`segment=20`, `reward_batch=16`, `seed=3`, ...):
    REWARD_MODEL_TEST_KEYS, then the schema's defaults, for the rest."""
    return PreferenceLearner(obs_dim, action_dim, **{**REWARD_MODEL_TEST_KEYS, **keys})


def load_config(*overrides: str) -> TrainConfig:
    """The typed, checked config of these command-line overrides, as `train_QPA.py` checks it (ConfigError)."""
    return check_config(compose_checked(list(overrides)))
