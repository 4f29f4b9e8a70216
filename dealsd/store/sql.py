"""What the query modules share: the column check, a deal's key, rows as dicts.

The queries are plain functions in one module per concern: ``feed`` (the
upserter's /deal rows), ``backfill`` (the /product queue), ``liveness``
(daemon and worker rows, the status summary), ``pruning`` (the janitor).
Each takes a ``sqlite3.Connection`` and is called inside ``store.write(fn)``
(the writer's group transaction: no query commits) or ``store.read(fn)``.
They work whatever the connection's ``row_factory``. Column names are
checked against the schema, so a misspelt column raises instead of silently
writing nothing (docs/field-notes.md #8).

Kept to the standard library and the schema: ``dealsd status`` imports this
on its fast path.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Sequence
from typing import Any, TypeVar

from dealsd.store import schema

_NEVER_WRITTEN_BY_COLUMNS = frozenset({"asin", "first_seen_at"})
CHUNK = 500  # host parameters per IN (...) list, well under SQLite's limit
T = TypeVar("T")


def chunks(items: Sequence[T], size: int = CHUNK) -> Iterable[Sequence[T]]:
    """``items`` in slices of at most ``size``: one IN (...) list each."""
    for i in range(0, len(items), size):
        yield items[i : i + size]


def deal_key(domain_id: int | None, asin: str) -> tuple[str, list[object]]:
    """WHERE text and parameters for one deal: (domain_id, asin), or the ASIN alone.

    ``domain_id`` None is the one-marketplace form (a database of one domain,
    as tests and the tools of v1 write it); the daemon always names the domain.
    """
    if domain_id is None:
        return "asin = ?", [asin]
    return "domain_id = ? AND asin = ?", [domain_id, asin]


def writable_deal_columns() -> frozenset[str]:
    return frozenset(schema.table_columns("deals")) - _NEVER_WRITTEN_BY_COLUMNS


def check_columns(names: Iterable[str], allowed: Iterable[str], table: str) -> list[str]:
    names = list(names)
    unknown = sorted(set(names) - set(allowed))
    if unknown:
        raise ValueError(f"unknown {table} column(s): {', '.join(unknown)}")
    return names


def dicts(cur: sqlite3.Cursor) -> list[dict[str, Any]]:
    names = [d[0] for d in cur.description]
    return [dict(zip(names, tuple(row), strict=True)) for row in cur.fetchall()]


def scalar(conn: sqlite3.Connection, sql: str, *params: object) -> Any:
    """The first column of the first row of ``sql``."""
    return conn.execute(sql, params).fetchone()[0]
