"""The janitor's pruning: deals no longer seen, old selection matches, checkpoints, ledger.

Each returns how many rows it deleted. Conventions: ``store.sql``.
"""

from __future__ import annotations

import sqlite3


def prune_stale(conn: sqlite3.Connection, *, older_than: str, limit: int) -> int:
    """Delete up to ``limit`` deals not seen since ``older_than`` (history cascades)."""
    cur = conn.execute(
        # By rowid: exactly the rows chosen, whatever marketplace shares an ASIN.
        "DELETE FROM deals WHERE rowid IN (SELECT rowid FROM deals WHERE last_seen_at < ? "
        "ORDER BY last_seen_at LIMIT ?)",
        (older_than, limit),
    )
    return cur.rowcount


def prune_unseen_by(conn: sqlite3.Connection, *, older_than: str, limit: int) -> int:
    """Forget up to ``limit`` selection matches not seen since ``older_than``.

    The deal itself goes with ``prune_stale`` once no selection saw it (its
    ``last_seen_at`` is the latest of theirs); a match alone ages out here,
    so a removed selection stops being named on deals others still see.
    """
    cur = conn.execute(
        "DELETE FROM deal_selections WHERE (domain_id, asin, selection) IN "
        "(SELECT domain_id, asin, selection FROM deal_selections "
        "WHERE last_seen_at < ? ORDER BY last_seen_at LIMIT ?)",
        (older_than, limit),
    )
    return cur.rowcount


def prune_checkpoints(conn: sqlite3.Connection, *, prefix: str, older_than: str) -> int:
    """Delete checkpoints named ``prefix``... not written since ``older_than``.

    A live selection writes its cursor every page, so what is this old
    belongs to a selection removed (or whose query changed) long ago.
    """
    cur = conn.execute(
        "DELETE FROM checkpoints WHERE substr(name, 1, ?) = ? AND updated_at < ?",
        (len(prefix), prefix, older_than),
    )
    return cur.rowcount


def prune_ledger(conn: sqlite3.Connection, *, older_than: str) -> int:
    return conn.execute("DELETE FROM token_ledger WHERE at < ?", (older_than,)).rowcount

