"""Replay buffer: ring-buffer sampling, recent-episode window across the wrap, relabel, resume.

Every transition carries its global step index t in obs[0], so a sampled row says exactly
which transition it came from: action[0] = t, next_obs[0] = t + 1, reward = 10 t.
"""

import io

import numpy as np
import pytest
import torch

from replay_buffer import ReplayBuffer

OBS_DIM, ACT_DIM = 3, 2
CAPACITY, EPISODE_LEN = 250, 40  # episode [240, 280) straddles the wrap (step 250 lands in slot 0)


def make_buffer(capacity=CAPACITY, seed=0, max_episode_len=EPISODE_LEN) -> ReplayBuffer:
    buf = ReplayBuffer((OBS_DIM,), (ACT_DIM,), capacity, "cpu", max_episode_len=max_episode_len, seed=seed)
    # Sentinel in every slot, so a row read from an unwritten slot is recognisable.
    for name in ("obs", "action", "reward", "next_obs", "not_done", "not_done_no_max"):
        getattr(buf, name).fill_(-1.0)
    return buf


def fill(buf: ReplayBuffer, first_step: int, last_step: int, episode_len=EPISODE_LEN, terminal_steps=()) -> None:
    """Add steps first_step..last_step-1; every episode_len-th step is a time limit, terminal_steps end for real."""
    for t in range(first_step, last_step):
        time_limit = (t + 1) % episode_len == 0
        terminal = t in terminal_steps
        obs = np.full(OBS_DIM, t, dtype=np.float32)
        action = np.full(ACT_DIM, t, dtype=np.float32)
        next_obs = np.full(OBS_DIM, t + 1, dtype=np.float32)
        buf.add(obs, action, 10.0 * t, next_obs, done=time_limit or terminal, done_no_max=terminal)


def step_ids(batch) -> np.ndarray:
    return batch[0][:, 0].numpy().astype(np.int64)


def reachable(sample_fn, draws=40) -> set[int]:
    """Every step index seen over `draws` batches of 1024 (enough to hit each of <= 250 rows w.p. ~1)."""
    seen: set[int] = set()
    for _ in range(draws):
        batch = sample_fn(1024)
        ids = step_ids(batch)
        # The rows of one transition stay together through the gather.
        np.testing.assert_array_equal(batch[1][:, 0].numpy(), ids)
        np.testing.assert_array_equal(batch[3][:, 0].numpy(), ids + 1)
        np.testing.assert_array_equal(batch[2][:, 0].numpy(), 10.0 * ids)
        seen.update(ids.tolist())
    return seen


def test_shapes_and_len():
    buf = make_buffer()
    fill(buf, 0, 7)
    assert len(buf) == 7
    obs, action, reward, next_obs, not_done, not_done_no_max, reward_std = buf.sample(16)
    assert reward_std is None  # a column only RUNE's buffers keep
    assert obs.shape == (16, OBS_DIM) and next_obs.shape == (16, OBS_DIM)
    assert action.shape == (16, ACT_DIM)
    assert reward.shape == not_done.shape == not_done_no_max.shape == (16, 1)
    assert all(t.dtype == torch.float32 for t in (obs, action, reward, next_obs, not_done, not_done_no_max))
    fill(buf, 7, 400)
    assert len(buf) == CAPACITY and buf.full


def test_accepts_float_capacity():
    buf = ReplayBuffer(OBS_DIM, ACT_DIM, 1e6, "cpu")
    assert buf.capacity == 1_000_000 and buf.obs.shape == (1_000_000, OBS_DIM)


def test_before_full_sampling_never_touches_unwritten_slots():
    buf = make_buffer()
    fill(buf, 0, 100)  # episodes [0,40), [40,80) and the current one [80,100)
    assert reachable(buf.sample) == set(range(100))
    assert reachable(lambda b: buf.sample_onpolicy(b, 10)) == set(range(100))
    assert reachable(lambda b: buf.sample_onpolicy(b, 1)) == set(range(80, 100))
    assert reachable(lambda b: buf.sample_onpolicy(b, 2)) == set(range(40, 100))


def test_uniform_after_wrap_covers_exactly_the_stored_transitions():
    buf = make_buffer()
    fill(buf, 0, 330)
    assert reachable(buf.sample) == set(range(80, 330))


@pytest.mark.parametrize(
    ("num_steps", "num_episodes", "expected"),
    [
        # Current episode [320,330) is partial and counts as the most recent one; [240,280) straddles the wrap.
        (330, 1, range(320, 330)),
        (330, 3, range(240, 330)),
        # Current episode empty: the last finished episodes, one of them across the wrap.
        (320, 1, range(280, 320)),
        (320, 2, range(240, 320)),
        # Oldest stored transition is step 90: episode [80,120) counts with its surviving 90..119 only.
        (340, 7, range(90, 340)),
        (340, 100, range(90, 340)),
        (340, 6, range(120, 340)),
    ],
)
def test_onpolicy_covers_exactly_the_recent_episodes_across_the_wrap(num_steps, num_episodes, expected):
    buf = make_buffer()
    fill(buf, 0, num_steps)
    # The window is exactly the expected transitions, each once (no slot counted twice around the ring).
    assert buf.recent_window(num_episodes) == (expected.start % CAPACITY, len(expected))
    assert reachable(lambda b: buf.sample_onpolicy(b, num_episodes)) == set(expected)


def test_episode_bookkeeping_forgets_overwritten_episodes():
    buf = make_buffer()
    fill(buf, 0, 340)  # oldest stored step 90 belongs to episode [80,120)
    assert list(buf.episode_starts) == list(range(80, 321, EPISODE_LEN))
    fill(buf, 340, 100_000)
    assert len(buf.episode_starts) <= CAPACITY // EPISODE_LEN + 2


def test_onpolicy_follows_real_episode_ends_not_fixed_lengths():
    buf = make_buffer(max_episode_len=1000)
    # A terminal at step 104 splits [80,120) into episodes [80,105) and [105,120); current one is [120,130).
    fill(buf, 0, 130, terminal_steps={104})
    assert reachable(lambda b: buf.sample_onpolicy(b, 1)) == set(range(120, 130))
    assert reachable(lambda b: buf.sample_onpolicy(b, 2)) == set(range(105, 130))
    assert reachable(lambda b: buf.sample_onpolicy(b, 3)) == set(range(80, 130))


def test_episode_without_done_is_chunked_by_max_episode_len():
    buf = make_buffer(max_episode_len=30)
    fill(buf, 0, 100, episode_len=10**9)  # never done
    assert reachable(lambda b: buf.sample_onpolicy(b, 1)) == set(range(90, 100))
    assert reachable(lambda b: buf.sample_onpolicy(b, 2)) == set(range(60, 100))


def test_done_flags_follow_time_limit_and_terminal_semantics():
    buf = make_buffer()
    fill(buf, 0, 200, terminal_steps={57})
    steps = buf.obs[:200, 0].numpy().astype(np.int64)
    not_done = buf.not_done[:200, 0].numpy()
    not_done_no_max = buf.not_done_no_max[:200, 0].numpy()
    time_limit = (steps + 1) % EPISODE_LEN == 0
    # Time limit: episode ends but the critic still bootstraps.
    assert np.all(not_done[time_limit] == 0) and np.all(not_done_no_max[time_limit] == 1)
    # True terminal: no bootstrap.
    assert not_done[57] == 0 and not_done_no_max[57] == 0
    ordinary = ~time_limit & (steps != 57)
    assert np.all(not_done[ordinary] == 1) and np.all(not_done_no_max[ordinary] == 1)


def test_reward_types_are_stored():
    buf = make_buffer()
    obs, action = np.zeros(OBS_DIM, np.float32), np.zeros(ACT_DIM, np.float32)
    rewards = [1.5, np.float32(-2.25), np.float64(3.0), torch.tensor([4.75]), torch.tensor(-0.5), torch.tensor([[7.0]])]
    for r in rewards:
        buf.add(obs, action, r, obs, False, False)
    np.testing.assert_array_equal(buf.reward[: len(rewards), 0].numpy(), [1.5, -2.25, 3.0, 4.75, -0.5, 7.0])
    with pytest.raises(ValueError, match="exactly one element"):
        buf.add(obs, action, torch.ones(2), obs, False, False)


def test_float64_arrays_are_stored_as_float32():
    buf = make_buffer()
    obs = np.array([0.1, 0.2, 0.3])  # float64, as some environments return
    buf.add(obs, np.array([0.5, -0.5]), 1.0, obs * 2, False, False)
    assert buf.obs.dtype == torch.float32
    np.testing.assert_array_equal(buf.obs[0].numpy(), obs.astype(np.float32))
    np.testing.assert_array_equal(buf.next_obs[0].numpy(), (obs * 2).astype(np.float32))
    np.testing.assert_array_equal(buf.action[0].numpy(), [0.5, -0.5])


class CountingPredictor:
    """Reward = obs[0] * 3 - action[1]; remembers every row it was asked about."""

    def __init__(self) -> None:
        self.calls = 0
        self.rows: list[torch.Tensor] = []

    def predict_reward(self, x: torch.Tensor) -> torch.Tensor:
        assert torch.is_inference_mode_enabled()
        self.calls += 1
        self.rows.append(x[:, 0].clone())
        return x[:, :1] * 3.0 - x[:, OBS_DIM + 1 : OBS_DIM + 2]


@pytest.mark.parametrize(("num_steps", "expected_steps"), [(100, range(100)), (330, range(80, 330))])
def test_relabel_covers_every_stored_slot_exactly_once(num_steps, expected_steps):
    buf = make_buffer()
    fill(buf, 0, num_steps)
    predictor = CountingPredictor()
    buf.relabel_with_predictor(predictor, batch_size=64)
    assert predictor.calls == -(-len(expected_steps) // 64)
    seen = torch.cat(predictor.rows).numpy().astype(np.int64)
    assert sorted(seen.tolist()) == list(expected_steps)  # each stored slot once, no sentinel rows
    stored = buf.reward[: len(buf), 0].numpy()
    steps = buf.obs[: len(buf), 0].numpy()
    np.testing.assert_array_equal(stored, steps * 3.0 - steps)
    if num_steps < CAPACITY:
        assert np.all(buf.reward[num_steps:, 0].numpy() == -1.0)  # unwritten slots untouched


def test_relabel_rejects_wrong_prediction_shape():
    buf = make_buffer()
    fill(buf, 0, 10)

    class FlatPredictor:
        def predict_reward(self, x):
            return x[:, 0]

    with pytest.raises(ValueError, match="predict_reward returned shape"):
        buf.relabel_with_predictor(FlatPredictor())


def test_sample_hybrid_split():
    buf = make_buffer()
    fill(buf, 0, 330)  # most recent episode: steps 320..329
    recent = set(range(320, 330))
    for ratio, batch_size, num_recent in [(0.5, 256, 128), (0.37, 100, 37), (0.0, 64, 0), (1.0, 64, 64)]:
        outside_recent = 0
        for _ in range(5):
            batch = buf.sample_hybrid(batch_size, 1, ratio)
            assert all(t.shape[0] == batch_size for t in batch if t is not None)
            ids = step_ids(batch)
            assert set(ids[:num_recent].tolist()) <= recent
            assert set(ids.tolist()) <= set(range(80, 330))
            outside_recent += int(np.sum(~np.isin(ids[num_recent:], list(recent))))
        # The uniform part draws from the whole buffer (10 of 250 transitions are recent).
        assert (outside_recent > 0) == (num_recent < batch_size)
    with pytest.raises(ValueError, match="recent_ratio"):
        buf.sample_hybrid(8, 1, 1.5)


def test_sample_state_ent_full_obs_is_a_view_of_stored_observations():
    buf = make_buffer()
    fill(buf, 0, 120)
    batch, full_obs = buf.sample_state_ent(32)
    assert batch.obs.shape == (32, OBS_DIM) and batch.reward.shape == (32, 1)
    assert full_obs.shape == (120, OBS_DIM)
    assert full_obs.data_ptr() == buf.obs.data_ptr()
    np.testing.assert_array_equal(full_obs[:, 0].numpy(), np.arange(120))
    fill(buf, 120, 400)
    assert buf.sample_state_ent(8)[1].shape == (CAPACITY, OBS_DIM)


def test_sampling_is_deterministic_given_seed():
    a, b, c = make_buffer(seed=3), make_buffer(seed=3), make_buffer(seed=4)
    for buf in (a, b, c):
        fill(buf, 0, 300)
    np.testing.assert_array_equal(step_ids(a.sample(256)), step_ids(b.sample(256)))
    assert not np.array_equal(step_ids(a.sample(256)), step_ids(c.sample(256)))


def test_state_dict_round_trip_resumes_identically():
    buf = make_buffer(seed=7)
    fill(buf, 0, 330)
    buf.sample(50)  # advance the RNG so the restored state is not just the seed's
    state = buf.state_dict()
    assert state["obs"].shape == (CAPACITY, OBS_DIM)
    file = io.BytesIO()
    torch.save(state, file)
    file.seek(0)
    restored = make_buffer(seed=99)
    restored.load_state_dict(torch.load(file, weights_only=True))

    def trace(b: ReplayBuffer) -> list[np.ndarray]:
        return [
            step_ids(b.sample(64)),
            step_ids(b.sample_onpolicy(64, 2)),
            step_ids(b.sample_hybrid(64, 3, 0.5)),
        ]

    for original, copy in zip(trace(buf), trace(restored)):
        np.testing.assert_array_equal(original, copy)
    # Continue both past an episode end and another wrap: the bookkeeping was restored too.
    fill(buf, 330, 610)
    fill(restored, 330, 610)
    for b in (buf, restored):
        assert reachable(lambda size, b=b: b.sample_onpolicy(size, 2)) == set(range(560, 610))
    for original, copy in zip(trace(buf), trace(restored)):
        np.testing.assert_array_equal(original, copy)
    for name in ("obs", "action", "reward", "next_obs", "not_done", "not_done_no_max"):
        assert torch.equal(getattr(buf, name), getattr(restored, name))


def test_state_dict_partial_buffer_saves_filled_part_only():
    buf = make_buffer()
    fill(buf, 0, 90)
    state = buf.state_dict()
    assert state["obs"].shape == (90, OBS_DIM)
    restored = make_buffer()
    restored.load_state_dict(state)
    assert len(restored) == 90
    assert reachable(lambda b: restored.sample_onpolicy(b, 1)) == set(range(80, 90))


def test_load_rejects_other_layout():
    state = make_buffer().state_dict()
    with pytest.raises(ValueError, match="obs_shape"):
        ReplayBuffer((OBS_DIM + 1,), (ACT_DIM,), CAPACITY, "cpu", max_episode_len=EPISODE_LEN).load_state_dict(state)


def test_bad_arguments_raise_value_error():
    with pytest.raises(ValueError, match="capacity"):
        ReplayBuffer(OBS_DIM, ACT_DIM, 0, "cpu")
    with pytest.raises(ValueError, match="capacity"):
        ReplayBuffer(OBS_DIM, ACT_DIM, 10.5, "cpu")
    buf = make_buffer()
    with pytest.raises(ValueError, match="empty"):
        buf.sample(4)
    fill(buf, 0, 5)
    with pytest.raises(ValueError, match="num_episodes"):
        buf.sample_onpolicy(4, 0)
    with pytest.raises(ValueError, match="batch_size"):
        buf.sample(0)


def test_load_into_a_larger_buffer_when_the_saved_one_never_wrapped():
    small = ReplayBuffer((3,), (2,), capacity=100, device="cpu", max_episode_len=40, seed=3)
    for step in range(90):
        small.add(
            np.full(3, step, np.float32),
            np.zeros(2, np.float32),
            float(step),
            np.zeros(3, np.float32),
            float(step % 40 == 39),
            0.0,
        )
    large = ReplayBuffer((3,), (2,), capacity=400, device="cpu", max_episode_len=40, seed=0)
    large.load_state_dict(small.state_dict())
    assert len(large) == 90
    assert torch.equal(large.obs[:90], small.obs[:90])
    obs = large.sample_onpolicy(512, num_episodes=1)[0]
    assert set(obs[:, 0].tolist()) == set(range(80, 90))

    small.add(np.zeros(3, np.float32), np.zeros(2, np.float32), 0.0, np.zeros(3, np.float32), 0.0, 0.0)
    for _ in range(20):
        small.add(np.zeros(3, np.float32), np.zeros(2, np.float32), 0.0, np.zeros(3, np.float32), 0.0, 0.0)
    with pytest.raises(ValueError, match="capacity"):
        large.load_state_dict(small.state_dict())
