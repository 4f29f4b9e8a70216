"""The workers a config asks for: built at start-up, reconfigured on SIGHUP.

One upserter per deal selection (``dealsd.selections``), the backfiller, the
janitor and, when alert rules and channels are configured, the alert sender,
all under one supervisor, and the ``Health`` they report into. The daemon
owns a ``Parts`` and watches it.

``reload`` re-reads the config file and applies what may change live; keys
that need a restart keep their running values and are named. A file that does
not load leaves everything as it runs. A selection added, removed or changed
applies at once, and the API key is re-read: a key fixed on disk needs a
reload, not a restart.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import msgspec
import structlog

from dealsd import selections
from dealsd.alerts.channels import Sender, load_channels
from dealsd.alerts.outbox import Evaluator
from dealsd.alerts.sender import AlertSender, Channels
from dealsd.clock import Clock, iso_utc
from dealsd.config import (
    Config,
    ConfigError,
    KeepaConfig,
    config_warnings,
    diff_live,
    load_config,
)
from dealsd.keepa import KeepaClient
from dealsd.logs import set_level
from dealsd.store import Store, liveness
from dealsd.tokens import TokenScheduler
from dealsd.workers.backfiller import Backfiller
from dealsd.workers.base import Worker
from dealsd.workers.health import Health
from dealsd.workers.janitor import Janitor
from dealsd.workers.supervisor import Supervisor
from dealsd.workers.upserter import Upserter

# These events were the daemon's before it was split: journal filters on
# logger=dealsd.daemon keep matching them.
log = structlog.get_logger("dealsd.daemon")

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


def warn_config(cfg: Config) -> None:
    """What check-config warns about, said in the journal too (once per start or reload)."""
    for warning in config_warnings(cfg):
        log.warning("config_warning", warning=warning)


class Parts:
    """The workers, their health and supervisor, and the config they run under."""

    def __init__(
        self,
        *,
        cfg: Config,
        config_path: Path | None,
        clock: Clock,
        store: Store,
        tokens: TokenScheduler,
        client: KeepaClient,
        stop: asyncio.Event,
        health_margin_s: float,
        writer_bound_s: float,
        backoff_cap_s: float,
        key_loader: Callable[[Config], str] | None = None,
        alert_channels: Channels | None = None,
    ) -> None:
        self.cfg = cfg
        self._config_path = config_path
        self._clock = clock
        self._store = store
        self._tokens = tokens
        self._client = client
        self._stop = stop
        self._key_loader = key_loader
        # What the workers report and the daemon watches.
        self.health = health = Health(
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
            price_type=first.price_type, profit=first.profit, health=health,
            pricing=self.pricing, on_change=self._on_change, funnel=cfg.funnel,
            selection_funnels=selections.funnels(cfg), work_arrived=self._work_arrived,
        )  # fmt: skip
        self.janitor = Janitor(
            store=store, clock=clock, config=cfg.janitor, health=health, stop=stop,
            watch=[u.name for u in self.upserters.values()],
        )  # fmt: skip
        self.supervisor = Supervisor(
            workers=[
                *self.upserters.values(), self.backfiller, self.janitor, *self._extra_workers()
            ],
            clock=clock,
            health=health,
            stop=stop,
            on_restart=self._record_restart,
            backoff_cap_s=backoff_cap_s,
        )

    def _upserter(self, selection: selections.Selection) -> Upserter:
        return Upserter(
            client=self._client, tokens=self._tokens, store=self._store, clock=self._clock,
            selection=selection, health=self.health, pricing=self.pricing, stop=self._stop,
            on_change=self._on_change, work_arrived=self._work_arrived,
        )  # fmt: skip

    @property
    def upserter(self) -> Upserter:
        """The first selection's upserter (the only one of a one-selection config)."""
        return next(iter(self.upserters.values()))

    def _extra_workers(self) -> list[Worker]:
        return [self.alerts] if self.alerts is not None else []

    async def _record_restart(self, name: str, error: str) -> None:
        now = iso_utc(self._clock.now())
        await self._store.write(lambda c: liveness.bump_restarts(c, name, now))

    # -- SIGHUP ---------------------------------------------------------------

    async def reload(self) -> None:
        """Apply what may change live from the config file; keep running on a bad file."""
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
        warn_config(self.cfg)

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
            pricing=self.pricing, funnel=new.funnel, selection_funnels=selections.funnels(new),
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
