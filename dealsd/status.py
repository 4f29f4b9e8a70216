"""`dealsd status`: what the daemon is doing, read from its database.

The database is opened read-only, so this works while the daemon runs and
after it stopped. Whether a daemon runs at all comes from the instance lock
(``lock.holder_pid``), not from the rows: a daemon killed without writing
``stopped_at`` leaves a heartbeat that looks recent for a moment, and a stale
heartbeat must read as "not running", never as healthy (docs/field-notes.md #2).

The ``--json`` document is ``dealsd.snapshot.Status`` (its docstrings are
the contract); the daemon's part of it is the ``Snapshot`` it wrote. After a
restart, ``daemon.previous_run`` says how the run before ended and what it
was unhealthy for.

Exit status: 0 healthy, 1 unhealthy, still starting (a worker has not
progressed once since the start) or not running, 2 no database or an
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

import msgspec

from dealsd import snapshot
from dealsd.alerts import queries as alert_queries
from dealsd.exits import EXIT_HEALTHY, EXIT_NO_DATABASE, EXIT_UNHEALTHY
from dealsd.journal import early_line
from dealsd.lock import holder_pid
from dealsd.snapshot import (
    AlertChannelStatus,
    DaemonStatus,
    DealCounts,
    FunnelPart,
    PreviousRun,
    SelectionStatus,
    Status,
    TokenStatus,
    WorkerStatus,
    nonempty_str,
)
from dealsd.store import liveness
from dealsd.timefmt import iso_utc, parse_iso_utc

# A heartbeat older than this many snapshot intervals (plus slack) means the
# process holding the lock no longer runs its watch loop: hung, not healthy.
STALE_HEARTBEATS = 3
STALE_SLACK_S = 15.0
# A heartbeat this late (beats, plus slack) is worth asking why: the daemon
# cannot write its snapshot while another process holds the write lock.
LATE_HEARTBEATS = 2
LATE_SLACK_S = 1.0
# How long the write lock must stay taken to count as held elsewhere. The
# daemon takes it itself for each commit, briefly; a late heartbeat often
# means its writer is busy with its own work, and one instant's probe would
# then report its own commit as another process's lock.
LOCK_PROBE_S = 1.0


def write_lock_held(db_path: Path, *, within_s: float = LOCK_PROBE_S) -> bool | None:
    """Whether some connection holds the database's write lock for ``within_s``.

    Waits up to ``within_s`` for the lock, takes it for an instant and gives it
    back (nothing is written); None when the file cannot be opened for writing
    by whoever runs `dealsd status`.
    """
    try:
        conn = sqlite3.connect(db_path, timeout=within_s, isolation_level=None)
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


def gather(db_path: Path, *, now: float | None = None) -> dict[str, Any]:
    """The `--json` document as plain data (what scripts see). Raises on no database."""
    result: dict[str, Any] = msgspec.to_builtins(read_status(db_path, now=now))
    return result


def read_status(db_path: Path, *, now: float | None = None) -> Status:
    """The status, typed. Raises on no database."""
    now = time.time() if now is None else now
    if not db_path.is_file():
        raise FileNotFoundError(f"no database at {db_path}")
    conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=5.0)
    try:
        conn.row_factory = sqlite3.Row
        summary: Mapping[str, Any] = liveness.status_summary(conn, now=now)
        row: Mapping[str, Any] = summary.get("daemon") or {}
        snap = snapshot.decode(row.get("snapshot"))
        counts = liveness.selection_counts(
            conn, now=now, workers={s.name: s.worker for s in snap.selections}
        )
        alerts = _alert_channels(conn)
    finally:
        conn.close()
    pid = holder_pid(db_path)
    heartbeat = _ts(row.get("heartbeat_at"))
    stopped_at = nonempty_str(row.get("stopped_at"))
    beat_s = snap.heartbeat_s if snap.heartbeat_s > 0 else 5.0
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
    elif row:
        state = "died"  # no stopped_at: killed or crashed
    else:
        state = "never started"
    healthy = state == "running" and bool(row.get("healthy")) and not lock_held
    writer_busy = (
        f"writer busy: the database write lock is held elsewhere and the daemon's "
        f"heartbeat is {now - heartbeat:.0f}s old"
        if lock_held and heartbeat is not None
        else None
    )
    deals = msgspec.convert(summary.get("deals") or {}, DealCounts, strict=False)
    newest = _ts(deals.newest_keepa_update)
    if newest is not None:
        deals.newest_age_s = round(now - newest)
    ledger: Mapping[str, Any] = summary.get("tokens") or {}
    tokens = TokenStatus(
        balance=snap.tokens.balance,
        refill_rate=snap.tokens.refill_rate,
        period_s=snap.tokens.period_s or 60.0,
        spent_last_hour=ledger.get("spent_last_hour"),
        per_product=ledger.get("per_product"),
        consumed_by=snap.tokens.consumed_by if row.get("snapshot") else None,
    )
    eta: float | None = None
    if deals.pending_backfill == 0:
        eta = 0.0
    elif tokens.refill_rate and tokens.refill_rate > 0:
        cost = tokens.per_product or 1.0
        eta = round(deals.pending_backfill * cost / tokens.refill_rate * tokens.period_s, 1)
    workers: dict[str, WorkerStatus] = {}
    selections = _selections(snap, counts, now)
    for w in summary.get("workers") or []:
        ws = msgspec.convert(dict(w), WorkerStatus, strict=False)
        ws.last_state = ws.state
        # What a dead daemon last said is history, not a current state.
        ws.state = ws.state if running and not stale else "stopped"
        workers[str(w["name"])] = ws
    return Status(
        healthy=healthy,
        daemon=DaemonStatus(
            state=state,
            pid=pid,
            started_at=nonempty_str(row.get("started_at")),
            heartbeat_at=nonempty_str(row.get("heartbeat_at")),
            stopped_at=stopped_at,
            status=snap.status,
            phase=snap.phase,
            causes=snap.causes,
            # Seen by `dealsd status` itself: the daemon cannot say it, as it
            # cannot write its snapshot while another process holds the lock.
            writer_busy=writer_busy,
            previous_run=snap.previous_run,
        ),
        deals=deals,
        workers=workers,
        tokens=tokens,
        writer=snap.writer,
        backfill_eta_s=eta,
        database=str(db_path),
        selections=selections,
        alerts=alerts,
        funnel=snap.funnel,
    )


def _selections(
    snap: snapshot.Snapshot, counts: Mapping[str, Mapping[str, int]], now: float
) -> dict[str, SelectionStatus]:
    """Each selection the daemon runs, with the database's figures for it."""
    out: dict[str, SelectionStatus] = {}
    for part in snap.selections:
        ledger = counts.get(part.name) or {}
        newest = _ts(part.newest_keepa_update)
        out[part.name] = SelectionStatus(
            worker=part.worker, domain=part.domain, currency=part.currency,
            interval_s=part.interval_s, weight=part.weight, last_pass_at=part.last_pass_at,
            pages_last_hour=int(ledger.get("pages", 0)),
            tokens_last_hour=int(ledger.get("tokens", 0)),
            deals=int(ledger.get("deals", 0)),
            newest_keepa_update=part.newest_keepa_update,
            freshness_s=None if newest is None else round(now - newest),
        )  # fmt: skip
    return out


def _alert_channels(conn: sqlite3.Connection) -> list[AlertChannelStatus]:
    try:
        rows = alert_queries.summary(conn)
    except sqlite3.OperationalError:  # a database from before alerts: no such table
        return []
    return [msgspec.convert(r, AlertChannelStatus) for r in rows]


def _age(now: float, stamp: str | None) -> str:
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


def render(doc: Status, *, now: float | None = None) -> str:
    now = time.time() if now is None else now
    d, deals, tok = doc.daemon, doc.deals, doc.tokens
    lines = []
    state = d.state
    if state == "running":
        verdict = "healthy" if doc.healthy else "UNHEALTHY"
        if not doc.healthy and d.phase == "starting" and not d.writer_busy:
            verdict = "starting (not healthy until each worker has progressed once)"
        lines.append(f"dealsd: running (pid {d.pid}), {verdict}")
    elif state == "hung":
        lines.append(
            f"dealsd: UNHEALTHY: pid {d.pid} holds the lock but its heartbeat is stale "
            f"(last {_age(now, d.heartbeat_at)})"
        )
    elif state == "stopped":
        lines.append(f"dealsd: not running: stopped since {_age(now, d.stopped_at)}")
    elif state == "died":
        lines.append(
            "dealsd: not running: it died without stopping "
            f"(last heartbeat {_age(now, d.heartbeat_at)})"
        )
    else:
        lines.append("dealsd: not running: never started on this database")
    for cause in d.causes if state == "running" else []:
        lines.append(f"  cause: {cause}")
    if d.writer_busy:
        lines.append(f"  cause: {d.writer_busy}")
    if state == "running" and d.previous_run is not None:
        lines.append(_previous_run_line(d.previous_run, now))
    lines.append(f"database: {doc.database}")
    lines.append(
        f"deals: {deals.total} total, {deals.backfilled} backfilled, "
        f"{deals.pending_backfill} pending, {deals.gave_up} given up; "
        f"added {deals.added_last_hour} last hour, {deals.added_last_day} last day"
    )
    lines.append(f"newest deal: {_age(now, deals.newest_keepa_update)}")
    if deals.unreadable_fields:
        lines.append(f"products with unreadable Keepa fields: {deals.unreadable_fields}")
    lines.append(f"backfill ETA: {_duration(doc.backfill_eta_s)}")
    if doc.funnel is not None:
        lines.extend(_funnel_lines(doc.funnel))
    lines.append(
        f"tokens: balance {tok.balance}, refill {tok.refill_rate} per {tok.period_s:g}s, "
        f"spent last hour {tok.spent_last_hour}, per product {tok.per_product}"
    )
    w = doc.writer
    if w.queue is not None:
        lines.append(f"writer: queue {w.queue}, last commit {_age(now, w.last_commit_at)}")
    for name, sel in doc.selections.items():
        lines.append(
            f"selection {name} (domain {sel.domain}, {sel.currency}, weight {sel.weight}): "
            f"last pass {_age(now, sel.last_pass_at)}; {sel.pages_last_hour} pages and "
            f"{sel.tokens_last_hour} tokens last hour; {sel.deals} deals; "
            f"newest {_age(now, sel.newest_keepa_update)}"
        )
    for name, row in sorted(doc.workers.items()):
        extra = f" ({row.detail})" if row.detail else ""
        lines.append(
            f"worker {name}: {row.state}{extra}; last progress "
            f"{_age(now, row.last_progress_at)}; restarts {row.restarts or 0}"
        )
        if row.last_error:
            lines.append(f"  last error: {row.last_error} at {row.last_error_at}")
    for ch in doc.alerts:
        state = f"last sent {_age(now, ch.last_success_at)}"
        if ch.failing_since:
            state = f"FAILING since {ch.failing_since}: {ch.last_error}"
        lines.append(f"alerts {ch.channel}: {ch.queued} queued, {ch.sent_total} sent; {state}")
    return "\n".join(lines)


def _funnel_lines(f: FunnelPart) -> list[str]:
    """Where the tokens went: the stages, their tokens, and what they found."""
    stages = ", ".join(f"{k} {v}" for k, v in sorted(f.tokens_by_stage.items())) or "none yet"
    per = (
        "n/a (none profitable yet)"
        if f.tokens_per_profitable is None
        else (f"{f.tokens_per_profitable:g}")
    )
    full = "not yet" if f.full_pass_tokens is None else f"{f.full_pass_tokens} tokens"
    return [
        f"funnel: {f.seen} seen, {f.screened_in} screened in, {f.backfilled} backfilled, "
        f"{f.detailed} detailed, {f.profitable} profitable",
        f"funnel tokens (7 days): {stages}; per profitable deal {per}",
        f"screened-in queue: {f.pending_screened_in} pending, ETA {_duration(f.queue_eta_s)}; "
        f"last full pass {full}",
    ]


def _previous_run_line(prev: PreviousRun, now: float) -> str:
    """How the run before this one ended, and what it was unhealthy for."""
    if prev.ended == "stopped":
        how = f"stopped cleanly at {prev.stopped_at}"
    else:
        how = f"died without stopping (last heartbeat {_age(now, prev.heartbeat_at)})"
        if prev.watchdog is False:
            how += ", after its watchdog pings had stopped: most likely killed by the watchdog"
        else:
            how += ": killed or crashed (the journal says which)"
    said = prev.phase or "unknown"
    if prev.causes:
        said = "unhealthy: " + "; ".join(prev.causes)
    return f"previous run: {how}; at its last heartbeat it was {said}"


def run_status(
    db_path: Path, *, as_json: bool, out: TextIO | None = None, now: float | None = None
) -> int:
    """Print the status of the daemon using ``db_path``; return the exit status."""
    out = out if out is not None else sys.stdout
    try:
        doc = read_status(db_path, now=now)
    except FileNotFoundError as exc:
        early_line(f"dealsd status: {exc}")
        return EXIT_NO_DATABASE
    except sqlite3.DatabaseError as exc:
        early_line(f"dealsd status: cannot read {db_path}: {exc}")
        return EXIT_NO_DATABASE
    if as_json:
        print(json.dumps(msgspec.to_builtins(doc), indent=2, sort_keys=True), file=out)
    else:
        print(render(doc, now=now), file=out)
    return EXIT_HEALTHY if doc.healthy else EXIT_UNHEALTHY


__all__ = ["gather", "iso_utc", "read_status", "render", "run_status"]
