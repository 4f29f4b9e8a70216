"""The janitor: removes deals Keepa has stopped listing, and old ledger rows.

A deal not seen for ``grace_h`` hours is gone from Keepa's results and is
deleted, in chunks so no single transaction holds the writer for long.

The old system's janitor kept deleting while ingestion was down and drained
the dashboard to zero (docs/field-notes.md #6). "Not seen" only means "gone" when
the upserter is actually looking, so this janitor prunes only while the
upserter has succeeded recently (within twice its interval plus the backoff
of a failed round), and pauses — saying so once — otherwise. With several
selections it watches every selection's upserter: "not seen" is trusted only
while all of them are looking. A deal's ``last_seen_at`` is the latest any
selection saw it, so the grace prunes only what no selection still sees; a
selection's own match (``deal_selections``) ages out on the same grace, and
checkpoints unwritten for a week (a removed selection's) are dropped.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import structlog

from dealsd.clock import Clock, iso_utc
from dealsd.config import JanitorConfig
from dealsd.store import Store, pruning
from dealsd.workers.base import RoundResult
from dealsd.workers.health import Health

log = structlog.get_logger(__name__)

LEDGER_KEEP_S = 7 * 86_400.0
# The upserter may fail a round and wait out the supervisor's backoff (up to
# 60 s) before it succeeds again: that alone is no outage.
FAILED_ROUND_GRACE_S = 60.0


class Janitor:
    name = "janitor"

    def __init__(
        self,
        *,
        store: Store,
        clock: Clock,
        config: JanitorConfig,
        health: Health,
        watch: str | Sequence[str] = "upserter",
        stop: asyncio.Event | None = None,
    ) -> None:
        self._store = store
        self._clock = clock
        self._cfg = config
        self._health = health
        self._watch: list[str] = []
        self.set_watch(watch)
        self._stop = stop
        self._paused = False
        self.deleted_total = 0

    @property
    def expected_round_s(self) -> float:
        return float(self._cfg.interval_s)

    def reconfigure(self, *, config: JanitorConfig) -> None:
        self._cfg = config

    def set_watch(self, watch: str | Sequence[str]) -> None:
        """The upserters whose success makes "not seen" mean gone (SIGHUP: the selections)."""
        self._watch = [watch] if isinstance(watch, str) else list(watch)

    def _window_s(self, name: str) -> float:
        interval = self._health.expected_round_s(name) or 0.0
        # A short interval gets a short grace: an outage is then noticed in
        # seconds, and "not seen" is never trusted for longer than it should be.
        return 2 * interval + min(FAILED_ROUND_GRACE_S, interval)

    def _healthy(self, name: str) -> bool:
        if not self._health.has_succeeded(name):
            return False
        since = self._health.seconds_since_success(name)
        return since is not None and since <= self._window_s(name)

    def ingestion_healthy(self) -> bool:
        """True when every watched worker has succeeded recently enough to trust "not seen"."""
        return bool(self._watch) and all(self._healthy(name) for name in self._watch)

    async def round(self) -> RoundResult:
        cfg = self._cfg
        if not self.ingestion_healthy():
            late = [n for n in self._watch if not self._healthy(n)] or ["no upserter"]
            since = max((self._health.seconds_since_success(n) or 0.0) for n in self._watch or late)
            starting = all(
                not self._health.has_succeeded(n) and since <= self._window_s(n) for n in late
            )
            # Right after start the upserter simply has not run yet: waiting
            # for it is normal and not worth a warning; anything longer is.
            if not self._paused and not starting:
                self._paused = True
                log.warning(
                    "janitor_paused",
                    reason=f"{', '.join(late)} has not succeeded recently",
                    since_s=round(since, 1),
                )
            # Deliberately waiting is alive: the upserter's own stall says what is wrong.
            return RoundResult(sleep_s=float(cfg.interval_s), idle=True)
        if self._paused:
            self._paused = False
            log.info("janitor_resumed")
        now_s = self._clock.now()
        # The cutoff is taken from the upserter's last success, not from now
        # alone: a wall clock that jumps forward must not age every deal at once.
        seen = min((self._health.last_success_at(n) or now_s) for n in self._watch)
        cutoff = iso_utc(min(now_s, seen) - cfg.grace_h * 3600.0)
        deleted = 0
        while True:
            n = await self._store.write(
                lambda c: pruning.prune_stale(c, older_than=cutoff, limit=cfg.chunk)
            )
            deleted += n
            if n < cfg.chunk or (self._stop is not None and self._stop.is_set()):
                break
            if not self.ingestion_healthy():
                break
        while True:
            n = await self._store.write(
                lambda c: pruning.prune_unseen_by(c, older_than=cutoff, limit=cfg.chunk)
            )
            if n < cfg.chunk or (self._stop is not None and self._stop.is_set()):
                break
        ledger_cutoff = iso_utc(now_s - LEDGER_KEEP_S)
        await self._store.write(lambda c: pruning.prune_ledger(c, older_than=ledger_cutoff))
        await self._store.write(
            lambda c: pruning.prune_checkpoints(c, prefix="upserter.", older_than=ledger_cutoff)
        )
        self.deleted_total += deleted
        if deleted:
            log.info("janitor_pruned", deleted=deleted, older_than=cutoff)
            return RoundResult(sleep_s=float(cfg.interval_s), progressed=deleted, what="deals")
        return RoundResult(sleep_s=float(cfg.interval_s), idle=True)
