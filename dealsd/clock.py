"""Time, injected: every part that waits or stamps takes a ``Clock``.

Tests drive a ``FakeClock`` by hand so the token scheduler, the stall detector
and the watchdog are exercised without sleeping. The time formats (the
database's ISO stamps, Keepa minutes) live in ``dealsd.timefmt`` and are
re-exported here.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from typing import Protocol

from dealsd.timefmt import (
    KEEPA_EPOCH_MINUTES,
    epoch_to_keepa_minutes,
    iso_utc,
    keepa_minutes_to_epoch,
    parse_iso_utc,
)

__all__ = [
    "KEEPA_EPOCH_MINUTES",
    "Clock",
    "FakeClock",
    "SystemClock",
    "epoch_to_keepa_minutes",
    "iso_utc",
    "keepa_minutes_to_epoch",
    "parse_iso_utc",
    "sleep_or_stop",
]


class Clock(Protocol):
    def now(self) -> float:
        """Wall-clock seconds since the epoch: for timestamps stored or shown."""
        ...

    def monotonic(self) -> float:
        """Seconds on a clock that never jumps: for intervals and deadlines."""
        ...

    async def sleep(self, seconds: float) -> None: ...


class SystemClock:
    def now(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))


class FakeClock:
    """A clock that moves only when told to; sleepers wake as it passes them."""

    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self._wall = start
        self._mono = 1000.0
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._seq = itertools.count()

    def now(self) -> float:
        return self._wall

    def monotonic(self) -> float:
        return self._mono

    async def sleep(self, seconds: float) -> None:
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self._mono + seconds, next(self._seq), fut))
        await fut

    @property
    def sleepers(self) -> int:
        return sum(1 for *_, f in self._sleepers if not f.done())

    async def advance(self, seconds: float) -> None:
        """Move time forward, waking each sleeper at its deadline in order."""
        # Let tasks that are about to sleep register first, so "advance" means
        # "time passes for everyone", as it would in real time.
        for _ in range(5):
            await asyncio.sleep(0)
        target = self._mono + seconds
        while self._sleepers and self._sleepers[0][0] <= target:
            deadline, _, fut = heapq.heappop(self._sleepers)
            self._wall += deadline - self._mono
            self._mono = deadline
            if not fut.done():
                fut.set_result(None)
            # Let the woken task run before time moves on past its next step.
            for _ in range(5):
                await asyncio.sleep(0)
        self._wall += target - self._mono
        self._mono = target
        for _ in range(5):
            await asyncio.sleep(0)

    def jump_wall(self, seconds: float) -> None:
        """Step the wall clock only (NTP correction, VM resume): monotonic is untouched."""
        self._wall += seconds


async def sleep_or_stop(clock: Clock, stop: asyncio.Event, seconds: float) -> bool:
    """Sleep ``seconds`` unless ``stop`` is set first; return True when stopped."""
    if stop.is_set():
        return True
    waiter = asyncio.ensure_future(stop.wait())
    sleeper = asyncio.ensure_future(clock.sleep(seconds))
    try:
        await asyncio.wait({waiter, sleeper}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        waiter.cancel()
        sleeper.cancel()
    return stop.is_set()
