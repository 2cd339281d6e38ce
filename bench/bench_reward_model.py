"""Reward-model speed: training steps, time to the early stop, relabel throughput, per-step prediction.

Run: `python bench/bench_reward_model.py [--device cpu|cuda|auto]` (about 30 s on 2 CPU cores).
Shapes are walker's (24-d state, 6-d action), segments of 50, the default 3 x 256 network.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench_replay import synchronize, time_per_call

from config_schema import RewardConfig
from episodes import EpisodeStore
from preferences import PreferenceDataset
from reward_model import RewardModel
from reward_trainer import RewardTrainer
from teacher import ScriptedTeacher
from train_QPA import RewardSeeds, make_reward_model, make_reward_trainer
from utils import choose_device

DS, DA, SEGMENT = 24, 6, 50
REWARD_UPDATE = 2000  # DMC: ceil(reward_update * labelled / 128) iterations at most


def smooth_episodes(rng: np.random.Generator, num: int, length: int = 500) -> list[np.ndarray]:
    """Per-episode offset plus slow AR(1) drift, like a policy's visitation (see tests/test_reward_model.py)."""
    episodes = []
    for _ in range(num):
        drift = np.zeros((length, DS + DA))
        for t in range(1, length):
            drift[t] = 0.95 * drift[t - 1] + 0.2 * rng.normal(size=DS + DA)
        episodes.append((rng.normal(size=DS + DA) + drift).astype(np.float32))
    return episodes


def trainer_with_labels(
    num_labels: int, ensemble_size: int, data_aug_ratio: int, device: torch.device, seed: int = 0
) -> RewardTrainer:
    """A trainer whose store holds `num_labels` oracle-labelled pairs from 10 episodes, as QPA's first rounds."""
    rng = np.random.default_rng(seed)
    weights = rng.normal(size=DS + DA) / math.sqrt(DS + DA)
    cfg = RewardConfig(segment=SEGMENT, ensemble_size=ensemble_size, data_aug_ratio=data_aug_ratio)
    episodes = EpisodeStore(DS, DA, max_episodes=10)
    for sa in smooth_episodes(rng, 10):
        for t, row in enumerate(sa):
            episodes.add(row[:DS], row[DS:], float(row @ weights), t == len(sa) - 1)
    preferences = PreferenceDataset(SEGMENT, DS + DA, num_labels, device)
    queried = episodes.sample_segment_pairs(num_labels, list(episodes), SEGMENT, rng)
    keep, labels = ScriptedTeacher(seed=seed).label(queried.rewards[:, 0], queried.rewards[:, 1])
    preferences.add(queried.pairs[keep], labels)
    seeds = RewardSeeds.of(seed)
    return make_reward_trainer(cfg, make_reward_model(cfg, DS + DA, device, seeds.net), preferences, episodes, seeds)


def model_of_size(ensemble_size: int, device: torch.device) -> RewardModel:
    cfg = RewardConfig(segment=SEGMENT, ensemble_size=ensemble_size)
    return make_reward_model(cfg, DS + DA, device, seed=0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    device = choose_device(parser.parse_args().device)
    torch.manual_seed(0)
    rows: list[tuple[str, str]] = []

    for ensemble_size in (1, 3):
        for data_aug_ratio in (0, 20):
            trainer = trainer_with_labels(4 * 128, ensemble_size, data_aug_ratio, device)
            epoch = time_per_call(trainer.train_reward, 1, device, warmup=1)  # 4 minibatches of 128 pairs
            rows.append((f"train steps/s, 128 pairs, E={ensemble_size}, crop x{data_aug_ratio}", f"{4 / epoch:.1f}"))

    for ensemble_size in (1, 3):
        trainer = trainer_with_labels(100, ensemble_size, 20, device)
        synchronize(device)
        start = time.perf_counter()
        accuracy, _ = trainer.train_reward_iter(math.ceil(REWARD_UPDATE * len(trainer.preferences) / 128))
        elapsed = time.perf_counter() - start
        rows.append(
            (
                f"time to early stop, 100 pairs x20 crop, E={ensemble_size}",
                f"{elapsed:.2f} s (acc {accuracy.mean():.3f})",
            )
        )

    transitions = torch.randn(100_000, DS + DA, device=device)
    for ensemble_size in (1, 3):
        model = model_of_size(ensemble_size, device)

        def relabel(model: RewardModel = model) -> None:
            for chunk in transitions.split(65536):
                model.predict_reward(chunk)

        per_row = time_per_call(relabel, 2, device, warmup=1) / len(transitions)
        rows.append((f"relabel 100k transitions, E={ensemble_size}", f"{per_row * 1e6:.2f} us/transition"))
        one_row = transitions[:1]
        per_step = time_per_call(lambda model=model, row=one_row: model.predict_reward(row), 2000, device, warmup=1)
        rows.append((f"predict_reward, 1 row, E={ensemble_size}", f"{per_step * 1e6:.1f} us"))

    store = EpisodeStore(DS, DA, max_episodes=10)
    obs, act = np.zeros(DS, dtype=np.float32), np.zeros(DA, dtype=np.float32)
    steps = iter(range(10**9))
    per_add = time_per_call(lambda: store.add(obs, act, 0.0, next(steps) % 1000 == 999), 20000, device, warmup=1)
    rows.append(("episode store add, 1 step", f"{per_add * 1e6:.1f} us"))

    width = max(len(name) for name, _ in rows)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {device}")
    for name, value in rows:
        print(f"{name:<{width}}  {value}")


if __name__ == "__main__":
    main()
