"""run.lock on real files with real processes: a live holder refuses a second one, a killed holder's lock is taken
over, a holder on another host is judged by its heartbeat, and a holder that loses its lock is told.
tests/test_run_dir.py drives the same through train_QPA.py."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import asdict
from pathlib import Path

import pytest
from conftest import REPO_ROOT

from run_lock import LOCK_NAME, RECORD_BYTES, Holder, RunLock, RunLockedError, live_holder, read_holder

HOLD = """
import sys, time
from pathlib import Path
from run_lock import RunLock
lock = RunLock(Path(sys.argv[1]))
print("held", flush=True)
time.sleep(600)
"""


def hold_in_another_process(work_dir: Path) -> subprocess.Popen:
    process = subprocess.Popen([sys.executable, "-c", HOLD, str(work_dir)], cwd=REPO_ROOT, stdout=subprocess.PIPE,
                               text=True)  # fmt: skip
    assert process.stdout.readline() == "held\n"
    return process


def write_record(work_dir: Path, holder: Holder) -> None:
    """What RunLock on another node writes: the record in place, never an empty file in between."""
    fd = os.open(work_dir / LOCK_NAME, os.O_WRONLY | os.O_CREAT)
    try:
        os.pwrite(fd, json.dumps(asdict(holder)).encode().ljust(RECORD_BYTES), 0)
    finally:
        os.close(fd)


def test_a_live_holder_refuses_a_second_process_naming_it(tmp_path):
    process = hold_in_another_process(tmp_path)
    try:
        with pytest.raises(RunLockedError) as refused:
            RunLock(tmp_path)
        message = str(refused.value)
        holder = f"PID {process.pid} on host {socket.gethostname()}, since "
        assert message.startswith(f"{tmp_path} is in use by another run: {holder}"), message
        assert "\n" not in message
        assert live_holder(tmp_path).pid == process.pid
    finally:
        process.kill()
        process.wait()


def test_the_lock_of_a_killed_process_is_taken_over_and_released_empty(tmp_path, capfd):
    process = hold_in_another_process(tmp_path)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert read_holder(tmp_path / LOCK_NAME).pid == process.pid  # left behind
    assert live_holder(tmp_path) is None
    lock = RunLock(tmp_path)
    assert f"PID {process.pid} on host {socket.gethostname()}" in capfd.readouterr().err
    assert read_holder(tmp_path / LOCK_NAME) == lock.holder
    lock.release()
    lock.release()
    assert (tmp_path / LOCK_NAME).read_bytes() == b""
    RunLock(tmp_path).release()  # an emptied lock is free


def other_host(heartbeat_age: float) -> Holder:
    now = time.time()
    return Holder("node-elsewhere", 4242, now - 3600, now - heartbeat_age, "0123456789abcdef")


def test_a_holder_on_another_host_with_an_old_heartbeat_is_taken_over_at_once(tmp_path):
    write_record(tmp_path, other_host(heartbeat_age=200))
    start = time.monotonic()
    lock = RunLock(tmp_path, stale_s=120)
    assert time.monotonic() - start < 5
    lock.release()


def test_a_holder_on_another_host_that_renews_its_heartbeat_is_alive(tmp_path):
    holder = other_host(heartbeat_age=1)
    write_record(tmp_path, holder)
    stop = threading.Event()

    def beat() -> None:  # the other node's heartbeat thread, writing into the shared file
        while not stop.wait(0.5):
            holder.heartbeat = time.time()
            write_record(tmp_path, holder)

    thread = threading.Thread(target=beat)
    thread.start()
    try:
        with pytest.raises(RunLockedError, match="PID 4242 on host node-elsewhere"):
            RunLock(tmp_path, heartbeat_s=0.2, stale_s=10)
    finally:
        stop.set()
        thread.join()
    assert read_holder(tmp_path / LOCK_NAME).token == holder.token  # untouched


def test_a_holder_on_another_host_whose_heartbeat_stops_is_taken_over_after_the_stale_time(tmp_path, capfd):
    write_record(tmp_path, other_host(heartbeat_age=1))
    start = time.monotonic()
    lock = RunLock(tmp_path, heartbeat_s=0.2, stale_s=2)
    assert 2 <= time.monotonic() - start < 10
    assert "waiting up to 2 s for a heartbeat" in capfd.readouterr().err
    lock.release()


def test_a_holder_whose_lock_was_taken_over_is_told_and_leaves_the_record_alone(tmp_path):
    told = threading.Event()
    lock = RunLock(tmp_path, on_lost=lambda holder: told.set(), heartbeat_s=0.1)
    usurper = other_host(heartbeat_age=0)
    write_record(tmp_path, usurper)
    assert told.wait(10)
    assert lock.lost_to == usurper
    lock.release()
    assert read_holder(tmp_path / LOCK_NAME) == usurper


def test_the_heartbeat_is_renewed(tmp_path):
    lock = RunLock(tmp_path, heartbeat_s=0.1)
    first = read_holder(tmp_path / LOCK_NAME).heartbeat
    time.sleep(0.5)
    assert read_holder(tmp_path / LOCK_NAME).heartbeat > first
    lock.release()
