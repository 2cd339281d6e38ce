"""What capturing the SAC update in a CUDA graph would gain: the eager update against the same two updates
captured once and replayed.

    python bench/bench_cuda_graph.py          # needs a CUDA GPU

On a GPU the eager update is bound by Python and by launching its kernels one at a time, so it costs about the
same at every network size (docs/PERFORMANCE.md). A CUDA graph launches the whole update at once. The graph here
holds two consecutive updates of the training loop (critic, actor and temperature steps; the target critic
follows on the first, as `critic_target_update_frequency=2` does), with fused Adam made capturable and each
replay fed two fresh replay batches copied into the graph's fixed input tensors. This was the estimate made
before the training loop had graphs; train_QPA.py now replays its per-step work from graphs (cuda_graphs.py,
`cuda_graphs=auto` on a GPU), and bench/gpu_report.py measures the update and the loop as they run there.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_sac import CASES, make_agent, random_buffer, time_ms, update_on

import utils
from agent.sac import SACAgent
from replay_buffer import ReplayBuffer

BUFFER_FILL = 10_000


def graphed_updates(
    agent: SACAgent, buffer: ReplayBuffer, batch_size: int
) -> tuple[Callable[[], None], dict[str, torch.Tensor]]:
    """A function that runs two SAC updates by replaying one CUDA graph, and the metrics tensors it writes."""
    for optimizer in (agent.critic_optimizer, agent.actor_optimizer, agent.log_alpha_optimizer):
        for group in optimizer.param_groups:
            group["capturable"] = True
    batches = (buffer.sample(batch_size), buffer.sample(batch_size))

    def two_updates() -> dict[str, torch.Tensor]:
        agent.update(lambda: batches[0], step=0)  # the target critic follows at step 0, as at every even step
        return agent.update(lambda: batches[1], step=1)

    # Warm-up on a side stream, as CUDA graph capture requires (optimiser state and autograd buffers exist).
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            two_updates()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        metrics = two_updates()

    def replay() -> None:
        for batch in batches:
            for fixed, fresh in zip(batch, buffer.sample(batch_size), strict=True):
                if fixed is not None:  # a buffer without RUNE's std column
                    fixed.copy_(fresh)
        graph.replay()

    return replay, metrics


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", help="cuda or cuda:<index>")
    requested = parser.parse_args().device
    if not requested.startswith("cuda") or not torch.cuda.is_available():
        raise SystemExit(f"error: --device={requested} cannot run here; allowed: cuda or cuda:<index> on a CUDA GPU")
    device = utils.choose_device(requested, strict=True)
    print(f"device {device} ({torch.cuda.get_device_name(device)}), torch {torch.__version__}")
    print(f"{'case':<44} {'eager ms':>9} {'graph ms':>9} {'speed-up':>9}   losses after the graph's updates")
    for label, obs_dim, action_dim, hidden_dim, hidden_depth, batch_size, method in CASES:
        if method != "update":
            continue
        utils.set_seed_everywhere(0)
        agent = make_agent(obs_dim, action_dim, hidden_dim, hidden_depth, batch_size, device)
        buffer = random_buffer(obs_dim, action_dim, BUFFER_FILL, device)
        steps = iter(range(10**9))
        calls = 20 if hidden_dim * batch_size >= 1 << 20 else 100
        update = update_on(agent, buffer, method)
        eager, _ = time_ms(lambda u=update, s=steps: u(next(s)), device, calls)
        replay, metrics = graphed_updates(agent, buffer, batch_size)
        graphed, _ = time_ms(replay, device, calls // 2)
        graphed /= 2  # one replay is two updates
        losses = {name: metrics[name].item() for name in ("critic_loss", "actor_loss", "alpha_loss")}
        finite = all(math.isfinite(value) for value in losses.values())
        shown = ", ".join(f"{name} {value:.3g}" for name, value in losses.items())
        shown += "" if finite else " (not finite!)"
        print(f"{label:<44} {eager:>9.2f} {graphed:>9.2f} {eager / graphed:>8.1f}x   {shown}")


if __name__ == "__main__":
    main()
