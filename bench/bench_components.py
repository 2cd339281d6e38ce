"""Every component benchmark of the learning core in one go (SAC, replay buffer, reward model), each in its own
process so that warm-up and thread pools don't leak between them.

    python bench/bench_components.py                  # about 2 minutes on 2 CPU cores
    python bench/bench_components.py --device cuda    # the same on a GPU
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
SCRIPTS = ("bench_sac.py", "bench_replay.py", "bench_reward_model.py")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto (passed to every benchmark)")
    device = parser.parse_args().device
    failed = []
    for script in SCRIPTS:
        print(f"\n=== {script} ===", flush=True)
        if subprocess.run([sys.executable, str(BENCH_DIR / script), "--device", device]).returncode != 0:
            failed.append(script)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
