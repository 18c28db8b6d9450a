"""The bundle lock with real processes: a second writer refused, a SIGKILLed owner's lock taken over."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from featurelens.network.locking import LOCK_NAME, BundleLock, BundleLockedError

HOLD = """
import sys, time
from featurelens.network.locking import BundleLock, BundleLockedError
folder, go, hold = sys.argv[1], sys.argv[2], float(sys.argv[3])
while go != "-" and not __import__("os").path.exists(go):
    time.sleep(0.01)
try:
    lock = BundleLock(folder, command="holder").acquire()
except BundleLockedError as exc:
    print("refused", exc, flush=True)
    sys.exit(0)
print("locked", flush=True)
time.sleep(hold)
lock.release()
print("released", flush=True)
"""


def _spawn(folder, go="-", hold=60.0):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    return subprocess.Popen([sys.executable, "-c", HOLD, str(folder), str(go), str(hold)],
                            stdout=subprocess.PIPE, text=True, env=env)


def test_second_writer_refused_then_stale_lock_of_killed_owner_taken(tmp_path):
    bundle = tmp_path / "bundle"
    owner = _spawn(bundle)
    try:
        assert owner.stdout.readline().strip() == "locked"
        with pytest.raises(BundleLockedError) as err:
            BundleLock(bundle).acquire()
        msg = str(err.value)
        assert f"pid {owner.pid} on {socket.gethostname()}" in msg and "`holder`" in msg
        assert str(bundle / LOCK_NAME) in msg
        owner.send_signal(signal.SIGKILL)  # dies holding the lock: it stays on disk, stale
        owner.wait(10)
        assert (bundle / LOCK_NAME).exists()
        with BundleLock(bundle, command="me") as lock:
            assert lock.held and json.loads((bundle / LOCK_NAME).read_text())["pid"] == os.getpid()
            other = _spawn(bundle, hold=0)  # a real second process is refused while we hold it
            out = other.communicate(timeout=60)[0]
            assert out.startswith("refused") and f"pid {os.getpid()}" in out
        assert not (bundle / LOCK_NAME).exists()
    finally:
        if owner.poll() is None:
            owner.kill()


def test_concurrent_starters_exactly_one_wins(tmp_path):
    bundle, go = tmp_path / "b", tmp_path / "go"
    procs = [_spawn(bundle, go, hold=3.0) for _ in range(4)]
    time.sleep(1.5)  # let them all start and wait for the signal
    go.write_text("")
    outs = [p.communicate(timeout=120)[0].split()[0] for p in procs]
    assert sorted(outs) == ["locked", "refused", "refused", "refused"]
    assert not (bundle / LOCK_NAME).exists()


def test_lock_from_another_host_or_reused_pid(tmp_path):
    path = tmp_path / LOCK_NAME
    lock = BundleLock(tmp_path)
    # another host: never broken automatically, even if the pid does not exist here
    path.write_text(json.dumps({"pid": 999_999_999, "host": "elsewhere", "time": 0, "command": "x", "token": "t"}))
    with pytest.raises(BundleLockedError, match="pid 999999999 on elsewhere"):
        lock.acquire()
    # this host, this (live) pid, but a process start time that is not ours: the pid was reused → stale
    path.write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "start_ticks": 1, "time": 0,
                                "token": "t"}))
    assert lock.acquire().held
    lock.release()
    # a live owner on this host (ourselves, with our true start time) is respected
    with BundleLock(tmp_path):
        with pytest.raises(BundleLockedError):
            BundleLock(tmp_path).acquire()
    # an unreadable lock file is not broken
    path.write_text("garbage")
    with pytest.raises(BundleLockedError, match="cannot be read"):
        BundleLock(tmp_path).acquire()
    # release never removes somebody else's lock
    path.unlink()
    mine = BundleLock(tmp_path).acquire()
    path.write_text(json.dumps({"pid": 1, "host": "elsewhere", "token": "theirs"}))
    mine.release()
    assert path.exists()
