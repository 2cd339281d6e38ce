"""Learning curves, method comparisons and final-performance tables from run directories.

    python -m plot exp/walker_walk                       # = curves: mean and 95% CI over seeds per method
    python -m plot curves exp/ --x both --out figure/curves.png
    python -m plot compare exp/qpa exp/pebble --out-dir figure/compare --last 3
    python -m plot sweep exp/feedback_sweep --out-dir figure
    python -m plot export-reference exp/qpa --name qpa_dmc --out figure/reference
    python -m plot curves RUN --x step --phases --random-baseline --reference figure/reference/compare_quick.csv \
        --reference-methods pebble sac_true --band range --out figure/run.png   # a figure that explains itself
    python -m plot still RUN --out figure/run_last_frame.png                  # a frame of the run's last video
    python -m plot summary RUN --figure figure/run.png                        # the run's end-of-run summary

A run directory holds `config.yaml` (the resolved Hydra config) and `eval.csv` (written by `logger.Logger`).
Runs are grouped by what their config says (task = `env`, method = `run_label` or else `experiment`, `seed`,
`max_feedback`), never by directory names. Aggregation choices:
- Seeds are aligned by linear interpolation onto the union of their x values inside the range that every seed
  covers, so a curve ends where its shortest seed ends and slightly different eval steps still line up.
- Against feedback, each seed contributes its last evaluation at each `total_feedback` level (the performance
  reached with that much feedback); evals without `total_feedback` take it from `train.csv` at the same step.
- Bands are 95% percentile-bootstrap intervals of the mean over seeds (numpy, fixed seed).
- Final performance of a seed is the mean of its last K evaluations; tables give mean ± std (ddof=0) over seeds.
- IQM across tasks (rliable's `aggregate_iqm`, 25% trimmed mean) with a 95% stratified-bootstrap interval from
  `rliable.library.get_interval_estimates` that resamples seeds within each task (each task's seeds resampled on
  their own, so tasks may have different seed counts), over the tasks every method has. rliable draws from numpy's
  global RNG, so it is seeded (and restored afterwards) for reproducible intervals. Scores are put on one scale
  per task first: `success_rate` (Meta-World, in %) is divided by 100, any other metric by the largest
  |final score| of that task over all methods and seeds (`--normalise none` keeps raw scores).
- `--band range` draws the seeds' spread (min to max) instead of the interval of the mean: the band a single
  new seed is to be compared with.
- `--phases` shades the schedule's phases (from each run's config) on the step axis and marks every query round
  on a top axis with the labels used so far. train.csv has one row per episode, so a round is placed at the start
  of the episode it was asked in (exact when rounds fall on episode starts, as in the quick preset).
- `--random-baseline` runs a uniformly random policy for a few seeded episodes of each task (the same policy as
  the seed steps) and draws its mean return (success rate on Meta-World) as a horizontal line.
"""

from __future__ import annotations

import argparse
import math
import re
import shlex
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from io import BytesIO
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from omegaconf import OmegaConf
from PIL import Image
from rliable import library as rly
from rliable.metrics import aggregate_iqm

DEFAULT_REFERENCE_DIR = Path(__file__).resolve().parent / "figure" / "reference"
REFERENCE_COLUMNS = ("task", "method", "seed", "step", "total_feedback", "episode_reward")
X_AXES = {"step": "environment steps", "feedback": "feedback (queries)"}
METRIC_LABELS = {
    "episode_reward": "evaluation return (true reward)",
    "episode_reward_hat": "evaluation return under the learned reward",
    "success_rate": "evaluation success rate (%)",
    "query_log_likelihood": "mean log-likelihood of queried actions",
    "history_log_likelihood": "mean log-likelihood of replayed actions",
}
METHOD_NAMES = {
    "qpa": "QPA", "pebble": "PEBBLE", "surf": "SURF", "rune": "RUNE", "sac_true": "SAC on the true reward",
    "policer": "PoLiCER", "ppe": "PPE", "mrn": "MRN", "rime": "RIME",
    "ppe_extension_only": "PPE, extension only", "ppe_mixture_only": "PPE, mixture query only",
    "qpa_mistake": "QPA, mistake teacher", "pebble_mistake": "PEBBLE, mistake teacher",
    "rime_mistake": "RIME, mistake teacher",
}  # fmt: skip
BANDS = {"ci": "95% CI of the mean", "range": "min to max over seeds"}
# Hues that method curves (C0 to C3 for up to four methods) do not use.
PHASE_COLORS = {
    "random seed steps": "tab:gray",
    "PEBBLE state-entropy pre-training": "tab:olive",
    "preference feedback": "tab:purple",
    "SAC on the true reward": "tab:cyan",
}
RANDOM_BASELINE_SEED = 0
BOOTSTRAP_SEED = 0
SUBCOMMANDS = ("curves", "compare", "sweep", "export-reference", "still", "summary")


@dataclass(frozen=True)
class Run:
    """One training run: who it is (from its config) and its evaluation rows sorted by step."""

    task: str
    method: str
    seed: int
    max_feedback: int | None
    evals: pd.DataFrame
    source: str
    reference: bool = False
    train: pd.DataFrame = field(default_factory=pd.DataFrame)  # train.csv: metrics logged per episode or query round
    config: dict[str, Any] = field(default_factory=dict)  # the resolved config.yaml (none for reference curves)


def find_run_dirs(path: str | Path) -> list[Path]:
    """Every directory at or under `path` holding both `eval.csv` and `config.yaml`."""
    path = Path(path)
    if not path.exists():
        raise ValueError(f"path {str(path)!r} does not exist; allowed: a run directory or a folder of runs")
    candidates = [path] if (path / "eval.csv").is_file() else []
    candidates += [csv.parent for csv in path.rglob("eval.csv")]
    return sorted({c.resolve() for c in candidates if (c / "config.yaml").is_file()})


def _with_feedback(evals: pd.DataFrame, run_dir: Path) -> pd.DataFrame:
    """Give eval rows the `total_feedback` of the latest train row at or before their step when eval lacks it."""
    train_csv = run_dir / "train.csv"
    if "total_feedback" in evals.columns or not train_csv.is_file() or train_csv.stat().st_size == 0:
        return evals
    train = pd.read_csv(train_csv)
    if "total_feedback" not in train.columns:
        return evals
    feedback = train[["step", "total_feedback"]].dropna().sort_values("step")
    merged = pd.merge_asof(evals, feedback, on="step", direction="backward")
    # Evaluations before the first train row happen before any query was asked.
    merged["total_feedback"] = merged["total_feedback"].fillna(0)
    return merged


def load_run(run_dir: str | Path) -> Run | None:
    """The run stored in `run_dir`, or None when it has not written an evaluation yet."""
    run_dir = Path(run_dir)
    config = OmegaConf.load(run_dir / "config.yaml")
    task, method = config.get("env"), config.get("run_label") or config.get("experiment")
    if not task or not method or config.get("seed") is None:
        raise ValueError(f"{run_dir / 'config.yaml'} lacks env, seed or run_label/experiment; allowed: a train config")
    eval_csv = run_dir / "eval.csv"
    evals = pd.read_csv(eval_csv) if eval_csv.stat().st_size > 0 else pd.DataFrame()
    if evals.empty:
        return None
    if "step" not in evals.columns:
        raise ValueError(f"{eval_csv} has no 'step' column; allowed: a CSV written by logger.Logger")
    evals = _with_feedback(evals.sort_values("step", kind="stable").reset_index(drop=True), run_dir)
    train_csv = run_dir / "train.csv"
    train = pd.read_csv(train_csv) if train_csv.is_file() and train_csv.stat().st_size > 0 else pd.DataFrame()
    max_feedback = config.get("max_feedback")
    return Run(
        task=str(task),
        method=str(method),
        seed=int(config.seed),
        max_feedback=None if max_feedback is None else int(max_feedback),
        evals=evals,
        source=str(run_dir),
        train=train,
        config=OmegaConf.to_container(config),
    )


def load_runs(paths: str | Path | Iterable[str | Path]) -> list[Run]:
    """All runs with at least one evaluation under `paths`; a ValueError when there is none."""
    paths = [paths] if isinstance(paths, str | Path) else list(paths)
    run_dirs = sorted({run_dir for path in paths for run_dir in find_run_dirs(path)})
    runs = []
    for run_dir in run_dirs:
        run = load_run(run_dir)
        if run is None:
            print(f"plot: skipping {run_dir}: eval.csv has no rows yet", file=sys.stderr)
        else:
            runs.append(run)
    if not runs:
        shown = ", ".join(repr(str(p)) for p in paths)
        raise ValueError(f"no runs under {shown}; allowed: folders holding run dirs with config.yaml and eval.csv")
    return runs


def load_reference(path: str | Path = DEFAULT_REFERENCE_DIR, methods: Sequence[str] | None = None) -> list[Run]:
    """Reference curves from one reference CSV or every `<name>.csv` in a folder (columns `REFERENCE_COLUMNS`),
    only those of `methods` when given."""
    path = Path(path)
    if path.is_file() and path.suffix == ".csv":
        csv_files = [path]
    else:
        csv_files = sorted(path.glob("*.csv")) if path.is_dir() else []
    if not csv_files:
        raise ValueError(f"no reference CSVs in {str(path)!r}; allowed: a folder of export-reference CSVs or one CSV")
    runs = []
    for csv_file in csv_files:
        table = pd.read_csv(csv_file)
        missing = [column for column in REFERENCE_COLUMNS if column not in table.columns]
        if missing:
            raise ValueError(f"{csv_file} lacks columns {missing}; allowed: {list(REFERENCE_COLUMNS)}[, success_rate]")
        for (task, method, seed), rows in table.groupby(["task", "method", "seed"], sort=True):
            evals = rows.drop(columns=["task", "method", "seed"]).sort_values("step").reset_index(drop=True)
            runs.append(Run(str(task), str(method), int(seed), None, evals, str(csv_file), reference=True))
    if methods:
        known = sorted({run.method for run in runs})
        unknown = [method for method in methods if method not in known]
        if unknown:
            raise ValueError(f"reference method {unknown[0]!r} is not in {str(path)!r}; allowed: {', '.join(known)}")
        runs = [run for run in runs if run.method in methods]
    return runs


def resolve_metric(runs: Sequence[Run], metric: str) -> str:
    """`auto` means `success_rate` when every run logged it (Meta-World), else `episode_reward`."""
    if metric != "auto":
        return metric
    has_success = all("success_rate" in r.evals.columns and r.evals["success_rate"].notna().any() for r in runs)
    return "success_rate" if runs and has_success else "episode_reward"


def has_metric(run: Run, metric: str) -> bool:
    """Whether `metric` is an eval column of the run, or else a train column (e.g. `query_log_likelihood`)."""
    return metric in run.evals.columns or metric in run.train.columns


def run_curve(run: Run, metric: str, x: str) -> tuple[np.ndarray, np.ndarray]:
    """(x values, metric values) of one run, x strictly increasing. An eval column is read from the evaluations;
    a metric only train.csv has (one logged at query rounds, say) from the train rows that hold it."""
    if x not in X_AXES:
        raise ValueError(f"x axis {x!r} is not valid; allowed: {list(X_AXES)}")
    if not has_metric(run, metric):
        allowed = sorted(set(run.evals.columns) | set(run.train.columns))
        raise ValueError(f"{run.source} has no eval or train column {metric!r}; allowed: {allowed}")
    rows = run.evals if metric in run.evals.columns else run.train
    column = "step" if x == "step" else "total_feedback"
    if column not in rows.columns:
        raise ValueError(f"{run.source} logs no total_feedback (eval.csv or train.csv); allowed x here: step")
    points = rows[[column, metric]].dropna()
    # Several evals share one x (a resumed step, or every eval at one feedback level): keep the latest.
    points = points.drop_duplicates(subset=column, keep="last").sort_values(column)
    return points[column].to_numpy(float), points[metric].to_numpy(float)


def align_seeds(curves: Sequence[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """Interpolate every seed onto the x values inside the range all seeds cover: (grid [T], values [seeds, T])."""
    start = max(xs[0] for xs, _ in curves)
    end = min(xs[-1] for xs, _ in curves)
    all_x = np.unique(np.concatenate([xs for xs, _ in curves]))
    grid = all_x[(all_x >= start) & (all_x <= end)]
    if grid.size == 0:
        raise ValueError(f"seeds cover disjoint x ranges (starts up to {start}, ends from {end}); allowed: overlap")
    return grid, np.stack([np.interp(grid, xs, ys) for xs, ys in curves])


def bootstrap_ci(
    values: np.ndarray, reps: int = 2000, level: float = 0.95, seed: int = BOOTSTRAP_SEED
) -> tuple[np.ndarray, np.ndarray]:
    """Percentile-bootstrap interval of the mean over axis 0 of `values` [seeds, T], one resample matrix for all T."""
    num_seeds = values.shape[0]
    rng = np.random.default_rng(seed)
    # Resampling seeds with replacement is the same as drawing multinomial counts; mean = counts @ values / n.
    weights = rng.multinomial(num_seeds, np.full(num_seeds, 1.0 / num_seeds), size=reps) / num_seeds
    means = weights @ values
    tail = 100 * (1 - level) / 2
    low, high = np.percentile(means, [tail, 100 - tail], axis=0)
    return low, high


def aggregate_curve(runs: Sequence[Run], metric: str, x: str, reps: int = 2000, band: str = "ci") -> pd.DataFrame:
    """Mean over the seeds in `runs` and a band (`BANDS`: 95% bootstrap CI, or min to max): columns x, mean, low,
    high, seeds."""
    if band not in BANDS:
        raise ValueError(f"band {band!r} is not valid; allowed: {', '.join(BANDS)}")
    grid, values = align_seeds([run_curve(run, metric, x) for run in runs])
    low, high = bootstrap_ci(values, reps) if band == "ci" else (values.min(0), values.max(0))
    return pd.DataFrame({"x": grid, "mean": values.mean(0), "low": low, "high": high, "seeds": len(runs)})


def _group(runs: Iterable[Run]) -> dict[tuple[str, str], list[Run]]:
    groups: dict[tuple[str, str], list[Run]] = {}
    for run in runs:
        groups.setdefault((run.task, run.method), []).append(run)
    for (task, method), members in groups.items():
        seeds = [run.seed for run in members]
        if len(set(seeds)) < len(seeds):
            print(f"plot: warning: {task}/{method} has repeated seeds {sorted(seeds)}", file=sys.stderr)
    return groups


def _axes_list(x: str) -> list[str]:
    if x == "both":
        return list(X_AXES)
    if x not in X_AXES:
        raise ValueError(f"x axis {x!r} is not valid; allowed: step, feedback, both")
    return [x]


def run_phases(run: Run) -> tuple[tuple[str, float], ...]:
    """The run's schedule from its config (ALGORITHM.md §2) as (name, first step) per phase, the last lasting to
    the end of the run; empty for a reference curve, or a config without the schedule's keys."""
    if "num_seed_steps" not in run.config or "num_unsup_steps" not in run.config:
        return ()
    seed_end = float(run.config["num_seed_steps"])
    if run.config.get("reward_source") != "learned":
        return ("random seed steps", 0.0), ("SAC on the true reward", seed_end)
    feedback_start = seed_end + float(run.config["num_unsup_steps"])
    return (
        ("random seed steps", 0.0),
        ("PEBBLE state-entropy pre-training", seed_end),
        ("preference feedback", feedback_start),
    )


def query_rounds(run: Run) -> list[tuple[float, int]]:
    """(step, labels used so far) at each query round of a run, from train.csv: a round raised `total_feedback`
    during an episode, and is placed at that episode's start (the previous row's step)."""
    if "total_feedback" not in run.train.columns:
        return []
    rows = run.train.dropna(subset=["total_feedback"]).sort_values("step")
    labels = rows["labeled_feedback"] if "labeled_feedback" in rows.columns else rows["total_feedback"]
    rounds, asked, episode_start = [], 0.0, 0.0
    for step, total, used in zip(rows["step"], rows["total_feedback"], labels, strict=True):
        if total > asked:
            rounds.append((float(episode_start), int(used)))
            asked = total
        episode_start = step
    return rounds


def random_policy_scores(task: str, episodes: int, seed: int = RANDOM_BASELINE_SEED) -> dict[str, float]:
    """Mean return (`episode_reward`) and, on Meta-World, success rate in % (`success_rate`) of uniformly random
    actions in [-1, 1] over `episodes` seeded episodes: the policy of the seed steps."""
    if episodes < 1:
        raise ValueError(f"--random-baseline {episodes} is not valid; allowed: an integer >= 1 (episodes)")
    import utils  # torch and the simulators: loaded only when a baseline is asked for

    env = utils.make_env(task, seed)
    rng = np.random.default_rng(seed)
    returns, successes = [], []
    for episode in range(episodes):
        env.reset(seed=seed * 100_003 + episode)
        done, episode_return, success = False, 0.0, 0.0
        while not done:
            _, reward, terminated, truncated, info = env.step(rng.uniform(-1.0, 1.0, env.action_space.shape))
            done = terminated or truncated
            episode_return += reward
            success = max(success, float(info.get("success", 0.0)))
        returns.append(episode_return)
        successes.append(success)
    env.close()
    scores = {"episode_reward": float(np.mean(returns))}
    if utils.is_metaworld(task):
        scores["success_rate"] = 100.0 * float(np.mean(successes))
    return scores


def draw_curves(
    runs: Sequence[Run],
    x: str = "step",
    metric: str = "auto",
    reference: Sequence[Run] = (),
    reps: int = 2000,
    band: str = "ci",
    phases: bool = False,
    random_baseline: int | None = None,
) -> plt.Figure:
    """One subplot per task (one row per x axis) with each method's mean and band (`BANDS`); references dashed.
    `phases`: shade and name the schedule's phases and mark the query rounds (step axes only); `random_baseline`:
    a line at a uniformly random policy's score over that many episodes."""
    x_axes = _axes_list(x)
    groups = _group(runs)
    tasks = sorted({task for task, _ in groups})
    reference_groups = {key: members for key, members in _group(reference).items() if key[0] in tasks}
    methods = sorted({method for _, method in groups} | {method for _, method in reference_groups})
    colors = {method: f"C{i % 10}" for i, method in enumerate(methods)}
    size = (5.2 * len(tasks) + 3.4, 4.2 * len(x_axes))  # + the legend beside the subplots
    fig, axes = plt.subplots(len(x_axes), len(tasks), figsize=size, squeeze=False, layout="constrained")
    for col, task in enumerate(tasks):
        task_runs = [r for r in runs if r.task == task]
        task_metric = resolve_metric(task_runs, metric)
        random_score = None if random_baseline is None else _random_score(task, task_metric, random_baseline)
        for row, x_axis in enumerate(x_axes):
            ax = axes[row][col]
            for (group_task, method), members in sorted(groups.items()):
                if group_task == task:
                    curve = aggregate_curve(members, task_metric, x_axis, reps, band)
                    _draw(ax, curve, _method_name(method), colors[method], "-", 0.2)
            for (group_task, method), members in sorted(reference_groups.items()):
                if group_task != task:
                    continue
                if not all(has_metric(r, task_metric) for r in members):
                    print(f"plot: reference {method} on {task} has no {task_metric}; not drawn", file=sys.stderr)
                    continue
                curve = aggregate_curve(members, task_metric, x_axis, reps, band)
                _draw(ax, curve, f"{_method_name(method)}, reference", colors[method], "--", 0.12)
            if random_score is not None:
                label = f"uniformly random policy: {random_score:.1f} ({random_baseline} episodes)"
                ax.axhline(random_score, color="0.3", linestyle=":", linewidth=1.2, label=label)
            if phases and x_axis == "step":
                _draw_schedule(ax, task, task_runs)
            ax.set_title(task)
            ax.set_xlabel(X_AXES[x_axis])
            ax.set_ylabel(METRIC_LABELS.get(task_metric, task_metric))
            ax.grid(alpha=0.3)
    # One legend beside the subplots: methods keep their colour across tasks, and no curve or phase hides under it.
    entries = _legend_entries([entry for ax in axes.flat for entry in zip(*ax.get_legend_handles_labels())])
    fig.legend(entries.values(), entries.keys(), loc="outside right upper", fontsize="small",
               title=f"mean over seeds; band: {BANDS[band]}", title_fontsize="small")  # fmt: skip
    return fig


SEEDS_LABEL = re.compile(r"^(?P<name>.*) \((?P<seeds>\d+) seeds?\)$")  # _draw's labels
RANDOM_LABEL = re.compile(r"^uniformly random policy: (?P<score>\S+) \((?P<episodes>\d+) episodes\)$")


def _legend_entries(entries: list[tuple[Any, str]]) -> dict[str, Any]:
    """Label -> handle for the figure's one legend, one entry per curve: where the panels differ in its number of
    seeds, the entry gives their range; where they differ in the random policy's score, the panels show it."""
    handles: dict[str, Any] = {}
    labels: dict[str, set[str]] = {}
    seeds: dict[str, set[int]] = {}
    for handle, label in entries:
        name = label
        if match := SEEDS_LABEL.match(label):
            name = match["name"]
            seeds.setdefault(name, set()).add(int(match["seeds"]))
        elif match := RANDOM_LABEL.match(label):
            name = f"uniformly random policy ({match['episodes']} episodes)"
        handles.setdefault(name, handle)
        labels.setdefault(name, set()).add(label)
    merged = {}
    for name, handle in handles.items():
        if len(labels[name]) == 1:
            (label,) = labels[name]
        elif name in seeds:
            label = f"{name} ({min(seeds[name])}-{max(seeds[name])} seeds per task)"
        else:
            label = name
        merged[label] = handle
    return merged


def plot_curves(
    runs: Sequence[Run],
    out: str | Path,
    x: str = "step",
    metric: str = "auto",
    reference: Sequence[Run] = (),
    reps: int = 2000,
    band: str = "ci",
    phases: bool = False,
    random_baseline: int | None = None,
) -> Path:
    """`draw_curves` saved to `out` (PNG)."""
    fig = draw_curves(runs, x, metric, reference, reps, band, phases, random_baseline)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def reference_band(run_dir: str | Path, reference: Sequence[Run]) -> str:
    """A summary line: where the run's last evaluation return lies against the reference runs of its task and
    method at the same step (their lowest to highest), so a user sees whether their run is one of theirs."""
    run = load_run(run_dir)
    if run is None:
        raise ValueError(f"{Path(run_dir) / 'eval.csv'} has no evaluation yet; allowed: a run that has evaluated")
    step, final = int(run.evals.step.iloc[-1]), float(run.evals.episode_reward.iloc[-1])
    same = [ref for ref in reference if (ref.task, ref.method) == (run.task, run.method)]
    values = [float(ref.evals.episode_reward[ref.evals.step == step].iloc[0]) for ref in same
              if (ref.evals.step == step).any()]  # fmt: skip
    who = f"{_method_name(run.method)} on {run.task}"
    if not values:
        return f"  reference: none for {who} at step {step} in {Path(same[0].source).name if same else 'it'}"
    low, high = min(values), max(values)
    where = "inside" if low <= final <= high else ("below" if final < low else "above")
    return (
        f"  reference: {who}, {len(values)} seeds ({Path(same[0].source).name}), ended at {low:.1f} to "
        f"{high:.1f} (mean {np.mean(values):.1f}) at step {step}: this run's {final:.1f} is {where} that range"
    )


def _method_name(method: str) -> str:
    return METHOD_NAMES.get(method, method)


def _random_score(task: str, metric: str, episodes: int) -> float | None:
    scores = random_policy_scores(task, episodes)
    if metric not in scores:
        print(f"plot: a random policy has no {metric}; no random-policy line on {task}", file=sys.stderr)
        return None
    return scores[metric]


def _draw_schedule(ax: plt.Axes, task: str, runs: Sequence[Run]) -> None:
    """Shade and name the phases of the runs' schedule (that of the runs learning a reward when some do, as SAC
    on the true reward has no phases of its own), and tick every query round on a top axis with the labels used
    so far (those of the first run that asks queries, named when the runs' rounds differ)."""
    learning = [run for run in runs if run.config.get("reward_source") == "learned"] or list(runs)
    schedules = {run_phases(run) for run in learning}
    if len(schedules) > 1:
        print(f"plot: the runs on {task} have different schedules; phases not shaded", file=sys.stderr)
    elif schedule := schedules.pop():
        _shade_phases(ax, schedule, max(float(run.evals["step"].iloc[-1]) for run in runs))
    asking = [run for run in runs if query_rounds(run)]
    if asking:
        rounds = query_rounds(asking[0])
        same = all(query_rounds(run) == rounds for run in asking)
        _tick_query_rounds(ax, rounds, "" if same else f" ({asking[0].method} seed {asking[0].seed})")


def _shade_phases(ax: plt.Axes, schedule: tuple[tuple[str, float], ...], x_end: float) -> None:
    low, high = ax.get_xlim()  # before the spans, which would widen it
    ends = [start for _, start in schedule[1:]] + [x_end]
    for (name, start), end in zip(schedule, ends, strict=True):
        end = min(end, x_end)
        if end <= start:
            continue
        ax.axvspan(start, end, color=PHASE_COLORS[name], alpha=0.1, linewidth=0, zorder=0)
        # A name across its phase when the phase is wide enough to hold it, else upright inside it.
        wide = (end - start) / (high - low) >= 0.3
        ax.text((start + end) / 2, 0.98, name, transform=ax.get_xaxis_transform(), rotation=0 if wide else 90,
                ha="center", va="top", fontsize="x-small", color="0.25")  # fmt: skip


def _tick_query_rounds(ax: plt.Axes, rounds: list[tuple[float, int]], whose: str) -> None:
    top = ax.secondary_xaxis("top")
    steps, labels = zip(*rounds, strict=True)
    # Every round keeps its tick; at most 12 carry their label, so that long schedules stay legible.
    every = math.ceil(len(rounds) / 12)
    top.set_xticks(steps, [str(used) if index % every == 0 else "" for index, used in enumerate(labels)])
    top.tick_params(labelsize="x-small")
    top.set_xlabel(f"labels used so far, at each query round{whose}", fontsize="small")


def _draw(ax: plt.Axes, curve: pd.DataFrame, label: str, color: str, style: str, band_alpha: float) -> None:
    seeds = int(curve["seeds"].iloc[0])
    ax.plot(curve["x"], curve["mean"], style, color=color, label=f"{label} ({seeds} seed{'s' * (seeds > 1)})")
    ax.fill_between(curve["x"], curve["low"], curve["high"], color=color, alpha=band_alpha, linewidth=0)


def final_scores(runs: Sequence[Run], metric: str = "auto", last: int = 1) -> pd.DataFrame:
    """One row per run: task, method, seed, max_feedback, metric, final (mean of its last `last` evals)."""
    if last < 1:
        raise ValueError(f"--last {last} is not valid; allowed: an integer >= 1")
    rows = []
    for task, task_runs in _group_by_task(runs).items():
        task_metric = resolve_metric(task_runs, metric)
        for run in task_runs:
            _, values = run_curve(run, task_metric, "step")
            rows.append(
                {
                    "task": task,
                    "method": run.method,
                    "seed": run.seed,
                    "max_feedback": run.max_feedback,
                    "metric": task_metric,
                    "final": float(values[-last:].mean()),
                }
            )
    return pd.DataFrame(rows)


def _group_by_task(runs: Iterable[Run]) -> dict[str, list[Run]]:
    by_task: dict[str, list[Run]] = {}
    for run in runs:
        by_task.setdefault(run.task, []).append(run)
    return dict(sorted(by_task.items()))


def final_table(scores: pd.DataFrame, keys: Sequence[str] = ("task", "method")) -> pd.DataFrame:
    """Mean and population std (ddof=0) of final scores over seeds, per `keys`."""
    grouped = scores.groupby([*keys, "metric"], sort=True, dropna=False)["final"]
    table = grouped.agg(seeds="count", mean="mean", std=lambda v: float(np.std(v.to_numpy(), ddof=0)))
    return table.reset_index()


def normalise_scores(scores: pd.DataFrame, how: str = "max") -> pd.Series:
    """Per-task scale: success_rate / 100, other metrics / the task's largest |final| (`how='none'`: raw)."""
    if how == "none":
        return scores["final"]
    if how != "max":
        raise ValueError(f"normalisation {how!r} is not valid; allowed: max, none")
    task_max = scores.groupby("task")["final"].transform(lambda v: v.abs().max())
    scale = task_max.where(scores["metric"] != "success_rate", 100.0).replace(0.0, 1.0)
    return scores["final"] / scale


def _pooled_iqm(*per_task: np.ndarray) -> np.ndarray:
    """IQM of every (task, seed) score, given one array of seed scores per task (rliable's `func` signature)."""
    return np.array([aggregate_iqm(np.concatenate(per_task))])


def iqm_table(scores: pd.DataFrame, normalise: str = "max", reps: int = 2000, level: float = 0.95) -> pd.DataFrame:
    """IQM over (task, seed) of normalised final scores per method with a stratified-bootstrap CI (rliable).

    Only tasks every method has are used, so the methods are compared on the same tasks. Each task's seeds are
    one stratum: rliable's `get_interval_estimates` resamples them with replacement independently per task.
    """
    scores = scores.assign(score=normalise_scores(scores, normalise))
    methods = sorted(scores["method"].unique())
    common = sorted(set.intersection(*(set(scores.loc[scores["method"] == m, "task"]) for m in methods)))
    columns = ["method", "tasks", "runs", "iqm", "ci_low", "ci_high", "normalisation"]
    if not common:
        return pd.DataFrame(columns=columns)
    score_dict = {
        method: [scores.loc[(scores["method"] == method) & (scores["task"] == t), "score"].to_numpy() for t in common]
        for method in methods
    }
    saved_state = np.random.get_state()
    np.random.seed(BOOTSTRAP_SEED)
    try:
        point, interval = rly.get_interval_estimates(score_dict, _pooled_iqm, reps=reps, confidence_interval_size=level)
    finally:
        np.random.set_state(saved_state)
    rows = [
        {
            "method": method,
            "tasks": len(common),
            "runs": sum(v.size for v in per_task),
            "iqm": float(point[method][0]),
            "ci_low": float(interval[method][0, 0]),
            "ci_high": float(interval[method][1, 0]),
            "normalisation": normalise,
        }
        for method, per_task in score_dict.items()
    ]
    return pd.DataFrame(rows, columns=columns)


def _markdown(table: pd.DataFrame, columns: Sequence[tuple[str, str]]) -> str:
    """A Markdown table from (header, spec) pairs; spec is a column name, `mean±std` or `ci`."""
    lines = ["| " + " | ".join(h for h, _ in columns) + " |", "|" + "---|" * len(columns)]
    for _, row in table.iterrows():
        lines.append("| " + " | ".join(_cell(row, spec) for _, spec in columns) + " |")
    return "\n".join(lines)


def _cell(row: pd.Series, spec: str) -> str:
    if spec == "mean±std":
        return f"{row['mean']:.2f} ± {row['std']:.2f}"
    if spec == "ci":
        return f"[{row['ci_low']:.3f}, {row['ci_high']:.3f}]"
    value = row[spec]
    if isinstance(value, float):
        return "" if np.isnan(value) else f"{value:.3f}"
    return str(value)


def write_report(
    scores: pd.DataFrame, out_dir: Path, keys: Sequence[str], last: int, normalise: str, reps: int
) -> dict[str, Path]:
    """Final-performance table and IQM, as CSV files and one Markdown file, in `out_dir`."""
    table = final_table(scores, keys)
    iqm = iqm_table(scores, normalise, reps)
    paths = {
        "final_csv": out_dir / "final_performance.csv",
        "iqm_csv": out_dir / "iqm.csv",
        "markdown": out_dir / "final_performance.md",
    }
    table.to_csv(paths["final_csv"], index=False)
    iqm.to_csv(paths["iqm_csv"], index=False)
    columns = [(key, key) for key in keys] + [("metric", "metric"), ("seeds", "seeds"), ("final", "mean±std")]
    scale = "success_rate / 100, other metrics / the task's max |final|" if normalise == "max" else "raw scores"
    iqm_text = (
        _markdown(iqm, [("method", "method"), ("tasks", "tasks"), ("runs", "runs"), ("IQM", "iqm"), ("95% CI", "ci")])
        if len(iqm)
        else "No task is shared by every method, so no IQM."
    )
    text = (
        "# Final performance\n\n"
        f"Final score of a seed = mean of its last {last} evaluation(s); mean ± std (ddof=0) over seeds.\n\n"
        f"{_markdown(table, columns)}\n\n"
        "## IQM across tasks\n\n"
        f"Interquartile mean over (task, seed) of scores normalised per task ({scale}), on the tasks every method has;"
        f" 95% stratified-bootstrap CI (rliable, {reps} resamples of seeds within each task, seed {BOOTSTRAP_SEED})."
        "\n\n"
        f"{iqm_text}\n"
    )
    paths["markdown"].write_text(text)
    return paths


def last_video(run_dir: Path) -> Path:
    """The run's video of its latest filmed evaluation."""
    from run_summary import run_videos

    videos = run_videos(run_dir)
    if not videos:
        raise ValueError(f"{run_dir} has no video/eval_<step>.mp4; allowed: a run trained with save_video=true")
    return videos[-1]


def still_frame(path: str | Path, out: str | Path, frames: int = 1) -> Path:
    """Write `frames` evenly spaced frames of a video side by side as one PNG, ending with its last frame; `path`
    is an mp4 or a run directory (its last video)."""
    import utils  # torch: loaded only here
    from video import decode

    path = Path(path)
    if not path.exists():
        raise ValueError(f"path {str(path)!r} does not exist; allowed: a run directory or an mp4")
    if frames < 1:
        raise ValueError(f"--frames {frames} is not valid; allowed: an integer >= 1")
    video = decode(last_video(path) if path.is_dir() else path)
    if frames > len(video):
        raise ValueError(f"--frames {frames} is not valid; allowed: 1 to {len(video)} (the video's frames)")
    chosen = np.linspace(len(video) - 1, 0, frames).round().astype(int)[::-1]
    buffer = BytesIO()
    Image.fromarray(np.concatenate(list(video[chosen]), axis=1)).save(buffer, format="PNG")
    utils.atomic_write_bytes(out, buffer.getvalue())
    return Path(out)


def _safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text)


def compare(
    paths: Sequence[str | Path],
    out_dir: str | Path = "figure/compare",
    metric: str = "auto",
    x: str = "step",
    last: int = 1,
    normalise: str = "max",
    reference: Sequence[Run] = (),
    reps: int = 2000,
    by_feedback: bool = False,
    band: str = "ci",
) -> dict[str, Path]:
    """One PNG per task with every method's curve, plus final-performance and IQM tables in `out_dir`.

    `by_feedback` also separates runs by their config's `max_feedback` (what `sweep` does).
    """
    runs = load_runs(paths)
    if metric != "auto":
        lacking = sorted({f"{run.task}/{run.method}" for run in runs if not has_metric(run, metric)})
        if lacking:
            print(f"plot: {', '.join(lacking)} did not log {metric}; left out", file=sys.stderr)
        runs = [run for run in runs if has_metric(run, metric)]
        if not runs:
            raise ValueError(f"no run under the given paths logged {metric!r}; allowed: an eval or train.csv column")
    keys: tuple[str, ...] = ("task", "method")
    if by_feedback:
        runs = [replace(run, method=f"{run.method} fb={run.max_feedback}") for run in runs]
        keys = ("task", "method", "max_feedback")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    outputs = write_report(final_scores(runs, metric, last), out_dir, keys, last, normalise, reps)
    for task, task_runs in _group_by_task(runs).items():
        outputs[f"curves/{task}"] = plot_curves(
            task_runs, out_dir / f"{_safe_name(task)}.png", x, metric, reference, reps, band
        )
    return outputs


def sweep(
    path: str | Path,
    out_dir: str | Path = "figure",
    metric: str = "auto",
    x: str = "step",
    last: int = 1,
    normalise: str = "max",
    reference: Sequence[Run] = (),
    reps: int = 2000,
    band: str = "ci",
) -> dict[str, Path]:
    """`compare` for every run under `path`, grouped by (task, method, max_feedback) from the configs."""
    return compare([path], out_dir, metric, x, last, normalise, reference, reps, by_feedback=True, band=band)


def export_reference(
    paths: Sequence[str | Path],
    name: str,
    out_dir: str | Path = DEFAULT_REFERENCE_DIR,
    machine: str = "not recorded",
    train_command: str = "not recorded",
) -> Path:
    """Write `<out_dir>/<name>.csv` in the reference format from run directories and note it in README.md."""
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
        raise ValueError(f"reference name {name!r} is not valid; allowed: letters, digits, '_', '.', '-'")
    runs = load_runs(paths)
    frames = []
    for run in runs:
        frame = run.evals.reindex(columns=["step", "total_feedback", "episode_reward", "success_rate"])
        frames.append(frame.assign(task=run.task, method=run.method, seed=run.seed))
    table = pd.concat(frames, ignore_index=True)
    columns = list(REFERENCE_COLUMNS) + (["success_rate"] if table["success_rate"].notna().any() else [])
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    out = out_dir / f"{name}.csv"
    table[columns].to_csv(out, index=False)
    out_option = [] if out_dir.resolve() == DEFAULT_REFERENCE_DIR else ["--out", str(out_dir)]
    export_command = shlex.join(
        ["python", "-m", "plot", "export-reference", *map(str, paths), "--name", name, *out_option]
    )
    _note_reference(out_dir / "README.md", name, runs, export_command, machine, train_command)
    return out


def _note_reference(
    readme: Path, name: str, runs: Sequence[Run], export_command: str, machine: str, train_command: str
) -> None:
    """Replace (or add) the README section describing reference set `name`."""
    header = (
        "# Reference curves\n\n"
        "One CSV per reference set, columns `task, method, seed, step, total_feedback, episode_reward"
        "[, success_rate]`, written by `python -m plot export-reference`. Overlay them with `--reference`.\n"
    )
    text = readme.read_text() if readme.is_file() else header
    sections = [s for s in re.split(r"(?m)^(?=## )", text) if not s.startswith(f"## {name}\n")]
    groups = _group(runs)
    lines = [
        f"- {task} / {method}: seeds {sorted(r.seed for r in members)}" for (task, method), members in groups.items()
    ]
    entry = (
        f"## {name}\n\n"
        f"- exported {datetime.now(UTC):%Y-%m-%d} with: `{export_command}`\n"
        f"- training command: {train_command}\n"
        f"- machine: {machine}\n" + "\n".join(lines) + "\n"
    )
    readme.write_text("".join(sections).rstrip("\n") + "\n\n" + entry)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m plot", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="subcommand", required=True)

    def add_common(sub: argparse.ArgumentParser) -> None:
        sub.add_argument(
            "--metric",
            default="auto",
            help="eval column, or a train.csv column such as query_log_likelihood; auto: success_rate if logged, "
            "else episode_reward",
        )
        sub.add_argument("--x", default="step", choices=["step", "feedback", "both"], help="x axis of the curves")
        sub.add_argument("--reps", type=int, default=2000, help="bootstrap resamples")
        sub.add_argument(
            "--reference",
            nargs="?",
            const=str(DEFAULT_REFERENCE_DIR),
            default=None,
            metavar="PATH",
            help=f"overlay reference curves: a folder of reference CSVs or one CSV (default {DEFAULT_REFERENCE_DIR})",
        )
        sub.add_argument("--reference-methods", nargs="+", metavar="METHOD", help="only these reference methods")
        sub.add_argument("--band", default="ci", choices=list(BANDS), help="ci: 95%% CI of the mean; range: min-max")

    curves = commands.add_parser("curves", help="mean ± 95%% CI learning curves, one subplot per task")
    curves.add_argument("paths", nargs="+", help="run directories or folders holding them")
    curves.add_argument("--out", default="figure/curves.png")
    curves.add_argument(
        "--phases", action="store_true", help="shade and name the schedule's phases, tick each query round on top"
    )
    curves.add_argument(
        "--random-baseline",
        nargs="?",
        type=int,
        const=10,
        default=None,
        metavar="EPISODES",
        help="a line at a uniformly random policy's score over EPISODES seeded episodes (default 10)",
    )
    add_common(curves)

    for name, help_text, default_out in (
        ("compare", "per-task curves of every method + final-performance and IQM tables", "figure/compare"),
        ("sweep", "like compare, grouped by (task, method, max_feedback)", "figure"),
    ):
        sub = commands.add_parser(name, help=help_text)
        sub.add_argument("paths", nargs="+" if name == "compare" else 1, help="folders holding run directories")
        sub.add_argument("--out-dir", default=default_out)
        sub.add_argument("--last", type=int, default=1, help="final score = mean of the last K evaluations")
        sub.add_argument("--normalise", default="max", choices=["max", "none"], help="per-task scale for the IQM")
        add_common(sub)

    export = commands.add_parser("export-reference", help="write run directories as a reference CSV")
    export.add_argument("paths", nargs="+")
    export.add_argument("--name", required=True)
    export.add_argument("--out", default=str(DEFAULT_REFERENCE_DIR))
    export.add_argument("--machine", default="not recorded", help="the machine that trained the runs")
    export.add_argument("--train-command", default="not recorded", help="the command line that trained the runs")

    still = commands.add_parser("still", help="a PNG of frames of a run's last video (or of one mp4)")
    still.add_argument("path", help="a run directory (its video/eval_<step>.mp4 with the largest step) or an mp4")
    still.add_argument("--out", required=True)
    still.add_argument("--frames", type=int, default=1, help="evenly spaced frames side by side, the last one last")

    summary = commands.add_parser("summary", help="a run's end-of-run summary, with the figures drawn from it")
    summary.add_argument("path", help="a run directory")
    summary.add_argument("--figure", help="a figure drawn from the run")
    summary.add_argument("--still", help="a still frame of its video")
    summary.add_argument("--reference", help="a reference CSV: say where the run ends against its method's runs")
    summary.add_argument(
        "--after-run",
        action="store_true",
        help="only what the training run's own summary lacks: the figures and the reference line",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] not in SUBCOMMANDS and not argv[0].startswith("-"):
        argv.insert(0, "curves")
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        if args.subcommand == "export-reference":
            print(export_reference(args.paths, args.name, args.out, args.machine, args.train_command))
            return 0
        if args.subcommand == "still":
            print(still_frame(args.path, args.out, args.frames))
            return 0
        if args.subcommand == "summary":
            from run_summary import figures_line, summarise_run

            if args.after_run:
                print(figures_line(args.figure, args.still))
            else:
                print(summarise_run(args.path, figure=args.figure, still=args.still))
            if args.reference:
                print(reference_band(args.path, load_reference(args.reference)))
            return 0
        if args.reference_methods and not args.reference:
            raise ValueError(f"--reference-methods {' '.join(args.reference_methods)} needs --reference PATH")
        reference = load_reference(args.reference, args.reference_methods) if args.reference else []
        if args.subcommand == "curves":
            runs = load_runs(args.paths)
            print(plot_curves(runs, args.out, args.x, args.metric, reference, args.reps, args.band, args.phases,
                              args.random_baseline))  # fmt: skip
            return 0
        outputs = compare(
            args.paths,
            args.out_dir,
            args.metric,
            args.x,
            args.last,
            args.normalise,
            reference,
            args.reps,
            by_feedback=args.subcommand == "sweep",
            band=args.band,
        )
    except ValueError as error:
        print(f"plot: error: {error}", file=sys.stderr)
        return 2
    for path in outputs.values():
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
