"""The store: one writer connection behind a queue, a few read-only readers.

Every write is a plain function ``fn(conn) -> T`` handed to ONE writer
coroutine (the Datasette shape): SQLite allows one writer at a time, so a
second writing connection would only ever wait for the first
(docs/field-notes.md #1). The writer commits in groups: it takes what is queued (up to
``group_max``, waiting at most ``group_latency_s`` for more), runs the
functions one after another inside one ``BEGIN IMMEDIATE ... COMMIT``, and
answers each caller only after COMMIT, so an acknowledged write survives
kill -9 (WAL + synchronous=NORMAL is durable against process death).

A group runs without a savepoint per write and is replayed without a write
that raises (``dealsd/store/groups.py``): a bad write never fails nor rolls back
the writes that shared its transaction.

Another process (a dashboard) holding the write lock is waited for, never
reported to a worker as "database is locked"; a full disk fails only the
writes of that group, as ``StoreFull``, and the writer keeps serving. There
is one write connection and ``readers`` read connections
(``dealsd/store/readers.py``), all closed by ``close()`` (docs/field-notes.md #9).
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

import aiosqlite
import structlog

from dealsd.clock import Clock
from dealsd.store import groups, schema
from dealsd.store.groups import Outcome
from dealsd.store.readers import ReaderPool, on_thread
from dealsd.store.schema import NotADatabase

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


@dataclass(frozen=True, slots=True)
class WriterStats:
    queue_len: int  # queued plus the group being committed
    commits: int
    writes: int  # write functions that ran (committed or failed alone)
    last_commit_at: float | None  # wall epoch from the clock
    busy_since: float | None  # another process holds the lock since (wall epoch)
    full_since: float | None  # disk full since (wall epoch)
    last_error: str | None
    replays: int = 0  # groups run a second time because one of their writes raised


@dataclass(slots=True)
class _Job(Generic[T]):
    fn: Callable[[sqlite3.Connection], T]
    future: asyncio.Future[T]


class Store:
    """The database: ``write(fn)`` through the one writer, ``read(fn)`` on a reader.

    The write contract: ``fn(conn)`` works through ``conn`` only and never
    commits. It may run more than once (a group with a failing write is
    replayed without it), and only the run that commits counts: its result is
    the one returned. So a write function must have no effect outside the
    connection (no appending to a list, counting, logging, sending) that a
    second run would repeat: compute before ``write``, act on its result after.
    """

    def __init__(
        self,
        *,
        clock: Clock,
        writer: aiosqlite.Connection,
        readers: ReaderPool,
        queue_max: int,
        group_max: int,
        group_latency_s: float,
    ) -> None:
        self._clock = clock
        self._loop = asyncio.get_running_loop()
        self._writer = writer
        self._pool = readers
        # A deque and two kinds of waiter futures rather than asyncio.Queue:
        # a write is a few microseconds of SQLite, and the Queue's put, get and
        # size checks cost a good part of that again (bench/writer.py).
        self._jobs: deque[_Job[Any]] = deque()
        self._queue_max = max(1, queue_max)
        self._room: deque[asyncio.Future[None]] = deque()  # producers waiting for room
        self._idle: asyncio.Future[None] | None = None  # the writer, waiting for a job
        self._group_max = max(1, group_max)
        self._latency_s = max(0.0, group_latency_s)
        self._entering = 0  # producers accepted but waiting for room
        self._in_group = 0
        self._closing = False
        self._readers_closed = False
        self._close_started: float | None = None
        self._commits = 0
        self._writes = 0
        self._replays = 0
        self._last_commit_at: float | None = None
        self._busy_since: float | None = None
        self._busy_tries = 0
        self._full_since: float | None = None
        self._last_error: str | None = None
        self._task = asyncio.create_task(self._run(), name="store-writer")

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
        try:
            try:
                before = await on_thread(
                    writer, lambda c: schema.prepare_writer(c, busy_timeout_ms=timeout_ms)
                )
            except sqlite3.DatabaseError as exc:
                if "not a database" in str(exc) or "malformed" in str(exc):
                    raise NotADatabase(f"{path}: {exc}") from exc
                raise
            pool = await ReaderPool.open(path, readers=readers, busy_timeout_s=busy_timeout_s)
        except BaseException:
            await writer.close()
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

        If ``fn`` raises, none of its changes are kept and the exception comes
        back here alone; ``fn`` may have run more than once (see the class
        docstring). Waits while the queue is full. A caller cancelled after its
        write was queued may still see it committed (or not).
        """
        if self._closing:
            raise StoreClosed("store is closed")
        fut: asyncio.Future[T] = self._loop.create_future()
        if len(self._jobs) >= self._queue_max:
            await self._wait_for_room()
        self._jobs.append(_Job(fn, fut))
        idle = self._idle
        if idle is not None:
            self._idle = None
            if not idle.done():
                idle.set_result(None)
        return await fut

    async def read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn(conn)`` on a read-only connection, in one thread hop."""
        if self._readers_closed:
            raise StoreClosed("store is closed")
        return await self._pool.read(fn)

    def writer_stats(self) -> WriterStats:
        return WriterStats(
            queue_len=len(self._jobs) + self._in_group,
            commits=self._commits,
            writes=self._writes,
            last_commit_at=self._last_commit_at,
            busy_since=self._busy_since,
            full_since=self._full_since,
            last_error=self._last_error,
            replays=self._replays,
        )

    async def close(self) -> None:
        """Stop accepting writes, commit everything queued, close every connection."""
        if not self._closing:
            self._closing = True
            self._close_started = self._loop.time()
            idle, self._idle = self._idle, None
            if idle is not None and not idle.done():
                idle.set_result(None)
        # Shielded: a cancelled close() must not cancel the drain halfway.
        await asyncio.shield(self._task)
        self._readers_closed = True
        await self._pool.close()
        await self._writer.close()
        log.info("store_closed", commits=self._commits, writes=self._writes)

    # -- the queue ----------------------------------------------------------------

    async def _wait_for_room(self) -> None:
        # Counted in _entering: the caller was accepted before any close(), so
        # the writer must not finish while it is still on its way in.
        self._entering += 1
        try:
            while len(self._jobs) >= self._queue_max:
                waiter = self._loop.create_future()
                self._room.append(waiter)
                try:
                    await waiter
                except asyncio.CancelledError:
                    if waiter.done() and not waiter.cancelled():
                        self._wake_room(1)  # woken, then cancelled: pass the room on
                    raise
        finally:
            self._entering -= 1

    def _wake_room(self, n: int) -> None:
        while n > 0 and self._room:
            waiter = self._room.popleft()
            if not waiter.done():
                waiter.set_result(None)
                n -= 1

    # -- the writer ---------------------------------------------------------------

    async def _run(self) -> None:
        while True:
            if self._jobs:
                await self._commit_group(await self._gather())
            elif self._closing and self._entering == 0:
                return
            else:
                # Woken by the next write, or by close(); a producer still
                # entering after close() appends and wakes it in turn.
                self._idle = self._loop.create_future()
                await self._idle

    async def _gather(self) -> list[_Job[Any]]:
        """Take up to ``group_max`` queued jobs, for at most the latency window."""
        # The window is a real-time throughput knob, not logical time: it uses
        # the loop's clock so a FakeClock in tests never stalls writes. Within
        # it the writer only yields while writes keep arriving: producers that
        # are already runnable (woken by the last replies) enqueue during one
        # yield, and sleeping on for writes nobody has submitted would add that
        # latency to every group without making it any larger.
        jobs, limit = self._jobs, self._group_max
        group: list[_Job[Any]] = []
        deadline = self._loop.time() + self._latency_s
        while True:
            n = min(limit - len(group), len(jobs))
            if n == len(jobs):
                group.extend(jobs)
                jobs.clear()
            else:
                group.extend(jobs.popleft() for _ in range(n))
            if self._room:
                self._wake_room(n)
            if len(group) >= limit or self._closing or self._loop.time() >= deadline:
                return group
            await asyncio.sleep(0)
            if not jobs:
                return group

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

    async def _transact(self, jobs: list[_Job[Any]]) -> list[Outcome]:
        """Run the group until it commits; busy locks are waited out, not raised."""
        fns = [j.fn for j in jobs]
        try:
            while True:
                try:
                    outcomes, committed = await on_thread(
                        self._writer, lambda c: groups.run_group(c, fns)
                    )
                except groups.Busy as exc:
                    await self._busy_wait(str(exc), jobs)  # nothing ran: run it all again
                    continue
                while not committed:
                    await self._busy_wait("database is locked (commit)", jobs)
                    committed = await on_thread(self._writer, groups.commit)
                break
        except StoreClosed as closed:  # from _busy_wait: closing, and the lock stayed held
            return [(False, closed)] * len(jobs)
        except Exception as exc:
            return self._group_failed(exc, jobs)
        self._committed(outcomes)  # outside the try: nothing after COMMIT fails the callers
        return outcomes

    async def _busy_wait(self, error: str, jobs: list[_Job[Any]]) -> None:
        if self._busy_since is None:
            self._busy_since = self._clock.now()
            log.warning("store_busy", error=error, queued=len(self._jobs) + len(jobs))
        self._last_error = error
        self._busy_tries += 1
        if self._close_started is not None and (
            self._loop.time() - self._close_started > CLOSE_BUSY_GRACE_S
        ):
            with contextlib.suppress(Exception):
                await on_thread(self._writer, groups.rollback)
            raise StoreClosed(f"closed while the database stayed locked: {error}")
        pause = BUSY_BACKOFF_S[min(self._busy_tries - 1, len(BUSY_BACKOFF_S) - 1)]
        await asyncio.sleep(pause)

    def _committed(self, outcomes: list[Outcome]) -> None:
        self._commits += 1
        self._writes += len(outcomes)
        self._last_commit_at = self._clock.now()
        failed = [value for ok, value in outcomes if not ok]
        if failed:
            # The callers get the exceptions; this line says the group paid a replay.
            self._replays += 1
            log.info("store_group_replayed", writes=len(outcomes), failed=len(failed))
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

    def _group_failed(self, exc: Exception, jobs: list[_Job[Any]]) -> list[Outcome]:
        """The whole group was rolled back: every caller gets the same error."""
        self._last_error = f"{type(exc).__name__}: {exc}"
        if groups.is_full(exc):
            if self._full_since is None:
                self._full_since = self._clock.now()
                log.error("store_full", error=str(exc), writes=len(jobs))
            err: Exception = StoreFull(str(exc))
        else:
            log.error("store_group_failed", error=self._last_error, writes=len(jobs))
            err = exc
        return [(False, err)] * len(jobs)

    def _reply(self, jobs: list[_Job[Any]], outcomes: list[Outcome]) -> None:
        for job, (ok, value) in zip(jobs, outcomes, strict=True):
            if job.future.done():
                continue  # the caller was cancelled meanwhile
            if ok:
                job.future.set_result(value)
            else:
                job.future.set_exception(value)
