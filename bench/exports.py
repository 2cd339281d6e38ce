"""Train a sweep table's runs outside the work tree and export each into figure/reference/ as it finishes.

Long comparisons (bench/benchmark.py, bench/comparison.py) train for hours; a machine can be lost at any time. So
each run goes through scripts/sweep.py (a finished run is skipped, a stopped one resumes from its checkpoint), and
the moment it finishes its evaluations are written into an export-reference CSV of the checkout (and, on request,
committed), next to its query-alignment log: a new machine loses no finished run.
"""

from __future__ import annotations

import shlex
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.run_pool import RunPool  # noqa: E402
from plot import REFERENCE_COLUMNS, find_run_dirs, load_run  # noqa: E402
from utils import atomic_write_bytes  # noqa: E402

ALIGNMENT_COLUMNS = ("task", "method", "seed", "step", "query_log_likelihood", "history_log_likelihood")
EVAL_COLUMNS = [*REFERENCE_COLUMNS, "success_rate"]

RunKey = tuple[str, str, int]  # (task, method = the run's run_label or experiment, seed)


@dataclass(frozen=True)
class Exports:
    """Where a comparison's finished runs go: `evals` (export-reference columns) and `alignment` (query rounds)."""

    evals: Path
    alignment: Path

    @classmethod
    def named(cls, name: str, repo: Path = REPO) -> Exports:
        reference = repo / "figure" / "reference"
        return cls(reference / f"{name}.csv", reference / f"{name}_alignment.csv")

    def exported(self) -> set[RunKey]:
        if not self.evals.is_file():
            return set()
        return set(pd.read_csv(self.evals)[["task", "method", "seed"]].itertuples(index=False, name=None))

    def write(self, run_dir: Path) -> list[Path]:
        """The run's evaluations and alignment log into the two CSVs, replacing any earlier rows of that run."""
        run = load_run(run_dir)
        if run is None:
            raise ValueError(f"{run_dir} holds no run (config.yaml and eval.csv)")
        evals = run.evals.reindex(columns=["step", "total_feedback", "episode_reward", "success_rate"])
        replace_rows(self.evals, evals.assign(task=run.task, method=run.method, seed=run.seed), EVAL_COLUMNS)
        written = [self.evals]
        if "query_log_likelihood" in run.train:
            rounds = run.train.dropna(subset=["query_log_likelihood"]).reindex(columns=list(ALIGNMENT_COLUMNS[3:]))
            replace_rows(self.alignment, rounds.assign(task=run.task, method=run.method, seed=run.seed),
                         list(ALIGNMENT_COLUMNS))  # fmt: skip
            written.append(self.alignment)
        return written


def replace_rows(path: Path, rows: pd.DataFrame, columns: list[str]) -> None:
    """Write `rows` into the CSV at `path` in place of any rows of the same (task, method, seed), atomically."""
    table = rows
    if path.is_file():
        keys = rows[["task", "method", "seed"]].drop_duplicates()
        kept = pd.read_csv(path).merge(keys, on=["task", "method", "seed"], how="left", indicator=True)
        table = pd.concat([kept[kept["_merge"] == "left_only"].drop(columns="_merge"), rows], ignore_index=True)
    table = table.reindex(columns=columns)
    table = table.sort_values(["task", "method", "seed", "step"], kind="stable")
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, table.to_csv(index=False).encode())


def finished_runs(root: Path) -> dict[RunKey, Path]:
    """(task, method, seed) -> run directory, for every run under `root` trained to its last step."""
    found = {}
    for run_dir in find_run_dirs(root) if root.exists() else ():
        run = load_run(run_dir)
        if run is not None and int(run.evals["step"].iloc[-1]) >= int(run.config["num_train_steps"]):
            found[(run.task, run.method, run.seed)] = run_dir
    return found


def commit(paths: list[Path], repo: Path, message: str, lock: threading.Lock, tag: str) -> None:
    """Commit just these files; a commit that fails (another git process holds the index) leaves them exported,
    for the next one or a person to commit."""
    with lock:
        added = subprocess.run(["git", "add", *map(str, paths)], cwd=repo)
        done = added.returncode == 0 and subprocess.run(
            ["git", "commit", "-q", "-m", message, "--", *map(str, paths)], cwd=repo).returncode == 0  # fmt: skip
    if not done:
        print(f"[{tag}] not committed (exported): {', '.join(map(str, paths))}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class Planned:
    """One run of a sweep table: the table's task and method rows, the seed, and the (task, method, seed) its
    config will carry (the method is the row's run_label where it sets one)."""

    task_row: str
    method_row: str
    seed: int
    key: RunKey


def train_all(
    runs: list[Planned],
    table: Path,
    root: Path,
    jobs: int,
    extras: list[str],
    exports: Exports,
    commit_to: Path | None,
    tag: str,
) -> list[Planned]:
    """Train the runs neither finished under `root` nor exported already, `jobs` at a time; export each as it
    finishes (and commit it into the checkout `commit_to`). Runs finished earlier but never exported are exported
    first. An exported run counts as finished even where `root` no longer holds it (a new machine), so it is not
    trained again. Returns the failed; raises StoppedError when a signal stopped the training (bench/run_pool.py)."""
    done = finished_runs(root)
    exported = exports.exported()
    git = threading.Lock()

    def finish(run: Planned, run_dir: Path, message: str) -> None:
        written = exports.write(run_dir)
        if commit_to is not None:
            commit(written, commit_to, f"{tag}: {' '.join(map(str, run.key))} {message} ({run_dir})", git, tag)

    for run in runs:
        if run.key in done and run.key not in exported:  # finished while no export followed (a stopped comparison)
            finish(run, done[run.key], "exported")
    pending = [run for run in runs if run.key not in done and run.key not in exported]
    pool = RunPool(tag)

    def train(run: Planned) -> bool:
        if pool.stopped:
            return False
        command = [sys.executable, str(REPO / "scripts" / "sweep.py"), str(table), run.task_row, "--root", str(root),
                   "--methods", run.method_row, "--seeds", str(run.seed), "--", *extras]  # fmt: skip
        print(f"[{tag}] {' '.join(map(str, run.key))}: {shlex.join(command)}", flush=True)
        finished = pool.call(command, cwd=REPO) == 0
        run_dir = finished_runs(root).get(run.key)
        if not finished or run_dir is None:
            return False
        finish(run, run_dir, "finished")
        return True

    trained = pool.map(train, pending, jobs)  # in table order, `jobs` at a time
    failed = [run for run, ok in zip(pending, trained, strict=True) if not ok]
    for run in failed:
        print(f"[{tag}] {' '.join(map(str, run.key))} did not finish; see its run directory", file=sys.stderr)
    return failed
