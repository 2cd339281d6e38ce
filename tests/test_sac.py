"""SAC agent: learning on a true reward, k-NN entropy, running statistics, actor maths, resets, resume, hybrid replay.

Replay buffers here are the real ReplayBuffer. Where a test must know which transition a sampled row came from,
every transition carries its global step index t in obs[0] and its reward is t.
"""

import io

import numpy as np
import pytest
import torch
from conftest import load_config

import train_QPA
from agent.actor import DiagGaussianActor, SquashedNormal
from agent.sac import SACAgent
from agent.state_entropy import RunningMeanStd, knn_distance
from bench.bench_sac import make_agent, train_true_reward
from config_schema import ActorParams, ConfigError, SACParams
from replay_buffer import ReplayBuffer

OBS_DIM, ACT_DIM = 4, 2


def indexed_buffer(num_steps: int, episode_len: int, buffer_cls: type[ReplayBuffer] = ReplayBuffer, seed: int = 0):
    """A buffer of `num_steps` transitions in `episode_len`-step episodes; obs[0] = reward = step index."""
    buffer = buffer_cls(OBS_DIM, ACT_DIM, num_steps, "cpu", max_episode_len=episode_len, seed=seed)
    rng = np.random.default_rng(seed)
    for t in range(num_steps):
        obs = np.concatenate([[t], rng.standard_normal(OBS_DIM - 1)]).astype(np.float32)
        next_obs = np.concatenate([[t + 1], rng.standard_normal(OBS_DIM - 1)]).astype(np.float32)
        action = rng.uniform(-1, 1, ACT_DIM).astype(np.float32)
        time_limit = (t + 1) % episode_len == 0
        buffer.add(obs, action, float(t), next_obs, float(time_limit), 0.0)
    return buffer


def small_agent(batch_size: int = 64, **overrides) -> SACAgent:
    return make_agent(OBS_DIM, ACT_DIM, hidden_dim=32, hidden_depth=2, batch_size=batch_size, device="cpu", **overrides)


def uniform(buffer: ReplayBuffer, agent: SACAgent):
    """The sampler of SAC on uniform replay batches."""
    return lambda: buffer.sample(agent.batch_size)


def parameters(module: torch.nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in module.parameters()]


def same(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


# ---------------------------------------------------------------------------------------------------- learning
@pytest.mark.slow
def test_sac_learns_cartpole_swingup_from_true_reward():
    # Measured: a uniform random policy scores ~15 and doing nothing ~0; SAC passes 150 within 4-6k steps
    # on seeds 0-2, so 100 leaves margin on both sides.
    trained, random_return = train_true_reward("cartpole_swingup", num_steps=6000, seed=0)
    assert random_return < 50
    assert trained > 100, f"SAC reached only {trained:.1f} (random policy {random_return:.1f})"


# ---------------------------------------------------------------------------------------------------- k-NN entropy
@pytest.mark.parametrize("chunk_size", [None, 1, 7, 64, 1000, 5000])
def test_knn_distance_matches_brute_force(chunk_size):
    rng = np.random.default_rng(0)
    # A large offset and mixed scales: the expanded |q|² + |p|² - 2 q·p form alone would be off by ~1e-2 here.
    points = (rng.standard_normal((1000, 5)) * rng.uniform(0.1, 10.0, 5) + 20.0).astype(np.float32)
    points[900:] = points[:100]  # exact ties: repeated states are common in a replay buffer
    queries = np.concatenate([points[rng.choice(1000, 40, replace=False)], rng.standard_normal((10, 5))])
    queries = queries.astype(np.float32)
    exact = np.sort(np.linalg.norm(queries[:, None].astype(np.float64) - points[None], axis=-1), axis=1)
    for k in (1, 2, 6):
        got = knn_distance(torch.from_numpy(queries), torch.from_numpy(points), k, chunk_size=chunk_size)
        assert got.shape == (50, 1)
        np.testing.assert_allclose(got[:, 0].numpy(), exact[:, k - 1], rtol=1e-5, atol=1e-6)


def test_knn_distance_rejects_k_beyond_the_number_of_points():
    with pytest.raises(ValueError, match="k=4"):
        knn_distance(torch.zeros(2, 3), torch.zeros(3, 3), 4)


def test_running_mean_std_matches_numpy_on_the_concatenated_stream():
    rng = np.random.default_rng(0)
    shapes = [(3.0, 1.0, 5), (-2.0, 4.0, 300), (10.0, 0.5, 37), (0.0, 2.0, 1)]
    batches = [rng.normal(loc, scale, size=(n, 1)) for loc, scale, n in shapes]
    stats = RunningMeanStd(shape=(1,), epsilon=1e-12)
    seen = []
    for batch in batches:
        stats.update(torch.tensor(batch, dtype=torch.float32))
        seen.append(batch)
        data = np.concatenate(seen)
        np.testing.assert_allclose(stats.mean.numpy(), data.mean(0), rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(stats.var.numpy(), data.var(0), rtol=1e-4)
        np.testing.assert_allclose(stats.inverse_std.numpy(), 1.0 / data.std(0), rtol=1e-4)
    assert stats.count == pytest.approx(sum(len(b) for b in batches))

    # The original release's update (mean + delta + n_b / n, unbiased batch variances) fails this comparison.
    mean, var, count = 0.0, 1.0, 1e-12
    for batch in batches[:3]:  # the 1-row batch would give it an undefined (n - 1) variance
        n, delta = len(batch), batch.mean() - mean
        total = count + n
        var = (var * count + batch.var(ddof=1) * n + delta**2 * count * n / total) / total
        mean, count = mean + delta + n / total, total
    assert not np.isclose(mean, np.concatenate(batches[:3]).mean(), rtol=1e-2)
    assert not np.isclose(var, np.concatenate(batches[:3]).var(), rtol=1e-2)


def test_state_entropy_update_uses_the_kth_neighbour_of_the_batch_observations():
    class RecordingBuffer(ReplayBuffer):
        def sample_state_ent(self, batch_size):
            self.last = super().sample_state_ent(batch_size)
            return self.last

    buffer = indexed_buffer(500, 50, RecordingBuffer)
    agent = small_agent()
    for step in range(3):
        metrics = agent.update_state_ent(buffer, step, K=5)
    obs, full_obs = buffer.last[0].obs.numpy(), buffer.last[1].numpy()
    distances = np.sort(np.linalg.norm(obs[:, None].astype(np.float64) - full_obs[None], axis=-1), axis=1)
    kth = distances[:, 5]  # the 5th neighbour: index 0 is the row itself
    assert float(metrics["state_entropy"]) == pytest.approx(kth.mean(), rel=1e-4)
    assert float(metrics["batch_reward"]) == pytest.approx(kth.mean() * float(agent.s_ent_stats.inverse_std), rel=1e-4)
    assert set(metrics) >= {"critic_loss", "actor_loss", "alpha_loss", "alpha", "actor_entropy", "batch_reward"}


# ---------------------------------------------------------------------------------------------------- actor
def test_actor_log_prob_matches_the_change_of_variables_formula():
    torch.manual_seed(0)
    actor = DiagGaussianActor(OBS_DIM, 3, hidden_dim=32, hidden_depth=2, log_std_bounds=(-5.0, 2.0))
    dist = actor(torch.randn(64, OBS_DIM))
    torch.manual_seed(1)
    action, log_prob = dist.rsample_with_log_prob()
    torch.manual_seed(1)
    noise = torch.randn_like(dist.mu).double()
    mu, std = dist.mu.detach().double(), dist.std.detach().double()
    pre_tanh = mu + std * noise
    naive = torch.distributions.Normal(mu, std).log_prob(pre_tanh) - torch.log(1 - torch.tanh(pre_tanh) ** 2)
    torch.testing.assert_close(action.detach().double(), torch.tanh(pre_tanh), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(log_prob.detach().double(), naive.sum(-1, keepdim=True), rtol=1e-4, atol=1e-4)
    assert log_prob.shape == (64, 1)


def test_actor_log_prob_stays_finite_where_tanh_saturates():
    mu = torch.full((4, 2), 30.0, requires_grad=True)
    action, log_prob = SquashedNormal(mu, torch.full_like(mu, -3.0)).rsample_with_log_prob()
    assert torch.all(action == 1.0)
    assert torch.isfinite(log_prob).all()
    log_prob.sum().backward()
    assert torch.isfinite(mu.grad).all()


def test_actor_log_std_stays_within_bounds_and_act_within_action_range():
    torch.manual_seed(0)
    actor = DiagGaussianActor(OBS_DIM, ACT_DIM, hidden_dim=32, hidden_depth=2, log_std_bounds=(-5.0, 2.0))
    extreme_obs = torch.randn(256, OBS_DIM) * 1e4
    log_std = actor(extreme_obs).log_std
    assert log_std.min() >= -5.0 and log_std.max() <= 2.0
    assert log_std.min() < -4.9 and log_std.max() > 1.9  # the bounds are reached, not an artefact of small inputs

    agent = small_agent(action_range=[-0.5, 0.5])
    obs = np.random.default_rng(0).standard_normal((256, OBS_DIM)).astype(np.float32) * 1e3
    for sample in (False, True):
        actions = agent.act(obs, sample=sample)
        assert actions.shape == (256, ACT_DIM) and actions.dtype == np.float32
        assert actions.min() >= -0.5 and actions.max() <= 0.5
        assert np.isclose(np.abs(actions), 0.5).any()  # clipping happened
        single = agent.act(obs[0], sample=sample)
        assert single.shape == (ACT_DIM,)
    deterministic = agent.act(obs[:8] * 1e-3)
    np.testing.assert_array_equal(deterministic, agent.act(obs[:8] * 1e-3))
    with pytest.raises(ValueError, match="obs has shape"):
        agent.act(np.zeros(OBS_DIM + 1, dtype=np.float32))


# ---------------------------------------------------------------------------------------------------- resets
def test_reset_critic_and_reset_actor_touch_only_their_part():
    buffer = indexed_buffer(300, 50)
    agent = small_agent()
    for step in range(5):
        agent.update(uniform(buffer, agent), step)
    actor, critic, target = parameters(agent.actor), parameters(agent.critic), parameters(agent.critic_target)
    log_alpha = agent.log_alpha.detach().clone()
    assert not torch.isclose(log_alpha, torch.tensor(np.log(0.1), dtype=torch.float32))  # the temperature moved

    agent.reset_critic()
    assert not same(parameters(agent.critic), critic) and not same(parameters(agent.critic_target), target)
    assert same(parameters(agent.critic_target), parameters(agent.critic))
    assert same(parameters(agent.actor), actor) and torch.equal(agent.log_alpha.detach(), log_alpha)
    assert not agent.critic_optimizer.state  # a fresh optimiser

    critic = parameters(agent.critic)
    agent.reset_actor()
    assert not same(parameters(agent.actor), actor)
    assert torch.isclose(agent.log_alpha.detach(), torch.tensor(np.log(0.1), dtype=torch.float32))
    assert same(parameters(agent.critic), critic)
    assert not agent.actor_optimizer.state

    for index in range(4):  # the updates after a reset, as the first feedback round runs them
        metrics = agent.update(uniform(buffer, agent), index)
    assert not same(parameters(agent.critic), critic)
    assert set(metrics) == {
        "critic_loss",
        "batch_reward",
        "actor_loss",
        "actor_entropy",
        "alpha_loss",
        "alpha",
        "actor_q",
    }
    assert all(isinstance(v, torch.Tensor) and v.dim() == 0 and not v.requires_grad for v in metrics.values())


def test_actor_and_target_follow_their_update_frequencies():
    buffer = indexed_buffer(300, 50)
    agent = small_agent(actor_update_frequency=2, critic_target_update_frequency=3)
    actor, target = parameters(agent.actor), parameters(agent.critic_target)
    metrics = agent.update(uniform(buffer, agent), step=1)
    assert set(metrics) == {"critic_loss", "batch_reward"}
    assert same(parameters(agent.actor), actor) and same(parameters(agent.critic_target), target)
    metrics = agent.update(uniform(buffer, agent), step=2)
    assert {"actor_loss", "alpha_loss", "alpha", "actor_entropy"} <= set(metrics)
    assert not same(parameters(agent.actor), actor) and same(parameters(agent.critic_target), target)
    agent.update(uniform(buffer, agent), step=3)
    assert not same(parameters(agent.critic_target), target)


# ---------------------------------------------------------------------------------------------------- resume
def test_state_dict_round_trip_gives_identical_updates(tmp_path):
    buffer_a = indexed_buffer(400, 50, seed=3)
    torch.manual_seed(0)
    agent_a = small_agent()
    for step in range(4):
        agent_a.update_state_ent(buffer_a, step)
        agent_a.update(uniform(buffer_a, agent_a), step)

    torch.manual_seed(123)
    agent_b = small_agent()
    checkpoint = io.BytesIO()
    torch.save(agent_a.state_dict(), checkpoint)
    checkpoint.seek(0)
    agent_b.load_state_dict(torch.load(checkpoint, weights_only=False))
    buffer_b = indexed_buffer(400, 50, seed=3)
    buffer_b.load_state_dict(buffer_a.state_dict())

    for step in range(4, 8):
        runs = []
        for agent, buffer in ((agent_a, buffer_a), (agent_b, buffer_b)):
            torch.manual_seed(step)
            runs.append(
                {
                    "ent": agent.update_state_ent(buffer, step),
                    "hybrid": agent.update(lambda b=buffer, a=agent: b.sample_hybrid(a.batch_size, 2, 0.5), step),
                    "uniform": agent.update(uniform(buffer, agent), step),
                }
            )
        for kind in runs[0]:
            for key, value in runs[0][kind].items():
                assert torch.equal(value, runs[1][kind][key]), (kind, key)
    for name in ("actor", "critic", "critic_target"):
        assert same(parameters(getattr(agent_a, name)), parameters(getattr(agent_b, name)))
    assert torch.equal(agent_a.log_alpha, agent_b.log_alpha)
    assert torch.equal(agent_a.s_ent_stats.var, agent_b.s_ent_stats.var)

    agent_a.save(tmp_path, 8)
    assert {p.name for p in tmp_path.iterdir()} == {"actor_8.pt", "critic_8.pt", "critic_target_8.pt"}
    agent_c = small_agent()
    agent_c.load(tmp_path, 8)
    for name in ("actor", "critic", "critic_target"):
        assert same(parameters(getattr(agent_a, name)), parameters(getattr(agent_c, name)))
    obs = np.ones(OBS_DIM, dtype=np.float32)
    np.testing.assert_array_equal(agent_a.act(obs), agent_c.act(obs))
    with pytest.raises(ValueError, match="does not exist"):
        agent_c.load(tmp_path, 9)


# ---------------------------------------------------------------------------------------------------- hybrid replay
def test_onpolicy_update_draws_her_ratio_of_each_batch_from_recent_episodes():
    class RecordingBuffer(ReplayBuffer):
        def sample_hybrid(self, batch_size, num_episodes, recent_ratio):
            self.calls.append((batch_size, num_episodes, recent_ratio))
            self.batches.append(super().sample_hybrid(batch_size, num_episodes, recent_ratio))
            return self.batches[-1]

    episode_len, num_episodes, recent = 20, 50, 5
    buffer = indexed_buffer(num_episodes * episode_len, episode_len, RecordingBuffer)
    buffer.calls, buffer.batches = [], []
    agent = small_agent(batch_size=256)
    first_recent_step = (num_episodes - recent) * episode_len

    for her_ratio in (0.5, 0.25):
        buffer.batches.clear()
        for step in range(4):
            hybrid = lambda r=her_ratio: buffer.sample_hybrid(agent.batch_size, recent, r)  # noqa: E731
            metrics = agent.update(hybrid, step, gradient_update=2)
        assert buffer.calls[-1] == (256, recent, her_ratio) and len(buffer.batches) == 8
        # The batch the critic saw is the one drawn: its mean reward is the reported batch_reward.
        assert float(metrics["batch_reward"]) == pytest.approx(float(buffer.batches[-1][2].mean()))
        steps = torch.cat([batch[0][:, 0] for batch in buffer.batches]).numpy()
        is_recent = steps >= first_recent_step
        # her_ratio of the rows come from the recent episodes, and a uniform draw over the rest adds its share.
        expected = her_ratio + (1 - her_ratio) * recent / num_episodes
        assert abs(is_recent.mean() - expected) < 0.04, (is_recent.mean(), expected)
        num_recent = round(her_ratio * 256)
        assert all((batch[0][:num_recent, 0] >= first_recent_step).all() for batch in buffer.batches)


def test_bad_arguments_raise_one_line_value_errors():
    with pytest.raises(ValueError, match="action_range"):
        small_agent(action_range=[1.0, -1.0])
    with pytest.raises(ConfigError, match="batch_size"):  # the schema checks the agent's config keys
        SACParams(batch_size=0)
    with pytest.raises(ConfigError, match="log_std_bounds"):
        ActorParams(log_std_bounds=(2.0, -5.0))
    with pytest.raises(ValueError, match="gradient_update"):
        agent = small_agent()
        agent.update(uniform(indexed_buffer(10, 5), agent), 0, gradient_update=0)


def test_config_files_build_an_agent():
    for name, batch_size in (("sac", 1024), ("sac_metaworld", 512)):
        cfg = load_config(f"agent={name}", "device=cpu")
        agent = train_QPA.make_agent(cfg, OBS_DIM, ACT_DIM, (-1.0, 1.0), torch.device("cpu"))
        assert agent.batch_size == cfg.agent.params.batch_size == batch_size
        assert agent.target_entropy == -ACT_DIM
        assert torch.isclose(agent.alpha, torch.tensor(0.1))
