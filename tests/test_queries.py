"""The query-selection registry: a scheme defined in this file alone (no product file edited) is validated,
named in the run directory and used by a real training run started from the command line (`imports` key)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import REPO_ROOT, load_config
from test_train import TINY

import queries
import registry
from config_schema import ConfigError
from episodes import SegmentPairs
from queries import QueryContext

TOY_SCHEME = "newest_episode"


@queries.register(TOY_SCHEME, recent_only=True)
def newest_episode(ctx: QueryContext) -> SegmentPairs:
    """Both segments of every pair from the newest stored episode; each call is noted in $TOY_SCHEME_LOG."""
    newest = ctx.recent_episodes(1)
    if "TOY_SCHEME_LOG" in os.environ:
        with open(os.environ["TOY_SCHEME_LOG"], "a") as log:
            log.write(json.dumps({"num": ctx.num, "episode_length": len(newest[0].reward)}) + "\n")
    return ctx.sample_pairs(ctx.num, newest)


def test_a_registered_scheme_is_a_valid_config_value_and_the_rest_are_not() -> None:
    load_config(f"query_scheme={TOY_SCHEME}")
    with pytest.raises(ConfigError, match=f"allowed: .*{TOY_SCHEME}"):
        load_config("query_scheme=newest_episodes")
    with pytest.raises(ValueError, match="already registered"):
        queries.register(TOY_SCHEME)(newest_episode)


def test_every_builtin_scheme_keeps_its_bpref_feed_type() -> None:
    builtin = {name: scheme for name, scheme in registry.QUERY_SCHEMES.items() if scheme.select.__module__ == "queries"}
    assert {number: name for number, name in registry.feed_types().items() if name in builtin} == {
        0: "uniform", 1: "disagreement", 2: "entropy", 3: "kcenter", 4: "kcenter_disagree", 5: "kcenter_entropy"
    }  # fmt: skip
    assert {name for name, scheme in builtin.items() if scheme.recent_only} == {"policy_aligned"}
    assert {name for name, scheme in builtin.items() if not scheme.uses_reward_model} == {"policy_aligned", "uniform"}


@pytest.mark.slow
def test_a_scheme_defined_in_a_test_runs_from_the_command_line(tmp_path: Path) -> None:
    root, log = tmp_path / "exp", tmp_path / "toy_calls.jsonl"
    command = [sys.executable, "train_QPA.py", "imports=[test_queries]", "env=walker_walk", *TINY,
               f"query_scheme={TOY_SCHEME}", "num_threads=1", f"hydra.run.dir={root}/${{method_dir:}}run"]  # fmt: skip
    env = {**os.environ, "TOY_SCHEME_LOG": str(log), "PYTHONPATH": str(REPO_ROOT / "tests")}
    result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    run_dir = root / f"qpa_query_scheme-{TOY_SCHEME}" / "run"
    evals = pd.read_csv(run_dir / "eval.csv")
    assert evals.total_feedback.iloc[-1] == 20
    calls = [json.loads(line) for line in log.read_text().splitlines()]
    assert [call["num"] for call in calls] == [10, 10]  # two rounds of reward_batch=10 (max_feedback=20)
    assert np.all([call["episode_length"] == 1000 for call in calls])
