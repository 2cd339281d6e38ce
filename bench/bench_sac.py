"""SAC cost per update at the paper's network sizes, and (with --solve) a true-reward learning check.

Timings use a replay buffer of random walker-sized transitions (obs 24, action 6; Meta-World obs 39,
action 4), so they measure the agent, not an environment. The k-NN state-entropy update searches a
10k-transition buffer, the size PEBBLE's unsupervised phase reaches (1000 seed + 9000 unsupervised steps).
Run: python bench/bench_sac.py [--device cpu|cuda|auto] [--threads N] [--solve]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import utils
from agent.sac import SACAgent
from replay_buffer import ReplayBuffer

# (label, obs_dim, action_dim, hidden_dim, hidden_depth, batch_size, update method)
CASES = [
    ("SAC update, 256x2, batch 256", 24, 6, 256, 2, 256, "update"),
    ("SAC update, Meta-World 256x3, batch 512", 39, 4, 256, 3, 512, "update"),
    ("SAC update, DMC paper 1024x2, batch 1024", 24, 6, 1024, 2, 1024, "update"),
    ("k-NN entropy update, 10k buffer, 256x2, batch 256", 24, 6, 256, 2, 256, "update_state_ent"),
]
BUFFER_FILL = 10_000


def make_agent(
    obs_dim: int,
    action_dim: int,
    hidden_dim: int,
    hidden_depth: int,
    batch_size: int,
    device: str | torch.device,
    lr: float = 1e-4,
    **overrides: Any,
) -> SACAgent:
    """An agent with the paper's SAC settings (config/agent/sac.yaml) at the given size, plus `overrides`."""
    params = dict(
        obs_dim=obs_dim,
        action_dim=action_dim,
        action_range=[-1.0, 1.0],
        device=device,
        critic_cfg={"hidden_dim": hidden_dim, "hidden_depth": hidden_depth},
        actor_cfg={"hidden_dim": hidden_dim, "hidden_depth": hidden_depth, "log_std_bounds": [-5.0, 2.0]},
        discount=0.99,
        init_temperature=0.1,
        alpha_lr=lr,
        alpha_betas=[0.9, 0.999],
        actor_lr=lr,
        actor_betas=[0.9, 0.999],
        actor_update_frequency=1,
        critic_lr=lr,
        critic_betas=[0.9, 0.999],
        critic_tau=0.005,
        critic_target_update_frequency=2,
        batch_size=batch_size,
        learnable_temperature=True,
    )
    return SACAgent(**{**params, **overrides})


def random_buffer(obs_dim: int, action_dim: int, size: int, device: torch.device) -> ReplayBuffer:
    buffer = ReplayBuffer(obs_dim, action_dim, size, device, max_episode_len=1000)
    rng = np.random.default_rng(0)
    for t in range(size):
        time_limit = (t + 1) % 1000 == 0
        obs = rng.standard_normal(obs_dim, dtype=np.float32)
        action = rng.uniform(-1, 1, action_dim).astype(np.float32)
        buffer.add(obs, action, float(rng.random()), obs, float(time_limit), 0.0)
    return buffer


def time_ms(fn: Callable[[], object], device: torch.device, calls: int, repeats: int = 7) -> tuple[float, float]:
    """(best, median) over `repeats` of the mean wall time in ms of `calls` calls, after a warm-up.

    Both, because other processes share the cores: the best repeat is the cost, the median what a run sees.
    """

    def synchronize() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for _ in range(max(3, calls // 5)):
        fn()
    synchronize()
    means = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        synchronize()
        means.append((time.perf_counter() - start) / calls * 1e3)
    return min(means), statistics.median(means)


def matmul_gflops(rows: int, width: int, device: torch.device) -> float:
    """This machine's rate for a [rows, width] x [width, width] float32 matmul, the update's typical product."""
    a = torch.randn(rows, width, device=device)
    b = torch.randn(width, width, device=device)
    best_ms, _ = time_ms(lambda: a @ b, device, calls=50)
    return 2 * rows * width * width / best_ms / 1e6


def update_on(agent: SACAgent, buffer: ReplayBuffer, method: str) -> Callable[[int], dict[str, torch.Tensor]]:
    """One SAC update at a step: on uniform batches ("update") or PEBBLE's state-entropy batches."""
    if method == "update_state_ent":
        return lambda step: agent.update_state_ent(buffer, step)
    return lambda step: agent.update(lambda: buffer.sample(agent.batch_size), step)


def bench_updates(device: torch.device) -> list[tuple[str, float, float, float, float]]:
    """(label, best ms, median ms, GFLOP of matmuls per update, the time those take at this machine's rate)."""
    rows = []
    for label, obs_dim, action_dim, hidden_dim, hidden_depth, batch_size, method in CASES:
        utils.set_seed_everywhere(0)
        agent = make_agent(obs_dim, action_dim, hidden_dim, hidden_depth, batch_size, device)
        buffer = random_buffer(obs_dim, action_dim, BUFFER_FILL, device)
        update = update_on(agent, buffer, method)
        step = iter(range(10**9))
        calls = 5 if hidden_dim * batch_size >= 1 << 20 else 50
        best, median = time_ms(lambda u=update, s=step: u(next(s)), device, calls)
        with FlopCounterMode(display=False) as counter:
            update(next(step))
        gflop = counter.get_total_flops() / 1e9
        rows.append((label, best, median, gflop, 1e3 * gflop / matmul_gflops(batch_size, hidden_dim, device)))
    return rows


def train_true_reward(
    env_name: str,
    num_steps: int,
    seed: int = 0,
    hidden_dim: int = 64,
    batch_size: int = 128,
    lr: float = 1e-3,
    num_seed_steps: int = 1000,
    num_eval_episodes: int = 2,
) -> tuple[float, float]:
    """Train SAC on the environment's true reward; return (deterministic-policy return, random-policy return).

    Small networks, lr 1e-3 and a faster-tracking target critic (tau 0.01 every step instead of the paper's
    0.005 every 2 steps) so that a CPU-sized run learns; everything else is the paper's SAC.
    """
    utils.set_seed_everywhere(seed)
    env = utils.make_env(env_name, seed)
    obs_dim, action_dim = env.observation_space.shape[0], env.action_space.shape[0]
    agent = make_agent(
        obs_dim, action_dim, hidden_dim, 2, batch_size, "cpu", lr=lr, critic_tau=0.01, critic_target_update_frequency=1
    )
    buffer = ReplayBuffer(obs_dim, action_dim, num_steps, "cpu", max_episode_len=env.max_episode_steps, seed=seed)
    rng = np.random.default_rng(seed)
    obs, _ = env.reset(seed=seed)
    for step in range(num_steps):
        if step < num_seed_steps:
            action = rng.uniform(-1.0, 1.0, action_dim).astype(np.float32)
        else:
            action = agent.act(obs, sample=True)
            agent.update(lambda: buffer.sample(agent.batch_size), step)
        next_obs, reward, terminated, truncated, _ = env.step(action)
        buffer.add(obs, action, reward, next_obs, float(terminated or truncated), float(terminated))
        obs = env.reset()[0] if terminated or truncated else next_obs

    eval_env = utils.make_env(env_name, seed + 10_000)

    def average_return(policy: Callable[[np.ndarray], np.ndarray]) -> float:
        returns = []
        for episode in range(num_eval_episodes):
            obs, _ = eval_env.reset(seed=seed + 10_000 + episode)
            total, done = 0.0, False
            while not done:
                obs, reward, terminated, truncated, _ = eval_env.step(policy(obs))
                total += float(reward)
                done = terminated or truncated
            returns.append(total)
        return float(np.mean(returns))

    trained = average_return(agent.act)
    random_return = average_return(lambda _: rng.uniform(-1.0, 1.0, action_dim).astype(np.float32))
    return trained, random_return


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--solve", action="store_true", help="also run the longer true-reward learning check")
    args = parser.parse_args()
    device = utils.choose_device(args.device)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    print(f"device {device}, torch {torch.__version__}, {torch.get_num_threads()} threads")
    # The matmul floor: the update's matmul FLOPs (counted by FlopCounterMode) at this machine's matmul rate.
    print(f"{'case':<52} {'best ms':>9} {'median ms':>10} {'GFLOP':>7} {'matmul floor ms':>16}")
    for label, best, median, gflop, floor in bench_updates(device):
        print(f"{label:<52} {best:>9.2f} {median:>10.2f} {gflop:>7.3f} {floor:>16.2f}")
    if args.solve:
        # Hidden-64 networks gain nothing from a second thread, and stall when another process holds that core.
        torch.set_num_threads(1)
        start = time.perf_counter()
        trained, random_return = train_true_reward("cartpole_swingup", num_steps=30_000, num_eval_episodes=5)
        print(
            f"cartpole_swingup, 30k steps of SAC on the true reward: return {trained:.1f} "
            f"(uniform random policy {random_return:.1f}), {time.perf_counter() - start:.0f} s"
        )


if __name__ == "__main__":
    main()
