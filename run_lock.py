"""One writer per run directory: `run.lock`, held by a run for its whole life.

The file names its holder (host, PID, start) and a heartbeat the holder renews every HEARTBEAT_S seconds from a
thread; the holder also keeps an `fcntl.flock` on it where the filesystem supports one. A second process is
refused while the holder lives, and takes over a lock its holder left behind:
- flock granted: nobody on this host holds the lock (the kernel drops a dead process's flock), so a holder on this
  host is gone. A holder on another host is judged by its heartbeat, since a shared filesystem may grant flocks
  per node only (Lustre's localflock) or not at all.
- a holder on this host is alive while its PID is (checked when flock is unavailable);
- a holder on another host is gone once its heartbeat is older than STALE_S by this host's clock, or when it
  does not change for STALE_S while this process watches it (so clocks need not agree; a requeued job whose old
  node died waits at most that long).
The record is rewritten in place (one padded block, so a reader never sees it half-written) rather than renamed:
a flock belongs to the file, and replacing the file would let a second process lock the new one while the holder
keeps the old. Without flock, two processes that take over at once could both write their record; each reads it
back after SETTLE_S and the one not named there gives up.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import secrets
import socket
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from config_rules import ConfigError
from utils import WriteError

LOCK_NAME = "run.lock"
HEARTBEAT_S = 30.0
STALE_S = 120.0  # four missed heartbeats
SETTLE_S = 2.0
RECORD_BYTES = 512
# flock errors that mean "this filesystem has no flock", not "someone holds it"
NO_FLOCK = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL}


@dataclass
class Holder:
    host: str
    pid: int
    started: float  # time.time() when the lock was taken
    heartbeat: float  # time.time() of the last renewal
    token: str  # tells this holding apart from any other, whatever the host and PID

    def describe(self) -> str:
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.started))
        return f"PID {self.pid} on host {self.host}, since {since} (heartbeat {time.time() - self.heartbeat:.0f} s ago)"


class RunLockedError(ConfigError):
    """Another live process holds the run directory: nothing was touched, its status.json included."""


def read_holder(path: Path) -> Holder | None:
    """The record of `path`, None when the file is missing, empty (released) or not a record."""
    try:
        # A fresh open each time: on NFS, close-to-open consistency is what makes another node's write visible.
        text = path.read_bytes().decode(errors="replace").strip()
        return Holder(**json.loads(text)) if text else None
    except (OSError, ValueError, TypeError):
        return None


def holder_alive(holder: Holder) -> bool | None:
    """True/False for a holder on this host (its PID alive or not); None for another host (only its heartbeat can
    tell)."""
    if holder.host != socket.gethostname():
        return None
    try:
        os.kill(holder.pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def live_holder(work_dir: Path) -> Holder | None:
    """The holder of `work_dir`'s lock when it looks alive from here, without taking the lock (for reports such as
    `scripts/sweep.py --summary`): its PID alive on this host, its heartbeat younger than STALE_S elsewhere."""
    holder = read_holder(work_dir / LOCK_NAME)
    if holder is None:
        return None
    alive = holder_alive(holder)
    return holder if (time.time() - holder.heartbeat <= STALE_S if alive is None else alive) else None


class RunLock:
    """Hold `<work_dir>/run.lock` until `release`; raises RunLockedError (one line naming the holder) when a live
    process holds it. `on_lost` is called (from the heartbeat thread) if another process takes the lock over,
    which happens only after this one missed its heartbeats for STALE_S (a suspended job on a shared filesystem)."""

    def __init__(
        self,
        work_dir: Path,
        on_lost: Callable[[Holder], None] | None = None,
        heartbeat_s: float = HEARTBEAT_S,
        stale_s: float = STALE_S,
    ) -> None:
        self.path = work_dir / LOCK_NAME
        self.heartbeat_s, self.stale_s = heartbeat_s, stale_s
        self.on_lost = on_lost
        self.lost_to: Holder | None = None
        now = time.time()
        self.holder = Holder(socket.gethostname(), os.getpid(), now, now, secrets.token_hex(8))
        self._stop = threading.Event()
        try:
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as error:
            raise WriteError.of(self.path, error) from None
        try:
            self._acquire()
        except BaseException:
            os.close(self._fd)
            raise
        self._thread = threading.Thread(target=self._beat, daemon=True, name="run-lock-heartbeat")
        self._thread.start()

    def _acquire(self) -> None:
        flocked = self._flock()
        previous = read_holder(self.path)
        if previous is not None:
            self._check_gone(previous, flocked)
        self._write()
        if not flocked:
            time.sleep(SETTLE_S)
            current = read_holder(self.path)
            if current is None or current.token != self.holder.token:
                raise RunLockedError(f"{self.path.parent} was taken at the same moment by {self._name(current)}")
        if previous is not None:
            print(f"took over {self.path}: {previous.describe()} is gone", file=sys.stderr)

    def _flock(self) -> bool:
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            raise RunLockedError(self._held_message(read_holder(self.path))) from None
        except OSError as error:
            if error.errno in NO_FLOCK:
                return False
            raise WriteError.of(self.path, error) from None

    def _check_gone(self, previous: Holder, flocked: bool) -> None:
        """Return when `previous` holds the lock no longer, else raise RunLockedError."""
        alive = holder_alive(previous)
        if alive is not None:  # this host: a granted flock says more than a PID, which may have been reused
            if alive and not flocked:
                raise RunLockedError(self._held_message(previous))
            return
        if time.time() - previous.heartbeat > self.stale_s:
            return
        print(f"{self.path} names {previous.describe()}; waiting up to {self.stale_s:.0f} s for a heartbeat to see "
              "whether it is alive", file=sys.stderr)  # fmt: skip
        deadline = time.monotonic() + self.stale_s
        while time.monotonic() < deadline:
            time.sleep(min(1.0, self.heartbeat_s))
            current = read_holder(self.path)
            if current is None:
                return
            if current.token != previous.token or current.heartbeat != previous.heartbeat:
                raise RunLockedError(self._held_message(current))

    def _held_message(self, holder: Holder | None) -> str:
        return f"{self.path.parent} is in use by another run: {self._name(holder)}; stop it first or wait until it ends"

    @staticmethod
    def _name(holder: Holder | None) -> str:
        return holder.describe() if holder is not None else "a process whose record is not readable"

    def _write(self) -> None:
        record = json.dumps(asdict(self.holder)).encode().ljust(RECORD_BYTES - 1) + b"\n"
        os.pwrite(self._fd, record, 0)
        os.ftruncate(self._fd, RECORD_BYTES)
        os.fsync(self._fd)

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            current = read_holder(self.path)
            if current is not None and current.token != self.holder.token:
                self.lost_to = current
                if self.on_lost is not None:
                    self.on_lost(current)
                return
            self.holder.heartbeat = time.time()
            with contextlib.suppress(OSError):  # a failing disk stops the run through its own writes
                self._write()

    def release(self) -> None:
        """Stop the heartbeat and empty the file (left in place: see the module docstring). Safe to call twice."""
        if self._stop.is_set():
            return
        self._stop.set()
        self._thread.join()
        if self.lost_to is None:
            with contextlib.suppress(OSError):  # a read-only filesystem: the next run sees a holder that is gone
                os.ftruncate(self._fd, 0)
        os.close(self._fd)
