"""QPA vs PEBBLE on walker_walk at CPU scale: the quick preset, the same feedback budget, 3 seeds each.

    python bench/compare_quick.py --root exp/compare_quick                 # the full comparison (hours on 2 cores)
    python bench/compare_quick.py --root /tmp/cq --steps 3000 --seeds 2 -- num_seed_steps=500 ...   # a smoke check

Runs scripts/sweeps/compare_quick.yaml through scripts/sweep.py (so finished runs are skipped and interrupted ones
resume), then prints each method's final return (the last evaluation; mean ± std over seeds, ddof=0) and the
difference QPA - PEBBLE with a 95% percentile-bootstrap interval (seeds resampled within each method, 10000
resamples, fixed seed). Overrides after `--` go to every run.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from plot import load_runs  # noqa: E402

TABLE = "compare_quick"
METHODS = ("qpa", "pebble")
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


def final_returns(root: Path) -> dict[str, dict[int, float]]:
    """{run label: {seed: return of the last evaluation}} of the runs under `root`; the budgets must match."""
    runs = [run for run in load_runs(root) if run.method in METHODS]
    budgets = {run.max_feedback for run in runs}
    if len(budgets) > 1:
        raise ValueError(f"runs under {root} have different max_feedback {sorted(budgets)}; allowed: one budget")
    finals: dict[str, dict[int, float]] = {method: {} for method in METHODS}
    for run in runs:
        finals[run.method][run.seed] = float(run.evals["episode_reward"].dropna().iloc[-1])
    missing = [method for method, seeds in finals.items() if not seeds]
    if missing:
        raise ValueError(f"no {missing[0]} runs under {root}; allowed: a root written by this script")
    return finals


def main(argv: list[str]) -> int:
    extras: list[str] = []
    if "--" in argv:
        argv, extras = argv[: argv.index("--")], argv[argv.index("--") + 1 :]
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, default=REPO / "exp" / "compare_quick", help="where the runs go")
    parser.add_argument("--seeds", type=int, default=3, help="seeds per method (1..N)")
    parser.add_argument("--steps", type=int, default=None, help="override num_train_steps (a shorter check)")
    parser.add_argument("--jobs", type=int, default=1, help="runs at a time (joblib launcher when > 1)")
    args = parser.parse_args(argv)
    if args.seeds < 2 or args.jobs < 1 or (args.steps is not None and args.steps < 1):
        parser.error("needs --seeds >= 2 (for a spread), --jobs >= 1 and --steps >= 1")

    overrides = ([f"num_train_steps={args.steps}"] if args.steps else []) + extras
    launcher = ["--launcher", "joblib", "--jobs", str(args.jobs)] if args.jobs > 1 else []
    seeds = " ".join(str(seed) for seed in range(1, args.seeds + 1))
    command = [sys.executable, str(REPO / "scripts" / "sweep.py"), TABLE, "--root", str(args.root), "--seeds", seeds,
               *launcher, "--", *overrides]  # fmt: skip
    print("[compare_quick]", " ".join(command), flush=True)
    if subprocess.run(command, cwd=REPO).returncode != 0:
        print("[compare_quick] some runs did not finish; see the summary above", file=sys.stderr)
        return 1

    try:
        finals = {method: np.array([value for _, value in sorted(seeds.items())])
                  for method, seeds in final_returns(args.root).items()}  # fmt: skip
    except ValueError as error:
        print(f"[compare_quick] error: {error}", file=sys.stderr)
        return 2
    print(f"\nfinal return (last evaluation) on walker_walk, runs under {args.root}:")
    for method, values in finals.items():
        print(f"  {method:<7} {values.mean():8.1f} ± {values.std():6.1f}  ({values.size} seeds: {np.round(values, 1)})")
    qpa, pebble = finals["qpa"], finals["pebble"]
    low, high = difference_ci(qpa, pebble)
    print(f"  QPA - PEBBLE: {qpa.mean() - pebble.mean():+.1f}  95% bootstrap CI [{low:+.1f}, {high:+.1f}]")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
