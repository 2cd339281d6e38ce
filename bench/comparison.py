"""Methods compared on one task of a sweep table, each finished run exported as it finishes; the report from the
exports.

    python bench/comparison.py noisy_teachers --root ~/runs/noisy --jobs 2 --commit     # train what is missing
    python bench/comparison.py noisy_teachers --report --against rime_mistake:pebble_mistake mrn:pebble \\
        --with figure/reference/benchmark.csv:pebble,qpa                                 # tables and figure
    python bench/comparison.py compare_quick --methods policer ppe --root ~/runs/cq --jobs 2 --commit

Trains the table's runs on --task (its --methods, seeds 1..--seeds), --jobs at a time with one torch thread each,
each through scripts/sweep.py (bench/exports.py: a finished run is skipped, a stopped one resumes), exporting each
as it finishes into figure/reference/<table>.csv and <table>_alignment.csv (with --commit, committed at once).

--report reads only exports: the table's and, with --with CSV:method,..., those methods' runs of another export
(e.g. the benchmark's PEBBLE runs, trained by the same code and preset). It prints and writes into
figure/<table>/: per method the final return (Meta-World: success rate) mean ± std, its IQM with a 95% stratified-
bootstrap interval, the mean per-step log-likelihood under the policy of the queried segments against the history;
for each --against A:B the difference of the means with a 95% percentile-bootstrap interval and on how many seed
pairs A is ahead; and the curves (mean and 95% band per method).
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.compare_quick import difference_ci  # noqa: E402
from bench.exports import Exports, Planned, train_all  # noqa: E402
from bench.run_pool import StoppedError  # noqa: E402
from plot import Run, draw_curves, final_scores, iqm_table, load_reference  # noqa: E402
from scripts.sweep import TABLES_DIR, SweepError, load_table  # noqa: E402

BOOTSTRAP_REPS = 10_000


def run_label(overrides: list[str], row: str) -> str:
    """The method name a row's runs carry (plot.py's grouping): its run_label, else the row's name."""
    labels = [override.split("=", 1)[1] for override in overrides if override.startswith("run_label=")]
    return labels[-1] if labels else row


def planned(table_name: str, task: str, methods: list[str], seeds: int) -> list[Planned]:
    """Seed by seed, so that partial results cover every method."""
    table = load_table(table_name)
    label = {method: run_label(table.methods[method], method) for method in methods}
    return [Planned(task, method, seed, (task, label[method], seed)) for seed in range(1, seeds + 1)
            for method in methods]  # fmt: skip


def parse_with(text: str) -> tuple[Path, list[str]]:
    path, _, methods = text.partition(":")
    if not methods:
        raise argparse.ArgumentTypeError(f"--with {text!r} is invalid: give CSV:method[,method...]")
    return Path(path), methods.split(",")


def parse_against(text: str) -> tuple[str, str]:
    better, _, worse = text.partition(":")
    if not better or not worse:
        raise argparse.ArgumentTypeError(f"--against {text!r} is invalid: give A:B (two method names)")
    return better, worse


def report(
    table_name: str, task: str, others: list[tuple[Path, list[str]]], against: list[tuple[str, str]], repo: Path
) -> str:
    """The comparison's Markdown from the exports of the checkout `repo`; also written with the curves and the final
    scores into its figure/<table>/."""
    exports = Exports.named(table_name, repo)
    runs: list[Run] = load_reference(exports.evals) if exports.evals.is_file() else []
    alignment = [pd.read_csv(exports.alignment)] if exports.alignment.is_file() else []
    for path, methods in others:
        runs += load_reference(path, methods)
        other_alignment = path.with_name(f"{path.stem}_alignment.csv")
        if other_alignment.is_file():
            logged = pd.read_csv(other_alignment)
            alignment.append(logged[logged.method.isin(methods)])
    runs = [run for run in runs if run.task == task]
    if not runs:
        raise ValueError(f"no exported runs of {task} in {exports.evals} or --with; allowed: a task trained here")
    ends = {int(run.evals["step"].iloc[-1]) for run in runs}
    if len(ends) > 1:
        raise ValueError(f"the runs of {task} end at different steps {sorted(ends)}; allowed: runs of one schedule")
    rounds = pd.concat(alignment, ignore_index=True) if alignment else pd.DataFrame(columns=["task", "method"])
    rounds = rounds[rounds.task == task]
    scores = final_scores(runs)
    metric = "success %" if scores["metric"].iloc[0] == "success_rate" else "return"
    iqm = iqm_table(scores, normalise="none", reps=BOOTSTRAP_REPS).set_index("method")
    lines = [f"| {task}: method | seeds | final {metric} (mean ± std) | IQM [95% CI] | log π queried vs history |",
             "|---|---|---|---|---|"]  # fmt: skip
    finals = {}
    for method, group in scores.groupby("method", sort=False):
        finals[method] = group.set_index("seed")["final"].sort_index()
        values = finals[method].to_numpy()
        logged = rounds[rounds.method == method]
        aligned = (f"{logged.query_log_likelihood.mean():.1f} vs {logged.history_log_likelihood.mean():.1f}"
                   if len(logged) else "")  # fmt: skip
        row = iqm.loc[method]
        lines.append(f"| {method} | {values.size} | {values.mean():.1f} ± {values.std():.1f} | {row.iqm:.1f} "
                     f"[{row.ci_low:.1f}, {row.ci_high:.1f}] | {aligned} |")  # fmt: skip
    if against:
        lines += [
            "",
            "| difference of the means | value | 95% bootstrap CI | ahead on seed pairs |",
            "|---|---|---|---|",
        ]
    for better, worse in against:
        missing = [method for method in (better, worse) if method not in finals or len(finals[method]) < 2]
        if missing:
            raise ValueError(f"--against {better}:{worse}: {missing[0]} has fewer than 2 finished seeds of {task}")
        a, b = finals[better], finals[worse]
        low, high = difference_ci(a.to_numpy(), b.to_numpy())
        paired = a.index.intersection(b.index)
        ahead = int((a[paired] > b[paired]).sum())
        lines.append(f"| {better} - {worse} | {a.mean() - b.mean():+.1f} | [{low:+.1f}, {high:+.1f}] | "
                     f"{ahead} of {len(paired)} |")  # fmt: skip
    text = "\n".join(lines) + "\n"
    out_dir = repo / "figure" / table_name
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"{task}.md").write_text(text)
    scores.to_csv(out_dir / f"{task}_final_scores.csv", index=False)
    figure = draw_curves(runs, "step", band="ci")
    figure.savefig(out_dir / f"{task}.png", dpi=110)
    return text


def main(argv: list[str]) -> int:
    extras: list[str] = []
    if "--" in argv:
        argv, extras = argv[: argv.index("--")], argv[argv.index("--") + 1 :]
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("table", help="a sweep table of scripts/sweeps/ (its name)")
    parser.add_argument("--task", default="walker_walk", help="a task row of the table")
    parser.add_argument("--methods", nargs="+", help="method rows to train (default: all of the table's)")
    parser.add_argument("--seeds", type=int, default=5, help="seeds 1..N of each method")
    parser.add_argument("--root", type=Path, help="where the runs go (outside the work tree)")
    parser.add_argument("--jobs", type=int, default=2, help="runs at a time, one torch thread each")
    parser.add_argument("--repo", type=Path, default=REPO, help="the checkout whose figure/reference gets the exports")
    parser.add_argument("--commit", action="store_true", help="commit each finished run's export at once")
    parser.add_argument("--report", action="store_true", help="only the report, from the exported CSVs")
    parser.add_argument("--with", dest="others", type=parse_with, action="append", default=[],
                        help="CSV:method,...: those methods' runs of another export, in the report")  # fmt: skip
    parser.add_argument("--against", type=parse_against, nargs="+", default=[], help="A:B differences to report")
    args = parser.parse_args(argv)
    try:
        table = load_table(args.table)
    except SweepError as error:
        parser.error(str(error))
    if args.task not in table.tasks:
        parser.error(f"--task {args.task} is invalid: the table's tasks are {', '.join(table.tasks)}")
    unknown = [method for method in args.methods or [] if method not in table.methods]
    if unknown:
        parser.error(f"--methods {unknown[0]} is invalid: the table's methods are {', '.join(table.methods)}")
    repo = args.repo.resolve()
    if args.report:
        try:
            print(report(table.name, args.task, args.others, args.against, repo))
        except ValueError as error:
            print(f"[comparison] error: {error}", file=sys.stderr)
            return 2
        return 0
    if args.root is None or args.jobs < 1 or args.seeds < 1:
        parser.error("needs --root, --jobs >= 1 and --seeds >= 1")
    runs = planned(table.name, args.task, args.methods or list(table.methods), args.seeds)
    print(f"[comparison] {len(runs)} runs of {table.name} on {args.task}: {shlex.join(extras)}", flush=True)
    try:
        failed = train_all(runs, TABLES_DIR / f"{table.name}.yaml", args.root, args.jobs, extras,
                           Exports.named(table.name, repo), repo if args.commit else None, table.name)  # fmt: skip
    except StoppedError:
        return 130
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
