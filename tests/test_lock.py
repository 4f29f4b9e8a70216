"""The instance lock, with real OS processes holding, losing and probing it."""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dealsd.lock import AlreadyRunning, InstanceLock, holder_pid, lock_path

# Takes the lock, says so, and keeps it until its stdin closes (or it is killed).
HOLDER = """
import sys
from dealsd.lock import InstanceLock
lock = InstanceLock(sys.argv[1]).acquire()
print("locked", flush=True)
sys.stdin.read()
lock.release()
"""

# Tries once; prints the error and exits 3 if somebody else has it.
CONTENDER = """
import sys
from dealsd.lock import AlreadyRunning, InstanceLock
try:
    InstanceLock(sys.argv[1], wait_s=0).acquire()
except AlreadyRunning as exc:
    print(exc, flush=True)
    sys.exit(3)
print("acquired", flush=True)
"""

# What a `dealsd status` probe does, stretched out: a shared lock held until stdin closes.
SHARED = """
import fcntl, os, sys
fd = os.open(sys.argv[1], os.O_RDONLY)
fcntl.flock(fd, fcntl.LOCK_SH)
print("shared", flush=True)
sys.stdin.read()
"""


def _spawn(script: str, path: Path, ready: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", script, str(path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline().strip()
    assert line == ready, f"helper said {line!r}"
    return proc


@pytest.fixture
def procs() -> Iterator[list[subprocess.Popen[Any]]]:
    started: list[subprocess.Popen[Any]] = []
    yield started
    for p in started:
        if p.poll() is None:
            p.kill()
        p.wait(timeout=10)


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "deals.db"


def test_lock_path_is_beside_the_database(db: Path) -> None:
    assert lock_path(db) == db.parent / "deals.db.lock"
    assert lock_path(str(db) + ".lock") == db.parent / "deals.db.lock"
    assert InstanceLock(db).path == db.parent / "deals.db.lock"


def test_database_file_is_never_written(db: Path) -> None:
    db.write_bytes(b"SQLite format 3\x00not to be touched")
    with InstanceLock(db):
        pass
    assert db.read_bytes() == b"SQLite format 3\x00not to be touched"


def test_second_process_is_refused_with_the_holders_pid(
    db: Path, procs: list[subprocess.Popen[Any]]
) -> None:
    holder = _spawn(HOLDER, db, "locked")
    procs.append(holder)
    assert lock_path(db).read_text() == f"{holder.pid}\n"
    with pytest.raises(AlreadyRunning) as info:
        InstanceLock(db, wait_s=0).acquire()
    assert info.value.pid == holder.pid
    assert f"pid {holder.pid}" in str(info.value)
    assert str(lock_path(db)) in str(info.value)
    assert holder_pid(db) == holder.pid

    # The holder releases on a clean exit: the file is emptied, the lock free.
    assert holder.stdin is not None
    holder.stdin.close()
    assert holder.wait(timeout=10) == 0
    assert lock_path(db).read_text() == ""
    assert holder_pid(db) is None


def test_kill_9_frees_the_lock_at_once(db: Path, procs: list[subprocess.Popen[Any]]) -> None:
    holder = _spawn(HOLDER, db, "locked")
    procs.append(holder)
    os.kill(holder.pid, signal.SIGKILL)
    assert holder.wait(timeout=10) == -signal.SIGKILL
    # The dead daemon's PID is still in the file: status must not believe it.
    assert lock_path(db).read_text() == f"{holder.pid}\n"
    assert holder_pid(db) is None
    # No retry window needed: the kernel dropped the flock with the process.
    with InstanceLock(db, wait_s=0) as lock:
        assert lock.held
        assert lock_path(db).read_text() == f"{os.getpid()}\n"
        assert holder_pid(db) == os.getpid()
    assert not lock.held


def test_other_process_is_refused_while_we_hold(
    db: Path, procs: list[subprocess.Popen[Any]]
) -> None:
    with InstanceLock(db):
        contender = subprocess.run(
            [sys.executable, "-c", CONTENDER, str(db)], capture_output=True, text=True, timeout=30
        )
        assert contender.returncode == 3, contender.stderr
        assert f"pid {os.getpid()}" in contender.stdout
    contender = subprocess.run(
        [sys.executable, "-c", CONTENDER, str(db)], capture_output=True, text=True, timeout=30
    )
    assert contender.returncode == 0, contender.stderr
    assert contender.stdout.strip() == "acquired"


def test_two_locks_in_one_process_conflict(db: Path) -> None:
    # flock belongs to the open file description, so a second open in the same
    # process is refused too: a daemon cannot run itself twice by mistake.
    first = InstanceLock(db).acquire()
    try:
        with pytest.raises(AlreadyRunning) as info:
            InstanceLock(db, wait_s=0).acquire()
        assert info.value.pid == os.getpid()
        with pytest.raises(RuntimeError, match="already held"):
            first.acquire()
    finally:
        first.release()
    first.release()  # idempotent
    InstanceLock(db, wait_s=0).acquire().release()


def test_a_child_process_does_not_inherit_the_lock(
    db: Path, procs: list[subprocess.Popen[Any]]
) -> None:
    lock = InstanceLock(db).acquire()
    child = subprocess.Popen(
        [sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE
    )
    procs.append(child)
    lock.release()
    # The child is still alive, yet the lock is free: it never had the descriptor.
    assert child.poll() is None
    assert holder_pid(db) is None
    InstanceLock(db, wait_s=0).acquire().release()


def test_start_waits_out_a_status_probe(db: Path, procs: list[subprocess.Popen[Any]]) -> None:
    lock_path(db).write_text("")
    prober = _spawn(SHARED, lock_path(db), "shared")
    procs.append(prober)
    # A shared holder blocks the exclusive lock: without a wait it looks taken...
    with pytest.raises(AlreadyRunning) as info:
        InstanceLock(db, wait_s=0).acquire()
    assert info.value.pid is None
    assert "pid unknown" in str(info.value)
    # ...and a probe never reports a daemon: shared locks do not conflict.
    assert holder_pid(db) is None
    # With a wait the start goes through once the probe lets go.
    assert prober.stdin is not None
    threading.Timer(0.1, prober.stdin.close).start()
    with InstanceLock(db, wait_s=30) as lock:
        assert lock.held


def test_holder_pid_without_a_lock_file(tmp_path: Path) -> None:
    assert holder_pid(tmp_path / "never.db") is None
    assert not (tmp_path / "never.db.lock").exists()


def test_holder_pid_held_but_pid_not_written_yet(db: Path) -> None:
    # The instant between a holder's flock and its write: reported as held (0).
    fd = os.open(lock_path(db), os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        assert holder_pid(db, wait_s=0) == 0
    finally:
        os.close(fd)
    assert holder_pid(db) is None


def test_lock_directory_is_created(tmp_path: Path) -> None:
    with InstanceLock(tmp_path / "new" / "deals.db") as lock:
        assert lock.path.exists()
