"""The daemon: everything put together, started, watched and stopped.

``run_daemon`` runs three named steps, as uvicorn's ``Server.serve`` does.
Start-up: take the instance lock, open the store (migrations), build the
token scheduler, the Keepa client, health, the workers and their supervisor,
read how the previous run ended, then tell systemd it is ready. Run: keep
systemd's STATUS= line current, ping the watchdog unless a restart may cure
what is wrong, and write the health snapshot (``dealsd.snapshot``) into the
database every few seconds so `dealsd status` can read it from another
process. Shut down: stop the workers, write the last snapshot with
``stopped_at``, close HTTP and the database, release the lock.

The watchdog asks "would a restart help?", not "is all well?". Pings stop
for a worker that stopped trying (no round started or ended within its
window) and for a stuck writer; a wedged event loop stops them by itself.
They go on while the causes are ones a restart cannot cure: Keepa down while
the workers keep retrying on schedule, Keepa refusing the key, a full disk,
another process holding the write lock. Those keep the daemon unhealthy in
STATUS= and `dealsd status`, and are said once in the journal, then counted
(systemd/README.md, "Watchdog: what a restart can cure").

Signals: SIGTERM/SIGINT stop gracefully (rounds in flight finish, the writer
drains, HTTP and the database close, ``stopped_at`` is written) and exit 0; a
second one cancels what is still running at once. SIGHUP reloads the config
file and applies what may change live, or keeps the running config if the new
file is invalid; a deal selection added, removed or changed applies then too
(one upserter per selection, ``dealsd.selections``).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sqlite3
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import msgspec
import structlog

from dealsd import funnel, marketplaces, selections, snapshot
from dealsd.alerts.channels import Sender, load_channels
from dealsd.alerts.outbox import Evaluator
from dealsd.alerts.sender import AlertSender, Channels
from dealsd.clock import Clock, iso_utc, sleep_or_stop
from dealsd.config import (
    Config,
    ConfigError,
    KeepaConfig,
    config_warnings,
    diff_live,
    load_config,
)
from dealsd.exits import EX_CANTCREAT, EX_DATAERR, EX_OK, EX_TEMPFAIL
from dealsd.keepa import KeepaClient
from dealsd.lock import AlreadyRunning, InstanceLock
from dealsd.logs import FailureLog, set_level
from dealsd.mapping import keepa_time_iso
from dealsd.notify import Notifier
from dealsd.store import Store, StoreError, queries
from dealsd.tokens import TokenScheduler
from dealsd.workers.backfiller import Backfiller
from dealsd.workers.base import Worker
from dealsd.workers.health import Health, HealthSnapshot, State, WorkerRow
from dealsd.workers.janitor import Janitor
from dealsd.workers.supervisor import Supervisor
from dealsd.workers.upserter import Upserter

log = structlog.get_logger(__name__)

SNAPSHOT_EVERY_S = 5.0
SUMMARY_LOG_EVERY_S = 60.0
STOP_GRACE_S = 10.0
# The Keepa client's backoff between transient failures (its defaults).
CLIENT_BACKOFF_BASE_S, CLIENT_BACKOFF_MAX_S = 1.0, 60.0


def keepa_call_bound_s(cfg: KeepaConfig) -> float:
    """The longest one Keepa call may take with all its retries.

    Every attempt connecting and then timing out on the read, and the
    client's backoff between attempts: a worker inside such a call is still
    trying. (Time queued in the token scheduler, a 429 retry waiting for the
    refill, is not bounded here: health asks the scheduler instead.)
    """
    n = cfg.max_attempts
    backoffs = sum(min(CLIENT_BACKOFF_MAX_S, CLIENT_BACKOFF_BASE_S * 2.0**k) for k in range(n - 1))
    return n * (cfg.connect_timeout_s + cfg.read_timeout_s) + backoffs


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


class Daemon:
    """The running parts and the loop that watches them; built by ``run_daemon``."""

    def __init__(
        self,
        *,
        cfg: Config,
        config_path: Path | None,
        clock: Clock,
        notifier: Notifier,
        store: Store,
        tokens: TokenScheduler,
        client: KeepaClient,
        stop: asyncio.Event,
        snapshot_every_s: float,
        health_margin_s: float,
        backoff_cap_s: float,
        writer_bound_s: float = 60.0,
        key_loader: Callable[[Config], str] | None = None,
        alert_channels: Channels | None = None,
    ) -> None:
        self.cfg = cfg
        self._client = client
        self._key_loader = key_loader
        self._config_path = config_path
        self._clock = clock
        self._notifier = notifier
        self._store = store
        self._tokens = tokens
        self.stop = stop
        self._snapshot_every_s = snapshot_every_s
        self._wake = asyncio.Event()
        self._reload_requested = False
        self._signals = 0
        self._faults = FailureLog(clock=clock)
        self._stopping_sent = False
        self.health = Health(
            clock=clock,
            writer_stats=store.writer_stats,
            margin_s=health_margin_s,
            writer_bound_s=writer_bound_s,
            call_bound_s=keepa_call_bound_s(cfg.keepa),
            token_queue=lambda: tokens.snapshot().waiting,
        )
        sels = selections.resolve(cfg)
        first = sels[0]
        # Set by an upserter when it stores new deals: a waiting backfiller starts.
        self._work_arrived = asyncio.Event()
        # Alerts are queued inside the writes that change a deal (the outbox).
        self.alerts: AlertSender | None = None
        self._evaluator: Evaluator | None = None
        self._on_change = None
        if alert_channels is not None and cfg.alerts.rule:
            self._evaluator = evaluator = Evaluator(
                rules=cfg.alerts.rule, channels=alert_channels.names,
                price_type=first.price_type, realert_drop_pct=cfg.alerts.realert_drop_pct,
            )  # fmt: skip
            self._on_change = evaluator.on_deals_changed
            self.alerts = AlertSender(
                store=store, clock=clock, config=cfg.alerts, channels=alert_channels
            )
        self.pricing = selections.Pricing(sels)
        self.upserters = {s.name: self._upserter(s) for s in sels}
        tokens.set_weights(selections.token_weights(cfg, sels))
        self.backfiller = Backfiller(
            client=client, tokens=tokens, store=store, clock=clock, config=cfg.backfiller,
            price_type=first.price_type, profit=first.profit, health=self.health,
            pricing=self.pricing, on_change=self._on_change, funnel=cfg.funnel,
            work_arrived=self._work_arrived,
        )  # fmt: skip
        self.funnel: snapshot.FunnelPart | None = None
        self.janitor = Janitor(
            store=store, clock=clock, config=cfg.janitor, health=self.health, stop=stop,
            watch=[u.name for u in self.upserters.values()],
        )  # fmt: skip
        self.supervisor = Supervisor(
            workers=[
                *self.upserters.values(), self.backfiller, self.janitor, *self._extra_workers()
            ],
            clock=clock,
            health=self.health,
            stop=stop,
            on_restart=self._record_restart,
            backoff_cap_s=backoff_cap_s,
        )
        self.started_at = iso_utc(clock.now())
        self._last_status: str | None = None
        self._last_healthy: bool | None = None
        self.previous_run: snapshot.PreviousRun | None = None

    def _upserter(self, selection: selections.Selection) -> Upserter:
        return Upserter(
            client=self._client, tokens=self._tokens, store=self._store, clock=self._clock,
            selection=selection, health=self.health, pricing=self.pricing, stop=self.stop,
            on_change=self._on_change, work_arrived=self._work_arrived,
        )  # fmt: skip

    @property
    def upserter(self) -> Upserter:
        """The first selection's upserter (the only one of a one-selection config)."""
        return next(iter(self.upserters.values()))

    def _extra_workers(self) -> list[Worker]:
        return [self.alerts] if self.alerts is not None else []

    # -- signals --------------------------------------------------------------

    def on_stop_signal(self, signame: str) -> None:
        self._signals += 1
        if self._signals == 1:
            log.info("stopping", signal=signame)
            self.announce_stopping()
            self.stop.set()
        else:
            log.warning("stopping_now", signal=signame)
            self.supervisor.cancel_now()
        self._wake.set()

    def announce_stopping(self) -> None:
        """STOPPING=1, once, however the stop was asked for; and time to drain."""
        if not self._stopping_sent:
            self._stopping_sent = True
            self._notifier.stopping()
            self._notifier.extend_timeout(STOP_GRACE_S + 20.0)

    def on_reload_signal(self) -> None:
        self._reload_requested = True
        self._wake.set()

    async def _record_restart(self, name: str, error: str) -> None:
        now = iso_utc(self._clock.now())
        await self._store.write(lambda c: queries.bump_restarts(c, name, now))

    # -- the watch loop -------------------------------------------------------

    async def run(self) -> None:
        """Start up, then watch until stopped (``shut_down`` is the caller's)."""
        await self.start_up()
        await self.watch()

    async def start_up(self) -> None:
        """Read how the previous run ended, start the workers, then READY=1."""
        # Before the first snapshot overwrites the row the previous run left.
        summary: Mapping[str, Any] = await self._store.read(
            lambda c: queries.status_summary(c, now=self._clock.now())
        )
        self.previous_run = snapshot.previous_run(summary.get("daemon"))
        if self.previous_run is not None:
            prev = self.previous_run
            event = log.info if prev.ended == "stopped" else log.warning
            event(
                "previous_run", ended=prev.ended, heartbeat_at=prev.heartbeat_at,
                phase=prev.phase, causes=prev.causes, watchdog=prev.watchdog,
            )  # fmt: skip
        self.supervisor.start()
        try:
            await self.write_snapshot()
        except StoreError as exc:
            # Started on a full disk: that is a cause like any other, named in
            # STATUS= from READY=1 on, and the watch loop's next snapshot
            # retries. Raising here ended the daemon without a word.
            self._snapshot_failed(exc)
        self._notifier.ready(status=self._last_status)
        log.info("ready", database=str(self.cfg.database.path), pid=os.getpid())
        self._warn_config()

    async def shut_down(self) -> None:
        """Stop the workers (grace, then cancel) and write the last snapshot."""
        self.announce_stopping()
        await self.supervisor.stop(grace_s=STOP_GRACE_S)
        try:
            await self.write_snapshot(stopped=True)
        except StoreError as exc:
            log.error("final_snapshot_failed", error=str(exc))

    async def watch(self) -> None:
        """The watch loop: snapshots, STATUS=, the watchdog, reloads, until stopped."""
        wd = self._notifier.watchdog_interval_s()
        # A pass sleeps one tick, then waits at most one more for the snapshot
        # write before it pings: two ticks between pings at most, however slow
        # the writer. Half the ping interval each keeps that gap within the
        # interval (WatchdogSec/2), so one late ping still never costs a kill.
        tick = min(self._snapshot_every_s, wd / 2) if wd else self._snapshot_every_s
        last_log = self._clock.monotonic()
        # A snapshot write still waiting for the writer (another process holds
        # the lock) is not queued again; meanwhile STATUS= and the watchdog
        # follow health alone, so the loop never blocks on the database.
        pending: asyncio.Future[HealthSnapshot] | None = None
        try:
            while not self.stop.is_set():
                await sleep_or_stop(self._clock, self._wake, tick)
                self._wake.clear()
                if self.stop.is_set():
                    break
                if self._reload_requested:
                    self._reload_requested = False
                    await self.reload()
                if pending is None:
                    pending = asyncio.ensure_future(self.write_snapshot())
                await asyncio.wait({pending}, timeout=tick)
                if not pending.done():
                    snap = self.health.snapshot()
                    self._publish(snap)
                else:
                    done, pending = pending, None
                    try:
                        snap = done.result()
                    except StoreError as exc:
                        # A database that cannot take the snapshot (disk full)
                        # cannot take deals either: no watchdog ping.
                        self._snapshot_failed(exc)
                        continue
                    else:
                        self._faults.clear("snapshot")
                self._after_snapshot(snap)
                if self._clock.monotonic() - last_log >= SUMMARY_LOG_EVERY_S:
                    last_log = self._clock.monotonic()
                    extra = funnel.line(self.funnel) if self.funnel is not None else {}
                    log.info("summary", status=self.health.summary_line(snap), **extra)
        finally:
            if pending is not None and not pending.done():
                # The stopped snapshot written next supersedes it.
                pending.cancel()

    def _snapshot_failed(self, exc: StoreError) -> None:
        """Say it once (then count it), and publish what health says without it."""
        self._faults.log_failure(log, "snapshot_failed", "snapshot", error=str(exc))
        self._publish(self.health.snapshot())

    def _after_snapshot(self, snap: HealthSnapshot) -> None:
        # See the module docstring: stop pinging only for what a restart may
        # cure. Stopping for Keepa being down (or a refused key) would only get
        # the service killed and restarted every stall window + WatchdogSec,
        # forever, each restart losing the learned token model.
        if not snap.watchdog_ok:
            self._faults.clear("watchdog_kept")
            self._faults.log_failure(
                log, "watchdog_withheld", "watchdog_withheld", level="error",
                causes=list(snap.causes), why="a restart may cure this",
            )  # fmt: skip
            return
        self._faults.clear("watchdog_withheld")
        if snap.causes:
            # Said once as a warning, then counted (one summary line a minute).
            self._faults.log_failure(
                log, "watchdog_kept", "watchdog_kept",
                causes=list(snap.causes), why="a restart cannot cure this",
            )  # fmt: skip
        else:
            self._faults.clear("watchdog_kept")
        self._notifier.watchdog()

    async def write_snapshot(self, *, stopped: bool = False) -> HealthSnapshot:
        """Refresh counts, write the workers/daemon rows, update STATUS= if it changed."""
        now_s = self._clock.now()
        try:
            summary: Mapping[str, Any] = await self._store.read(
                lambda c: queries.status_summary(c, now=now_s)
            )
            deals = summary.get("deals", {})
            if isinstance(deals, Mapping):
                self.health.note_counts(
                    deals=float(deals.get("total", 0) or 0),
                    pending=float(deals.get("pending_backfill", 0) or 0),
                )
        except (sqlite3.Error, OSError) as exc:
            log.warning("status_counts_failed", error=str(exc))
        tok = self._tokens.snapshot()
        await self._read_funnel(now_s, tok.refill_rate, tok.period_s)
        self.health.note_counts(tokens=tok.balance)
        snap = self.health.snapshot()
        line = self._publish(snap)
        now = iso_utc(now_s)
        stats = self._store.writer_stats()
        written = snapshot.Snapshot(
            status=line,
            phase=snap.phase,
            causes=list(snap.causes),
            watchdog=snap.watchdog_ok,
            heartbeat_s=self._snapshot_every_s,
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
            selections=[selection_part(u) for u in self.upserters.values()],
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
            queries.forget_workers(conn, keep=[str(r["name"]) for r in rows])
            for row in rows:
                queries.write_worker(conn, row)
            queries.write_daemon(conn, daemon_row)

        await self._store.write(write)
        return snap

    async def _read_funnel(self, now_s: float, refill_rate: float, period_s: float) -> None:
        """The funnel's figures under the running config (kept from last time on a failure)."""
        cfg, now = self.cfg, iso_utc(now_s)
        try:
            counts = await self._store.read(lambda c: funnel.read_counts(c, cfg, now=now))
        except (sqlite3.Error, OSError) as exc:
            log.warning("funnel_counts_failed", error=str(exc))
            return
        # Every selection's last walk of its whole result.
        walks = sum(u.full_pass_tokens or 0 for u in self.upserters.values())
        self.funnel = funnel.figures(
            counts,
            refill_rate=refill_rate,
            period_s=period_s,
            cost_per_product=self._tokens.cost_per_item("backfiller"),
            full_pass_tokens=walks or None,
        )

    def _publish(self, snap: HealthSnapshot) -> str:
        """STATUS= and the health_changed log line, each only when it changed."""
        line = self.health.summary_line(snap)
        if line != self._last_status:
            self._last_status = line
            self._notifier.status(line)
        if snap.healthy != self._last_healthy:
            if self._last_healthy is not None:
                event = log.info if snap.healthy else log.warning
                event("health_changed", healthy=snap.healthy, causes=list(snap.causes))
            self._last_healthy = snap.healthy
        return line

    # -- SIGHUP ---------------------------------------------------------------

    async def reload(self) -> None:
        """Apply what may change live from the config file; keep running on a bad file."""
        self._notifier.reloading()
        try:
            if self._config_path is None:
                log.warning("reload_ignored", reason="no config file to reload from")
                return
            try:
                new = load_config(self._config_path)
            except ConfigError as exc:
                log.error("reload_rejected", error=str(exc), keeping="running config")
                return
            changes, need_restart = diff_live(self.cfg, new)
            for key in need_restart:
                log.warning("config_change_needs_restart", key=key)
            # Settings that need a restart keep their running values until then.
            new = msgspec.structs.replace(new, keepa=self.cfg.keepa, database=self.cfg.database)
            for change in changes:
                log.info("config_changed", key=change.key, old=change.old, new=change.new)
            await self.apply(new)
            self.reload_key(new)
            log.info("reloaded", changes=len(changes), need_restart=len(need_restart))
            self._warn_config()
        finally:
            self._notifier.ready(status=self._last_status)

    def _warn_config(self) -> None:
        """What check-config warns about, said in the journal too (once per start or reload)."""
        for warning in config_warnings(self.cfg):
            log.warning("config_warning", warning=warning)

    def reload_key(self, cfg: Config) -> None:
        """Re-read the API key: a key fixed on disk needs a reload, not a restart."""
        if self._key_loader is None:
            return
        try:
            key = self._key_loader(cfg)
        except ConfigError as exc:
            # ConfigError never quotes the key file's content.
            log.error("api_key_reload_failed", error=str(exc), keeping="running key")
            return
        if self._client.uses_api_key(key):
            return
        self._client.set_api_key(key)
        log.info("api_key_changed")
        # Workers refused with the old key sleep out a long pause: try now.
        self.supervisor.wake()

    def _reconfigure_alerts(self, new: Config) -> None:
        """Rules, limits and channels apply live; alerts where none ran need a restart."""
        if self.alerts is None or self._evaluator is None:
            if new.alerts.rule:
                log.warning("config_change_needs_restart", key="alerts.rule")
            return
        try:
            channels = Sender(load_channels(new.alerts)) if new.alerts.rule else None
        except ConfigError as exc:
            log.error("reload_rejected", error=str(exc), keeping="running alerts")
            return
        self._evaluator.reconfigure(
            rules=new.alerts.rule,
            channels=channels.names if channels else [],
            realert_drop_pct=new.alerts.realert_drop_pct,
        )
        if channels is not None:
            self.alerts.reconfigure(config=new.alerts, channels=channels)

    async def apply(self, new: Config) -> None:
        self.cfg = new
        sels = selections.resolve(new)
        await self._apply_selections(sels)
        first = sels[0]
        self.backfiller.reconfigure(
            config=new.backfiller, price_type=first.price_type, profit=first.profit,
            pricing=self.pricing, funnel=new.funnel,
        )  # fmt: skip
        self.janitor.reconfigure(config=new.janitor)
        self._reconfigure_alerts(new)
        self._tokens.set_weights(selections.token_weights(new, sels))
        self._tokens.set_batch_minutes(new.tokens.batch_minutes)
        set_level(new.log.level)

    async def _apply_selections(self, sels: list[selections.Selection]) -> None:
        """Selections added, removed or changed on SIGHUP, applied live.

        A removed selection's upserter stops now; its checkpoints stay (a
        re-add resumes them; the janitor drops them after a week unwritten)
        and its deals age out by the normal grace unless another selection
        still sees them.
        """
        wanted = {s.name: s for s in sels}
        for name in [n for n in self.upserters if n not in wanted]:
            gone = self.upserters.pop(name)
            await self.supervisor.remove(gone.name)
            log.info("selection_removed", selection=name, worker=gone.name)
        self.pricing.set(sels)
        for name, sel in wanted.items():
            running = self.upserters.get(name)
            if running is None:
                self.upserters[name] = added = self._upserter(sel)
                self.supervisor.add(added)
                log.info("selection_added", selection=name, domain=sel.domain, worker=added.name)
            elif running.selection != sel:
                running.reconfigure(selection=sel)
                log.info("selection_changed", selection=name, domain=sel.domain)
        # Config order is the pricing order and the status order.
        self.upserters = {n: self.upserters[n] for n in wanted}
        self.janitor.set_watch([u.name for u in self.upserters.values()])


async def run_daemon(
    cfg: Config,
    *,
    api_key: str,
    clock: Clock,
    notifier: Notifier,
    stop: asyncio.Event | None = None,
    config_path: Path | None = None,
    install_signals: bool = True,
    snapshot_every_s: float = SNAPSHOT_EVERY_S,
    health_margin_s: float = 60.0,
    backoff_cap_s: float = 60.0,
    writer_bound_s: float = 60.0,
    key_loader: Callable[[Config], str] | None = None,
    alert_channels: Channels | None = None,
) -> int:
    """Run dealsd until stopped; returns the process exit status.

    Start-up (lock, store, client, daemon, signals), run, shut down: each
    resource is released in the reverse order it was taken, however the run
    ends, by the exit stack.
    """
    stop = stop if stop is not None else asyncio.Event()
    db_path = Path(cfg.database.path)
    async with contextlib.AsyncExitStack() as resources:
        opened = await _open_resources(resources, db_path, clock=clock)
        if isinstance(opened, int):
            return opened
        store = opened
        tokens = TokenScheduler(
            clock=clock, weights=dict(cfg.tokens.weights), batch_minutes=cfg.tokens.batch_minutes
        )
        client = await resources.enter_async_context(
            KeepaClient(
                base_url=cfg.keepa.base_url,
                api_key=api_key,
                domain=cfg.keepa.domain,
                tokens=tokens,
                clock=clock,
                connect_timeout_s=cfg.keepa.connect_timeout_s,
                read_timeout_s=cfg.keepa.read_timeout_s,
                max_attempts=cfg.keepa.max_attempts,
            )
        )
        daemon = Daemon(
            cfg=cfg,
            config_path=config_path,
            clock=clock,
            notifier=notifier,
            store=store,
            tokens=tokens,
            client=client,
            stop=stop,
            snapshot_every_s=snapshot_every_s,
            health_margin_s=health_margin_s,
            backoff_cap_s=backoff_cap_s,
            writer_bound_s=writer_bound_s,
            key_loader=key_loader,
            alert_channels=alert_channels,
        )
        if install_signals:
            resources.callback(_remove_signals, _install_signals(daemon))
        try:
            await daemon.run()
        except Exception as exc:
            # One error line for `journalctl -p err` before the traceback and
            # systemd's restart: a daemon must never end without a word.
            log.error("crashed", error=f"{type(exc).__name__}: {exc}")
            raise
        finally:
            await daemon.shut_down()
    log.info("stopped")
    return EX_OK


async def _open_resources(
    resources: contextlib.AsyncExitStack, db_path: Path, *, clock: Clock
) -> Store | int:
    """Take the instance lock and open the store; an exit status if either fails.

    The lock is released last, after the store drained and closed (``close``
    commits whatever the workers queued before returning).
    """
    from dealsd.store import NotADatabase, SchemaTooNew

    lock = InstanceLock(db_path)
    try:
        db_path.parent.mkdir(parents=True, exist_ok=True)
        lock.acquire()
    except AlreadyRunning as exc:
        log.error("already_running", pid=exc.pid, database=str(db_path))
        return EX_TEMPFAIL
    except OSError as exc:
        log.error("database_unavailable", database=str(db_path), error=str(exc))
        return EX_CANTCREAT
    resources.callback(lock.release)
    try:
        store = await Store.open(db_path, clock=clock)
    except (NotADatabase, SchemaTooNew) as exc:
        log.error("database_refused", database=str(db_path), error=str(exc))
        return EX_DATAERR
    except (OSError, sqlite3.Error) as exc:
        # Unwritable directory, read-only file system: say which file, no traceback.
        log.error("database_unavailable", database=str(db_path), error=str(exc))
        return EX_CANTCREAT
    resources.push_async_callback(store.close)
    return store


def _install_signals(daemon: Daemon) -> list[signal.Signals]:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, daemon.on_stop_signal, sig.name)
    loop.add_signal_handler(signal.SIGHUP, daemon.on_reload_signal)
    return [signal.SIGTERM, signal.SIGINT, signal.SIGHUP]


def _remove_signals(installed: list[signal.Signals]) -> None:
    loop = asyncio.get_running_loop()
    for sig in installed:
        loop.remove_signal_handler(sig)
