"""The scripted B-Pref teacher: each irrationality measured statistically against its definition."""

import numpy as np
import pytest
from conftest import REPO_ROOT, compose_config

from config_schema import ConfigError, TeacherConfig
from teacher import ScriptedTeacher


def binomial_tolerance(p: float, n: int, sigmas: float = 5.0) -> float:
    return sigmas * np.sqrt(p * (1 - p) / n)


def clear_pairs(n: int, seed: int = 0, length: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """Pairs whose returns differ by at least 1 (so no rounding or tie can decide a label)."""
    rng = np.random.default_rng(seed)
    rewards_1 = rng.uniform(0, 1, size=(n, length))
    gap = rng.uniform(1, 3, size=n) * rng.choice([-1, 1], size=n)
    rewards_2 = rewards_1 + (gap / length)[:, None]
    return rewards_1, rewards_2


def test_oracle_prefers_higher_return_and_ties_are_equal():
    rewards_1, rewards_2 = clear_pairs(500)
    keep, labels = ScriptedTeacher().label(rewards_1, rewards_2)
    np.testing.assert_array_equal(keep, np.arange(500))
    np.testing.assert_array_equal(labels, (rewards_2.sum(1) > rewards_1.sum(1)).astype(np.float32))
    assert labels.dtype == np.float32
    _, tie_labels = ScriptedTeacher().label(np.ones((3, 4)), np.ones((3, 4)))
    np.testing.assert_array_equal(tie_labels, [0.5, 0.5, 0.5])


def test_mistake_rate_matches_eps():
    n, eps = 20000, 0.1
    rewards_1, rewards_2 = clear_pairs(n, seed=1)
    rational = (rewards_2.sum(1) > rewards_1.sum(1)).astype(np.float32)
    _, labels = ScriptedTeacher(eps_mistake=eps, seed=3).label(rewards_1, rewards_2)
    flip_rate = np.mean(labels != rational)
    assert abs(flip_rate - eps) < binomial_tolerance(eps, n)


def test_equal_label_when_returns_are_close():
    teacher = ScriptedTeacher(eps_equal=0.1, eps_mistake=0.3, seed=0)
    teacher.set_thres_equal(5.0)  # threshold 0.5
    assert teacher.thres_equal == pytest.approx(0.5)
    rng = np.random.default_rng(2)
    rewards_1 = rng.uniform(0, 1, size=(4000, 5))
    rewards_2 = rewards_1 + rng.uniform(-0.3, 0.3, size=(4000, 1))  # return gaps in [-1.5, 1.5]
    gap = np.abs(rewards_1.sum(1) - rewards_2.sum(1))
    _, labels = teacher.label(rewards_1, rewards_2)
    close = gap < 0.5
    assert 0.1 < close.mean() < 0.9
    assert np.all(labels[close] == 0.5)  # equal overrides, never flipped by a mistake
    assert np.all(labels[~close] != 0.5)


def test_skip_drops_pairs_with_both_returns_low():
    teacher = ScriptedTeacher(eps_skip=0.1)
    teacher.set_thres_skip(20.0)  # threshold 2
    rng = np.random.default_rng(4)
    rewards_1 = rng.uniform(0, 1, size=(1000, 4))
    rewards_2 = rng.uniform(0, 1, size=(1000, 4))
    keep, labels = teacher.label(rewards_1, rewards_2)
    answered = np.maximum(rewards_1.sum(1), rewards_2.sum(1)) > 2.0
    assert 0.2 < answered.mean() < 0.95
    np.testing.assert_array_equal(keep, np.flatnonzero(answered))
    np.testing.assert_array_equal(labels, (rewards_2.sum(1) > rewards_1.sum(1))[keep].astype(np.float32))


def test_zero_eps_or_unset_threshold_never_skips_or_equals():
    rewards_1, rewards_2 = np.zeros((50, 3)), np.full((50, 3), 1e-3)
    thresholds_never_set = ScriptedTeacher(eps_skip=0.1, eps_equal=0.1)
    zero_eps = ScriptedTeacher()
    zero_eps.set_thres_skip(100.0)
    zero_eps.set_thres_equal(100.0)
    for teacher in (thresholds_never_set, zero_eps):
        keep, labels = teacher.label(rewards_1, rewards_2)
        assert len(keep) == 50
        assert np.all(labels == 1.0)


def test_stochastic_teacher_follows_bradley_terry():
    n, beta = 20000, 2.0
    teacher = ScriptedTeacher(beta=beta, seed=5)
    for gap in (-1.0, 0.0, 0.4, 1.5):
        rewards_1 = np.zeros((n, 2))
        rewards_2 = np.full((n, 2), gap / 2)
        _, labels = teacher.label(rewards_1, rewards_2)
        expected = 1.0 / (1.0 + np.exp(-beta * gap))
        assert set(np.unique(labels)) <= {0.0, 1.0}
        assert abs(labels.mean() - expected) < binomial_tolerance(expected, n)


def test_myopic_teacher_discounts_early_steps():
    # Segment 1 earns its reward at the start, segment 2 slightly less in total but at the end.
    rewards_1 = np.array([[1.0, 1.0, 0.0, 0.0, 0.0]])
    rewards_2 = np.array([[0.0, 0.0, 0.0, 0.9, 0.9]])
    _, oracle = ScriptedTeacher(gamma=1.0).label(rewards_1, rewards_2)
    _, myopic = ScriptedTeacher(gamma=0.9).label(rewards_1, rewards_2)
    assert oracle[0] == 0.0
    assert myopic[0] == 1.0
    # The weights are gamma^(T-1-t): the last step is undiscounted.
    _, last_step = ScriptedTeacher(gamma=0.5).label(np.array([[0.0, 0.0, 1.0]]), np.array([[3.9, 0.0, 0.0]]))
    assert last_step[0] == 0.0  # 3.9 * 0.25 < 1.0


def test_config_presets_match_bpref():
    """config/teacher/*.yaml hold the six simulated teachers of B-Pref (Lee et al. 2021, §3), each composed onto the
    schema's defaults (the oracle)."""
    names = {path.stem for path in (REPO_ROOT / "config" / "teacher").glob("*.yaml")} - {"human", "replay"}
    assert names == {"oracle", "noisy", "mistake", "skip", "myopic", "equal"}
    assert {compose_config(f"teacher={name}").teacher_type for name in names} == {"scripted"}
    assert compose_config("teacher=human").teacher_type == "human"  # a person (human_teacher.py)
    assert compose_config("teacher=replay").teacher_type == "replay"
    keys = ("teacher_beta", "teacher_gamma", "teacher_eps_mistake", "teacher_eps_skip", "teacher_eps_equal")
    presets = {name: {key: compose_config(f"teacher={name}")[key] for key in keys} for name in names}
    oracle = dict(zip(keys, (-1.0, 1.0, 0.0, 0.0, 0.0)))
    assert presets["oracle"] == oracle
    changes = {"noisy": ("teacher_beta", 1.0), "mistake": ("teacher_eps_mistake", 0.1)}
    changes |= {
        "skip": ("teacher_eps_skip", 0.1),
        "myopic": ("teacher_gamma", 0.9),
        "equal": ("teacher_eps_equal", 0.1),
    }
    for name, (key, value) in changes.items():
        assert presets[name] == {**oracle, key: value}
        ScriptedTeacher(*presets[name].values())


def test_state_dict_round_trip_reproduces_labels():
    teacher = ScriptedTeacher(beta=1.0, eps_mistake=0.2, eps_skip=0.1, eps_equal=0.1, seed=7)
    teacher.set_thres_skip(3.0)
    teacher.set_thres_equal(2.0)
    rewards_1, rewards_2 = clear_pairs(300, seed=8)
    teacher.label(rewards_1, rewards_2)
    state = teacher.state_dict()
    expected = teacher.label(rewards_1, rewards_2)
    restored = ScriptedTeacher(beta=1.0, eps_mistake=0.2, eps_skip=0.1, eps_equal=0.1, seed=99)
    restored.load_state_dict(state)
    got = restored.label(rewards_1, rewards_2)
    np.testing.assert_array_equal(got[0], expected[0])
    np.testing.assert_array_equal(got[1], expected[1])


def test_bad_arguments_raise():
    with pytest.raises(ConfigError, match="teacher_gamma=0"):  # the schema checks the teacher's keys
        TeacherConfig(teacher_gamma=0.0)
    with pytest.raises(ConfigError, match=r"teacher_eps_mistake=-0\.1"):
        TeacherConfig(teacher_eps_mistake=-0.1)
    with pytest.raises(ValueError, match="shapes"):
        ScriptedTeacher().label(np.zeros((3, 4)), np.zeros((3, 5)))
