"""The environment layer: dmc2gym, custom_dmcontrol and utils.make_env on real dm_control / Meta-World tasks."""

import os
import subprocess
import sys
import time

import dmc2gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import custom_dmcontrol
import utils
from custom_dmcontrol import versions
from gymnasium_env import GymnasiumEnv

DMC_TASKS = [
    "walker_walk",
    "cheetah_run",
    "walker_run",
    "quadruped_walk",
    "quadruped_run",
    "humanoid_stand",
    "ball_in_cup_catch",
    "point_mass_easy",
]
METAWORLD_TASKS = [
    "metaworld_drawer-open-v3",
    "metaworld_door-open-v3",
    "metaworld_door-unlock-v3",
    "metaworld_button-press-v3",
]


def random_actions(env, count, seed=0):
    rng = np.random.default_rng(seed)
    return rng.uniform(-1.0, 1.0, size=(count, *env.action_space.shape)).astype(np.float32)


def run_full_episode(env):
    """Step random actions until the episode ends; return (steps, terminated flags, truncated flags, infos)."""
    env.reset()
    terminated, truncated, infos = [], [], []
    for action in random_actions(env, env.max_episode_steps):
        obs, reward, term, trunc, info = env.step(action)
        assert obs.dtype == np.float32 and obs.shape == env.observation_space.shape
        assert np.isfinite(reward)
        terminated.append(term)
        truncated.append(trunc)
        infos.append(info)
        if term or trunc:
            break
    return len(terminated), terminated, truncated, infos


def first_observations(env, actions):
    observations = [env.reset()[0]]
    observations += [env.step(action)[0] for action in actions]
    return np.stack(observations)


def render_or_skip():
    try:
        return custom_dmcontrol.configure_rendering_backend()
    except RuntimeError as error:
        pytest.skip(f"no OpenGL backend renders here: {error}")


# ---------------------------------------------------------------------------------------------------------------------
# DeepMind Control
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", DMC_TASKS)
def test_dmc_spaces_episode_length_and_determinism(name):
    env = utils.make_env(name, seed=3)
    assert env.max_episode_steps == 1000 and isinstance(env.max_episode_steps, int)
    assert env.observation_space.dtype == np.float32 and len(env.observation_space.shape) == 1
    assert env.action_space.dtype == np.float32
    assert np.all(env.action_space.low == -1.0) and np.all(env.action_space.high == 1.0)
    expected_dim = sum(int(np.prod(spec.shape)) for spec in env.dm_env.observation_spec().values())
    assert env.observation_space.shape == (expected_dim,)

    actions = random_actions(env, 30, seed=1)
    twin = utils.make_env(name, seed=3)
    np.testing.assert_array_equal(first_observations(env, actions), first_observations(twin, actions))
    other = utils.make_env(name, seed=4)
    assert not np.array_equal(utils.make_env(name, seed=3).reset()[0], other.reset()[0])

    steps, terminated, truncated, infos = run_full_episode(env)
    assert steps == 1000
    assert not any(terminated)
    assert truncated[-1] and not any(truncated[:-1])
    assert "discount" in infos[-1]
    with pytest.raises(RuntimeError, match="reset"):
        env.step(np.zeros(env.action_space.shape, dtype=np.float32))
    for instance in (env, twin, other):
        instance.close()


def test_dmc_reset_seed_replays_a_fresh_env():
    env = dmc2gym.make("walker", "walk", seed=0)
    fresh = dmc2gym.make("walker", "walk", seed=11)
    actions = random_actions(env, 20)
    reseeded = [env.reset(seed=11)[0]] + [env.step(action)[0] for action in actions]
    np.testing.assert_array_equal(np.stack(reseeded), first_observations(fresh, actions))


def test_dmc_actions_map_linearly_onto_spec_bounds():
    # quadruped's action spec is not symmetric ([-1, 1.1] on some actuators), so a mapping bug shows up here.
    env = dmc2gym.make("quadruped", "walk", seed=0)
    spec = env.dm_env.action_spec()
    low = np.broadcast_to(spec.minimum, spec.shape)
    high = np.broadcast_to(spec.maximum, spec.shape)
    assert not np.allclose(low, -high)
    env.reset()
    for unit, expected in ((-1.0, low), (1.0, high), (0.0, (low + high) / 2), (5.0, high)):
        env.step(np.full(env.action_space.shape, unit, dtype=np.float32))
        np.testing.assert_allclose(env.dm_env.physics.data.ctrl, expected, rtol=1e-6)
    with pytest.raises(ValueError, match="action shape"):
        env.step(np.zeros(3, dtype=np.float32))


def test_dmc_frame_skip_and_observation_order():
    env = dmc2gym.make("walker", "walk", seed=0, frame_skip=4)
    assert env.max_episode_steps == 250
    steps, _, truncated, _ = run_full_episode(env)
    assert steps == 250 and truncated[-1]
    # The documented order is the task's observation_spec order (walker: 14 orientations, height, 9 velocities).
    assert env.observation_keys == ("orientations", "height", "velocity")
    flat, _ = env.reset()
    observation = env.dm_env.task.get_observation(env.dm_env.physics)
    np.testing.assert_array_equal(flat[:14], observation["orientations"].astype(np.float32))
    np.testing.assert_array_equal(flat[14], np.float32(observation["height"]))
    np.testing.assert_array_equal(flat[15:], observation["velocity"].astype(np.float32))


def test_dmc_render_and_pixel_observations():
    render_or_skip()
    env = dmc2gym.make("cheetah", "run", seed=0, height=64, width=48)
    env.reset()
    frame = env.render()
    assert frame.shape == (64, 48, 3) and frame.dtype == np.uint8 and frame.std() > 0

    pixels = dmc2gym.make("point_mass", "easy", seed=0, from_pixels=True, height=32, width=40, episode_length=10)
    obs, _ = pixels.reset()
    assert obs.shape == pixels.observation_space.shape == (3, 32, 40) and obs.dtype == np.uint8
    obs = pixels.step(np.zeros(2, dtype=np.float32))[0]
    assert obs.shape == (3, 32, 40)
    channels_last = dmc2gym.make(
        "point_mass", "easy", seed=0, from_pixels=True, height=32, width=40, channels_first=False
    )
    last_obs, _ = channels_last.reset()
    np.testing.assert_array_equal(last_obs, pixels.reset(seed=0)[0].transpose(1, 2, 0))


def test_dmc_passes_gymnasium_env_checker():
    check_env(dmc2gym.make("cartpole", "balance_sparse", seed=0), skip_render_check=True)


def test_dmc2gym_rejects_bad_arguments():
    with pytest.raises(ValueError, match=r"walker_wlak.*walker_walk"):
        dmc2gym.make("walker", "wlak")
    with pytest.raises(ValueError, match="domain_name='ball_in_cup', task_name='catch'"):
        dmc2gym.make("ball_in", "cup_catch")
    with pytest.raises(ValueError, match="frame_skip=0"):
        dmc2gym.make("walker", "walk", frame_skip=0)


# ---------------------------------------------------------------------------------------------------------------------
# custom_dmcontrol
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "pair"),
    [
        ("ball_in_cup_catch", ("ball_in_cup", "catch")),
        ("point_mass_easy", ("point_mass", "easy")),
        ("cartpole_balance_sparse", ("cartpole", "balance_sparse")),
        ("humanoid_CMU_stand", ("humanoid_CMU", "stand")),
        ("walker_walk", ("walker", "walk")),
    ],
)
def test_split_task_name_handles_multi_word_domains(name, pair):
    assert custom_dmcontrol.split_task_name(name) == pair


def test_every_suite_task_round_trips():
    from dm_control import suite

    names = custom_dmcontrol.task_names()
    assert len(names) == len(suite.ALL_TASKS)
    assert {custom_dmcontrol.split_task_name(name) for name in names} == set(suite.ALL_TASKS)
    with pytest.raises(ValueError, match=r"'point_mass_esy'.*point_mass_easy"):
        custom_dmcontrol.split_task_name("point_mass_esy")


def test_load_task_is_seeded():
    first = custom_dmcontrol.load_task("ball_in_cup_catch", seed=5).reset().observation
    again = custom_dmcontrol.load_task("ball_in_cup_catch", seed=5).reset().observation
    other = custom_dmcontrol.load_task("ball_in_cup_catch", seed=6).reset().observation
    np.testing.assert_array_equal(first["position"], again["position"])
    assert not np.array_equal(first["position"], other["position"])


def test_check_versions(monkeypatch, recwarn):
    assert custom_dmcontrol.check_versions() is True
    assert not [w for w in recwarn if "supports only" in str(w.message)]
    monkeypatch.setitem(versions.SUPPORTED_VERSIONS, "mujoco", "9.9.9")
    with pytest.warns(RuntimeWarning, match=r"found mujoco 3\.3\.0, dm_control 1\.0\.28; .*mujoco==9\.9\.9"):
        assert custom_dmcontrol.check_versions() is False


def test_rendering_backend_respects_user_choice(monkeypatch):
    monkeypatch.setenv("MUJOCO_GL", "osmesa")
    assert custom_dmcontrol.configure_rendering_backend() == "osmesa"


def test_rendering_backend_is_chosen_when_unset():
    # A fresh interpreter, because dm_control fixes its backend on import and this process has imported it.
    env = {key: value for key, value in os.environ.items() if key not in ("MUJOCO_GL", "PYOPENGL_PLATFORM")}
    code = "import custom_dmcontrol, os; print(custom_dmcontrol.configure_rendering_backend(), os.environ['MUJOCO_GL'])"
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    if result.returncode != 0:
        # No GL here: the failure must be the one-line explanation, not a stack of OpenGL errors from deep inside.
        assert "no headless OpenGL backend renders MuJoCo" in result.stderr
        pytest.skip("no OpenGL backend on this machine")
    chosen, exported = result.stdout.split()
    assert chosen == exported and chosen in ("egl", "osmesa")


# ---------------------------------------------------------------------------------------------------------------------
# Meta-World
# ---------------------------------------------------------------------------------------------------------------------


def reset_layouts(env, resets, seed=None):
    """Object and goal positions (observation dims 4:7 and 36:39) after each of `resets` resets."""
    layouts = []
    for index in range(resets):
        obs, _ = env.reset(seed=seed if index == 0 else None)
        layouts.append(np.concatenate([obs[4:7], obs[36:39]]))
    return np.stack(layouts)


@pytest.mark.parametrize("name", METAWORLD_TASKS)
def test_metaworld_episode_layouts_and_seeding(name):
    env = utils.make_env(name, seed=7)
    assert env.max_episode_steps == 500 and isinstance(env.max_episode_steps, int)
    assert env.observation_space.shape == (39,) and env.observation_space.dtype == np.float32
    assert env.action_space.shape == (4,)
    assert np.all(env.action_space.low == -1.0) and np.all(env.action_space.high == 1.0)

    steps, terminated, truncated, infos = run_full_episode(env)
    assert steps == 500
    assert not any(terminated)
    assert truncated[-1] and not any(truncated[:-1])
    assert all("success" in info for info in infos)
    with pytest.raises(RuntimeError, match="reset"):
        env.step(np.zeros(4, dtype=np.float32))

    layouts = reset_layouts(env, 3, seed=7)
    assert len({layout.tobytes() for layout in layouts}) == 3, "goal/object positions must change every reset"
    twin = utils.make_env(name, seed=7)
    np.testing.assert_array_equal(reset_layouts(twin, 3), layouts)
    other = utils.make_env(name, seed=8)
    assert not np.array_equal(reset_layouts(other, 3), layouts)
    for instance in (env, twin, other):
        instance.close()


def test_metaworld_passes_gymnasium_env_checker_and_renders():
    env = utils.make_env("metaworld_drawer-open-v3", seed=0)
    check_env(env, skip_render_check=True)
    render_or_skip()
    env.reset()
    frame = env.render()
    assert frame.ndim == 3 and frame.shape[2] == 3 and frame.dtype == np.uint8 and frame.std() > 0
    env.close()


def test_metaworld_v2_names_map_to_v3_with_one_notice(recwarn):
    with pytest.warns(UserWarning, match="metaworld_reach-wall-v2 .* metaworld_reach-wall-v3"):
        assert utils.canonical_env_name("metaworld_reach-wall-v2") == "metaworld_reach-wall-v3"
    recwarn.clear()
    assert utils.canonical_env_name("metaworld_reach-wall-v2") == "metaworld_reach-wall-v3"
    assert not [w for w in recwarn if "reach-wall" in str(w.message)]
    env = utils.make_env("metaworld_door-unlock-v2", seed=0)
    assert env.observation_space.shape == (39,) and env.max_episode_steps == 500
    env.close()


# ---------------------------------------------------------------------------------------------------------------------
# Names
# ---------------------------------------------------------------------------------------------------------------------


def test_canonical_names_pass_through():
    assert utils.canonical_env_name("ball_in_cup_catch") == "ball_in_cup_catch"
    assert utils.canonical_env_name("metaworld_door-open-v3") == "metaworld_door-open-v3"
    assert utils.is_metaworld("metaworld_door-open-v3") and not utils.is_metaworld("walker_walk")


@pytest.mark.parametrize(
    ("bad", "suggestion"),
    [
        ("walker_wlak", "walker_walk"),
        ("metaworld_nope-v2", "metaworld_"),
        ("metaworld_drawer-opn-v2", "metaworld_drawer-open-v3"),
        ("metaworld_drawer-open", "metaworld_drawer-open-v3"),
        ("cheetah", "cheetah_run"),
        ("", "walker_walk"),
        (None, "walker_walk"),
    ],
)
def test_bad_names_get_one_line_errors_with_suggestions(bad, suggestion):
    utils.canonical_env_name("walker_walk")  # load the name lists once, so the timing below is the check alone
    start = time.perf_counter()
    with pytest.raises(ValueError) as error:
        utils.canonical_env_name(bad)
    assert time.perf_counter() - start < 0.5, "validation must not build an environment"
    message = str(error.value)
    assert repr(bad) in message and suggestion in message.split("closest:")[1]
    assert "\n" not in message
    with pytest.raises(ValueError, match="closest:"):
        utils.make_env(bad, seed=0)


# ---------------------------------------------------------------------------------------------------------------------
# Gymnasium tasks by id
# ---------------------------------------------------------------------------------------------------------------------


def test_a_gymnasium_task_has_actions_in_the_unit_box_float32_observations_and_its_time_limit():
    env = utils.make_env("Humanoid-v5", seed=0)  # action bounds ±0.4: rescaled to ±1
    assert (env.action_space.low == -1).all() and (env.action_space.high == 1).all()
    assert env.max_episode_steps == 1000 == utils.episode_steps("Humanoid-v5")
    obs, _ = env.reset(seed=3)
    again, _ = utils.make_env("Humanoid-v5", seed=0).reset(seed=3)
    assert obs.dtype == np.float32 and obs.shape == env.observation_space.shape and np.array_equal(obs, again)
    check_env(env, skip_render_check=True)
    env.close()


def episode_end(env, action: np.ndarray) -> tuple[int, bool, bool]:
    """(steps, terminated, truncated) of an episode of a constant action."""
    env.reset(seed=0)
    steps, terminated, truncated = 0, False, False
    while not (terminated or truncated):
        _, _, terminated, truncated, _ = env.step(action)
        steps += 1
    return steps, terminated, truncated


def test_a_gymnasium_task_ends_where_gymnasium_ends_it():
    """A falling hopper terminates (no bootstrap past it); a half-cheetah runs to its time limit, truncated."""
    steps, terminated, truncated = episode_end(utils.make_env("Hopper-v5", seed=0), np.ones(3, dtype=np.float32))
    assert terminated and not truncated and steps < 1000
    cheetah = utils.make_env("HalfCheetah-v5", seed=0)
    assert episode_end(cheetah, np.zeros(6, dtype=np.float32)) == (1000, False, True)
    assert cheetah.max_episode_steps == 1000


def test_a_gymnasium_task_renders_at_the_size_asked_for_and_names_success_as_meta_world_does():
    render_or_skip()
    env = utils.make_env("HalfCheetah-v5", seed=0)
    env.reset(seed=0)
    frame = env.render(height=64, width=96)
    assert frame.shape == (64, 96, 3) and frame.dtype == np.uint8 and frame.std() > 0
    model, data = env.sim
    assert model.nq == data.qpos.shape[0]
    env.close()
    assert GymnasiumEnv._with_success({"is_success": True}) == {"is_success": True, "success": 1.0}


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ("HalfCheeta-v5", "unknown environment 'HalfCheeta-v5'; valid names are DMC domain_task, metaworld_<task>-v3 "
         "or a Gymnasium id, closest: HalfCheetah-v5"),
        ("CartPole-v1", "env=CartPole-v1 is not supported: its action space Discrete(2) is not a flat continuous Box"),
    ],
)  # fmt: skip
def test_an_unknown_or_unsupported_gymnasium_id_is_refused_in_one_line(bad, message):
    with pytest.raises(ValueError) as error:
        utils.canonical_env_name(bad)
    assert str(error.value).startswith(message) and "\n" not in str(error.value)
