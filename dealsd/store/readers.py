"""The store's read side: a few read-only connections, one thread hop per read.

Apart from the writer (``dealsd/store/writer.py``) because nothing here shares its
path: each reader opens the file ``mode=ro``, so a read function can never
write by mistake, and WAL lets it see the last COMMIT while the writer works.
A fixed set of connections, all closed by ``close()`` (docs/field-notes.md #9).
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar, cast

import aiosqlite

T = TypeVar("T")


async def on_thread(aconn: aiosqlite.Connection, fn: Callable[[sqlite3.Connection], T]) -> T:
    """Run ``fn(conn)`` on ``aconn``'s own thread in one hop.

    aiosqlite's public API hops threads once per statement (execute, fetch,
    commit), which would cap group commit far below SQLite's speed; its
    ``_execute`` is the only way it offers to run a whole callable there.
    The sqlite3 connection it wraps is touched only on that thread.
    """
    raw = aconn._conn
    return cast(T, await aconn._execute(fn, raw))  # type: ignore[no-untyped-call]


class ReaderPool:
    """Read-only connections lent out one read at a time; a read waits for a free one."""

    def __init__(self, conns: list[aiosqlite.Connection]) -> None:
        self._conns = conns
        self._free: asyncio.Queue[aiosqlite.Connection] = asyncio.Queue()
        for conn in conns:
            self._free.put_nowait(conn)

    @classmethod
    async def open(cls, path: Path, *, readers: int, busy_timeout_s: float) -> ReaderPool:
        """Open ``readers`` (at least one) connections; on any failure close those opened."""
        uri = f"file:{await asyncio.to_thread(path.resolve)}?mode=ro"
        timeout_ms = int(busy_timeout_s * 1000)
        opened: list[aiosqlite.Connection] = []
        try:
            for _ in range(max(1, readers)):
                r = await aiosqlite.connect(
                    uri, uri=True, isolation_level=None, timeout=busy_timeout_s
                )
                opened.append(r)
                await on_thread(r, lambda c: c.execute(f"PRAGMA busy_timeout = {timeout_ms}"))
        except BaseException:
            for conn in opened:
                await conn.close()
            raise
        return cls(opened)

    def __len__(self) -> int:
        return len(self._conns)

    async def read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        conn = await self._free.get()
        try:
            return await on_thread(conn, fn)
        finally:
            self._free.put_nowait(conn)

    async def close(self) -> None:
        """Wait for reads in flight to give their connection back, then close all."""
        conns, self._conns = self._conns, []  # a second close() has nothing left to do
        for _ in conns:
            await self._free.get()
        for conn in conns:
            await conn.close()
