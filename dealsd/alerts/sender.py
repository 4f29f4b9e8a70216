"""The alert sender: a worker that delivers the outbox, channel by channel.

Each round takes the due alerts of each channel and sends them: one message
each while the channel is under ``max_per_minute``, one digest of all of them
when more are due than that (a first fill, a marketplace-wide price drop, a
channel back after hours: it gets one digest, not thousands). A failed send
is tried again with a doubling delay (``retry_base_s`` up to
``retry_max_s``); the alerts stay in the outbox until a send succeeds, so a
restart resumes them. Delivery is at least once: only a send interrupted by a
crash, before its success was recorded, is sent twice.

A failing channel is the operator's to fix (a revoked webhook): it shows in
``dealsd status`` and, once then counted, in the journal at warning, and the
round still counts as a sign of life: a restart cannot fix a channel, so it
never stops the watchdog.
"""

from __future__ import annotations

import collections
import random
from collections.abc import Callable
from typing import Protocol

import structlog

from dealsd.alerts import message, outbox
from dealsd.alerts.outbox import Pending
from dealsd.clock import Clock, iso_utc
from dealsd.config import AlertsConfig
from dealsd.logs import FailureLog
from dealsd.store import Store
from dealsd.workers.base import RoundResult

log = structlog.get_logger(__name__)

# Alerts read a round. A digest ranks all it is given and lists the best 50,
# so this bounds how many one digest covers: a channel back after hours of
# failing sends one digest, not one per thousand queued. 10,000 alerts'
# facts are a few MB for the round.
DUE_LIMIT = 10_000
KEEP_SENT_S = 7 * 86400.0  # `dealsd alerts list` shows a week
PRUNE_EVERY_S = 3600.0
WINDOW_S = 60.0


class Channels(Protocol):
    """What the sender needs of ``channels.Sender``: its channel names and a send."""

    @property
    def names(self) -> list[str]: ...

    async def send(self, channel: str, *, title: str, body: str) -> str | None: ...


class AlertSender:
    name = "alerts"

    def __init__(
        self,
        *,
        store: Store,
        clock: Clock,
        config: AlertsConfig,
        channels: Channels,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self._store = store
        self._clock = clock
        self._cfg = config
        self._channels = channels
        self._rand = rand
        self._faults = FailureLog(clock=clock)
        # Monotonic times of the messages sent to each channel in the last minute.
        self._sent: dict[str, collections.deque[float]] = collections.defaultdict(collections.deque)
        self._last_prune = float("-inf")
        self.sent_messages = 0

    def reconfigure(self, *, config: AlertsConfig, channels: Channels) -> None:
        self._cfg = config
        self._channels = channels

    @property
    def expected_round_s(self) -> float:
        return self._cfg.poll_s

    async def round(self) -> RoundResult:
        now_s = self._clock.now()
        now = iso_utc(now_s)
        due = await self._store.read(lambda c: outbox.due(c, now=now, limit=DUE_LIMIT))
        by_channel: dict[str, list[Pending]] = collections.defaultdict(list)
        for alert in due:
            by_channel[alert.channel].append(alert)
        delivered = 0
        for channel, alerts in by_channel.items():
            delivered += await self._deliver(channel, alerts)
        await self._prune(now_s)
        if not due:
            return RoundResult(sleep_s=self._cfg.poll_s, idle=True)
        # Alerts waiting for a retry (or for the minute's budget) are work in
        # hand, not a stall: the round is a sign of life either way.
        return RoundResult(
            sleep_s=self._cfg.poll_s, progressed=delivered, what="alerts", idle=delivered == 0
        )

    def _budget(self, channel: str) -> int:
        window = self._sent[channel]
        now = self._clock.monotonic()
        while window and now - window[0] >= WINDOW_S:
            window.popleft()
        return self._cfg.max_per_minute - len(window)

    async def _deliver(self, channel: str, alerts: list[Pending]) -> int:
        budget = self._budget(channel)
        if budget <= 0:
            return 0
        if len(alerts) <= budget:
            batches = [[a] for a in alerts]
        else:
            batches = [alerts]
        delivered = 0
        for batch in batches:
            title, body = message.single(batch[0]) if len(batch) == 1 else message.digest(batch)
            error = await self._channels.send(channel, title=title, body=body)
            if error is not None:
                await self._failed(channel, batch, error)
                # The channel is down: the rest of this round's batches wait too.
                return delivered
            await self._succeeded(channel, batch)
            delivered += len(batch)
        return delivered

    async def _succeeded(self, channel: str, batch: list[Pending]) -> None:
        now = iso_utc(self._clock.now())
        ids = [a.id for a in batch]
        await self._store.write(lambda c: outbox.mark_sent(c, ids=ids, channel=channel, now=now))
        self._sent[channel].append(self._clock.monotonic())
        self.sent_messages += 1
        self._faults.clear(f"alerts:{channel}")
        log.info(
            "alert_sent",
            worker=self.name,
            channel=channel,
            alerts=len(batch),
            digest=len(batch) > 1,
            asin=batch[0].facts.asin if len(batch) == 1 else None,
            rule=batch[0].rule if len(batch) == 1 else None,
        )

    async def _failed(self, channel: str, batch: list[Pending], error: str) -> None:
        now_s = self._clock.now()
        attempts = max(a.attempts for a in batch) + 1
        delay = min(self._cfg.retry_max_s, self._cfg.retry_base_s * 2 ** (attempts - 1))
        # Jitter: many alerts failing together must not retry in lockstep.
        delay *= 0.5 + self._rand() / 2
        nxt = iso_utc(now_s + delay)
        ids = [a.id for a in batch]
        await self._store.write(
            lambda c: outbox.mark_failed(
                c, ids=ids, channel=channel, now=iso_utc(now_s), next_try_at=nxt, error=error
            )
        )
        self._faults.log_failure(
            log,
            "alert_send_failed",
            f"alerts:{channel}",
            worker=self.name,
            channel=channel,
            queued=len(batch),
            error=error,
            retry_in_s=round(delay, 1),
        )

    async def _prune(self, now_s: float) -> None:
        mono = self._clock.monotonic()
        if mono - self._last_prune < PRUNE_EVERY_S:
            return
        self._last_prune = mono
        before = iso_utc(now_s - KEEP_SENT_S)
        await self._store.write(lambda c: outbox.prune(c, sent_before=before))

