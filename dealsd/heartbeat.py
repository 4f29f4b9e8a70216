"""The heartbeat: the health snapshot the daemon writes every few seconds.

``Heartbeat.write`` refreshes the counts health needs (deals, backlog,
tokens), reads the funnel's figures, has the daemon publish STATUS= (before
the database write, so a writer held by another process never delays it),
then writes the ``workers`` rows and the ``daemon`` row whose ``snapshot``
column is a ``dealsd.snapshot.Snapshot``: what `dealsd status` reads from
another process. ``read_previous_run`` reads how the run before ended, from
the row this run is about to overwrite.

The running config and the upserters change on SIGHUP, so both are read
through callables at the moment each is used, never kept.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import structlog

from dealsd import funnel, marketplaces, snapshot
from dealsd.clock import Clock, iso_utc
from dealsd.config import Config
from dealsd.mapping import keepa_time_iso
from dealsd.store import Store, liveness
from dealsd.tokens import TokenScheduler
from dealsd.workers.health import Health
from dealsd.workers.health_types import HealthSnapshot, State, WorkerRow
from dealsd.workers.upserter import Upserter

# These events were the daemon's before it was split: journal filters on
# logger=dealsd.daemon keep matching them.
log = structlog.get_logger("dealsd.daemon")


def worker_detail(row: WorkerRow) -> str | None:
    """A few words on why a worker is in its state, for `dealsd status`."""
    if row.state is State.WAITING_FOR_TOKENS:
        return f"expected wait {row.token_wait_s:.0f}s"
    if row.state is State.BACKING_OFF:
        nxt = f", next try {iso_utc(row.next_try_at)}" if row.next_try_at else ""
        return f"{row.backoff_reason}{nxt}"
    if row.state is State.STALLED:
        return f"no progress within {row.stall_after_s:.0f}s"
    if row.idle:
        return "idle: no work"
    return None


def selection_part(upserter: Upserter) -> snapshot.SelectionPart:
    sel = upserter.selection
    newest = upserter.newest_update
    return snapshot.SelectionPart(
        name=sel.name, worker=sel.worker, domain=sel.domain,
        currency=marketplaces.currency(sel.domain), interval_s=sel.interval_s,
        weight=sel.weight,
        last_pass_at=iso_utc(upserter.last_pass_at) if upserter.last_pass_at else None,
        newest_keepa_update=keepa_time_iso(newest) if newest is not None else None,
    )  # fmt: skip


def worker_row(row: WorkerRow, now: str) -> dict[str, object]:
    return {
        "name": row.name,
        "state": row.state.value,
        "detail": worker_detail(row),
        "last_progress_at": iso_utc(row.last_progress_at) if row.last_progress_at else None,
        "progress_total": row.progress_total,
        "last_error": row.last_error,
        "last_error_at": iso_utc(row.last_error_at) if row.last_error_at else None,
        "updated_at": now,
    }


class Heartbeat:
    """Composes and writes the snapshot; owned and called by the daemon."""

    def __init__(
        self,
        *,
        clock: Clock,
        store: Store,
        tokens: TokenScheduler,
        health: Health,
        config: Callable[[], Config],
        upserters: Callable[[], Iterable[Upserter]],
        publish: Callable[[HealthSnapshot], str],
        every_s: float,
    ) -> None:
        self._clock = clock
        self._store = store
        self._tokens = tokens
        self._health = health
        self._config = config
        self._upserters = upserters
        # STATUS= and its dedup stay the daemon's: it also publishes without a write.
        self._publish = publish
        self._every_s = every_s
        self.started_at = iso_utc(clock.now())
        self.previous_run: snapshot.PreviousRun | None = None
        # The last figures read; kept when a read fails.
        self.funnel: snapshot.FunnelPart | None = None

    async def read_previous_run(self) -> snapshot.PreviousRun | None:
        """How the previous run ended; call before the first ``write`` overwrites its row."""
        summary: Mapping[str, Any] = await self._store.read(
            lambda c: liveness.status_summary(c, now=self._clock.now())
        )
        self.previous_run = snapshot.previous_run(summary.get("daemon"))
        return self.previous_run

    async def write(self, *, stopped: bool = False) -> HealthSnapshot:
        """Refresh counts, write the workers/daemon rows, update STATUS= if it changed."""
        now_s = self._clock.now()
        try:
            summary: Mapping[str, Any] = await self._store.read(
                lambda c: liveness.status_summary(c, now=now_s)
            )
            deals = summary.get("deals", {})
            if isinstance(deals, Mapping):
                self._health.note_counts(
                    deals=float(deals.get("total", 0) or 0),
                    pending=float(deals.get("pending_backfill", 0) or 0),
                )
        except (sqlite3.Error, OSError) as exc:
            log.warning("status_counts_failed", error=str(exc))
        tok = self._tokens.snapshot()
        await self._read_funnel(now_s, tok.refill_rate, tok.period_s)
        self._health.note_counts(tokens=tok.balance)
        snap = self._health.snapshot()
        line = self._publish(snap)
        now = iso_utc(now_s)
        stats = self._store.writer_stats()
        written = snapshot.Snapshot(
            status=line,
            phase=snap.phase,
            causes=list(snap.causes),
            watchdog=snap.watchdog_ok,
            heartbeat_s=self._every_s,
            tokens=snapshot.TokensPart(
                balance=tok.balance,
                refill_rate=tok.refill_rate,
                period_s=tok.period_s,
                consumed_total=tok.consumed_total,
                consumed_by=dict(tok.consumed_by),
                waiting=dict(tok.waiting),
                rate_limited=tok.rate_limited,
            ),
            writer=snapshot.WriterPart(
                queue=stats.queue_len,
                commits=stats.commits,
                last_commit_at=iso_utc(stats.last_commit_at) if stats.last_commit_at else None,
                busy_since=stats.busy_since,
                last_error=stats.last_error,
            ),
            previous_run=self.previous_run,
            funnel=self.funnel,
            selections=[selection_part(u) for u in self._upserters()],
        )
        daemon_row: dict[str, object] = {
            "pid": os.getpid(),
            "started_at": self.started_at,
            "heartbeat_at": now,
            "stopped_at": now if stopped else None,
            "healthy": int(snap.healthy),
            "snapshot": snapshot.encode(written),
        }
        rows = [worker_row(w, now) for w in snap.workers]

        def write(conn: sqlite3.Connection) -> None:
            # A removed selection's worker row goes with it.
            liveness.forget_workers(conn, keep=[str(r["name"]) for r in rows])
            for row in rows:
                liveness.write_worker(conn, row)
            liveness.write_daemon(conn, daemon_row)

        await self._store.write(write)
        return snap

    async def _read_funnel(self, now_s: float, refill_rate: float, period_s: float) -> None:
        """The funnel's figures under the running config (kept from last time on a failure)."""
        cfg, now = self._config(), iso_utc(now_s)
        try:
            counts = await self._store.read(lambda c: funnel.read_counts(c, cfg, now=now))
        except (sqlite3.Error, OSError) as exc:
            log.warning("funnel_counts_failed", error=str(exc))
            return
        # Every selection's last walk of its whole result.
        walks = sum(u.full_pass_tokens or 0 for u in self._upserters())
        self.funnel = funnel.figures(
            counts,
            refill_rate=refill_rate,
            period_s=period_s,
            cost_per_product=self._tokens.cost_per_item("backfiller"),
            full_pass_tokens=walks or None,
        )
