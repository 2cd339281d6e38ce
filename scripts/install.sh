#!/usr/bin/env bash
# Create the virtual environment (if missing) and install the project into it.
# torch goes first so that a CPU-only machine gets the CPU wheel, never a multi-GB CUDA build.
set -euo pipefail
venv="${1:-.venv}"
python="${PYTHON:-python3}"
torch_version="2.13.0"

[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
pip=("$venv/bin/python" -m pip --disable-pip-version-check)

if ! "$venv/bin/python" -c "import torch, sys; sys.exit(torch.__version__.split('+')[0] != '$torch_version')" 2>/dev/null; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    "${pip[@]}" install "torch==$torch_version"
  elif "${pip[@]}" install --no-index --no-deps "torch==$torch_version" 2>/dev/null; then
    "${pip[@]}" install "torch==$torch_version"  # a local CPU wheel was found; now its small dependencies
  else
    "${pip[@]}" install "torch==$torch_version" --index-url https://download.pytorch.org/whl/cpu
  fi
fi
"${pip[@]}" install -e ./custom_dmcontrol -e ./custom_dmc2gym -e ".[dev]"
