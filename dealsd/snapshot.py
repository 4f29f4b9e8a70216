"""The daemon snapshot and the `dealsd status --json` document: one contract.

The daemon writes a ``Snapshot`` as JSON into the ``daemon.snapshot`` column
every few seconds (beside the row's own ``pid``, ``started_at``,
``heartbeat_at``, ``stopped_at`` and ``healthy`` columns); ``dealsd status``
reads it back with ``decode`` and prints a ``Status`` (``--json``). Both sides
use these types, so a field cannot be written under one name and read under
another.

Compatibility, for scripts that read ``status --json``: field names are never
renamed or removed; new fields are added with a default, so a snapshot an
older dealsd wrote (fewer fields) still reads, and so does a missing one or
junk in the column (each field that does not fit its type falls back to its
default; ``decode`` never raises). Times are ISO 8601 UTC strings
(``2026-11-29T10:00:00Z``) unless a field says seconds.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import msgspec


class TokensPart(msgspec.Struct, kw_only=True):
    """The token scheduler as the daemon last saw it."""

    balance: float | None = None  # Keepa's balance, as last synced and spent since
    refill_rate: float | None = None  # tokens per refill period
    period_s: float | None = None  # the refill period, seconds
    consumed_total: int | None = None  # tokens spent since the daemon started
    consumed_by: dict[str, int] = {}  # the same, per worker
    waiting: dict[str, int] = {}  # requests queued for tokens, per worker
    rate_limited: int | None = None  # 429 answers since the daemon started


class WriterPart(msgspec.Struct, kw_only=True):
    """The one database writer: all nulls when no snapshot was read."""

    queue: int | None = None  # writes queued plus the group being committed
    commits: int | None = None  # commits since the daemon started
    last_commit_at: str | None = None
    busy_since: float | None = None  # epoch seconds: another process holds the lock
    last_error: str | None = None


class SelectionPart(msgspec.Struct, kw_only=True):
    """One deal selection as its upserter last saw it (the daemon's side)."""

    name: str
    worker: str  # its worker and token consumer: upserter, upserter:<name>
    domain: int | None = None  # Keepa's domain id
    currency: str | None = None  # the currency its deals' money is in
    interval_s: int | None = None
    weight: float | None = None  # its share of the upserter's tokens
    last_pass_at: str | None = None  # when its last whole pass finished
    newest_keepa_update: str | None = None  # the newest deal its passes saw


class PreviousRun(msgspec.Struct, kw_only=True):
    """How the run before this one ended, read from its row at start-up.

    ``ended`` is ``stopped`` (a clean stop wrote ``stopped_at``) or ``died``
    (it never did: killed by the watchdog, SIGKILL, the OOM killer, or a
    crash; the journal says which). ``phase``, ``causes`` and ``watchdog`` are
    what its last heartbeat said: ``watchdog`` false means it had stopped
    pinging systemd's watchdog, so a ``died`` run was most likely killed by it.
    """

    ended: Literal["stopped", "died"]
    started_at: str | None = None
    heartbeat_at: str | None = None
    stopped_at: str | None = None
    phase: str | None = None
    causes: list[str] = []
    watchdog: bool | None = None


class FunnelPart(msgspec.Struct, kw_only=True):
    """Where the tokens went and what they found (``[funnel]``; dealsd/funnel.py).

    Counts are of the deals table now: ``seen`` every deal, ``screened_in``
    those whose screen passes the thresholds (or have none), ``backfilled``,
    ``detailed`` (the second tier), ``profitable`` (the full estimate reaches
    ``profitable_min_profit_cents`` and ``profitable_min_roi_pct``).
    ``tokens_by_stage`` is the ledger's last 7 days by stage (``deals``,
    ``backfill``, ``refresh``, ``detail``); ``tokens_per_profitable`` their sum
    over ``profitable``. ``queue_eta_s``: seconds the screened-in backfill
    queue takes at the current refill rate and observed cost per product.
    ``full_pass_tokens``: what the upserter's last walk of the whole result
    cost (every ``full_pass_h``).
    """

    seen: int = 0
    screened_in: int = 0
    backfilled: int = 0
    detailed: int = 0
    profitable: int = 0
    pending_screened_in: int = 0
    tokens_by_stage: dict[str, int] = {}
    tokens_per_profitable: float | None = None
    queue_eta_s: float | None = None
    full_pass_tokens: int | None = None


class Snapshot(msgspec.Struct, kw_only=True):
    """What the daemon writes into ``daemon.snapshot`` at each heartbeat.

    ``status`` is its STATUS= line; ``phase`` is ``healthy``, ``starting``
    (no worker has failed, some have not progressed yet since this start) or
    ``unhealthy`` (then ``causes`` says why); ``watchdog`` says whether that
    heartbeat pinged systemd's watchdog (false only for what a restart may
    cure). ``heartbeat_s`` is the interval between snapshots, from which
    status tells a hung daemon from a busy one.
    """

    status: str | None = None
    phase: str | None = None  # None: written by a dealsd older than this field
    causes: list[str] = []
    watchdog: bool | None = None
    heartbeat_s: float = 5.0
    tokens: TokensPart = msgspec.field(default_factory=TokensPart)
    writer: WriterPart = msgspec.field(default_factory=WriterPart)
    previous_run: PreviousRun | None = None
    selections: list[SelectionPart] = []
    funnel: FunnelPart | None = None


def previous_run(row: Mapping[str, Any] | None) -> PreviousRun | None:
    """How the run whose ``daemon`` row this is ended (None: no run before)."""
    if not row:
        return None
    last = decode(row.get("snapshot"))
    healthy = bool(row.get("healthy"))
    return PreviousRun(
        ended="stopped" if row.get("stopped_at") else "died",
        started_at=nonempty_str(row.get("started_at")),
        heartbeat_at=nonempty_str(row.get("heartbeat_at")),
        stopped_at=nonempty_str(row.get("stopped_at")),
        phase=last.phase or ("healthy" if healthy else "unhealthy"),
        causes=last.causes,
        watchdog=last.watchdog,
    )


def nonempty_str(value: object) -> str | None:
    """A column's text, or None for NULL, '' or a value of another type."""
    return value if isinstance(value, str) and value else None


def encode(snap: Snapshot) -> str:
    return msgspec.json.encode(snap).decode()


def decode(raw: object) -> Snapshot:
    """The snapshot in ``raw`` (the column's value); defaults for what is missing or bad."""
    if not isinstance(raw, str | bytes) or not raw:
        return Snapshot()
    try:
        doc = msgspec.json.decode(raw)
    except msgspec.DecodeError:
        return Snapshot()
    if not isinstance(doc, dict):
        return Snapshot()
    try:
        return msgspec.convert(doc, Snapshot, strict=False)
    except msgspec.ValidationError:
        pass
    # One bad field must not hide the others (the causes above all): keep
    # each field that converts on its own.
    good: dict[str, Any] = {}
    for name in Snapshot.__struct_fields__:
        if name in doc:
            try:
                msgspec.convert({name: doc[name]}, Snapshot, strict=False)
            except msgspec.ValidationError:
                continue
            good[name] = doc[name]
    return msgspec.convert(good, Snapshot, strict=False)


# -- the `dealsd status --json` document ---------------------------------------


class DaemonStatus(msgspec.Struct, kw_only=True):
    """The process: ``state`` is seen by status itself, the rest read from the row.

    ``state``: ``running``, ``hung`` (holds the lock, heartbeat stale),
    ``stopped``, ``died`` (no ``stopped_at``: killed or crashed) or
    ``never started``. ``pid`` is the lock holder's, null when none runs.
    ``writer_busy`` is said by status when the daemon's heartbeat is late
    because another process holds the database's write lock.
    ``previous_run`` is how the run before this one ended (null on a first
    start).
    """

    state: str
    pid: int | None = None
    started_at: str | None = None
    heartbeat_at: str | None = None
    stopped_at: str | None = None
    status: str | None = None
    phase: str | None = None
    causes: list[str] = []
    writer_busy: str | None = None
    previous_run: PreviousRun | None = None


class DealCounts(msgspec.Struct, kw_only=True):
    total: int = 0
    backfilled: int = 0
    pending_backfill: int = 0
    gave_up: int = 0
    added_last_hour: int = 0
    added_last_day: int = 0
    newest_keepa_update: str | None = None
    newest_age_s: int | None = None  # seconds since newest_keepa_update
    # Products stored with a Keepa field that could not be read (kept, that field NULL).
    unreadable_fields: int = 0


class WorkerStatus(msgspec.Struct, kw_only=True):
    """One worker: ``state`` is ``stopped`` when no daemon runs; ``last_state``
    is what the daemon last wrote either way (``running``, ``stalled``, ...)."""

    state: str | None = None
    last_state: str | None = None
    detail: str | None = None
    last_progress_at: str | None = None
    progress_total: int | None = None
    restarts: int | None = None
    last_error: str | None = None
    last_error_at: str | None = None


class SelectionStatus(msgspec.Struct, kw_only=True):
    """One deal selection: the daemon's view (``SelectionPart``) and the database's.

    ``pages_last_hour`` and ``tokens_last_hour`` come from the token ledger
    (its /deal requests), ``deals`` counts the deals it has matched and not
    yet aged out (``deal_selections``), ``freshness_s`` is the age of the
    newest Keepa update its passes saw.
    """

    worker: str | None = None
    domain: int | None = None
    currency: str | None = None
    interval_s: int | None = None
    weight: float | None = None
    last_pass_at: str | None = None
    pages_last_hour: int = 0
    tokens_last_hour: int = 0
    deals: int = 0
    newest_keepa_update: str | None = None
    freshness_s: int | None = None


class TokenStatus(msgspec.Struct, kw_only=True):
    """The scheduler's figures (from the snapshot) and the ledger's (last hour/day)."""

    balance: float | None = None
    refill_rate: float | None = None
    period_s: float = 60.0
    spent_last_hour: int | None = None
    per_product: float | None = None  # tokens per backfilled product, last day
    consumed_by: dict[str, int] | None = None


class AlertChannelStatus(msgspec.Struct, kw_only=True):
    """One alert channel: its queue and delivery health (never its URL).

    ``failing_since`` is set while sends fail; ``last_error`` is redacted."""

    channel: str
    queued: int = 0
    sent_total: int = 0
    last_success_at: str | None = None
    failing_since: str | None = None
    last_error: str | None = None
    last_error_at: str | None = None


class Status(msgspec.Struct, kw_only=True):
    """`dealsd status --json`; its exit status is 0 exactly when ``healthy``.

    ``healthy`` is true only for a running daemon whose last heartbeat said
    healthy: never while it is starting (``daemon.phase``), hung, stopped or
    dead. ``backfill_eta_s`` is null while no refill rate is known.
    """

    healthy: bool
    daemon: DaemonStatus
    deals: DealCounts
    workers: dict[str, WorkerStatus]
    tokens: TokenStatus
    writer: WriterPart
    backfill_eta_s: float | None
    database: str
    selections: dict[str, SelectionStatus] = {}
    alerts: list[AlertChannelStatus] = []
    funnel: FunnelPart | None = None  # null: no snapshot from a dealsd with the funnel
