"""The pieces of `teacher=human` with real environments and the real server: simulator states and rendering after
the fact (DMC and Meta-World), the segment origins a person's answers are filed under, labels.sqlite (also on a
full disk), the claim pool with two labellers, tabs that close or take over, what the page is told, the token, and
every malformed request. tests/test_human_browser.py drives whole runs in a real browser."""

from __future__ import annotations

import dataclasses
import http.client
import json
import os
import re
import socket
import sqlite3
import stat
import threading
import time
import urllib.error
import urllib.request
from contextlib import closing
from io import BytesIO

import gymnasium
import mujoco
import numpy as np
import pytest
from conftest import fill, make_reward_model, small_filesystem
from PIL import Image

import utils
from config_schema import TeacherConfig
from episodes import EpisodeStore
from gymnasium_env import GymnasiumEnv
from human_teacher import (
    FRAME_HEIGHT,
    HumanTeacher,
    LabelStore,
    ReplayTeacher,
    SimStateRecorder,
    labels_of,
    render_segment,
)
from labelling_app import MAX_BODY_BYTES
from run_dir import URL_NAME
from task_goals import GYMNASIUM_FALLBACK, GYMNASIUM_GOALS, TASK_GOALS, describe_task
from teacher import ANSWER_LABELS, QueryRound, TeacherError
from utils import WriteError


def record_episode(env_name: str, steps: int, seed: int = 0) -> tuple[object, SimStateRecorder, list[np.ndarray]]:
    """Step a real env with random actions for one `steps`-step episode, storing it and recording its states as the
    training loop does, and rendering each observed state live."""
    env = utils.make_env(env_name, seed)
    obs, _ = env.reset(seed=seed)
    episodes = EpisodeStore(env.observation_space.shape[0], env.action_space.shape[0], max_episodes=3)
    recorder = SimStateRecorder(env, episodes)
    live_frames = []
    for step in range(steps):
        live_frames.append(live_frame(env))
        action = env.action_space.sample()
        next_obs, reward, *_ = recorder.step(action)
        episodes.add(obs, action, reward, done=step == steps - 1)
        obs = next_obs
    recorder.end_episode()
    return env, recorder, live_frames


def live_frame(env) -> np.ndarray:
    if isinstance(env, GymnasiumEnv):
        # Gymnasium draws after mj_step without recomputing the kinematics, so its frames lag the state by one
        # physics substep; a person's segment shows the recorded state itself.
        mujoco.mj_forward(*env.sim)
    if isinstance(env, utils.MetaWorldEnv):
        return np.asarray(Image.fromarray(env.render()).resize((320, 240), Image.Resampling.BILINEAR))
    return env.render(height=240, width=320)


def decode_strip(jpeg: bytes, frames: int) -> np.ndarray:
    strip = np.asarray(Image.open(BytesIO(jpeg)).convert("RGB"), dtype=np.float64)
    assert strip.shape[0] == frames * FRAME_HEIGHT
    return strip.reshape(frames, FRAME_HEIGHT, *strip.shape[1:])


@pytest.mark.parametrize("env_name", ["walker_walk", "metaworld_drawer-open-v3", "HalfCheetah-v5"])
def test_a_segment_rendered_after_the_fact_shows_what_the_env_showed_live(env_name):
    _, recorder, live_frames = record_episode(env_name, steps=12)
    # Gymnasium's camera stays where its first frame put it, and a segment is framed at its first state: live,
    # that is the episode's first.
    start = 0 if env_name == "HalfCheetah-v5" else 4
    layout, states = recorder.segment(0, start, 6)
    reports_success = recorder.success(0, start, 6)  # Meta-World reports a success at every step, the others none
    assert (reports_success is None) == (not env_name.startswith("metaworld"))
    assert reports_success is None or reports_success.shape == (6,)
    render_env = utils.make_env(env_name, seed=99)  # another layout: the recorded states must override it
    render_env.reset(seed=99)
    own_layout = live_frame(render_env)
    frames = decode_strip(render_segment(render_env, layout, states), 6)
    for offset, frame in enumerate(frames):
        assert changed_pixels(frame, live_frames[start + offset]) < 0.002  # JPEG noise only
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
    assert store.answer(1, 2, "right", "ann", step=120)  # round 1, query 2: numbered from 1, as the page shows them
    assert not store.answer(1, 2, "left", "bob", step=121)  # already answered: the first answer stays
    assert store.answer(1, 3, "skip", "bob", step=122)
    reopened = LabelStore(tmp_path / "labels.sqlite").open_round(query_round())  # a re-run asks the same round
    assert reopened == [(None, None), ("right", 1.0), ("skip", None), (None, None)]
    keep, labels = labels_of([("left", 0.0), ("right", 1.0), ("skip", None), ("equal", 0.5)])
    np.testing.assert_array_equal(keep, [0, 1, 3])
    np.testing.assert_array_equal(labels, [0.0, 1.0, 0.5])
    changed = query_round()
    changed.origins[2, 1] = (7, 30)
    with pytest.raises(RuntimeError, match=r"round 1 query 3 is episode 8 step 9 vs episode 7 step 30 in this run"):
        store.open_round(changed)


def test_replay_refuses_a_run_whose_queries_differ(tmp_path):
    store = LabelStore(tmp_path / "labels.sqlite")
    store.open_round(query_round())
    for query in range(1, 5):
        store.answer(1, query, "left", "", step=100)
    replay = ReplayTeacher(TeacherConfig(teacher_type="replay", labels_from=str(tmp_path / "labels.sqlite")))
    replay.ask(query_round())
    np.testing.assert_array_equal(replay.answers(100)[0], [0, 1, 2, 3])
    with pytest.raises(RuntimeError, match="round 2 query 1 is episode 0 step 1 vs episode 2 step 3 in this run "
                                           "but absent in"):  # fmt: skip
        replay.ask(query_round(index=1))


def walker_round() -> QueryRound:
    """The first round of 6 queries of 5-step segments of a recorded 30-step walker episode."""
    origins = np.array([[[0, 2 * q], [0, 2 * q + 10]] for q in range(6)])
    empty = np.zeros((6, 2, 5, 30), np.float32)
    return QueryRound(0, empty, empty[..., 0], origins, 500, 0, 6, first=True)


@pytest.fixture
def open_teacher(tmp_path):
    """A HumanTeacher with a real walker episode, its server up, and one round of 6 queries open."""
    _, recorder, _ = record_episode("walker_walk", steps=30)
    cfg = TeacherConfig(teacher_type="human", human_port=0, human_timeout=60.0, human_undo_window=0.0)
    teacher = HumanTeacher(cfg, tmp_path, "walker_walk", 0, recorder, segment=5)
    teacher.ask(walker_round())
    yield teacher
    teacher.close()


def get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def post_answer(base: str, token: str, round_number: int, query: int, answer: str, labeller: str = "",
                tab: str = "") -> int:  # fmt: skip
    body = {"round": round_number, "query": query, "answer": answer, "labeller": labeller, "tab": tab}
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
    for path in ["/", "/api/task", "/api/next", "/api/video/1/1/0", f"/api/next?token={token[:-1]}"]:
        assert get(base + path)[0] == 403
    assert post_answer(base, "", 1, 1, "left") == 403
    assert post_answer(base, token, 1, 1, "maybe") == 400


def test_two_labellers_never_get_or_record_the_same_query(open_teacher):
    base, token = open_teacher.url.split("/?token=")
    claimed: list[tuple[str, int]] = []

    def label(name: str) -> None:
        while True:
            _, body = get(f"{base}/api/next?token={token}")
            query = json.loads(body)
            if "query" not in query:
                if "6 of 6" in query["message"]:
                    return
                time.sleep(0.05)
                continue
            assert get(f"{base}/api/video/1/{query['query']}/1?token={token}")[0] == 200
            claimed.append((name, query["query"]))
            assert post_answer(base, token, 1, query["query"], "left" if name == "ann" else "right", name) == 200

    threads = [threading.Thread(target=label, args=(name,)) for name in ("ann", "bob")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert sorted(query for _, query in claimed) == list(range(1, 7))  # each served once, to one of them
    rows = open_teacher.store.db.execute("SELECT query, answer, labeller FROM queries ORDER BY query").fetchall()
    assert rows == [
        (query, "left" if name == "ann" else "right", name) for name, query in sorted(claimed, key=lambda c: c[1])
    ]
    assert post_answer(base, token, 1, 1, "right") == 409  # answered queries stay answered
    keep, labels = open_teacher.answers(600)
    np.testing.assert_array_equal(keep, range(6))
    np.testing.assert_array_equal(
        labels, [0.0 if name == "ann" else 1.0 for name, _ in sorted(claimed, key=lambda c: c[1])]
    )


def test_an_unanswered_claim_goes_back_to_the_pool_after_the_timeout(open_teacher):
    while open_teacher.claim() is None:  # the first query once it is rendered
        open_teacher.wait(0.1)
    second = open_teacher.claim()
    assert second is None or second["query"] != 1
    open_teacher.cfg = TeacherConfig(teacher_type="human", human_port=0, human_timeout=0.001)
    time.sleep(0.01)
    assert open_teacher.claim()["query"] == 1


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


def base_and_token(teacher: HumanTeacher) -> tuple[str, str]:
    base, token = teacher.url.split("/?token=")
    return base, token


def post(base: str, token: str, path: str, body: bytes, headers: dict | None = None) -> tuple[int, dict]:
    """POST raw bytes (urllib sends a Content-Length); the status and the JSON body of the answer."""
    request = urllib.request.Request(f"{base}{path}?token={token}", method="POST", data=body, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def post_chunked(base: str, token: str, path: str, chunks: list[bytes]) -> int:
    """POST a body in chunks, without a Content-Length: the server cannot know its size in advance."""
    host, port = base.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        connection.request("POST", f"{path}?token={token}", body=iter(chunks), encode_chunked=True)
        return connection.getresponse().status
    finally:
        connection.close()


ANSWER = {"round": 1, "query": 1, "answer": "left"}
# Bodies the page never sends: each gets a 4xx and a one-line JSON error.
BAD_BODIES = [
    (b"{not json", 400, "not JSON"),
    (b"", 400, "not JSON"),
    (b"[1, 2]", 400, "a JSON list"),
    (b'"left"', 400, "a JSON str"),
    (b"null", 400, "a JSON NoneType"),
    (json.dumps({**ANSWER, "answer": ["left"]}).encode(), 400, 'answer=["left"] is invalid: allowed: left, right'),
    (json.dumps({**ANSWER, "answer": "maybe"}).encode(), 400, 'answer="maybe" is invalid'),
    (b'{"round": 1e400, "query": 1, "answer": "left"}', 400, "round=Infinity is invalid: allowed: an integer >= 1"),
    (json.dumps({**ANSWER, "round": "0"}).encode(), 400, 'round="0" is invalid'),
    (json.dumps({**ANSWER, "query": True}).encode(), 400, "query=true is invalid"),
    (json.dumps({**ANSWER, "query": -1}).encode(), 400, "query=-1 is invalid"),
    (json.dumps({**ANSWER, "query": 0}).encode(), 400, "query=0 is invalid"),  # numbered from 1
    (json.dumps({"answer": "left"}).encode(), 400, "round=null is invalid"),
    (json.dumps({**ANSWER, "labeller": 5}).encode(), 400, "labeller=5 is invalid: allowed: a string"),
    ('{"round": 0, "query": 0, "answer": "left", "labeller": "é"}'.encode("latin-1"), 400, "not UTF-8"),
    (b"{" + b" " * MAX_BODY_BYTES + b"}", 413, f"at most {MAX_BODY_BYTES} bytes"),
]


@pytest.mark.parametrize(("body", "status", "error"), BAD_BODIES, ids=[error for _, _, error in BAD_BODIES])
def test_a_malformed_answer_gets_a_4xx_with_one_json_line_and_no_traceback(open_teacher, capfd, body, status, error):
    base, token = base_and_token(open_teacher)
    capfd.readouterr()
    code, reply = post(base, token, "/api/answer", body, {"Content-Type": "application/json"})
    assert (code, list(reply)) == (status, ["error"]) and error in reply["error"], reply
    assert "\n" not in reply["error"]
    console = capfd.readouterr().err
    assert "Traceback" not in console
    assert console.splitlines() == [f"labelling page: refused POST /api/answer ({status}): {reply['error']}"]
    assert open_teacher.store.round_rows(1)[0][4] is None  # nothing recorded


def test_oversized_chunked_bodies_unknown_queries_and_second_answers_are_refused(open_teacher, capfd):
    base, token = base_and_token(open_teacher)
    assert post_chunked(base, token, "/api/answer", [b"{" + b" " * 40_000] * 2) == 413
    assert post_chunked(base, token, "/api/release", [b"[]"]) == 400
    while open_teacher.claim() is None:  # the first query once it is rendered
        open_teacher.wait(0.1)
    assert post_answer(base, token, 1, 99, "left") == 404  # never asked
    assert post_answer(base, token, 4, 1, "left") == 404
    assert post_answer(base, token, 1, 1, "left") == 200
    assert post_answer(base, token, 1, 1, "right") == 409
    assert get(f"{base}/api/answer?token={token}")[0] == 405
    assert get(f"{base}/api/video/1/99/0?token={token}")[0] == 404
    console = capfd.readouterr().err
    assert "Traceback" not in console and len(console.splitlines()) <= 4  # 413, 400, 405 only
    assert '<link rel="icon" href="data:,">' in get(open_teacher.url)[1].decode()  # no request for /favicon.ico


def test_every_task_the_project_accepts_has_a_goal_a_person_can_read():
    # A family of tasks added to utils later cannot reach the labelling page without its goals
    assert set(TASK_GOALS) == set(utils.env_names())
    for name, goal in TASK_GOALS.items():
        assert goal[0].isupper() and goal.endswith(".") and "\n" not in goal and len(goal) <= 110, name
    with pytest.warns(UserWarning, match="running metaworld_drawer-open-v3"):
        task = describe_task("metaworld_drawer-open-v2")
    assert task == ("metaworld_drawer-open-v3", "Meta-World", "Pull the drawer open by its handle.")
    # Gymnasium: every MuJoCo task it registers by name, any other task the fallback
    mujoco = {spec.id.split("-v")[0] for spec in gymnasium.registry.values()
              if str(spec.entry_point).startswith("gymnasium.envs.mujoco")}  # fmt: skip
    assert set(GYMNASIUM_GOALS) == mujoco
    assert describe_task("Hopper-v5") == ("Hopper-v5", "Gymnasium", GYMNASIUM_GOALS["Hopper"])
    assert describe_task("Pendulum-v1").goal == GYMNASIUM_FALLBACK


def test_the_page_names_the_task_and_its_goal_or_the_study_s_own_instruction(open_teacher, tmp_path):
    base, token = base_and_token(open_teacher)
    walker = "Walk forward (to the right) at a steady pace while staying upright."
    assert json.loads(get(f"{base}/api/task?token={token}")[1]) == {
        "name": "walker_walk", "family": "DeepMind Control", "goal": walker, "instruction": walker,
    }  # fmt: skip
    own = "Prefer the clip in which the walker looks more natural, whatever its speed."
    cfg = TeacherConfig(teacher_type="human", human_port=0, human_instruction=own)
    (tmp_path / "own").mkdir()
    study = HumanTeacher(cfg, tmp_path / "own", "walker_walk", 0, open_teacher.recorder, segment=5)
    assert study.task() == {"name": "walker_walk", "family": "DeepMind Control", "goal": walker, "instruction": own}
    study.abort()


def undo(base: str, token: str, round_number: int, query: int, tab: str) -> tuple[int, dict]:
    return post(base, token, "/api/undo", json.dumps({"round": round_number, "query": query, "tab": tab}).encode())


def test_a_tab_undoes_its_last_answer_until_the_run_takes_the_round_in(open_teacher, tmp_path):
    """Also: a re-run never asks an undone answer's query as answered, and a replay gets the final answers."""
    base, token = base_and_token(open_teacher)
    open_teacher.cfg = dataclasses.replace(open_teacher.cfg, human_undo_window=3600.0)
    all_rendered(open_teacher)
    first = open_teacher.claim("ann")["query"]
    assert post_answer(base, token, 1, first, "left", "Ann", tab="ann") == 200
    assert open_teacher.page_state("ann")["undoable"] == {"round": 1, "query": first}
    moved_on = open_teacher.claim("ann")["query"]
    # Only the tab that gave an answer may take it back, and only its last one
    assert undo(base, token, 1, first, "bob") == (409, {"error": f"not undone: query {first} of round 1 is not this "
                                                                 "tab's last answer"})  # fmt: skip
    assert undo(base, token, 1, 99, "ann") == (404, {"error": "round 1 has no query 99"})
    code, again = undo(base, token, 1, first, "ann")
    assert code == 200 and (again["round"], again["query"], again["undoable"]) == (1, first, None)
    assert again["progress"]["round_answered"] == 0
    assert open_teacher.claim("ann")["query"] == first  # the tab's own to answer again
    assert open_teacher.claim("bob")["query"] == moved_on  # the one it had moved on to went back to the pool
    assert undo(base, token, 1, first, "ann")[0] == 409  # nothing left to undo
    assert open_teacher.store.db.execute("SELECT round, query, answer, labeller FROM undone").fetchall() == [
        (1, first, "left", "Ann")
    ]
    rerun = LabelStore(tmp_path / "labels.sqlite")  # what a run killed now and started again would find
    assert rerun.open_round(walker_round())[first - 1] == (None, None)
    rerun.db.close()

    assert post_answer(base, token, 1, moved_on, "equal", tab="bob") == 200
    while (query := open_teacher.claim("ann")) is not None:
        last = query["query"]
        assert post_answer(base, token, 1, last, "right" if last == first else "equal", tab="ann") == 200
    # Complete, but inside the undo window: the run does not take the round in, and the last answer can be undone
    assert open_teacher.answers(600) is None
    assert "6 of 6 answered, step 600: all answered; the run takes them in 3600 s from now (until then the last " \
           "answer can be undone)" in open_teacher.page_state("ann")["message"]  # fmt: skip
    assert undo(base, token, 1, last, "ann")[0] == 200
    assert open_teacher.answers(600) is None
    assert post_answer(base, token, 1, last, "left", tab="ann") == 200
    open_teacher.cfg = dataclasses.replace(open_teacher.cfg, human_undo_window=0.0)
    keep, labels = open_teacher.answers(600)
    # The run has the answers now: none can be undone, neither through the page nor in the file
    assert undo(base, token, 1, last, "ann") == (409, {"error": "not undone: the run has already learnt from round 1"})
    assert not open_teacher.store.undo(1, last)
    stored = {number: row[4] for number, row in enumerate(open_teacher.store.round_rows(1), start=1)}
    replay = ReplayTeacher(TeacherConfig(teacher_type="replay", labels_from=str(tmp_path / "labels.sqlite")))
    replay.ask(walker_round())
    replayed_keep, replayed = replay.answers(0)
    replay.close()
    np.testing.assert_array_equal(replayed_keep, keep)
    np.testing.assert_array_equal(replayed, labels)
    assert (stored[first], stored[moved_on], stored[last]) == ("right", "equal", "left")
    np.testing.assert_array_equal(labels, [ANSWER_LABELS[stored[number]] for number in sorted(stored)])


OLD_SCHEMA = """
CREATE TABLE queries (
    round INTEGER NOT NULL, query INTEGER NOT NULL,
    episode_0 INTEGER NOT NULL, start_0 INTEGER NOT NULL, episode_1 INTEGER NOT NULL, start_1 INTEGER NOT NULL,
    answer TEXT, label REAL, labeller TEXT, answered_at REAL, step INTEGER,
    PRIMARY KEY (round, query));
CREATE TABLE rounds (
    round INTEGER PRIMARY KEY, size INTEGER NOT NULL, opened_step INTEGER NOT NULL, completed_step INTEGER);
"""


def test_a_labels_file_numbered_from_0_still_replays_and_a_run_renumbers_it(tmp_path):
    """labels.sqlite as runs wrote it before rounds and queries were numbered from 1 (format 0)."""
    path = tmp_path / "labels.sqlite"
    answers = ["left", "right", "skip", "equal"]
    with closing(sqlite3.connect(path)) as db, db:
        db.executescript(OLD_SCHEMA)
        for index in (0, 1):
            origins = query_round(index).origins.reshape(4, 4).tolist()
            db.execute("INSERT INTO rounds VALUES (?, 4, 100, 200)", (index,))
            db.executemany("INSERT INTO queries VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'ann', 0.0, 150)",
                           [(index, query, *origins[query], answers[query], ANSWER_LABELS[answers[query]])
                            for query in range(4)])  # fmt: skip
    replay = ReplayTeacher(TeacherConfig(teacher_type="replay", labels_from=str(path)))
    for index in (0, 1):
        replay.ask(query_round(index))
        keep, labels = replay.answers(0)
        np.testing.assert_array_equal(keep, [0, 1, 3])
        np.testing.assert_array_equal(labels, [0.0, 1.0, 0.5])
    replay.close()
    with pytest.raises(TeacherError, match="round 3 query 1 is episode 0 step 1 vs episode 2 step 3 in this run but "
                                           "absent in"):  # fmt: skip
        ReplayTeacher(TeacherConfig(teacher_type="replay", labels_from=str(path))).ask(query_round(2))

    store = LabelStore(path)  # a run that goes on with the file: renumbered from 1 in place
    assert store.db.execute("PRAGMA user_version").fetchone()[0] == 1
    assert store.db.execute("SELECT round, query, answer FROM queries ORDER BY round, query").fetchall() == [
        (number, query, answers[query - 1]) for number in (1, 2) for query in range(1, 5)
    ]
    assert store.open_round(query_round(1)) == [(answer, ANSWER_LABELS[answer]) for answer in answers]
    assert store.completed_step(2) == 200
    store.db.close()
    with closing(sqlite3.connect(path)) as db, db:
        db.execute("PRAGMA user_version = 2")
    with pytest.raises(TeacherError, match="has labels format 2, written by a newer version of this code"):
        LabelStore(path)


def test_a_meta_world_query_says_from_when_each_clip_succeeds(tmp_path):
    _, recorder, _ = record_episode("metaworld_drawer-open-v3", steps=30)
    success = recorder.episodes.episode(0).sim[2]
    success[12:] = True  # as if the drawer were open from step 12 on: random actions seldom open it
    teacher = HumanTeacher(TeacherConfig(teacher_type="human", human_port=0), tmp_path, "metaworld_drawer-open-v3", 0,
                           recorder, segment=5)  # fmt: skip
    origins = np.array([[[0, 10], [0, 0]]])  # left: steps 10-14, a success from its third frame; right: steps 0-4
    empty = np.zeros((1, 2, 5, 43), np.float32)
    teacher.ask(QueryRound(0, empty, empty[..., 0], origins, 500, 0, 1, first=True))
    while (query := teacher.claim("tab")) is None:
        teacher.wait(0.1)
    teacher.close()
    assert query["success"] == [2, None]


def all_rendered(teacher: HumanTeacher) -> None:
    deadline = time.monotonic() + 120
    while "still rendering" in teacher.page_state()["message"] or teacher.claim("probe") is None:
        assert time.monotonic() < deadline
        teacher.wait(0.1)
    teacher.release(1, teacher.claim("probe")["query"], "probe")


def test_a_closed_tab_gives_its_query_back_and_another_tab_can_take_one_over(open_teacher):
    base, token = base_and_token(open_teacher)
    all_rendered(open_teacher)
    held = [open_teacher.claim(f"tab{index}")["query"] for index in range(6)]
    assert sorted(held) == list(range(1, 7))
    assert open_teacher.claim("tab0")["query"] == held[0]  # a tab that asks again gets its own query again
    assert open_teacher.claim("late") is None
    state = open_teacher.page_state("late")
    back = re.search(r"6 open in other tabs \(or in closed ones: the first goes back to the pool in (\d+) min "
                     r"(\d+) s\), or take one over; the run waits for them$", state["message"])  # fmt: skip
    assert state["held"] == 6 and back and 50 <= 60 * int(back[1]) + int(back[2]) <= 60, state["message"]
    taken = open_teacher.claim("late", take_over=True, name="Bob")
    assert taken["query"] == held[1]  # the longest held (tab0 asked again)
    # The tab it was taken from hears so at its next request, once, with where it went
    notice = open_teacher.page_state("tab1")["taken"]
    assert notice == {"round": 1, "query": held[1], "message": f"query {held[1]} of round 1 was taken over by "
                      "another tab (Bob), which answers it now; this tab stopped showing it"}  # fmt: skip
    assert open_teacher.page_state("tab1")["taken"] is None

    def release(query: int, tab: str) -> bool:
        code, reply = post(base, token, "/api/release", json.dumps({"round": 1, "query": query, "tab": tab}).encode())
        assert code == 200
        return reply["released"]

    assert not release(held[2], "tab3")  # only the tab that holds a query gives it back
    assert release(held[2], "tab2")  # the page's sendBeacon as its tab closes
    assert open_teacher.claim("another")["query"] == held[2]  # at once, not after human_timeout
    assert open_teacher.answer(1, held[1], "left", "", "late") == "recorded"  # taken over and answered here
    assert open_teacher.answer(1, held[1], "right", "", "tab1") == "answered"  # the first tab's answer comes too late
    assert open_teacher.answer(1, 7, "right", "") == "missing"
    late_answer = json.dumps({"round": 1, "query": held[1], "answer": "right"}).encode()
    code, reply = post(base, token, "/api/answer", late_answer)
    assert (code, reply["error"]) == (409, f"query {held[1]} of round 1 was already answered in another tab; that "
                                           "answer stays")  # fmt: skip
    for query in (held[0], held[2], held[3], held[4]):
        assert open_teacher.answer(1, query, "equal", "") == "recorded"
    assert re.fullmatch(r"round 1, 5 of 6 answered, step 500: 1 open in another tab \(or in a closed one: it goes "
                        r"back to the pool in \d min \d+ s\), or take one over; the run waits for them",
                        open_teacher.page_state("late")["message"])  # fmt: skip


def test_the_page_shows_the_current_step_and_learns_that_the_run_finished(open_teacher):
    base, token = base_and_token(open_teacher)
    steps = iter(range(700, 10_000))
    open_teacher.step_source = lambda: next(steps)
    assert "step 700:" in open_teacher.page_state()["message"]
    assert "step 701:" in open_teacher.page_state()["message"]
    seen: list[dict] = []

    def poll() -> None:  # an open tab, asking as the page does while it shows a query
        while not seen or seen[-1].get("state") != "finished":
            seen.append(json.loads(get(f"{base}/api/state?token={token}&tab=open")[1]))
            time.sleep(0.2)

    tab = threading.Thread(target=poll)
    tab.start()
    while not seen:
        time.sleep(0.05)
    open_teacher.close()  # the run's end: the tab is told before the page goes
    tab.join(timeout=30)
    finished = seen[-1]
    assert finished["state"] == "finished" and re.fullmatch(
        r"training finished at step \d+: 0 queries answered \(0 labels, 0 skipped\); you can close this page",
        finished["message"],
    )
    with pytest.raises(urllib.error.URLError):
        get(f"{base}/api/next?token={token}")


def test_the_url_is_in_a_file_only_its_owner_can_read_while_the_page_is_up(open_teacher, tmp_path):
    url_file = tmp_path / URL_NAME
    assert url_file.read_text() == f"{open_teacher.url}\n"
    assert stat.S_IMODE(url_file.stat().st_mode) == 0o600
    open_teacher.close()
    assert not url_file.exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small filesystem needs root (CI runs as root)")
def test_a_full_disk_keeps_every_answer_given_before_it(tmp_path):
    with small_filesystem(tmp_path / "fs", size="2m") as filesystem:
        store = LabelStore(filesystem / "labels.sqlite")
        store.open_round(query_round(size=4))
        assert store.answer(1, 1, "left", "ann", step=100)
        filler = fill(filesystem)
        with pytest.raises(WriteError) as error:
            for query in (2, 3, 4):  # the write-ahead log grows by a page per answer, and there is none left
                store.answer(1, query, "right", "ann", step=101)
        assert str(error.value).startswith(f"cannot write {filesystem / 'labels.sqlite'}: database or disk is full")
        store.db.close()
        filler.unlink()
        reopened = LabelStore(filesystem / "labels.sqlite")
        answers = reopened.open_round(query_round(size=4))
        reopened.db.close()
        assert answers[0] == ("left", 0.0) and answers.count(("right", 1.0)) < 3
