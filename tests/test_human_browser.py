"""`teacher=human` end to end: tiny walker_walk runs whose queries are answered in a real headless Chromium (Debian's
chromium and chromedriver, driven by Selenium) or over the page's HTTP API; what the page tells a first-time labeller
(the task's goal, the progress bars, each answer's confirmation, undo, nothing to press without a query); then
resuming a run killed in the middle of a round, status.json while a run waits, one writer per run directory, what the
page says about other tabs (a query taken over), a finished and a stopped run, a full disk while a person labels,
replaying a human run's labels, and human_mode=async.

`.ci/run` installs the browser; elsewhere these tests are skipped when /usr/bin/chromium is missing. With
QPA_SAVE_SCREENSHOT=1 the page's screenshot is also written to figure/human_feedback_page.png for the README.
"""

from __future__ import annotations

import atexit
import json
import os
import re
import resource
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from contextlib import closing, nullcontext
from dataclasses import asdict, dataclass
from io import BytesIO
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import REPO_ROOT, TIME_COLUMNS, built_once, fill, small_filesystem
from PIL import Image
from test_train import TINY

from run_dir import URL_NAME
from run_lock import HEARTBEAT_S, LOCK_NAME, RECORD_BYTES, Holder, read_holder

pytestmark = pytest.mark.slow
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
HUMAN = [*TINY, "env=walker_walk", "teacher=human", "human_port=0", "seed=5", "num_threads=1", "device=cpu"]
ROUNDS, QUERIES = 2, 10  # TINY asks max_feedback=20 in rounds of reward_batch=10
STUDY_INSTRUCTION = "Prefer the clip in which the walker moves more naturally whatever its speed."


class HumanRun:
    """`python train_QPA.py ...` in the background, with the labelling URL it prints and the page's JSON API."""

    def __init__(self, run_dir: Path, *overrides: str) -> None:
        command = [sys.executable, "train_QPA.py", *overrides, f"hydra.run.dir={run_dir}"]
        self.process = subprocess.Popen(command, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                        text=True)  # fmt: skip
        self.lines: list[str] = []
        self.stderr: list[str] = []
        threading.Thread(target=self._read, args=(self.process.stdout, self.lines), daemon=True).start()
        threading.Thread(target=self._read, args=(self.process.stderr, self.stderr), daemon=True).start()
        self.run_dir = run_dir
        # A test that fails while its run waits for answers would leave that run waiting forever
        atexit.register(self.stop)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.kill()

    @staticmethod
    def _read(stream, lines: list[str]) -> None:
        for line in stream:
            lines.append(line)

    def url(self, timeout: float = 300.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in self.lines:
                if match := re.fullmatch(r"labelling at (http://127\.0\.0\.1:\d+/\?token=[\w-]+)\n", line):
                    return match.group(1)
            assert self.process.poll() is None, "".join(self.stderr)[-3000:]
            time.sleep(0.2)
        raise TimeoutError("the run printed no labelling URL")

    def api(self, path: str, body: dict | None = None) -> dict:
        base, token = self.url().split("/?token=")
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(f"{base}{path}{'&' if '?' in path else '?'}token={token}", data=data,
                                         headers={"Content-Type": "application/json"})  # fmt: skip
        with urllib.request.urlopen(request, timeout=60) as response:
            return json.load(response)

    def next_query(self, timeout: float = 300.0) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            query = self.api("/api/next")
            if "query" in query:
                return query
            time.sleep(0.2)
        raise TimeoutError("no query was served")

    def answer(self, query: dict, answer: str) -> None:
        assert self.api("/api/answer", {"round": query["round"], "query": query["query"], "answer": answer})

    def kill(self) -> None:
        self.process.kill()
        self.process.wait(60)

    def finish(self, timeout: float = 600.0) -> None:
        assert self.process.wait(timeout) == 0, "".join(self.stderr)[-3000:]


def answers_in(run_dir: Path) -> list[tuple]:
    with closing(sqlite3.connect(run_dir / "labels.sqlite")) as db:
        return db.execute("SELECT round, query, answer, label FROM queries ORDER BY round, query").fetchall()


def stored_labels(run_dir: Path) -> list[float]:
    state = torch.load(run_dir / "checkpoint.pt", map_location="cpu", weights_only=False)
    return state["preferences"]["labels"].tolist()


def eval_log(run_dir: Path) -> pd.DataFrame:
    return pd.read_csv(run_dir / "eval.csv").drop(columns=TIME_COLUMNS, errors="ignore")


def canvas_pixels(driver, element_id: str) -> np.ndarray:
    png = driver.find_element("id", element_id).screenshot_as_png
    return np.asarray(Image.open(BytesIO(png)).convert("RGB"), dtype=np.float64)


@pytest.fixture(scope="module")
def browser():
    if not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)):
        if os.environ.get("CI"):
            pytest.fail(f"{CHROMIUM} and {CHROMEDRIVER} are missing: .ci/run installs Debian's chromium")
        pytest.skip("Debian's chromium and chromium-driver are not installed")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--window-size=900,820"]:  # fmt: skip
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})  # the page's console, for driver.get_log
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    yield driver
    driver.quit()


def progress(driver) -> str:
    return driver.find_element("id", "progress").text


def text_once_settled(driver, start: str, timeout: float = 30) -> str:
    """The progress line once it starts with `start`, or as it is after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not (shown := progress(driver)).startswith(start) and time.monotonic() < deadline:
        time.sleep(0.1)
    return shown


def errors_in_console(driver) -> list[str]:
    """The page's console entries at level SEVERE since the last call: uncaught errors and failed requests."""
    return [entry["message"] for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]


QUERY_LINE = re.compile(r"round (\d+), query (\d+) of 10")
WORDS = {"left": "left is better", "right": "right is better", "equal": "equally good", "skip": "can't tell (skipped)"}
# What the page shows, read in one script so that it is one moment's view (the run moves on meanwhile)
SNAPSHOT = """
const text = (id) => document.getElementById(id).textContent;
const answers = [...document.querySelectorAll('#answers button')];
return {progress: text('progress'), recorded: text('recorded-text'), status: text('status'),
        round: text('round-text'), budget: text('budget-text'),
        answers_disabled: answers.map((button) => button.disabled),
        answers_opacity: answers.map((button) => Number(getComputedStyle(button).opacity)),
        undo_disabled: document.getElementById('undo').disabled,
        left_pixel: [...document.getElementById('left').getContext('2d').getImageData(160, 60, 1, 1).data]};
"""


BETWEEN_ROUNDS = ("round 1, 10 of 10 answered", "no queries open")  # the undo window, then the run trains


def snapshot(driver) -> dict:
    return driver.execute_script(SNAPSHOT)


@dataclass
class Session:
    """A tiny walker run labelled in the browser: its directory, the answers given (by (round, query)), what the page
    showed at the moments the tests look at, and the errors in the page's console over the whole session."""

    run_dir: Path
    given: dict[tuple[int, int], str]
    first_query: dict  # the first query on screen, with the task's name and goal
    recorded: list[tuple[str, str]]  # per answer: the confirmation expected, and what the page showed at the next query
    undone: dict  # after the undo of the fourth answer
    between_rounds: dict  # the first moment after round 1's last answer
    round_2: dict  # round 2's first query on screen
    end: str  # the whole page once the run finished
    console_errors: list[str]


@pytest.fixture(scope="module")
def human_run(browser, tmp_path_factory) -> Session:
    """A tiny walker run labelled in the browser, by keys and by clicks, with one answer undone and given again."""
    return built_once(tmp_path_factory, "human", lambda root: label_in_the_browser(browser, root / "run"))


def label_in_the_browser(browser, run_dir: Path) -> Session:
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    run = HumanRun(run_dir, *HUMAN)
    errors_in_console(browser)
    browser.get(run.url())
    ways = [("1", "left"), (Keys.ARROW_RIGHT, "right"), ("=", "equal"), ("s", "skip"), (Keys.ARROW_LEFT, "left"),
            ("#answer-right", "right"), ("#answer-left", "left"), ("#answer-equal", "equal"),
            ("#answer-skip", "skip"), ("2", "right")]  # fmt: skip
    given: dict[tuple[int, int], str] = {}
    seen: dict[str, dict] = {}
    recorded: list[tuple[str, str]] = []
    expected = ""
    for number in range(ROUNDS * QUERIES):
        WebDriverWait(browser, 300).until(lambda driver: QUERY_LINE.fullmatch(progress(driver)))
        shown = snapshot(browser)
        round_number, query = map(int, QUERY_LINE.fullmatch(shown["progress"]).groups())
        if number:
            recorded.append((expected, shown["recorded"]))
        if number == 0:
            seen["first_query"] = {**shown, "task": browser.find_element("id", "task").text,
                                   "goal": browser.find_element("id", "goal").text}  # fmt: skip
            WebDriverWait(browser, 60).until(query_on_screen)
            first = canvas_pixels(browser, "left")
            WebDriverWait(browser, 10, poll_frequency=0.3).until(  # the video plays
                lambda driver, first=first: np.abs(first - canvas_pixels(driver, "left")).mean() > 0.5
            )
            later, right = canvas_pixels(browser, "left"), canvas_pixels(browser, "right")
            assert np.abs(later - right).mean() > 0.5  # the two sides show different segments
        if number == 1:  # the figure of docs/HUMAN_FEEDBACK.md: a query, and the first answer's confirmation
            WebDriverWait(browser, 60).until(query_on_screen)
            browser.save_screenshot(str(run_dir / "page.png"))
            if os.environ.get("QPA_SAVE_SCREENSHOT"):
                shutil.copy(run_dir / "page.png", REPO_ROOT / "figure" / "human_feedback_page.png")
        if number == QUERIES:
            seen["round_2"] = shown
        way, answer = ways[number % len(ways)]
        if way.startswith("#"):
            browser.find_element("css selector", way).click()
        else:
            ActionChains(browser).send_keys(way).perform()
        expected = f"Recorded: {WORDS[answer]} (round {round_number}, query {query})."
        WebDriverWait(browser, 60).until(lambda driver, expected=expected: recorded_text(driver) == expected)
        if number == 3:  # the skip is taken back and the query answered again
            browser.find_element("id", "undo").click()
            seen["undone"] = WebDriverWait(browser, 60).until(
                lambda driver, shown=shown: (
                    (view := snapshot(driver))["recorded"].startswith("Undone")
                    and view["progress"] == shown["progress"]
                    and not any(view["answers_disabled"])
                    and view
                )
            )
            ActionChains(browser).send_keys("1").perform()
            answer = "left"
            expected = f"Recorded: {WORDS[answer]} (round {round_number}, query {query})."
            WebDriverWait(browser, 60).until(lambda driver, expected=expected: recorded_text(driver) == expected)
        given[(round_number, query)] = answer
        if number == QUERIES - 1:
            seen["between_rounds"] = WebDriverWait(browser, 60).until(
                lambda driver: (view := snapshot(driver))["progress"].startswith(BETWEEN_ROUNDS) and view
            )
        else:
            WebDriverWait(browser, 60).until(lambda driver, shown=shown: progress(driver) != shown["progress"])
    run.finish()
    text_once_settled(browser, "training finished")
    end = browser.find_element("tag name", "body").text
    return Session(run_dir, given, seen["first_query"], recorded, seen["undone"], seen["between_rounds"],
                   seen["round_2"], end, errors_in_console(browser))  # fmt: skip


def recorded_text(driver) -> str:
    return driver.find_element("id", "recorded-text").text


def query_on_screen(driver) -> bool:
    """A query's frames are drawn: the page enables its answer buttons only then."""
    return driver.execute_script("return !document.getElementById('answer-left').disabled")


def test_a_person_labels_a_run_in_the_browser_and_the_run_learns_from_exactly_those_labels(human_run):
    run_dir, given = human_run.run_dir, human_run.given
    labels = {"left": 0.0, "right": 1.0, "equal": 0.5, "skip": None}
    recorded = answers_in(run_dir)
    # Rounds and queries are numbered from 1 in labels.sqlite, as on the page
    assert [(round_number, query, answer) for round_number, query, answer, _ in recorded] == [
        (round_number, query, given[(round_number, query)])
        for round_number in range(1, ROUNDS + 1)
        for query in range(1, QUERIES + 1)
    ]
    assert [label for *_, label in recorded] == [labels[given[key]] for key in sorted(given)]
    assert stored_labels(run_dir) == [labels[given[key]] for key in sorted(given) if given[key] != "skip"]
    train = pd.read_csv(run_dir / "train.csv")
    assert train["labeled_feedback"].iloc[-1] == 17  # 20 asked, 3 skipped
    assert (run_dir / "page.png").stat().st_size > 10_000


def test_the_page_says_what_better_means_and_how_far_the_round_and_the_budget_are(human_run):
    first = human_run.first_query
    assert first["task"] == "Task: walker_walk (DeepMind Control)"
    assert first["goal"] == "Goal: Walk forward (to the right) at a steady pace while staying upright."
    assert (first["progress"], first["round"], first["budget"]) == (
        "round 1, query 1 of 10", "round 1: 0 of 10 answered", "0 of the run's 20 queries answered"
    )  # fmt: skip
    assert (human_run.round_2["round"], human_run.round_2["budget"]) == (
        "round 2: 0 of 10 answered", "10 of the run's 20 queries answered"
    )  # fmt: skip


def test_each_answer_stays_confirmed_until_the_next_and_the_last_one_can_be_undone(human_run):
    for expected, shown_at_the_next_query in human_run.recorded:
        assert shown_at_the_next_query == expected
    undone = human_run.undone
    assert re.fullmatch(r"Undone: round 1, query \d+ is back on screen; answer it again\.", undone["recorded"])
    assert undone["round"] == "round 1: 3 of 10 answered" and not any(undone["answers_disabled"])
    assert undone["undo_disabled"]  # nothing more to undo
    with closing(sqlite3.connect(human_run.run_dir / "labels.sqlite")) as db:
        undone_rows = db.execute("SELECT round, query, answer FROM undone").fetchall()
    assert len(undone_rows) == 1 and undone_rows[0][2] == "skip" and human_run.given[undone_rows[0][:2]] == "left"
    # Once the run has learnt from round 1, its answers cannot be undone: the button says so by being disabled
    assert human_run.round_2["recorded"] == "Recorded: right is better (round 1, query 10)."
    assert human_run.round_2["undo_disabled"]


def test_with_no_query_on_screen_nothing_can_be_answered(human_run):
    view = human_run.between_rounds
    assert all(view["answers_disabled"]) and max(view["answers_opacity"]) < 0.5, view
    assert view["left_pixel"][:3] == [68, 68, 68]  # the grey "no query on screen" canvas, not a black one
    if view["progress"].startswith("round 1, 10 of 10 answered"):  # the round's undo window: the run waits
        assert "all answered; the run takes them in" in view["progress"] and not view["undo_disabled"]
    else:
        assert view["undo_disabled"]


def test_the_page_says_the_run_finished_and_logs_no_error_over_a_whole_session(human_run):
    # Only the run's end and the answers given, and nothing else: no earlier line that could suggest lost work
    ended = "training finished at step 2000: 20 queries answered (17 labels, 3 skipped); you can close this page"
    assert human_run.end == ended
    assert human_run.console_errors == []  # no uncaught error, no failed request (not even /favicon.ico)
    run_dir = human_run.run_dir
    assert not (run_dir / URL_NAME).exists() and "labelling_url_file" not in json.loads(
        (run_dir / "status.json").read_text()
    )


def test_replay_retrains_a_human_run_exactly(human_run, tmp_path):
    """With an answer undone and given again: the replay gets the answer that stayed."""
    run_dir = human_run.run_dir
    replay = [*HUMAN, "teacher=replay", f"labels_from={run_dir / 'labels.sqlite'}"]
    result = subprocess.run([sys.executable, "train_QPA.py", *replay, f"hydra.run.dir={tmp_path}"], cwd=REPO_ROOT,
                            capture_output=True, text=True, timeout=600)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    pd.testing.assert_frame_equal(eval_log(tmp_path), eval_log(run_dir))
    assert stored_labels(tmp_path) == stored_labels(run_dir)


def test_replay_of_other_queries_is_refused_naming_the_first_differing_one(human_run, tmp_path):
    run_dir = human_run.run_dir
    other_seed = [*HUMAN, "seed=6", "teacher=replay", f"labels_from={run_dir / 'labels.sqlite'}"]
    result = subprocess.run([sys.executable, "train_QPA.py", *other_seed, f"hydra.run.dir={tmp_path}"],
                            cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)  # fmt: skip
    assert result.returncode != 0
    assert re.search(r"round 1 query 1 is episode \d+ step \d+ vs episode \d+ step \d+ in this run but episode",
                     result.stderr)  # fmt: skip


def test_a_run_killed_in_the_middle_of_a_round_asks_only_the_unanswered_queries(tmp_path):
    """Also: while the run waits for its person, a second process on its directory is refused and the page stays
    the first run's; the URL is in a file that status.json names."""
    run = HumanRun(tmp_path, *HUMAN)
    first_answers = {}
    for _ in range(4):
        query = run.next_query()
        run.answer(query, "left")
        first_answers[query["query"]] = query["round"]
    before = answers_in(tmp_path)
    # status.json says where the run waits and how far the round is (its step stays the checkpoint's, to resume from)
    waiting = "round 1, 4 of 10 answered"
    status = wait_for_status(tmp_path, lambda status: status.get("waiting_for_labels") == waiting)
    assert status == {"state": "running", "step": 1000, "error": None, "current_step": 1100,
                      "waiting_for_labels": waiting, "labelling_url_file": str(tmp_path / URL_NAME)}  # fmt: skip
    assert (tmp_path / URL_NAME).read_text() == f"{run.url()}\n"
    second = subprocess.run([sys.executable, "train_QPA.py", *HUMAN, f"hydra.run.dir={tmp_path}"], cwd=REPO_ROOT,
                            capture_output=True, text=True, timeout=600)  # fmt: skip
    assert second.returncode == 1 and "labelling at" not in second.stdout
    assert second.stderr.strip().splitlines()[-1].startswith(f"error: {tmp_path} is in use by another run: PID "
                                                              f"{run.process.pid} on host ")  # fmt: skip
    assert json.loads((tmp_path / "status.json").read_text()) == status
    assert run.next_query()["round"] == 1  # the first run's page, still serving
    run.process.send_signal(signal.SIGKILL)
    run.process.wait(60)

    resumed = HumanRun(tmp_path, *HUMAN)
    served = []
    for _ in range(ROUNDS * QUERIES - 4):
        query = resumed.next_query()
        served.append((query["round"], query["query"]))
        resumed.answer(query, "right")
    resumed.finish()
    assert not {(round_index, query) for query, round_index in first_answers.items()} & set(served)
    after = answers_in(tmp_path)
    assert [row for row in after if row[2] == "left"] == [row for row in before if row[2] == "left"]
    assert len(after) == ROUNDS * QUERIES and all(answer is not None for _, _, answer, _ in after)
    assert json.loads((tmp_path / "status.json").read_text()) == {"state": "finished", "step": 2000, "error": None}


def wait_for_status(run_dir: Path, condition, timeout: float = 60) -> dict:
    """status.json once `condition` holds for it (the run writes it from its own thread)."""
    deadline = time.monotonic() + timeout
    while not condition(status := json.loads((run_dir / "status.json").read_text())):
        assert time.monotonic() < deadline, status
        time.sleep(0.2)
    return status


def test_async_mode_trains_on_while_a_round_is_open(tmp_path):
    longer = [item for item in HUMAN if not item.startswith("num_train_steps=")]
    run = HumanRun(tmp_path, *longer, "num_train_steps=6000", "human_mode=async")
    held = run.next_query()
    time.sleep(1)
    later = run.api("/api/next")
    assert later["step"] > held["step"]  # nothing answered yet, and the run has moved on
    for query in (held, later):
        if "query" in query:
            run.answer(query, "left")
    while run.process.poll() is None:
        try:
            query = run.api("/api/next")
            if "query" in query:
                run.answer(query, "right")
        except OSError:  # the run ended, and its page with it (refused or reset)
            break
        time.sleep(0.1)
    run.finish()
    with sqlite3.connect(tmp_path / "labels.sqlite") as db:
        rounds = db.execute("SELECT opened_step, completed_step FROM rounds ORDER BY round").fetchall()
    assert rounds[0][1] > rounds[0][0]  # the labels arrived steps after the round opened
    waits = pd.read_csv(tmp_path / "train.csv")["label_wait_steps"].dropna()
    assert (waits > 0).all() and len(waits) == sum(completed is not None for _, completed in rounds)


def test_the_page_says_when_other_tabs_hold_the_queries_and_when_the_run_stopped(browser, tmp_path):
    """Another tab takes over the query on screen: the page stops it at once and says where it went; other tabs hold
    every query: the page says so, answers nothing and takes one over; a tab that closes gives its query back at
    once; the run is killed while a query is on screen, then started again (a new port and token). The run has a
    study's own instruction."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.support.ui import WebDriverWait

    study = [*HUMAN, f"human_instruction={STUDY_INSTRUCTION}"]
    run = HumanRun(tmp_path, *study)
    errors_in_console(browser)
    browser.get(run.url())
    WebDriverWait(browser, 300).until(query_on_screen)
    assert browser.find_element("id", "goal").text == f"Goal: {STUDY_INSTRUCTION}"
    on_screen = int(QUERY_LINE.fullmatch(progress(browser))[2])
    others: dict[int, str] = {}  # query -> the tab (an API client with its own id) that holds it
    deadline = time.monotonic() + 300
    while len(others) < QUERIES - 1 and time.monotonic() < deadline:
        tab = f"other{len(others)}"
        query = run.api(f"/api/next?tab={tab}")
        if "query" in query:
            others[query["query"]] = tab
        else:
            time.sleep(0.2)
    assert run.api("/api/next?tab=bobs&name=Bob&take_over=1")["query"] == on_screen  # the query held longest
    view = WebDriverWait(browser, 30).until(lambda driver: (view := snapshot(driver))["status"] and view)
    assert view["status"] == f"query {on_screen} of round 1 was taken over by another tab (Bob), which answers it " \
                             "now; this tab stopped showing it"  # fmt: skip
    assert all(view["answers_disabled"]) and view["left_pixel"][:3] == [68, 68, 68]
    view = WebDriverWait(browser, 30).until(lambda driver: "open in other" in (view := snapshot(driver))["progress"]
                                            and view)  # fmt: skip
    assert view["progress"].startswith(
        "round 1, 0 of 10 answered, step 1100: 10 open in other tabs (or in closed ones:"
    )
    assert view["progress"].endswith("or take one over; the run waits for them")
    assert all(view["answers_disabled"]) and view["undo_disabled"]
    ActionChains(browser).send_keys("1").send_keys("u").perform()  # no query, no answer: neither key does anything
    take_over = browser.find_element("id", "take-over")
    assert take_over.is_displayed()
    take_over.click()
    WebDriverWait(browser, 30).until(query_on_screen)
    taken = int(QUERY_LINE.fullmatch(progress(browser))[2])
    assert taken == next(iter(others))  # the query held longest
    notice = run.api(f"/api/state?tab={others[taken]}")["taken"]  # what the page it was taken from is told
    assert notice["message"] == f"query {taken} of round 1 was taken over by another tab, which answers it now; " \
                                "this tab stopped showing it"  # fmt: skip

    browser.get("about:blank")  # the tab closes: its query goes back to the pool now, not after human_timeout
    deadline = time.monotonic() + 10
    while "query" not in (query := run.api("/api/next?tab=new")) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert query["query"] == taken

    browser.get(run.url())
    WebDriverWait(browser, 30).until(lambda driver: "open in other tabs" in progress(driver))
    browser.find_element("id", "take-over").click()
    WebDriverWait(browser, 30).until(query_on_screen)
    old_url = run.url()
    run.kill()  # with a query on screen
    stopped = "this run stopped; every answer recorded so far is kept in its labels.sqlite; if it was started again, " \
              "open the URL the new run printed (also in labelling_url.txt in its run directory)"  # fmt: skip
    WebDriverWait(browser, 30).until(lambda driver: progress(driver) == stopped)
    ActionChains(browser).send_keys("1").perform()  # nothing to answer, and the page still says why
    restarted = HumanRun(tmp_path, *study)
    assert restarted.url() != old_url
    assert browser.find_element("tag name", "body").text == stopped  # that, and nothing else
    browser.get(restarted.url())
    WebDriverWait(browser, 300).until(query_on_screen)
    restarted_url = restarted.url()
    restarted.kill()
    assert not any(answer for *_, answer, _ in answers_in(tmp_path))  # no key pressed without a query answered one
    # Only requests to the two killed runs failed (refused, or reset when a kill cut one short); no script error
    killed_runs = tuple(url.split("/?")[0] for url in (old_url, restarted_url))  # http://127.0.0.1:<port>
    cut_off = re.compile(r"Failed to load resource: net::ERR_CONNECTION_(REFUSED|RESET)")
    errors = errors_in_console(browser)
    assert all(error.startswith(killed_runs) and cut_off.search(error) for error in errors), errors


def test_a_full_disk_while_a_person_labels_stops_the_run_in_one_line_and_keeps_every_answer(tmp_path):
    """A tmpfs filled up in the middle of a round (root, as CI); otherwise the kernel's file size limit refuses the
    write-ahead log's next page. The answers given stay, the re-run asks only the others, and replaying its labels
    gives the same evaluations, so the interruption changed nothing."""
    root = os.geteuid() == 0
    with small_filesystem(tmp_path / "fs") if root else nullcontext(tmp_path) as filesystem:
        run_dir = filesystem / "run"
        run = HumanRun(run_dir, *HUMAN)
        for _ in range(4):
            run.answer(run.next_query(), "left")
        query = run.next_query()
        # The run has written how far the round is to status.json: the next write to fail is the answer's
        wait_for_status(run_dir, lambda status: status.get("waiting_for_labels") == "round 1, 4 of 10 answered")
        if root:
            filler = fill(filesystem)
        else:
            size = (run_dir / "labels.sqlite-wal").stat().st_size
            resource.prlimit(run.process.pid, resource.RLIMIT_FSIZE, (size, size))
        with pytest.raises(urllib.error.HTTPError) as refused:
            run.answer(query, "right")
        assert refused.value.code == 503
        reply = json.loads(refused.value.read())["error"]
        assert (
            reply.startswith(f"not recorded: cannot write {run_dir / 'labels.sqlite'}: ") and "the run stops" in reply
        )
        assert run.process.wait(120) == 1
        last_line = "".join(run.stderr).strip().splitlines()[-1]
        reason = "database or disk is full (SQLITE_FULL)" if root else "disk I/O error (SQLITE_IOERR_WRITE)"
        assert last_line == f"error: cannot write {run_dir / 'labels.sqlite'}: {reason}; once it can be written, " \
                            "re-run the same command to resume from step 1000"  # fmt: skip
        status = json.loads((run_dir / "status.json").read_text())
        assert status == {"state": "failed", "step": 1000, "error": last_line.removeprefix("error: ")}
        if root:
            filler.unlink()
        assert [answer for *_, answer, _ in answers_in(run_dir) if answer] == ["left"] * 4
        resumed = HumanRun(run_dir, *HUMAN)
        for _ in range(ROUNDS * QUERIES - 4):
            resumed.answer(resumed.next_query(), "right")
        resumed.finish()
        replay = tmp_path / "replay"
        result = subprocess.run([sys.executable, "train_QPA.py", *HUMAN, "teacher=replay",
                                 f"labels_from={run_dir / 'labels.sqlite'}", f"hydra.run.dir={replay}"],
                                cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)  # fmt: skip
        assert result.returncode == 0, result.stderr[-3000:]
        pd.testing.assert_frame_equal(eval_log(replay), eval_log(run_dir))


@pytest.mark.parametrize("signal_number", [signal.SIGTERM, signal.SIGINT])
def test_a_stopped_human_run_ends_with_its_one_line_and_no_opengl_traceback(tmp_path, signal_number):
    """The render thread's OpenGL context is freed in that thread before the interpreter exits."""
    run = HumanRun(tmp_path, *HUMAN)
    run.next_query()  # the page is up and the render thread has drawn
    run.process.send_signal(signal_number)
    assert run.process.wait(120) == 1
    stderr = "".join(run.stderr)
    assert "Traceback" not in stderr and "EGLError" not in stderr, stderr[-3000:]
    name = signal.Signals(signal_number).name
    assert (
        stderr.strip().splitlines()[-1] == f"error: stopped by {name}; re-run the same command to resume from step 1000"
    )
    assert not (tmp_path / URL_NAME).exists()


def test_a_run_whose_directory_was_taken_over_stops_and_leaves_it_alone(tmp_path):
    """Another node's process took the lock over (this run's heartbeat had stopped for STALE_S, as a suspended job's
    does): within a heartbeat the run stops in one line, and its status.json stays as the new holder will write it."""
    run = HumanRun(tmp_path, *HUMAN)
    run.next_query()  # the run waits for its person, and has said so in status.json
    wait_for_status(tmp_path, lambda status: status.get("waiting_for_labels") == "round 1, 0 of 10 answered")
    status = (tmp_path / "status.json").read_bytes()
    taker = Holder("node-elsewhere", 4242, time.time(), time.time(), "0123456789abcdef")
    fd = os.open(tmp_path / LOCK_NAME, os.O_WRONLY)  # written in place, as RunLock writes it
    os.pwrite(fd, json.dumps(asdict(taker)).encode().ljust(RECORD_BYTES), 0)
    os.close(fd)
    assert run.process.wait(HEARTBEAT_S + 120) == 1
    last_line = "".join(run.stderr).strip().splitlines()[-1]
    assert last_line.startswith("error: PID 4242 on host node-elsewhere, since ") and last_line.endswith(
        f"took over {tmp_path} after this run missed its heartbeats for 120 s (suspended?); this run stopped and left "
        "the directory to it"
    )
    assert (tmp_path / "status.json").read_bytes() == status
    assert read_holder(tmp_path / LOCK_NAME) == taker
