"""docs/EXTENDING.md's worked example: examples/most_likely.py, a complete method in a module outside the repository
(copied to a temporary folder here), with its own keys, query scheme, feedback step, trigger and preset, picked up
from the command line through the `imports` key; no file of the repository is edited for it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from conftest import REPO_ROOT
from test_train import TINY

EXAMPLE = REPO_ROOT / "examples" / "most_likely.py"
TOY = ["imports=[most_likely]", "method=most_likely"]


@pytest.fixture(scope="module")
def module_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The example module alone in a folder outside the repository, as a user's own module would be."""
    folder = tmp_path_factory.mktemp("my_methods")
    shutil.copy(EXAMPLE, folder / "most_likely.py")
    assert not folder.resolve().is_relative_to(REPO_ROOT)
    return folder


def with_module(module_dir: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(module_dir), "PYTHON": sys.executable}


def train_command(run_dir: Path, *overrides: str, steps: int = 2200) -> list[str]:
    schedule = [item for item in TINY if not item.startswith(("num_train_steps", "num_interact"))]
    return [sys.executable, "train_QPA.py", "env=walker_walk", *schedule, f"num_train_steps={steps}",
            "num_interact=1000", "num_threads=1", *overrides, f"hydra.run.dir={run_dir}"]  # fmt: skip


CHECK_CONFIG = """
import sys
from command_line import compose_checked
from config_rules import ConfigError
from config_schema import check_config
cfg = check_config(compose_checked(["imports=[most_likely]", "method=most_likely", "most_likely_pool=7"]))
assert (cfg.query_scheme, cfg.feedback_steps[-1], cfg.most_likely_pool, cfg.q_limit) == (
    "most_likely", "restart_critic_on_high_q", 7, 100.0)
assert cfg.run_label == "most_likely_most_likely_pool-7"  # its key is a method switch: it names the runs
assert check_config(compose_checked(["imports=[most_likely]", "feed_type=42"])).scheme == "most_likely"
for overrides, message in [
    (["imports=[most_likely]", "q_limit=-1"], "q_limit=-1.0 is invalid: must be a number > 0.0"),
    (["imports=[no_such_module]"], "imports=['no_such_module'] is invalid: importing no_such_module failed"),
]:
    try:
        compose_checked(overrides)
    except ConfigError as error:
        assert str(error).startswith(message) and "\\n" not in str(error), error
    else:
        raise AssertionError(f"{overrides} was accepted")
print("ok")
"""


def test_the_method_is_a_valid_config_with_its_keys_only_with_its_module(module_dir: Path) -> None:
    result = subprocess.run([sys.executable, "-c", CHECK_CONFIG], cwd=REPO_ROOT, env=with_module(module_dir),
                            capture_output=True, text=True, timeout=300)  # fmt: skip
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-3000:]


@pytest.mark.parametrize(
    ("overrides", "error"),
    [
        ([*TOY, "most_likely_pool=0"], "error: most_likely_pool=0 is invalid: must be an integer >= 1"),
        (["q_limit=5"], "error: q_limit is not a config key (a new key needs +q_limit=...)"),  # not without imports
    ],
)
def test_a_bad_value_of_its_key_stops_the_command_line_in_one_line(module_dir, tmp_path, overrides, error) -> None:
    result = subprocess.run(train_command(tmp_path / "bad", *overrides), cwd=REPO_ROOT, env=with_module(module_dir),
                            capture_output=True, text=True, timeout=300)  # fmt: skip
    assert result.returncode != 0
    assert result.stderr.strip().splitlines()[-1] == error
    assert not (tmp_path / "bad" / "eval.csv").exists()


@pytest.mark.slow
def test_a_sweep_takes_the_method(module_dir: Path, tmp_path: Path) -> None:
    command = ["bash", "run_QPA.sh", "walker_walk", "--seeds", "1 2", "--dry-run", "--root", str(tmp_path), "--", *TOY]
    result = subprocess.run(command, cwd=REPO_ROOT, env=with_module(module_dir), capture_output=True, text=True,
                            timeout=300)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    commands = result.stdout.splitlines()
    assert len(commands) == 2 and all("method=most_likely" in command for command in commands)


def run_tiny(module_dir: Path, run_dir: Path, *overrides: str, steps: int = 2200) -> pd.DataFrame:
    """A tiny walker_walk run from the command line; its train.csv. Its query rounds, at steps 1100 and 2100, fall in
    the episodes that end at steps 2000 and 2200 (the run's end), so train.csv has a row for each."""
    result = subprocess.run(train_command(run_dir, *overrides, steps=steps), cwd=REPO_ROOT, env=with_module(module_dir),
                            capture_output=True, text=True, timeout=600)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return pd.read_csv(run_dir / "train.csv")


@pytest.mark.slow
def test_the_method_trains_from_the_command_line_asks_likelier_queries_and_its_trigger_fires(
    module_dir: Path, tmp_path: Path
) -> None:
    never = run_tiny(module_dir, tmp_path / "never", *TOY)  # q_limit 100: no critic this small gets there
    always = run_tiny(module_dir, tmp_path / "always", *TOY, "q_limit=1e-9")
    uniform = run_tiny(module_dir, tmp_path / "uniform", "query_scheme=uniform", steps=2000)  # its first round only
    rounds = never.dropna(subset=["query_log_likelihood"])
    assert len(rounds) == 2
    # The trigger watched |Q| on every update's batch from the first round on and restarted the critic at the
    # second round only where |Q| had passed its limit.
    assert never.critic_restarts.dropna().tolist() == [0, 0]
    assert always.critic_restarts.dropna().tolist() == [0, 1]
    # Same seed, same policy until the first round: there its queries are far likelier under the policy than
    # uniform ones from the same history, and than the history itself.
    first, first_uniform = rounds.iloc[0], uniform.dropna(subset=["query_log_likelihood"]).iloc[0]
    assert first.step == first_uniform.step
    assert first.query_log_likelihood > first_uniform.query_log_likelihood + 10.0, (first, first_uniform)
    assert (rounds.query_log_likelihood > rounds.history_log_likelihood).all()
    saved = (tmp_path / "always" / "config.yaml").read_text()
    assert "run_label: most_likely" in saved and "q_limit: 1.0e-09" in saved and "most_likely_pool: 10" in saved
