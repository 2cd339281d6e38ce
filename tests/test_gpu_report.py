"""bench/gpu_report.py cannot rot between GPU sessions: its CPU smoke run (tiny networks, no graphs, two short
training runs side by side) fills every row of the table; its GPU rows are assembled right from what the runs
leave (training runs and timings faked, in process); and without a GPU the real report refuses in one line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from conftest import REPO_ROOT

sys.path.insert(0, str(REPO_ROOT / "bench"))
import gpu_report

REPORT = [sys.executable, "bench/gpu_report.py"]


@pytest.mark.slow
def test_the_smoke_run_fills_every_row_of_the_report(tmp_path: Path) -> None:
    out = tmp_path / "report.md"
    result = subprocess.run([*REPORT, "--smoke", "--out", str(out), "--keep", str(tmp_path / "runs")], cwd=REPO_ROOT,
                            capture_output=True, text=True, timeout=300)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    text = out.read_text()
    assert text in result.stdout and "torch " in text and "- card: no GPU" in text
    rows = [line.split(" | ") for line in text.splitlines() if line.startswith("| ") and "---" not in line]
    assert rows[0] == ["| measurement", "eager", "CUDA graphs", "notes |"]
    table = {row[0].removeprefix("| "): row[1:] for row in rows[1:]}
    assert list(table) == [
        "SAC update, 32 x 2, batch 32 (smoke)",
        "full loop after the first feedback, tiny networks (smoke)",
        "same logs, tiny networks (smoke)",
        "1 run sharing the CPU",
        "2 runs sharing the CPU",
    ]
    assert "failed" not in text, text
    assert table["SAC update, 32 x 2, batch 32 (smoke)"][0].endswith(" ms")
    assert "matmul floor" in table["SAC update, 32 x 2, batch 32 (smoke)"][2]
    assert table["same logs, tiny networks (smoke)"][0].startswith("identical (")  # the comparison itself works
    for name in ("full loop after the first feedback, tiny networks (smoke)", "2 runs sharing the CPU"):
        assert "env steps/s" in table[name][0] and table[name][1] == "not measured on a CPU"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without a GPU")
def test_without_a_gpu_the_report_refuses_in_one_line(tmp_path: Path) -> None:
    result = subprocess.run([*REPORT, "--out", str(tmp_path / "r.md")], cwd=REPO_ROOT, capture_output=True, text=True,
                            timeout=120)  # fmt: skip
    assert result.returncode == 2 and not (tmp_path / "r.md").exists()
    assert result.stderr.strip().splitlines() == [
        "error: --device=cuda needs a CUDA GPU here; on a CPU, --smoke checks the script"
    ]


def fake_runs(commands: list[list[str]]) -> list[None]:
    """Each command's run directory with the logs a 4000-step run leaves: 2 episodes after the first feedback's,
    at 300 env steps/s (600 with graphs, 700 with TF32), the same losses whatever runs it."""
    for command in commands:
        run_dir = Path(next(item for item in command if item.startswith("hydra.run.dir=")).split("=", 1)[1])
        run_dir.mkdir(parents=True)
        fps = 700.0 if "tf32=true" in command else 600.0 if "cuda_graphs=true" in command else 300.0
        steps = [1000, 2000, 3000, 4000]
        pd.DataFrame({"step": steps, "critic_loss": [0.5, 0.25, 0.125, 0.0625], "fps": [2000.0, 100.0, fps, fps],
                      "duration": 1.0, "total_time": 2.0}).to_csv(run_dir / "train.csv", index=False)  # fmt: skip
        returns = [20.0, 30.0 + ("tf32=true" in command)]
        pd.DataFrame({"step": [0, 4000], "episode_reward": returns}).to_csv(run_dir / "eval.csv", index=False)
    return [None] * len(commands)


def test_the_gpu_rows_come_out_of_the_runs_and_timings(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(gpu_report.utils, "choose_device", lambda name, strict: torch.device("cpu"))
    monkeypatch.setattr(gpu_report, "update_figures", lambda case, device, graphs, size: (7.0, 0.7, 1.5, 0.2))
    monkeypatch.setattr(gpu_report, "run_side_by_side", fake_runs)
    out = tmp_path / "report.md"
    monkeypatch.setattr(sys, "argv", ["gpu_report.py", "--out", str(out), "--keep", str(tmp_path / "runs")])
    assert gpu_report.main() == 0
    rows = {line.split(" | ")[0].removeprefix("| "): line.split(" | ")[1:] for line in out.read_text().splitlines()
            if line.startswith("| ") and "---" not in line}  # fmt: skip
    update = rows["SAC update, DMC paper 1024 x 2, batch 1024"]
    assert update == ["7.00 ms", "0.70 ms", "matmul floor 0.20 ms (1.50 GFLOP), 10.0x faster graphed |"]
    loop = rows["full loop after the first feedback, paper config (H1024/B1024)"]
    assert loop[:2] == ["300 env steps/s", "600 env steps/s"] and loop[2].startswith("2.0x faster graphed; 4000 steps")
    tf32 = rows["full loop after the first feedback, paper config (H1024/B1024), TF32"]
    assert tf32 == ["", "700 env steps/s", "tf32=true; evaluation return at step 4000: float32 30.0, TF32 31.0 |"]
    assert rows["same logs, quick preset (H256/B256)"][0] == "identical (6 rows of eval.csv and train.csv)"
    assert rows["8 runs sharing the GPU"][1] == "4800 env steps/s in total"
    assert [name for name in rows if "sharing" in name] == [
        f"{k} run{'s' * (k > 1)} sharing the GPU" for k in (1, 2, 4, 8)
    ]
    assert not any("failed" in cell for row in rows.values() for cell in row)
