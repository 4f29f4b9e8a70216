"""The daemon: everything put together, started, watched and stopped.

``run_daemon`` runs three named steps, as uvicorn's ``Server.serve`` does.
Start-up: take the instance lock, open the store (migrations), build the
token scheduler, the Keepa client, health, the workers and their supervisor,
read how the previous run ended, then tell systemd it is ready. Run: keep
systemd's STATUS= line current, ping the watchdog unless a restart may cure
what is wrong, and have the heartbeat (``dealsd.heartbeat``) write the health
snapshot (``dealsd.snapshot``) into the database every few seconds so
`dealsd status` can read it from another process. Shut down: stop the
workers, write the last snapshot with ``stopped_at``, close HTTP and the
database, release the lock.

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
(one upserter per selection, ``dealsd.selections``). The workers, their health
and how a reload reaches them are ``dealsd.parts``; this module starts, watches
and stops them.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sqlite3
from collections.abc import Callable
from pathlib import Path

import structlog

from dealsd import funnel
from dealsd.alerts.sender import Channels
from dealsd.clock import Clock, sleep_or_stop
from dealsd.config import Config
from dealsd.exits import EX_CANTCREAT, EX_DATAERR, EX_OK, EX_TEMPFAIL
from dealsd.heartbeat import Heartbeat
from dealsd.keepa import KeepaClient
from dealsd.lock import AlreadyRunning, InstanceLock
from dealsd.logs import FailureLog
from dealsd.notify import Notifier
from dealsd.parts import Parts, warn_config
from dealsd.store import Store, StoreError
from dealsd.tokens import TokenScheduler
from dealsd.workers.health_types import HealthSnapshot

log = structlog.get_logger(__name__)

SNAPSHOT_EVERY_S = 5.0
SUMMARY_LOG_EVERY_S = 60.0
STOP_GRACE_S = 10.0
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
        self._clock = clock
        self._notifier = notifier
        # The one store (and writer queue) the parts and the heartbeat share.
        self.store = store
        self.stop = stop
        self._snapshot_every_s = snapshot_every_s
        self._wake = asyncio.Event()
        self._reload_requested = False
        self._signals = 0
        self._faults = FailureLog(clock=clock)
        self._stopping_sent = False
        self.parts = parts = Parts(
            cfg=cfg, config_path=config_path, clock=clock, store=store, tokens=tokens,
            client=client, stop=stop, health_margin_s=health_margin_s,
            writer_bound_s=writer_bound_s, backoff_cap_s=backoff_cap_s,
            key_loader=key_loader, alert_channels=alert_channels,
        )  # fmt: skip
        self.health = parts.health
        self.heartbeat = Heartbeat(
            clock=clock, store=store, tokens=tokens, health=self.health,
            config=lambda: parts.cfg, upserters=lambda: parts.upserters.values(),
            publish=self._publish, every_s=snapshot_every_s,
        )  # fmt: skip
        self._last_status: str | None = None
        self._last_healthy: bool | None = None

    # -- signals --------------------------------------------------------------

    def on_stop_signal(self, signame: str) -> None:
        self._signals += 1
        if self._signals == 1:
            log.info("stopping", signal=signame)
            self.announce_stopping()
            self.stop.set()
        else:
            log.warning("stopping_now", signal=signame)
            self.parts.supervisor.cancel_now()
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

    async def reload(self) -> None:
        """SIGHUP: RELOADING=1, the new config applied (``Parts.reload``), READY=1."""
        self._notifier.reloading()
        try:
            await self.parts.reload()
        finally:
            self._notifier.ready(status=self._last_status)

    # -- the watch loop -------------------------------------------------------

    async def run(self) -> None:
        """Start up, then watch until stopped (``shut_down`` is the caller's)."""
        await self.start_up()
        await self.watch()

    async def start_up(self) -> None:
        """Read how the previous run ended, start the workers, then READY=1."""
        prev = await self.heartbeat.read_previous_run()
        if prev is not None:
            event = log.info if prev.ended == "stopped" else log.warning
            event(
                "previous_run", ended=prev.ended, heartbeat_at=prev.heartbeat_at,
                phase=prev.phase, causes=prev.causes, watchdog=prev.watchdog,
            )  # fmt: skip
        self.parts.supervisor.start()
        try:
            await self.heartbeat.write()
        except StoreError as exc:
            # Started on a full disk: that is a cause like any other, named in
            # STATUS= from READY=1 on, and the watch loop's next snapshot
            # retries. Raising here ended the daemon without a word.
            self._snapshot_failed(exc)
        self._notifier.ready(status=self._last_status)
        log.info("ready", database=str(self.parts.cfg.database.path), pid=os.getpid())
        warn_config(self.parts.cfg)

    async def shut_down(self) -> None:
        """Stop the workers (grace, then cancel) and write the last snapshot."""
        self.announce_stopping()
        await self.parts.supervisor.stop(grace_s=STOP_GRACE_S)
        try:
            await self.heartbeat.write(stopped=True)
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
                    pending = asyncio.ensure_future(self.heartbeat.write())
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
                    figures = self.heartbeat.funnel
                    extra = funnel.line(figures) if figures is not None else {}
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
