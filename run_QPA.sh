#!/usr/bin/env bash
# The paper's QPA runs (ALGORITHM.md §8): 5 seeds x 9 tasks with the original release's settings, listed in
# scripts/sweeps/qpa.yaml. Re-running is safe: finished runs are skipped and interrupted ones resume.
#
#   bash run_QPA.sh                                   # every task and seed, one run after another
#   bash run_QPA.sh walker_walk cheetah_run --seeds "1 2"
#   bash run_QPA.sh --launcher joblib --jobs 4        # 4 runs at a time on this machine
#   bash run_QPA.sh --launcher slurm -- hydra.launcher.partition=gpu   # one SLURM job per run
#   bash run_QPA.sh --dry-run                         # print the commands only
#   bash run_QPA.sh --summary                         # state of every run (e.g. while SLURM jobs run)
#   bash run_QPA.sh walker_walk --force -- wandb=true # start over, logging to Weights & Biases
#
# Options: [task ...] [--dry-run] [--summary] [--launcher local|joblib|slurm] [--jobs N] [--seeds "1 2 3"]
#          [--root DIR] [--force] [-- extra overrides for every run]; details: python scripts/sweep.py --help
exec bash "$(dirname "${BASH_SOURCE[0]}")/scripts/run_sweep.sh" qpa "$@"
