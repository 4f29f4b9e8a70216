"""What every worker shares: the round it runs and the result it returns.

A worker is an object with a ``name``, an ``expected_round_s`` (how long a
round normally takes: the stall window is derived from it) and an async
``round()`` that does one unit of work and says how long to sleep. The loop,
the sleep, restarts and the error policy live once, in the supervisor.

A worker that pays Keepa tokens is a ``KeepaWorker``: it writes only its own
round (``_round``) and sends each paid call through ``_paid``, which holds the
one policy for what every such call may meet: a wait for tokens (said to
health, so `dealsd status` shows it instead of a stall) and Keepa refusing the
key (the daemon unhealthy with that cause, the round ended, a long pause).
"""

from __future__ import annotations

import asyncio
import sqlite3
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Protocol, TypeVar

import structlog

from dealsd.keepa.errors import AccessDenied
from dealsd.tokens import TokenScheduler
from dealsd.workers.health import Health

T = TypeVar("T")

# When the key is refused, asking again soon only fills the log: the operator
# has to act (pay, fix the key), and SIGHUP or a restart brings it back sooner.
ACCESS_DENIED_BACKOFF_S = 600.0
# A shorter expected wait is ordinary pacing, not a state worth showing.
SHOW_TOKEN_WAIT_S = 1.0

# Called INSIDE the write that changed these deals' numbers (connection, ASINs,
# the write's time, their marketplace), so what it writes commits with them:
# the alert outbox.
DealsChanged = Callable[[sqlite3.Connection, Sequence[str], str, int], object]


@dataclass(frozen=True, slots=True)
class RoundResult:
    """What one round did and how long to wait before the next.

    ``progressed`` counts units of real work (pages, products, rows); ``idle``
    says the round looked for work and found none, which is a sign of life
    too. A round with neither (a batch that failed and was skipped) is not
    progress: repeated, it makes the worker read as stalled.
    """

    sleep_s: float
    progressed: int = 0
    what: str = "items"
    idle: bool = False
    # Set, it ends the sleep early: work arrived (the upserter stored new deals).
    wake: asyncio.Event | None = None


class Worker(Protocol):
    @property
    def name(self) -> str: ...

    @property
    def expected_round_s(self) -> float: ...

    async def round(self) -> RoundResult: ...


class KeyRefused(Exception):
    """Keepa refused the key: ``_paid`` has applied the policy; the round ends."""


class KeepaWorker(ABC):
    """A worker that spends Keepa tokens; subclasses write ``_round`` only."""

    name: str

    def __init__(self, *, tokens: TokenScheduler, health: Health) -> None:
        self._tokens = tokens
        self._health = health

    async def round(self) -> RoundResult:
        try:
            return await self._round()
        except KeyRefused:
            return RoundResult(sleep_s=ACCESS_DENIED_BACKOFF_S)

    @abstractmethod
    async def _round(self) -> RoundResult:
        """One unit of this worker's work; each Keepa call goes through ``_paid``."""

    async def _paid(self, cost: int, request: Awaitable[T]) -> T:
        """Await one Keepa call of about ``cost`` tokens under the shared policy.

        Raises ``KeyRefused`` (not a ``KeepaError``, so a worker's own error
        handling passes it on) when Keepa refuses the key; other errors are
        the worker's to handle.
        """
        wait = self._tokens.expected_wait(self.name, cost)
        if wait > SHOW_TOKEN_WAIT_S:
            self._health.waiting_for_tokens(self.name, wait)
        try:
            answer = await request
        except AccessDenied as exc:
            self._health.access_denied(str(exc))
            self._health.backing_off(self.name, "keepa access denied", ACCESS_DENIED_BACKOFF_S)
            # Logged under the worker's own module, as its other lines are.
            log = structlog.get_logger(type(self).__module__)
            log.error(f"{self.name}_access_denied", error=str(exc))
            raise KeyRefused(str(exc)) from exc
        self._health.access_granted()
        self._health.running(self.name)
        return answer
