"""cuda_graphs.py: on any machine, what decides a capture and a re-capture, the warm-up that leaves no trace, and
the batches of a graph's index tensor; on a CUDA GPU (skipped elsewhere), the graphed update, action and r̂ against
the eager code call for call, graphed training runs against eager ones, and exact resume.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import subprocess
import sys
from functools import partial
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import REPO_ROOT, SMALL_NETWORKS, TIME_COLUMNS, load_config

import cuda_graphs
import train_QPA
import utils
from agent.sac import SacUpdate
from bench.bench_sac import make_agent
from cuda_graphs import GraphCache, GraphedSteps, Snapshot, batches, graphs_enabled, update_key, update_reads
from per_step import EagerSteps, per_step_work
from replay_buffer import ReplayBuffer
from train_QPA import make_reward_model

requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
OBS_DIM, ACTION_DIM, BATCH = 5, 2, 16


def filled_buffer(device: str | torch.device, seed: int = 0, size: int = 300) -> ReplayBuffer:
    """Random transitions in 50-step episodes; the same `seed` gives the same content and the same draws."""
    buffer = ReplayBuffer(OBS_DIM, ACTION_DIM, size, device, max_episode_len=50, seed=seed)
    rng = np.random.default_rng(seed)
    for t in range(size):
        obs, next_obs = rng.standard_normal((2, OBS_DIM), dtype=np.float32)
        action = rng.uniform(-1, 1, ACTION_DIM).astype(np.float32)
        buffer.add(obs, action, float(rng.standard_normal()), next_obs, float((t + 1) % 50 == 0), 0.0)
    return buffer


def small_agent(device: str | torch.device = "cpu", seed: int = 0):
    utils.set_seed_everywhere(seed)
    return make_agent(OBS_DIM, ACTION_DIM, hidden_dim=32, hidden_depth=2, batch_size=BATCH, device=device)


def agent_tensors(agent) -> list[torch.Tensor]:
    """Everything an update changes: networks, target, temperature and the optimisers' state."""
    tensors = [*agent.critic.parameters(), *agent.critic_target.parameters(), *agent.actor.parameters()]
    tensors.append(agent.log_alpha)
    for optimizer in cuda_graphs.optimizers(agent):
        for group in optimizer.param_groups:
            for param in group["params"]:
                tensors += [optimizer.state[param][name] for name in sorted(optimizer.state.get(param, {}))]
    return [tensor.detach().clone() for tensor in tensors]


def assert_same(first: list[torch.Tensor], second: list[torch.Tensor]) -> None:
    assert len(first) == len(second)
    for a, b in zip(first, second, strict=True):
        assert torch.equal(a, b), (a - b).abs().max()


# ---------------------------------------------------------------------------------------------------- any machine
def test_cuda_graphs_are_on_only_when_asked_for_on_a_cuda_device() -> None:
    """`auto` stays off until the graphed path has been shown equal to the eager one on a GPU (PERFORMANCE.md)."""
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert not graphs_enabled("auto", cuda) and not graphs_enabled("auto", cpu)
    assert graphs_enabled(True, cuda) and not graphs_enabled(False, cuda) and not graphs_enabled(False, cpu)
    with pytest.raises(ValueError, match="needs a CUDA device"):
        graphs_enabled(True, cpu)
    agent, buffer = small_agent(), filled_buffer("cpu")
    for setting in ("auto", False):
        work = per_step_work(setting, agent, buffer, None, buffer.sample, buffer.uniform_indices, False)
        assert isinstance(work, EagerSteps)
    with pytest.raises(ValueError, match="need a CUDA device"):
        GraphedSteps(agent, buffer, None)


def test_a_cpu_run_builds_no_graphs_and_true_is_refused_before_any_work(tmp_path: Path) -> None:
    cfg = load_config("env=walker_walk", "device=cpu", "num_threads=1", *SMALL_NETWORKS)
    assert cfg.cuda_graphs == "auto" and cfg.tf32 is False
    workspace = train_QPA.Workspace(cfg, tmp_path)
    assert isinstance(workspace.steps, EagerSteps)
    with pytest.raises(train_QPA.ConfigError, match=r"^cuda_graphs=True is invalid: needs a CUDA GPU"):
        load_config("device=cpu", "cuda_graphs=true")


def test_an_update_graph_is_chosen_by_count_and_by_the_actor_and_target_steps() -> None:
    agent = small_agent()  # actor every update, target critic every 2nd
    keys = [update_key(agent, step, 1) for step in range(4)]
    assert keys[0] == keys[2] != keys[1] == keys[3]
    assert update_key(agent, 0, 2) != keys[0]
    agent.actor_update_frequency = 2
    assert len({update_key(agent, step, 1) for step in range(4)}) == 2  # steps 0, 2: both; 1, 3: neither


def test_graphs_are_dropped_when_what_they_read_is_replaced() -> None:
    agent, other, buffer = small_agent(), small_agent(seed=1), filled_buffer("cpu")
    cache, key = GraphCache(), ("update", 1, True, True)
    first = cache.add(key, SimpleNamespace(reads=update_reads(agent)))
    assert cache.get(key, update_reads(agent)) is first
    # values change in place: an eager update, a module's load_state_dict; the graph reads the new values
    agent.update(lambda: buffer.sample(BATCH), step=0)
    pointers = [param.data_ptr() for param in agent.critic.parameters()]
    agent.critic.load_state_dict(other.critic.state_dict())
    assert [param.data_ptr() for param in agent.critic.parameters()] == pointers
    assert cache.get(key, update_reads(agent)) is first
    agent.reset_critic()  # the first round's critic restart, PoLiCER's reset
    assert cache.get(key, update_reads(agent)) is None and key not in cache.graphs
    cache.add(key, SimpleNamespace(reads=update_reads(agent)))
    agent.load_state_dict(other.state_dict())  # a resume: the optimisers get new state tensors
    assert cache.get(key, update_reads(agent)) is None
    cache.add(key, SimpleNamespace(reads=update_reads(agent)))
    agent.reset_actor()
    assert cache.get(key, update_reads(agent)) is None
    old, new = torch.zeros(2), torch.zeros(2)
    cache.add(key, SimpleNamespace(reads=(old,)))
    assert cache.get(key, (old, new)) is None  # another number of parts
    cache.add(key, SimpleNamespace(reads=(old,)))
    assert cache.get(key, (new,)) is None  # equal values in another tensor: identity decides, not equality


@pytest.mark.parametrize("optimiser_state", ["none yet", "after updates"])
def test_warm_up_runs_leave_no_trace_once_the_snapshot_is_restored(optimiser_state: str) -> None:
    """What a capture's warm-up changes (weights, target, temperature, Adam's moments and step, the random stream)
    is put back: an update after it equals the same update of a twin that never warmed up, bit for bit."""
    buffer = filled_buffer("cpu")
    indices = torch.as_tensor(np.random.default_rng(3).integers(0, len(buffer), (2, BATCH)))
    warmed, twin = small_agent(seed=4), small_agent(seed=4)
    if optimiser_state == "after updates":
        for agent in (warmed, twin):
            torch.manual_seed(5)
            for step in range(3):
                agent.update(batches(buffer, indices), step, gradient_update=2)
    torch.manual_seed(6)
    state = [*warmed.critic.parameters(), *warmed.critic_target.parameters(), *warmed.actor.parameters()]
    snapshot = Snapshot(torch.device("cpu"), [*state, warmed.log_alpha], cuda_graphs.optimizers(warmed))
    for step in (0, 1):
        warmed.update(batches(buffer, indices.flip(0)), step, gradient_update=2)
    assert not torch.equal(next(warmed.critic.parameters()), next(twin.critic.parameters()))
    snapshot.restore()  # and the random stream back to seed 6's, which the next update relies on
    warmed_metrics = warmed.update(batches(buffer, indices), 0, gradient_update=2)
    torch.manual_seed(6)
    twin_metrics = twin.update(batches(buffer, indices), 0, gradient_update=2)
    assert_same(agent_tensors(warmed), agent_tensors(twin))
    assert_same(list(warmed_metrics.values()), list(twin_metrics.values()))


def test_the_rows_of_an_index_tensor_give_the_batches_of_an_eager_run() -> None:
    """The graphed update draws all its batches' slots first (host, the buffer's own stream) and gathers them on
    the device; the eager one draws and gathers batch by batch. Same draws, same batches, same stream after."""
    graphed, eager = filled_buffer("cpu", seed=7), filled_buffer("cpu", seed=7)
    slots = np.concatenate([graphed.hybrid_indices(BATCH, 3, 0.5) for _ in range(3)])
    rows = batches(graphed, torch.as_tensor(slots).view(3, BATCH))
    for _ in range(3):
        for mine, theirs in zip(rows(), eager.sample_hybrid(BATCH, 3, 0.5), strict=True):
            assert (mine is None and theirs is None) or torch.equal(mine, theirs)
    assert graphed.rng.bit_generator.state == eager.rng.bit_generator.state


class FakeCuda:
    """Stand-ins for the torch.cuda calls cuda_graphs.py makes, for running its Python control flow on a CPU: streams
    and stream switches do nothing, a "capture" runs its body eagerly (nothing is recorded) and counts, a replay
    counts. The numbers a replay should produce are the GPU tests' business; this catches what Python would raise."""

    def __init__(self, monkeypatch) -> None:
        self.captures = self.replays = 0
        stream = SimpleNamespace(wait_stream=lambda other: None)
        fake = self

        class Graph:
            def replay(self) -> None:
                fake.replays += 1

        @contextlib.contextmanager
        def graph(cuda_graph, stream=None):
            fake.captures += 1
            yield

        for name, value in {
            "CUDAGraph": Graph, "Stream": lambda device=None: stream, "current_stream": lambda device=None: stream,
            "stream": lambda s: contextlib.nullcontext(), "graph": graph, "set_device": lambda device: None,
            "get_rng_state": lambda device=None: torch.get_rng_state(),
            "set_rng_state": lambda state, device=None: torch.set_rng_state(state),
        }.items():  # fmt: skip
            monkeypatch.setattr(torch.cuda, name, value)
        monkeypatch.setattr(cuda_graphs, "pinned", lambda array, dtype: torch.from_numpy(np.asarray(array, dtype)))


def test_the_graphed_steps_run_through_on_a_cpu_with_cuda_faked(monkeypatch) -> None:
    fake = FakeCuda(monkeypatch)
    agent, buffer = small_agent(), filled_buffer("cpu")
    model = make_reward_model(load_config("reward_hidden_dim=16", "ensemble_size=3"), OBS_DIM + ACTION_DIM,
                              torch.device("cpu"), seed=5)  # fmt: skip
    agent.device = torch.device("cuda")  # the class refuses a CPU agent; its tensors stay on the CPU
    graphs = GraphedSteps(agent, buffer, model)
    agent.device = torch.device("cpu")
    graphs.device = torch.device("cpu")
    obs, action = np.zeros(OBS_DIM, np.float32), np.zeros(ACTION_DIM, np.float32)
    for step in range(4):
        metrics = graphs.update(lambda: buffer.hybrid_indices(BATCH, 2, 0.5), step, 1 + step // 2)
        assert {"critic_loss", "batch_reward", "actor_loss", "alpha_loss"} <= set(metrics)
        assert graphs.act(obs, sample=step % 2 == 0).shape == (ACTION_DIM,)
        mean, std = graphs.predict_step(obs, action, with_std=step == 3)
        assert mean.shape == (1, 1) and (std is None) == (step != 3)
    keys = set(graphs.cache.graphs)
    assert {key[:2] for key in keys if key[0] == "update"} == {("update", 1), ("update", 2)}
    assert {("act", True), ("act", False), ("reward", False), ("reward", True)} <= keys
    assert fake.captures == len(keys) and fake.replays == 12
    assert all(group["capturable"] is False for optimizer in cuda_graphs.optimizers(agent)
               for group in optimizer.param_groups)  # fmt: skip
    agent.reset_critic()
    graphs.update(lambda: buffer.uniform_indices(BATCH), 4, 1)
    assert fake.captures == len(keys) + 1  # the new critic: captured again


class EagerStandIn:
    """GraphedSteps' interface served by the eager code, for a CPU: a run wired through it must write the logs of
    a plain eager run, which checks the loop's side of the graphed path (which draws feed which update, which
    phases and methods go through it, the evaluation's actions) wherever the tests run. A test double only."""

    def __init__(self, workspace: train_QPA.Workspace) -> None:
        self.workspace, self.calls = workspace, {"update": 0, "act": 0, "predict_step": 0}

    def sac_update(self, hybrid: bool, step: int, gradient_update: int = 1) -> SacUpdate:
        self.calls["update"] += 1
        workspace = self.workspace
        metrics = workspace.agent.update(lambda: workspace.replay_buffer.gather(workspace.draw(hybrid)), step,
                                         gradient_update)  # fmt: skip
        return SacUpdate(metrics, lambda: None)

    def act(self, obs: np.ndarray, sample: bool = False) -> np.ndarray:
        self.calls["act"] += 1
        return self.workspace.agent.act(obs, sample)

    def predict_step(self, obs: np.ndarray, action: np.ndarray, with_std: bool):
        self.calls["predict_step"] += 1
        return self.workspace.reward_model.predict_step(obs, action, with_std)


STAND_IN_TINY = [
    "env=walker_walk", "device=cpu", "num_threads=1", "num_train_steps=1400", "num_seed_steps=300",
    "num_unsup_steps=800", "num_interact=100", "reward_batch=10", "segment=20", "reward_update=10",
    "eval_frequency=1000", "agent.params.batch_size=32", *SMALL_NETWORKS,
]  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize(
    "method",
    [
        ["method=qpa", "max_feedback=20"],
        ["method=policer", "max_feedback=40", "policer_q_threshold=-1000"],  # resets, replay ratios 2 and 3
        ["method=sac_true"],
    ],
    ids=lambda overrides: overrides[0],
)
def test_the_loop_through_the_graphed_interface_is_the_eager_loop(tmp_path: Path, method: list[str]) -> None:
    cfg = load_config(*STAND_IN_TINY, *method)
    logs = {}
    for name in ("eager", "stand_in"):
        workspace = train_QPA.Workspace(cfg, tmp_path / name)
        assert isinstance(workspace.steps, EagerSteps)
        if name == "stand_in":
            workspace.steps = stand_in = EagerStandIn(workspace)
        workspace.run()
        logs[name] = read_logs(tmp_path / name)
    for log, frame in logs["eager"].items():
        pd.testing.assert_frame_equal(logs["stand_in"][log], frame, check_exact=True, obj=log)
    learned = cfg.reward_source == "learned"
    updates = 1400 - (1100 if learned else 300) - learned
    assert stand_in.calls["update"] == updates
    assert stand_in.calls["predict_step"] == (1400 if learned else 0)
    assert (
        stand_in.calls["act"] == 1400 - 300 + 3 * 1000
    )  # training steps after the seed phase; evaluations at 0, 1000, 1400


# ---------------------------------------------------------------------------------------------------- CUDA only
@requires_cuda
def test_graphed_update_action_and_reward_equal_the_eager_code_call_for_call_on_the_gpu() -> None:
    """Two identical agents, buffers and reward models on the GPU, one graphed, one eager, the device's random
    stream set alike before each call: every result, weight, optimiser state and the stream after it are equal,
    across both target-critic parities, two updates per step, a critic reset (re-capture) and a loaded optimiser."""
    device = torch.device("cuda")
    graphed_agent, eager_agent = small_agent(device, seed=2), small_agent(device, seed=2)
    graphed_buffer, eager_buffer = filled_buffer(device, seed=3), filled_buffer(device, seed=3)
    graphed_model = make_reward_model_for(device)
    eager_model = make_reward_model_for(device)
    graphs = GraphedSteps(graphed_agent, graphed_buffer, graphed_model)
    obs_rng = np.random.default_rng(0)

    def alike(graphed_call, eager_call):
        before = torch.cuda.get_rng_state(device)
        graphed_result = graphed_call()
        after = torch.cuda.get_rng_state(device)
        torch.cuda.set_rng_state(before, device)
        eager_result = eager_call()
        assert torch.equal(torch.cuda.get_rng_state(device), after), "the random stream moved differently"
        return graphed_result, eager_result

    for step in range(8):
        gradient_update = 2 if step in (3, 4) else 1
        if step == 5:  # the first round's critic restart: the update graphs are captured again
            for agent in (graphed_agent, eager_agent):
                torch.manual_seed(11)
                agent.reset_critic()
        if step == 6:  # a resume loads the optimisers' state: new tensors, so a new capture
            for agent in (graphed_agent, eager_agent):
                agent.load_state_dict(agent.state_dict())
        obs = obs_rng.standard_normal(OBS_DIM, dtype=np.float32)
        for sample in (True, False):
            mine, theirs = alike(partial(graphs.act, obs, sample), partial(eager_agent.act, obs, sample))
            np.testing.assert_array_equal(mine, theirs)
        action = obs_rng.uniform(-1, 1, ACTION_DIM).astype(np.float32)
        for with_std in (False, True):
            mine, theirs = alike(partial(graphs.predict_step, obs, action, with_std),
                                 partial(eager_model.predict_step, obs, action, with_std))  # fmt: skip
            assert_same([t for t in mine if t is not None], [t for t in theirs if t is not None])
        draw = partial(graphed_buffer.hybrid_indices, BATCH, 2, 0.5)
        sample = partial(eager_buffer.sample_hybrid, BATCH, 2, 0.5)
        mine, theirs = alike(partial(graphs.update, draw, step, gradient_update),
                             partial(eager_agent.update, sample, step, gradient_update))  # fmt: skip
        assert mine.keys() == theirs.keys()
        assert_same(list(mine.values()), list(theirs.values()))
        assert_same(agent_tensors(graphed_agent), agent_tensors(eager_agent))
        for optimizer in cuda_graphs.optimizers(graphed_agent):
            assert all(group["capturable"] is False for group in optimizer.param_groups)
    assert len(graphs.cache.graphs) >= 6  # act x2, reward x2, and update graphs of this parameter set


def make_reward_model_for(device: torch.device):
    cfg = load_config("reward_hidden_dim=16", "ensemble_size=3")
    return make_reward_model(cfg, OBS_DIM + ACTION_DIM, device, seed=5)


# Tiny runs on the GPU: the first queries at step 1100 (TINY's schedule), graphed SAC updates from step 1101.
GPU_TINY = [
    "env=walker_walk", "device=cuda", "strict_device=true", "num_threads=1", "num_seed_steps=300",
    "num_unsup_steps=800", "num_interact=300", "reward_batch=10", "segment=20", "reward_update=50",
    "eval_frequency=1000", "agent.params.batch_size=32", "replay_buffer_capacity=3000", *SMALL_NETWORKS,
]  # fmt: skip
GPU_RUNS = {
    # name: overrides; every name is run with cuda_graphs=true and cuda_graphs=false
    "qpa": ["method=qpa", "max_feedback=20", "num_train_steps=3000"],
    # a reset of the critic at every round after the first (threshold below any Q) and replay ratios 2 and 3
    "policer": ["method=policer", "max_feedback=40", "num_train_steps=2000", "policer_q_threshold=-1000"],
    "sac_true": ["method=sac_true", "max_feedback=20", "num_train_steps=2000"],
    "rune": ["method=rune", "max_feedback=20", "num_train_steps=2000"],  # a batch transform: all eager
}


def train_command(run_dir: Path, *overrides: str) -> list[str]:
    return [sys.executable, "train_QPA.py", *GPU_TINY, *overrides, f"hydra.run.dir={run_dir}"]


def run(command: list[str]) -> subprocess.CompletedProcess:
    result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


@pytest.fixture(scope="module")
def gpu_runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every run of GPU_RUNS twice, and the graphed QPA run stopped at 2000 steps (to be resumed), side by side:
    each process is deterministic whatever shares the GPU."""
    root = tmp_path_factory.mktemp("gpu")
    commands = [train_command(root / f"{name}_{graphs}", *overrides, f"cuda_graphs={graphs}")
                for name, overrides in GPU_RUNS.items() for graphs in ("true", "false")]  # fmt: skip
    stopped = [item.replace("num_train_steps=3000", "num_train_steps=2000") for item in GPU_RUNS["qpa"]]
    commands.append(train_command(root / "qpa_resumed", *stopped, "cuda_graphs=true"))
    with concurrent.futures.ThreadPoolExecutor(len(commands)) as pool:
        list(pool.map(run, commands))
    return root


def read_logs(run_dir: Path) -> dict[str, pd.DataFrame]:
    return {name: pd.read_csv(run_dir / name, float_precision="round_trip").drop(columns=TIME_COLUMNS,
                                                                                  errors="ignore")
            for name in ("eval.csv", "train.csv")}  # fmt: skip


def assert_same_logs(first: Path, second: Path) -> None:
    for name, frame in read_logs(first).items():
        pd.testing.assert_frame_equal(frame, read_logs(second)[name], check_exact=True, obj=f"{second.name}/{name}")


@requires_cuda
@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(GPU_RUNS))
def test_a_graphed_run_writes_the_logs_of_the_eager_run_on_the_gpu(gpu_runs: Path, name: str) -> None:
    assert_same_logs(gpu_runs / f"{name}_false", gpu_runs / f"{name}_true")
    assert len(read_logs(gpu_runs / f"{name}_true")["train.csv"]) >= 2


@requires_cuda
@pytest.mark.slow
def test_a_resumed_graphed_run_continues_exactly_on_the_gpu(gpu_runs: Path) -> None:
    """Resumed at step 2000, after its update graphs were first captured at step 1101: the resumed process
    captures them again and ends where the uninterrupted graphed run ends."""
    result = run(train_command(gpu_runs / "qpa_resumed", *GPU_RUNS["qpa"], "cuda_graphs=true"))
    assert "resumed from" in result.stderr
    assert_same_logs(gpu_runs / "qpa_true", gpu_runs / "qpa_resumed")
