"""The daemon's liveness rows (its heartbeat, its workers' states) and what status reads.

The daemon writes its row and one row per worker (restarts counted) with
each snapshot; ``status_summary`` reads them back with the deal counts and
the ledger's recent tokens (for status, the daemon's snapshot and the demo),
``selection_counts`` each selection's share. ``dealsd status`` imports this
module alone of the queries: keep it to the standard library and
``store.sql`` (whose conventions it follows).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping, Sequence
from typing import Any

from dealsd.store.sql import check_columns, dicts, scalar
from dealsd.timefmt import iso_utc

_WORKER_COLUMNS = frozenset(
    {"name", "state", "detail", "last_progress_at", "progress_total", "restarts",
     "last_error", "last_error_at", "updated_at"}
)  # fmt: skip
_DAEMON_COLUMNS = frozenset(
    {"pid", "started_at", "heartbeat_at", "stopped_at", "healthy", "snapshot"}
)
BACKFILLER = "backfiller"  # the consumer whose ledger gives the cost per product


def write_worker(conn: sqlite3.Connection, row: Mapping[str, object]) -> None:
    """Upsert one worker's row (needs name, state, updated_at); ``restarts`` is kept."""
    names = check_columns(row, _WORKER_COLUMNS, "workers")
    updates = ", ".join(f"{n} = excluded.{n}" for n in names if n != "name")
    conn.execute(
        f"INSERT INTO workers ({', '.join(names)}) VALUES ({', '.join('?' * len(names))}) "
        f"ON CONFLICT (name) DO UPDATE SET {updates}",
        list(row.values()),
    )


def forget_workers(conn: sqlite3.Connection, *, keep: Sequence[str]) -> int:
    """Delete the rows of workers not in ``keep`` (a selection removed on SIGHUP)."""
    if not keep:
        return 0
    marks = ",".join("?" * len(keep))
    return conn.execute(f"DELETE FROM workers WHERE name NOT IN ({marks})", list(keep)).rowcount


def bump_restarts(conn: sqlite3.Connection, name: str, now: str) -> None:
    conn.execute(
        "INSERT INTO workers (name, state, restarts, updated_at) VALUES (?, 'starting', 1, ?) "
        "ON CONFLICT (name) DO UPDATE SET restarts = restarts + 1, "
        "updated_at = excluded.updated_at",
        (name, now),
    )


def write_daemon(conn: sqlite3.Connection, row: Mapping[str, object]) -> None:
    """Upsert the single daemon row (id 1) with the given columns."""
    names = check_columns(row, _DAEMON_COLUMNS, "daemon")
    updates = ", ".join(f"{n} = excluded.{n}" for n in names) or "id = id"
    conn.execute(
        f"INSERT INTO daemon (id{''.join(', ' + n for n in names)}) "
        f"VALUES (1{', ?' * len(names)}) ON CONFLICT (id) DO UPDATE SET {updates}",
        list(row.values()),
    )


def selection_counts(
    conn: sqlite3.Connection, *, now: float, workers: Mapping[str, str]
) -> dict[str, dict[str, int]]:
    """Per selection (name -> its worker): deals matched, /deal pages and tokens last hour.

    One indexed query each rather than a GROUP BY over the ledger, which
    would sort an hour of it every time status runs.
    """
    hour_ago = iso_utc(now - 3600)
    out: dict[str, dict[str, int]] = {}
    for name, worker in workers.items():
        pages, tokens = conn.execute(
            "SELECT coalesce(sum(items), 0), coalesce(sum(tokens), 0) FROM token_ledger "
            "WHERE at >= ? AND consumer = ? AND endpoint = 'deal'",
            (hour_ago, worker),
        ).fetchone()
        deals = scalar(conn, "SELECT count(*) FROM deal_selections WHERE selection = ?", name)
        out[name] = {"deals": int(deals), "pages": int(pages), "tokens": int(tokens)}
    return out


def status_summary(conn: sqlite3.Connection, *, now: float) -> dict[str, Any]:
    """Everything ``dealsd status`` shows from the database; every query uses an index."""
    hour_ago, day_ago = iso_utc(now - 3600), iso_utc(now - 86400)
    gave_up_where = "backfill_attempts > 0 AND backfill_retry_at IS NULL"
    deals = {
        "total": scalar(conn, "SELECT count(*) FROM deals"),
        "backfilled": scalar(conn, "SELECT count(*) FROM deals WHERE backfilled_at IS NOT NULL"),
        "pending_backfill": scalar(
            conn,
            f"SELECT count(*) FROM deals WHERE backfilled_at IS NULL AND NOT ({gave_up_where})",
        ),
        "gave_up": scalar(
            conn,
            f"SELECT count(*) FROM deals WHERE backfilled_at IS NULL AND {gave_up_where}",
        ),
        "added_last_hour": scalar(
            conn, "SELECT count(*) FROM deals WHERE first_seen_at >= ?", hour_ago
        ),
        "added_last_day": scalar(
            conn, "SELECT count(*) FROM deals WHERE first_seen_at >= ?", day_ago
        ),
        "newest_keepa_update": scalar(conn, "SELECT max(keepa_last_update) FROM deals"),
        # Products stored with a field that could not be read (kept, not lost).
        "unreadable_fields": scalar(
            conn, "SELECT count(*) FROM deals WHERE unreadable_fields IS NOT NULL"
        ),
    }
    spent = scalar(
        conn, "SELECT coalesce(sum(tokens), 0) FROM token_ledger WHERE at >= ?", hour_ago
    )
    tokens, items = tuple(
        conn.execute(
            "SELECT coalesce(sum(tokens), 0), coalesce(sum(items), 0) FROM token_ledger "
            "WHERE at >= ? AND consumer = ? AND endpoint = 'product'",
            (day_ago, BACKFILLER),
        ).fetchone()
    )
    daemon = dicts(conn.execute("SELECT * FROM daemon WHERE id = 1"))
    return {
        "deals": deals,
        "tokens": {
            "spent_last_hour": int(spent),
            "per_product": round(tokens / items, 2) if items else None,
        },
        "workers": dicts(conn.execute("SELECT * FROM workers ORDER BY name")),
        "daemon": daemon[0] if daemon else None,
    }
