"""`teacher=human` end to end: tiny walker_walk runs whose queries are answered in a real headless Chromium (Debian's
chromium and chromedriver, driven by Selenium) or over the page's HTTP API; then resuming a run killed in the middle
of a round, replaying a human run's labels, and human_mode=async.

`.ci/run` installs the browser; elsewhere these tests are skipped when /usr/bin/chromium is missing. With
QPA_SAVE_SCREENSHOT=1 the page's screenshot is also written to figure/human_feedback_page.png for the README.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.request
from io import BytesIO
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import REPO_ROOT, TIME_COLUMNS
from PIL import Image
from test_train import TINY

pytestmark = pytest.mark.slow
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
HUMAN = [*TINY, "env=walker_walk", "teacher=human", "human_port=0", "seed=5", "num_threads=1", "device=cpu"]
ROUNDS, QUERIES = 2, 10  # TINY asks max_feedback=20 in rounds of reward_batch=10


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

    def finish(self, timeout: float = 600.0) -> None:
        assert self.process.wait(timeout) == 0, "".join(self.stderr)[-3000:]


def answers_in(run_dir: Path) -> list[tuple]:
    with sqlite3.connect(run_dir / "labels.sqlite") as db:
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
                 "--window-size=900,700"]:  # fmt: skip
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def human_run(browser, tmp_path_factory) -> tuple[Path, dict[tuple[int, int], str]]:
    """A tiny walker run labelled in the browser, by keys and by clicks; returns its dir and the answers given."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    run_dir = tmp_path_factory.mktemp("human") / "run"
    run = HumanRun(run_dir, *HUMAN)
    browser.get(run.url())
    ways = [("1", "left"), (Keys.ARROW_RIGHT, "right"), ("=", "equal"), ("s", "skip"), (Keys.ARROW_LEFT, "left"),
            ("#answer-right", "right"), ("#answer-left", "left"), ("#answer-equal", "equal"),
            ("#answer-skip", "skip"), ("2", "right")]  # fmt: skip
    given: dict[tuple[int, int], str] = {}
    for number in range(ROUNDS * QUERIES):
        WebDriverWait(browser, 300).until(lambda driver: driver.find_element("id", "progress").text.startswith("query"))
        progress = browser.find_element("id", "progress").text
        query, _, round_number = map(
            int, re.match(r"query (\d+) of (\d+), round (\d+), \d+ of 20 used", progress).groups()
        )
        if number == 0:
            # The progress line can show before the first frames are drawn (seen under load with two test workers):
            # wait until both canvases hold a picture, not one flat colour, then until the left one changes.
            WebDriverWait(browser, 60).until(
                lambda driver: min(canvas_pixels(driver, side).std() for side in ("left", "right")) > 1.0
            )
            first = canvas_pixels(browser, "left")
            WebDriverWait(browser, 10, poll_frequency=0.3).until(  # the video plays
                lambda driver, first=first: np.abs(first - canvas_pixels(driver, "left")).mean() > 0.5
            )
            later, right = canvas_pixels(browser, "left"), canvas_pixels(browser, "right")
            assert np.abs(later - right).mean() > 0.5  # the two sides show different segments
            browser.save_screenshot(str(run_dir / "page.png"))
            if os.environ.get("QPA_SAVE_SCREENSHOT"):
                shutil.copy(run_dir / "page.png", REPO_ROOT / "figure" / "human_feedback_page.png")
        way, answer = ways[number % len(ways)]
        if way.startswith("#"):
            browser.find_element("css selector", way).click()
        else:
            ActionChains(browser).send_keys(way).perform()
        given[(round_number - 1, query - 1)] = answer
        WebDriverWait(browser, 60).until(
            lambda driver, shown=progress: driver.find_element("id", "progress").text != shown
        )
    run.finish()
    return run_dir, given


def test_a_person_labels_a_run_in_the_browser_and_the_run_learns_from_exactly_those_labels(human_run):
    run_dir, given = human_run
    labels = {"left": 0.0, "right": 1.0, "equal": 0.5, "skip": None}
    recorded = answers_in(run_dir)
    assert [(round_index, query, answer) for round_index, query, answer, _ in recorded] == [
        (round_index, query, given[(round_index, query)]) for round_index in range(ROUNDS) for query in range(QUERIES)
    ]
    assert [label for *_, label in recorded] == [labels[given[key]] for key in sorted(given)]
    assert stored_labels(run_dir) == [labels[given[key]] for key in sorted(given) if given[key] != "skip"]
    train = pd.read_csv(run_dir / "train.csv")
    assert train["labeled_feedback"].iloc[-1] == 16  # 20 asked, 4 skipped
    assert (run_dir / "page.png").stat().st_size > 10_000


def test_replay_retrains_a_human_run_exactly(human_run, tmp_path):
    run_dir, _ = human_run
    replay = [*HUMAN, "teacher=replay", f"labels_from={run_dir / 'labels.sqlite'}"]
    result = subprocess.run([sys.executable, "train_QPA.py", *replay, f"hydra.run.dir={tmp_path}"], cwd=REPO_ROOT,
                            capture_output=True, text=True, timeout=600)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    pd.testing.assert_frame_equal(eval_log(tmp_path), eval_log(run_dir))
    assert stored_labels(tmp_path) == stored_labels(run_dir)


def test_replay_of_other_queries_is_refused_naming_the_first_differing_one(human_run, tmp_path):
    run_dir, _ = human_run
    other_seed = [*HUMAN, "seed=6", "teacher=replay", f"labels_from={run_dir / 'labels.sqlite'}"]
    result = subprocess.run([sys.executable, "train_QPA.py", *other_seed, f"hydra.run.dir={tmp_path}"],
                            cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)  # fmt: skip
    assert result.returncode != 0
    assert re.search(r"round 0 query 0 is episode \d+ step \d+ vs episode \d+ step \d+ in this run but episode",
                     result.stderr)  # fmt: skip


def test_a_run_killed_in_the_middle_of_a_round_asks_only_the_unanswered_queries(tmp_path):
    run = HumanRun(tmp_path, *HUMAN)
    first_answers = {}
    for _ in range(4):
        query = run.next_query()
        run.answer(query, "left")
        first_answers[query["query"]] = query["round"]
    before = answers_in(tmp_path)
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
