"""The token scheduler: one in-process, weighted-fair gate in front of every Keepa call.

How many tokens the key holds and when more come is ``dealsd.tokens.balance``: a
prediction between responses, replaced by every envelope (``sync``).

Keepa runs a request whenever the balance is >= 1, whatever it costs, so a
request waits for a balance >= 1 and for its turn, never for its full cost
(waiting for the full cost is what starved the 100-token backfill batches in
the old system). Each grant deducts its expected cost at once, so concurrent
acquirers do not all fire on the same token; the next envelope corrects it.
Tokens that exist only in the prediction are spent by one request at a time
(a scout) until an envelope confirms them, so a wrong prediction costs one 429.

Whose turn it is, by weight, is ``dealsd.tokens.fairness`` (start-time fair
queuing on weighted usage); what a consumer's requests really cost, and so how
large a batch it can afford, is ``dealsd.tokens.costs``. This module is the
gate between them and Keepa: the grants, the requests in flight until their
envelopes, the scout and the probe, the one timer, and the accounting.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Mapping
from contextvars import ContextVar
from dataclasses import dataclass

import structlog

from dealsd.clock import Clock
from dealsd.keepa.payloads import Envelope
from dealsd.tokens.balance import BalanceModel
from dealsd.tokens.costs import CostModel
from dealsd.tokens.fairness import FairQueue, Ticket, Waiter

log = structlog.get_logger(__name__)

# A granted request whose response never came (timeout, cancelled caller) stops
# counting as in flight after this long (it is unanswered), so a lost request
# cannot depress the balance forever.
IN_FLIGHT_MAX_AGE_S = 120.0


@dataclass(frozen=True, slots=True)
class TokenSnapshot:
    balance: float
    refill_rate: float
    refill_in_s: float | None
    period_s: float
    consumed_total: int
    consumed_by: dict[str, int]
    granted_by: dict[str, int]
    waiting: dict[str, int]
    rate_limited: int
    synced_at: float | None
    in_flight: int = 0
    other_use_per_period: float = 0.0  # learned spending by other users of the key


# The ticket of the request the current task was granted: the client calls
# ``acquire`` and then ``sync`` in the same task, which pairs each envelope
# with its own request even when responses come back out of order.
_TICKET: ContextVar[Ticket | None] = ContextVar("dealsd_tokens_ticket", default=None)


class TokenScheduler:
    """Weighted-fair, cancellation-safe access to one Keepa key's token balance."""

    def __init__(
        self, *, clock: Clock, weights: Mapping[str, float], batch_minutes: float = 1.0
    ) -> None:
        self._clock = clock
        self._batch_minutes = batch_minutes
        self._model = BalanceModel()  # monotonic time only
        self._costs = CostModel()
        self._synced_wall: float | None = None
        # Tokens the model added at a refill step are a prediction until an
        # envelope confirms them: the first request after a step goes alone (a
        # scout), so another user of the key or a plan cut costs one 429, not
        # one per concurrent request.
        self._scout: Ticket | None = None
        self._probe: Ticket | None = None
        self._probe_at: float | None = None
        self._in_flight: list[Ticket] = []
        # The last request that got no envelope: Keepa may have billed it (a
        # hung answer is billed), so its deduction stays until an envelope
        # says. One unanswered request after another is Keepa not answering,
        # not Keepa billing: the earlier one's deduction is given back, or an
        # outage would spend the balance away one failed attempt at a time.
        self._unanswered_kept: Ticket | None = None
        # Turns by weight; it reads the model and the in-flight list, never changes them.
        self._fair = FairQueue(
            clock=clock, weights=weights, costs=self._costs, model=self._model,
            in_flight=self._in_flight,
        )
        # One timer, to the moment the model next allows a grant.
        self._timer: asyncio.Task[None] | None = None
        self._timer_at: float | None = None
        # Accounting.
        self._consumed_total = 0
        self._consumed_by: dict[str, int] = {}
        self._granted_by: dict[str, int] = {}
        self._rate_limited = 0

    # -- configuration -------------------------------------------------------

    def set_weights(self, weights: Mapping[str, float]) -> None:
        """Replace the consumer weights (SIGHUP); unknown consumers weigh 1."""
        self._fair.set_weights(weights)

    def set_batch_minutes(self, minutes: float) -> None:
        """Replace the batch bound in minutes of refill (SIGHUP)."""
        if not minutes > 0:
            raise ValueError(f"batch_minutes must be > 0, got {minutes!r}")
        self._batch_minutes = minutes

    # -- the server's truth --------------------------------------------------

    def sync(self, envelope: Envelope) -> None:
        """Take balance, rate and next refill from a response's envelope."""
        now = self._clock.monotonic()
        self._model.advance(now)  # so the prediction compared with the truth is current
        ticket = self._take_ticket()
        consumed = max(0, envelope.tokens_consumed)
        self._consumed_total += consumed
        self._model.note_consumed(consumed)
        if ticket is not None or consumed:
            who = ticket.consumer if ticket is not None else "unattributed"
            self._consumed_by[who] = self._consumed_by.get(who, 0) + consumed
        if ticket is not None:
            self._fair.answered(ticket, consumed, now)
            if consumed > 0 and ticket.cost > 0:
                self._costs.learn_ratio(ticket.consumer, consumed / ticket.cost)
        self._expire(now)
        if self._model.is_stale(envelope):
            log.debug("tokens.stale_envelope", timestamp=envelope.timestamp)
        else:
            in_flight = sum(t.expected for t in self._in_flight)
            self._model.apply(envelope, now, in_flight=in_flight)
            self._unanswered_kept = None  # billed or not, it is in tokensLeft now
            self._synced_wall = self._clock.now()
        self._dispatch()

    def _take_ticket(self) -> Ticket | None:
        ticket = _TICKET.get()
        if ticket is not None and ticket.owner is self:
            if ticket.synced:
                return None  # this task's request was answered already: an extra envelope
            _TICKET.set(None)
        elif self._in_flight:
            # An envelope from a task that did not acquire (or a client that
            # syncs from another task): assume the oldest request answered.
            ticket = self._in_flight[0]
        else:
            return None
        ticket.synced = True
        if ticket in self._in_flight:
            self._in_flight.remove(ticket)
        return ticket

    def note_rate_limited(self) -> None:
        """Count a 429: the server's balance is <= 0 until the next refill."""
        self._rate_limited += 1
        self._model.advance(self._clock.monotonic())
        self._model.rate_limited()
        log.info("tokens.rate_limited", count=self._rate_limited)
        self._dispatch()

    # -- when the next request may go ------------------------------------------

    def _expire(self, now: float) -> None:
        max_age = max(IN_FLIGHT_MAX_AGE_S, 2 * self._model.period)
        while self._in_flight and now - self._in_flight[0].granted_at > max_age:
            lost = self._in_flight[0]
            self._unanswered(lost)
            log.debug("tokens.in_flight_expired", consumer=lost.consumer, cost=lost.cost)

    def _probe_wait(self, now: float) -> float:
        """Unsynced (or no refill at all): one request per period teaches the state.

        A 429 costs nothing, so the probe is cheap; one per period keeps a
        refused key from spinning.
        """
        if self._probe_at is None:
            return 0.0
        return max(0.0, self._probe_at + self._model.period - now)

    def _grant_wait(self, now: float, ahead: float = 0.0) -> float:
        wait = self._model.time_to(1.0 + ahead, now)
        if wait <= 0:
            scout = self._scout
            if scout is None or scout.synced or scout not in self._in_flight:
                return 0.0
            # Wait for the scout's envelope (at most a period if it is lost).
            return max(0.0, scout.granted_at + self._model.period - now)
        if not self._model.synced or self._model.rate <= 0:
            return min(wait, self._probe_wait(now))
        if not self._model.period_known and self._model.next_step is not None:
            # The period is still a guess (an accelerated simulator may refill
            # every 100 ms): once a refill step has passed, one request may try;
            # at worst a free 429, whose envelope shows the second refill.
            if self._model.probe_due:
                return 0.0
            return min(wait, max(0.0, self._model.next_step - now))
        return wait

    def _overtake_wait(self, head: Waiter, now: float) -> float:
        """Seconds ``head`` must wait so it cannot turn another request into a 429.

        Keepa runs requests in the order they arrive, not the order they were
        granted: a request that takes the balance below 1 could arrive before
        one granted earlier and leave that one a 429. So it goes only when
        nothing else is in flight (it is then the last to arrive), or when the
        balance covers it too. Waits end with those envelopes (or a period).
        """
        if self._model.balance - self._costs.expected(head.consumer, head.cost) >= 1.0:
            return 0.0
        if not self._in_flight:
            return 0.0
        return max(0.0, max(t.granted_at for t in self._in_flight) + self._model.period - now)

    def _next_wait(self, now: float) -> float | None:
        """Seconds until the head may be granted; None if nobody waits."""
        head = self._fair.head()
        if head is None:
            return None
        wait = self._grant_wait(now)
        if wait > 0:
            return wait
        if self._model.synced:
            wait = self._overtake_wait(head, now)
        return wait if wait > 0 else self._fair.hold(head, now)

    # -- acquiring -------------------------------------------------------------

    async def acquire(self, consumer: str, cost: int) -> None:
        """Wait for ``consumer``'s turn and a balance >= 1, then deduct ``cost``."""
        if cost < 0:
            raise ValueError(f"cost must be >= 0, got {cost}")
        previous = _TICKET.get()
        task = asyncio.current_task()
        if (
            previous is not None
            and previous.owner is self
            and previous.task is task
            and not previous.synced
        ):
            # This task was granted before and never synced: that request got
            # no response (timeout, reset), so it is no longer in flight and
            # spent nothing. (A child task inherits the ticket in its context
            # but is not a retry.)
            self._unanswered(previous)
        fut: asyncio.Future[Ticket] = asyncio.get_running_loop().create_future()
        waiter = self._fair.join(consumer, cost, fut, task)
        self._dispatch()
        try:
            ticket = await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                # Granted, but cancelled before it could run: give back what it took.
                self._refund(fut.result())
            else:
                self._fair.leave(waiter)
            self._dispatch()
            raise
        _TICKET.set(ticket)

    def release(self, consumer: str) -> bool:
        """The request this task was granted for ``consumer`` got no response.

        For a client whose call was cancelled, timed out or reset after
        ``acquire`` and before any envelope: the request stops counting as in
        flight at once (not after ``IN_FLIGHT_MAX_AGE_S``), a lost probe no
        longer holds the next grant for a period, and its deduction stays
        only until the next envelope or the next unanswered request (see
        ``_unanswered``). Returns False (and does nothing) if this task holds
        no unanswered grant for ``consumer``, e.g. its envelope was synced.
        """
        ticket = _TICKET.get()
        if (
            ticket is None
            or ticket.owner is not self
            or ticket.synced
            or ticket.consumer != consumer
        ):
            return False
        _TICKET.set(None)
        self._unanswered(ticket)
        log.debug("tokens.released", consumer=consumer, cost=ticket.cost)
        self._dispatch()
        return True

    def _forget(self, ticket: Ticket) -> None:
        ticket.synced = True
        if ticket in self._in_flight:
            self._in_flight.remove(ticket)
        if ticket is self._probe:
            self._probe = None
            self._probe_at = None

    def _unanswered(self, ticket: Ticket) -> None:
        """A request that got no envelope (timeout, reset, refused, cancelled).

        Only the latest one's deduction is kept (Keepa may have billed it);
        the one before is given back, as if answered with tokensConsumed 0.
        Keeping them all drove the reported balance from -85 to -174 through
        an outage while Keepa's refilled, and held the first grant after it.
        """
        if ticket is self._scout and not ticket.synced:
            # The predicted tokens it went to confirm are still a prediction:
            # the next request goes alone again (after an outage, a balance
            # Keepa did not refill costs one 429, not one per consumer).
            self._scout, self._model.scout_due = None, True
        self._forget(ticket)
        if self._unanswered_kept is not None:
            self._give_back(self._unanswered_kept)
        self._unanswered_kept = ticket

    def _give_back(self, ticket: Ticket) -> None:
        self._model.balance += ticket.expected
        self._fair.give_back(ticket)

    def _refund(self, ticket: Ticket) -> None:
        """A grant cancelled before its request was sent: it was never granted."""
        self._forget(ticket)
        self._give_back(ticket)
        self._granted_by[ticket.consumer] -= ticket.cost

    def _dispatch(self) -> None:
        """Grant every waiter the model allows now, then arm the one timer."""
        now = self._clock.monotonic()
        self._model.advance(now)
        while (head := self._fair.head()) is not None and self._next_wait(now) == 0:
            self._grant(head, now)
        self._arm_timer(now)

    def _grant(self, waiter: Waiter, now: float) -> None:
        ticket = self._fair.grant(waiter, owner=self, now=now)
        if self._model.balance < 1.0:
            self._probe, self._probe_at = ticket, now
        # Any request after a step will show the next refill instant.
        self._model.probe_due = False
        if self._model.scout_due:
            self._scout, self._model.scout_due = ticket, False
        self._model.balance -= ticket.expected
        self._in_flight.append(ticket)
        self._granted_by[waiter.consumer] = self._granted_by.get(waiter.consumer, 0) + waiter.cost
        waiter.fut.set_result(ticket)

    def _arm_timer(self, now: float) -> None:
        wait = self._next_wait(now)
        at = None if wait is None or math.isinf(wait) else now + wait
        if at == self._timer_at and (at is None or self._timer is not None):
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._timer_at = at
        if at is not None:
            self._timer = asyncio.get_running_loop().create_task(self._fire(at - now))

    async def _fire(self, delay: float) -> None:
        await self._clock.sleep(delay)
        self._timer = None
        self._timer_at = None
        self._dispatch()

    # -- sizing and reporting --------------------------------------------------

    def observe(self, consumer: str, items: int, tokens: int, *, kind: str = "") -> None:
        """Record what ``items`` really cost, for batch sizing (see ``CostModel.observe``)."""
        self._costs.observe(consumer, items, tokens, kind=kind)

    def cost_per_item(self, consumer: str, *, kind: str = "") -> float | None:
        """The observed tokens per item of ``consumer``'s ``kind`` of work (None: not yet)."""
        return self._costs.cost_per_item(consumer, kind=kind)

    def batch_size(
        self, consumer: str, *, lo: int, hi: int, default_cost: float, kind: str = ""
    ) -> int:
        """Items of ``kind`` whose expected cost fits ``batch_minutes`` of refill, in [lo, hi]."""
        if self._model.rate <= 0:
            return lo
        budget = self._batch_minutes * self._model.rate
        return self._costs.batch_size(
            consumer, budget=budget, lo=lo, hi=hi, default_cost=default_cost, kind=kind
        )

    def expected_wait(self, consumer: str, cost: int = 0) -> float:
        """Seconds until ``consumer`` could be granted, by the model (inf: unknown)."""
        now = self._clock.monotonic()
        self._model.advance(now)
        # Other consumers' queued requests whose start tags come first go first.
        return self._grant_wait(now, self._fair.ahead_of(consumer))

    def snapshot(self) -> TokenSnapshot:
        now = self._clock.monotonic()
        model = self._model
        model.advance(now)
        return TokenSnapshot(
            balance=model.balance,
            refill_rate=model.rate,
            refill_in_s=None if model.next_step is None else max(0.0, model.next_step - now),
            period_s=model.period,
            consumed_total=self._consumed_total,
            consumed_by=dict(self._consumed_by),
            granted_by=dict(self._granted_by),
            waiting=self._fair.waiting(),
            rate_limited=self._rate_limited,
            synced_at=self._synced_wall,
            in_flight=len(self._in_flight),
            other_use_per_period=model.rate - model.refill_per_step(),
        )
