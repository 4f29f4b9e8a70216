"""Whose turn it is: start-time fair queuing of the consumers by weight.

Turns are start-time fair queuing on weighted usage (tokens charged / weight,
the real cost once the envelope says it): the waiting consumer with the lowest
usage goes first. A consumer coming back from idle is lifted to the virtual
time ``V`` (the start tag of the last grant), so it banks no credit; an active
one keeps its lag, and a head that would spend the balance away from a
behind consumer whose request is in flight waits for it briefly (``hold``).

This module holds the waiters' queues, each consumer's usage and the records of
a turn (a ``Waiter``, and the ``Ticket`` its grant becomes). Whether the
balance allows a grant at all, and when, is the scheduler's
(``dealsd.tokens.scheduler``); the fair queue only reads the balance model and
the scheduler's in-flight tickets to tell who is active and whom to wait for.
"""

from __future__ import annotations

import asyncio
import itertools
import math
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from dealsd.clock import Clock
from dealsd.tokens.balance import BalanceModel
from dealsd.tokens.costs import CostModel

if TYPE_CHECKING:
    from dealsd.tokens.scheduler import TokenScheduler

# After its answer, a consumer that is behind keeps its turn this long (a
# fraction of the period, capped) so it can store the result and ask again.
GRACE_PERIODS = 0.1
GRACE_MAX_S = 2.0


@dataclass(slots=True, eq=False)
class Ticket:
    """One granted request, until its envelope comes back."""

    owner: TokenScheduler
    consumer: str
    cost: int  # as estimated by the caller
    expected: float  # the estimate times what this consumer's estimates really cost
    charge: float  # virtual time charged: expected / weight at grant
    weight: float
    granted_at: float
    task: asyncio.Task[object] | None = field(repr=False, default=None)
    synced: bool = False


@dataclass(slots=True, eq=False)
class Waiter:
    consumer: str
    cost: int
    seq: int
    fut: asyncio.Future[Ticket] = field(repr=False)
    task: asyncio.Task[object] | None = field(repr=False, default=None)


class FairQueue:
    """The consumers' queues of waiters and their weighted usage (start tags).

    ``model`` and ``in_flight`` (the scheduler's list of granted, unanswered
    tickets) are read here, never changed: a consumer in flight is active, and
    the head may be held for one that is behind.
    """

    def __init__(
        self,
        *,
        clock: Clock,
        weights: Mapping[str, float],
        costs: CostModel,
        model: BalanceModel,
        in_flight: Sequence[Ticket],
    ) -> None:
        self._clock = clock
        self._weights: dict[str, float] = {}
        self.set_weights(weights)
        self._costs = costs
        self._model = model
        self._in_flight = in_flight
        self._vtime = 0.0
        self._finish: dict[str, float] = {}
        self._queues: dict[str, deque[Waiter]] = {}
        self._answered: dict[str, float] = {}  # consumer -> when its last answer came
        self._seq = itertools.count()

    def set_weights(self, weights: Mapping[str, float]) -> None:
        """Replace the consumer weights; unknown consumers weigh 1."""
        for name, weight in weights.items():
            if not weight > 0:
                raise ValueError(f"token weight for {name!r} must be > 0, got {weight!r}")
        self._weights = dict(weights)

    def _weight(self, consumer: str) -> float:
        return self._weights.get(consumer, 1.0)

    # -- joining, leaving, being granted ----------------------------------------

    def join(
        self,
        consumer: str,
        cost: int,
        fut: asyncio.Future[Ticket],
        task: asyncio.Task[object] | None,
    ) -> Waiter:
        """Queue a request of ``consumer``; ``fut`` gets its ticket at its grant."""
        # An idle consumer's usage is lifted to V as it becomes active again.
        self._finish[consumer] = self._start_tag(consumer)
        waiter = Waiter(consumer, cost, next(self._seq), fut, task)
        self._queues.setdefault(consumer, deque()).append(waiter)
        return waiter

    def leave(self, waiter: Waiter) -> None:
        """Take a cancelled, ungranted ``waiter`` out of its queue."""
        queue = self._queues.get(waiter.consumer)
        if queue is not None and waiter in queue:
            queue.remove(waiter)

    def head(self) -> Waiter | None:
        """The waiter whose consumer has the lowest start tag (ties: oldest)."""
        best: Waiter | None = None
        best_key = (math.inf, math.inf)
        for queue in self._queues.values():
            # A cancelled caller's future is done before its task can leave
            # the queue; it must be passed over, not granted.
            while queue and queue[0].fut.done():
                queue.popleft()
            if not queue:
                continue
            key = (self._start_tag(queue[0].consumer), float(queue[0].seq))
            if key < best_key:
                best, best_key = queue[0], key
        return best

    def grant(self, head: Waiter, *, owner: TokenScheduler, now: float) -> Ticket:
        """Take ``head`` (from ``head()``) off its queue and charge its consumer."""
        self._queues[head.consumer].popleft()
        weight = self._weight(head.consumer)
        start = self._start_tag(head.consumer)
        expected = self._costs.expected(head.consumer, head.cost)
        charge = expected / weight
        self._vtime = max(self._vtime, start)
        self._finish[head.consumer] = start + charge
        return Ticket(owner, head.consumer, head.cost, expected, charge, weight, now, head.task)

    # -- after the grant ---------------------------------------------------------

    def answered(self, ticket: Ticket, consumed: int, now: float) -> None:
        """``ticket``'s envelope came: charge what the request really cost."""
        self._answered[ticket.consumer] = now
        # Charge the consumer for what the request really cost (a 429 costs
        # nothing and its retry is charged again), so a low estimate does
        # not buy a larger share.
        delta = (consumed - ticket.expected) / ticket.weight
        self._finish[ticket.consumer] = self._finish.get(ticket.consumer, 0.0) + delta

    def give_back(self, ticket: Ticket) -> None:
        """Uncharge ``ticket``'s consumer: the request is as if never granted."""
        self._finish[ticket.consumer] = self._finish.get(ticket.consumer, 0.0) - ticket.charge

    # -- turns -------------------------------------------------------------------

    def _grace(self) -> float:
        return min(GRACE_PERIODS * self._model.period, GRACE_MAX_S)

    def _active(self, consumer: str, now: float) -> bool:
        """Waiting, in flight, or just answered (and about to ask again)."""
        if self._queues.get(consumer) or any(t.consumer == consumer for t in self._in_flight):
            return True
        return self._answered.get(consumer, -math.inf) + self._grace() > now

    def _start_tag(self, consumer: str) -> float:
        """The consumer's weighted usage; an idle one comes back level with ``V``.

        An active consumer keeps a lag it built up between two requests (it was
        in flight when another was granted), so it is served first next time.
        """
        finish = self._finish.get(consumer, self._vtime)
        if self._active(consumer, self._clock.monotonic()):
            return finish
        return max(self._vtime, finish)

    def hold(self, head: Waiter, now: float) -> float:
        """Seconds to hold ``head`` for a consumer that is behind and in flight.

        A consumer with one request at a time is not in the queue while its
        request runs; if the head would spend the balance below 1 meanwhile,
        that consumer comes back to a deficit every time and never reaches its
        weight. So the head waits for a consumer whose start tag is lower than
        its own while that consumer's request is in flight (at most one
        period) and for a short grace after its answer (time to store what it
        got and ask again).
        """
        if self._model.balance - self._costs.expected(head.consumer, head.cost) >= 1.0:
            return 0.0
        mine = self._start_tag(head.consumer)
        hold = 0.0
        for ticket in self._in_flight:
            if ticket.consumer == head.consumer or self._queues.get(ticket.consumer):
                continue
            left = ticket.granted_at + self._model.period - now
            if left > 0 and self._start_tag(ticket.consumer) < mine - 1e-9:
                hold = max(hold, left)
        grace = self._grace()
        for consumer, answered_at in self._answered.items():
            if consumer == head.consumer or self._queues.get(consumer):
                continue
            left = answered_at + grace - now
            if left > 0 and self._start_tag(consumer) < mine - 1e-9:
                hold = max(hold, left)
        return hold

    def ahead_of(self, consumer: str) -> float:
        """Tokens other consumers' queued requests whose start tags come first will take."""
        mine = self._start_tag(consumer)
        ahead = 0.0
        for name, queue in self._queues.items():
            if name == consumer or not queue:
                continue
            tag = self._start_tag(name)
            weight = self._weight(name)
            for waiter in queue:
                if tag > mine:
                    break
                ahead += self._costs.expected(name, waiter.cost)
                tag += self._costs.expected(name, waiter.cost) / weight
        return ahead

    def waiting(self) -> dict[str, int]:
        """Requests waiting, by consumer (only those with any)."""
        return {name: len(q) for name, q in self._queues.items() if q}
