"""What a finished run did, in a few console lines: the last thing `train_QPA.py` prints, and `python -m plot
summary RUN_DIR` prints it again later, naming the figures drawn since. The lines are, in order: the task, method,
seed and steps; the final and the best evaluation return (and success rate on Meta-World); the labels used; the
wall time and environment steps per second; the paths of the figure, the last video and the logs.

Everything comes from the run directory (config.yaml, eval.csv, train.csv, video/) except the wall time, which
the training process measures itself. Read back later, the time is the sum over the run's sessions of train.csv's
`total_time`, which stops at each session's last episode end (before the final evaluation), so it is called
training time there.
"""

from __future__ import annotations

import csv
import math
import os
from pathlib import Path

from omegaconf import OmegaConf

LOG_FILES = ("eval.csv", "train.csv")
LOG_DIRS = ("tb", "wandb")


def _rows(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        return []
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def _number(row: dict[str, str], column: str) -> float:
    value = row.get(column, "")
    return float(value) if value not in ("", None) else math.nan


def _shown(path: Path) -> str:
    """`path` relative to the working directory when it lies inside it (shorter to read and to copy)."""
    path = Path(path).absolute()
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _duration(seconds: float) -> str:
    minutes, seconds = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m {seconds:02d}s" if hours else f"{minutes}m {seconds:02d}s"


def logged_wall_time(train_rows: list[dict[str, str]]) -> float:
    """Seconds of training train.csv accounts for: `total_time` restarts at 0 in each resumed session, so the
    total is the sum of each session's last value."""
    total, previous = 0.0, 0.0
    for row in train_rows:
        value = _number(row, "total_time")
        if math.isnan(value):
            continue
        if value < previous:
            total += previous
        previous = value
    return total + previous


def _best(evals: list[dict[str, str]], column: str) -> tuple[float, int, float, int]:
    """(final value, its step, best value, the first step reaching it) of an eval column."""
    points = [(_number(row, column), int(float(row["step"]))) for row in evals]
    points = [(value, step) for value, step in points if not math.isnan(value)]
    best_value = max(value for value, _ in points)
    best_step = next(step for value, step in points if value == best_value)
    return points[-1][0], points[-1][1], best_value, best_step


def run_videos(run_dir: Path) -> list[Path]:
    """The run's evaluation videos, video/eval_<step>.mp4, by step."""
    return sorted(run_dir.glob("video/eval_*.mp4"), key=lambda path: int(path.stem.removeprefix("eval_")))


def figures_line(figure: str | Path, still: str | Path | None = None) -> str:
    """The summary's line naming the figures drawn from the run."""
    return f"  figure: {_shown(Path(figure))}" + (f", still frame: {_shown(Path(still))}" if still else "")


def summarise_run(
    run_dir: str | Path,
    wall_time: float | None = None,
    first_step: int = 0,
    figure: str | Path | None = None,
    still: str | Path | None = None,
) -> str:
    """The summary lines of the run in `run_dir`. `wall_time`: seconds the training process ran, from `first_step`
    (the step it resumed from) to the end; None reads the logged time instead. `figure`, `still`: images drawn
    from the run, when there are any."""
    run_dir = Path(run_dir)
    config = OmegaConf.load(run_dir / "config.yaml")
    evals = [row for row in _rows(run_dir / "eval.csv") if row.get("step")]
    if not evals:
        raise ValueError(f"{run_dir / 'eval.csv'} has no evaluation yet; allowed: a run directory that has evaluated")
    last_step = int(float(evals[-1]["step"]))
    label = config.get("run_label") or config.get("experiment")
    lines = [f"run summary: {config.env}, {label}, seed {config.seed}, {last_step} environment steps"]

    final, final_step, best, best_step = _best(evals, "episode_reward")
    episodes = f"{config.num_eval_episodes} episode{'s' * (config.num_eval_episodes > 1)}"
    lines.append(f"  evaluation return: {final:.1f} at the end (step {final_step}), best {best:.1f} (step {best_step});"
                 f" true reward, mean of {episodes}")  # fmt: skip
    if "success_rate" in evals[-1]:
        final, _, best, best_step = _best(evals, "success_rate")
        lines.append(f"  success rate: {final:.1f}% at the end, best {best:.1f}% (step {best_step})")

    if config.reward_source == "learned":
        asked, labelled = _number(evals[-1], "total_feedback"), _number(evals[-1], "labeled_feedback")
        lines.append(f"  labels used: {labelled:.0f} ({asked:.0f} queries asked, budget {config.max_feedback})")
    else:
        lines.append("  labels used: none (reward_source=true: SAC on the environment's reward)")

    if wall_time is None:
        seconds = logged_wall_time(_rows(run_dir / "train.csv"))
        rate = last_step / seconds if seconds > 0 else math.nan
        lines.append(f"  training time: {_duration(seconds)} as train.csv logs it (to each session's last episode "
                     f"end), {rate:.1f} environment steps/s")  # fmt: skip
    else:
        resumed = f", resumed at step {first_step}" if first_step else ""
        rate = (last_step - first_step) / wall_time if wall_time > 0 else math.nan
        lines.append(f"  wall time: {_duration(wall_time)} (this process: steps {first_step} to {last_step}{resumed}),"
                     f" {rate:.1f} environment steps/s")  # fmt: skip

    if figure is not None:
        lines.append(figures_line(figure, still))
    else:
        lines.append(f"  figure: none yet; python -m plot curves {_shown(run_dir)} --phases --random-baseline "
                     f"--out {_shown(run_dir / 'curves.png')}")  # fmt: skip

    videos = run_videos(run_dir)
    if videos:
        lines.append(f"  video: {_shown(videos[-1])} (the last of {len(videos)} in that folder)")
    elif config.get("save_video"):
        lines.append("  video: none (no frame could be rendered: see the run's warning line)")
    else:
        lines.append("  video: none (save_video=false)")

    logs = [name for name in LOG_FILES if (run_dir / name).exists()]
    logs += [f"{name}{os.sep}" for name in LOG_DIRS if (run_dir / name).is_dir()]
    lines.append(f"  logs: {', '.join(logs)} in {_shown(run_dir)}")
    return "\n".join(lines)
