#!/usr/bin/env python3
"""Launch a table of training runs (tasks x methods x seeds) and report how every run ended.

    python scripts/sweep.py qpa walker_walk --launcher joblib --jobs 4
    python scripts/sweep.py qpa --dry-run -- wandb=true

The tables live in scripts/sweeps/<name>.yaml (format in scripts/sweeps/qpa.yaml); run_QPA.sh and the other
run_*.sh scripts are thin wrappers around this file. Each run keeps the run directory train_QPA.py gives it, so
launching the same sweep again is safe: finished runs exit at once, interrupted ones resume from their checkpoint
(train_QPA.py decides both, after checking the saved config). Launchers:
  local   one `python train_QPA.py ...` per run, one after another
  joblib  one Hydra multirun per task (and method) over the seeds, N runs at a time on this machine; with
          --runs-per-gpu K, K runs at a time on each visible GPU (CUDA_VISIBLE_DEVICES names it to each run)
  slurm   one Hydra multirun per task (and method), one SLURM job per seed (config/hydra/launcher/slurm.yaml);
          the multiruns of all tasks are submitted together and this command waits for their jobs
At the end (or with --summary at any time) every run directory's status.json is summarised.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import yaml
from omegaconf import DictConfig

REPO = Path(__file__).resolve().parent.parent
TABLES_DIR = Path(__file__).resolve().parent / "sweeps"
TRAIN_SCRIPT = "train_QPA.py"
LAUNCHERS = ("local", "joblib", "slurm")
STATES = ("finished", "failed", "running", "incomplete", "not started")  # of a run, in the summary
CPU_CORES_PER_RUN = 2  # one for the simulator, one for the networks' CPU work
GPU_GB_PER_RUN = 2.5  # CUDA context + networks + the largest replay buffer (humanoid: 2M transitions on the GPU)
# Keys the sweep sets itself: giving them after `--` would break its one-run-per-(task, method, seed) bookkeeping.
RESERVED_KEYS = {
    "seed": "use --seeds",
    "overwrite": "use --force",
    "hydra/launcher": "use --launcher",
    "hydra.run.dir": "use --root",
    "hydra.sweep.dir": "use --root",
    "hydra.sweep.subdir": "use --root",
}


class SweepError(ValueError):
    """A bad table, option or override; reported as one line."""


@dataclass(frozen=True)
class Table:
    name: str
    seeds: list[int]
    overrides: list[str]
    tasks: dict[str, list[str]]
    methods: dict[str, list[str]]  # {"": []} when the table has no method dimension
    extra: dict[tuple[str, str], list[str]]


@dataclass
class Run:
    task: str
    method: str
    seed: int
    overrides: list[str]  # everything but the seed and the sweep's own switches
    run_dir: Path = REPO
    target_steps: int = 0
    device: str = "auto"
    console_log: Path = REPO
    exit_code: int | None = None  # known for runs launched one per process

    @property
    def label(self) -> str:
        return " ".join(part for part in (self.task, self.method, f"seed {self.seed}") if part)


@dataclass
class Launch:
    command: list[str]
    runs: list[Run]
    console_log: Path
    name: str = ""
    env: dict[str, str] = field(default_factory=dict)  # set for its process (--runs-per-gpu: the GPU)
    log_prefix: str = ""  # before each line in the console log, which launches on several GPUs share


# ---------------------------------------------------------------------------------------------- the table
def override_key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def merge_overrides(*groups: list[str]) -> list[str]:
    """Later values replace earlier ones for the same key, keeping the key's first position."""
    merged: dict[str, str] = {}
    for group in groups:
        for override in group:
            merged[override_key(override)] = override
    return list(merged.values())


def split_overrides(text: str | None) -> list[str]:
    return shlex.split(text or "")


def load_table(name_or_path: str) -> Table:
    path = Path(name_or_path)
    if path.suffix not in (".yaml", ".yml"):
        path = TABLES_DIR / f"{name_or_path}.yaml"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in TABLES_DIR.glob("*.yaml")))
        raise SweepError(f"no sweep table {name_or_path!r}; known: {known} (or a path to a .yaml table)")
    raw = yaml.safe_load(path.read_text())
    unknown = set(raw) - {"seeds", "overrides", "tasks", "methods", "extra"}
    if unknown or not raw.get("tasks"):
        raise SweepError(f"{path}: needs `tasks` and allows seeds, overrides, methods, extra; got {sorted(raw)}")
    if isinstance(raw["tasks"], list):  # names of config/task/ presets
        tasks = {task: [f"task={task}"] for task in raw["tasks"]}
    else:
        tasks = {task: split_overrides(text) for task, text in raw["tasks"].items()}
    methods = {method: split_overrides(text) for method, text in (raw.get("methods") or {"": ""}).items()}
    extra = {}
    for cell, text in (raw.get("extra") or {}).items():
        task, _, method = cell.partition("/")
        if task not in tasks or method not in methods:
            raise SweepError(f"{path}: extra entry {cell!r} must be '<task>/<method>' of this table")
        extra[task, method] = split_overrides(text)
    return Table(
        path.stem,
        [int(seed) for seed in raw.get("seeds", [1])],
        split_overrides(raw.get("overrides")),
        tasks,
        methods,
        extra,
    )


def parse_seeds(text: str) -> list[int]:
    items = text.replace(",", " ").split()
    if not items or not all(item.isdigit() for item in items) or len(set(items)) != len(items):
        raise SweepError(f"--seeds {text!r} is invalid: give distinct integers >= 0, e.g. --seeds '1 2 3'")
    return [int(item) for item in items]


def check_extras(extras: list[str]) -> None:
    for override in extras:
        if override.startswith("-") or "=" not in override:
            raise SweepError(f"{override!r} after `--` is invalid: only Hydra overrides key=value go there")
        key = override_key(override)
        if key in RESERVED_KEYS:
            raise SweepError(f"{override!r} after `--` is invalid: {RESERVED_KEYS[key]}")


def plan_runs(table: Table, tasks: list[str], methods: list[str], seeds: list[int], extras: list[str]) -> list[Run]:
    for kind, chosen, known in (("task", tasks, table.tasks), ("method", methods, table.methods)):
        unknown = [name for name in chosen if name not in known]
        if unknown:
            raise SweepError(f"unknown {kind} {unknown[0]!r} for sweep {table.name}; valid: {', '.join(known)}")
    runs = []
    for task in tasks or list(table.tasks):
        for method in methods or list(table.methods):
            overrides = merge_overrides(
                table.overrides, table.tasks[task], table.methods[method], table.extra.get((task, method), []), extras
            )
            runs.extend(Run(task, method, seed, overrides) for seed in seeds)
    return runs


# ---------------------------------------------------------------------------------------------- configs
def resolve_runs(runs: list[Run], launcher: str, root: Path | None, with_dirs: bool) -> None:
    """Compose the runs' configs as train_QPA.py will: reject a bad one before anything starts, and learn each
    run's step budget, device and (with_dirs) run directory. Seeds differ only in `seed`, so one composition per
    task and method serves them all."""
    sys.path.insert(0, str(REPO))
    from hydra import compose, initialize_config_dir

    import run_naming  # noqa: F401 (the ${method_dir:} resolver of the run directories)
    from command_line import import_modules, requested_imports
    from config_schema import check_config

    groups: dict[tuple[str, ...], list[Run]] = {}
    for run in runs:
        groups.setdefault(tuple(run.overrides), []).append(run)
    with initialize_config_dir(config_dir=str(REPO / "config"), version_base="1.3", job_name="train_QPA"):
        for overrides, group in groups.items():
            config_overrides = [item for item in overrides if not override_key(item).startswith(("hydra.", "hydra/"))]
            try:
                import_modules(requested_imports(config_overrides))  # a method preset of `imports` must exist first
                cfg = compose(
                    "train_QPA",
                    [*config_overrides, f"seed={group[0].seed}", *location_overrides(launcher, root)],
                    return_hydra_config=True,
                )
                if launcher == "slurm":  # the jobs run on the cluster's GPU nodes, not on this (login) node
                    cfg.strict_device = False
                    cfg.cuda_graphs = "auto" if cfg.cuda_graphs is True else cfg.cuda_graphs  # true needs a GPU here
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore" if launcher == "slurm" else "default")
                    check_config(cfg)
                for run in group:
                    cfg.seed = run.seed
                    run.target_steps, run.device = int(cfg.num_train_steps), str(cfg.device)
                    if with_dirs:
                        run.run_dir = run_directory(cfg, launcher)
            except Exception as error:  # ConfigError and Hydra's composition errors share no narrower base
                message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
                raise SweepError(f"{group[0].label}: {message}") from None


def run_directory(cfg: DictConfig, launcher: str) -> Path:
    """Where Hydra puts the run: hydra.run.dir for one run, hydra.sweep.dir/hydra.sweep.subdir in a multirun."""
    hydra_cfg = cfg.hydra
    path = Path(hydra_cfg.run.dir if launcher == "local" else f"{hydra_cfg.sweep.dir}/{hydra_cfg.sweep.subdir}")
    return path if path.is_absolute() else REPO / path


def location_overrides(launcher: str, root: Path | None) -> list[str]:
    if root is None:
        return []
    if launcher == "local":
        return [f"hydra.run.dir={root}/${{hydra.sweep.subdir}}"]  # the multirun layout, under root
    return [f"hydra.sweep.dir={root}"]


# ---------------------------------------------------------------------------------------------- launching
def cpu_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def default_jobs(num_seeds: int, uses_gpu: bool) -> tuple[int, str]:
    """Runs that fit on this machine at once, and why."""
    cores = cpu_cores()
    jobs = max(1, cores // CPU_CORES_PER_RUN)
    reason = f"{cores} CPU cores / {CPU_CORES_PER_RUN} per run = {jobs}"
    free_gb = free_gpu_memory_gb() if uses_gpu else None
    if free_gb is not None:
        by_gpu = max(1, int(free_gb // GPU_GB_PER_RUN))
        reason += f"; {free_gb:.0f} GB free GPU memory / {GPU_GB_PER_RUN} GB per run = {by_gpu}"
        jobs = min(jobs, by_gpu)
    if jobs > num_seeds:
        reason += f"; {num_seeds} seeds"
    return min(jobs, num_seeds), reason


def free_gpu_memory_gb() -> float | None:
    """Free memory of the first visible GPU (every joblib run uses it), or None without a GPU."""
    if shutil.which("nvidia-smi") is None:
        return None
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "0").split(",")[0].strip() or "0"
    query = ["nvidia-smi", "--query-gpu=memory.free", "--format=csv,noheader,nounits", "-i", visible]
    try:
        output = subprocess.run(query, capture_output=True, text=True, timeout=30, check=True).stdout
        return float(output.split()[0]) / 1024
    except (subprocess.SubprocessError, OSError, ValueError, IndexError):
        return None


def build_launches(
    runs: list[Run], launcher: str, jobs: int | None, root: Path | None, force: bool, threads: int | None = None
) -> list[Launch]:
    """The commands of `runs`; a joblib multirun runs `jobs` at a time with `threads` torch threads each (default:
    the cores split between `jobs`)."""
    python = [sys.executable, TRAIN_SCRIPT]
    control = (["overwrite=true"] if force else []) + location_overrides(launcher, root)
    if launcher == "local":
        return [Launch([*python, *run.overrides, f"seed={run.seed}", *control], [run], run.console_log) for run in runs]

    groups = group_runs(runs)
    if launcher == "joblib":
        switches = ["hydra/launcher=joblib", f"hydra.launcher.n_jobs={jobs}"]
        if not any(override_key(item) == "num_threads" for item in runs[0].overrides):
            # torch would give every run all the cores; runs competing for them spin-wait many-fold slower
            switches.append(f"num_threads={threads or cpu_threads(jobs)}")
    else:
        switches = ["hydra/launcher=slurm"] + ([f"hydra.launcher.array_parallelism={jobs}"] if jobs else [])
        if force:
            switches.append("hydra.launcher.max_num_timeout=0")  # a requeued job would start over again
    launches = []
    for (task, method), group in groups.items():
        seeds = ",".join(str(run.seed) for run in group)
        command = [*python, "--multirun", *switches, *group[0].overrides, f"seed={seeds}", *control]
        launches.append(Launch(command, group, group[0].console_log, name=" ".join(filter(None, (task, method)))))
    return launches


def visible_gpus() -> list[str]:
    """The GPUs runs may use, as CUDA_VISIBLE_DEVICES entries: that variable's own list when it is set (an empty
    or negative one hides every GPU), else every GPU nvidia-smi lists."""
    if "CUDA_VISIBLE_DEVICES" in os.environ:
        visible = []
        for entry in os.environ["CUDA_VISIBLE_DEVICES"].split(","):
            if not entry.strip() or entry.strip().startswith("-"):
                break  # CUDA stops at the first invalid entry
            visible.append(entry.strip())
        return visible
    if shutil.which("nvidia-smi") is None:
        return []
    query = ["nvidia-smi", "--query-gpu=index", "--format=csv,noheader"]
    try:
        output = subprocess.run(query, capture_output=True, text=True, timeout=30, check=True).stdout
    except (subprocess.SubprocessError, OSError):
        return []
    return [line.strip() for line in output.splitlines() if line.strip()]


def assign_gpus(runs: list[Run], gpus: list[str]) -> dict[str, list[Run]]:
    """Every run's GPU: round robin in the order of the runs, across tasks and methods too, so that each GPU gets
    as many runs as the others, give or take one."""
    assigned: dict[str, list[Run]] = {gpu: [] for gpu in gpus}
    for index, run in enumerate(runs):
        assigned[gpus[index % len(gpus)]].append(run)
    return assigned


def build_gpu_launches(
    runs: list[Run], gpus: list[str], runs_per_gpu: int, root: Path | None, force: bool
) -> list[list[Launch]]:
    """One queue of joblib multiruns per GPU: the GPU's runs of each task (and method), `runs_per_gpu` at a time,
    its multiruns one after another; the queues run side by side. Each process sees only its GPU."""
    queues = []
    for gpu, assigned in assign_gpus(runs, gpus).items():
        if not assigned:
            continue
        jobs = min(runs_per_gpu, max(len(group) for group in group_runs(assigned).values()))
        queue = build_launches(assigned, "joblib", jobs, root, force, threads=cpu_threads(len(gpus) * runs_per_gpu))
        for launch in queue:
            launch.env = {"CUDA_VISIBLE_DEVICES": gpu}
            launch.name = f"gpu {gpu} {launch.name}".strip()
            launch.log_prefix = f"[gpu {gpu}] "
        queues.append(queue)
    return queues


def cpu_threads(parallel_runs: int) -> int:
    """torch CPU threads per run: the cores split between the runs at a time."""
    return max(1, cpu_cores() // parallel_runs)


def group_runs(runs: list[Run]) -> dict[tuple[str, str], list[Run]]:
    groups: dict[tuple[str, str], list[Run]] = {}
    for run in runs:
        groups.setdefault((run.task, run.method), []).append(run)
    return groups


def file_stem(task: str, method: str) -> str:
    return f"{task}_{method}" if method else task


def execute(launch: Launch, prefix: str, print_lock: threading.Lock) -> int:
    """Run one command from the repository root, copying its output to the console and its console log."""
    launch.console_log.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, **launch.env}
    env.setdefault("MUJOCO_GL", "egl")  # clusters and servers have no display
    with launch.console_log.open("ab") as log:
        log.write(f"# {time.strftime('%Y-%m-%d %H:%M:%S')} {shell_line(launch)}\n".encode())
        with subprocess.Popen(
            launch.command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        ) as process:
            copy_output(process.stdout, log, prefix.encode(), print_lock, launch.log_prefix.encode())
    for run in launch.runs:
        run.exit_code = process.returncode if len(launch.runs) == 1 else None
    return process.returncode


def shell_line(launch: Launch) -> str:
    """The launch as one shell command line, its environment variables first."""
    return shlex.join([f"{name}={value}" for name, value in launch.env.items()] + launch.command)


def copy_output(
    stream: IO[bytes], log: IO[bytes], prefix: bytes, print_lock: threading.Lock, log_prefix: bytes = b""
) -> None:
    for line in stream:
        log.write(log_prefix + line)
        log.flush()
        with print_lock:
            sys.stdout.buffer.write(prefix + line)
            sys.stdout.flush()


def launch_all(launches: list[Launch], concurrently: bool) -> None:
    print_lock = threading.Lock()
    if not concurrently:
        for index, launch in enumerate(launches, 1):
            print(f"[sweep] {index}/{len(launches)}: {shlex.join(launch.command)}", flush=True)
            execute(launch, "", print_lock)
        return
    threads = []
    for launch in launches:
        print(f"[sweep] {shlex.join(launch.command)}", flush=True)
        thread = threading.Thread(target=execute, args=(launch, f"[{launch.name}] ", print_lock), daemon=True)
        thread.start()
        threads.append(thread)
    for thread in threads:
        thread.join()


def launch_queues(queues: list[list[Launch]]) -> None:
    """Each queue's launches one after another, the queues side by side (--runs-per-gpu: one queue per GPU)."""
    print_lock = threading.Lock()

    def run_queue(queue: list[Launch]) -> None:
        for launch in queue:
            with print_lock:
                print(f"[sweep] {shell_line(launch)}", flush=True)
            execute(launch, f"[{launch.name}] ", print_lock)

    threads = [threading.Thread(target=run_queue, args=(queue,), daemon=True) for queue in queues]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


# ---------------------------------------------------------------------------------------------- summary
def run_state(run: Run) -> tuple[str, int, str | None]:
    """(finished | failed | running | incomplete | not started, step, error or holder) from the run's status.json
    and, for a run that a live process holds (this sweep's or another one's), its run.lock."""
    from run_lock import live_holder  # resolve_runs put the repository on sys.path

    try:
        status = json.loads((run.run_dir / "status.json").read_text())
    except (OSError, ValueError):
        status = {}
    step = int(status.get("step") or 0)
    if status.get("state") == "failed":
        return "failed", step, status.get("error")
    if status.get("state") == "finished" and step >= run.target_steps:
        return "finished", step, None
    if (holder := live_holder(run.run_dir)) is not None:
        return "running", step, f"held by {holder.describe()}"
    if not status and run.exit_code:
        return "failed", 0, f"exit code {run.exit_code} before the run started"
    if not status and not run.run_dir.exists():
        return "not started", 0, None
    return "incomplete", step, None  # killed, or finished with a smaller budget


def display_path(path: Path) -> str:
    relative = os.path.relpath(path)
    return path.as_posix() if relative.startswith("..") else relative


def print_summary(sweep: str, runs: list[Run]) -> bool:
    """Print one line per run; True when every run finished."""
    states = [run_state(run) for run in runs]
    counts = Counter(state for state, _, _ in states)
    totals = ", ".join(f"{counts[name]} {name}" for name in STATES)
    print(f"\n[sweep] {sweep}: {len(runs)} runs: {totals}")
    width = max(len(run.label) for run in runs)
    for run, (state, step, error) in zip(runs, states):
        steps = f"{step}/{run.target_steps} steps"
        print(f"  {state:<11} {run.label:<{width}}  {steps:>19}  {display_path(run.run_dir)}")
        if error:
            print(f"  {'':<11} {'' if state == 'running' else 'error: '}{error}")
        if state in ("failed", "incomplete"):
            print(f"  {'':<11} console log: {display_path(run.console_log)}")
    return counts["finished"] == len(runs)


def check_runs_per_gpu(runs_per_gpu: int, launcher: str, jobs: int | None) -> None:
    if runs_per_gpu < 1 or launcher != "joblib":
        raise SweepError(f"--runs-per-gpu {runs_per_gpu} is invalid: needs --launcher joblib and a value >= 1")
    if jobs is not None:
        raise SweepError(f"--jobs {jobs} is invalid with --runs-per-gpu: the runs at a time are K per GPU")


def plan_gpu_queues(runs: list[Run], runs_per_gpu: int, root: Path | None, force: bool) -> list[list[Launch]]:
    """--runs-per-gpu: the visible GPUs' queues, after checking that there are GPUs and that the runs use them."""
    gpus = visible_gpus()
    if not gpus:
        raise SweepError(
            f"--runs-per-gpu {runs_per_gpu} is invalid here: no GPU is visible "
            "(nvidia-smi lists none, or CUDA_VISIBLE_DEVICES hides them)"
        )
    on_cpu = [run for run in runs if run.device == "cpu"]
    if on_cpu:
        raise SweepError(f"--runs-per-gpu is invalid for {on_cpu[0].label}: it runs with device=cpu")
    threads = cpu_threads(len(gpus) * runs_per_gpu)
    message = f"[sweep] joblib: {runs_per_gpu} runs at a time on each of GPUs {', '.join(gpus)}, {threads} torch"
    print(f"{message} threads each (the CPU cores split between them)", file=sys.stderr)
    free_gb = free_gpu_memory_gb()
    if free_gb is not None and runs_per_gpu * GPU_GB_PER_RUN > free_gb:
        print(f"[sweep] warning: {runs_per_gpu} runs x {GPU_GB_PER_RUN} GB may not fit the {free_gb:.0f} GB free "
              "on the first GPU", file=sys.stderr)  # fmt: skip
    return build_gpu_launches(runs, gpus, runs_per_gpu, root, force)


# ---------------------------------------------------------------------------------------------- main
def parse_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    extras: list[str] = []
    if "--" in argv:
        argv, extras = argv[: argv.index("--")], argv[argv.index("--") + 1 :]
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="Overrides after `--` go to every run, replacing the table's value "
        "for the same key, e.g. `-- wandb=true` or "
        "`-- hydra.launcher.partition=gpu`.",
    )
    parser.add_argument("sweep", help="table name in scripts/sweeps/ (qpa, ...) or a path to a .yaml table")
    parser.add_argument("tasks", nargs="*", help="tasks to run (default: every task of the table)")
    parser.add_argument("--methods", default="", help="methods to run, e.g. 'pebble surf' (default: all)")
    parser.add_argument("--seeds", default=None, help="seeds, e.g. '1 2 3' (default: the table's)")
    parser.add_argument("--launcher", choices=LAUNCHERS, default="local")
    parser.add_argument(
        "--jobs",
        type=int,
        default=None,
        help="joblib: runs at a time (default: what fits); slurm: array_parallelism per task",
    )
    parser.add_argument(
        "--runs-per-gpu",
        type=int,
        default=None,
        metavar="K",
        help="joblib: K runs at a time on each visible GPU, each process seeing only its GPU (CUDA_VISIBLE_DEVICES)",
    )
    parser.add_argument(
        "--root", type=Path, default=None, help="put the run directories under ROOT instead of exp/ (same layout)"
    )
    parser.add_argument("--force", action="store_true", help="start every run over (overwrite=true)")
    parser.add_argument("--dry-run", action="store_true", help="print the commands, one per line, and exit")
    parser.add_argument("--summary", action="store_true", help="only print the state of every run")
    return parser.parse_intermixed_args(argv), extras


def main(argv: list[str]) -> int:
    args, extras = parse_args(argv)
    try:
        if args.jobs is not None and (args.jobs < 1 or args.launcher == "local"):
            raise SweepError(f"--jobs {args.jobs} is invalid: needs --launcher joblib or slurm and a value >= 1")
        if args.runs_per_gpu is not None:
            check_runs_per_gpu(args.runs_per_gpu, args.launcher, args.jobs)
        check_extras(extras)
        table = load_table(args.sweep)
        seeds = parse_seeds(args.seeds) if args.seeds is not None else table.seeds
        runs = plan_runs(table, args.tasks, args.methods.split(), seeds, extras)
    except SweepError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    root = args.root.resolve() if args.root else None
    try:
        resolve_runs(runs, args.launcher, root, with_dirs=not args.dry_run)
    except SweepError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    logs_dir = (root or REPO / "exp") / "sweep_logs" / table.name
    for run in runs:
        suffix = f"_seed{run.seed}" if args.launcher == "local" else ""
        run.console_log = logs_dir / f"{file_stem(run.task, run.method)}{suffix}.log"
    if args.summary:
        return 0 if print_summary(table.name, runs) else 1

    if args.runs_per_gpu is not None:
        try:
            queues = plan_gpu_queues(runs, args.runs_per_gpu, root, args.force)
        except SweepError as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
        launches = [launch for queue in queues for launch in queue]
    else:
        jobs = args.jobs
        if args.launcher == "joblib" and jobs is None:
            jobs, reason = default_jobs(len(seeds), uses_gpu=runs[0].device != "cpu")
            print(f"[sweep] joblib: {jobs} runs at a time ({reason}); choose with --jobs", file=sys.stderr)
        launches = build_launches(runs, args.launcher, jobs, root, args.force)
    if args.dry_run:
        print(f"# from {REPO}:", file=sys.stderr)
        for launch in launches:
            print(shell_line(launch))
        return 0
    # SIGUSR2 sent to the sweep's process group is for its runs (each stops at its next episode end after a
    # checkpoint there); the sweep outlives it, so that it still reports them.
    signal.signal(signal.SIGUSR2, lambda signum, frame: None)
    try:
        if args.runs_per_gpu is not None:
            launch_queues(queues)
        else:
            launch_all(launches, concurrently=args.launcher == "slurm")
    except KeyboardInterrupt:
        print_summary(table.name, runs)
        return 130
    return 0 if print_summary(table.name, runs) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
