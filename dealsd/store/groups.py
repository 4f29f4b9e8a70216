"""One group of writes on the writer thread: a transaction, optimistic first.

Plain synchronous functions of the writer's ``sqlite3.Connection``, called by
``dealsd/store/writer.py`` in one thread hop per group; nothing here knows asyncio.

A group runs optimistically, without a savepoint per write: one costs about
as much as a one-row UPSERT (bench/writer.py). If a write raises, the group
is rolled back to its start (one savepoint around the whole group, so the
write lock is kept and the retry cannot meet another process's lock), that
write gets its exception, and the others run again, each in its own
savepoint this time: a bad write never fails nor rolls back the writes that
shared its transaction. Replaying with savepoints rather than bisecting
bounds the cost of a group with failures at one extra pass however many of
its writes fail; bisecting costs a rollback and a re-run of part of the
group per failure. Failures are rare (a worker's bug, a constraint), so the
extra pass is cheap where it happens and the common case pays nothing.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence
from typing import Any

Write = Callable[[sqlite3.Connection], Any]
Outcome = tuple[bool, Any]  # (True, result) or (False, the exception)


class Busy(Exception):
    """Another connection holds the write lock (BEGIN got SQLITE_BUSY): nothing ran."""


def _code(exc: BaseException) -> int | None:
    code = getattr(exc, "sqlite_errorcode", None)
    return None if code is None else int(code) & 0xFF  # primary code of an extended one


def is_busy(exc: BaseException) -> bool:
    if not isinstance(exc, sqlite3.OperationalError):
        return False
    code = _code(exc)
    if code is not None:
        return code in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)
    return "locked" in str(exc) or "busy" in str(exc)


def is_full(exc: BaseException) -> bool:
    if not isinstance(exc, sqlite3.Error):
        return False
    code = _code(exc)
    return code == sqlite3.SQLITE_FULL or "database or disk is full" in str(exc)


def run_group(conn: sqlite3.Connection, writes: Sequence[Write]) -> tuple[list[Outcome], bool]:
    """The whole group in one transaction.

    Returns ``(outcomes, committed)``, one outcome per write. ``committed``
    False means COMMIT met a busy lock: the transaction is still open and the
    caller retries ``commit``. Raises ``Busy`` if BEGIN could not get the
    lock, and a full-disk error (or one that ended the transaction) after
    rolling everything back.
    """
    try:
        conn.execute("BEGIN IMMEDIATE")
    except sqlite3.OperationalError as exc:
        if is_busy(exc):
            raise Busy(str(exc)) from exc
        raise
    try:
        conn.execute("SAVEPOINT g")
        outcomes = _optimistic(conn, writes)
        conn.execute("RELEASE g")
        try:
            conn.execute("COMMIT")
        except sqlite3.OperationalError as exc:
            if is_busy(exc):
                return outcomes, False
            raise
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return outcomes, True


def _optimistic(conn: sqlite3.Connection, writes: Sequence[Write]) -> list[Outcome]:
    """Every write in a row, no savepoints; on the first failure, undo all and replay."""
    outcomes: list[Outcome] = []
    append = outcomes.append
    for fn in writes:
        try:
            append((True, fn(conn)))
        except Exception as exc:
            if is_full(exc) or not conn.in_transaction:
                raise  # the whole group: SQLite may have rolled back already
            # The writes before it ran fine, but their changes are mixed with
            # the failing write's partial ones: only undoing all separates them.
            conn.execute("ROLLBACK TO g")
            return _replay(conn, writes, len(outcomes), exc)
    return outcomes


def _replay(
    conn: sqlite3.Connection, writes: Sequence[Write], failed: int, error: Exception
) -> list[Outcome]:
    """Run every write but ``writes[failed]`` again, each in its own savepoint.

    A savepoint each, not another optimistic pass: a later write may fail too,
    and this pass must not need a third.
    """
    cur = conn.cursor()  # one cursor for the savepoint statements, not one each
    outcomes: list[Outcome] = []
    for i, fn in enumerate(writes):
        if i == failed:
            outcomes.append((False, error))
            continue
        cur.execute("SAVEPOINT w")
        try:
            result = fn(conn)
        except Exception as exc:
            if is_full(exc) or not conn.in_transaction:
                raise
            cur.execute("ROLLBACK TO w")
            cur.execute("RELEASE w")
            outcomes.append((False, exc))
        else:
            cur.execute("RELEASE w")
            outcomes.append((True, result))
    return outcomes


def commit(conn: sqlite3.Connection) -> bool:
    """Retry the COMMIT of a group; False while the lock is still busy."""
    try:
        conn.execute("COMMIT")
    except sqlite3.OperationalError as exc:
        if is_busy(exc):
            return False
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return True


def rollback(conn: sqlite3.Connection) -> None:
    if conn.in_transaction:
        conn.execute("ROLLBACK")
