"""scripts/sweep.py --runs-per-gpu K (joblib): which run goes to which GPU, the command lines and environment of each
GPU's queue, the one-line refusals, and a real sweep over two GPU names whose --summary reports every run. No GPU
is needed: CUDA_VISIBLE_DEVICES names the GPUs the sweep plans for, and on a machine without one the runs train on
the CPU (device=auto)."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

import pytest
from conftest import REPO_ROOT
from test_sweeps import TINY, status, summary, sweep

sys.path.insert(0, str(REPO_ROOT / "scripts"))
import sweep as sweep_module


def runs_of(tasks: list[str], seeds: list[int]) -> list[sweep_module.Run]:
    table = sweep_module.load_table("qpa")
    return sweep_module.plan_runs(table, tasks, [], seeds, [])


def test_runs_go_round_robin_over_the_gpus_across_tasks() -> None:
    runs = runs_of(["walker_walk", "cheetah_run"], [1, 2, 3, 4, 5])
    assigned = sweep_module.assign_gpus(runs, ["0", "1"])
    labels = {gpu: [f"{run.task} {run.seed}" for run in gpu_runs] for gpu, gpu_runs in assigned.items()}
    assert labels == {
        "0": ["walker_walk 1", "walker_walk 3", "walker_walk 5", "cheetah_run 2", "cheetah_run 4"],
        "1": ["walker_walk 2", "walker_walk 4", "cheetah_run 1", "cheetah_run 3", "cheetah_run 5"],
    }
    assert sweep_module.assign_gpus(runs[:1], ["0", "1", "2"]) == {"0": runs[:1], "1": [], "2": []}


def test_each_gpu_queue_is_joblib_multiruns_k_at_a_time_that_see_only_that_gpu(monkeypatch) -> None:
    monkeypatch.setattr(sweep_module, "cpu_cores", lambda: 16)
    runs = runs_of(["walker_walk", "cheetah_run"], [1, 2, 3, 4, 5])
    queues = sweep_module.build_gpu_launches(runs, ["0", "1"], runs_per_gpu=4, root=None, force=False)
    assert len(queues) == 2
    for gpu, queue in zip(("0", "1"), queues, strict=True):
        assert [launch.env for launch in queue] == [{"CUDA_VISIBLE_DEVICES": gpu}] * 2
        assert all(launch.log_prefix == f"[gpu {gpu}] " for launch in queue)
        for launch in queue:
            overrides = dict(item.split("=", 1) for item in launch.command[3:])
            assert launch.command[2] == "--multirun" and overrides["hydra/launcher"] == "joblib"
            assert overrides["hydra.launcher.n_jobs"] == "3"  # 4 per GPU, but at most 3 seeds of a task here
            assert overrides["num_threads"] == "2"  # 16 cores / (2 GPUs x 4 runs)
    seeds = [[launch.command[-1] for launch in queue] for queue in queues]
    assert seeds == [["seed=1,3,5", "seed=2,4"], ["seed=2,4", "seed=1,3,5"]]
    assert sweep_module.shell_line(queues[1][0]).startswith("CUDA_VISIBLE_DEVICES=1 ")


def test_visible_gpus_follow_cuda_visible_devices(monkeypatch) -> None:
    for value, expected in [("0,1", ["0", "1"]), ("2", ["2"]), ("", []), ("-1", []), ("1,-1,0", ["1"]),
                            ("GPU-3b1f,GPU-77aa", ["GPU-3b1f", "GPU-77aa"])]:  # fmt: skip
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", value)
        assert sweep_module.visible_gpus() == expected, value


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (["--runs-per-gpu", "2"], "0", "--runs-per-gpu 2 is invalid: needs --launcher joblib"),
        (["--launcher", "slurm", "--runs-per-gpu", "2"], "0", "needs --launcher joblib"),
        (["--launcher", "joblib", "--runs-per-gpu", "0"], "0", "--runs-per-gpu 0 is invalid"),
        (["--launcher", "joblib", "--runs-per-gpu", "2", "--jobs", "4"], "0", "--jobs 4 is invalid with --runs-per"),
        (["--launcher", "joblib", "--runs-per-gpu", "2"], "", "no GPU is visible"),
        (["--launcher", "joblib", "--runs-per-gpu", "2", "--", "device=cpu"], "0", "it runs with device=cpu"),
    ],
)
def test_bad_runs_per_gpu_is_one_line(args: list[str], env: str, message: str, monkeypatch, capsys) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", env)
    assert sweep_module.main(["qpa", "walker_walk", "--dry-run", *args]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and error[0].startswith("error: ") and message in error[0], error


def test_dry_run_prints_one_line_per_gpu_and_task(monkeypatch, capsys) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    code = sweep_module.main(["qpa", "walker_walk", "cheetah_run", "--launcher", "joblib", "--runs-per-gpu", "2",
                              "--dry-run"])  # fmt: skip
    assert code == 0
    lines = [shlex.split(line) for line in capsys.readouterr().out.splitlines()]
    assert [(line[0], line[-1]) for line in lines] == [
        ("CUDA_VISIBLE_DEVICES=0", "seed=1,3,5"), ("CUDA_VISIBLE_DEVICES=0", "seed=2,4"),
        ("CUDA_VISIBLE_DEVICES=1", "seed=2,4"), ("CUDA_VISIBLE_DEVICES=1", "seed=1,3,5"),
    ]  # fmt: skip
    assert all(line[1:3] == [sys.executable, "train_QPA.py"] and "hydra.launcher.n_jobs=2" in line for line in lines)


def test_a_slurm_sweep_may_ask_for_graphs_from_a_node_without_gpu(capsys) -> None:
    """The jobs run on GPU nodes: cuda_graphs=true is not refused on the submitting node (device falls back)."""
    assert sweep_module.main(["qpa", "walker_walk", "--launcher", "slurm", "--dry-run", "--", "cuda_graphs=true"]) == 0
    assert "cuda_graphs=true" in capsys.readouterr().out


@pytest.mark.slow
def test_a_sweep_over_two_gpus_runs_and_summarises_every_run(tmp_path: Path) -> None:
    """Two GPU names, one run at a time on each: seeds 1 and 2 train side by side (on the CPU where CUDA is
    absent), each process with its CUDA_VISIBLE_DEVICES, and the summary reports both finished."""
    result = sweep("walker_walk", "--launcher", "joblib", "--runs-per-gpu", "1", "--seeds", "1 2", "--root",
                   str(tmp_path), "--", "num_train_steps=1000", *TINY, env={"CUDA_VISIBLE_DEVICES": "0,1"})  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert summary(result.stdout) == {1: ("finished", 1000, 1000), 2: ("finished", 1000, 1000)}
    assert "CUDA_VISIBLE_DEVICES=0 " in result.stdout and "CUDA_VISIBLE_DEVICES=1 " in result.stdout
    log = (tmp_path / "sweep_logs" / "qpa" / "walker_walk.log").read_text()
    assert "[gpu 0] " in log and "[gpu 1] " in log
    for seed in (1, 2):
        assert status(tmp_path / "walker_walk" / f"maxFeedback20_numInteract500_seed{seed}")["state"] == "finished"
    again = sweep("walker_walk", "--seeds", "1 2", "--root", str(tmp_path), "--summary", "--",
                  "num_train_steps=1000", *TINY)  # fmt: skip
    assert summary(again.stdout) == {1: ("finished", 1000, 1000), 2: ("finished", 1000, 1000)}
