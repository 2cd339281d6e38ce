"""The training loop's per-step GPU work replayed from CUDA graphs (`cuda_graphs`, docs/PERFORMANCE.md).

On a GPU an eager SAC update waits on Python and on launching its many small kernels one at a time, so it costs
about the same at every network size. A CUDA graph launches a whole recorded sequence of kernels at once. This
module keeps that speed trick out of the readable path: what it records is the eager code itself
(`SACAgent.update`, `SACAgent.policy_action`, `RewardModel.predict_reward`), run once on fixed input tensors while
CUDA records it. A step then only fills those inputs in place and replays:

- the SAC update after the first feedback (and SAC on the true reward): the replay buffer's seeded generator still
  draws the batch indices on the host, exactly as in an eager run, and only the indices are copied into the graph;
  the gather from the buffer, the critic, actor and temperature steps and the target critic are in the graph. One
  graph per (updates per step, actor step or not, target-critic step or not), so any `gradient_update`;
- the action of a step (sampled in training, the mean in evaluations): the one host sync a step needs;
- r̂ of a step, which the replay buffer stores without a sync.

So a step queues its update and the CPU steps the environment while the GPU runs it. What changes shape or runs
once per round stays eager: PEBBLE's k-NN pre-training over a growing buffer, reward-model training, relabelling,
the critic reset and its `reset_update` updates, RUNE's bonus (its weight changes every step), PPE's behaviour
action. Finiteness is checked as in an eager run: the action on the host at every step (it is read there anyway),
the update's losses at episode ends.

Capture needs eager warm-up runs first (they create the optimisers' state and the CUDA libraries' workspaces).
Those runs change the networks, the optimisers and the device's random stream, so all of them are saved before and
put back before the capture, which records without running anything: a graphed run stays the eager run. A graph
reads the tensors it was captured with, so when the networks, the optimisers or their state, or the reward model
are replaced (a resume builds new ones; the critic reset; PoLiCER's reset; an optimiser's load_state_dict), the
graphs that read them are dropped and captured again at their next use.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from agent.sac import SacUpdate

if TYPE_CHECKING:
    from agent.sac import Metrics, SACAgent
    from replay_buffer import Batch, ReplayBuffer
    from reward_model import RewardModel

# Eager runs before a capture. One creates the optimisers' state; the second runs with that state present, which
# is what the captured code will see (bench/bench_cuda_graph.py, measured on an H200, used three).
WARMUP_RUNS = 2


def graphs_enabled(setting: bool | str, device: torch.device) -> bool:
    """The `cuda_graphs` key on this device. `auto` is off everywhere until the graphed path has run on a GPU and
    been shown to write the eager path's logs (docs/PERFORMANCE.md); `true` turns it on, unverified."""
    if setting is True and device.type != "cuda":
        raise ValueError(f"cuda_graphs=true needs a CUDA device, not {device}")  # the config check refuses it first
    return setting is True


def rng_state(device: torch.device) -> torch.Tensor:
    return torch.cuda.get_rng_state(device) if device.type == "cuda" else torch.get_rng_state()


def set_rng_state(state: torch.Tensor, device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.set_rng_state(state, device)
    else:
        torch.set_rng_state(state)


class Snapshot:
    """Tensors, optimiser states and the device's random stream as they were, to be put back in place (the
    tensors keep their addresses, which a graph captured afterwards will read)."""

    def __init__(
        self, device: torch.device, tensors: Iterable[torch.Tensor], optimizers: Iterable[torch.optim.Optimizer]
    ) -> None:
        self.device = device
        self.tensors = [(tensor, tensor.detach().clone()) for tensor in tensors]
        self.optimizers = [(optimizer, _optimizer_state(optimizer)) for optimizer in optimizers]
        self.rng = rng_state(device)

    @torch.no_grad()
    def restore(self) -> None:
        for tensor, saved in self.tensors:
            tensor.copy_(saved)
        for optimizer, states in self.optimizers:
            for param, saved in states.items():
                for name, value in optimizer.state[param].items():
                    if saved is not None:
                        value.copy_(saved[name])
                    else:  # state the warm-up created goes back to what Adam creates: zero moments at step 0
                        value.zero_()
        self.restore_rng()

    def restore_rng(self) -> None:
        set_rng_state(self.rng, self.device)


def _optimizer_state(optimizer: torch.optim.Optimizer) -> dict[torch.Tensor, dict[str, torch.Tensor] | None]:
    """A copy of every parameter's state, None where the optimiser has none yet."""
    return {
        param: {name: value.clone() for name, value in optimizer.state[param].items()}
        if param in optimizer.state
        else None
        for group in optimizer.param_groups
        for param in group["params"]
    }


class Graph:
    """One CUDA graph: its fixed input tensor, its outputs (overwritten by every replay) and the objects whose
    tensors it reads (`reads`)."""

    def __init__(self, device: torch.device, reads: tuple[object, ...], inputs: torch.Tensor) -> None:
        self.device = device
        self.reads = reads
        self.inputs = inputs
        self.outputs: Any = None
        self.graph = torch.cuda.CUDAGraph()
        self.snapshot: Snapshot | None = None

    @contextmanager
    def warming_up(self, snapshot: Snapshot) -> Iterator[None]:
        """The body runs eagerly on a side stream, as capture requires; then whatever it changed is put back."""
        self.snapshot = snapshot
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            yield
        torch.cuda.current_stream(self.device).wait_stream(side)
        snapshot.restore()

    @contextmanager
    def capturing(self, optimizers: Iterable[torch.optim.Optimizer] = ()) -> Iterator[None]:
        """The body's kernels are recorded, not run. Adam steps in capturable mode only meanwhile: fused Adam runs
        the same kernel either way, and checkpoints then stay those of an eager run."""
        groups = [group for optimizer in optimizers for group in optimizer.param_groups]
        before = [group["capturable"] for group in groups]
        for group in groups:
            group["capturable"] = True
        try:
            # A stream of this graph's device: torch.cuda.graph's own belongs to the device current when first made.
            with torch.cuda.graph(self.graph, stream=torch.cuda.Stream(self.device)):
                yield
        finally:
            for group, capturable in zip(groups, before, strict=True):
                group["capturable"] = capturable
            if self.snapshot is not None:
                self.snapshot.restore_rng()

    def replay(self) -> None:
        self.graph.replay()


class GraphCache:
    """Graphs by what they compute; a graph whose `reads` are no longer the objects given (`is`, not `==`) was
    captured with tensors since replaced, and is dropped."""

    def __init__(self) -> None:
        self.graphs: dict[Hashable, Any] = {}

    def get(self, key: Hashable, reads: tuple[object, ...]) -> Any | None:
        graph = self.graphs.get(key)
        if graph is not None and (
            len(graph.reads) != len(reads) or any(old is not new for old, new in zip(graph.reads, reads))
        ):
            del self.graphs[key]
            graph = None
        return graph

    def add(self, key: Hashable, graph: Any) -> Any:
        self.graphs[key] = graph
        return graph


def pinned(array: np.ndarray, dtype: type[np.number]) -> torch.Tensor:
    """A fresh page-locked host copy, so that a non_blocking copy to the device never waits for queued work; the
    caching host allocator keeps it until that copy is done."""
    return torch.from_numpy(np.asarray(array, dtype=dtype)).pin_memory()


def optimizers(agent: SACAgent) -> tuple[torch.optim.Optimizer, ...]:
    return agent.critic_optimizer, agent.actor_optimizer, agent.log_alpha_optimizer


def update_reads(agent: SACAgent) -> tuple[object, ...]:
    """What an update graph reads, as the objects a replacement changes: the networks, the temperature, the
    optimisers and their state (an optimiser's load_state_dict, as a resume does, gives it new state tensors)."""
    parts = (agent.critic, agent.critic_target, agent.actor, agent.log_alpha)
    return (*parts, *optimizers(agent), *(optimizer.state for optimizer in optimizers(agent)))


def update_key(agent: SACAgent, step: int, gradient_update: int) -> tuple[Hashable, ...]:
    """What decides the kernels of `SACAgent.update` at a step: how many updates, and whether the actor (with the
    temperature) and the target critic step; the batches' contents do not."""
    return ("update", gradient_update, step % agent.actor_update_frequency == 0,
            step % agent.critic_target_update_frequency == 0)  # fmt: skip


def batches(replay_buffer: ReplayBuffer, indices: torch.Tensor) -> Callable[[], Batch]:
    """A `sample` for SACAgent.update: the batch of each row of `indices` [updates, batch size] in turn, gathered
    on the device."""
    rows = iter(indices)
    return lambda: replay_buffer.take(next(rows))


class GraphedSteps:
    """Stands in for `SACAgent.act`, `SACAgent.update` and `RewardModel.predict_step` on a CUDA device, with the
    same arguments and results; each graph is captured at its first use. The tensors returned are a graph's
    outputs: the next replay of that graph overwrites them, so use them (or queue their use) before then."""

    def __init__(
        self,
        agent: SACAgent,
        replay_buffer: ReplayBuffer,
        reward_model: RewardModel,
        draw: Callable[[bool], np.ndarray] | None = None,
    ) -> None:
        if agent.device.type != "cuda":
            raise ValueError(f"CUDA graphs need a CUDA device, not {agent.device}")
        self.agent = agent
        self.replay_buffer = replay_buffer
        self.reward_model = reward_model
        self.draw = draw  # hybrid -> the replay slots of one batch, drawn as the eager sample draws them
        self.device = agent.device
        self.cache = GraphCache()
        if self.device.index is not None:  # a capture records the current device's random stream: make it this one
            torch.cuda.set_device(self.device)

    def sac_update(self, hybrid: bool, step: int, gradient_update: int = 1) -> SacUpdate:
        """`SACAgent.update` on batches of the slots `draw(hybrid)` returns (one call per batch, in order, before
        the replay: the same host draws as an eager run's)."""
        metrics = self.update(lambda: self.draw(hybrid), step, gradient_update)
        last_slots = self.last_slots
        return SacUpdate(metrics, lambda: self.replay_buffer.take(last_slots))

    def update(self, draw: Callable[[], np.ndarray], step: int, gradient_update: int = 1) -> Metrics:
        """`SACAgent.update` on batches of the slots `draw()` returns (one call per batch, in order, before the
        replay: the same host draws as an eager run's)."""
        agent, buffer = self.agent, self.replay_buffer
        key, reads = update_key(agent, step, gradient_update), update_reads(agent)
        graph = self.cache.get(key, reads)
        if graph is None:
            indices = torch.zeros((gradient_update, agent.batch_size), dtype=torch.int64, device=self.device)
            graph = self.cache.add(key, Graph(self.device, reads, indices))
            state = [*agent.critic.parameters(), *agent.critic_target.parameters(), *agent.actor.parameters()]
            with graph.warming_up(Snapshot(self.device, [*state, agent.log_alpha], optimizers(agent))):
                for _ in range(WARMUP_RUNS):
                    agent.update(batches(buffer, indices), step, gradient_update)
            with graph.capturing(optimizers(agent)):
                graph.outputs = agent.update(batches(buffer, indices), step, gradient_update)
        slots = np.concatenate([draw() for _ in range(gradient_update)])
        graph.inputs.copy_(pinned(slots, np.int64).view(graph.inputs.shape), non_blocking=True)
        graph.replay()
        self.last_slots = graph.inputs[-1]
        return dict(graph.outputs)

    def act(self, obs: np.ndarray, sample: bool = False) -> np.ndarray:
        """`SACAgent.act` for one observation [obs_dim]."""
        agent = self.agent
        reads = (agent.actor,)
        graph = self.cache.get(("act", sample), reads)
        if graph is None:
            inputs = torch.zeros(agent.obs_dim, device=self.device)
            graph = self.cache.add(("act", sample), Graph(self.device, reads, inputs))
            with graph.warming_up(Snapshot(self.device, (), ())), torch.inference_mode():
                for _ in range(WARMUP_RUNS):
                    agent.policy_action(graph.inputs, sample)
            with graph.capturing(), torch.inference_mode():
                graph.outputs = agent.policy_action(graph.inputs, sample)
        graph.inputs.copy_(pinned(obs, np.float32), non_blocking=True)
        graph.replay()
        return graph.outputs.cpu().numpy()

    def predict_step(
        self, obs: np.ndarray, action: np.ndarray, with_std: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """`RewardModel.predict_step`: r̂(s, a) of one step [1, 1] and, `with_std`, the ensemble's std."""
        model = self.reward_model
        reads = (model.net,)
        graph = self.cache.get(("reward", with_std), reads)
        if graph is None:
            inputs = torch.zeros((1, model.input_dim), device=self.device)
            graph = self.cache.add(("reward", with_std), Graph(self.device, reads, inputs))
            with graph.warming_up(Snapshot(self.device, (), ())):
                for _ in range(WARMUP_RUNS):
                    self.predict(graph.inputs, with_std)
            with graph.capturing():
                graph.outputs = self.predict(graph.inputs, with_std)
        graph.inputs.copy_(pinned(np.concatenate([obs, action])[None], np.float32), non_blocking=True)
        graph.replay()
        return graph.outputs

    def predict(self, obs_action: torch.Tensor, with_std: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        if with_std:
            return self.reward_model.predict_reward_and_std(obs_action)
        return self.reward_model.predict_reward(obs_action), None
