"""The long comparisons' runner (bench/exports.py, bench/comparison.py, bench/benchmark.py): each run trained through
the sweep, exported into the checkout's figure/reference/ as it finishes, never trained twice, and the report made
from the exports alone."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml
from conftest import REPO_ROOT, SMALL_NETWORKS

from bench import benchmark
from bench.comparison import planned
from bench.run_pool import RunPool, StoppedError

# The comparison's own schedule cut short, on small networks: what is tested is the running, not the learning.
SHORT = ["num_train_steps=1400", "num_seed_steps=300", "num_unsup_steps=700", "num_interact=300", "max_feedback=20",
         "reward_batch=10", "segment=20", "reward_update=20", "agent.params.batch_size=64", *SMALL_NETWORKS,
         "num_threads=1", "device=cpu"]  # fmt: skip


def comparison(*args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "bench/comparison.py", *args]
    return subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=900)


@pytest.mark.slow
def test_a_comparison_trains_exports_each_run_and_reports_from_the_exports(tmp_path) -> None:
    root, repo = tmp_path / "runs", tmp_path / "checkout"
    table = ["compare_quick", "--methods", "qpa", "sac_true", "--seeds", "2", "--root", str(root)]
    # Stopped with SIGUSR2 once its first run has a checkpoint: that run stops at its episode end after a checkpoint
    # there, no other run starts, and the same command goes on from there.
    stopped = subprocess.Popen([sys.executable, "bench/comparison.py", *table, "--jobs", "1", "--repo", str(repo),
                                "--", *SHORT], cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               text=True)  # fmt: skip
    deadline = time.time() + 300
    while time.time() < deadline and stopped.poll() is None and not list(root.rglob("checkpoint.pt")):
        time.sleep(0.1)
    os.kill(stopped.pid, signal.SIGUSR2)
    _, stderr = stopped.communicate(timeout=300)
    assert stopped.returncode == 130, stderr[-3000:]
    assert stderr.strip().splitlines()[-1] == ("[compare_quick] stopped by a signal: re-run the same command to go "
                                               "on from the runs' checkpoints")  # fmt: skip
    (status,) = root.rglob("status.json")
    assert json.loads(status.read_text())["state"] == "interrupted"
    assert yaml.safe_load((status.parent / "config.yaml").read_text())["method"] == "qpa"  # the first in order
    trained = comparison(*table, "--jobs", "2", "--repo", str(repo), "--", *SHORT)
    assert trained.returncode == 0, trained.stderr[-3000:]
    assert f"resumed from {status.parent / 'checkpoint.pt'}" in trained.stdout
    exported = pd.read_csv(repo / "figure" / "reference" / "compare_quick.csv")
    assert set(exported[["method", "seed"]].itertuples(index=False, name=None)) == {
        ("qpa", 1), ("qpa", 2), ("sac_true", 1), ("sac_true", 2)}  # fmt: skip
    assert (exported.groupby(["method", "seed"]).step.max() == 1400).all()
    alignment = pd.read_csv(repo / "figure" / "reference" / "compare_quick_alignment.csv")
    assert set(alignment.method) == {"qpa"} and alignment.query_log_likelihood.notna().all()
    # A second call finds every run finished: nothing is trained again.
    again = comparison(*table, "--jobs", "1", "--repo", str(repo), "--", *SHORT)
    assert again.returncode == 0 and "train_QPA.py" not in again.stdout
    # Nor on a new machine, where the runs directory is gone and the checkout's exports remain.
    shutil.rmtree(root)
    moved = comparison(*table, "--jobs", "1", "--repo", str(repo), "--", *SHORT)
    assert moved.returncode == 0 and "train_QPA.py" not in moved.stdout, moved.stderr[-3000:]
    reported = comparison("compare_quick", "--report", "--against", "sac_true:qpa", "--repo", str(repo))
    assert reported.returncode == 0, reported.stderr
    finals = exported[exported.step == 1400].groupby("method").episode_reward.mean()
    difference = finals["sac_true"] - finals["qpa"]
    assert f"| sac_true - qpa | {difference:+.1f} |" in reported.stdout
    assert (repo / "figure" / "compare_quick" / "walker_walk.png").is_file()
    # Runs of another schedule are refused in one line, not averaged with these.
    mixed = comparison("compare_quick", "--report", "--repo", str(repo),
                       "--with", f"{REPO_ROOT}/figure/reference/compare_quick.csv:pebble")  # fmt: skip
    assert mixed.returncode == 2 and "end at different steps [1400, 60000]" in mixed.stderr


CHILD = """import pathlib, signal, sys, time
out = pathlib.Path(sys.argv[1])
for sig in (signal.SIGINT, signal.SIGUSR2):
    signal.signal(sig, lambda signum, frame: (out.write_text(signal.Signals(signum).name), sys.exit(1)))
out.with_suffix(".started").touch()
time.sleep(120)
"""


@pytest.mark.parametrize(("sent", "passed_on"), [("SIGINT", "SIGINT"), ("SIGTERM", "SIGINT"), ("SIGUSR2", "SIGUSR2")])
def test_a_signal_stops_the_run_pool_reaches_each_running_child_and_starts_no_other(
    tmp_path, capsys, sent, passed_on
) -> None:
    pool = RunPool("tiny")

    def send() -> None:
        while not (tmp_path / "first.started").exists():
            time.sleep(0.02)
        os.kill(os.getpid(), signal.Signals[sent])

    threading.Thread(target=send, daemon=True).start()
    before = signal.getsignal(signal.Signals[sent])
    with pytest.raises(StoppedError):
        pool.map(lambda name: pool.call([sys.executable, "-c", CHILD, str(tmp_path / name)]), ["first", "second"], 1)
    assert (tmp_path / "first").read_text() == passed_on
    assert not (tmp_path / "second.started").exists()
    assert signal.getsignal(signal.Signals[sent]) == before  # the caller's handler is back
    assert (
        capsys.readouterr().err
        == "[tiny] stopped by a signal: re-run the same command to go on from the runs' checkpoints\n"
    )


def test_a_table_row_with_a_run_label_is_planned_under_that_label() -> None:
    runs = planned("noisy_teachers", "walker_walk", ["rime_mistake", "mrn"], 2)
    assert [run.key for run in runs] == [("walker_walk", "rime_mistake", 1), ("walker_walk", "mrn", 1),
                                         ("walker_walk", "rime_mistake", 2), ("walker_walk", "mrn", 2)]  # fmt: skip
    assert "run_label=rime_mistake" in subprocess.run(
        [sys.executable, "scripts/sweep.py", "noisy_teachers", "walker_walk", "--methods", "rime_mistake", "--dry-run"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=120).stdout  # fmt: skip


def test_the_benchmark_plans_sac_first_then_seed_by_seed() -> None:
    keys = [run.key for run in benchmark.planned(["walker_walk", "cheetah_run"], seeds=2, sac_seeds=2)]
    assert keys[:2] == [("walker_walk", "sac_true", 1), ("cheetah_run", "sac_true", 1)]
    assert keys[2:6] == [("walker_walk", "qpa", 1), ("walker_walk", "pebble", 1), ("cheetah_run", "qpa", 1),
                         ("cheetah_run", "pebble", 1)]  # fmt: skip
    assert ("walker_walk", "sac_true", 2) in keys[6:] and len(keys) == 12
    # Meta-World tasks take their own number of seeds; the order stays seed by seed.
    keys = [run.key for run in benchmark.planned(["walker_walk", "metaworld_button-press-v3"], seeds=3, sac_seeds=1,
                                                 metaworld_seeds=1)]  # fmt: skip
    assert keys.count(("metaworld_button-press-v3", "qpa", 1)) == 1
    assert not any(task.startswith("metaworld") and seed > 1 for task, _, seed in keys)
    assert [key for key in keys if key[0] == "walker_walk" and key[1] == "qpa"] == [
        ("walker_walk", "qpa", seed) for seed in (1, 2, 3)]  # fmt: skip


def test_the_benchmark_report_is_made_from_its_exports_alone(tmp_path: Path) -> None:
    """The shipped exports (figure/reference/benchmark.csv) copied into an empty checkout give the report."""
    reference = tmp_path / "figure" / "reference"
    reference.mkdir(parents=True)
    shipped = pd.read_csv(REPO_ROOT / "figure" / "reference" / "benchmark.csv")
    task, method, seed = shipped.iloc[0][["task", "method", "seed"]]
    run = shipped[(shipped.task == task) & (shipped.method == method) & (shipped.seed == seed)]
    # Two seeds of SAC and of a second method, so that every column of the report has something to show.
    table = pd.concat([run.assign(seed=offset + 1, method=method, episode_reward=run.episode_reward + offset)
                       for offset in (0, 10) for method in ("sac_true", "qpa")], ignore_index=True)  # fmt: skip
    table.to_csv(reference / "benchmark.csv", index=False)
    text = benchmark.report(tmp_path)
    assert f"| {task} | return | qpa | 2 |" in text and "IQM of normalised scores, qpa" in text
    finals = table.groupby(["method", "seed"]).episode_reward.last()
    qpa, sac = (finals[method].to_numpy() for method in ("qpa", "sac_true"))
    assert (
        f"| {task} (return) | {qpa.mean():.1f} ± {qpa.std():.1f} (n=2) |  | {sac.mean():.1f} ± {sac.std():.1f} "
        "(n=2) |  |"
    ) in text  # one row per task, the README's; no PEBBLE runs, so no difference
    assert (tmp_path / "figure" / "benchmark" / "benchmark.png").is_file()


def test_a_partial_table_with_more_seeds_on_some_tasks_gives_the_probability_of_improvement() -> None:
    """rliable takes one number of runs per method: the seeds every task has are used, the extra ones left out."""
    rows = [
        ("walker_walk", "qpa", 1, 0.9),
        ("walker_walk", "qpa", 2, 0.1),
        ("cheetah_run", "qpa", 1, 0.8),
        ("walker_walk", "pebble", 1, 0.5),
        ("cheetah_run", "pebble", 1, 0.6),
        ("cheetah_run", "pebble", 2, 0.7),
    ]
    scores = pd.DataFrame(rows, columns=["task", "method", "seed", "score"])
    tasks = ["cheetah_run", "walker_walk"]
    assert benchmark.score_matrix(scores, "qpa", tasks).tolist() == [[0.8, 0.9]]
    point, low, high, used = benchmark.probability_of_improvement(scores, "qpa", "pebble")
    assert (point, low, high, used) == (1.0, 1.0, 1.0, 2)  # seed 1 of each: QPA ahead on both tasks


def test_the_human_render_benchmark_prints_its_figures(capsys) -> None:
    """bench/bench_human_render.py on one short walker_walk segment: recording, memory and rendering figures."""
    from bench import bench_human_render

    bench_human_render.measure("walker_walk", segment=3, queries=2, recent=2, history=4)
    line = capsys.readouterr().out.strip()
    figures = re.fullmatch(
        r"walker_walk: record [\d.]+ us/step, ([\d.]+) MB/episode -> ([\d.]+) MB for QPA's N=2, \d+ MB for "
        r"history_episodes=4; render \d+ ms/frame, [\d.]+ s per query \(2 x 3 frames, \d+ kB of JPEG\), \d+ s per "
        r"round of 2",
        line,
    )
    assert figures, line
    assert float(figures[1]) > 0.3 and abs(float(figures[2]) - 2 * float(figures[1])) <= 0.1, line  # N=2 episodes
