"""Behaviour pinned by golden files: four fixed-seed tiny runs (QPA on walker_walk, PEBBLE on cheetah_run, SURF
on Meta-World drawer-open, RUNE on walker_walk) must write exactly the eval.csv and train.csv recorded in
tests/golden/, timing columns aside (the environment's returns to 1e-13 relative, see ENV_REWARD_COLUMNS).
A refactor that changes what the code computes, by a single float, fails here.

One set of files holds on AMD and Intel processors alike. The runs pin the CPU kernels (AVX2 for PyTorch and
oneDNN, no AVX-512 for numpy, MKL's vendor-independent branch in strict mode, one thread), and the training code
calls no kernel that the pins leave to the processor: torch.sqrt on a CPU is MKL's vector math (VML), which picks
its code by processor whatever MKL_CBWR says (an AMD EPYC runs its SSE4.2 code, whose float square root is not
correctly rounded; an Intel Xeon with AVX-512 other code), so logs recorded on an AMD EPYC parted from an Intel
Xeon's at the first SAC update. test_training_calls_no_kernel_whose_rounding_depends_on_the_processor keeps those
kernels out (tests/kernel_audit.py; docs/TESTING.md). Recorded on an AMD EPYC. Re-record after an intended change
of behaviour with `python tests/test_golden.py [name ...]`, and say in the commit why the numbers moved.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from conftest import REPO_ROOT, SMALL_NETWORKS, TIME_COLUMNS
from kernel_audit import RefuseProcessorDependentKernels
from test_train import TINY

from scripts.kernel_fingerprints import PINNED_KERNELS
from scripts.kernel_fingerprints import RECORDED as RECORDED_FINGERPRINTS

GOLDEN_DIR = Path(__file__).resolve().parent / "golden"
GOLDEN_RUNS = {
    "qpa_walker_walk": ["env=walker_walk", "method=qpa"],
    "pebble_cheetah_run": ["env=cheetah_run", "method=pebble"],
    "surf_metaworld_drawer-open": ["env=metaworld_drawer-open-v3", "method=surf", "eval_frequency=500"],
    "rune_walker_walk": ["env=walker_walk", "method=rune"],
}
LOGS = ("eval.csv", "train.csv")
# The environment's own returns, summed from Meta-World's numpy reward code, came out one ulp apart between two
# processes of the same commit on the same machine (CI, 2026-12-02: 468.06697328179405 vs 468.066973281794 for a
# random-action episode; every other column equal): the likely cause is numpy's SIMD kernels, whose rounding can
# depend on an array's memory alignment. These columns are compared to 1e-13 relative; everything the code
# computes (losses, r̂ and its returns, alpha, entropies, feedback counts) stays exact.
ENV_REWARD_COLUMNS = ("episode_reward",)


def run_golden(name: str, run_dir: Path, *extra: str) -> dict[str, pd.DataFrame]:
    """Train the named golden run (with `extra` overrides) into run_dir and return its logs without the timing
    columns."""
    command = [sys.executable, "train_QPA.py", *TINY, *GOLDEN_RUNS[name], "seed=3", "num_threads=1", "device=cpu",
               *extra, f"hydra.run.dir={run_dir}"]  # fmt: skip
    env = {**os.environ, **PINNED_KERNELS}
    result = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    return {log: read_log(run_dir / log) for log in LOGS}


def read_log(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, float_precision="round_trip").drop(columns=TIME_COLUMNS, errors="ignore")


def assert_golden_logs(name: str, logs: dict[str, pd.DataFrame]) -> None:
    for log, frame in logs.items():
        golden = read_log(GOLDEN_DIR / name / log)
        exact = [column for column in golden.columns if column not in ENV_REWARD_COLUMNS]
        pd.testing.assert_frame_equal(frame[exact], golden[exact], check_exact=True, obj=f"{name}/{log}")
        rewards = [column for column in golden.columns if column in ENV_REWARD_COLUMNS]
        pd.testing.assert_frame_equal(frame[rewards], golden[rewards], check_exact=False, rtol=1e-13, atol=0.0,
                                      obj=f"{name}/{log}")  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(GOLDEN_RUNS))
def test_fixed_seed_runs_write_the_golden_logs(name: str, tmp_path: Path) -> None:
    assert_golden_logs(name, run_golden(name, tmp_path / name))


def test_the_operations_of_a_training_step_round_as_recorded_on_the_amd_epyc() -> None:
    """Under the pins, each kernel the training code uses gives the bits scripts/kernel_fingerprints.py recorded on
    an AMD EPYC; on a processor where one does not, the golden tests fail too, and this names the operation."""
    script = REPO_ROOT / "scripts" / "kernel_fingerprints.py"
    result = subprocess.run([sys.executable, str(script), "--compare", str(RECORDED_FINGERPRINTS)], cwd=REPO_ROOT,
                            capture_output=True, text=True, timeout=300)  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]


def test_the_audit_refuses_the_kernels_that_round_by_processor_and_passes_their_replacements() -> None:
    parameter = torch.nn.Parameter(torch.ones(4))
    parameter.grad = torch.ones(4)
    with RefuseProcessorDependentKernels():
        torch.rsqrt(torch.ones(3)).reciprocal()
        torch.optim.Adam([parameter], lr=0.1, fused=True).step()
        for refused in (lambda: torch.ones(3).sqrt(), lambda: torch.ones(3).pow(0.5),
                        lambda: torch.cdist(torch.ones(30, 2), torch.ones(30, 2)),
                        lambda: torch.optim.Adam([parameter], lr=0.1).step()):  # fmt: skip
            with pytest.raises(RuntimeError, match="processor-dependent kernel aten"):
                refused()


# Every method, and the query schemes that compute distances, for one query round or two.
AUDITED_RUNS = {
    "qpa": ["method=qpa"],
    "pebble_kcenter_entropy": ["method=pebble", "query_scheme=kcenter_entropy"],
    "surf_with_rune_bonus": ["method=surf", "rune_beta_init=0.05"],
    "policer": ["method=policer"],
    "ppe": ["method=ppe"],
}
AUDIT_SCHEDULE = [
    "env=walker_walk", "num_train_steps=1200", "num_seed_steps=200", "num_unsup_steps=800", "num_interact=100",
    "max_feedback=4", "reward_batch=2", "segment=20", "reward_update=5", "eval_frequency=1200",
    "agent.params.batch_size=16", *SMALL_NETWORKS, "num_threads=1", "device=cpu",
]  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(AUDITED_RUNS))
def test_training_calls_no_kernel_whose_rounding_depends_on_the_processor(name: str, tmp_path: Path) -> None:
    """What lets one set of golden logs hold on AMD and Intel processors alike (tests/kernel_audit.py)."""
    command = [sys.executable, "tests/kernel_audit.py", *AUDIT_SCHEDULE, *AUDITED_RUNS[name],
               f"hydra.run.dir={tmp_path / name}"]  # fmt: skip
    result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    assert pd.read_csv(tmp_path / name / "eval.csv").total_feedback.iloc[-1] == 4  # both query rounds ran


if __name__ == "__main__":
    import tempfile

    for run_name in sys.argv[1:] or sorted(GOLDEN_RUNS):
        with tempfile.TemporaryDirectory() as scratch:
            (GOLDEN_DIR / run_name).mkdir(parents=True, exist_ok=True)
            for log_name, log_frame in run_golden(run_name, Path(scratch) / run_name).items():
                log_frame.to_csv(GOLDEN_DIR / run_name / log_name, index=False)
            print(f"recorded {GOLDEN_DIR / run_name}")
