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

Turns are start-time fair queuing on weighted usage (tokens charged / weight,
the real cost once the envelope says it): the waiting consumer with the lowest
usage goes first. A consumer coming back from idle is lifted to the virtual
time ``V`` (the start tag of the last grant), so it banks no credit; an active
one keeps its lag, and a head that would spend the balance away from a
behind consumer whose request is in flight waits for it briefly.
"""

from __future__ import annotations

import asyncio
import itertools
import math
from collections import deque
from collections.abc import Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field

import structlog

from dealsd.clock import Clock
from dealsd.keepa.payloads import Envelope
from dealsd.tokens.balance import BalanceModel

log = structlog.get_logger(__name__)

EWMA_ALPHA = 0.3
# A granted request whose response never came (timeout, cancelled caller) stops
# counting as in flight after this long (it is unanswered), so a lost request
# cannot depress the balance forever.
IN_FLIGHT_MAX_AGE_S = 120.0
# After its answer, a consumer that is behind keeps its turn this long (a
# fraction of the period, capped) so it can store the result and ask again.
GRACE_PERIODS = 0.1
GRACE_MAX_S = 2.0


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


@dataclass(slots=True, eq=False)
class _Ticket:
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
class _Waiter:
    consumer: str
    cost: int
    seq: int
    fut: asyncio.Future[_Ticket] = field(repr=False)
    task: asyncio.Task[object] | None = field(repr=False, default=None)


# The ticket of the request the current task was granted: the client calls
# ``acquire`` and then ``sync`` in the same task, which pairs each envelope
# with its own request even when responses come back out of order.
_TICKET: ContextVar[_Ticket | None] = ContextVar("dealsd_tokens_ticket", default=None)


class TokenScheduler:
    """Weighted-fair, cancellation-safe access to one Keepa key's token balance."""

    def __init__(
        self, *, clock: Clock, weights: Mapping[str, float], batch_minutes: float = 1.0
    ) -> None:
        self._clock = clock
        self._weights: dict[str, float] = {}
        self.set_weights(weights)
        self._batch_minutes = batch_minutes
        self._model = BalanceModel()  # monotonic time only
        self._synced_wall: float | None = None
        # Tokens the model added at a refill step are a prediction until an
        # envelope confirms them: the first request after a step goes alone (a
        # scout), so another user of the key or a plan cut costs one 429, not
        # one per concurrent request.
        self._scout: _Ticket | None = None
        self._probe: _Ticket | None = None
        self._probe_at: float | None = None
        self._in_flight: list[_Ticket] = []
        # The last request that got no envelope: Keepa may have billed it (a
        # hung answer is billed), so its deduction stays until an envelope
        # says. One unanswered request after another is Keepa not answering,
        # not Keepa billing: the earlier one's deduction is given back, or an
        # outage would spend the balance away one failed attempt at a time.
        self._unanswered_kept: _Ticket | None = None
        # Fairness.
        self._vtime = 0.0
        self._finish: dict[str, float] = {}
        self._queues: dict[str, deque[_Waiter]] = {}
        self._answered: dict[str, float] = {}  # consumer -> when its last answer came
        self._seq = itertools.count()
        # One timer, to the moment the model next allows a grant.
        self._timer: asyncio.Task[None] | None = None
        self._timer_at: float | None = None
        # Accounting.
        self._consumed_total = 0
        self._consumed_by: dict[str, int] = {}
        self._granted_by: dict[str, int] = {}
        self._rate_limited = 0
        self._cost_per_item: dict[tuple[str, str], float] = {}  # (consumer, kind)
        self._ratio: dict[str, float] = {}  # consumer -> EWMA of real cost / estimate

    # -- configuration -------------------------------------------------------

    def set_weights(self, weights: Mapping[str, float]) -> None:
        """Replace the consumer weights (SIGHUP); unknown consumers weigh 1."""
        for name, weight in weights.items():
            if not weight > 0:
                raise ValueError(f"token weight for {name!r} must be > 0, got {weight!r}")
        self._weights = dict(weights)

    def set_batch_minutes(self, minutes: float) -> None:
        """Replace the batch bound in minutes of refill (SIGHUP)."""
        if not minutes > 0:
            raise ValueError(f"batch_minutes must be > 0, got {minutes!r}")
        self._batch_minutes = minutes

    def _weight(self, consumer: str) -> float:
        return self._weights.get(consumer, 1.0)

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
            self._answered[ticket.consumer] = now
            # Charge the consumer for what the request really cost (a 429 costs
            # nothing and its retry is charged again), so a low estimate does
            # not buy a larger share.
            delta = (consumed - ticket.expected) / ticket.weight
            self._finish[ticket.consumer] = self._finish.get(ticket.consumer, 0.0) + delta
            if consumed > 0 and ticket.cost > 0:
                self._learn_ratio(ticket.consumer, consumed / ticket.cost)
        self._expire(now)
        if self._model.is_stale(envelope):
            log.debug("tokens.stale_envelope", timestamp=envelope.timestamp)
        else:
            in_flight = sum(t.expected for t in self._in_flight)
            self._model.apply(envelope, now, in_flight=in_flight)
            self._unanswered_kept = None  # billed or not, it is in tokensLeft now
            self._synced_wall = self._clock.now()
        self._dispatch()

    def _take_ticket(self) -> _Ticket | None:
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

    def _hold(self, head: _Waiter, now: float) -> float:
        """Seconds to hold ``head`` for a consumer that is behind and in flight.

        A consumer with one request at a time is not in the queue while its
        request runs; if the head would spend the balance below 1 meanwhile,
        that consumer comes back to a deficit every time and never reaches its
        weight. So the head waits for a consumer whose start tag is lower than
        its own while that consumer's request is in flight (at most one
        period) and for a short grace after its answer (time to store what it
        got and ask again).
        """
        if self._model.balance - self._expected(head.consumer, head.cost) >= 1.0:
            return 0.0
        mine = self._start_tag(head.consumer)
        hold = 0.0
        for ticket in self._in_flight:
            if ticket.consumer == head.consumer or self._queues.get(ticket.consumer):
                continue
            left = ticket.granted_at + self._model.period - now
            if left > 0 and self._start_tag(ticket.consumer) < mine - 1e-9:
                hold = max(hold, left)
        grace = min(GRACE_PERIODS * self._model.period, GRACE_MAX_S)
        for consumer, answered_at in self._answered.items():
            if consumer == head.consumer or self._queues.get(consumer):
                continue
            left = answered_at + grace - now
            if left > 0 and self._start_tag(consumer) < mine - 1e-9:
                hold = max(hold, left)
        return hold

    def _overtake_wait(self, head: _Waiter, now: float) -> float:
        """Seconds ``head`` must wait so it cannot turn another request into a 429.

        Keepa runs requests in the order they arrive, not the order they were
        granted: a request that takes the balance below 1 could arrive before
        one granted earlier and leave that one a 429. So it goes only when
        nothing else is in flight (it is then the last to arrive), or when the
        balance covers it too. Waits end with those envelopes (or a period).
        """
        if self._model.balance - self._expected(head.consumer, head.cost) >= 1.0:
            return 0.0
        if not self._in_flight:
            return 0.0
        return max(0.0, max(t.granted_at for t in self._in_flight) + self._model.period - now)

    def _next_wait(self, now: float) -> float | None:
        """Seconds until the head may be granted; None if nobody waits."""
        head = self._head()
        if head is None:
            return None
        wait = self._grant_wait(now)
        if wait > 0:
            return wait
        if self._model.synced:
            wait = self._overtake_wait(head, now)
        return wait if wait > 0 else self._hold(head, now)

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
        fut: asyncio.Future[_Ticket] = asyncio.get_running_loop().create_future()
        # An idle consumer's usage is lifted to V as it becomes active again.
        self._finish[consumer] = self._start_tag(consumer)
        waiter = _Waiter(consumer, cost, next(self._seq), fut, task)
        self._queues.setdefault(consumer, deque()).append(waiter)
        self._dispatch()
        try:
            ticket = await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                # Granted, but cancelled before it could run: give back what it took.
                self._refund(fut.result())
            else:
                queue = self._queues.get(consumer)
                if queue is not None and waiter in queue:
                    queue.remove(waiter)
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

    def _forget(self, ticket: _Ticket) -> None:
        ticket.synced = True
        if ticket in self._in_flight:
            self._in_flight.remove(ticket)
        if ticket is self._probe:
            self._probe = None
            self._probe_at = None

    def _unanswered(self, ticket: _Ticket) -> None:
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

    def _give_back(self, ticket: _Ticket) -> None:
        self._model.balance += ticket.expected
        self._finish[ticket.consumer] = self._finish.get(ticket.consumer, 0.0) - ticket.charge

    def _refund(self, ticket: _Ticket) -> None:
        """A grant cancelled before its request was sent: it was never granted."""
        self._forget(ticket)
        self._give_back(ticket)
        self._granted_by[ticket.consumer] -= ticket.cost

    def _active(self, consumer: str, now: float) -> bool:
        """Waiting, in flight, or just answered (and about to ask again)."""
        if self._queues.get(consumer) or any(t.consumer == consumer for t in self._in_flight):
            return True
        grace = min(GRACE_PERIODS * self._model.period, GRACE_MAX_S)
        return self._answered.get(consumer, -math.inf) + grace > now

    def _start_tag(self, consumer: str) -> float:
        """The consumer's weighted usage; an idle one comes back level with ``V``.

        An active consumer keeps a lag it built up between two requests (it was
        in flight when another was granted), so it is served first next time.
        """
        finish = self._finish.get(consumer, self._vtime)
        if self._active(consumer, self._clock.monotonic()):
            return finish
        return max(self._vtime, finish)

    def _expected(self, consumer: str, cost: int) -> float:
        return cost * self._ratio.get(consumer, 1.0)

    def _learn_ratio(self, consumer: str, ratio: float) -> None:
        ratio = min(max(ratio, 0.1), 50.0)
        old = self._ratio.get(consumer)
        if old is not None:
            ratio = EWMA_ALPHA * ratio + (1 - EWMA_ALPHA) * old
        self._ratio[consumer] = ratio

    def _head(self) -> _Waiter | None:
        """The waiter whose consumer has the lowest start tag (ties: oldest)."""
        best: _Waiter | None = None
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

    def _dispatch(self) -> None:
        """Grant every waiter the model allows now, then arm the one timer."""
        now = self._clock.monotonic()
        self._model.advance(now)
        while (head := self._head()) is not None and self._next_wait(now) == 0:
            self._queues[head.consumer].popleft()
            self._grant(head, now)
        self._arm_timer(now)

    def _grant(self, waiter: _Waiter, now: float) -> None:
        weight = self._weight(waiter.consumer)
        start = self._start_tag(waiter.consumer)
        expected = self._expected(waiter.consumer, waiter.cost)
        charge = expected / weight
        self._vtime = max(self._vtime, start)
        self._finish[waiter.consumer] = start + charge
        ticket = _Ticket(
            self, waiter.consumer, waiter.cost, expected, charge, weight, now, waiter.task
        )
        if self._model.balance < 1.0:
            self._probe, self._probe_at = ticket, now
        # Any request after a step will show the next refill instant.
        self._model.probe_due = False
        if self._model.scout_due:
            self._scout, self._model.scout_due = ticket, False
        self._model.balance -= expected
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
        """Record what ``items`` really cost, for batch sizing (an EWMA per item).

        ``kind`` keeps work of different prices apart within one consumer (the
        backfiller's full backfill and its stats-only refresh): one average of
        both would size each kind's batches by the other's cost.
        """
        if items <= 0 or tokens < 0:
            return
        per_item = tokens / items
        key = (consumer, kind)
        old = self._cost_per_item.get(key)
        self._cost_per_item[key] = (
            per_item if old is None else EWMA_ALPHA * per_item + (1 - EWMA_ALPHA) * old
        )

    def cost_per_item(self, consumer: str, *, kind: str = "") -> float | None:
        """The observed tokens per item of ``consumer``'s ``kind`` of work (None: not yet)."""
        return self._cost_per_item.get((consumer, kind))

    def batch_size(
        self, consumer: str, *, lo: int, hi: int, default_cost: float, kind: str = ""
    ) -> int:
        """Items of ``kind`` whose expected cost fits ``batch_minutes`` of refill, in [lo, hi]."""
        per_item = self._cost_per_item.get((consumer, kind), default_cost)
        if self._model.rate <= 0:
            return lo
        budget = self._batch_minutes * self._model.rate
        n = math.floor(budget / per_item + 1e-9) if per_item > 0 else hi
        return max(lo, min(hi, n))

    def expected_wait(self, consumer: str, cost: int = 0) -> float:
        """Seconds until ``consumer`` could be granted, by the model (inf: unknown)."""
        now = self._clock.monotonic()
        self._model.advance(now)
        mine = self._start_tag(consumer)
        ahead = 0.0
        # Other consumers' queued requests whose start tags come first go first.
        for name, queue in self._queues.items():
            if name == consumer or not queue:
                continue
            tag = self._start_tag(name)
            weight = self._weight(name)
            for waiter in queue:
                if tag > mine:
                    break
                ahead += self._expected(name, waiter.cost)
                tag += self._expected(name, waiter.cost) / weight
        return self._grant_wait(now, ahead)

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
            waiting={name: len(q) for name, q in self._queues.items() if q},
            rate_limited=self._rate_limited,
            synced_at=self._synced_wall,
            in_flight=len(self._in_flight),
            other_use_per_period=model.rate - model.refill_per_step(),
        )
