"""Shared test setup: headless rendering, single-threaded torch (CI has 2 cores), repo root on sys.path."""

import os
import sys
from pathlib import Path

os.environ.setdefault("MUJOCO_GL", "egl")
# One thread per process: tests start training subprocesses side by side on 2 cores, and oversubscribed OpenMP
# threads spin-wait each other into a many-fold slowdown.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))
