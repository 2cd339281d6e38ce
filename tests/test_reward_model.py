"""Reward learning: learning from preferences, the batched ensemble, cropping, the stores, query selection, resume.

The parts are built and wired as a run wires them (tests/conftest.py, `PreferenceLearner`)."""

import io
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import PreferenceLearner, make_reward_model

import queries
import utils
from config_schema import ConfigError
from episodes import EpisodeStore
from preferences import crop_windows, qpa_crop_lengths, window_sums

DS, DA = 3, 1
SEGMENT = 20
# The learning tests run the same code with a narrower net and a larger step so they fit the suite budget;
# the default 3 x 256 network is checked against per-member nn.Linear stacks below.
FAST_LEARNER = {"reward_hidden_dim": 128, "reward_lr": 1e-3}


def smooth_episode(rng: np.random.Generator, length: int) -> np.ndarray:
    """(s, a) rows with a per-episode offset plus a slow AR(1) drift: like a policy's visitation, segment returns
    differ mostly through persistent behaviour, so a long crop keeps the order of two segments."""
    drift = np.zeros((length, DS + DA))
    for t in range(1, length):
        drift[t] = 0.95 * drift[t - 1] + 0.2 * rng.normal(size=DS + DA)
    return (rng.normal(size=DS + DA) + drift).astype(np.float32)


def feed_episodes(model: PreferenceLearner, episodes: list[np.ndarray], weights: np.ndarray) -> None:
    for sa in episodes:
        for t, row in enumerate(sa):
            model.add_data(row[:DS], row[DS:], float(row @ weights), t == len(sa) - 1)


def held_out_accuracy(model: PreferenceLearner, weights: np.ndarray, rng: np.random.Generator, num: int = 400) -> float:
    """Agreement with the true preference on fresh segment pairs, leaving out the 10% closest to a tie (no
    finite set of labels pins those down)."""
    episodes = [smooth_episode(rng, 100) for _ in range(20)]
    segments = []
    for _ in range(2 * num):
        episode = episodes[rng.integers(len(episodes))]
        start = rng.integers(0, len(episode) - SEGMENT + 1)
        segments.append(episode[start : start + SEGMENT])
    segments = np.stack(segments).reshape(num, 2, SEGMENT, DS + DA)
    true_returns = (segments @ weights).sum(-1)
    predicted = model.model.predict_reward(torch.from_numpy(segments.reshape(-1, DS + DA))).reshape(num, 2, SEGMENT)
    predicted_returns = predicted.sum(-1).numpy()
    gap = np.abs(true_returns[:, 1] - true_returns[:, 0])
    clear = gap > np.quantile(gap, 0.1)
    agree = (predicted_returns[:, 1] > predicted_returns[:, 0]) == (true_returns[:, 1] > true_returns[:, 0])
    return float(agree[clear].mean())


@pytest.mark.slow
@pytest.mark.parametrize("ensemble_size", [1, 3])
@pytest.mark.parametrize("data_aug_ratio", [0, 20])
def test_learns_linear_reward_from_oracle_preferences(ensemble_size, data_aug_ratio):
    rng = np.random.default_rng(ensemble_size * 10 + data_aug_ratio)
    weights = rng.normal(size=DS + DA)
    model = make_reward_model(
        DS,
        DA,
        ensemble_size=ensemble_size,
        reward_batch=40,
        segment=SEGMENT,
        max_reward_buffer_size=10,
        data_aug_ratio=data_aug_ratio,
        max_feedback=200,
        seed=0,
        **FAST_LEARNER,
    )
    before = held_out_accuracy(model, weights, np.random.default_rng(123))
    for _ in range(3):
        feed_episodes(model, [smooth_episode(rng, 100) for _ in range(10)], weights)
        assert model.query("policy_aligned") == 40
        accuracy, loss = model.trainer.train_reward_iter(300)
        assert accuracy.shape == (ensemble_size,)
        assert math.isfinite(loss)
    after = held_out_accuracy(model, weights, np.random.default_rng(123))
    assert accuracy.mean() >= 0.95  # the running accuracy of the last call, its early steps included
    assert after >= 0.85 and after - before >= 0.2, (before, after)


def test_batched_ensemble_equals_per_member_networks():
    model = make_reward_model(DS, DA, ensemble_size=3, segment=SEGMENT, seed=0).model  # the default 3 x 256 network
    members = [model.net.member(index) for index in range(3)]
    x = torch.randn(257, DS + DA)
    loop = torch.stack([member(x) for member in members])
    torch.testing.assert_close(model.net(x), loop, rtol=1e-5, atol=1e-6)
    per_member_x = torch.randn(3, 65, DS + DA)
    loop = torch.stack([member(per_member_x[index]) for index, member in enumerate(members)])
    torch.testing.assert_close(model.net(per_member_x), loop, rtol=1e-5, atol=1e-6)
    shared = torch.stack([member(x) for member in members])
    loop_mean = shared.mean(0)
    torch.testing.assert_close(model.predict_reward(x), loop_mean)
    mean, std = model.predict_reward_and_std(x)
    torch.testing.assert_close(mean, loop_mean)
    torch.testing.assert_close(std, shared.std(0, correction=0))
    torch.testing.assert_close(model.r_hat_member(x.numpy(), 2), members[2](x))
    many = torch.randn(9000, DS + DA)  # more rows than one CPU block of predict_reward
    torch.testing.assert_close(model.predict_reward(many), torch.stack([member(many) for member in members]).mean(0))
    np.testing.assert_allclose(model.r_hat_batch(x.numpy()), loop_mean.detach().numpy(), rtol=1e-5, atol=1e-6)
    assert model.r_hat(x[0].numpy()) == pytest.approx(float(loop_mean[0].detach()), abs=1e-6)
    # Members start different (independent init), as separate nn.Linear stacks would.
    assert not torch.allclose(members[0](x), members[1](x))


def test_one_training_step_equals_per_member_adam():
    learner = make_reward_model(DS, DA, ensemble_size=2, segment=SEGMENT, data_aug_ratio=0, label_margin=0.1, seed=3)
    model = learner.model
    rng = np.random.default_rng(0)
    pairs = rng.normal(size=(30, 2, SEGMENT, DS + DA)).astype(np.float32)
    labels = rng.choice([0.0, 1.0, 0.5], size=30).astype(np.float32)
    learner.preferences.add(pairs, labels)
    members = [model.net.member(index) for index in range(2)]
    optimisers = [torch.optim.Adam(member.parameters(), lr=learner.reward_cfg.reward_lr) for member in members]
    index = torch.stack([torch.randperm(30), torch.randperm(30)])
    learner.trainer.fit([index], augment=True)
    for row, (member, optimiser) in enumerate(zip(members, optimisers)):
        x = torch.from_numpy(pairs[index[row].numpy()])
        y = torch.from_numpy(labels[index[row].numpy()]) * 0.8 + 0.1
        log_prob = F.log_softmax(member(x).squeeze(-1).sum(-1), dim=-1)
        loss = -(y * log_prob[:, 1] + (1 - y) * log_prob[:, 0]).mean()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        updated = model.net.member(row)
        for expected, got in zip(member.parameters(), updated.parameters()):
            torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)  # Adam steps are ~lr = 3e-4


def test_cropped_return_equals_masked_sum():
    generator = torch.Generator().manual_seed(0)
    segment, copies = 24, 7
    rewards = torch.randn(2, 5, 2, segment)
    starts, lengths = crop_windows((2, 5), segment, qpa_crop_lengths(segment), copies, generator, torch.device("cpu"))
    assert starts.shape == (2, 5, 2, copies) and lengths.shape == (2, 5, 1, copies)
    assert lengths.min() >= segment - 15 and lengths.max() <= segment - 5
    assert starts.min() >= 0 and torch.all(starts + lengths <= segment)
    sums = window_sums(rewards, starts, lengths)
    for index in np.ndindex(2, 5, 2, copies):
        member, pair, side, copy = index
        start, length = int(starts[index]), int(lengths[member, pair, 0, copy])
        mask = torch.zeros(segment)
        mask[start : start + length] = 1.0
        assert float(sums[index]) == pytest.approx(float((rewards[member, pair, side] * mask).sum()), abs=1e-5)
    # Over many draws every allowed length and the extreme starts occur (the windows are not stuck).
    starts, lengths = crop_windows((4000,), segment, qpa_crop_lengths(segment), 1, generator, torch.device("cpu"))
    assert set(lengths.unique().tolist()) == set(range(segment - 15, segment - 4))
    assert int(starts.min()) == 0 and torch.any(starts + lengths == segment)
    assert not torch.equal(starts[:, 0], starts[:, 1])  # independent start per segment


def test_equal_labels_train_as_half_targets():
    margin = 0.05
    learner = make_reward_model(DS, DA, ensemble_size=2, segment=SEGMENT, data_aug_ratio=0, label_margin=margin)
    rng = np.random.default_rng(1)
    pairs = rng.normal(size=(64, 2, SEGMENT, DS + DA)).astype(np.float32)
    labels = np.array([0.0, 1.0, 0.5, 0.5] * 16, dtype=np.float32)
    learner.preferences.add(pairs, labels)
    with torch.no_grad():
        returns = learner.model.net(torch.from_numpy(pairs).reshape(-1, DS + DA)).view(2, 64, 2, SEGMENT).sum(-1)
    log_prob = F.log_softmax(returns, dim=-1)
    target = torch.tensor([margin, 1 - margin, 0.5, 0.5] * 16)  # P[σ1 preferred] wanted for each pair
    expected = -(target * log_prob[..., 1] + (1 - target) * log_prob[..., 0]).mean(-1).mean()
    accuracy, loss = learner.trainer.train_reward()  # 64 pairs: one minibatch, loss measured before the update
    assert loss == pytest.approx(float(expected), rel=1e-5)
    assert np.all((accuracy >= 0) & (accuracy <= 1))

    equal_only = make_reward_model(DS, DA, ensemble_size=1, segment=SEGMENT, data_aug_ratio=0, **FAST_LEARNER)
    equal_only.preferences.add(pairs[:16], np.full(16, 0.5, dtype=np.float32))
    before = equal_only.model.pair_returns(pairs[:16]).diff(dim=-1).abs().mean()
    for _ in range(40):
        accuracy, loss = equal_only.trainer.train_reward()
    after = equal_only.model.pair_returns(pairs[:16]).diff(dim=-1).abs().mean()
    np.testing.assert_array_equal(accuracy, [1.0])  # equal labels are not counted in the accuracy
    assert after < 0.3 * before
    assert loss == pytest.approx(math.log(2), rel=0.05)


def make_model(**kwargs) -> PreferenceLearner:
    defaults = {"ensemble_size": 3, "reward_batch": 20, "segment": SEGMENT, "max_reward_buffer_size": 5, "seed": 0}
    return make_reward_model(DS, DA, **{**defaults, **kwargs})


def feed_numbered_episodes(model: PreferenceLearner, lengths: list[int], first_id: int = 0) -> None:
    """Episodes whose first state entry is the episode id and second the time step (to trace queries back)."""
    rng = np.random.default_rng(first_id)
    for offset, length in enumerate(lengths):
        for t in range(length):
            obs = rng.normal(size=DS).astype(np.float32)
            obs[0], obs[1] = first_id + offset, t
            model.add_data(obs, rng.uniform(-1, 1, size=DA), float(rng.normal() + obs[2]), t == length - 1)


def test_labelled_store_grows_on_demand_within_max_feedback():
    model = make_model(reward_batch=40, max_feedback=300)
    feed_numbered_episodes(model, [60] * 8)
    assert model.preferences.capacity == 0
    capacities = []
    for batch in [40] * 7 + [20]:
        assert model.query("policy_aligned", num=batch) == batch
        capacities.append(model.preferences.capacity)
        if len(capacities) == 1:
            first_batch = model.preferences.data()[0].clone()
    assert len(model.preferences) == 300
    # Doubling (not one reallocation per batch), capped at the feedback budget.
    assert capacities == [40, 80, 160, 160, 300, 300, 300, 300]
    torch.testing.assert_close(model.preferences.data()[0][:40], first_batch)  # growth keeps earlier queries


def test_query_schemes_count_and_respect_the_batch():
    model = make_model(large_batch=4)
    feed_numbered_episodes(model, [50] * 12)
    schemes = ["policy_aligned", "uniform", "disagreement", "entropy", "kcenter", "kcenter_disagree", "kcenter_entropy"]
    for scheme in schemes:
        before = len(model.preferences)
        assert model.query(scheme) == 20, scheme
        assert len(model.preferences) == before + 20
    assert model.query("disagreement", num=10) == 10  # the round size is an argument

    skipping = make_model(large_batch=4, teacher_eps_skip=1.0)
    feed_numbered_episodes(skipping, [50] * 12)
    skipping.teacher.set_thres_skip(3.0)  # segment returns have mean 0 and std ~6: about half are skipped
    for scheme in ("policy_aligned", "kcenter_entropy", "disagreement"):
        before = len(skipping.preferences)
        answered = skipping.query(scheme)
        assert 0 < answered < 20
        assert len(skipping.preferences) == before + answered


def test_uniform_sampling_uses_only_recent_episodes():
    model = make_model(reward_batch=200, max_reward_buffer_size=5, history_episodes=None, ensemble_size=1)
    feed_numbered_episodes(model, [40] * 30)
    model.query("policy_aligned")
    pairs = model.preferences.data()[0].numpy()
    episode_ids, steps = pairs[..., 0], pairs[..., 1]
    assert episode_ids.min() >= 25
    assert np.all(episode_ids == episode_ids[..., :1])  # one episode per segment
    assert np.all(np.diff(steps, axis=-1) == 1)  # contiguous steps
    # Starts cover exactly 0 ... len - S - 1 (the original's range), so the last step (39) is never queried.
    assert set(np.unique(steps[..., 0])) == set(range(40 - SEGMENT))
    assert steps.max() == 38
    model.query("uniform")
    history_ids = model.preferences.data()[0].numpy()[200:, :, 0, 0]
    assert history_ids.min() < 25 and len(np.unique(history_ids)) > 20


def test_explore_splits_between_all_recent_and_newest_ten():
    model = make_model(reward_batch=200, max_reward_buffer_size=25, explore=0.25, ensemble_size=1)
    feed_numbered_episodes(model, [30] * 40)
    assert model.query("policy_aligned") == 200
    episode_ids = model.preferences.data()[0].numpy()[:, :, 0, 0]
    assert episode_ids.min() >= 15
    wide, newest = episode_ids[:50], episode_ids[50:]
    assert newest.min() >= 30
    assert wide.min() < 30


def test_history_size_keeps_a_fifo_and_variable_lengths_work():
    model = make_model(history_episodes=4, ensemble_size=1)
    feed_numbered_episodes(model, [50, 10, 70, 35, 25, 45])  # 10 < SEGMENT: never sampled
    assert [int(episode.sa[0, 0]) for episode in model.episodes] == [2, 3, 4, 5]
    assert [len(episode.reward) for episode in model.episodes] == [70, 35, 25, 45]
    model.query("uniform")
    pairs = model.preferences.data()[0].numpy()
    assert set(np.unique(pairs[:, :, 0, 0])) <= {2, 3, 4, 5}
    lengths = {2: 70, 3: 35, 4: 25, 5: 45}
    for segment in pairs.reshape(-1, SEGMENT, DS + DA):
        assert segment[-1, 1] < lengths[int(segment[0, 0])]
    empty = make_model()
    feed_numbered_episodes(empty, [10, 12])
    with pytest.raises(ValueError, match="segment=20"):
        empty.query("policy_aligned")


def test_a_store_of_episodes_that_end_early_keeps_as_many_usable_ones_and_numbers_them_in_order():
    """Episodes of at most `min_length` steps cannot hold a segment: the store keeps its `max_episodes` newest
    usable episodes and those among them, so a task whose episodes end early still has N to query from."""
    store = EpisodeStore(2, 1, max_episodes=2, min_length=5)
    for length in (10, 3, 10, 2, 4, 10):
        for t in range(length):
            store.add(np.zeros(2), np.zeros(1), 0.0, t == length - 1)
    assert [episode.index for episode in store] == [2, 3, 4, 5]  # from the 2nd newest usable episode on
    assert [episode.index for episode in store.recent(2)] == [2, 5] and store.episode(4).index == 4
    restored = EpisodeStore(2, 1, max_episodes=2, min_length=5)
    restored.load_state_dict(store.state_dict())
    assert [episode.index for episode in restored] == [2, 3, 4, 5]


def test_disagreement_picks_top_variance_candidates():
    model = make_model(ensemble_size=3, large_batch=5, reward_batch=12)
    feed_numbered_episodes(model, [60] * 10)
    rng_state = model.rng.bit_generator.state
    assert model.query("disagreement") == 12
    chosen = model.preferences.data()[0].numpy()
    model.rng.bit_generator.state = rng_state
    candidates = model.episodes.sample_segment_pairs(60, list(model.episodes), SEGMENT, model.rng).pairs
    members = [model.model.net.member(index) for index in range(3)]
    with torch.no_grad():
        x = torch.from_numpy(candidates)
        returns = torch.stack([member(x).squeeze(-1).sum(-1) for member in members])  # [E, 60, 2]
    probabilities = torch.softmax(returns, dim=-1)[..., 1].numpy()
    brute_force = np.array([np.std(probabilities[:, c]) for c in range(60)])
    expected = candidates[np.argsort(-brute_force)[:12]]
    assert sorted(map(bytes, chosen)) == sorted(map(bytes, expected))


def test_kcenter_picks_points_far_from_labelled_ones():
    model = make_model(ensemble_size=1, large_batch=10, reward_batch=5)
    feed_numbered_episodes(model, [60] * 10)
    model.query("policy_aligned")
    labelled = model.preferences.data()[0][..., :DS].flatten(1)
    rng_state = model.rng.bit_generator.state
    model.query("kcenter")
    picked = model.preferences.data()[0][5:, ..., :DS].flatten(1)
    model.rng.bit_generator.state = rng_state
    candidates = model.episodes.sample_segment_pairs(50, list(model.episodes), SEGMENT, model.rng).pairs
    candidates = torch.from_numpy(candidates[..., :DS]).flatten(1)
    # The first pick is the candidate farthest from everything labelled.
    farthest = torch.cdist(candidates, labelled).amin(1).argmax()
    torch.testing.assert_close(picked[0], candidates[farthest])
    assert torch.cdist(picked, picked).fill_diagonal_(torch.inf).amin() > 0
    duplicates = np.repeat(model.preferences.data()[0][:1].numpy(), 8, axis=0)
    assert sorted(queries.kcenter_indices(model.context(), duplicates, 5).tolist()) == sorted(
        set(queries.kcenter_indices(model.context(), duplicates, 5).tolist())
    )


def test_invalid_arguments_raise():
    with pytest.raises(ConfigError, match="segment=15"):
        make_reward_model(DS, DA, segment=15, data_aug_ratio=20)
    make_reward_model(DS, DA, segment=15, data_aug_ratio=0)
    with pytest.raises(ConfigError, match="activation='gelu'"):
        make_reward_model(DS, DA, segment=SEGMENT, activation="gelu")
    with pytest.raises(ConfigError, match=r"explore=1\.5"):
        make_reward_model(DS, DA, segment=SEGMENT, explore=1.5)
    x = torch.randn(100, DS + DA) * 10
    sig = make_reward_model(DS, DA, segment=SEGMENT, activation="sig").model.predict_reward(x)
    relu = make_reward_model(DS, DA, segment=SEGMENT, activation="relu").model.predict_reward(x)
    tanh = make_reward_model(DS, DA, segment=SEGMENT, activation="tanh", ensemble_size=1).model.predict_reward(x)
    assert sig.min() > 0 and sig.max() < 1
    assert relu.min() >= 0
    assert tanh.min() > -1 and tanh.max() < 1 and tanh.min() < 0


def test_state_dict_round_trip_resumes_exactly(tmp_path):
    kwargs = {"ensemble_size": 2, "reward_batch": 16, "teacher_eps_mistake": 0.2, "teacher_beta": 2.0, "seed": 4}
    model = make_model(**kwargs)
    feed_numbered_episodes(model, [40] * 6 + [17])
    model.add_data(np.zeros(DS), np.zeros(DA), 0.0, False)  # an open episode is part of the state
    model.query("policy_aligned")
    model.trainer.train_reward_iter(3)
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    buffer.seek(0)
    restored = make_model(**{**kwargs, "seed": 77})
    restored.load_state_dict(torch.load(buffer, weights_only=True))

    for current in (model, restored):
        current.add_data(np.ones(DS), np.ones(DA), 1.0, True)
    assert [len(e.reward) for e in restored.episodes] == [len(e.reward) for e in model.episodes]
    assert restored.query("policy_aligned", num=9) == model.query("policy_aligned", num=9) == 9
    torch.testing.assert_close(restored.preferences.data()[0], model.preferences.data()[0])
    torch.testing.assert_close(restored.preferences.data()[1], model.preferences.data()[1])
    expected, got = model.trainer.train_reward_iter(4), restored.trainer.train_reward_iter(4)
    np.testing.assert_array_equal(got[0], expected[0])
    assert got[1] == expected[1]
    x = torch.randn(10, DS + DA)
    torch.testing.assert_close(restored.model.predict_reward(x), model.model.predict_reward(x))

    model.model.save(tmp_path, 123)
    weights_only = make_model(**{**kwargs, "seed": 5})
    weights_only.model.load(tmp_path, 123)
    torch.testing.assert_close(weights_only.model.predict_reward(x), model.model.predict_reward(x))


# ---------------------------------------------------------------------------------------------- training rules
def adam_steps(model: PreferenceLearner) -> int:
    return int(model.trainer.opt.state[model.model.net.weights[0]]["step"])


def labelled_model(num_labels: int, seed: int, **kwargs) -> PreferenceLearner:
    rng = np.random.default_rng(seed)
    weights = rng.normal(size=DS + DA)
    model = make_model(reward_batch=num_labels, max_reward_buffer_size=10, max_feedback=500, seed=seed, **kwargs)
    feed_episodes(model, [smooth_episode(rng, 100) for _ in range(10)], weights)
    model.query("policy_aligned")
    return model


def original_rule_steps(model: PreferenceLearner, num_iters: int) -> int:
    """The original release's DMC stopping rule, written out here on its own: a running count of correct and of
    counted predictions over every step of the call, never reset, checked after each step against 0.98."""
    trainer = model.trainer
    correct = np.zeros(model.model.ensemble_size)
    counted = np.zeros(model.model.ensemble_size)
    for step, index in enumerate(trainer.minibatches(num_iters), start=1):
        loss, step_correct, step_counted = trainer.loss(index, augment=True)
        trainer.opt.zero_grad(set_to_none=True)
        loss.backward()
        trainer.opt.step()
        correct += step_correct.numpy()
        counted += step_counted.numpy()
        if np.mean(correct / counted) >= 0.98:
            return step
    return num_iters


@pytest.mark.slow
@pytest.mark.parametrize(
    ("num_labels", "ensemble_size", "data_aug_ratio", "seeds"),
    # The 10-label cases stop early on every seed; the 20-label 3-member case runs to the end (0.97 accuracy).
    [(10, 1, 20, 3), (10, 3, 20, 3), (20, 3, 20, 1), (60, 1, 0, 3)],
)
def test_dmc_stopping_step_is_the_original_rule(num_labels, ensemble_size, data_aug_ratio, seeds):
    for seed in range(seeds):
        model = labelled_model(num_labels, seed, ensemble_size=ensemble_size, data_aug_ratio=data_aug_ratio)
        twin = io.BytesIO()
        torch.save(model.state_dict(), twin)
        twin.seek(0)
        independent = make_model(reward_batch=num_labels, max_reward_buffer_size=10, max_feedback=500, seed=seed,
                                 ensemble_size=ensemble_size, data_aug_ratio=data_aug_ratio)  # fmt: skip
        independent.load_state_dict(torch.load(twin, weights_only=False))
        num_iters = math.ceil(2000 * num_labels / 128)
        accuracy, _ = model.trainer.train_reward_iter(num_iters)
        expected = original_rule_steps(independent, num_iters)
        assert adam_steps(model) == expected, seed
        if expected < num_iters:
            assert accuracy.mean() >= 0.98
        for mine, theirs in zip(model.model.net.parameters(), independent.model.net.parameters()):
            assert torch.equal(mine, theirs)


def test_first_round_on_walker_with_ten_labels_trains_for_tens_of_steps():
    """The first query round of a walker_walk run: 10 oracle labels on 10 episodes, QPA's defaults (one 3 x 256
    member, 20 crops, segment 50). The per-pass rule this replaced stopped after 2-11 steps here."""
    env = utils.make_env("walker_walk", 0)
    rng = np.random.default_rng(0)
    episodes = []
    for episode in range(10):
        obs, _ = env.reset(seed=episode)
        steps, done = [], False
        while not done:
            action = rng.uniform(-1, 1, 6).astype(np.float32)
            next_obs, reward, terminated, truncated, _ = env.step(action)
            done = terminated or truncated
            steps.append((obs, action, reward, done))
            obs = next_obs
        episodes.append(steps)
    num_iters = math.ceil(2000 * 10 / 128)
    counts = []
    for seed in range(5):
        model = make_reward_model(24, 6, ensemble_size=1, reward_batch=10, segment=50, data_aug_ratio=20, seed=seed)
        for steps in episodes:
            for obs, action, reward, done in steps:
                model.add_data(obs, action, reward, done)
        model.query("policy_aligned")
        accuracy, _ = model.trainer.train_reward_iter(num_iters)
        counts.append(adam_steps(model))
        assert accuracy.mean() >= 0.98 or counts[-1] == num_iters
    assert min(counts) > 5 and np.mean(counts) >= 20, counts


def test_dmc_accuracy_counts_every_crop_copy_and_metaworld_whole_segments():
    model = labelled_model(30, 0, ensemble_size=2, data_aug_ratio=20)
    index = model.preferences.shuffled_order(2, model.trainer.generator)[:, :16]
    _, correct, counted = model.trainer.loss(index, augment=True)
    assert counted.tolist() == [16 * 20, 16 * 20] and bool((correct <= counted).all())
    _, _, counted = model.trainer.loss(index, augment=False)
    assert counted.tolist() == [16, 16]


def test_metaworld_epoch_is_one_pass_over_the_store_on_whole_segments():
    model = labelled_model(300, 0, ensemble_size=2, data_aug_ratio=20)
    accuracy, _ = model.trainer.train_reward()
    assert adam_steps(model) == math.ceil(300 / 128)  # one epoch: 3 minibatch steps
    assert accuracy.shape == (2,) and np.all((accuracy >= 0) & (accuracy <= 1))
    # Repeated epochs reach the caller's 0.97 threshold: the training loop stops there (feedback.train_reward).
    epochs = 1
    while np.mean(accuracy) <= 0.97 and epochs < 200:
        accuracy, _ = model.trainer.train_reward()
        epochs += 1
    assert np.mean(accuracy) > 0.97 and adam_steps(model) == epochs * 3
