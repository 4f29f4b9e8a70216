"""What the alert tables say, for `dealsd status` and `dealsd alerts list`.

Read-only SQL apart from the outbox's writers, so `dealsd status` imports no
rule, estimate or config code to show the channels.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping
from typing import Any


def summary(conn: sqlite3.Connection) -> list[dict[str, Any]]:
    """Per channel: queued alerts, last success, last error (for `dealsd status`)."""
    queued = dict(
        conn.execute(
            "SELECT channel, COUNT(*) FROM alert_outbox WHERE sent_at IS NULL GROUP BY channel"
        ).fetchall()
    )
    out: list[dict[str, Any]] = []
    seen: set[str] = set()
    cur = conn.execute(
        "SELECT name, last_success_at, last_error, last_error_at, failing_since, sent_total "
        "FROM alert_channels ORDER BY name"
    )
    for name, ok_at, err, err_at, failing, total in cur.fetchall():
        seen.add(name)
        out.append(
            {
                "channel": name,
                "queued": int(queued.get(name, 0)),
                "sent_total": int(total or 0),
                "last_success_at": ok_at,
                "failing_since": failing,
                "last_error": err,
                "last_error_at": err_at,
            }
        )
    for name in sorted(set(queued) - seen):
        out.append(
            {
                "channel": name,
                "queued": int(queued[name]),
                "sent_total": 0,
                "last_success_at": None,
                "failing_since": None,
                "last_error": None,
                "last_error_at": None,
            }
        )
    return out


def recent(conn: sqlite3.Connection, *, limit: int) -> list[Mapping[str, Any]]:
    """The newest alerts, queued and sent (for `dealsd alerts list`)."""
    cur = conn.execute(
        "SELECT id, created_at, rule, channel, reason, asin, sent_at, attempts, last_error, "
        "json_extract(facts, '$.title'), json_extract(facts, '$.profit_cents'), "
        "json_extract(facts, '$.domain_id') "
        "FROM alert_outbox ORDER BY id DESC LIMIT ?",
        (limit,),
    )
    names = [d[0] for d in cur.description]
    names[-3:] = ["title", "profit_cents", "domain_id"]
    return [dict(zip(names, r, strict=True)) for r in cur.fetchall()]
