"""QPA against PEBBLE on several tasks of the QPA paper at CPU scale, with SAC on the true reward as the ceiling.

    python bench/benchmark.py --root ~/runs/benchmark --jobs 2 --commit      # train what is missing, export each
    python bench/benchmark.py --report                                       # the tables and figure, from exports
    python bench/benchmark.py --root /tmp/b --tasks walker_walk --seeds 2 --sac-seeds 1 -- num_train_steps=3000

Trains the runs of scripts/sweeps/benchmark.yaml (--tasks of it; QPA and PEBBLE at --seeds seeds, SAC on the true
reward at --sac-seeds), --jobs at a time with one torch thread each, each through scripts/sweep.py, so a finished run
is skipped and a stopped one resumes from its checkpoint. Runs live under --root, outside the work tree. As each
run finishes, its evaluations go into figure/reference/benchmark.csv and its query-alignment log into
figure/reference/benchmark_alignment.csv (with --commit, committed at once), so a new machine loses no finished run.

--report reads only those two files: per task, each method's final return (Meta-World: success rate), mean ± std,
IQM with its 95% interval, QPA − PEBBLE with a 95% percentile-bootstrap interval, and the log-likelihood under the
policy of the queried segments against the history; across tasks, rliable's IQM of scores normalised between the
random policy (0) and SAC on the true reward (1), and the probability that QPA improves on PEBBLE, with stratified
bootstrap intervals. It writes figure/benchmark/ (results.md, the figure with a panel per task, the CSV tables).
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.compare_quick import difference_ci  # noqa: E402
from plot import (  # noqa: E402
    REFERENCE_COLUMNS,
    Run,
    draw_curves,
    final_scores,
    find_run_dirs,
    iqm_table,
    load_reference,
    load_run,
    random_policy_scores,
)
from utils import atomic_write_bytes, is_metaworld  # noqa: E402

TABLE = REPO / "scripts" / "sweeps" / "benchmark.yaml"
REFERENCE = REPO / "figure" / "reference"
EVALS_CSV = REFERENCE / "benchmark.csv"
ALIGNMENT_CSV = REFERENCE / "benchmark_alignment.csv"
OUT_DIR = REPO / "figure" / "benchmark"
ALIGNMENT_COLUMNS = ("task", "method", "seed", "step", "query_log_likelihood", "history_log_likelihood")
PREFERENCE_METHODS = ("qpa", "pebble")
RANDOM_EPISODES = 10
BOOTSTRAP_REPS = 10_000


def load_tasks(path: Path = TABLE) -> dict[str, list[str]]:
    """Task (its environment name) -> its overrides."""
    return {name: shlex.split(text) for name, text in yaml.safe_load(path.read_text())["tasks"].items()}


def planned(tasks: list[str], seeds: int, sac_seeds: int) -> list[tuple[str, str, int]]:
    """(task, method, seed) in training order: seed by seed, so that partial results cover every task and method;
    SAC's first seed first on each task, as the pilot that checks the task learns at this budget."""
    runs = [(task, "sac_true", 1) for task in tasks if sac_seeds >= 1]
    for seed in range(1, seeds + 1):
        runs += [(task, method, seed) for task in tasks for method in PREFERENCE_METHODS]
        runs += [(task, "sac_true", seed) for task in tasks if 1 < seed <= sac_seeds]
    return runs


def finished_runs(root: Path) -> dict[tuple[str, str, int], Path]:
    """(task, method, seed) -> run directory, for every run under `root` trained to its last step."""
    found = {}
    for run_dir in find_run_dirs(root) if root.exists() else ():
        run = load_run(run_dir)
        if run is not None and int(run.evals["step"].iloc[-1]) >= int(run.config["num_train_steps"]):
            found[(run.task, run.method, run.seed)] = run_dir
    return found


def replace_rows(path: Path, rows: pd.DataFrame, columns: list[str]) -> None:
    """Write `rows` into the CSV at `path` in place of any rows of the same (task, method, seed), atomically."""
    old = pd.read_csv(path) if path.is_file() else pd.DataFrame(columns=columns)
    keys = rows[["task", "method", "seed"]].drop_duplicates()
    kept = old.merge(keys, on=["task", "method", "seed"], how="left", indicator=True)
    kept = kept[kept["_merge"] == "left_only"].drop(columns="_merge")
    table = pd.concat([kept, rows], ignore_index=True).reindex(columns=columns)
    table = table.sort_values(["task", "method", "seed", "step"], kind="stable")
    atomic_write_bytes(path, table.to_csv(index=False).encode())


def export(run_dir: Path, repo: Path) -> list[Path]:
    """The run's evaluations and alignment log into the benchmark's reference CSVs of the checkout `repo`."""
    run = load_run(run_dir)
    assert run is not None
    evals = run.evals.reindex(columns=["step", "total_feedback", "episode_reward", "success_rate"])
    evals = evals.assign(task=run.task, method=run.method, seed=run.seed)
    evals_csv, alignment_csv = (repo / path.relative_to(REPO) for path in (EVALS_CSV, ALIGNMENT_CSV))
    replace_rows(evals_csv, evals, [*REFERENCE_COLUMNS, "success_rate"])
    written = [evals_csv]
    if "query_log_likelihood" in run.train:
        rounds = run.train.dropna(subset=["query_log_likelihood"]).reindex(columns=list(ALIGNMENT_COLUMNS[3:]))
        replace_rows(alignment_csv, rounds.assign(task=run.task, method=run.method, seed=run.seed),
                     list(ALIGNMENT_COLUMNS))  # fmt: skip
        written.append(alignment_csv)
    return written


def commit(paths: list[Path], repo: Path, message: str, lock: threading.Lock) -> None:
    """Commit just these files; a commit that fails (another git process holds the index) leaves them exported,
    for the next one or a person to commit."""
    with lock:
        added = subprocess.run(["git", "add", *map(str, paths)], cwd=repo)
        done = added.returncode == 0 and subprocess.run(
            ["git", "commit", "-q", "-m", message, "--", *map(str, paths)], cwd=repo).returncode == 0  # fmt: skip
    if not done:
        print(f"[benchmark] not committed (exported): {', '.join(map(str, paths))}", file=sys.stderr, flush=True)


def train_all(
    runs: list[tuple[str, str, int]], root: Path, jobs: int, extras: list[str], repo: Path, commit_exports: bool
) -> list[tuple[str, str, int]]:
    """Train the runs not finished yet, `jobs` at a time; export (and commit) each as it finishes. The failed."""
    done = finished_runs(root)
    pending = [run for run in runs if run not in done]
    failed: list[tuple[str, str, int]] = []
    take, git = threading.Lock(), threading.Lock()
    evals_csv = repo / EVALS_CSV.relative_to(REPO)
    exported = set()
    if evals_csv.is_file():
        exported = set(pd.read_csv(evals_csv)[["task", "method", "seed"]].itertuples(index=False, name=None))
    for run, run_dir in done.items():  # finished while no export followed (a stopped benchmark)
        if run in runs and run not in exported:
            written = export(run_dir, repo)
            if commit_exports:
                commit(written, repo, f"benchmark: {' '.join(map(str, run))} exported from {run_dir}", git)

    def worker() -> None:
        while True:
            with take:
                if not pending:
                    return
                task, method, seed = pending.pop(0)
            command = [sys.executable, str(REPO / "scripts" / "sweep.py"), str(TABLE), task, "--root", str(root),
                       "--methods", method, "--seeds", str(seed), "--", *extras]  # fmt: skip
            print(f"[benchmark] {task} {method} seed {seed}: {shlex.join(command)}", flush=True)
            finished = subprocess.run(command, cwd=REPO).returncode == 0
            run_dir = finished_runs(root).get((task, method, seed))
            if not finished or run_dir is None:
                failed.append((task, method, seed))
                continue
            written = export(run_dir, repo)
            if commit_exports:
                commit(written, repo, f"benchmark: {task} {method} seed {seed} finished (exported from {run_dir})", git)

    threads = [threading.Thread(target=worker) for _ in range(jobs)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for task, method, seed in failed:
        print(f"[benchmark] {task} {method} seed {seed} did not finish; see its run directory", file=sys.stderr)
    return failed


# ---------------------------------------------------------------------------------------------------- the report
def probability_of_improvement(scores: pd.DataFrame, better: str, worse: str) -> tuple[float, float, float]:
    """rliable's P(better > worse) over the tasks both have, with a 95% stratified-bootstrap interval."""
    from rliable import library as rly
    from rliable import metrics

    tasks = sorted(set(scores.loc[scores.method == better, "task"]) & set(scores.loc[scores.method == worse, "task"]))
    matrices = {
        method: np.stack([scores.loc[(scores.method == method) & (scores.task == task), "score"].to_numpy()
                          for task in tasks], axis=1)  # [seeds, tasks]
        for method in (better, worse)
    }  # fmt: skip
    saved = np.random.get_state()
    np.random.seed(0)
    try:
        point, interval = rly.get_interval_estimates(
            {f"{better},{worse}": (matrices[better], matrices[worse])}, metrics.probability_of_improvement,
            reps=2000,
        )  # fmt: skip
    finally:
        np.random.set_state(saved)
    key = f"{better},{worse}"
    low, high = np.ravel(interval[key])
    return float(np.ravel(point[key])[0]), float(low), float(high)


def normalised(scores: pd.DataFrame) -> pd.DataFrame:
    """Each final score between the task's random policy (0) and the mean of SAC on the true reward (1)."""
    rows = []
    for task, group in scores.groupby("task"):
        metric = group["metric"].iloc[0]
        random = random_policy_scores(task, RANDOM_EPISODES)[metric]
        ceiling = group.loc[group.method == "sac_true", "final"].mean()
        rows.append(group.assign(score=(group["final"] - random) / (ceiling - random), random=random, ceiling=ceiling))
    return pd.concat(rows, ignore_index=True)


def report(repo: Path = REPO) -> str:
    """The benchmark's tables and figure from the exported CSVs of the checkout `repo`, into its figure/benchmark/;
    returns the Markdown written to results.md."""
    evals_csv, alignment_csv, out_dir = (repo / path.relative_to(REPO) for path in (EVALS_CSV, ALIGNMENT_CSV, OUT_DIR))
    runs: list[Run] = load_reference(evals_csv)
    scores = normalised(final_scores(runs))
    alignment = pd.read_csv(alignment_csv) if alignment_csv.is_file() else pd.DataFrame(columns=ALIGNMENT_COLUMNS)
    lines = ["| task | metric | method | seeds | final (mean ± std) | IQM [95% CI] | log π queried vs history |",
             "|---|---|---|---|---|---|---|"]  # fmt: skip
    differences = ["| task | QPA - PEBBLE, final | 95% bootstrap CI | QPA ahead on seed pairs |", "|---|---|---|---|"]
    for task, group in scores.groupby("task", sort=False):
        iqm = iqm_table(group.drop(columns="score"), normalise="none", reps=BOOTSTRAP_REPS).set_index("method")
        metric = "success %" if group["metric"].iloc[0] == "success_rate" else "return"
        for method in ("qpa", "pebble", "sac_true"):
            values = group.loc[group.method == method].sort_values("seed")["final"].to_numpy()
            if values.size == 0:
                continue
            logged = alignment[(alignment.task == task) & (alignment.method == method)]
            aligned = (f"{logged.query_log_likelihood.mean():.1f} vs {logged.history_log_likelihood.mean():.1f}"
                       if len(logged) else "")  # fmt: skip
            row = iqm.loc[method]
            lines.append(f"| {task} | {metric} | {method} | {values.size} | {values.mean():.1f} ± {values.std():.1f} "
                         f"| {row.iqm:.1f} [{row.ci_low:.1f}, {row.ci_high:.1f}] | {aligned} |")  # fmt: skip
        qpa = group.loc[group.method == "qpa"].set_index("seed")["final"]
        pebble = group.loc[group.method == "pebble"].set_index("seed")["final"]
        if len(qpa) >= 2 and len(pebble) >= 2:
            low, high = difference_ci(qpa.to_numpy(), pebble.to_numpy())
            paired = qpa.index.intersection(pebble.index)
            ahead = int((qpa[paired] > pebble[paired]).sum())
            differences.append(f"| {task} | {qpa.mean() - pebble.mean():+.1f} | [{low:+.1f}, {high:+.1f}] | "
                               f"{ahead} of {len(paired)} |")  # fmt: skip
    aggregate = iqm_table(scores.assign(final=scores["score"]).drop(columns="score"), normalise="none",
                          reps=BOOTSTRAP_REPS)  # fmt: skip
    text = "\n".join(["## Per task", "", *lines, "", *differences, "", "## Across tasks", ""])
    text += "\n".join(f"- IQM of normalised scores, {row.method}: {row.iqm:.2f} [{row.ci_low:.2f}, {row.ci_high:.2f}]"
                      f" ({row.tasks} tasks, {row.runs} runs)" for row in aggregate.itertuples())  # fmt: skip
    preference = scores[scores.method.isin(PREFERENCE_METHODS)]
    if preference.method.nunique() == 2:
        point, low, high = probability_of_improvement(preference, "qpa", "pebble")
        text += f"\n- P(QPA > PEBBLE): {point:.2f} [{low:.2f}, {high:.2f}]"
    text += "\n\nNormalisation: (final - random policy) / (SAC on the true reward's mean - random policy), per task.\n"
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "results.md").write_text(text)
    scores.to_csv(out_dir / "final_scores.csv", index=False)
    figure = draw_curves(runs, "step", band="ci", random_baseline=RANDOM_EPISODES)
    figure.savefig(out_dir / "benchmark.png", dpi=110)
    return text


def main(argv: list[str]) -> int:
    extras: list[str] = []
    if "--" in argv:
        argv, extras = argv[: argv.index("--")], argv[argv.index("--") + 1 :]
    tasks = load_tasks()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, help="where the runs go (outside the work tree)")
    parser.add_argument("--tasks", nargs="+", default=list(tasks), choices=list(tasks), help="tasks of the table")
    parser.add_argument("--seeds", type=int, default=5, help="QPA and PEBBLE seeds per task (1..N)")
    parser.add_argument("--sac-seeds", type=int, default=2, help="seeds of SAC on the true reward per task")
    parser.add_argument("--jobs", type=int, default=2, help="runs at a time, one torch thread each")
    parser.add_argument("--repo", type=Path, default=REPO, help="the checkout whose figure/reference gets the exports")
    parser.add_argument("--commit", action="store_true", help="commit each finished run's export at once")
    parser.add_argument("--report", action="store_true", help="only the report, from the exported CSVs")
    args = parser.parse_args(argv)
    if args.report:
        print(report(args.repo.resolve()))
        return 0
    if args.root is None or args.jobs < 1 or args.seeds < 1 or args.sac_seeds < 0:
        parser.error("needs --root, --jobs >= 1, --seeds >= 1 and --sac-seeds >= 0")
    metaworld = [task for task in args.tasks if is_metaworld(task)]
    print(f"[benchmark] tasks {args.tasks} ({len(metaworld)} Meta-World)", flush=True)
    runs = planned(args.tasks, args.seeds, args.sac_seeds)
    failed = train_all(runs, args.root, args.jobs, extras, args.repo.resolve(), args.commit)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
