"""A person as the teacher (`teacher=human`), and the replay of a person's answers (`teacher=replay`).

Each query round is put to people through the labelling page (labelling_app.py). Segments are rendered after the
fact: `SimStateRecorder` keeps the simulator state of every step of the episodes the reward model keeps, and a
render thread sets a second copy of the environment to those states, one query at a time, so the first query is
on screen while the rest of the round renders. Every answer is written at once to `labels.sqlite` in the run
directory, keyed by round and query with the two segments' episode and start step: a re-run of the same command
asks only what is still unanswered, and `teacher=replay` re-trains from the file without the person.

Answers map onto the scripted teacher's labels (teacher.py): left 0 (σ0 preferred), right 1, equal 0.5, and
skip leaves the query out, so the reward model and every query scheme handle them as they do B-Pref's.
"""

from __future__ import annotations

import math
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path
from typing import Any

import mujoco
import numpy as np
from PIL import Image

import utils
from config_schema import TeacherConfig
from episodes import EpisodeStore
from labelling_app import LabellingServer, bind
from run_dir import LABELS_NAME, publish_url, withdraw_url
from teacher import ANSWER_LABELS, Answers, QueryRound, TeacherError
from utils import WriteError

SIM_STATE = mujoco.mjtState.mjSTATE_INTEGRATION  # positions, velocities, actuator and mocap state: what is drawn
# Model fields a reset may move: Meta-World places each episode's objects (body_pos) and goal (site_pos) there.
LAYOUT_FIELDS = ("body_pos", "body_quat", "site_pos")
Layout = dict[str, np.ndarray]
FRAME_HEIGHT, FRAME_WIDTH = 240, 320
JPEG_QUALITY = 80
PAGE_SEEN_S = 10.0  # a tab that asked this recently is open: at the end of the run it is told so
FINISH_WAIT_S = 3.0  # how long the end of a run waits for open tabs to learn that it finished (they ask every 1 s)

SCHEMA = """
CREATE TABLE IF NOT EXISTS queries (
    round INTEGER NOT NULL, query INTEGER NOT NULL,
    episode_0 INTEGER NOT NULL, start_0 INTEGER NOT NULL, episode_1 INTEGER NOT NULL, start_1 INTEGER NOT NULL,
    answer TEXT, label REAL, labeller TEXT, answered_at REAL, step INTEGER,
    PRIMARY KEY (round, query));
CREATE TABLE IF NOT EXISTS rounds (
    round INTEGER PRIMARY KEY, size INTEGER NOT NULL, opened_step INTEGER NOT NULL, completed_step INTEGER);
"""


class SimStateRecorder:
    """The simulator state before every step of the episode being collected, and its layout (LAYOUT_FIELDS). When
    the episode ends, both go into the episode store beside its (s, a) rows, so a person's segments come from exactly
    the episodes the queries come from, kept and numbered in one place."""

    def __init__(self, env: Any, episodes: EpisodeStore) -> None:
        self.model, self.data = env.sim
        self.episodes = episodes
        self.state_size = mujoco.mj_stateSize(self.model, SIM_STATE)
        self._states: list[np.ndarray] = []
        self._layout = self.layout()

    def layout(self) -> Layout:
        return {name: getattr(self.model, name).copy() for name in LAYOUT_FIELDS}

    def record(self) -> None:
        """Keep the current state: call before each env.step, so state t is the one observation t shows."""
        if not self._states:
            self._layout = self.layout()
        state = np.empty(self.state_size)
        mujoco.mj_getState(self.model, self.data, state, SIM_STATE)
        self._states.append(state.astype(np.float32))  # half the memory; float32 is exact enough to draw

    def end_episode(self) -> None:
        """Attach the states to the episode the store has just closed."""
        self.episodes.episodes[-1].sim = (self._layout, np.stack(self._states))
        self._states = []

    def segment(self, episode: int, start: int, length: int) -> tuple[Layout, np.ndarray]:
        """(layout, states [length, state size]) of one stored segment; KeyError once its episode is dropped."""
        layout, states = self.episodes.episode(episode).sim
        return layout, states[start : start + length]

    @property
    def nbytes(self) -> int:
        kept = [episode.sim for episode in self.episodes if episode.sim is not None]
        stored = sum(states.nbytes + sum(map(np.size, layout.values())) * 8 for layout, states in kept)
        return stored + len(self._states) * self.state_size * 4

    def state_dict(self) -> dict[str, Any]:
        return {"open": list(self._states), "layout": self._layout}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._states = list(state["open"])
        self._layout = state["layout"]


def render_segment(env: Any, layout: Layout, states: np.ndarray) -> bytes:
    """The frames of a segment stacked top to bottom in one JPEG, FRAME_HEIGHT x FRAME_WIDTH each: the page draws
    them one at a time, so a query is two requests however long its segments are."""
    model, data = env.sim
    for name, value in layout.items():
        getattr(model, name)[:] = value
    frames = []
    for state in states:
        mujoco.mj_setState(model, data, state.astype(np.float64), SIM_STATE)
        mujoco.mj_forward(model, data)
        if isinstance(env, utils.MetaWorldEnv):  # renders at its own size
            frame = Image.fromarray(env.render()).resize((FRAME_WIDTH, FRAME_HEIGHT), Image.Resampling.BILINEAR)
        else:
            frame = Image.fromarray(env.render(height=FRAME_HEIGHT, width=FRAME_WIDTH, camera_id=0))
        frames.append(np.asarray(frame))
    buffer = BytesIO()
    Image.fromarray(np.concatenate(frames)).save(buffer, format="JPEG", quality=JPEG_QUALITY)
    return buffer.getvalue()


class LabelStore:
    """labels.sqlite: every query asked, and its answer the moment it is given (one transaction per answer)."""

    def __init__(self, path: Path, read_only: bool = False) -> None:
        self.path = path
        uri = f"file:{path}?mode=ro" if read_only else f"file:{path}"
        self.lock = threading.Lock()  # one connection shared by the training and web threads
        with self.writing():
            self.db = sqlite3.connect(uri, uri=True, check_same_thread=False, isolation_level=None)
            if not read_only:
                self.db.execute("PRAGMA journal_mode=WAL")
                self.db.executescript(SCHEMA)

    @contextmanager
    def writing(self) -> Iterator[None]:
        """A failed write (a full disk, a read-only filesystem) is a WriteError naming the file; every answer
        committed before it stays in the file, and the failed one is rolled back whole."""
        try:
            yield
        except sqlite3.Error as error:
            name = getattr(error, "sqlite_errorname", None)
            raise WriteError(self.path, f"{error} ({name})" if name else str(error)) from None

    def open_round(self, query_round: QueryRound) -> list[tuple[str | None, float | None]]:
        """Record a round's queries (kept as they are when re-asked) and return the (answer, label) of each.

        Raises a one-line RuntimeError naming the first query that differs from what the file holds."""
        origins = query_round.origins.reshape(len(query_round.origins), 4).tolist()
        with self.lock, self.writing():
            self.db.execute("INSERT OR IGNORE INTO rounds VALUES (?, ?, ?, NULL)",
                            (query_round.index, len(origins), query_round.opened_step))  # fmt: skip
            self.db.executemany(
                "INSERT OR IGNORE INTO queries (round, query, episode_0, start_0, episode_1, start_1) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                [(query_round.index, index, *origin) for index, origin in enumerate(origins)],
            )
        stored = self.round_rows(query_round.index)
        check_same_queries(query_round.index, origins, stored, self.path)
        return [(row[4], row[5]) for row in stored]

    def round_rows(self, round_index: int) -> list[tuple]:
        """(episode_0, start_0, episode_1, start_1, answer, label) of each stored query of a round, in order."""
        with self.lock:
            return self.db.execute(
                "SELECT episode_0, start_0, episode_1, start_1, answer, label FROM queries WHERE round = ? "
                "ORDER BY query", (round_index,)).fetchall()  # fmt: skip

    def answer(self, round_index: int, query: int, answer: str, labeller: str, step: int) -> bool:
        """Record an answer unless the query already has one; True when this one was recorded."""
        with self.lock, self.writing():
            cursor = self.db.execute(
                "UPDATE queries SET answer = ?, label = ?, labeller = ?, answered_at = ?, step = ? "
                "WHERE round = ? AND query = ? AND answer IS NULL",
                (answer, ANSWER_LABELS[answer], labeller, time.time(), step, round_index, query),
            )
            return cursor.rowcount == 1

    def asked(self, round_index: int, query: int) -> bool:
        with self.lock:
            return self.db.execute("SELECT 1 FROM queries WHERE round = ? AND query = ?",
                                   (round_index, query)).fetchone() is not None  # fmt: skip

    def complete_round(self, round_index: int, step: int) -> None:
        with self.lock, self.writing():
            self.db.execute("UPDATE rounds SET completed_step = ? WHERE round = ?", (step, round_index))

    def completed_step(self, round_index: int) -> int | None:
        with self.lock:
            row = self.db.execute("SELECT completed_step FROM rounds WHERE round = ?", (round_index,)).fetchone()
        return None if row is None else row[0]


def check_same_queries(round_index: int, origins: list[list[int]], stored: list[tuple], path: Path) -> None:
    """Refuse a round whose queries are not the ones `path` recorded for it."""
    for index in range(max(len(origins), len(stored))):
        here = origins[index] if index < len(origins) else None
        there = list(stored[index][:4]) if index < len(stored) else None
        if here != there:
            raise TeacherError(
                f"round {round_index} query {index} is {_describe(here)} in this run but {_describe(there)} in "
                f"{path}; allowed: the command (seed, config, schedule) that wrote that file"
            )


def _describe(origin: list[int] | None) -> str:
    return "absent" if origin is None else "episode {} step {} vs episode {} step {}".format(*origin)


def labels_of(answers: list[tuple[str | None, float | None]]) -> Answers:
    """B-Pref's (kept indices, labels) of a round's answers: skipped queries are left out."""
    kept = [index for index, (answer, _) in enumerate(answers) if answer != "skip"]
    labels = np.array([answers[index][1] for index in kept], dtype=np.float32)
    return np.array(kept, dtype=np.int64), labels


@dataclass
class OpenQuery:
    video: tuple[bytes, bytes] | None = None  # rendered σ0 and σ1
    claimed_at: float = -np.inf
    claimed_by: str = ""  # the tab that holds it (the page's random id)
    answer: str | None = None


@dataclass
class OpenRound:
    query_round: QueryRound
    queries: list[OpenQuery] = field(default_factory=list)

    @property
    def unanswered(self) -> int:
        return sum(query.answer is None for query in self.queries)


def describe_query(open_round: OpenRound, index: int, frames: int, fps: float, step: int) -> dict[str, Any]:
    """A query as the page shows it: where to fetch its videos, how to play them, and how far the round is."""
    query_round = open_round.query_round
    size = len(open_round.queries)
    used = query_round.feedback_before + size - open_round.unanswered
    return {
        "round": query_round.index,
        "query": index,
        "frames": frames,
        "fps": fps,
        "width": FRAME_WIDTH,
        "height": FRAME_HEIGHT,
        "step": step,
        "progress": f"query {index + 1} of {size}, round {query_round.index + 1}, "
        f"{used} of {query_round.feedback_budget} used",
    }


class SegmentRenderer:
    """Renders the two segments of each query in a thread of its own, with its own copy of the environment and of
    the OpenGL context (a context belongs to the thread that made it), one query at a time, so the first query is on
    screen while the rest of the round renders. `done(open_round, index, videos)` receives each query's videos."""

    def __init__(self, env_name: str, seed: int, done: Callable[[OpenRound, int, tuple[bytes, bytes]], None]) -> None:
        self._env_name, self._seed = env_name, seed
        self._done = done
        self._jobs: queue.Queue[tuple[OpenRound, int, tuple, tuple] | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self.seconds = 0.0  # rendering time since it was last set to 0 (one round's)
        self.failure: TeacherError | None = None  # raised in the training thread, which would wait forever

    def start(self) -> float:
        """Start the thread and return the environment's frame rate."""
        ready: queue.Queue[float | BaseException] = queue.Queue()
        self._thread = threading.Thread(target=self._loop, args=(ready,), daemon=True, name="render")
        self._thread.start()
        fps = ready.get()
        if isinstance(fps, BaseException):
            raise fps
        return fps

    def submit(self, open_round: OpenRound, index: int, side_0: tuple, side_1: tuple) -> None:
        self._jobs.put((open_round, index, side_0, side_1))

    def stop(self) -> None:
        """Drop what is still queued (an async run can end with a round open) and end the thread."""
        while not self._jobs.empty():
            self._jobs.get_nowait()
        self._jobs.put(None)
        if self._thread is not None:
            self._thread.join(timeout=30)

    def _loop(self, ready: queue.Queue) -> None:
        try:
            env = utils.make_env(self._env_name, self._seed)
            env.reset(seed=self._seed)
        except BaseException as error:
            ready.put(error)
            return
        ready.put(float(env.metadata["render_fps"]))
        while (job := self._jobs.get()) is not None:
            open_round, index, side_0, side_1 = job
            start = time.perf_counter()
            try:
                videos = (render_segment(env, *side_0), render_segment(env, *side_1))
            except Exception as error:
                self.failure = TeacherError(f"rendering query {index} failed: {error}")
                return
            self._done(open_round, index, videos)
            self.seconds += time.perf_counter() - start
        env.close()  # in this thread, which holds its OpenGL context


class HumanTeacher:
    """Puts each round to the people on the labelling page; one query goes to one of them at a time, and goes back
    to the pool when its tab releases it (the tab closes) or leaves it unanswered for `human_timeout` seconds.
    Thread-safe: the web app calls `claim`, `page_state`, `video`, `answer` and `release` from its own thread."""

    def __init__(self, cfg: TeacherConfig, work_dir: Path, env_name: str, seed: int, recorder: SimStateRecorder,
                 segment: int) -> None:  # fmt: skip
        bind(cfg.human_host, cfg.human_port).close()  # a port in use fails now, not at the first round
        self.cfg = cfg
        self.work_dir = work_dir
        self.store = LabelStore(work_dir / LABELS_NAME)
        self.recorder = recorder
        self.segment = segment
        self.url: str | None = None
        self.step = 0  # the training step, for the time each answer arrived
        self.step_source: Callable[[], int] | None = None  # the run's current step, for the page (train_QPA.main)
        self._round: OpenRound | None = None
        self._changed = threading.Condition()
        self._renderer = SegmentRenderer(env_name, seed, self._rendered)
        self._server: Any = None
        self._fps = 0.0
        self._failure: Exception | None = None  # a label-store failure, raised in the training thread
        self._tabs: dict[str, float] = {}  # each open tab's last request (time.monotonic)
        self._finished_step: int | None = None
        self._closed = False

    # ---------------------------------------------------------------- the training loop's side
    def set_thres_skip(self, new_margin: float) -> None:
        """A person sets their own bar for skipping."""

    def set_thres_equal(self, new_margin: float) -> None:
        """A person decides when two segments are equally good."""

    def ask(self, query_round: QueryRound) -> None:
        answers = self.store.open_round(query_round)
        open_round = OpenRound(query_round, [OpenQuery(answer=answer) for answer, _ in answers])
        with self._changed:
            self._round = open_round
            self.step = query_round.opened_step
        self._renderer.seconds = 0.0
        for index, query in enumerate(open_round.queries):
            if query.answer is None:
                sides = [self.recorder.segment(*query_round.origins[index, side], self.segment) for side in (0, 1)]
                self._renderer.submit(open_round, index, *sides)
        if open_round.unanswered:
            self._start_server()

    def answers(self, step: int) -> Answers | None:
        """The round's labels once every query is answered, else None."""
        if self._failure is not None or self._renderer.failure is not None:
            raise self._failure or self._renderer.failure
        with self._changed:
            self.step = step
            if self._round is None or self._round.unanswered:
                return None
            open_round, self._round = self._round, None
        self.store.complete_round(open_round.query_round.index, step)
        return labels_of([row[4:] for row in self.store.round_rows(open_round.query_round.index)])

    def wait(self, seconds: float) -> None:
        with self._changed:
            self._changed.wait(seconds)

    def metrics(self, query_round: QueryRound, step: int) -> dict[str, float]:
        """How long the round waited for the person, the simulator states kept, and the round's rendering time."""
        return {"label_wait_steps": step - query_round.opened_step, "sim_state_mb": self.recorder.nbytes / 2**20,
                "render_seconds": self._renderer.seconds}  # fmt: skip

    def state_dict(self) -> dict[str, Any]:
        """A person's answers live in labels.sqlite, the simulator states in the episode store."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Nothing to restore: see state_dict."""

    def progress(self) -> str:
        with self._changed:
            if self._round is None:
                return "no round open"
            size = len(self._round.queries)
            return f"round {self._round.query_round.index + 1}, {size - self._round.unanswered} of {size} answered"

    def current_step(self) -> int:
        return self.step_source() if self.step_source is not None else self.step

    # ---------------------------------------------------------------- the web app's side
    def claim(self, tab: str = "", take_over: bool = False) -> dict[str, Any] | None:
        """The next rendered query for this tab: one it already holds, else one nobody holds (a claim expires after
        human_timeout), else with `take_over` the one another tab has held longest. None when there is none."""
        now = time.monotonic()
        with self._changed:
            self._seen(tab, now)
            if self._round is None or self._finished_step is not None:
                return None
            waiting = [(index, query) for index, query in enumerate(self._round.queries)
                       if query.answer is None and query.video is not None]  # fmt: skip
            held = [(index, query) for index, query in waiting if now - query.claimed_at <= self.cfg.human_timeout]
            mine = [(index, query) for index, query in held if tab and query.claimed_by == tab]
            free = [(index, query) for index, query in waiting if now - query.claimed_at > self.cfg.human_timeout]
            others = sorted((item for item in held if item not in mine), key=lambda item: item[1].claimed_at)
            chosen = mine or free or (others if take_over else [])
            if not chosen:
                return None
            index, query = chosen[0]
            query.claimed_at, query.claimed_by = now, tab
            return describe_query(self._round, index, self.segment, self._fps, self.current_step())

    def release(self, round_index: int, query: int, tab: str) -> bool:
        """The tab that holds a query closed: the query goes back to the pool at once. True when it did."""
        with self._changed:
            open_round = self._round
            if open_round is None or open_round.query_round.index != round_index:
                return False
            if not 0 <= query < len(open_round.queries) or open_round.queries[query].claimed_by != tab or not tab:
                return False
            open_round.queries[query].claimed_at = -np.inf
            self._tabs.pop(tab, None)
            return True

    def page_state(self, tab: str = "") -> dict[str, Any]:
        """What a tab without a query shows: why there is none, whether another tab holds queries it may take over,
        or that the run finished."""
        now = time.monotonic()
        with self._changed:
            self._seen(tab, now)
            step = self.current_step()
            if self._finished_step is not None:
                message = f"training finished at step {self._finished_step}; you can close this page"
                return {"state": "finished", "step": self._finished_step, "held": 0, "message": message}
            if self._round is None:
                return {"state": "waiting", "step": step, "held": 0,
                        "message": f"no queries open: the run is training (step {step}); its next queries will "
                                   "show here"}  # fmt: skip
            open_round = self._round
            unanswered = [query for query in open_round.queries if query.answer is None]
            rendering = sum(query.video is None for query in unanswered)
            held = [query.claimed_at for query in unanswered
                    if query.video is not None and now - query.claimed_at <= self.cfg.human_timeout]  # fmt: skip
        size = len(open_round.queries)
        parts = []
        if held:
            minutes, seconds = divmod(math.ceil(self.cfg.human_timeout - (now - min(held))), 60)
            parts.append(f"{len(held)} open in another tab (or in a closed one: the first goes back to the pool in "
                         f"{minutes} min {seconds} s), or take one over")  # fmt: skip
        if rendering:
            parts.append(f"{rendering} still rendering")
        if not parts:
            parts.append("all answered; the run is taking them in")
        waits = "the run waits for them" if self.cfg.human_mode == "sync" else "the run trains on meanwhile"
        message = (f"round {open_round.query_round.index + 1}, {size - len(unanswered)} of {size} answered, step "
                   f"{step}: {'; '.join(parts)}; {waits}")  # fmt: skip
        return {"state": "waiting", "step": step, "held": len(held), "message": message}

    def _seen(self, tab: str, now: float) -> None:
        if tab:
            self._tabs[tab] = now
            self._changed.notify_all()

    def video(self, round_index: int, query: int, side: int) -> bytes | None:
        with self._changed:
            if self._round is None or self._round.query_round.index != round_index:
                return None
            if not 0 <= query < len(self._round.queries) or side not in (0, 1):
                return None
            video = self._round.queries[query].video
        return None if video is None else video[side]

    def answer(self, round_index: int, query: int, answer: str, labeller: str) -> str:
        """Record an answer of the open round: 'recorded'; 'answered' when the query has an answer already or is
        not open now; 'missing' when no such query was asked. WriteError when labels.sqlite cannot be written (the
        training thread then stops the run)."""
        with self._changed:
            open_round = self._round
            if open_round is not None and open_round.query_round.index == round_index \
                    and 0 <= query < len(open_round.queries):  # fmt: skip
                if open_round.queries[query].answer is not None:
                    return "answered"
                try:
                    recorded = self.store.answer(round_index, query, answer, labeller, self.step)
                except WriteError as error:
                    self._failure = error
                    self._changed.notify_all()
                    raise
                if not recorded:
                    return "answered"
                open_round.queries[query].answer = answer
                self._changed.notify_all()
                return "recorded"
        return "answered" if self.store.asked(round_index, query) else "missing"

    # ---------------------------------------------------------------- rendering and the server
    def _start_server(self) -> None:
        if self._server is not None:
            return
        self._fps = self._renderer.start()
        server = LabellingServer(self, self.cfg.human_host, self.cfg.human_port)
        try:
            self.url = server.start()
        except TeacherError:
            self._renderer.stop()
            raise
        self._server = server
        print(f"labelling at {self.url}", flush=True)
        url_file = publish_url(self.work_dir, self.url)
        print(f"(the URL is also in {url_file}, readable by you only)", flush=True)

    def _rendered(self, open_round: OpenRound, index: int, videos: tuple[bytes, bytes]) -> None:
        with self._changed:
            open_round.queries[index].video = videos
            self._changed.notify_all()

    def close(self) -> None:
        """The run finished: the open tabs are told so (waiting up to FINISH_WAIT_S for each to ask once more, so
        that none is left guessing), then everything stops."""
        if self._server is not None and not self._closed:
            with self._changed:
                self._finished_step = self.current_step()
                finished_at = time.monotonic()
                open_tabs = [tab for tab, seen in self._tabs.items() if finished_at - seen < PAGE_SEEN_S]
                deadline = finished_at + FINISH_WAIT_S
                while any(self._tabs.get(tab, finished_at) < finished_at for tab in open_tabs):
                    if not self._changed.wait(deadline - time.monotonic()):
                        break
        self.abort()

    def abort(self) -> None:
        """Stop the page, the render thread and the label store now, however the run ended. Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        if self._server is not None:
            self._server.stop()
            withdraw_url(self.work_dir, self.url)
            self._renderer.stop()
        self.store.db.close()


class ReplayTeacher:
    """Gives each round the answers a human run recorded for it, refusing a round whose queries differ. With
    human_mode=async a round's labels arrive at the step they arrived in the recorded run."""

    def __init__(self, cfg: TeacherConfig) -> None:
        self.store = LabelStore(Path(str(cfg.labels_from)), read_only=True)
        self.asynchronous = cfg.human_mode == "async"
        self._round: QueryRound | None = None

    def set_thres_skip(self, new_margin: float) -> None:
        """The recorded answers already hold the person's skips."""

    def set_thres_equal(self, new_margin: float) -> None:
        """The recorded answers already hold the person's equal labels."""

    def ask(self, query_round: QueryRound) -> None:
        stored = self.store.round_rows(query_round.index)
        origins = query_round.origins.reshape(len(query_round.origins), 4).tolist()
        check_same_queries(query_round.index, origins, stored, self.store.path)
        unanswered = [index for index, row in enumerate(stored) if row[4] is None]
        if unanswered:
            raise TeacherError(f"round {query_round.index} query {unanswered[0]} has no answer in {self.store.path}; "
                               "allowed: the labels of a run that finished")  # fmt: skip
        self._round = query_round

    def answers(self, step: int) -> Answers | None:
        if self._round is None:
            return None
        arrived = self.store.completed_step(self._round.index)
        if self.asynchronous and arrived is not None and step < arrived:
            return None
        rows, self._round = self.store.round_rows(self._round.index), None
        return labels_of([row[4:] for row in rows])

    def wait(self, seconds: float) -> None:
        """Replayed answers are all there."""

    def progress(self) -> str:
        return "replaying recorded answers"

    def metrics(self, query_round: QueryRound, step: int) -> dict[str, float]:
        return {"label_wait_steps": step - query_round.opened_step}

    def state_dict(self) -> dict[str, Any]:
        """The recorded answers are all in labels_from."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Nothing to restore: see state_dict."""

    def close(self) -> None:
        self.store.db.close()
