"""Child processes (training runs, sweeps of them) run a few at a time by a long comparison, and stopped as a whole.

A driver that trains for hours is stopped with Ctrl-C or `kill`: then no further run may start, and the running ones
must stop the way a training run stops on SIGINT (at once, keeping its last checkpoint, its status "interrupted"), so
that the same command goes on from there. A thread pool alone does neither: its queued runs still start after the
interrupt. So each child gets its own session (a terminal's Ctrl-C reaches only the driver) and the driver passes
SIGINT on to every running child's session, the child's own children included. SIGUSR2 stops the driver the same
way but is passed on as SIGUSR2, on which a training run stops at its next episode end after a checkpoint there, so
that nothing is trained twice (scripts/sweep.py outlives it).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from contextlib import suppress
from typing import Any, TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR2)


class StoppedError(Exception):
    """The driver was stopped by a signal: some runs were interrupted or never started."""


class RunPool:
    """Starts children for `map`'s calls until SIGINT, SIGTERM or SIGUSR2 reaches this process; from then on `popen`
    starts none (it returns None) and every running child's session gets SIGINT (SIGUSR2 for SIGUSR2). `tag` names
    the driver in the line that tells a person how to go on after a stop."""

    def __init__(self, tag: str) -> None:
        self.tag = tag
        self.stopped = False
        self.children: list[subprocess.Popen] = []
        self.lock = threading.Lock()

    def popen(self, command: list[str], **kwargs: Any) -> subprocess.Popen | None:
        """The started child, or None once the pool is stopped."""
        with self.lock:
            if self.stopped:
                return None
            child = subprocess.Popen(command, start_new_session=True, **kwargs)
            self.children.append(child)
            return child

    def call(self, command: list[str], **kwargs: Any) -> int | None:
        """The child's exit status, or None when it was not started."""
        child = self.popen(command, **kwargs)
        return None if child is None else child.wait()

    def stop(self, signum: int, frame: object = None) -> None:
        passed_on = signal.SIGUSR2 if signum == signal.SIGUSR2 else signal.SIGINT
        with self.lock:
            self.stopped = True
            for child in self.children:
                if child.poll() is None:
                    with suppress(ProcessLookupError):  # it ended just now
                        os.killpg(child.pid, passed_on)

    def map(self, function: Callable[[Item], Result], items: Iterable[Item], jobs: int) -> list[Result]:
        """`function` over `items` in order, `jobs` at a time, with STOP_SIGNALS stopping the pool; if one came, says
        so on stderr and raises StoppedError after the calls have returned."""
        replaced = {sig: signal.signal(sig, self.stop) for sig in STOP_SIGNALS}
        try:
            with ThreadPoolExecutor(max_workers=jobs) as pool:
                results = list(pool.map(function, items))
        finally:
            for sig, handler in replaced.items():
                signal.signal(sig, handler)
        if self.stopped:
            print(f"[{self.tag}] stopped by a signal: re-run the same command to go on from the runs' checkpoints",
                  file=sys.stderr, flush=True)  # fmt: skip
            raise StoppedError
        return results
