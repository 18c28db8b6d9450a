"""A lock file for a bundle folder, so that two runs never write into the same bundle at once.

``<bundle>/.featurelens.lock`` holds the owner's pid, host, process start time, start date, command
and a random token. It is created atomically, complete, with ``os.link`` of a written temporary file
(``link`` fails if the lock exists). A second run is refused with :class:`BundleLockedError`, which
names the owner. A lock is **stale**, and taken over, when its owner ran on this host and that
process is gone: the pid no longer exists, or it now belongs to a process that started at another
time (the pid was reused). Checking and breaking a stale lock happen under an ``flock`` on a side
file, so that of two runs finding the same stale lock only one takes it. A lock from another host is
never broken automatically, since its pid cannot be checked from here; the message says which file to
remove. :meth:`BundleLock.release` removes the lock only if it still holds this run's token.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from featurelens.errors import FeaturelensError

LOCK_NAME = ".featurelens.lock"


class BundleLockedError(FeaturelensError):
    """Another run is writing into this bundle folder."""


def _start_ticks(pid: int) -> int | None:
    """The process start time in clock ticks since boot (Linux ``/proc/PID/stat`` field 22), or None."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    try:  # the command name (field 2) may hold spaces and parentheses: split after the last ')'
        return int(stat.rsplit(")", 1)[1].split()[19])
    except (IndexError, ValueError):
        return None


def _alive(pid: int, start_ticks: int | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        pass
    if start_ticks is not None:
        now = _start_ticks(pid)
        if now is not None and now != start_ticks:
            return False  # the pid was reused by another process
    return True


class BundleLock:
    """``with BundleLock(folder, command="featurelens network ..."):`` — exclusive writing of ``folder``."""

    def __init__(self, folder: str | Path, *, command: str | None = None) -> None:
        self.folder = Path(folder)
        self.path = self.folder / LOCK_NAME
        self.command = command if command is not None else " ".join(sys.argv)[:500]
        self.token: str | None = None

    # -- reading ---------------------------------------------------------------------------------------
    def owner(self) -> dict[str, Any] | None:
        """The current lock's content, ``{}`` if unreadable, ``None`` if there is no lock."""
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        except OSError:
            return {}
        try:
            data = json.loads(text)
        except ValueError:
            return {}
        return data if isinstance(data, dict) else {}

    def is_stale(self, info: dict[str, Any]) -> bool:
        """A lock of a dead process on this host (never one from another host)."""
        if info.get("host") != socket.gethostname():
            return False
        pid = info.get("pid")
        return isinstance(pid, int) and not _alive(pid, info.get("start_ticks"))

    def _refusal(self, info: dict[str, Any]) -> BundleLockedError:
        if not info:
            who = "another run (its lock file cannot be read)"
        else:
            since = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(info.get("time", 0)))
            who = f"another run (pid {info.get('pid')} on {info.get('host')}, since {since}"
            who += f", `{info['command']}`)" if info.get("command") else ")"
        return BundleLockedError(
            f"{self.folder} is being written by {who}; wait for it to finish, or, if it is no longer running, "
            f"remove {self.path}"
        )

    def check(self) -> None:
        """Raise :class:`BundleLockedError` now if a live run holds the lock (a cheap early test before a
        long set-up; :meth:`acquire` still decides)."""
        info = self.owner()
        if info is not None and self.token is None and not (info and self.is_stale(info)):
            raise self._refusal(info)

    # -- taking and giving back ----------------------------------------------------------------------
    def _try_create(self) -> bool:
        token = uuid.uuid4().hex
        info = {"pid": os.getpid(), "host": socket.gethostname(), "start_ticks": _start_ticks(os.getpid()),
                "time": time.time(), "command": self.command, "token": token}
        tmp = self.folder / f".featurelens.lock.{token}.tmp"
        tmp.write_text(json.dumps(info), encoding="utf-8")
        try:
            os.link(tmp, self.path)  # atomic: fails if a lock exists, and the lock is never half-written
        except FileExistsError:
            return False
        finally:
            tmp.unlink(missing_ok=True)
        self.token = token
        return True

    def acquire(self) -> BundleLock:
        """Take the lock or raise :class:`BundleLockedError`; a stale lock is taken over."""
        if self.token is not None:
            return self
        self.folder.mkdir(parents=True, exist_ok=True)
        if self._try_create():
            return self
        with self._guard():
            info = self.owner()
            if info is None:  # released in the meantime
                if self._try_create():
                    return self
                info = self.owner() or {}
            if info and self.is_stale(info):
                self.path.unlink(missing_ok=True)
                if self._try_create():
                    return self
                info = self.owner() or {}
        raise self._refusal(info)

    @contextlib.contextmanager
    def _guard(self):
        with open(self.folder / ".featurelens.lock.guard", "a+") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def release(self) -> None:
        """Remove the lock if it is still ours."""
        if self.token is None:
            return
        info = self.owner()
        if info and info.get("token") == self.token:
            self.path.unlink(missing_ok=True)
        self.token = None

    @property
    def held(self) -> bool:
        return self.token is not None

    def __enter__(self) -> BundleLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
