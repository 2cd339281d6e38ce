#!/usr/bin/env bash
# QPA's ablations (no policy-aligned queries, no hybrid replay, no cropping) and sensitivity to N and her_ratio on
# walker_walk, cheetah_run and walker_run, 5 seeds each, listed in scripts/sweeps/ablations.yaml.
# Re-running is safe: finished runs are skipped and interrupted ones resume.
#
#   bash run_ablations.sh                                             # everything, one run after another
#   bash run_ablations.sh walker_walk --methods "qpa no_hybrid_replay"
#   bash run_ablations.sh --launcher joblib --jobs 4
#   bash run_ablations.sh --dry-run                                   # print the commands only
#   python -m plot compare exp/walker_walk --out-dir figure/ablations/walker_walk
#
# Options: [task ...] [--dry-run] [--summary] [--launcher local|joblib|slurm] [--jobs N] [--seeds "1 2 3"]
#          [--root DIR] [--force] [-- extra overrides for every run]; details: python scripts/sweep.py --help
exec bash "$(dirname "${BASH_SOURCE[0]}")/scripts/run_sweep.sh" ablations "$@"
