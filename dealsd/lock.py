"""One daemon per database: an flock(2) on ``<db>.lock`` holding the owner's PID.

Two writers on one SQLite file is how the old system died (docs/field-notes.md #1), so
``dealsd run`` takes this lock before it opens the database and keeps it for
its whole life. flock is the right tool because the kernel drops it when the
holder's last descriptor closes, however the process ends: after ``kill -9``
or an OOM kill the next start succeeds at once, with no stale-PID guessing.
The PID written into the file is only for messages and ``dealsd status``; the
lock itself, never the file's contents or existence, decides who runs.

The file is never deleted: unlinking a lock file lets two processes lock two
different inodes under the same name.
"""

from __future__ import annotations

import fcntl
import os
import time
from pathlib import Path
from types import TracebackType

LOCK_SUFFIX = ".lock"


def lock_path(path: str | os.PathLike[str]) -> Path:
    """The lock file for ``path``: the database path gets ``.lock`` appended.

    A path already ending in ``.lock`` is used as it is. Either way the PID is
    never written into the database file itself.
    """
    p = Path(path)
    return p if p.name.endswith(LOCK_SUFFIX) else p.with_name(p.name + LOCK_SUFFIX)


class AlreadyRunning(RuntimeError):
    """Another process holds the instance lock."""

    def __init__(self, pid: int | None, path: Path) -> None:
        self.pid = pid
        self.path = path
        who = f"pid {pid}" if pid else "pid unknown"
        super().__init__(f"another dealsd is already running ({who}); it holds {path}")


def _read_pid(fd: int) -> int | None:
    text = os.pread(fd, 64, 0).decode("ascii", errors="replace").strip()
    return int(text) if text.isdigit() and int(text) > 0 else None


class InstanceLock:
    """The exclusive lock; ``acquire()`` (or ``with``) takes it, ``release()`` drops it.

    ``wait_s`` covers a ``dealsd status`` probe, which holds a shared lock for
    a few microseconds: a start that meets one retries briefly instead of
    reporting a daemon that is not there. It is a blocking start-up step, not
    something the event loop waits on.
    """

    def __init__(self, path: str | os.PathLike[str], *, wait_s: float = 0.5) -> None:
        self._path = lock_path(path)
        self._wait_s = wait_s
        self._fd: int | None = None

    @property
    def path(self) -> Path:
        return self._path

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> InstanceLock:
        """Take the lock or raise ``AlreadyRunning`` naming the holder's PID."""
        if self._fd is not None:
            raise RuntimeError(f"instance lock {self._path} is already held by this object")
        self._path.parent.mkdir(parents=True, exist_ok=True)
        # O_CLOEXEC: a child we exec (a simulator, a helper) must not inherit
        # the descriptor and with it the lock, outliving us as the "daemon".
        fd = os.open(self._path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        deadline = time.monotonic() + self._wait_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    pid = _read_pid(fd)
                    os.close(fd)
                    raise AlreadyRunning(pid, self._path) from None
                time.sleep(0.01)
            except BaseException:
                os.close(fd)
                raise
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
        except BaseException:
            os.close(fd)  # closing drops the lock too
            raise
        self._fd = fd
        return self

    def release(self) -> None:
        """Drop the lock (idempotent); the file stays, emptied of our PID."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            # Still under the lock, so this cannot erase a successor's PID.
            os.ftruncate(fd, 0)
        except OSError:
            pass  # a read-only or full disk must not keep the lock held
        finally:
            os.close(fd)  # the kernel releases the flock with the last descriptor

    def __enter__(self) -> InstanceLock:
        return self.acquire()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()


def holder_pid(path: str | os.PathLike[str], *, wait_s: float = 0.2) -> int | None:
    """The running daemon's PID, or None when no process holds the lock.

    Probes with a non-blocking *shared* lock: getting it proves nobody holds
    the exclusive one, whatever PID a crashed daemon left in the file. 0 means
    held, but the holder has not written its PID yet (its first instant).
    Raises ``OSError`` (e.g. ``PermissionError``) when the file cannot be read.
    """
    p = lock_path(path)
    try:
        fd = os.open(p, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            deadline = time.monotonic() + wait_s
            while (pid := _read_pid(fd)) is None and time.monotonic() < deadline:
                time.sleep(0.01)
            return 0 if pid is None else pid
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)
