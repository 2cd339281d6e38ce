"""The GPU figures of docs/PERFORMANCE.md in one command and one markdown table: eager against CUDA-graphed SAC
updates with their matrix-multiply floor, the training loop's env steps/s after the first feedback, several runs
sharing the GPU, TF32, whether a graphed run writes the eager run's logs, and the machine it ran on.

    python bench/gpu_report.py --out gpu_report.md           # one CUDA GPU; sized for at most 8 minutes
    python bench/gpu_report.py --smoke --out smoke.md        # a CPU in well under a minute: tiny sizes, no graphs

Loop figures come from real `train_QPA.py` runs on walker_walk with a shortened schedule: 1000 random steps, the
first queries at step 1000 (no PEBBLE pre-training: it stays eager and is not what this measures), then
`--steps` in all; "after the first feedback" is the mean `fps` of the episodes that start after the episode holding
the first queries (train.csv). The eager and graphed runs of a config share a seed, so their logs are also the
equivalence check. Runs sharing the GPU each have their own seed and one CPU thread. The table is rewritten to
--out after every part, so a run cut short still leaves the parts it finished; a part that fails says so in its
cell and the others go on.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.flop_counter import FlopCounterMode

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_sac import make_agent, matmul_gflops, random_buffer, time_ms  # noqa: E402

import utils  # noqa: E402
from cuda_graphs import GraphedSteps  # noqa: E402

FIRST_FEEDBACK = 1000  # num_seed_steps=1000, num_unsup_steps=0: the first queries at the start of episode 2
TIME_COLUMNS = ["fps", "duration", "total_time"]
RUN_TIMEOUT_S = 420
# (label, obs_dim, action_dim, hidden_dim, hidden_depth, batch_size): bench_sac.py's update cases
UPDATE_CASES = [
    ("SAC update, 256 x 2, batch 256", 24, 6, 256, 2, 256),
    ("SAC update, Meta-World 256 x 3, batch 512", 39, 4, 256, 3, 512),
    ("SAC update, DMC paper 1024 x 2, batch 1024", 24, 6, 1024, 2, 1024),
]
SMOKE_UPDATE_CASES = [("SAC update, 32 x 2, batch 32 (smoke)", 24, 6, 32, 2, 32)]
LOOP_CONFIGS = {"quick preset (H256/B256)": ["+preset=quick"], "paper config (H1024/B1024)": ["task=walker_walk"]}
SMOKE_NETWORKS = [
    "double_q_critic.params.hidden_dim=32", "diag_gaussian_actor.params.hidden_dim=32", "reward_hidden_dim=32",
    "num_eval_episodes=1", "agent.params.batch_size=32", "reward_update=50",
]  # fmt: skip
SMOKE_LOOP_CONFIGS = {"tiny networks (smoke)": ["+preset=quick", *SMOKE_NETWORKS]}


@dataclass
class Report:
    """The table so far: rows of (measurement, eager, CUDA graphs, notes), with the header above it."""

    header: list[str]
    out: Path
    rows: list[tuple[str, str, str, str]] = field(default_factory=list)

    def add(self, measurement: str, eager: str, graphed: str, notes: str = "") -> None:
        self.rows.append((measurement, eager, graphed, notes))
        print(f"  {measurement}: eager {eager} | graphs {graphed} | {notes}", flush=True)
        self.write()

    def markdown(self) -> str:
        lines = [*self.header, "", "| measurement | eager | CUDA graphs | notes |", "|---|---|---|---|"]
        lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in self.rows]
        return "\n".join(lines) + "\n"

    def write(self) -> None:
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.out.write_text(self.markdown())


# ---------------------------------------------------------------------------------------------------- the machine
def machine(device: torch.device) -> list[str]:
    """Where and with what the figures were measured."""
    if device.type == "cuda":
        driver = command_output(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader", "-i",
                                 str(device.index or 0)])  # fmt: skip
        card = f"{torch.cuda.get_device_name(device)} (driver {driver or 'unknown'}, CUDA {torch.version.cuda})"
    else:
        card = f"no GPU: {platform.processor() or platform.machine()} CPU (smoke run: tiny sizes, no graphs)"
    commit = command_output(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"]) or "unknown"
    dirty = " plus uncommitted changes" if command_output(["git", "-C", str(REPO), "status", "--porcelain"]) else ""
    return [
        f"# GPU report ({datetime.date.today().isoformat()})",
        "",
        f"- card: {card}",
        f"- torch {torch.__version__}, Python {platform.python_version()}, {os.cpu_count()} CPU cores, one torch "
        "thread per training run",
        f"- commit {commit}{dirty}; command: `python bench/gpu_report.py {' '.join(sys.argv[1:])}`",
    ]


def command_output(command: list[str]) -> str:
    try:
        return subprocess.run(command, capture_output=True, text=True, timeout=30, check=True).stdout.strip()
    except (subprocess.SubprocessError, OSError):
        return ""


# ---------------------------------------------------------------------------------------------------- updates
def update_figures(
    case: tuple[str, int, int, int, int, int], device: torch.device, graphs: bool, buffer_size: int
) -> tuple[float, float | None, float, float]:
    """(eager ms, graphed ms or None, GFLOP of matmuls per update, their time at this device's float32 rate):
    one update per call on uniform batches, steps alternating as in the loop (the target critic every second)."""
    _, obs_dim, action_dim, hidden_dim, hidden_depth, batch_size = case
    utils.set_seed_everywhere(0)
    buffer = random_buffer(obs_dim, action_dim, buffer_size, device)
    calls = 20 if hidden_dim * batch_size >= 1 << 20 else 100
    agent = make_agent(obs_dim, action_dim, hidden_dim, hidden_depth, batch_size, device)
    steps = iter(range(10**9))
    eager, _ = time_ms(lambda: agent.update(lambda: buffer.sample(batch_size), next(steps)), device, calls)
    with FlopCounterMode(display=False) as counter:
        agent.update(lambda: buffer.sample(batch_size), next(steps))
    gflop = counter.get_total_flops() / 1e9
    floor = 1e3 * gflop / matmul_gflops(batch_size, hidden_dim, device)
    graphed = None
    if graphs:
        graphed_steps = GraphedSteps(agent, buffer, reward_model=None)  # type: ignore[arg-type]
        draw = lambda: buffer.uniform_indices(batch_size)  # noqa: E731
        graphed, _ = time_ms(lambda: graphed_steps.update(draw, next(steps)), device, calls)
    return eager, graphed, gflop, floor


# ---------------------------------------------------------------------------------------------------- training runs
def train_command(run_dir: Path, overrides: list[str], steps: int, device: str, graphs: bool, seed: int) -> list[str]:
    schedule = [
        "env=walker_walk", f"num_train_steps={steps}", "num_seed_steps=1000", "num_unsup_steps=0",
        f"eval_frequency={steps}", "save_checkpoint=false", "overwrite=true", "num_threads=1", f"device={device}",
        f"strict_device={str(device != 'cpu').lower()}", f"cuda_graphs={str(graphs).lower()}", f"seed={seed}",
    ]  # fmt: skip
    return [sys.executable, "train_QPA.py", *overrides, *schedule, f"hydra.run.dir={run_dir}"]


def run_side_by_side(commands: list[list[str]]) -> list[str | None]:
    """Start every command at once and wait for all; per command None, or the reason it failed."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    processes = [subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                  text=True) for command in commands]  # fmt: skip
    errors: list[str | None] = []
    deadline = time.monotonic() + RUN_TIMEOUT_S
    for process in processes:
        try:
            _, stderr = process.communicate(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            process.kill()
            process.communicate()
            errors.append(f"timed out after {RUN_TIMEOUT_S} s")
            continue
        lines = [line for line in stderr.splitlines() if line.strip()]
        errors.append(None if process.returncode == 0 else (lines[-1] if lines else f"exit {process.returncode}"))
    return errors


def steady_fps(run_dir: Path) -> float:
    """Mean fps of the training episodes that start after the episode holding the first queries."""
    episodes = pd.read_csv(run_dir / "train.csv")
    start = episodes.step.shift(1, fill_value=0)
    steady = episodes[start > FIRST_FEEDBACK].fps
    if steady.empty:
        raise ValueError(f"{run_dir / 'train.csv'} has no complete episode after the first feedback's")
    return float(steady.mean())


def final_return(run_dir: Path) -> float:
    return float(pd.read_csv(run_dir / "eval.csv").episode_reward.iloc[-1])


def read_logs(run_dir: Path) -> dict[str, pd.DataFrame]:
    return {name: pd.read_csv(run_dir / name, float_precision="round_trip").drop(columns=TIME_COLUMNS,
                                                                                  errors="ignore")
            for name in ("eval.csv", "train.csv")}  # fmt: skip


def compare_logs(eager_dir: Path, graphed_dir: Path) -> str:
    """'identical' or where the two runs' logs differ most (timing columns aside)."""
    largest = (0.0, "", "", 0)
    for name, eager in read_logs(eager_dir).items():
        graphed = read_logs(graphed_dir)[name]
        if list(eager.columns) != list(graphed.columns) or len(eager) != len(graphed):
            return f"differ in shape: {name} has {eager.shape} eager, {graphed.shape} graphed"
        for column in eager.columns:
            a, b = eager[column].to_numpy(dtype=float), graphed[column].to_numpy(dtype=float)
            both_nan = np.isnan(a) & np.isnan(b)
            difference = np.where(both_nan, 0.0, np.abs(a - b))
            if np.isnan(difference).any():
                return f"differ: {name} column {column} is NaN in one run only"
            if difference.max(initial=0.0) > largest[0]:
                row = int(difference.argmax())
                largest = (float(difference[row]), name, column, int(eager.step.iloc[row]))
    if largest[0] == 0.0:
        rows = sum(len(frame) for frame in read_logs(eager_dir).values())
        return f"identical ({rows} rows of eval.csv and train.csv)"
    value, name, column, step = largest
    return f"largest difference {value:.3g} in {name} column {column} at step {step}"


def guarded(report: Report, measurement: str, part: Callable[[], tuple[str, str, str]]) -> None:
    """One row; a part that fails writes why in its row and the report goes on."""
    try:
        eager, graphed, notes = part()
    except Exception as error:  # a failed run, a missing file: the other rows are still worth having
        eager, graphed, notes = "failed", "failed", f"{type(error).__name__}: {str(error)[:200]}"
    report.add(measurement, eager, graphed, notes)


# ---------------------------------------------------------------------------------------------------- main
def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=REPO / "exp" / "gpu_report.md", help="the markdown file")
    parser.add_argument("--smoke", action="store_true", help="CPU, tiny sizes, no graphs: checks the script")
    parser.add_argument("--device", default="cuda", help="cuda or cuda:<index> (ignored with --smoke)")
    parser.add_argument("--steps", type=int, default=None, help="steps of each training run (4000; smoke 3000)")
    parser.add_argument("--runs-per-gpu", default=None, help="runs sharing the GPU, e.g. '1 2 4 8' (smoke '1 2')")
    parser.add_argument("--keep", type=Path, default=None, help="keep the training runs' directories here")
    args = parser.parse_args()
    started = time.perf_counter()
    if args.smoke:
        device, graphs, steps = torch.device("cpu"), False, args.steps or 3000
        cases, configs, shares = SMOKE_UPDATE_CASES, SMOKE_LOOP_CONFIGS, args.runs_per_gpu or "1 2"
        torch.set_num_threads(1)
    else:
        if not args.device.startswith("cuda") or not torch.cuda.is_available():
            print(f"error: --device={args.device} needs a CUDA GPU here; on a CPU, --smoke checks the script",
                  file=sys.stderr)  # fmt: skip
            return 2
        device, graphs, steps = utils.choose_device(args.device, strict=True), True, args.steps or 4000
        cases, configs, shares = UPDATE_CASES, LOOP_CONFIGS, args.runs_per_gpu or "1 2 4 8"
    share_counts = [int(count) for count in shares.replace(",", " ").split()]
    report = Report(machine(device), args.out)
    no_graphs = "not measured on a CPU"
    print("\n".join(report.header), flush=True)

    for case in cases:

        def update_part(case: tuple = case) -> tuple[str, str, str]:
            eager, graphed, gflop, floor = update_figures(case, device, graphs, 1000 if args.smoke else 10_000)
            speedup = f", {eager / graphed:.1f}x faster graphed" if graphed else ""
            graphed_cell = f"{graphed:.2f} ms" if graphed is not None else no_graphs
            return f"{eager:.2f} ms", graphed_cell, f"matmul floor {floor:.2f} ms ({gflop:.2f} GFLOP){speedup}"

        guarded(report, case[0], update_part)

    with tempfile.TemporaryDirectory() as scratch:
        root = args.keep or Path(scratch)
        device_name = "cpu" if args.smoke else str(device)
        loop_dirs: dict[tuple[str, str], Path] = {}
        for label, overrides in configs.items():
            variants = {"eager": (False, []), "graphs": (graphs, [])}
            if graphs and "paper" in label:
                variants["graphs_tf32"] = (True, ["tf32=true"])
            commands, dirs = [], {}
            for variant, (on, extra) in variants.items():
                dirs[variant] = root / f"{label.split()[0]}_{variant}"
                commands.append(train_command(dirs[variant], [*overrides, *extra], steps, device_name, on, seed=1))
            if args.smoke:  # the speeds mean nothing on a CPU in a test: side by side, in half the time
                failures = dict(zip(dirs, run_side_by_side(commands), strict=True))
            else:  # one after another: the loop's own speed, nothing else on the GPU
                failures = {variant: run_side_by_side([command])[0] for variant, command in zip(dirs, commands)}
            loop_dirs.update({(label, variant): path for variant, path in dirs.items()})

            def loop_part(dirs: dict = dirs, failures: dict = failures) -> tuple[str, str, str]:
                cells = {}
                for variant in ("eager", "graphs"):
                    cells[variant] = failures[variant] or f"{steady_fps(dirs[variant]):.0f} env steps/s"
                speedup = ""
                if not failures["eager"] and not failures["graphs"] and graphs:
                    speedup = f"{steady_fps(dirs['graphs']) / steady_fps(dirs['eager']):.1f}x faster graphed; "
                note = f"{speedup}{steps} steps, the first queries at step {FIRST_FEEDBACK}"
                return cells["eager"], cells["graphs"] if graphs else no_graphs, note

            guarded(report, f"full loop after the first feedback, {label}", loop_part)

            def equal_part(dirs: dict = dirs, failures: dict = failures) -> tuple[str, str, str]:
                if failures["eager"] or failures["graphs"]:
                    raise RuntimeError(failures["eager"] or failures["graphs"])
                what = "graphed run against eager run" if graphs else "two eager runs (no graphs on a CPU)"
                return compare_logs(dirs["eager"], dirs["graphs"]), "", f"{what}, seed 1, {steps} steps"

            guarded(report, f"same logs, {label}", equal_part)

            if "graphs_tf32" in dirs:

                def tf32_part(dirs: dict = dirs, failures: dict = failures) -> tuple[str, str, str]:
                    if failures["graphs_tf32"] or failures["graphs"]:
                        raise RuntimeError(failures["graphs_tf32"] or failures["graphs"])
                    float32, tf32 = final_return(dirs["graphs"]), final_return(dirs["graphs_tf32"])
                    returns = f"float32 {float32:.1f}, TF32 {tf32:.1f}"
                    cell = f"{steady_fps(dirs['graphs_tf32']):.0f} env steps/s"
                    return "", cell, f"tf32=true; evaluation return at step {steps}: {returns}"

                guarded(report, f"full loop after the first feedback, {label}, TF32", tf32_part)

        quick = next(iter(configs))
        for count in share_counts:

            def share_part(count: int = count) -> tuple[str, str, str]:
                if count == 1:
                    dirs = [loop_dirs[quick, "graphs"]]
                elif args.smoke and count == 2:  # the smoke's eager pair already ran side by side: half the time
                    dirs = [loop_dirs[quick, "eager"], loop_dirs[quick, "graphs"]]
                else:
                    dirs = [root / f"shared{count}_seed{seed}" for seed in range(1, count + 1)]
                    commands = [train_command(path, configs[quick], steps, device_name, graphs, seed)
                                for seed, path in enumerate(dirs, 1)]  # fmt: skip
                    failed = [error for error in run_side_by_side(commands) if error]
                    if failed:
                        raise RuntimeError(f"{len(failed)} of {count} runs failed: {failed[0]}")
                rates = [steady_fps(path) for path in dirs]
                cell = f"{sum(rates):.0f} env steps/s in total"
                note = f"{quick}, each run {min(rates):.0f}-{max(rates):.0f} env steps/s, one process per run"
                return ("", cell, note) if graphs else (cell, no_graphs, note)

            guarded(report, f"{count} run{'s' if count > 1 else ''} sharing the {'GPU' if graphs else 'CPU'}",
                    share_part)  # fmt: skip

    report.header.append(f"- the report took {time.perf_counter() - started:.0f} s")
    report.write()
    print(f"\n{report.markdown()}\nwritten to {args.out}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
