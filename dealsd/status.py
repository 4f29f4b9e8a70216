"""`dealsd status`: what the daemon is doing, read from its database.

The database is opened read-only, so this works while the daemon runs and
after it stopped. Whether a daemon runs at all comes from the instance lock
(``lock.holder_pid``), not from the rows: a daemon killed without writing
``stopped_at`` leaves a heartbeat that looks recent for a moment, and a stale
heartbeat must read as "not running", never as healthy (docs/field-notes.md #2).

Exit status: 0 healthy, 1 unhealthy or not running, 2 no database or an
unreadable config.
"""

from __future__ import annotations

import json
import sqlite3
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TextIO

from dealsd.clock import iso_utc, parse_iso_utc
from dealsd.exits import EXIT_HEALTHY, EXIT_NO_DATABASE, EXIT_UNHEALTHY
from dealsd.lock import holder_pid
from dealsd.store import queries

# A heartbeat older than this many snapshot intervals (plus slack) means the
# process holding the lock no longer runs its watch loop: hung, not healthy.
STALE_HEARTBEATS = 3
STALE_SLACK_S = 15.0
# A heartbeat this late (beats, plus slack) is worth asking why: the daemon
# cannot write its snapshot while another process holds the write lock.
LATE_HEARTBEATS = 2
LATE_SLACK_S = 1.0


def write_lock_held(db_path: Path) -> bool | None:
    """Whether some connection holds the database's write lock right now.

    Takes the lock for an instant and gives it back (nothing is written); None
    when the file cannot be opened for writing by whoever runs `dealsd status`.
    """
    try:
        conn = sqlite3.connect(db_path, timeout=0, isolation_level=None)
    except sqlite3.Error:
        return None
    try:
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("ROLLBACK")
        return False
    except sqlite3.OperationalError as exc:
        text = str(exc)
        return True if ("locked" in text or "busy" in text) else None
    finally:
        conn.close()


def _ts(value: object) -> float | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        return parse_iso_utc(value)
    except ValueError:
        return None


def _num(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def gather(db_path: Path, *, now: float | None = None) -> dict[str, Any]:
    """The status as one nested dict (the `--json` document). Raises on no database."""
    now = time.time() if now is None else now
    if not db_path.is_file():
        raise FileNotFoundError(f"no database at {db_path}")
    conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=5.0)
    try:
        conn.row_factory = sqlite3.Row
        summary: Mapping[str, Any] = queries.status_summary(conn, now=now)
    finally:
        conn.close()
    pid = holder_pid(db_path)
    daemon: Mapping[str, Any] = summary.get("daemon") or {}
    snapshot: dict[str, Any] = {}
    if daemon.get("snapshot"):
        try:
            snapshot = json.loads(daemon["snapshot"])
        except (TypeError, ValueError):
            snapshot = {}
    heartbeat = _ts(daemon.get("heartbeat_at"))
    stopped_at = daemon.get("stopped_at")
    beat_s = _num(snapshot.get("heartbeat_s")) or 5.0
    stale = heartbeat is None or now - heartbeat > STALE_HEARTBEATS * beat_s + STALE_SLACK_S
    running = pid is not None
    late = heartbeat is None or now - heartbeat > LATE_HEARTBEATS * beat_s + LATE_SLACK_S
    lock_held = write_lock_held(db_path) if running and late else None
    if running and stale:
        state = "hung"  # the lock is held but the watch loop stopped writing
    elif running:
        state = "running"
    elif stopped_at:
        state = "stopped"
    elif daemon:
        state = "died"  # no stopped_at: killed or crashed
    else:
        state = "never started"
    healthy = state == "running" and bool(daemon.get("healthy")) and not lock_held
    writer_busy = (
        f"writer busy: the database write lock is held elsewhere and the daemon's "
        f"heartbeat is {now - heartbeat:.0f}s old"
        if lock_held and heartbeat is not None
        else None
    )

    deals_in: Mapping[str, Any] = summary.get("deals") or {}
    deals: dict[str, Any] = {
        "total": int(deals_in.get("total") or 0),
        "backfilled": int(deals_in.get("backfilled") or 0),
        "pending_backfill": int(deals_in.get("pending_backfill") or 0),
        "gave_up": int(deals_in.get("gave_up") or 0),
        "added_last_hour": int(deals_in.get("added_last_hour") or 0),
        "added_last_day": int(deals_in.get("added_last_day") or 0),
        "newest_keepa_update": deals_in.get("newest_keepa_update"),
        "newest_age_s": None,
    }
    newest = _ts(deals_in.get("newest_keepa_update"))
    if newest is not None:
        deals["newest_age_s"] = round(now - newest)

    tok_snap: Mapping[str, Any] = snapshot.get("tokens") or {}
    tok_in: Mapping[str, Any] = summary.get("tokens") or {}
    period = _num(tok_snap.get("period_s")) or 60.0
    rate = _num(tok_snap.get("refill_rate"))
    per_product = _num(tok_in.get("per_product"))
    tokens = {
        "balance": tok_snap.get("balance"),
        "refill_rate": rate,
        "period_s": period,
        "spent_last_hour": tok_in.get("spent_last_hour"),
        "per_product": per_product,
        "consumed_by": tok_snap.get("consumed_by"),
    }
    eta: float | None = None
    if deals["pending_backfill"] == 0:
        eta = 0.0
    elif rate and rate > 0:
        cost = per_product if per_product else 1.0
        eta = round(deals["pending_backfill"] * cost / rate * period, 1)

    workers: dict[str, dict[str, Any]] = {}
    for row in summary.get("workers") or []:
        w = dict(row)
        name = str(w.get("name"))
        workers[name] = {
            # What a dead daemon last said is history, not a current state.
            "state": w.get("state") if running and not stale else "stopped",
            "last_state": w.get("state"),
            "detail": w.get("detail"),
            "last_progress_at": w.get("last_progress_at"),
            "progress_total": w.get("progress_total"),
            "restarts": w.get("restarts"),
            "last_error": w.get("last_error"),
            "last_error_at": w.get("last_error_at"),
        }
    return {
        "healthy": healthy,
        "daemon": {
            "state": state,
            "pid": pid,
            "started_at": daemon.get("started_at"),
            "heartbeat_at": daemon.get("heartbeat_at"),
            "stopped_at": stopped_at,
            "status": snapshot.get("status"),
            "causes": snapshot.get("causes") or [],
            # Seen by `dealsd status` itself: the daemon cannot say it, as it
            # cannot write its snapshot while another process holds the lock.
            "writer_busy": writer_busy,
        },
        "deals": deals,
        "workers": workers,
        "tokens": tokens,
        "writer": snapshot.get("writer") or {},
        "backfill_eta_s": eta,
        "database": str(db_path),
    }


def _age(now: float, stamp: object) -> str:
    t = _ts(stamp)
    if t is None:
        return "never"
    s = max(0, round(now - t))
    if s < 120:
        return f"{stamp} ({s}s ago)"
    if s < 7200:
        return f"{stamp} ({s // 60}m ago)"
    return f"{stamp} ({s / 3600:.1f}h ago)"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "unknown (no refill rate seen yet)"
    if seconds < 90:
        return f"{seconds:.0f}s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def render(doc: Mapping[str, Any], *, now: float | None = None) -> str:
    now = time.time() if now is None else now
    d, deals, tok = doc["daemon"], doc["deals"], doc["tokens"]
    lines = []
    verdict = "healthy" if doc["healthy"] else "UNHEALTHY"
    state = d["state"]
    if state == "running":
        lines.append(f"dealsd: running (pid {d['pid']}), {verdict}")
    elif state == "hung":
        lines.append(
            f"dealsd: UNHEALTHY: pid {d['pid']} holds the lock but its heartbeat is stale "
            f"(last {_age(now, d['heartbeat_at'])})"
        )
    elif state == "stopped":
        lines.append(f"dealsd: not running: stopped since {_age(now, d['stopped_at'])}")
    elif state == "died":
        lines.append(
            "dealsd: not running: it died without stopping "
            f"(last heartbeat {_age(now, d['heartbeat_at'])})"
        )
    else:
        lines.append("dealsd: not running: never started on this database")
    for cause in d["causes"] if state == "running" else []:
        lines.append(f"  cause: {cause}")
    if d.get("writer_busy"):
        lines.append(f"  cause: {d['writer_busy']}")
    lines.append(f"database: {doc['database']}")
    lines.append(
        f"deals: {deals['total']} total, {deals['backfilled']} backfilled, "
        f"{deals['pending_backfill']} pending, {deals['gave_up']} given up; "
        f"added {deals['added_last_hour']} last hour, {deals['added_last_day']} last day"
    )
    lines.append(f"newest deal: {_age(now, deals['newest_keepa_update'])}")
    lines.append(f"backfill ETA: {_duration(doc['backfill_eta_s'])}")
    lines.append(
        f"tokens: balance {tok['balance']}, refill {tok['refill_rate']} per {tok['period_s']:g}s, "
        f"spent last hour {tok['spent_last_hour']}, per product {tok['per_product']}"
    )
    w = doc["writer"]
    if w:
        lines.append(
            f"writer: queue {w.get('queue')}, last commit {_age(now, w.get('last_commit_at'))}"
        )
    for name, row in sorted(doc["workers"].items()):
        extra = f" ({row['detail']})" if row.get("detail") else ""
        lines.append(
            f"worker {name}: {row['state']}{extra}; last progress "
            f"{_age(now, row['last_progress_at'])}; restarts {row.get('restarts') or 0}"
        )
        if row.get("last_error"):
            lines.append(f"  last error: {row['last_error']} at {row.get('last_error_at')}")
    return "\n".join(lines)


def run_status(
    db_path: Path, *, as_json: bool, out: TextIO | None = None, now: float | None = None
) -> int:
    """Print the status of the daemon using ``db_path``; return the exit status."""
    out = out if out is not None else sys.stdout
    try:
        doc = gather(db_path, now=now)
    except FileNotFoundError as exc:
        print(f"dealsd status: {exc}", file=sys.stderr)
        return EXIT_NO_DATABASE
    except sqlite3.DatabaseError as exc:
        print(f"dealsd status: cannot read {db_path}: {exc}", file=sys.stderr)
        return EXIT_NO_DATABASE
    if as_json:
        print(json.dumps(doc, indent=2, sort_keys=True), file=out)
    else:
        print(render(doc, now=now), file=out)
    return EXIT_HEALTHY if doc["healthy"] else EXIT_UNHEALTHY


__all__ = ["gather", "iso_utc", "render", "run_status"]
