"""Speed of the whole training loop, the per-step work outside the SAC update, and the quick preset's result.

    python bench/bench_train.py                          # loop speed (quick preset + paper DMC config), per-step cost
    python bench/bench_train.py --device cuda            # the same on a GPU
    python bench/bench_train.py --result exp/demo        # also: final eval return of finished quick runs vs random

Loop speed comes from real `train_QPA.py` runs of a few thousand steps with each config's own feedback schedule:
the per-episode `fps` of train.csv, split into the PEBBLE pre-training phase, the episode holding the first
feedback (a one-off: reward training, relabelling, the critic reset and its `reset_update` SAC updates) and the
steady state after it.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench_sac import make_agent  # noqa: E402

import utils  # noqa: E402
from config_schema import RewardConfig  # noqa: E402
from episodes import EpisodeStore  # noqa: E402
from replay_buffer import ReplayBuffer  # noqa: E402
from train_QPA import make_reward_model  # noqa: E402

# (label, overrides, seed steps, first feedback, steps). The quick preset: random actions for one episode, PEBBLE
# pre-training for the second, queries every 3000 steps from step 2000. The paper config: PEBBLE pre-training only
# briefly (at H1024 each update takes ~0.2 s), the first queries mid-episode so that the next episode is steady state.
CONFIGS = (
    ("quick preset (H256/B256)", ["+preset=quick"], 1000, 2000, 5000),
    ("paper DMC (H1024/B1024)", [], 1400, 1500, 3000),
)


def loop_speed(
    label: str,
    overrides: list[str],
    seed_steps: int,
    first_feedback: int,
    steps: int,
    root: Path,
    threads: int,
    device: str,
) -> dict:
    run_dir = root / label.split()[0]
    schedule = [
        f"device={device}",
        "strict_device=true",
        f"num_threads={threads}",  # explicit: the quick preset's own num_threads=1 would otherwise win
        f"num_train_steps={steps}",
        f"num_seed_steps={seed_steps}",
        f"num_unsup_steps={first_feedback - seed_steps}",
        f"eval_frequency={steps}",
        "num_eval_episodes=1",
        "save_checkpoint=false",
    ]
    command = [sys.executable, "train_QPA.py", "env=walker_walk", *overrides, *schedule, f"hydra.run.dir={run_dir}"]
    start = time.perf_counter()
    subprocess.run(command, cwd=REPO, check=True, capture_output=True)
    wall = time.perf_counter() - start
    episodes = pd.read_csv(run_dir / "train.csv")  # one row per episode, at the step the episode ended
    episode_start = episodes.step.shift(1, fill_value=0)
    # only when that episode holds no random-action steps, which would flatter it
    first_feedback_episode = (
        (episode_start >= seed_steps) & (episode_start <= first_feedback) & (episodes.step > first_feedback)
    )
    return {
        "config": label,
        "steps": steps,
        "wall_s": wall,
        "pebble_phase": episodes[(episode_start >= seed_steps) & (episodes.step <= first_feedback)].fps.mean(),
        "first_feedback_episode": episodes[first_feedback_episode].fps.mean(),
        "steady_after_feedback": episodes[episode_start > first_feedback].fps.mean(),
    }


def per_step_overhead(device: torch.device, steps: int = 2000) -> dict[str, float]:
    """µs per env step spent outside the SAC update: acting, r̂ of the step, both buffer writes (env step excluded)."""
    env = utils.make_env("walker_walk", 0)
    obs_dim, action_dim = env.observation_space.shape[0], env.action_space.shape[0]
    agent = make_agent(obs_dim, action_dim, 256, 2, 256, device)
    buffer = ReplayBuffer((obs_dim,), (action_dim,), 100_000, device, max_episode_len=1000)
    reward_model = make_reward_model(RewardConfig(ensemble_size=1), obs_dim + action_dim, device, seed=0)
    episodes = EpisodeStore(obs_dim, action_dim, max_episodes=10)
    obs, _ = env.reset(seed=0)
    records = []
    for _ in range(steps):
        with utils.eval_mode(agent.actor):
            action = agent.act(obs, sample=True)
        next_obs, reward, terminated, truncated, _ = env.step(action)
        records.append((obs, action, reward, next_obs, terminated or truncated))
        obs = next_obs if not (terminated or truncated) else env.reset()[0]

    timings = {"act": 0.0, "predict_reward": 0.0, "replay_add": 0.0, "reward_model_add": 0.0}
    for obs, action, reward, next_obs, done in records:
        start = time.perf_counter()
        with utils.eval_mode(agent.actor):
            agent.act(obs, sample=True)
        after_act = time.perf_counter()
        reward_hat = reward_model.predict_reward(torch.as_tensor(np.concatenate([obs, action])[None], device=device))
        after_predict = time.perf_counter()
        buffer.add(obs, action, reward_hat, next_obs, float(done), 0.0)
        after_add = time.perf_counter()
        episodes.add(obs, action, reward, done)
        end = time.perf_counter()
        timings["act"] += after_act - start
        timings["predict_reward"] += after_predict - after_act
        timings["replay_add"] += after_add - after_predict
        timings["reward_model_add"] += end - after_add
    per_step = {name: 1e6 * total / steps for name, total in timings.items()}
    per_step["total"] = sum(per_step.values())
    return per_step


def learning_result(run_root: Path) -> pd.DataFrame:
    rows = []
    for eval_csv in sorted(run_root.rglob("eval.csv")):
        evals = pd.read_csv(eval_csv)
        rows.append(
            {
                "run": str(eval_csv.parent.relative_to(run_root)),
                "final_step": int(evals.step.iloc[-1]),
                "step0_return (untrained)": evals.episode_reward.iloc[0],
                "final_return": evals.episode_reward.iloc[-1],
                "best_return": evals.episode_reward.max(),
            }
        )
    if not rows:
        raise SystemExit(f"bench_train: no eval.csv under {run_root}")
    return pd.DataFrame(rows)


def random_policy_return(episodes: int = 5) -> float:
    env = utils.make_env("walker_walk", 0)
    rng = np.random.default_rng(0)
    returns = []
    for index in range(episodes):
        env.reset(seed=index)
        done, total = False, 0.0
        while not done:
            _, reward, terminated, truncated, _ = env.step(rng.uniform(-1, 1, env.action_space.shape))
            total += reward
            done = terminated or truncated
        returns.append(total)
    return float(np.mean(returns))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--result", type=Path, help="folder of finished quick-preset runs to report")
    parser.add_argument("--skip-loop", action="store_true", help="skip the loop-speed runs")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch threads of every run")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:<index> (every run and the per-step cost)")
    args = parser.parse_args()
    device = utils.choose_device(args.device, strict=True)
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} threads, {device}")
    pd.set_option("display.width", 200)
    if not args.skip_loop:
        with tempfile.TemporaryDirectory() as root:
            table = pd.DataFrame([loop_speed(*config, Path(root), args.threads, str(device)) for config in CONFIGS])
        print("\nfull training loop, walker_walk (env steps/s)")
        print(table.to_string(index=False, float_format=lambda value: f"{value:.1f}"))
        overhead = per_step_overhead(device)
        print("\nper-step work outside the SAC update (µs, H256 actor, ensemble-1 reward model)")
        print("  " + ", ".join(f"{name} {value:.1f}" for name, value in overhead.items()))
    if args.result:
        print(f"\nquick preset result (random policy: {random_policy_return():.1f} over 5 episodes)")
        print(learning_result(args.result).to_string(index=False, float_format=lambda value: f"{value:.1f}"))


if __name__ == "__main__":
    main()
