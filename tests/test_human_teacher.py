"""The pieces of `teacher=human` with real environments and the real server: simulator states and rendering after
the fact (DMC and Meta-World), the segment origins a person's answers are filed under, labels.sqlite, the claim
pool with two labellers, and the token. tests/test_human_browser.py drives whole runs in a real browser."""

from __future__ import annotations

import json
import socket
import threading
import time
import urllib.error
import urllib.request
from io import BytesIO

import numpy as np
import pytest
from conftest import make_reward_model
from PIL import Image

import utils
from config_schema import TeacherConfig
from episodes import EpisodeStore
from human_teacher import (
    FRAME_HEIGHT,
    HumanTeacher,
    LabelStore,
    ReplayTeacher,
    SimStateRecorder,
    labels_of,
    render_segment,
)
from teacher import QueryRound, TeacherError


def record_episode(env_name: str, steps: int, seed: int = 0) -> tuple[object, SimStateRecorder, list[np.ndarray]]:
    """Step a real env with random actions for one `steps`-step episode, storing it and recording its states as the
    training loop does, and rendering each observed state live."""
    env = utils.make_env(env_name, seed)
    obs, _ = env.reset(seed=seed)
    episodes = EpisodeStore(env.observation_space.shape[0], env.action_space.shape[0], max_episodes=3)
    recorder = SimStateRecorder(env, episodes)
    live_frames = []
    for step in range(steps):
        recorder.record()
        live_frames.append(live_frame(env))
        action = env.action_space.sample()
        next_obs, reward, *_ = env.step(action)
        episodes.add(obs, action, reward, done=step == steps - 1)
        obs = next_obs
    recorder.end_episode()
    return env, recorder, live_frames


def live_frame(env) -> np.ndarray:
    if isinstance(env, utils.MetaWorldEnv):
        return np.asarray(Image.fromarray(env.render()).resize((320, 240), Image.Resampling.BILINEAR))
    return env.render(height=240, width=320, camera_id=0)


def decode_strip(jpeg: bytes, frames: int) -> np.ndarray:
    strip = np.asarray(Image.open(BytesIO(jpeg)).convert("RGB"), dtype=np.float64)
    assert strip.shape[0] == frames * FRAME_HEIGHT
    return strip.reshape(frames, FRAME_HEIGHT, *strip.shape[1:])


@pytest.mark.parametrize("env_name", ["walker_walk", "metaworld_drawer-open-v3"])
def test_a_segment_rendered_after_the_fact_shows_what_the_env_showed_live(env_name):
    _, recorder, live_frames = record_episode(env_name, steps=12)
    layout, states = recorder.segment(0, 4, 6)
    render_env = utils.make_env(env_name, seed=99)  # another layout: the recorded states must override it
    render_env.reset(seed=99)
    own_layout = live_frame(render_env)
    frames = decode_strip(render_segment(render_env, layout, states), 6)
    for offset, frame in enumerate(frames):
        assert changed_pixels(frame, live_frames[4 + offset]) < 0.002  # JPEG noise only
    assert changed_pixels(frames[0], own_layout) > 0.005
    layout_bytes = sum(value.nbytes for value in layout.values())
    assert recorder.nbytes == 12 * recorder.state_size * 4 + layout_bytes


def changed_pixels(frame: np.ndarray, other: np.ndarray) -> float:
    """The share of pixels where some channel differs by more than 40 of 255 (JPEG noise stays below)."""
    return float((np.abs(frame - other.astype(np.float64)).max(-1) > 40).mean())


def test_the_recorder_keeps_the_states_of_exactly_the_episodes_the_queries_come_from():
    env = utils.make_env("walker_walk", 0)
    episodes = EpisodeStore(24, 6, max_episodes=2)
    recorder = SimStateRecorder(env, episodes)
    for _ in range(3):
        obs, _ = env.reset()
        for step in range(3):
            recorder.record()
            action = env.action_space.sample()
            env.step(action)
            episodes.add(obs, action, 0.0, done=step == 2)
        recorder.end_episode()
    assert [episode.index for episode in episodes] == [1, 2]
    assert all(episode.sim is not None for episode in episodes)
    with pytest.raises(KeyError, match="episode 0 is no longer kept"):
        recorder.segment(0, 0, 2)
    restored_episodes = EpisodeStore(24, 6, max_episodes=2)
    restored_episodes.load_state_dict(episodes.state_dict())
    restored = SimStateRecorder(env, restored_episodes)
    restored.load_state_dict(recorder.state_dict())
    np.testing.assert_array_equal(restored.segment(2, 1, 2)[1], recorder.segment(2, 1, 2)[1])


def test_segment_origins_name_the_episode_and_step_each_segment_came_from():
    model = make_reward_model(3, 1, segment=4, data_aug_ratio=0, reward_batch=6, max_reward_buffer_size=2,
                              query_scheme="policy_aligned")  # fmt: skip
    rng = np.random.default_rng(0)
    episodes = [rng.normal(size=(20, 4)).astype(np.float32) for _ in range(3)]
    for sa in episodes:
        for t, row in enumerate(sa):
            model.add_data(row[:3], row[3:], 0.0, t == len(sa) - 1)
    pairs, _, origins = model.select("policy_aligned")
    assert set(origins[..., 0].ravel()) <= {1, 2}  # only the 2 recent episodes are kept
    for query, side in np.ndindex(6, 2):
        episode, start = origins[query, side]
        np.testing.assert_array_equal(pairs[query, side], episodes[episode][start : start + 4])


def query_round(index: int = 0, size: int = 4) -> QueryRound:
    origins = np.arange(size * 4).reshape(size, 2, 2)
    empty = np.zeros((size, 2, 3, 2), np.float32)
    return QueryRound(index, empty, empty[..., 0], origins, opened_step=100, feedback_before=0, feedback_budget=8,
                      first=index == 0)  # fmt: skip


def test_label_store_records_each_answer_once_and_refuses_other_queries(tmp_path):
    store = LabelStore(tmp_path / "labels.sqlite")
    assert store.open_round(query_round()) == [(None, None)] * 4
    assert store.answer(0, 1, "right", "ann", step=120)
    assert not store.answer(0, 1, "left", "bob", step=121)  # already answered: the first answer stays
    assert store.answer(0, 2, "skip", "bob", step=122)
    reopened = LabelStore(tmp_path / "labels.sqlite").open_round(query_round())  # a re-run asks the same round
    assert reopened == [(None, None), ("right", 1.0), ("skip", None), (None, None)]
    keep, labels = labels_of([("left", 0.0), ("right", 1.0), ("skip", None), ("equal", 0.5)])
    np.testing.assert_array_equal(keep, [0, 1, 3])
    np.testing.assert_array_equal(labels, [0.0, 1.0, 0.5])
    changed = query_round()
    changed.origins[2, 1] = (7, 30)
    with pytest.raises(RuntimeError, match=r"round 0 query 2 is episode 8 step 9 vs episode 7 step 30 in this run"):
        store.open_round(changed)


def test_replay_refuses_a_run_whose_queries_differ(tmp_path):
    store = LabelStore(tmp_path / "labels.sqlite")
    store.open_round(query_round())
    for query in range(4):
        store.answer(0, query, "left", "", step=100)
    replay = ReplayTeacher(TeacherConfig(teacher_type="replay", labels_from=str(tmp_path / "labels.sqlite")))
    replay.ask(query_round())
    np.testing.assert_array_equal(replay.answers(100)[0], [0, 1, 2, 3])
    with pytest.raises(RuntimeError, match="round 1 query 0 is episode 0 step 1 vs episode 2 step 3 in this run "
                                           "but absent in"):  # fmt: skip
        replay.ask(query_round(index=1))


@pytest.fixture
def open_teacher(tmp_path):
    """A HumanTeacher with a real walker episode, its server up, and one round of 6 queries open."""
    _, recorder, _ = record_episode("walker_walk", steps=30)
    cfg = TeacherConfig(teacher_type="human", human_port=0, human_timeout=60.0)
    teacher = HumanTeacher(cfg, tmp_path, "walker_walk", 0, recorder, segment=5)
    origins = np.array([[[0, 2 * q], [0, 2 * q + 10]] for q in range(6)])
    empty = np.zeros((6, 2, 5, 30), np.float32)
    teacher.ask(QueryRound(0, empty, empty[..., 0], origins, 500, 0, 6, first=True))
    yield teacher
    teacher.close()


def get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def post_answer(base: str, token: str, round_index: int, query: int, answer: str, labeller: str = "") -> int:
    body = {"round": round_index, "query": query, "answer": answer, "labeller": labeller}
    request = urllib.request.Request(f"{base}/api/answer?token={token}", method="POST", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})  # fmt: skip
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


def test_every_request_without_the_token_is_refused(open_teacher):
    base, token = open_teacher.url.split("/?token=")
    assert get(open_teacher.url)[0] == 200
    for path in ["/", "/api/next", "/api/video/0/0/0", f"/api/next?token={token[:-1]}"]:
        assert get(base + path)[0] == 403
    assert post_answer(base, "", 0, 0, "left") == 403
    assert post_answer(base, token, 0, 0, "maybe") == 400


def test_two_labellers_never_get_or_record_the_same_query(open_teacher):
    base, token = open_teacher.url.split("/?token=")
    claimed: list[tuple[str, int]] = []

    def label(name: str) -> None:
        while True:
            _, body = get(f"{base}/api/next?token={token}")
            query = json.loads(body)
            if "query" not in query:
                if "6 of 6" in query["waiting"]:
                    return
                time.sleep(0.05)
                continue
            assert get(f"{base}/api/video/0/{query['query']}/1?token={token}")[0] == 200
            claimed.append((name, query["query"]))
            assert post_answer(base, token, 0, query["query"], "left" if name == "ann" else "right", name) == 200

    threads = [threading.Thread(target=label, args=(name,)) for name in ("ann", "bob")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert sorted(query for _, query in claimed) == list(range(6))  # each served once, to one of them
    rows = open_teacher.store.db.execute("SELECT query, answer, labeller FROM queries ORDER BY query").fetchall()
    assert rows == [
        (query, "left" if name == "ann" else "right", name) for name, query in sorted(claimed, key=lambda c: c[1])
    ]
    assert post_answer(base, token, 0, 0, "right") == 409  # answered queries stay answered
    keep, labels = open_teacher.answers(600)
    np.testing.assert_array_equal(keep, range(6))
    np.testing.assert_array_equal(
        labels, [0.0 if name == "ann" else 1.0 for name, _ in sorted(claimed, key=lambda c: c[1])]
    )


def test_an_unanswered_claim_goes_back_to_the_pool_after_the_timeout(open_teacher):
    while open_teacher.claim() is None:  # the first query once it is rendered
        open_teacher.wait(0.1)
    second = open_teacher.claim()
    assert second is None or second["query"] != 0
    open_teacher.cfg = TeacherConfig(teacher_type="human", human_port=0, human_timeout=0.001)
    time.sleep(0.01)
    assert open_teacher.claim()["query"] == 0


def test_a_port_in_use_is_refused_with_one_line(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        _, recorder, _ = record_episode("walker_walk", steps=10)
        refused = f"human_port={port} on human_host=127.0.0.1 could not be opened .*; allowed: a free port"
        with pytest.raises(TeacherError, match=refused):  # when the run starts, not at its first round
            HumanTeacher(TeacherConfig(teacher_type="human", human_port=port), tmp_path, "walker_walk", 0, recorder,
                         segment=5)  # fmt: skip
