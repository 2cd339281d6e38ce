"""A person as the teacher (`teacher=human`), and the replay of a person's answers (`teacher=replay`).

Each query round is put to people through the labelling page (labelling_app.py). Segments are rendered after the
fact: `SimStateRecorder` keeps the simulator state of every step of the episodes the reward model keeps, and a
render thread sets a second copy of the environment to those states, one query at a time, so the first query is
on screen while the rest of the round renders. Every answer is written at once to `labels.sqlite` in the run
directory, keyed by round and query with the two segments' episode and start step: a re-run of the same command
asks only what is still unanswered, and `teacher=replay` re-trains from the file without the person. Rounds and
queries are numbered from 1 everywhere a person meets them: the page, the console, labels.sqlite, error messages.

A person may undo their last answer while its round is still open: until the run takes the round's answers in, which
it does `human_undo_window` seconds after the round's last answer. An answer the run has learnt from stays.

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
from gymnasium_env import GymnasiumEnv
from labelling_app import LabellingServer, bind
from run_dir import LABELS_NAME, publish_url, withdraw_url
from task_goals import describe_task
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

# labels.sqlite's format (its user_version): 1 numbers rounds and queries from 1, as the page shows them; 0, the files
# written before (2026-12), from 0. Such a file is renumbered when a run opens it to write, and read as it is by replay.
LABELS_FORMAT = 1
SCHEMA = (
    """CREATE TABLE IF NOT EXISTS queries (
    round INTEGER NOT NULL, query INTEGER NOT NULL,
    episode_0 INTEGER NOT NULL, start_0 INTEGER NOT NULL, episode_1 INTEGER NOT NULL, start_1 INTEGER NOT NULL,
    answer TEXT, label REAL, labeller TEXT, answered_at REAL, step INTEGER,
    PRIMARY KEY (round, query))""",
    """CREATE TABLE IF NOT EXISTS rounds (
    round INTEGER PRIMARY KEY, size INTEGER NOT NULL, opened_step INTEGER NOT NULL, completed_step INTEGER)""",
    # Answers taken back, as they were: what a person corrected is part of a study's record.
    """CREATE TABLE IF NOT EXISTS undone (
    round INTEGER NOT NULL, query INTEGER NOT NULL, answer TEXT NOT NULL, label REAL, labeller TEXT,
    answered_at REAL, step INTEGER, undone_at REAL NOT NULL)""",
)
# Renumbers a format-0 file from 1; through negative numbers, since SQLite checks the primary key row by row.
RENUMBER = (
    "UPDATE queries SET round = -1 - round, query = -1 - query",
    "UPDATE queries SET round = -round, query = -query",
    "UPDATE rounds SET round = -1 - round",
    "UPDATE rounds SET round = -round",
)


class SimStateRecorder:
    """The simulator state before every step of the episode being collected, and its layout (LAYOUT_FIELDS). When
    the episode ends, both go into the episode store beside its (s, a) rows, so a person's segments come from exactly
    the episodes the queries come from, kept and numbered in one place."""

    def __init__(self, env: Any, episodes: EpisodeStore) -> None:
        self.env = env
        self.model, self.data = env.sim
        self.episodes = episodes
        self.state_size = mujoco.mj_stateSize(self.model, SIM_STATE)
        self._states: list[np.ndarray] = []
        self._success: list[bool] = []  # what each step reported, where the environment reports it (Meta-World)
        self._layout = self.layout()

    def layout(self) -> Layout:
        return {name: getattr(self.model, name).copy() for name in LAYOUT_FIELDS}

    def step(self, action: np.ndarray) -> tuple[Any, ...]:
        """env.step, keeping the state before it (the one the observation before it shows) and the success it
        reports."""
        self.record()
        outcome = self.env.step(action)
        self.record_outcome(outcome[-1])
        return outcome

    def record(self) -> None:
        """Keep the current state: call before each env.step, so state t is the one observation t shows."""
        if not self._states:
            self._layout = self.layout()
        state = np.empty(self.state_size)
        mujoco.mj_getState(self.model, self.data, state, SIM_STATE)
        self._states.append(state.astype(np.float32))  # half the memory; float32 is exact enough to draw

    def record_outcome(self, info: dict[str, Any]) -> None:
        """Keep the success the step just taken reported, where the environment reports one: call after env.step."""
        if "success" in info:
            self._success.append(bool(info["success"]))

    def end_episode(self) -> None:
        """Attach the states to the episode the store has just closed."""
        # A run resumed from a checkpoint written before successes were recorded has none for its open episode
        success = np.array(self._success) if self._success and len(self._success) == len(self._states) else None
        self.episodes.episodes[-1].sim = (self._layout, np.stack(self._states), success)
        self._states, self._success = [], []

    def segment(self, episode: int, start: int, length: int) -> tuple[Layout, np.ndarray]:
        """(layout, states [length, state size]) of one stored segment; KeyError once its episode is dropped."""
        layout, states, *_ = self.episodes.episode(episode).sim  # a checkpoint's older episodes have no successes
        return layout, states[start : start + length]

    def success(self, episode: int, start: int, length: int) -> np.ndarray | None:
        """The success each step of a stored segment reported [length], None where the environment reports none."""
        _, _, *success = self.episodes.episode(episode).sim
        return success[0][start : start + length] if success and success[0] is not None else None

    @property
    def nbytes(self) -> int:
        kept = [episode.sim for episode in self.episodes if episode.sim is not None]
        stored = sum(states.nbytes + sum(map(np.size, layout.values())) * 8 for layout, states, *_ in kept)
        return stored + len(self._states) * self.state_size * 4

    def state_dict(self) -> dict[str, Any]:
        return {"open": list(self._states), "layout": self._layout, "success": list(self._success)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._states = list(state["open"])
        self._layout = state["layout"]
        self._success = list(state.get("success", []))  # absent from checkpoints written before it was recorded


def render_segment(env: Any, layout: Layout, states: np.ndarray) -> bytes:
    """The frames of a segment stacked top to bottom in one JPEG, FRAME_HEIGHT x FRAME_WIDTH each: the page draws
    them one at a time, so a query is two requests however long its segments are."""
    model, data = env.sim
    for name, value in layout.items():
        getattr(model, name)[:] = value
    frames = []
    for index, state in enumerate(states):
        mujoco.mj_setState(model, data, state.astype(np.float64), SIM_STATE)
        mujoco.mj_forward(model, data)
        if index == 0 and isinstance(env, GymnasiumEnv):
            env.center_camera(FRAME_HEIGHT, FRAME_WIDTH)
        if isinstance(env, utils.MetaWorldEnv):  # renders at its own size
            frame = Image.fromarray(env.render()).resize((FRAME_WIDTH, FRAME_HEIGHT), Image.Resampling.BILINEAR)
        else:
            frame = Image.fromarray(env.render(height=FRAME_HEIGHT, width=FRAME_WIDTH))
        frames.append(np.asarray(frame))
    buffer = BytesIO()
    Image.fromarray(np.concatenate(frames)).save(buffer, format="JPEG", quality=JPEG_QUALITY)
    return buffer.getvalue()


class LabelStore:
    """labels.sqlite: every query asked, and its answer the moment it is given (one transaction per answer or undo).

    Rounds and queries are numbered from 1 (LABELS_FORMAT); a file of format 0 is renumbered when opened to write,
    and read as it is when opened read-only (replay)."""

    def __init__(self, path: Path, read_only: bool = False) -> None:
        self.path = path
        uri = f"file:{path}?mode=ro" if read_only else f"file:{path}"
        self.lock = threading.Lock()  # one connection shared by the training and web threads
        with self.writing():
            self.db = sqlite3.connect(uri, uri=True, check_same_thread=False, isolation_level=None)
            file_format = self.db.execute("PRAGMA user_version").fetchone()[0]
        if file_format > LABELS_FORMAT:
            self.db.close()
            raise TeacherError(f"{path} has labels format {file_format}, written by a newer version of this code; "
                               f"allowed: format {LABELS_FORMAT} or older")  # fmt: skip
        self._first = 0 if read_only and file_format == 0 else 1  # the number the file gives a first round or query
        if not read_only:
            with self.writing():
                self.db.execute("PRAGMA journal_mode=WAL")
            self._upgrade()

    def _upgrade(self) -> None:
        """Create the tables, or bring an older file to LABELS_FORMAT, in one transaction."""
        with self.transaction():
            tables = {row[0] for row in self.db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            renumber = self.db.execute("PRAGMA user_version").fetchone()[0] == 0 and "rounds" in tables
            for statement in SCHEMA + (RENUMBER if renumber else ()):
                self.db.execute(statement)
            self.db.execute(f"PRAGMA user_version = {LABELS_FORMAT}")

    @contextmanager
    def writing(self) -> Iterator[None]:
        """A failed write (a full disk, a read-only filesystem) is a WriteError naming the file; every answer
        committed before it stays in the file, and the failed one is rolled back whole."""
        try:
            yield
        except sqlite3.Error as error:
            name = getattr(error, "sqlite_errorname", None)
            raise WriteError(self.path, f"{error} ({name})" if name else str(error)) from None

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """Several statements committed together or not at all."""
        with self.lock, self.writing():
            self.db.execute("BEGIN IMMEDIATE")
            try:
                yield
                self.db.execute("COMMIT")
            except BaseException:
                if self.db.in_transaction:
                    self.db.execute("ROLLBACK")
                raise

    def open_round(self, query_round: QueryRound) -> list[tuple[str | None, float | None]]:
        """Record a round's queries (kept as they are when re-asked) and return the (answer, label) of each.

        Raises a one-line TeacherError naming the first query that differs from what the file holds."""
        origins = query_round.origins.reshape(len(query_round.origins), 4).tolist()
        with self.transaction():
            self.db.execute("INSERT OR IGNORE INTO rounds VALUES (?, ?, ?, NULL)",
                            (query_round.number, len(origins), query_round.opened_step))  # fmt: skip
            self.db.executemany(
                "INSERT OR IGNORE INTO queries (round, query, episode_0, start_0, episode_1, start_1) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                [(query_round.number, number, *origin) for number, origin in enumerate(origins, start=1)],
            )
        stored = self.round_rows(query_round.number)
        check_same_queries(query_round.number, origins, stored, self.path)
        return [(row[4], row[5]) for row in stored]

    def round_rows(self, round_number: int) -> list[tuple]:
        """(episode_0, start_0, episode_1, start_1, answer, label) of each stored query of a round, in order."""
        with self.lock:
            return self.db.execute(
                "SELECT episode_0, start_0, episode_1, start_1, answer, label FROM queries WHERE round = ? "
                "ORDER BY query", (round_number - 1 + self._first,)).fetchall()  # fmt: skip

    def answer(self, round_number: int, query: int, answer: str, labeller: str, step: int) -> bool:
        """Record an answer unless the query already has one; True when this one was recorded."""
        with self.lock, self.writing():
            cursor = self.db.execute(
                "UPDATE queries SET answer = ?, label = ?, labeller = ?, answered_at = ?, step = ? "
                "WHERE round = ? AND query = ? AND answer IS NULL",
                (answer, ANSWER_LABELS[answer], labeller, time.time(), step, round_number, query),
            )
            return cursor.rowcount == 1

    def undo(self, round_number: int, query: int) -> bool:
        """Take an answer back (kept in the `undone` table) unless its round is complete, i.e. the run has taken its
        answers in; True when it was taken back. A re-run, or a replay, never sees it again."""
        with self.transaction():
            moved = self.db.execute(
                "INSERT INTO undone SELECT round, query, answer, label, labeller, answered_at, step, ? FROM queries "
                "WHERE round = ? AND query = ? AND answer IS NOT NULL "
                "AND (SELECT completed_step FROM rounds WHERE round = ?) IS NULL",
                (time.time(), round_number, query, round_number),
            ).rowcount
            if moved:
                self.db.execute(
                    "UPDATE queries SET answer = NULL, label = NULL, labeller = NULL, answered_at = NULL, step = NULL "
                    "WHERE round = ? AND query = ?", (round_number, query))  # fmt: skip
        return moved == 1

    def asked(self, round_number: int, query: int) -> bool:
        with self.lock:
            return self.db.execute("SELECT 1 FROM queries WHERE round = ? AND query = ?",
                                   (round_number, query)).fetchone() is not None  # fmt: skip

    def complete_round(self, round_number: int, step: int) -> None:
        with self.lock, self.writing():
            self.db.execute("UPDATE rounds SET completed_step = ? WHERE round = ?", (step, round_number))

    def completed_step(self, round_number: int) -> int | None:
        with self.lock:
            row = self.db.execute("SELECT completed_step FROM rounds WHERE round = ?",
                                  (round_number - 1 + self._first,)).fetchone()  # fmt: skip
        return None if row is None else row[0]

    def answer_counts(self) -> tuple[int, int]:
        """(queries answered, of which skipped) in the whole file."""
        with self.lock:
            return self.db.execute("SELECT COUNT(answer), COUNT(CASE WHEN answer = 'skip' THEN 1 END) FROM queries"
                                   ).fetchone()  # fmt: skip


def check_same_queries(round_number: int, origins: list[list[int]], stored: list[tuple], path: Path) -> None:
    """Refuse a round whose queries are not the ones `path` recorded for it."""
    for index in range(max(len(origins), len(stored))):
        here = origins[index] if index < len(origins) else None
        there = list(stored[index][:4]) if index < len(stored) else None
        if here != there:
            raise TeacherError(
                f"round {round_number} query {index + 1} is {_describe(here)} in this run but {_describe(there)} in "
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
    # Per side, the first frame whose step the environment reported a success (None: not in this clip); None for an
    # environment that reports none
    success: list[int | None] | None = None
    claimed_at: float = -np.inf
    claimed_by: str = ""  # the tab that holds it (the page's random id)
    answer: str | None = None


@dataclass
class OpenRound:
    query_round: QueryRound
    queries: list[OpenQuery] = field(default_factory=list)
    # time.monotonic() of the answer that completed the round (-inf: complete when asked, a resumed run); the run
    # takes its answers in human_undo_window seconds later
    complete_at: float | None = None

    @property
    def number(self) -> int:
        return self.query_round.number

    @property
    def unanswered(self) -> int:
        return sum(query.answer is None for query in self.queries)

    def progress(self) -> dict[str, int]:
        """How far the round and the run's feedback budget are, for the page's progress bars."""
        answered = len(self.queries) - self.unanswered
        return {"round": self.number, "round_size": len(self.queries), "round_answered": answered,
                "run_answered": self.query_round.feedback_before + answered,
                "budget": self.query_round.feedback_budget}  # fmt: skip

    def give_back(self, index: int, tab: str) -> None:
        """An answer was undone: the query is unanswered again and `tab`'s to answer, and the query the tab had moved
        on to goes back to the pool."""
        for query in self.queries:
            if query.claimed_by == tab:
                query.claimed_at = -np.inf
        query = self.queries[index]
        query.answer, query.claimed_at, query.claimed_by = None, time.monotonic(), tab
        self.complete_at = None

    def undo_left(self, window: float) -> float | None:
        """Seconds until the run takes the complete round in (<= 0: now); None while a query is unanswered."""
        if self.unanswered or self.complete_at is None:
            return None
        return self.complete_at + window - time.monotonic()

    def choose(self, tab: str, take_over: bool, now: float, timeout: float) -> int | None:
        """The query to give `tab`: a rendered, unanswered one it already holds, else one nobody holds (a claim
        expires after `timeout`), else with `take_over` the one another tab has held longest. None when none is."""
        waiting = [(index, query) for index, query in enumerate(self.queries)
                   if query.answer is None and query.video is not None]  # fmt: skip
        held = [(index, query) for index, query in waiting if now - query.claimed_at <= timeout]
        mine = [(index, query) for index, query in held if tab and query.claimed_by == tab]
        free = [(index, query) for index, query in waiting if now - query.claimed_at > timeout]
        others = sorted((item for item in held if item not in mine), key=lambda item: item[1].claimed_at)
        chosen = mine or free or (others if take_over else [])
        return chosen[0][0] if chosen else None

    def waiting_message(self, step: int, cfg: TeacherConfig) -> tuple[str, int]:
        """Why a tab gets no query of this round, and how many queries other tabs hold."""
        now = time.monotonic()
        unanswered = [query for query in self.queries if query.answer is None]
        rendering = sum(query.video is None for query in unanswered)
        held = [query.claimed_at for query in unanswered
                if query.video is not None and now - query.claimed_at <= cfg.human_timeout]  # fmt: skip
        parts = []
        if held:
            minutes, seconds = divmod(math.ceil(cfg.human_timeout - (now - min(held))), 60)
            where = "1 open in another tab (or in a closed one: it goes" if len(held) == 1 else \
                f"{len(held)} open in other tabs (or in closed ones: the first goes"  # fmt: skip
            parts.append(f"{where} back to the pool in {minutes} min {seconds} s), or take one over")
        if rendering:
            parts.append(f"{rendering} still rendering")
        if parts:
            parts.append("the run waits for them" if cfg.human_mode == "sync" else "the run trains on meanwhile")
        elif (left := self.undo_left(cfg.human_undo_window)) is not None and left > 0:
            parts.append(f"all answered; the run takes them in {math.ceil(left)} s from now (until then the last "
                         "answer can be undone)")  # fmt: skip
        else:
            parts.append("all answered; the run is taking them in")
        size = len(self.queries)
        return f"round {self.number}, {size - len(unanswered)} of {size} answered, step {step}: {'; '.join(parts)}", \
            len(held)  # fmt: skip


def finished(step: int, answered: int, skipped: int) -> dict[str, Any]:
    """What every tab is told once the run finished: that, and the answers given; nothing else."""
    message = (f"training finished at step {step}: {answered} queries answered ({answered - skipped} labels, "
               f"{skipped} skipped); you can close this page")  # fmt: skip
    return {"state": "finished", "step": step, "answered": answered, "message": message}


class Tabs:
    """What the run knows of each tab that asks (by the page's random id): when it last asked, the name typed in it,
    its last answer (which it may undo), and the query another tab took over from it, until it is told."""

    def __init__(self) -> None:
        self.seen: dict[str, float] = {}  # time.monotonic() of each tab's last request
        self.names: dict[str, str] = {}
        self.last_answer: dict[str, tuple[int, int]] = {}  # (round, query)
        self._taken: dict[str, dict[str, Any]] = {}

    def visit(self, tab: str, now: float, name: str) -> bool:
        """A request from `tab`; True when it is a tab (the page's requests name theirs)."""
        if tab:
            self.seen[tab] = now
            self.names[tab] = name or self.names.get(tab, "")
        return bool(tab)

    def taken_over(self, tab: str, round_number: int, query: int, by: str) -> None:
        where = f"another tab ({self.names[by]})" if self.names.get(by) else "another tab"
        self._taken[tab] = {"round": round_number, "query": query,
                            "message": f"query {query} of round {round_number} was taken over by {where}, which "
                                       "answers it now; this tab stopped showing it"}  # fmt: skip

    def news(self, tab: str, open_round: OpenRound | None) -> dict[str, Any]:
        """What every reply to a tab carries: the answer it may still undo (its round still open), and the query
        another tab took over from it (once)."""
        last = self.last_answer.get(tab)
        undoable = open_round is not None and last is not None and last[0] == open_round.number
        return {"undoable": {"round": last[0], "query": last[1]} if undoable else None,
                "taken": self._taken.pop(tab, None)}  # fmt: skip


def first_successes(recorder: SimStateRecorder, origins: np.ndarray, length: int) -> list[int | None] | None:
    """Per side of a query, the first frame whose step the environment reported a success (None: not in that
    clip); None for an environment that reports none."""
    successes = [recorder.success(episode, start, length) for episode, start in origins]
    if any(success is None for success in successes):
        return None
    return [int(np.argmax(success)) if success.any() else None for success in successes]


def describe_query(open_round: OpenRound, index: int, frames: int, fps: float, step: int) -> dict[str, Any]:
    """A query as the page shows it: where to fetch its videos, how to play them, and how far the round is."""
    return {
        "state": "query",
        "round": open_round.number,
        "query": index + 1,
        "frames": frames,
        "fps": fps,
        "width": FRAME_WIDTH,
        "height": FRAME_HEIGHT,
        "success": open_round.queries[index].success,
        "step": step,
        "progress": open_round.progress(),
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
                self.failure = TeacherError(f"rendering round {open_round.number} query {index + 1} failed: {error}")
                return
            self._done(open_round, index, videos)
            self.seconds += time.perf_counter() - start
        env.close()  # in this thread, which holds its OpenGL context


class HumanTeacher:
    """Puts each round to the people on the labelling page; one query goes to one of them at a time, and goes back
    to the pool when its tab releases it (the tab closes) or leaves it unanswered for `human_timeout` seconds.
    Thread-safe: the web app calls `task`, `claim`, `page_state`, `video`, `answer`, `undo` and `release` from its
    own thread."""

    def __init__(self, cfg: TeacherConfig, work_dir: Path, env_name: str, seed: int, recorder: SimStateRecorder,
                 segment: int) -> None:  # fmt: skip
        bind(cfg.human_host, cfg.human_port).close()  # a port in use fails now, not at the first round
        self.cfg = cfg
        self.work_dir = work_dir
        self.store = LabelStore(work_dir / LABELS_NAME)
        self.recorder = recorder
        self.segment = segment
        self._task = describe_task(env_name)
        self.url: str | None = None
        self.step = 0  # the training step, for the time each answer arrived
        self.step_source: Callable[[], int] | None = None  # the run's current step, for the page (train_QPA.main)
        self._round: OpenRound | None = None
        self._changed = threading.Condition()
        self._renderer = SegmentRenderer(env_name, seed, self._rendered)
        self._server: Any = None
        self._fps = 0.0
        self._failure: Exception | None = None  # a label-store failure, raised in the training thread
        self._tabs = Tabs()
        self._finished: dict[str, Any] | None = None
        self._closed = False

    # ---------------------------------------------------------------- the training loop's side
    def set_thres_skip(self, new_margin: float) -> None:
        """A person sets their own bar for skipping."""

    def set_thres_equal(self, new_margin: float) -> None:
        """A person decides when two segments are equally good."""

    def ask(self, query_round: QueryRound) -> None:
        answers = self.store.open_round(query_round)
        open_round = OpenRound(query_round, [OpenQuery(answer=answer) for answer, _ in answers])
        if not open_round.unanswered:
            open_round.complete_at = -math.inf
        with self._changed:
            self._round = open_round
            self.step = query_round.opened_step
        self._renderer.seconds = 0.0
        for index, query in enumerate(open_round.queries):
            if query.answer is None:  # served once rendered, so with its successes
                query.success = first_successes(self.recorder, query_round.origins[index], self.segment)
                sides = [self.recorder.segment(*origin, self.segment) for origin in query_round.origins[index]]
                self._renderer.submit(open_round, index, *sides)
        if open_round.unanswered:
            self._start_server()

    def answers(self, step: int) -> Answers | None:
        """The round's labels once every query is answered and the undo window has passed, else None."""
        if self._failure is not None or self._renderer.failure is not None:
            raise self._failure or self._renderer.failure
        with self._changed:
            self.step = step
            left = None if self._round is None else self._round.undo_left(self.cfg.human_undo_window)
            if left is None or left > 0:
                return None
            open_round, self._round = self._round, None  # from here on its answers cannot be undone
        self.store.complete_round(open_round.number, step)
        return labels_of([row[4:] for row in self.store.round_rows(open_round.number)])

    def wait(self, seconds: float) -> None:
        with self._changed:
            left = None if self._round is None else self._round.undo_left(self.cfg.human_undo_window)
            self._changed.wait(seconds if left is None else max(0.0, min(seconds, left)))

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
            shown = self._round and self._round.progress()
        return f"round {shown['round']}, {shown['round_answered']} of {shown['round_size']} answered" if shown else \
            "no round open"  # fmt: skip

    def current_step(self) -> int:
        return self.step_source() if self.step_source is not None else self.step

    # ---------------------------------------------------------------- the web app's side
    def task(self) -> dict[str, str]:
        """What the page says above every query: the task, and what makes a segment better."""
        return {**self._task._asdict(), "instruction": self.cfg.human_instruction or self._task.goal}

    def claim(self, tab: str = "", take_over: bool = False, name: str = "") -> dict[str, Any] | None:
        """The next rendered query for this tab (OpenRound.choose); None when there is none."""
        now = time.monotonic()
        with self._changed:
            self._seen(tab, now, name)
            if self._round is None or self._finished is not None:
                return None
            index = self._round.choose(tab, take_over, now, self.cfg.human_timeout)
            if index is None:
                return None
            query = self._round.queries[index]
            if query.claimed_by not in ("", tab) and now - query.claimed_at <= self.cfg.human_timeout:
                self._tabs.taken_over(query.claimed_by, self._round.number, index + 1, by=tab)
            query.claimed_at, query.claimed_by = now, tab
            return {**describe_query(self._round, index, self.segment, self._fps, self.current_step()),
                    **self._tabs.news(tab, self._round)}  # fmt: skip

    def release(self, round_number: int, query: int, tab: str) -> bool:
        """The tab that holds a query closed: the query goes back to the pool at once. True when it did."""
        with self._changed:
            open_round = self._round
            if open_round is None or open_round.number != round_number or not tab:
                return False
            if not 1 <= query <= len(open_round.queries) or open_round.queries[query - 1].claimed_by != tab:
                return False
            open_round.queries[query - 1].claimed_at = -np.inf
            self._tabs.seen.pop(tab, None)
            return True

    def page_state(self, tab: str = "", name: str = "") -> dict[str, Any]:
        """What a tab without a query shows: why there is none, whether another tab holds queries it may take over,
        or that the run finished."""
        with self._changed:
            self._seen(tab, time.monotonic(), name)
            if self._finished is not None:
                return {**self._finished, "held": 0, "progress": None, "undoable": None, "taken": None}
            step, news = self.current_step(), self._tabs.news(tab, self._round)
            if self._round is None:
                return {"state": "waiting", "step": step, "held": 0, "progress": None, **news,
                        "message": f"no queries open: the run is training (step {step}); its next queries will "
                                   "show here"}  # fmt: skip
            message, held = self._round.waiting_message(step, self.cfg)
            return {"state": "waiting", "step": step, "held": held, "progress": self._round.progress(),
                    "message": message, **news}  # fmt: skip

    def _seen(self, tab: str, now: float, name: str = "") -> None:
        if self._tabs.visit(tab, now, name):
            self._changed.notify_all()

    def video(self, round_number: int, query: int, side: int) -> bytes | None:
        with self._changed:
            if self._round is None or self._round.number != round_number:
                return None
            if not 1 <= query <= len(self._round.queries) or side not in (0, 1):
                return None
            video = self._round.queries[query - 1].video
        return None if video is None else video[side]

    def answer(self, round_number: int, query: int, answer: str, labeller: str, tab: str = "") -> str:
        """Record an answer of the open round: 'recorded'; 'answered' when the query has an answer already (given in
        another tab); 'closed' when its round is no longer open (the run took its answers in); 'missing' when no such
        query was asked. WriteError when labels.sqlite cannot be written (the training thread then stops the run)."""
        with self._changed:
            open_round = self._round
            if open_round is None or open_round.number != round_number or not 1 <= query <= len(open_round.queries):
                return "closed" if self.store.asked(round_number, query) else "missing"
            if open_round.queries[query - 1].answer is not None:
                return "answered"
            with self._stops_the_run():
                if not self.store.answer(round_number, query, answer, labeller, self.step):
                    return "answered"
            open_round.queries[query - 1].answer = answer
            if not open_round.unanswered:
                open_round.complete_at = time.monotonic()
            if tab:
                self._tabs.last_answer[tab] = (round_number, query)
            self._changed.notify_all()
            return "recorded"

    def undo(self, round_number: int, query: int, tab: str) -> tuple[str, dict[str, Any] | None]:
        """Take back this tab's last answer while its round is open, the query the tab's again: ('undone', the query
        as `claim` describes it); else ('missing', None) for a query never asked, ('closed', None) once the run took
        the round in, ('not last', None) for any other answer. WriteError as `answer`."""
        with self._changed:
            open_round = self._round
            if open_round is None or open_round.number != round_number or not 1 <= query <= len(open_round.queries):
                return ("closed" if self.store.asked(round_number, query) else "missing"), None
            if not tab or self._tabs.last_answer.get(tab) != (round_number, query):
                return "not last", None
            with self._stops_the_run():
                if not self.store.undo(round_number, query):  # the file says the run took the round in
                    return "closed", None
            del self._tabs.last_answer[tab]
            open_round.give_back(query - 1, tab)
            self._changed.notify_all()
            described = describe_query(open_round, query - 1, self.segment, self._fps, self.current_step())
            return "undone", {**described, **self._tabs.news(tab, open_round)}

    @contextmanager
    def _stops_the_run(self) -> Iterator[None]:
        """A write to labels.sqlite that fails stops the run: the training thread raises it (see `answers`)."""
        try:
            yield
        except WriteError as error:
            self._failure = error
            self._changed.notify_all()
            raise

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
        """The run finished: the open tabs are told so, with the answers given (waiting up to FINISH_WAIT_S for each
        to ask once more, so that none is left guessing), then everything stops."""
        if self._server is not None and not self._closed:
            answered, skipped = self.store.answer_counts()
            with self._changed:
                self._finished = finished(self.current_step(), answered, skipped)
                finished_at = time.monotonic()
                open_tabs = [tab for tab, seen in self._tabs.seen.items() if finished_at - seen < PAGE_SEEN_S]
                deadline = finished_at + FINISH_WAIT_S
                while any(self._tabs.seen.get(tab, finished_at) < finished_at for tab in open_tabs):
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
        stored = self.store.round_rows(query_round.number)
        origins = query_round.origins.reshape(len(query_round.origins), 4).tolist()
        check_same_queries(query_round.number, origins, stored, self.store.path)
        unanswered = [number for number, row in enumerate(stored, start=1) if row[4] is None]
        if unanswered:
            raise TeacherError(f"round {query_round.number} query {unanswered[0]} has no answer in {self.store.path};"
                               " allowed: the labels of a run that finished")  # fmt: skip
        self._round = query_round

    def answers(self, step: int) -> Answers | None:
        if self._round is None:
            return None
        arrived = self.store.completed_step(self._round.number)
        if self.asynchronous and arrived is not None and step < arrived:
            return None
        rows, self._round = self.store.round_rows(self._round.number), None
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
