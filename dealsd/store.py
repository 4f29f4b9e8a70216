"""The store: one writer connection behind a queue, a few read-only readers.

Every write is a plain function ``fn(conn) -> T`` handed to ONE writer
coroutine (the Datasette shape): SQLite allows one writer at a time, so a
second writing connection would only ever wait for the first (FIELD_NOTES
item 1). The writer commits in groups: it takes what is queued (up to
``group_max``, waiting at most ``group_latency_s`` for more), runs each
function in its own SAVEPOINT inside one ``BEGIN IMMEDIATE ... COMMIT``, and
answers each caller only after COMMIT, so an acknowledged write survives
kill -9 (WAL + synchronous=NORMAL is durable against process death).

Another process (a dashboard) holding the write lock is waited for, never
reported to a worker as "database is locked"; a full disk fails only the
writes of that group, as ``StoreFull``, and the writer keeps serving. There
is one write connection and ``readers`` read connections, all closed by
``close()`` (FIELD_NOTES item 9).
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar, cast

import aiosqlite
import structlog

from dealsd import schema
from dealsd.clock import Clock
from dealsd.schema import NotADatabase, SchemaTooNew

log = structlog.get_logger(__name__)

T = TypeVar("T")
# Between tries on a lock held by another process. SQLite's busy_timeout has
# already waited inside each try; this pause only keeps the loop polite.
BUSY_BACKOFF_S = (0.05, 0.1, 0.25, 0.5, 1.0)
# At shutdown a lock that stays held this long fails the queued writes with
# StoreClosed instead of holding systemd's stop timeout hostage.
CLOSE_BUSY_GRACE_S = 15.0


class StoreError(Exception):
    """Base of the store's own errors."""


class StoreClosed(StoreError):
    """The store is closing or closed: the write was not accepted."""


class StoreFull(StoreError):
    """The disk (or ``max_page_count``) is full: this group was rolled back."""


__all__ = [
    "NotADatabase",
    "SchemaTooNew",
    "Store",
    "StoreClosed",
    "StoreError",
    "StoreFull",
    "WriterStats",
]


@dataclass(frozen=True, slots=True)
class WriterStats:
    queue_len: int  # queued plus the group being committed
    commits: int
    writes: int  # write functions that ran (committed or failed alone)
    last_commit_at: float | None  # wall epoch from the clock
    busy_since: float | None  # another process holds the lock since (wall epoch)
    full_since: float | None  # disk full since (wall epoch)
    last_error: str | None


@dataclass(slots=True)
class _Job(Generic[T]):
    fn: Callable[[sqlite3.Connection], T]
    future: asyncio.Future[T]


class _Busy(Exception):
    """Another connection holds the write lock (BEGIN or COMMIT got SQLITE_BUSY)."""


_STOP = object()


def _code(exc: BaseException) -> int | None:
    code = getattr(exc, "sqlite_errorcode", None)
    return None if code is None else int(code) & 0xFF  # primary code of an extended one


def _is_busy(exc: BaseException) -> bool:
    if not isinstance(exc, sqlite3.OperationalError):
        return False
    code = _code(exc)
    if code is not None:
        return code in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)
    return "locked" in str(exc) or "busy" in str(exc)


def _is_full(exc: BaseException) -> bool:
    if not isinstance(exc, sqlite3.Error):
        return False
    code = _code(exc)
    return code == sqlite3.SQLITE_FULL or "database or disk is full" in str(exc)


async def _on_thread(aconn: aiosqlite.Connection, fn: Callable[[sqlite3.Connection], T]) -> T:
    """Run ``fn(conn)`` on ``aconn``'s own thread in one hop.

    aiosqlite's public API hops threads once per statement (execute, fetch,
    commit), which would cap group commit far below SQLite's speed; its
    ``_execute`` is the only way it offers to run a whole callable there.
    The sqlite3 connection it wraps is touched only on that thread.
    """
    raw = aconn._conn
    return cast(T, await aconn._execute(fn, raw))  # type: ignore[no-untyped-call]


def _run_group(conn: sqlite3.Connection, jobs: list[_Job[Any]]) -> tuple[list[Any], bool]:
    """On the writer thread: one transaction, one savepoint per job.

    Returns ``(outcomes, committed)``; an outcome is ``(True, result)`` or
    ``(False, exception)``. ``committed`` False means COMMIT met a busy lock:
    the transaction is still open and the caller retries COMMIT.
    Raises ``_Busy`` if BEGIN could not get the lock (nothing ran), and a
    full-disk error after rolling everything back.
    """
    try:
        conn.execute("BEGIN IMMEDIATE")
    except sqlite3.OperationalError as exc:
        if _is_busy(exc):
            raise _Busy(str(exc)) from exc
        raise
    outcomes: list[Any] = []
    cur = conn.cursor()  # one cursor for the savepoint statements, not one each
    try:
        for job in jobs:
            cur.execute("SAVEPOINT w")
            try:
                result = job.fn(conn)
            except Exception as exc:
                if _is_full(exc) or not conn.in_transaction:
                    raise  # the whole group: SQLite may have rolled back already
                cur.execute("ROLLBACK TO w")
                cur.execute("RELEASE w")
                outcomes.append((False, exc))
            else:
                cur.execute("RELEASE w")
                outcomes.append((True, result))
        try:
            conn.execute("COMMIT")
        except sqlite3.OperationalError as exc:
            if _is_busy(exc):
                return outcomes, False
            raise
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return outcomes, True


def _commit(conn: sqlite3.Connection) -> bool:
    try:
        conn.execute("COMMIT")
    except sqlite3.OperationalError as exc:
        if _is_busy(exc):
            return False
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return True


def _rollback(conn: sqlite3.Connection) -> None:
    if conn.in_transaction:
        conn.execute("ROLLBACK")


class Store:
    """The database: ``write(fn)`` through the one writer, ``read(fn)`` on a reader."""

    def __init__(
        self,
        *,
        clock: Clock,
        writer: aiosqlite.Connection,
        readers: list[aiosqlite.Connection],
        queue_max: int,
        group_max: int,
        group_latency_s: float,
    ) -> None:
        self._clock = clock
        self._writer = writer
        self._readers = readers
        self._pool: asyncio.Queue[aiosqlite.Connection] = asyncio.Queue()
        for r in readers:
            self._pool.put_nowait(r)
        self._queue: asyncio.Queue[object] = asyncio.Queue(maxsize=queue_max)
        self._group_max = max(1, group_max)
        self._latency_s = max(0.0, group_latency_s)
        self._entering = 0  # producers between "accepted" and "queued"
        self._in_group = 0
        self._closing = False
        self._readers_closed = False
        self._close_started: float | None = None
        self._commits = 0
        self._writes = 0
        self._last_commit_at: float | None = None
        self._busy_since: float | None = None
        self._busy_tries = 0
        self._full_since: float | None = None
        self._last_error: str | None = None
        self._task = asyncio.create_task(self._run(), name="store-writer")

    # -- opening ----------------------------------------------------------------

    @classmethod
    async def open(
        cls,
        path: str | Path,
        *,
        clock: Clock,
        readers: int = 2,
        queue_max: int = 1000,
        group_max: int = 200,
        group_latency_s: float = 0.005,
        busy_timeout_s: float = 5.0,
    ) -> Store:
        """Open (creating if needed) and migrate the database at ``path``.

        Raises ``NotADatabase`` for a file that is not SQLite (checked on the
        header before SQLite touches it) and ``SchemaTooNew`` for one written
        by a newer dealsd; neither file is modified.
        """
        path = Path(path)
        schema.check_header(path)
        timeout_ms = int(busy_timeout_s * 1000)
        writer = await aiosqlite.connect(str(path), isolation_level=None, timeout=busy_timeout_s)

        opened: list[aiosqlite.Connection] = [writer]
        try:
            try:
                before = await _on_thread(
                    writer, lambda c: schema.prepare_writer(c, busy_timeout_ms=timeout_ms)
                )
            except sqlite3.DatabaseError as exc:
                if "not a database" in str(exc) or "malformed" in str(exc):
                    raise NotADatabase(f"{path}: {exc}") from exc
                raise
            uri = f"file:{path.resolve()}?mode=ro"
            pool: list[aiosqlite.Connection] = []
            for _ in range(max(1, readers)):
                r = await aiosqlite.connect(
                    uri, uri=True, isolation_level=None, timeout=busy_timeout_s
                )
                opened.append(r)
                await _on_thread(r, lambda c: c.execute(f"PRAGMA busy_timeout = {timeout_ms}"))
                pool.append(r)
        except BaseException:
            for conn in opened:
                await conn.close()
            raise
        if before != schema.SCHEMA_VERSION:
            log.info("store_migrated", path=str(path), old=before, new=schema.SCHEMA_VERSION)
        log.info("store_opened", path=str(path), readers=len(pool), version=schema.SCHEMA_VERSION)
        return cls(
            clock=clock, writer=writer, readers=pool, queue_max=queue_max,
            group_max=group_max, group_latency_s=group_latency_s,
        )  # fmt: skip

    # -- the public surface --------------------------------------------------------

    async def write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn(conn)`` on the writer; return its result once it is committed.

        ``fn`` runs inside a SAVEPOINT of a group transaction: if it raises, only
        its own changes are rolled back and the exception comes back here. Waits
        while the queue is full. A caller cancelled after its write was queued
        may still see it committed (or not): nothing else depends on it.
        """
        if self._closing:
            raise StoreClosed("store is closed")
        fut: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        job = _Job(fn, fut)
        if self._queue.full():
            self._entering += 1
            try:
                await self._queue.put(job)
            finally:
                self._entering -= 1
        else:
            self._queue.put_nowait(job)  # the common case, without a coroutine
        return await fut

    async def read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn(conn)`` on a read-only connection, in one thread hop."""
        if self._readers_closed:
            raise StoreClosed("store is closed")
        conn = await self._pool.get()
        try:
            return await _on_thread(conn, fn)
        finally:
            self._pool.put_nowait(conn)

    def writer_stats(self) -> WriterStats:
        return WriterStats(
            queue_len=self._queue.qsize() + self._in_group,
            commits=self._commits,
            writes=self._writes,
            last_commit_at=self._last_commit_at,
            busy_since=self._busy_since,
            full_since=self._full_since,
            last_error=self._last_error,
        )

    async def close(self) -> None:
        """Stop accepting writes, commit everything queued, close every connection."""
        if not self._closing:
            self._closing = True
            self._close_started = asyncio.get_running_loop().time()
            await self._queue.put(_STOP)
        # Shielded: a cancelled close() must not cancel the drain halfway.
        await asyncio.shield(self._task)
        self._readers_closed = True
        for _ in self._readers:
            await self._pool.get()  # wait for reads in flight to give theirs back
        for conn in [self._writer, *self._readers]:
            await conn.close()
        self._readers = []
        log.info("store_closed", commits=self._commits, writes=self._writes)

    # -- the writer ---------------------------------------------------------------

    async def _run(self) -> None:
        stopping = False
        while True:
            group: list[_Job[Any]] = []
            if not stopping:
                item = await self._queue.get()
                if item is _STOP:
                    stopping = True
                else:
                    group.append(cast(_Job[Any], item))
            stopping = await self._gather(group) or stopping
            if group:
                await self._commit_group(group)
            elif stopping and self._queue.empty():
                if self._entering == 0:
                    return
                # A producer accepted before close() is about to put its job.
                await asyncio.sleep(0)

    async def _gather(self, group: list[_Job[Any]]) -> bool:
        """Fill ``group`` from the queue for at most the latency window; True on _STOP."""
        # The window is a real-time throughput knob, not logical time: it uses
        # the loop's clock so a FakeClock in tests never stalls writes. Within
        # it the writer only yields while writes keep arriving: producers that
        # are already runnable (woken by the last replies) enqueue during one
        # yield, and sleeping on for writes nobody has submitted would add that
        # latency to every group without making it any larger.
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._latency_s
        stopped = False
        while len(group) < self._group_max:
            try:
                item = self._queue.get_nowait()
            except asyncio.QueueEmpty:
                if stopped or not group or loop.time() >= deadline:
                    break
                await asyncio.sleep(0)
                if self._queue.empty():
                    break
                continue
            if item is _STOP:
                stopped = True  # drain what is left, without waiting for more
            else:
                group.append(cast(_Job[Any], item))
        return stopped

    async def _commit_group(self, group: list[_Job[Any]]) -> None:
        # A caller cancelled while queued no longer wants its write.
        jobs = [j for j in group if not j.future.done()]
        self._in_group = len(jobs)
        try:
            if jobs:
                outcomes = await self._transact(jobs)
                self._reply(jobs, outcomes)
        finally:
            self._in_group = 0

    async def _transact(self, jobs: list[_Job[Any]]) -> list[Any]:
        """Run the group until it commits; busy locks are waited out, not raised."""
        while True:
            try:
                outcomes, committed = await _on_thread(self._writer, lambda c: _run_group(c, jobs))
            except _Busy as exc:
                try:
                    await self._busy_wait(str(exc), jobs)
                except StoreClosed as closed:
                    return [(False, closed)] * len(jobs)
                continue
            except Exception as exc:
                return self._group_failed(exc, jobs)
            while not committed:
                try:
                    await self._busy_wait("database is locked (commit)", jobs)
                except StoreClosed as closed:
                    return [(False, closed)] * len(jobs)
                try:
                    committed = await _on_thread(self._writer, _commit)
                except Exception as exc:
                    return self._group_failed(exc, jobs)
            self._committed(len(jobs))
            return outcomes

    async def _busy_wait(self, error: str, jobs: list[_Job[Any]]) -> None:
        if self._busy_since is None:
            self._busy_since = self._clock.now()
            log.warning("store_busy", error=error, queued=self._queue.qsize() + len(jobs))
        self._last_error = error
        self._busy_tries += 1
        loop = asyncio.get_running_loop()
        if self._close_started is not None and (
            loop.time() - self._close_started > CLOSE_BUSY_GRACE_S
        ):
            with contextlib.suppress(Exception):
                await _on_thread(self._writer, _rollback)
            raise StoreClosed(f"closed while the database stayed locked: {error}")
        pause = BUSY_BACKOFF_S[min(self._busy_tries - 1, len(BUSY_BACKOFF_S) - 1)]
        await asyncio.sleep(pause)

    def _committed(self, n: int) -> None:
        self._commits += 1
        self._writes += n
        self._last_commit_at = self._clock.now()
        if self._busy_since is not None:
            log.info(
                "store_busy_cleared",
                waited_s=round(self._last_commit_at - self._busy_since, 1),
                tries=self._busy_tries,
            )
            self._busy_since, self._busy_tries = None, 0
        if self._full_since is not None:
            log.info("store_full_cleared")
            self._full_since = None
        # last_error stays: it is the last one seen, for `dealsd status`.

    def _group_failed(self, exc: Exception, jobs: list[_Job[Any]]) -> list[Any]:
        """The whole group was rolled back: every caller gets the same error."""
        self._last_error = f"{type(exc).__name__}: {exc}"
        if _is_full(exc):
            if self._full_since is None:
                self._full_since = self._clock.now()
                log.error("store_full", error=str(exc), writes=len(jobs))
            err: Exception = StoreFull(str(exc))
        else:
            log.error("store_group_failed", error=self._last_error, writes=len(jobs))
            err = exc
        return [(False, err)] * len(jobs)

    def _reply(self, jobs: list[_Job[Any]], outcomes: list[Any]) -> None:
        for job, (ok, value) in zip(jobs, outcomes, strict=True):
            if job.future.done():
                continue  # the caller was cancelled meanwhile
            if ok:
                job.future.set_result(value)
            else:
                job.future.set_exception(value)
