"""Replay buffer cost per call: add, uniform / recent-episode sampling, and relabel throughput.

A walker-sized buffer (obs 24, action 6) of capacity 1M filled to 100k transitions in
1000-step episodes; relabel uses a 3x256 MLP like the reward model.
Run: python bench/bench_replay.py [--device cpu|cuda|auto]
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from replay_buffer import ReplayBuffer
from utils import choose_device, mlp

OBS_DIM, ACT_DIM = 24, 6
CAPACITY, FILL, EPISODE_LEN = 1_000_000, 100_000, 1000
NUM_EPISODES = 10  # QPA's max_reward_buffer_size default


class MLPPredictor:
    """Reward-model-shaped predictor: concat(s, a) -> 3 x 256 LeakyReLU -> tanh."""

    def __init__(self, device: torch.device) -> None:
        self.net = mlp(OBS_DIM + ACT_DIM, 256, 1, 3, output_mod=nn.Tanh(), activation=nn.LeakyReLU).to(device)

    def predict_reward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_per_call(fn: Callable[[], object], calls: int, device: torch.device, warmup: int = 50) -> float:
    """Seconds per call, after `warmup` untimed calls."""
    for _ in range(warmup):
        fn()
    synchronize(device)
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    synchronize(device)
    return (time.perf_counter() - start) / calls


def fill_buffer(buf: ReplayBuffer, rng: np.random.Generator) -> float:
    """Add FILL transitions; returns seconds per add."""
    obs = rng.standard_normal((FILL + 1, OBS_DIM), dtype=np.float32)
    actions = rng.uniform(-1, 1, (FILL, ACT_DIM)).astype(np.float32)
    rewards = rng.standard_normal(FILL)
    start = time.perf_counter()
    for t in range(FILL):
        time_limit = (t + 1) % EPISODE_LEN == 0
        buf.add(obs[t], actions[t], rewards[t], obs[t + 1], time_limit, False)
    synchronize(buf.device)
    return (time.perf_counter() - start) / FILL


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", help="cpu, cuda or auto")
    args = parser.parse_args()
    device = choose_device(args.device)
    print(f"device={device} torch={torch.__version__} threads={torch.get_num_threads()}")

    buf = ReplayBuffer(OBS_DIM, ACT_DIM, CAPACITY, device, max_episode_len=EPISODE_LEN, seed=0)
    add_s = fill_buffer(buf, np.random.default_rng(0))
    print(f"\nadd: {add_s * 1e6:.1f} us/transition ({FILL} adds, capacity {CAPACITY}, {len(buf)} stored)")

    print(f"\n{'batch':>6} | {'sample us':>10} | {'onpolicy us':>12} | {'hybrid 0.5 us':>14}")
    print("-" * 52)
    for batch_size in (256, 512, 1024):
        uniform = time_per_call(lambda b=batch_size: buf.sample(b), 1000, device)
        recent = time_per_call(lambda b=batch_size: buf.sample_onpolicy(b, NUM_EPISODES), 1000, device)
        hybrid = time_per_call(lambda b=batch_size: buf.sample_hybrid(b, NUM_EPISODES, 0.5), 1000, device)
        print(f"{batch_size:>6} | {uniform * 1e6:>10.1f} | {recent * 1e6:>12.1f} | {hybrid * 1e6:>14.1f}")

    predictor = MLPPredictor(device)
    print(f"\nrelabel of {len(buf)} transitions, MLP {OBS_DIM + ACT_DIM}->3x256->1")
    print(f"{'chunk':>6} | {'seconds':>8} | {'transitions/s':>14} | {'us/transition':>14}")
    print("-" * 52)
    for chunk in (4096, 16384, 65536):
        seconds = time_per_call(
            lambda c=chunk: buf.relabel_with_predictor(predictor, batch_size=c), 2, device, warmup=1
        )
        print(f"{chunk:>6} | {seconds:>8.3f} | {len(buf) / seconds:>14,.0f} | {seconds / len(buf) * 1e6:>14.2f}")


if __name__ == "__main__":
    main()
