"""bench/gpu_report.py cannot rot between GPU sessions: its CPU smoke run (tiny networks, no graphs, two short
training runs side by side) fills every row of the table, and without a GPU the real report refuses in one line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import REPO_ROOT

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
