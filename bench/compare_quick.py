"""QPA against PEBBLE before it and PoLiCER and PPE after it, at CPU scale: the quick preset for every method.

    python bench/compare_quick.py --root exp/compare_quick --jobs 2        # the full comparison (hours on 2 cores)
    python bench/compare_quick.py --task cheetah_run --methods qpa pebble --root exp/compare_quick_cheetah --jobs 2
    python bench/compare_quick.py --root /tmp/cq --steps 3000 --seeds 2 -- num_seed_steps=500 ...   # a smoke check
    python bench/compare_quick.py --reuse figure/reference/compare_quick.csv --jobs 2    # QPA, PEBBLE from there

Trains the runs of scripts/sweeps/compare_quick.yaml (one task): each method at --seeds seeds and PPE's two
ablations at --ablation-seeds, --jobs runs at a time, each through scripts/sweep.py (so finished runs are skipped
and interrupted ones resume). Then prints, per method: the final return (the last evaluation; mean ± std over
seeds, ddof=0), its IQM with a 95% stratified-bootstrap interval (rliable, via plot.iqm_table), and how likely its
queries are under the policy that asked them (mean over query rounds and seeds of `query_log_likelihood`, against
`history_log_likelihood`); then QPA − PEBBLE, each successor − QPA and each PPE ablation − PPE with a 95%
percentile-bootstrap interval (seeds resampled within each method, 10000 resamples, fixed seed), and what
PoLiCER's resets and PPE's Morse network did. It draws the return curves and the alignment curves into --out-dir
with `python -m plot compare`.
Overrides after `--` go to every run. With --reuse, the methods of --reuse-methods come from an export-reference CSV
of earlier runs of the same table instead of being trained (their curves are drawn dashed; a reference set keeps
evaluations only, so their query log-likelihoods are not reported): legitimate only while the golden logs
(tests/test_golden.py) show their code unchanged since those runs.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import matplotlib.pyplot as plt  # noqa: E402

from bench.run_pool import RunPool, StoppedError  # noqa: E402
from plot import Run, aggregate_curve, compare, final_scores, iqm_table, load_reference, load_runs  # noqa: E402

TABLE = "compare_quick"
PREFERENCE_METHODS = ("qpa", "pebble", "policer", "ppe")
ABLATIONS = ("ppe_extension_only", "ppe_mixture_only")
METHODS = (*PREFERENCE_METHODS, *ABLATIONS, "sac_true")
DEFAULT_METHODS = (*PREFERENCE_METHODS, *ABLATIONS)
SUCCESSORS = ("policer", "ppe", *ABLATIONS)  # each reported against QPA
LONGEST_FIRST = ("policer", "pebble", "ppe", *ABLATIONS, "qpa", "sac_true")  # PoLiCER's replay ratio reaches 4
TASKS = ("walker_walk", "cheetah_run")
BOOTSTRAP_REPS = 10_000
BOOTSTRAP_SEED = 0


def difference_ci(a: np.ndarray, b: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """Percentile-bootstrap interval of mean(a) - mean(b), resampling each sample's seeds on its own."""
    rng = np.random.default_rng(BOOTSTRAP_SEED)
    means_a = a[rng.integers(0, a.size, (BOOTSTRAP_REPS, a.size))].mean(1)
    means_b = b[rng.integers(0, b.size, (BOOTSTRAP_REPS, b.size))].mean(1)
    tail = 100 * (1 - level) / 2
    low, high = np.percentile(means_a - means_b, [tail, 100 - tail])
    return float(low), float(high)


def train_all(runs: list[tuple[str, int]], task: str, root: Path, jobs: int, overrides: list[str]) -> bool:
    """Train every (method, seed), `jobs` at a time, each run its own `scripts/sweep.py` call; True if all ended.
    Raises StoppedError when a signal stopped the training (bench/run_pool.py)."""
    pool = RunPool("compare_quick")

    def train(run: tuple[str, int]) -> bool:
        method, seed = run
        if pool.stopped:
            return False
        command = [sys.executable, str(REPO / "scripts" / "sweep.py"), TABLE, task, "--root", str(root),
                   "--methods", method, "--seeds", str(seed), "--", *overrides]  # fmt: skip
        print("[compare_quick]", " ".join(command), flush=True)
        return pool.call(command, cwd=REPO) == 0

    trained = pool.map(train, runs, jobs)
    for (method, seed), ok in zip(runs, trained, strict=True):
        if not ok:
            print(f"[compare_quick] {method} seed {seed} did not finish; see its run directory", file=sys.stderr)
    return all(trained)


def comparison_runs(root: Path, task: str, reused: list[Run]) -> list[Run]:
    """The runs of the comparison on `task` under `root`, and the reused ones: QPA must be among them and every
    trained method share one budget."""
    trained = load_runs(root) if root.exists() else []
    unfinished = [run for run in trained if run.evals["step"].iloc[-1] < run.config.get("num_train_steps", 0)]
    if unfinished:  # still training, or stopped: their last evaluation is no final return
        print("[compare_quick] left out, not trained to the end:", ", ".join(sorted(run.source for run in unfinished)))
    trained = [run for run in trained if run not in unfinished]
    runs = [run for run in [*trained, *reused] if run.method in METHODS and run.task == task]
    budgets = {run.max_feedback for run in runs if run.method != "sac_true" and run.max_feedback is not None}
    if len(budgets) > 1:
        raise ValueError(f"runs under {root} have different max_feedback {sorted(budgets)}; allowed: one budget")
    if not any(run.method == "qpa" for run in runs):
        raise ValueError(f"no qpa runs under {root}; allowed: a root written by this script")
    return runs


def method_means(runs: list[Run], columns: tuple[str, ...]) -> pd.DataFrame:
    """Per method: each train.csv column's mean over its logged rows, then over seeds (absent columns skipped)."""
    rows = []
    for run in runs:
        present = [column for column in columns if column in run.train.columns]
        if present:
            rows.append({"method": run.method, **run.train[present].mean().to_dict()})
    return pd.DataFrame(rows).groupby("method").mean() if rows else pd.DataFrame()


def alignment_figure(runs: list[Run], task: str, out: Path) -> Path:
    """Mean log π(a|s) per query round: each method's queried segments (solid) and history windows (dashed),
    mean and 95% bootstrap band over seeds (the QPA paper's Figure 11)."""
    fig, ax = plt.subplots(figsize=(6.4, 4.0), layout="constrained")
    methods = [method for method in PREFERENCE_METHODS if any(run.method == method for run in runs)]
    for index, method in enumerate(methods):
        members = [run for run in runs if run.method == method]
        for metric, style, what in (("query_log_likelihood", "-", "queries"), ("history_log_likelihood", "--",
                                                                                 "history")):  # fmt: skip
            curve = aggregate_curve(members, metric, "feedback", BOOTSTRAP_REPS)
            label = f"{method} {what} (n={len(members)})"
            ax.plot(curve["x"], curve["mean"], style, color=f"C{index}", label=label)
            ax.fill_between(curve["x"], curve["low"], curve["high"], color=f"C{index}", alpha=0.15, linewidth=0)
    ax.set_xlabel("feedback (queries) after the round")
    ax.set_ylabel("mean log π(a|s) under the current policy")
    ax.set_title(f"{task}: query-policy alignment")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def print_difference(name: str, a: np.ndarray, b: np.ndarray) -> None:
    low, high = difference_ci(a, b)
    print(f"  {name:<28} {a.mean() - b.mean():+7.1f}  95% bootstrap CI [{low:+.1f}, {high:+.1f}]")


def report(root: Path, task: str, out_dir: Path, reused: list[Run]) -> None:
    runs = comparison_runs(root, task, reused)
    scores = final_scores(runs)
    iqm = iqm_table(scores, normalise="none", reps=BOOTSTRAP_REPS).set_index("method")
    aligned = method_means(runs, ("query_log_likelihood", "history_log_likelihood"))
    print(f"\nfinal return (last evaluation) on {task}, runs under {root}:")
    finals: dict[str, np.ndarray] = {}
    for method in METHODS:
        method_scores = scores[scores["method"] == method].sort_values("seed")
        if method_scores.empty:
            continue
        values = finals[method] = method_scores["final"].to_numpy()
        line = f"  {method:<18} {values.mean():7.1f} ± {values.std():5.1f}   IQM {iqm.loc[method, 'iqm']:6.1f}"
        line += f" [{iqm.loc[method, 'ci_low']:6.1f}, {iqm.loc[method, 'ci_high']:6.1f}]"
        if method in aligned.index:
            line += (f"   log π of queries {aligned.loc[method, 'query_log_likelihood']:7.1f}"
                     f" (history {aligned.loc[method, 'history_log_likelihood']:7.1f})")  # fmt: skip
        if any(run.reference for run in runs if run.method == method):
            line += "   (reused)"
        print(f"{line}   ({values.size} seeds: {np.round(values, 1)})")
    print("differences of the mean final return:")
    if "pebble" in finals:
        print_difference("QPA - PEBBLE", finals["qpa"], finals["pebble"])
    for method in SUCCESSORS:
        if method in finals:
            print_difference(f"{method} - QPA", finals[method], finals["qpa"])
    for method in ABLATIONS:  # what leaving one of PPE's parts out costs
        if method in finals and "ppe" in finals:
            print_difference(f"{method} - ppe", finals[method], finals["ppe"])
    resets = [run for run in runs if run.method == "policer" and "policer_resets" in run.train.columns]
    if resets:
        counts = [int(run.train["policer_resets"].max()) for run in resets]
        ratios = [int(run.train["replay_ratio"].max()) for run in resets]
        print(f"PoLiCER resets per seed {counts}, highest replay ratio per seed {ratios}")
    morse = method_means(runs, ("ppe_queried_morse", "ppe_explored_morse", "ppe_shift"))
    for method in morse.index:
        print(f"{method}: mean M of queried (s, a) {morse.loc[method].get('ppe_queried_morse', np.nan):.3f}, "
              f"of explored {morse.loc[method].get('ppe_explored_morse', np.nan):.3f}, "
              f"shift |Δμ| {morse.loc[method].get('ppe_shift', np.nan):.3f}")  # fmt: skip
    run_dirs = [run.source for run in runs if not run.reference]
    if not run_dirs:  # a table re-read from --reuse alone: its curves are the reference figures already drawn
        print(f"no runs under {root}: no curves drawn")
        return
    reference = [run for run in runs if run.reference]
    compare(run_dirs, out_dir, reference=reference, reps=BOOTSTRAP_REPS)
    compare(run_dirs, out_dir / "alignment", metric="query_log_likelihood", x="both", reps=BOOTSTRAP_REPS)
    alignment_figure([run for run in runs if not run.reference], task, out_dir / "alignment.png")
    print(f"curves and tables in {out_dir}; alignment in {out_dir / 'alignment.png'} and {out_dir / 'alignment'}")


def main(argv: list[str]) -> int:
    extras: list[str] = []
    if "--" in argv:
        argv, extras = argv[: argv.index("--")], argv[argv.index("--") + 1 :]
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, default=REPO / "exp" / "compare_quick", help="where the runs go")
    parser.add_argument("--out-dir", type=Path, default=REPO / "figure" / "compare_quick", help="figures, tables")
    parser.add_argument("--task", default="walker_walk", choices=TASKS, help="the task (a row of the sweep table)")
    parser.add_argument("--methods", nargs="+", default=list(DEFAULT_METHODS), choices=METHODS, help="to train")
    parser.add_argument("--seeds", type=int, default=5, help="seeds per method (1..N)")
    parser.add_argument("--ablation-seeds", type=int, default=3, help="seeds per PPE ablation (1..N)")
    parser.add_argument("--steps", type=int, default=None, help="override num_train_steps (a shorter check)")
    parser.add_argument("--jobs", type=int, default=1, help="runs at a time, 1 torch thread each")
    parser.add_argument("--report-only", action="store_true", help="summarise the runs under --root, train none")
    parser.add_argument("--reuse", type=Path, default=None, help="an export-reference CSV of earlier runs")
    parser.add_argument("--reuse-methods", nargs="+", default=["qpa", "pebble", "sac_true"], choices=METHODS,
                        help="the methods taken from --reuse instead of trained")  # fmt: skip
    args = parser.parse_args(argv)
    if args.seeds < 2 or args.ablation_seeds < 2 or args.jobs < 1 or (args.steps is not None and args.steps < 1):
        parser.error("needs --seeds >= 2 and --ablation-seeds >= 2 (for a spread), --jobs >= 1 and --steps >= 1")
    reused_methods = args.reuse_methods if args.reuse else []
    if "qpa" not in [*args.methods, *reused_methods]:
        parser.error(f"--methods {' '.join(args.methods)} is invalid: every comparison is against qpa")
    try:
        reused = load_reference(args.reuse, reused_methods) if args.reuse else []
    except ValueError as error:
        parser.error(str(error))

    if not args.report_only:
        overrides = ([f"num_train_steps={args.steps}"] if args.steps else []) + extras
        trained = [method for method in args.methods if method not in reused_methods]
        runs = [(method, seed) for method in sorted(trained, key=LONGEST_FIRST.index)
                for seed in range(1, (args.ablation_seeds if method in ABLATIONS else args.seeds) + 1)]  # fmt: skip
        try:
            if not train_all(runs, args.task, args.root, args.jobs, overrides):
                return 1
        except StoppedError:
            return 130
    try:
        report(args.root, args.task, args.out_dir, reused)
    except ValueError as error:
        print(f"[compare_quick] error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
