"""The Meta-World pilot before the multi-task table: which task reaches the bar, at which lr and budget, how fast.

    python bench/pilot.py --root /work/runs/pilot --jobs 2            # train what is missing, then report
    python bench/pilot.py --root /work/runs/pilot --report-only      # the table of what ran
    python bench/pilot.py --root /tmp/p --entries drawer-open_lr5e-4 -- num_train_steps=20000   # a smoke check

Each entry of scripts/sweeps/pilot.yaml is SAC on the true reward, seed 1, in <root>/<entry>. A run is watched
while it trains: once its evaluation success rate is at least BAR at two evaluations in a row it is stopped
(SIGTERM: train_QPA.py keeps its checkpoint and logs) and counts as qualified, else it trains to its budget.
Run again, it skips entries that qualified or reached their budget and resumes the others from their checkpoints.
The report gives, per entry: the task and lr, the step of the first evaluation at the bar (or none), the last
success rate and return, environment steps per second and minutes per 100k steps (from train.csv, so measured
beside whatever else ran: the table's speed figures come from bench_train.py on a quiet machine).
"""

from __future__ import annotations

import argparse
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.run_pool import RunPool, StoppedError  # noqa: E402

TABLE = REPO / "scripts" / "sweeps" / "pilot.yaml"
BAR = 80.0  # evaluation success rate (%) a Meta-World task needs, at two evaluations in a row
POLL_SECONDS = 20


def load_entries(path: Path = TABLE) -> dict[str, list[str]]:
    """Entry name -> the overrides of its run (the table's common ones first)."""
    table = yaml.safe_load(path.read_text())
    common = shlex.split(table.get("overrides", ""))
    return {name: [*common, *shlex.split(text)] for name, text in table["tasks"].items()}


def evaluations(run_dir: Path) -> pd.DataFrame:
    path = run_dir / "eval.csv"
    return pd.read_csv(path) if path.is_file() and path.stat().st_size > 0 else pd.DataFrame()


def qualified_at(evals: pd.DataFrame) -> int | None:
    """The step of the first evaluation of two in a row at the bar, or None."""
    if "success_rate" not in evals:
        return None
    at_bar = (evals["success_rate"] >= BAR).to_numpy()
    for index in range(1, len(at_bar)):
        if at_bar[index - 1] and at_bar[index]:
            return int(evals["step"].iloc[index - 1])
    return None


def budget(run_dir: Path) -> int | None:
    config = run_dir / "config.yaml"
    return int(yaml.safe_load(config.read_text())["num_train_steps"]) if config.is_file() else None


def done(run_dir: Path) -> bool:
    evals = evaluations(run_dir)
    if evals.empty:
        return False
    return qualified_at(evals) is not None or int(evals["step"].iloc[-1]) >= (budget(run_dir) or float("inf"))


def train_watched(pool: RunPool, name: str, overrides: list[str], run_dir: Path) -> int | None:
    """Train one entry, stopping it at the bar; the training process's exit status (0 when stopped there), None
    when the pool was stopped before it started."""
    if pool.stopped:
        return None
    command = [sys.executable, "train_QPA.py", *overrides, "seed=1", f"hydra.run.dir={run_dir}"]
    print(f"[pilot] {name}: {shlex.join(command)}", flush=True)
    with open(run_dir.parent / f"{name}.log", "a") as log:
        process = pool.popen(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
        if process is None:
            return None
        while process.poll() is None:
            time.sleep(POLL_SECONDS)
            if qualified_at(evaluations(run_dir)) is not None:
                process.send_signal(signal.SIGTERM)
                process.wait()
                print(f"[pilot] {name}: at the bar, stopped", flush=True)
                return 0
    return process.returncode


def train_all(entries: dict[str, list[str]], root: Path, jobs: int, extras: list[str]) -> bool:
    """Train the entries not done under `root`, `jobs` at a time; True if each reached the bar or its budget.
    Raises StoppedError when a signal stopped the training (bench/run_pool.py)."""
    pending = [name for name in entries if not done(root / name)]
    root.mkdir(parents=True, exist_ok=True)
    pool = RunPool("pilot")
    statuses = pool.map(lambda name: train_watched(pool, name, [*entries[name], *extras], root / name), pending,
                        jobs)  # fmt: skip
    failed = [name for name, status in zip(pending, statuses, strict=True) if status != 0]
    for name in failed:
        print(f"[pilot] {name} did not finish: see {root / f'{name}.log'}", file=sys.stderr)
    return not failed


def report(entries: dict[str, list[str]], root: Path) -> pd.DataFrame:
    rows = []
    for name in entries:
        run_dir = root / name
        evals = evaluations(run_dir)
        if evals.empty:
            continue
        train = pd.read_csv(run_dir / "train.csv")
        config = yaml.safe_load((run_dir / "config.yaml").read_text())
        rate = float(train["fps"].median())
        reached = qualified_at(evals)
        rows.append({
            "entry": name, "env": config["env"], "lr": config["agent"]["params"]["actor_lr"],
            "budget": config["num_train_steps"], "trained": int(evals["step"].iloc[-1]),
            "reached_80pct_at": reached, "last_success": float(evals["success_rate"].iloc[-1]),
            "best_success": float(evals["success_rate"].max()), "last_return": float(evals["episode_reward"].iloc[-1]),
            "env_steps_per_s": round(rate, 1), "minutes_per_100k": round(100_000 / rate / 60, 1),
        })  # fmt: skip
    table = pd.DataFrame(rows)
    print(table.to_string(index=False) if rows else "[pilot] no run has evaluated yet")
    return table


def main(argv: list[str]) -> int:
    extras: list[str] = []
    if "--" in argv:
        argv, extras = argv[: argv.index("--")], argv[argv.index("--") + 1 :]
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, required=True, help="where the runs go (outside the work tree)")
    parser.add_argument("--jobs", type=int, default=2, help="runs at a time, 1 torch thread each")
    parser.add_argument("--entries", nargs="+", help="only these entries of scripts/sweeps/pilot.yaml")
    parser.add_argument("--report-only", action="store_true", help="report the runs under --root, train none")
    parser.add_argument("--csv", type=Path, help="also write the report here")
    args = parser.parse_args(argv)
    entries = load_entries()
    unknown = [name for name in args.entries or () if name not in entries]
    if unknown:
        parser.error(f"--entries {unknown[0]} is invalid; allowed: {', '.join(entries)}")
    if args.entries:
        entries = {name: entries[name] for name in args.entries}
    try:
        finished = args.report_only or train_all(entries, args.root, args.jobs, extras)
    except StoppedError:
        return 130
    table = report(entries, args.root)
    if args.csv is not None:
        table.to_csv(args.csv, index=False)
    return 0 if finished else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
