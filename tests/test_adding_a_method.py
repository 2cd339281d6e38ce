"""README, "Adding a method": a complete method defined in this file alone, with no product file edited. A query
scheme that ranks candidates by the current policy's log-likelihood, a feedback step that restarts the critic after
every round, and their method preset; a training run started from the command line picks all three up through the
`imports` key (`PYTHONPATH=tests python train_QPA.py imports=[test_adding_a_method] method=most_likely ...`)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from conftest import REPO_ROOT, load_config
from hydra.core.config_store import ConfigStore
from test_train import TINY

import feedback
import queries
from config_schema import ConfigError
from episodes import SegmentPairs
from feedback import Run
from queries import QueryContext
from teacher import QueryRound


@queries.register("most_likely", feed_type=42)
def most_likely(ctx: QueryContext) -> SegmentPairs:
    """Of `num` x `large_batch` candidates from the whole history, the `num` pairs whose steps the current policy
    finds likeliest on average."""
    candidates = ctx.sample_pairs(ctx.num * ctx.large_batch, ctx.history())
    score = ctx.log_likelihood(candidates).mean((1, 2))  # per-step log π(a|s), averaged over a pair
    return candidates.take(queries.top(score, ctx.num))


@feedback.register_step("reset_critic_every_round")
def reset_critic_every_round(run: Run, query_round: QueryRound) -> None:
    """A fresh critic after every round (PEBBLE and QPA restart it after the first only), warmed up on the
    relabelled buffer as they do."""
    run.agent.reset_critic()
    for index in range(run.cfg.reset_update):
        run.update_metrics = run.agent.update(lambda: run.sample(hybrid=False), index)
    run.logger.log("train/critic_resets", query_round.index + 1, run.step)


ConfigStore.instance().store(
    group="method",
    name="most_likely",
    package="_global_",
    node={
        "defaults": ["qpa", "_self_"],
        "method": "most_likely",
        "experiment": "MostLikely",
        "query_scheme": "most_likely",
        "feedback_steps": ["train_reward", "relabel", "reset_critic_every_round"],
    },
)

TOY = ["imports=[test_adding_a_method]", "method=most_likely"]


def test_the_toy_method_is_a_valid_config_only_with_its_imports() -> None:
    cfg = load_config(*TOY)
    assert (cfg.query_scheme, cfg.feedback_steps[-1], cfg.run_label) == ("most_likely", "reset_critic_every_round",
                                                                         "most_likely")  # fmt: skip
    assert load_config("imports=[test_adding_a_method]", "feed_type=42").scheme == "most_likely"  # B-Pref's numbers
    with pytest.raises(ConfigError, match=r"^imports=\['no_such_module'\] is invalid: importing no_such_module failed"):
        load_config("imports=[no_such_module]")
    with pytest.raises(ConfigError, match=r"^feedback_steps=\['reset_critic_evry_round'\] is invalid"):
        load_config("feedback_steps=[reset_critic_evry_round]")


def run_tiny(run_dir: Path, *overrides: str) -> pd.DataFrame:
    """A tiny walker_walk run from the command line, with tests/ on the Python path; its train.csv. Its two query
    rounds, at steps 1100 and 2100, fall in two episodes, so train.csv has a row for each."""
    schedule = [item for item in TINY if not item.startswith(("num_train_steps", "num_interact"))]
    command = [sys.executable, "train_QPA.py", "env=walker_walk", *schedule, "num_train_steps=3000",
               "num_interact=1000", "num_threads=1", *overrides, f"hydra.run.dir={run_dir}"]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT / "tests")}
    result = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return pd.read_csv(run_dir / "train.csv")


@pytest.mark.slow
def test_a_sweep_takes_the_toy_method(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHON": sys.executable, "PYTHONPATH": str(REPO_ROOT / "tests")}
    command = ["bash", "run_QPA.sh", "walker_walk", "--seeds", "1 2", "--dry-run", "--root", str(tmp_path), "--", *TOY]
    result = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    commands = result.stdout.splitlines()
    assert len(commands) == 2 and all("method=most_likely" in command for command in commands)


@pytest.mark.slow
def test_the_toy_method_runs_from_the_command_line_and_asks_likelier_queries(tmp_path: Path) -> None:
    toy = run_tiny(tmp_path / "toy", *TOY)
    uniform = run_tiny(tmp_path / "uniform", "query_scheme=uniform")
    rounds = toy.dropna(subset=["query_log_likelihood"])
    assert len(rounds) == 2 and toy.critic_resets.dropna().tolist() == [1, 2]  # two rounds, a restart after each
    # Both runs are the same until their first round (same seed, same policy): there the toy's queries are far
    # likelier under the policy than uniform ones from the same history, and than the history itself.
    first_toy = rounds.iloc[0]
    first_uniform = uniform.dropna(subset=["query_log_likelihood"]).iloc[0]
    assert first_toy.step == first_uniform.step
    assert first_toy.query_log_likelihood > first_uniform.query_log_likelihood + 10.0, (first_toy, first_uniform)
    assert (rounds.query_log_likelihood > rounds.history_log_likelihood).all()
    saved = (tmp_path / "toy" / "config.yaml").read_text()
    assert "run_label: most_likely" in saved and "query_scheme: most_likely" in saved
