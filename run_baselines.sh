#!/usr/bin/env bash
# QPA against PEBBLE, SURF, RUNE and SAC on the true reward: the 9 paper tasks x 5 methods x 5 seeds at the
# paper's budgets (ALGORITHM.md §8), listed in scripts/sweeps/baselines.yaml. Runs go task by task (every method and seed
# of a task before the next task). QPA's runs are the same as run_QPA.sh's (shared run directories).
# Re-running is safe: finished runs are skipped and interrupted ones resume.
#
#   bash run_baselines.sh                                        # everything, one run after another
#   bash run_baselines.sh walker_walk --methods "qpa pebble"     # one task, two methods
#   bash run_baselines.sh --launcher joblib --jobs 4             # 4 runs at a time on this machine
#   bash run_baselines.sh --launcher slurm -- hydra.launcher.partition=gpu
#   bash run_baselines.sh --dry-run                              # print the commands only
#   bash run_baselines.sh --summary                              # state of every run
#   python -m plot compare exp/walker_walk --out-dir figure/baselines/walker_walk   # curves + tables
#
# Options: [task ...] [--dry-run] [--summary] [--launcher local|joblib|slurm] [--jobs N] [--seeds "1 2 3"]
#          [--root DIR] [--force] [-- extra overrides for every run]; details: python scripts/sweep.py --help
exec bash "$(dirname "${BASH_SOURCE[0]}")/scripts/run_sweep.sh" baselines "$@"
