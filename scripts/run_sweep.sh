#!/usr/bin/env bash
# The one sweep launcher behind run_QPA.sh, run_baselines.sh and run_ablations.sh: runs scripts/sweep.py on a
# table of scripts/sweeps/ with $PYTHON, else the repository's .venv, else `python` on the PATH.
#   bash scripts/run_sweep.sh <table> [task ...] [options] [-- overrides]   (python scripts/sweep.py --help)
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python="${PYTHON:-}"
if [[ -z "$python" ]]; then
  if [[ -x "$repo/.venv/bin/python" ]]; then python="$repo/.venv/bin/python"; else python=python; fi
fi
exec "$python" "$repo/scripts/sweep.py" "$@"
