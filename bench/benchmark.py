"""QPA against PEBBLE on several tasks of the QPA paper at CPU scale, with SAC on the true reward as the ceiling.

    python bench/benchmark.py --root ~/runs/benchmark --jobs 2 --commit      # train what is missing, export each
    python bench/benchmark.py --report                                       # the tables and figure, from exports
    python bench/benchmark.py --root /tmp/b --tasks walker_walk --seeds 2 --sac-seeds 1 -- num_train_steps=3000

Trains the runs of scripts/sweeps/benchmark.yaml (--tasks of it; QPA and PEBBLE at --seeds seeds, on Meta-World at
--metaworld-seeds, SAC on the true reward at --sac-seeds), --jobs at a time with one torch thread each, each
through scripts/sweep.py, so a finished run is skipped and a stopped one resumes from its checkpoint. Runs live
under --root, outside the work tree. As each run finishes, its evaluations go into figure/reference/benchmark.csv
and its query-alignment log into figure/reference/benchmark_alignment.csv (with --commit, committed at once), so a
new machine loses no finished run.

--report reads only those two files: per task, each method's final return (Meta-World: success rate), mean ± std,
IQM with its 95% interval, QPA − PEBBLE with a 95% percentile-bootstrap interval, and the log-likelihood under the
policy of the queried segments against the history; across tasks, rliable's IQM of scores normalised between the
random policy (0) and SAC on the true reward (1), and the probability that QPA improves on PEBBLE, with stratified
bootstrap intervals. It writes figure/benchmark/ (results.md, whose first table has a row per task as the README
shows it; the figure with a panel per task; the CSV tables).
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.compare_quick import difference_ci  # noqa: E402
from bench.exports import ALIGNMENT_COLUMNS, Exports, Planned, train_all  # noqa: E402
from bench.run_pool import StoppedError  # noqa: E402
from plot import Run, draw_curves, final_scores, iqm_table, load_reference, random_policy_scores  # noqa: E402
from utils import is_metaworld  # noqa: E402

TABLE = REPO / "scripts" / "sweeps" / "benchmark.yaml"
OUT_DIR = REPO / "figure" / "benchmark"
PREFERENCE_METHODS = ("qpa", "pebble")
RANDOM_EPISODES = 10
BOOTSTRAP_REPS = 10_000


def load_tasks(path: Path = TABLE) -> dict[str, list[str]]:
    """Task (its environment name) -> its overrides."""
    return {name: shlex.split(text) for name, text in yaml.safe_load(path.read_text())["tasks"].items()}


def planned(tasks: list[str], seeds: int, sac_seeds: int, metaworld_seeds: int | None = None) -> list[Planned]:
    """The runs in training order: seed by seed, so that partial results cover every task and method; SAC's first
    seed first on each task, as the pilot that checks the task learns at this budget. Meta-World tasks get
    metaworld_seeds seeds of QPA and PEBBLE (default: seeds)."""
    seeds_of = {task: metaworld_seeds if is_metaworld(task) and metaworld_seeds is not None else seeds
                for task in tasks}  # fmt: skip
    order = [(task, "sac_true", 1) for task in tasks if sac_seeds >= 1]
    for seed in range(1, max(seeds_of.values(), default=0) + 1):
        order += [(task, method, seed) for task in tasks if seed <= seeds_of[task] for method in PREFERENCE_METHODS]
        order += [(task, "sac_true", seed) for task in tasks if 1 < seed <= sac_seeds]
    return [Planned(task, method, seed, (task, method, seed)) for task, method, seed in order]


# ---------------------------------------------------------------------------------------------------- the report
def score_matrix(scores: pd.DataFrame, method: str, tasks: list[str]) -> np.ndarray:
    """The method's scores [seeds, tasks] on the seeds that every one of `tasks` has (rliable takes one number of
    runs per method; a partial table's extra seeds on some tasks are left out)."""
    runs = scores[(scores.method == method) & scores.task.isin(tasks)]
    seeds = sorted(set.intersection(*(set(runs.loc[runs.task == task, "seed"]) for task in tasks)))
    return np.stack([runs[runs.task == task].set_index("seed").loc[seeds, "score"].to_numpy() for task in tasks], 1)


def probability_of_improvement(scores: pd.DataFrame, better: str, worse: str) -> tuple[float, float, float, int]:
    """rliable's P(better > worse) over the tasks both have, with a 95% stratified-bootstrap interval, and the
    number of those tasks."""
    from rliable import library as rly
    from rliable import metrics

    tasks = sorted(set(scores.loc[scores.method == better, "task"]) & set(scores.loc[scores.method == worse, "task"]))
    matrices = {method: score_matrix(scores, method, tasks) for method in (better, worse)}
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
    return float(np.ravel(point[key])[0]), float(low), float(high), len(tasks)


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
    exports, out_dir = Exports.named("benchmark", repo), repo / OUT_DIR.relative_to(REPO)
    evals_csv, alignment_csv = exports.evals, exports.alignment
    runs: list[Run] = load_reference(evals_csv)
    scores = normalised(final_scores(runs))
    alignment = pd.read_csv(alignment_csv) if alignment_csv.is_file() else pd.DataFrame(columns=ALIGNMENT_COLUMNS)
    lines = ["| task | metric | method | seeds | final (mean ± std) | IQM [95% CI] | log π queried vs history |",
             "|---|---|---|---|---|---|---|"]  # fmt: skip
    differences = ["| task | QPA - PEBBLE, final | 95% bootstrap CI | QPA ahead on seed pairs |", "|---|---|---|---|"]
    summary = ["| task (final) | QPA | PEBBLE | SAC, true reward | QPA - PEBBLE [95% CI] |", "|---|---|---|---|---|"]
    for task, group in scores.groupby("task", sort=False):
        iqm = iqm_table(group.drop(columns="score"), normalise="none", reps=BOOTSTRAP_REPS).set_index("method")
        metric = "success %" if group["metric"].iloc[0] == "success_rate" else "return"
        cells = {}
        for method in ("qpa", "pebble", "sac_true"):
            values = group.loc[group.method == method].sort_values("seed")["final"].to_numpy()
            cells[method] = f"{values.mean():.1f} ± {values.std():.1f} (n={values.size})" if values.size else ""
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
            cells["difference"] = f"{qpa.mean() - pebble.mean():+.1f} [{low:+.1f}, {high:+.1f}]"
        summary.append(f"| {task} ({metric}) | {cells['qpa']} | {cells['pebble']} | {cells['sac_true']} | "
                       f"{cells.get('difference', '')} |")  # fmt: skip
    aggregate = iqm_table(scores.assign(final=scores["score"]).drop(columns="score"), normalise="none",
                          reps=BOOTSTRAP_REPS)  # fmt: skip
    text = "\n".join(["## One row per task", "", *summary, "", "## Per task", "", *lines, "", *differences, "",
                      "## Across tasks", ""])  # fmt: skip
    text += "\n".join(f"- IQM of normalised scores, {row.method}: {row.iqm:.2f} [{row.ci_low:.2f}, {row.ci_high:.2f}]"
                      f" ({row.tasks} tasks, {row.runs} runs)" for row in aggregate.itertuples())  # fmt: skip
    preference = scores[scores.method.isin(PREFERENCE_METHODS)]
    if preference.method.nunique() == 2:
        point, low, high, tasks = probability_of_improvement(preference, "qpa", "pebble")
        text += f"\n- P(QPA > PEBBLE): {point:.2f} [{low:.2f}, {high:.2f}] ({tasks} tasks)"
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
    parser.add_argument(
        "--metaworld-seeds",
        type=int,
        default=3,
        help="QPA and PEBBLE seeds per Meta-World task (a 150k-step run takes 2.5x a 60k one)",
    )
    parser.add_argument("--sac-seeds", type=int, default=2, help="seeds of SAC on the true reward per task")
    parser.add_argument("--jobs", type=int, default=2, help="runs at a time, one torch thread each")
    parser.add_argument("--repo", type=Path, default=REPO, help="the checkout whose figure/reference gets the exports")
    parser.add_argument("--commit", action="store_true", help="commit each finished run's export at once")
    parser.add_argument("--report", action="store_true", help="only the report, from the exported CSVs")
    args = parser.parse_args(argv)
    if args.report:
        print(report(args.repo.resolve()))
        return 0
    if args.root is None or args.jobs < 1 or args.seeds < 1 or args.metaworld_seeds < 1 or args.sac_seeds < 0:
        parser.error("needs --root, --jobs >= 1, --seeds >= 1, --metaworld-seeds >= 1 and --sac-seeds >= 0")
    metaworld = [task for task in args.tasks if is_metaworld(task)]
    print(f"[benchmark] tasks {args.tasks} ({len(metaworld)} Meta-World)", flush=True)
    repo = args.repo.resolve()
    runs = planned(args.tasks, args.seeds, args.sac_seeds, args.metaworld_seeds)
    try:
        failed = train_all(runs, TABLE, args.root, args.jobs, extras, Exports.named("benchmark", repo),
                           repo if args.commit else None, "benchmark")  # fmt: skip
    except StoppedError:
        return 130
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
