"""The token scheduler on a FakeClock against a model of Keepa's side of the key.

``KeepaKey`` is the server's rule, not a stub of the scheduler: it refills at
fixed instants, runs any request at a balance >= 1 (going negative), refuses
with 429 at <= 0, and answers every request with the envelope Keepa sends.
"""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass, field
from typing import Any

import pytest

from dealsd.clock import Clock, FakeClock, SystemClock
from dealsd.keepa.payloads import Envelope
from dealsd.tokens import TokenScheduler
from dealsd.tokens.balance import round_period

WEIGHTS = {"upserter": 1.0, "backfiller": 3.0}


class KeepaKey:
    """Keepa's balance for one key, on the fake clock."""

    def __init__(
        self, clock: Clock, *, rate: int, balance: int = 0, period: float = 60.0,
        phase: float = 17.0,
    ) -> None:
        self.clock = clock
        self.rate = rate
        self.period = period
        self.balance = balance
        self.next_refill = clock.monotonic() + phase
        self.generated = 0
        self.consumed = 0
        self.refused = 0
        self.lost = 0  # tokens that hit the 60-period cap

    def _refill(self) -> None:
        while self.next_refill <= self.clock.monotonic() + 1e-9:
            cap = 60 * self.rate
            room = max(0, cap - self.balance)
            self.generated += self.rate
            self.lost += self.rate - min(room, self.rate)
            self.balance = max(self.balance, min(cap, self.balance + self.rate))
            self.next_refill += self.period

    def envelope(self, consumed: int = 0) -> Envelope:
        self._refill()
        return Envelope(
            timestamp=int(self.clock.now() * 1000),
            tokens_left=self.balance,
            refill_in=math.ceil((self.next_refill - self.clock.monotonic()) * 1000),
            refill_rate=self.rate,
            tokens_consumed=consumed,
        )

    def request(self, cost: int) -> tuple[Envelope, bool]:
        self._refill()
        if self.balance < 1:
            self.refused += 1
            return self.envelope(0), False
        self.balance -= cost
        self.consumed += cost
        return self.envelope(cost), True

    def spend(self, tokens: int) -> None:
        """Another user of the same key (a dashboard, a script)."""
        self._refill()
        self.balance -= tokens


@dataclass
class Worker:
    name: str
    cost: int
    latency: float = 0.5
    true_cost: int | None = None  # what Keepa really charges, if the estimate lies
    waits: list[float] = field(default_factory=list)
    grants: list[float] = field(default_factory=list)
    rate_limited: int = 0


async def work(sched: TokenScheduler, key: KeepaKey, clock: Clock, w: Worker) -> None:
    """A saturated consumer: acquire, send, sync, again; like KeepaClient does."""
    while True:
        t0 = clock.monotonic()
        await sched.acquire(w.name, w.cost)
        w.waits.append(clock.monotonic() - t0)
        w.grants.append(clock.monotonic())
        await clock.sleep(w.latency)
        env, ok = key.request(w.true_cost or w.cost)
        sched.sync(env)
        if not ok:
            w.rate_limited += 1
            sched.note_rate_limited()


async def run(clock: FakeClock, seconds: float, tasks: list[asyncio.Task[None]]) -> None:
    await clock.advance(seconds)
    for task in tasks:
        assert not task.done(), task  # a worker that raised would show here


async def stop(tasks: list[asyncio.Task[None]]) -> None:
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


def start(
    sched: TokenScheduler, key: KeepaKey, clock: FakeClock, *workers: Worker
) -> list[asyncio.Task[None]]:
    return [asyncio.create_task(work(sched, key, clock, w)) for w in workers]


def env(left: int, refill_in_ms: int, rate: int, *, ts: int = 1, consumed: int = 0) -> Envelope:
    return Envelope(
        timestamp=ts, tokens_left=left, refill_in=refill_in_ms, refill_rate=rate,
        tokens_consumed=consumed,
    )


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


# -- the model -----------------------------------------------------------------


async def test_sync_sets_balance_and_prediction_adds_refills_up_to_the_cap() -> None:
    clock = FakeClock()
    sched = TokenScheduler(clock=clock, weights=WEIGHTS, batch_minutes=1.0)
    assert sched.snapshot().synced_at is None
    sched.sync(env(10, 59_000, 5))
    snap = sched.snapshot()
    assert (snap.balance, snap.refill_rate, snap.period_s) == (10, 5, 60.0)
    assert snap.refill_in_s == pytest.approx(59.0)
    assert snap.synced_at == clock.now()
    await clock.advance(58.9)
    assert sched.snapshot().balance == 10
    await clock.advance(0.2)
    assert sched.snapshot().balance == 15
    # A second refill instant 60 s after the first pins the period.
    sched.sync(env(15, 59_900, 5, ts=2))
    await clock.advance(59.9 + 540)
    assert sched.snapshot().balance == 65
    sched.sync(env(297, 1_000, 5, ts=2))
    await clock.advance(3 * 60)
    assert sched.snapshot().balance == 300  # Keepa's cap: 60 x refill_rate


def test_round_period_rounds_up_to_a_sensible_value() -> None:
    assert round_period(59.4) == 60.0
    assert round_period(60.5) == 60.0  # jitter just over the period
    assert round_period(0.093) == 0.1
    assert round_period(0.93) == 1.0
    assert round_period(0.24) == 0.25


async def test_period_is_learned_from_refill_in_without_configuration() -> None:
    clock = FakeClock()
    sched = TokenScheduler(clock=clock, weights=WEIGHTS)
    assert sched.snapshot().period_s == 60.0  # before any evidence
    key = KeepaKey(clock, rate=5, period=1.0, phase=0.31)
    sched.sync(key.envelope())
    # One refill seen: refillIn (310 ms) is only a lower bound, keep the default.
    assert sched.snapshot().period_s == 60.0
    for dt in (0.4, 0.35, 0.6, 0.1):
        await clock.advance(dt)
        sched.sync(key.envelope())
    assert sched.snapshot().period_s == 1.0  # an accelerated simulator's "minute"
    # Prediction runs at that period: -12 needs 3 refills of 5 to reach >= 1.
    key.balance = -12
    sched.sync(key.envelope())
    refill_in = key.next_refill - clock.monotonic()
    assert sched.expected_wait("upserter") == pytest.approx(refill_in + 2 * 1.0, abs=0.002)


# -- waiting -------------------------------------------------------------------


async def test_first_request_goes_through_unsynced_and_teaches_the_state() -> None:
    clock = FakeClock()
    sched = TokenScheduler(clock=clock, weights=WEIGHTS)
    await asyncio.wait_for(sched.acquire("upserter", 5), 1)  # nothing known: one probe
    second = asyncio.create_task(sched.acquire("backfiller", 20))
    await settle()
    assert not second.done()
    assert sched.snapshot().waiting == {"backfiller": 1}
    sched.sync(env(295, 30_000, 5, consumed=5))  # the probe's answer
    await settle()
    assert second.done()
    assert sched.snapshot().balance == 275


async def test_lost_probe_lets_another_through_after_a_period() -> None:
    clock = FakeClock()
    sched = TokenScheduler(clock=clock, weights=WEIGHTS)
    await sched.acquire("upserter", 5)  # its response never comes
    waiter = asyncio.create_task(sched.acquire("upserter", 5))
    await clock.advance(59)
    assert not waiter.done()
    await clock.advance(1)
    assert waiter.done()


async def test_released_probe_lets_the_next_through_at_once() -> None:
    # The same lost probe, but its caller says so (cancelled, no response):
    # the next grant does not wait out the period, and nothing stays in flight.
    clock = FakeClock()
    sched = TokenScheduler(clock=clock, weights=WEIGHTS)

    async def granted_then_lost() -> bool:
        await sched.acquire("upserter", 5)
        return sched.release("upserter")

    assert await asyncio.create_task(granted_then_lost())
    assert sched.snapshot().in_flight == 0
    await asyncio.wait_for(sched.acquire("backfiller", 5), 1)  # no clock advance
    assert sched.release("upserter") is False  # another consumer's grant is not its to release
    sched.sync(env(290, 30_000, 5, consumed=5))
    assert sched.release("backfiller") is False  # answered: nothing to release
    assert sched.snapshot().in_flight == 0


async def test_request_never_waits_for_its_full_cost_only_for_balance_of_one() -> None:
    clock = FakeClock()
    sched = TokenScheduler(clock=clock, weights=WEIGHTS)
    sched.sync(env(1, 60_000, 5))
    await asyncio.wait_for(sched.acquire("backfiller", 100), 1)
    assert sched.snapshot().balance == -99


async def test_negative_balance_waits_for_the_refill_that_makes_it_positive() -> None:
    clock = FakeClock()
    sched = TokenScheduler(clock=clock, weights=WEIGHTS)
    sched.sync(env(-17, 50_000, 5))
    # Two refills 60 s apart seen, and a refillIn of 50 s: no two periods fit
    # in 60 s, so the period is known.
    await clock.advance(80)
    sched.sync(env(-12, 30_000, 5, ts=2))
    assert sched.snapshot().period_s == 60
    assert sched.expected_wait("upserter", 5) == pytest.approx(30 + 2 * 60)
    task = asyncio.create_task(sched.acquire("upserter", 5))
    await clock.advance(149.9)
    assert not task.done()
    assert clock.sleepers == 1  # one timer to the step, no polling
    await clock.advance(0.1)
    assert task.done()
    assert sched.snapshot().balance == -2


async def test_cancelled_waiter_leaves_the_queue_and_takes_nothing() -> None:
    clock = FakeClock()
    sched = TokenScheduler(clock=clock, weights=WEIGHTS)
    sched.sync(env(-3, 60_000, 5))
    first = asyncio.create_task(sched.acquire("upserter", 5))
    second = asyncio.create_task(sched.acquire("backfiller", 20))
    await settle()
    assert sched.snapshot().waiting == {"upserter": 1, "backfiller": 1}
    first.cancel()
    await settle()
    assert first.cancelled()
    assert sched.snapshot().waiting == {"backfiller": 1}
    await clock.advance(60)
    assert second.done()
    snap = sched.snapshot()
    assert snap.granted_by == {"backfiller": 20}
    assert snap.balance == 2 - 20
    assert clock.sleepers == 0  # no timer left behind with nobody waiting


async def test_waiter_cancelled_after_its_grant_gives_the_tokens_back() -> None:
    clock = FakeClock()
    sched = TokenScheduler(clock=clock, weights=WEIGHTS)
    sched.sync(env(-1, 60_000, 5))
    task = asyncio.create_task(sched.acquire("backfiller", 20))
    await settle()
    sched.sync(env(10, 60_000, 5, ts=2))  # grants it...
    task.cancel()  # ...but the caller is cancelled before it resumes
    await settle()
    assert task.cancelled()
    snap = sched.snapshot()
    assert snap.balance == 10
    assert snap.granted_by == {"backfiller": 0}
    assert snap.in_flight == 0


async def test_waiter_cancelled_before_a_grant_is_passed_over_not_granted() -> None:
    clock = FakeClock()
    sched = TokenScheduler(clock=clock, weights=WEIGHTS)
    sched.sync(env(-1, 60_000, 5))
    gone = asyncio.create_task(sched.acquire("upserter", 5))
    kept = asyncio.create_task(sched.acquire("backfiller", 20))
    await settle()
    gone.cancel()  # its future is cancelled now; its task has not run its cleanup
    sched.sync(env(10, 60_000, 5, ts=2))  # a grant in between must not raise
    await settle()
    assert gone.cancelled() and kept.done()
    snap = sched.snapshot()
    assert snap.granted_by == {"backfiller": 20}
    assert snap.balance == 10 - 20


async def test_refill_in_of_zero_means_a_refill_is_due_now() -> None:
    clock = FakeClock()
    sched = TokenScheduler(clock=clock, weights=WEIGHTS)
    sched.sync(env(-10, 0, 20))
    assert sched.snapshot().balance == 10
    await asyncio.wait_for(sched.acquire("upserter", 5), 1)


async def test_envelope_without_refill_in_keeps_the_predicted_step() -> None:
    clock = FakeClock()
    sched = TokenScheduler(clock=clock, weights=WEIGHTS)
    sched.sync(env(-10, 30_000, 20))
    await clock.advance(10)
    sched.sync(env(-12, -1, 20, ts=2))  # refillIn not reported
    snap = sched.snapshot()
    assert snap.balance == -12  # no refill credited on a guess
    assert snap.refill_in_s == pytest.approx(20)


async def test_in_flight_requests_are_not_forgotten_by_an_earlier_envelope() -> None:
    clock = FakeClock()
    sched = TokenScheduler(clock=clock, weights=WEIGHTS)
    sched.sync(env(11, 60_000, 5, ts=1))
    answer: dict[str, asyncio.Future[Envelope]] = {}

    async def call(name: str) -> None:
        await sched.acquire(name, 5)
        answer[name] = asyncio.get_running_loop().create_future()
        sched.sync(await answer[name])

    a = asyncio.create_task(call("a"))
    b = asyncio.create_task(call("b"))
    await settle()
    assert sched.snapshot().in_flight == 2  # 11 covers both, in either order
    c = asyncio.create_task(sched.acquire("c", 5))
    await settle()
    # Keepa ran a (11 -> 6) before b arrived; a's envelope still shows 6.
    answer["a"].set_result(env(6, 50_000, 5, ts=2, consumed=5))
    await settle()
    assert not c.done()  # b is still in flight: 6 is really 1
    answer["b"].set_result(env(1, 50_000, 5, ts=3, consumed=5))
    await settle()
    assert c.done()
    assert sched.snapshot().balance == -4
    assert sched.snapshot().consumed_by == {"a": 5, "b": 5}
    await asyncio.gather(a, b)


async def test_request_that_would_overdraw_waits_for_those_in_flight() -> None:
    # Keepa serves in arrival order: a big request granted second could arrive
    # first, take the balance below 1 and leave the earlier small one a 429.
    clock = FakeClock()
    sched = TokenScheduler(clock=clock, weights=WEIGHTS)
    sched.sync(env(15, 50_000, 20))
    await sched.acquire("upserter", 5)  # in flight, never answered here
    big = asyncio.create_task(sched.acquire("backfiller", 20))
    await settle()
    assert not big.done()
    sched.sync(env(10, 49_000, 20, ts=2, consumed=5))  # the small one's answer
    await settle()
    assert big.done()  # last to arrive now: it may overdraw
    assert sched.snapshot().balance == -10


async def test_stale_envelope_counts_but_does_not_rewind_the_balance() -> None:
    clock = FakeClock()
    sched = TokenScheduler(clock=clock, weights=WEIGHTS)
    sched.sync(env(40, 60_000, 5, ts=2_000))
    sched.sync(env(90, 60_000, 5, ts=1_500, consumed=7))  # a slow, earlier request
    snap = sched.snapshot()
    assert snap.balance == 40
    assert snap.consumed_total == 7


async def test_stale_answer_before_the_period_is_known_does_not_stall_grants() -> None:
    """The bench stall under CPU load: a 100 ms simulator, one refill seen.

    The only answer after the first refill step came back stale (stamped
    before one already seen), so it taught nothing; the model must not then
    park the next grant a whole default period (60 s) away.
    """
    clock = FakeClock()
    sched = TokenScheduler(clock=clock, weights=WEIGHTS)
    sched.sync(env(20, 100, 20, ts=1_000))
    await sched.acquire("backfiller", 30)
    sched.sync(env(-10, 90, 20, ts=1_010, consumed=30))
    scout = asyncio.create_task(sched.acquire("backfiller", 20))
    await clock.advance(0.1)  # the announced refill: the model holds 10
    assert scout.done()
    sched.sync(env(-10, 95, 20, ts=1_005, consumed=20))  # stale
    assert sched.snapshot().in_flight == 0
    after = asyncio.create_task(sched.acquire("upserter", 5))
    await clock.advance(0.5)  # five of the shortest periods refillIn allows
    assert after.done()
    # It went as a probe: guessed steps credit nothing until the period is known.
    assert sched.snapshot().balance == -15
    await stop([after])


async def test_request_without_response_stops_counting_as_in_flight_on_retry() -> None:
    clock = FakeClock()
    sched = TokenScheduler(clock=clock, weights=WEIGHTS)
    sched.sync(env(50, 60_000, 5))
    await sched.acquire("upserter", 5)  # then a timeout: no envelope
    await sched.acquire("upserter", 5)  # the retry
    assert sched.snapshot().in_flight == 1
    sched.sync(env(45, 60_000, 5, ts=2, consumed=5))
    assert sched.snapshot().balance == 45


async def test_rate_limited_pushes_balance_to_zero_until_the_next_refill() -> None:
    clock = FakeClock()
    sched = TokenScheduler(clock=clock, weights=WEIGHTS)
    sched.sync(env(3, 60_000, 5))
    sched.sync(env(3, 20_000, 5, ts=2))
    sched.note_rate_limited()
    snap = sched.snapshot()
    assert (snap.balance, snap.rate_limited) == (0, 1)
    assert sched.expected_wait("upserter") == pytest.approx(20)


def test_weights_must_be_positive() -> None:
    with pytest.raises(ValueError, match="backfiller"):
        TokenScheduler(clock=FakeClock(), weights={"backfiller": 0})


# -- fairness ------------------------------------------------------------------


async def test_two_saturated_consumers_share_by_weight() -> None:
    clock = FakeClock()
    sched = TokenScheduler(clock=clock, weights=WEIGHTS)
    key = KeepaKey(clock, rate=25, balance=25)
    up, back = Worker("upserter", 5, latency=0.3), Worker("backfiller", 20, latency=2.0)
    tasks = start(sched, key, clock, up, back)
    await run(clock, 6 * 3600, tasks)
    await stop(tasks)
    by = sched.snapshot().consumed_by
    share = by["backfiller"] / (by["backfiller"] + by["upserter"])
    assert share == pytest.approx(0.75, abs=0.03)
    assert key.refused == 0
    assert key.consumed >= key.generated - 25 - 20  # all but the last refill spent


async def test_big_request_is_not_starved_by_a_stream_of_small_ones() -> None:
    # docs/field-notes.md #3: 100-token batches against three 5-token streams, 5/min.
    clock = FakeClock()
    sched = TokenScheduler(clock=clock, weights={"upserter": 1, "backfiller": 1})
    key = KeepaKey(clock, rate=5, balance=5)
    small = [Worker("upserter", 5, latency=0.2) for _ in range(3)]
    big = Worker("backfiller", 100, latency=3.0)
    tasks = start(sched, key, clock, *small, big)
    await run(clock, 10 * 3600, tasks)
    await stop(tasks)
    by = sched.snapshot().consumed_by
    assert by["backfiller"] / key.consumed == pytest.approx(0.5, abs=0.06)
    assert len(big.grants) >= 12
    # A batch waits for its turn (about one deficit of the other side), never for
    # the balance to climb to 100 while small calls keep spending it.
    assert max(big.waits[1:]) <= 45 * 60
    assert key.refused == 0
    # After a 100-token deficit, the next grant is a small one: it is behind.
    after_big = [
        g for g in small[0].grants + small[1].grants + small[2].grants if g > big.grants[2]
    ]
    assert min(after_big) < big.grants[3]


async def test_idle_consumer_comes_back_without_banked_credit() -> None:
    clock = FakeClock()
    sched = TokenScheduler(clock=clock, weights={"upserter": 1, "backfiller": 1})
    key = KeepaKey(clock, rate=25, balance=25)
    back = Worker("backfiller", 10, latency=0.5)
    up = Worker("upserter", 10, latency=0.5)
    tasks = start(sched, key, clock, back, up)
    await run(clock, 3600, tasks)
    await stop(tasks[1:])  # the upserter idles for four hours
    await run(clock, 4 * 3600, tasks[:1])
    tasks = tasks[:1] + start(sched, key, clock, up)
    before = dict(sched.snapshot().consumed_by)
    await run(clock, 3600, tasks)
    await stop(tasks)
    after = sched.snapshot().consumed_by
    gained = {name: after[name] - before[name] for name in after}
    # Not a four-hour monopoly for the returning consumer: an even split now.
    assert gained["upserter"] / sum(gained.values()) == pytest.approx(0.5, abs=0.05)


# -- plans, lies and other users -----------------------------------------------


async def test_plan_change_5_to_25_to_5_is_absorbed() -> None:
    clock = FakeClock()
    sched = TokenScheduler(clock=clock, weights=WEIGHTS)
    key = KeepaKey(clock, rate=5, balance=5)
    workers = [Worker("upserter", 5, latency=0.4), Worker("backfiller", 10, latency=1.5)]
    tasks = start(sched, key, clock, *workers)
    consumed = []
    for rate in (5, 25, 5):
        key._refill()
        key.rate = rate
        before = key.consumed
        await run(clock, 2 * 3600, tasks)
        consumed.append(key.consumed - before)
    await stop(tasks)
    # No threshold tied to a plan: each phase spends what its plan generates.
    for got, rate in zip(consumed, (5, 25, 5), strict=True):
        assert got == pytest.approx(rate * 120, rel=0.05)
    assert key.refused <= 2  # at most one 429 per change
    assert sched.snapshot().refill_rate == 5


async def test_another_user_of_the_key_is_absorbed_at_the_next_response() -> None:
    clock = FakeClock()
    sched = TokenScheduler(clock=clock, weights=WEIGHTS)
    key = KeepaKey(clock, rate=25, balance=25)
    workers = [Worker("upserter", 5, latency=0.4), Worker("backfiller", 20, latency=1.5)]
    tasks = start(sched, key, clock, *workers)
    await run(clock, 1800, tasks)
    for _ in range(3):  # a script spends 200 tokens from the same key, three times
        key.spend(200)
        await run(clock, 1800, tasks)
    await stop(tasks)
    assert key.refused <= 3
    assert sched.snapshot().rate_limited == key.refused
    assert key.consumed >= key.generated - 600 - 100


async def test_steady_other_user_is_learned_as_a_drain() -> None:
    clock = FakeClock()
    sched = TokenScheduler(clock=clock, weights=WEIGHTS)
    key = KeepaKey(clock, rate=25, balance=25)
    workers = [Worker("upserter", 5, latency=0.4), Worker("backfiller", 20, latency=1.5)]
    tasks = start(sched, key, clock, *workers)

    async def dashboard() -> None:  # spends 15 of the 25 each period, mid-period
        await clock.sleep(30)
        while True:
            key.spend(15)
            await clock.sleep(60)

    tasks.append(asyncio.create_task(dashboard()))
    await run(clock, 2 * 3600, tasks)
    await stop(tasks)
    assert sched.snapshot().other_use_per_period == pytest.approx(15, abs=3)
    # Without the drain model a scout met a 429 at nearly every refill (~120).
    assert key.refused <= 12
    assert key.consumed == pytest.approx(10 * 120, rel=0.05)  # what the other user left


async def test_local_drift_and_plan_upgrade_do_not_livelock() -> None:
    # docs/field-notes.md #4: local -229 while Keepa says -104, then a plan upgrade.
    clock = FakeClock()
    sched = TokenScheduler(clock=clock, weights=WEIGHTS)
    key = KeepaKey(clock, rate=5, balance=-104)
    sched.sync(key.envelope())
    assert sched.snapshot().balance == -104
    back = Worker("backfiller", 20, latency=1.0)
    tasks = start(sched, key, clock, back)
    await run(clock, 30 * 60, tasks)
    assert back.grants  # ingesting after 21 refills, not after a plan-sized threshold
    key._refill()
    key.rate = 25  # upgrade
    before = key.consumed
    await run(clock, 3600, tasks)
    await stop(tasks)
    assert key.consumed - before == pytest.approx(25 * 60, rel=0.05)
    # One free 429: with a single refill instant seen the period is a guess, so
    # the first step lets one request try, and its envelope teaches the period.
    assert key.refused == 1


async def test_batch_size_follows_observed_cost_and_refill_rate() -> None:
    # docs/field-notes.md #5: estimated 2 tokens per ASIN, really 7.7.
    clock = FakeClock()
    sched = TokenScheduler(clock=clock, weights=WEIGHTS, batch_minutes=1.0)
    assert sched.batch_size("backfiller", lo=1, hi=100, default_cost=2) == 1  # unsynced
    sched.sync(env(0, 60_000, 5))
    assert sched.batch_size("backfiller", lo=1, hi=100, default_cost=2) == 2
    sched.observe("backfiller", 10, 77)
    assert sched.cost_per_item("backfiller") == pytest.approx(7.7)
    assert sched.batch_size("backfiller", lo=1, hi=100, default_cost=2) == 1
    sched.sync(env(0, 60_000, 1000, ts=2))
    assert sched.batch_size("backfiller", lo=1, hi=100, default_cost=2) == 100
    sched.sync(env(0, 60_000, 25, ts=3))
    assert sched.batch_size("backfiller", lo=1, hi=100, default_cost=2) == 3
    for _ in range(20):  # the cost falls: the EWMA follows
        sched.observe("backfiller", 5, 5)
    assert sched.batch_size("backfiller", lo=1, hi=100, default_cost=2) in (24, 25)
    assert sched.batch_size("backfiller", lo=1, hi=20, default_cost=2) == 20


async def test_observed_cost_is_kept_per_kind_of_work() -> None:
    # A full backfill with offers costs ~7 a product, the stats-only refresh
    # 1: mixed in one average, refresh batches would be sized 4x too small and
    # full ones too large. Fairness stays per consumer.
    clock = FakeClock()
    sched = TokenScheduler(clock=clock, weights=WEIGHTS, batch_minutes=1.0)
    sched.sync(env(0, 60_000, 100))
    for _ in range(5):
        sched.observe("backfiller", 10, 70)
        sched.observe("backfiller", 10, 10, kind="refresh")
    assert sched.cost_per_item("backfiller") == pytest.approx(7.0)
    assert sched.cost_per_item("backfiller", kind="refresh") == pytest.approx(1.0)
    assert sched.batch_size("backfiller", lo=1, hi=100, default_cost=2) == 14
    assert sched.batch_size("backfiller", lo=1, hi=100, default_cost=2, kind="refresh") == 100
    # A kind never observed uses the caller's default, not another kind's cost.
    assert sched.cost_per_item("backfiller", kind="offers") is None
    assert sched.batch_size("backfiller", lo=1, hi=100, default_cost=4, kind="offers") == 25


async def test_lying_estimate_is_corrected_by_the_envelope_and_charged_in_full() -> None:
    clock = FakeClock()
    sched = TokenScheduler(clock=clock, weights={"upserter": 1, "backfiller": 1})
    key = KeepaKey(clock, rate=25, balance=25)
    # The backfiller claims 10 tokens per call but Keepa charges 77.
    back = Worker("backfiller", 10, latency=1.0, true_cost=77)
    up = Worker("upserter", 5, latency=0.3)
    tasks = start(sched, key, clock, back, up)
    await run(clock, 6 * 3600, tasks)
    await stop(tasks)
    by = sched.snapshot().consumed_by
    assert by["backfiller"] / (by["backfiller"] + by["upserter"]) == pytest.approx(0.5, abs=0.06)
    assert key.refused <= 1  # the first lie only: after it, cost is learned per consumer
    assert sched.snapshot().balance == key.balance  # the envelope's truth, not the estimate


async def test_wall_clock_jump_changes_nothing() -> None:
    async def scenario(jump: float) -> tuple[list[float], list[float], int]:
        clock = FakeClock()
        sched = TokenScheduler(clock=clock, weights=WEIGHTS)
        key = KeepaKey(clock, rate=5, balance=5)
        up, back = Worker("upserter", 5, latency=0.4), Worker("backfiller", 20, latency=1.0)
        tasks = start(sched, key, clock, up, back)
        await run(clock, 1800, tasks)
        clock.jump_wall(jump)  # NTP step or VM resume: server timestamps jump too
        await run(clock, 1800, tasks)
        await stop(tasks)
        return up.grants, back.grants, key.refused

    steady = await scenario(0)
    assert await scenario(-3600) == steady
    assert await scenario(86_400) == steady


async def test_expected_wait_counts_the_waiters_ahead() -> None:
    clock = FakeClock()
    sched = TokenScheduler(clock=clock, weights={"upserter": 1, "backfiller": 1})
    sched.sync(env(0, 60_000, 5))
    sched.sync(env(0, 10_000, 5, ts=2))
    assert sched.expected_wait("upserter", 5) == pytest.approx(10)
    waiter = asyncio.create_task(sched.acquire("backfiller", 20))
    await settle()
    # The backfiller is first (same tags, earlier); 20 more tokens must come in first.
    assert sched.expected_wait("upserter", 5) == pytest.approx(10 + 4 * 60)
    assert sched.expected_wait("backfiller", 20) == pytest.approx(10)
    waiter.cancel()
    await asyncio.gather(waiter, return_exceptions=True)


async def test_real_clock_accelerated_period_is_learned_and_timers_fire() -> None:
    # The one test on real time: asyncio timers, not FakeClock, drive the waits.
    clock = SystemClock()
    sched = TokenScheduler(clock=clock, weights=WEIGHTS)
    key = KeepaKey(clock, rate=20, balance=20, period=0.05, phase=0.02)
    up, back = Worker("upserter", 5, latency=0.002), Worker("backfiller", 10, latency=0.004)
    tasks = [asyncio.create_task(work(sched, key, clock, w)) for w in (up, back)]
    await asyncio.sleep(1.5)
    await stop(tasks)
    snap = sched.snapshot()
    assert snap.period_s == pytest.approx(0.05)
    assert up.grants and back.grants
    assert key.refused <= 1  # the period guess at startup, at most
    assert snap.consumed_total >= key.generated * 0.8


async def test_through_the_real_client_and_simulator_envelopes_pair_with_requests() -> None:
    # Real HTTP over loopback: the client's acquire/sync pairing (a context
    # variable per task) charges every token to the consumer that spent it.
    from dealsd.keepa import KeepaClient, ProductParams
    from dealsd.simulator import SimOptions, Simulator

    sim = Simulator(SimOptions(refill_rate=10, refill_period_s=0.1, initial_tokens=10))
    base_url = await sim.start("127.0.0.1", 0)
    clock = SystemClock()
    sched = TokenScheduler(clock=clock, weights=WEIGHTS)
    try:
        async with KeepaClient(
            base_url=base_url,
            api_key="test-key",
            domain=1,
            tokens=sched,
            clock=clock,
            max_attempts=3,
        ) as client:
            done = asyncio.Event()  # calls finish, so every charge has its envelope

            async def upserter() -> None:
                while not done.is_set():
                    await client.deals({"priceTypes": [2]}, 0, consumer="upserter")

            async def backfiller() -> None:
                n = 0
                while not done.is_set():
                    asins = [f"B0TEST{n + i:04d}" for i in range(3)]
                    n += 3
                    await client.products(asins, ProductParams(), consumer="backfiller")

            tasks = [asyncio.create_task(upserter()), asyncio.create_task(backfiller())]
            await asyncio.sleep(1.5)
            for task in tasks:
                assert not task.done(), task  # no call failed after its retries
            done.set()
            await asyncio.wait_for(asyncio.gather(*tasks), 5)
        stats = sim.stats()
    finally:
        await sim.stop()
    snap = sched.snapshot()
    assert stats["rate_limited"] == 0
    assert snap.period_s == pytest.approx(0.1)
    assert set(snap.consumed_by) == {"upserter", "backfiller"}  # nothing unattributed
    assert snap.consumed_total == stats["tokens_consumed"]


# -- an outage: no answers at all (issue 18, point 6) ----------------------------


async def test_unanswered_requests_keep_only_the_latest_deduction() -> None:
    clock = FakeClock()
    sched = TokenScheduler(clock=clock, weights=WEIGHTS)
    sched.sync(env(50, 60_000, 5))
    for _ in range(3):  # three attempts, no answer to any (refused, reset, timeout)
        await sched.acquire("upserter", 5)
        assert sched.release("upserter")
    # The last one may have been billed (a hung answer is); the ones before it
    # were followed by another unanswered request: Keepa was not answering.
    assert sched.snapshot().balance == 45
    await sched.acquire("backfiller", 10)
    assert sched.release("backfiller")
    assert sched.snapshot().balance == 40
    sched.sync(env(50, 60_000, 5, ts=2))  # an answer says what was billed
    await sched.acquire("upserter", 5)
    assert sched.release("upserter")
    assert sched.snapshot().balance == 45


async def _outage_worker(
    sched: TokenScheduler, key: KeepaKey, clock: Clock, w: Worker, down: asyncio.Event
) -> None:
    """Like ``work``, but while ``down`` is set no request gets an answer.

    As KeepaClient does: an attempt that raises (a transport error, or the
    caller cancelled mid-request) releases its grant, then backs off.
    """
    while True:
        await sched.acquire(w.name, w.cost)
        w.grants.append(clock.monotonic())
        try:
            await clock.sleep(w.latency)
            if down.is_set():
                raise ConnectionRefusedError
        except BaseException:
            sched.release(w.name)
            if not down.is_set():
                raise
            await clock.sleep(0.25)
            continue
        env_, ok = key.request(w.cost)
        sched.sync(env_)
        if not ok:
            w.rate_limited += 1
            sched.note_rate_limited()


async def test_outage_debits_nothing_and_its_gap_is_not_a_refill_period() -> None:
    # A key in deficit (a big batch just ran) answers once, then nothing for
    # 8 periods of 1 s. Before: every probe in the outage stayed debited
    # (-60 became -400), and the spacing of the refill instants across the
    # gap was learned as the period (9 s), so after recovery the model waited
    # 9 s per refill: the key sat unused.
    clock = FakeClock()
    sched = TokenScheduler(clock=clock, weights=WEIGHTS)
    # Its first refillIn is 550 ms. (With one of 300 ms the shortest period
    # allowed is 0.5 s, and the first probe after recovery, a guess, can be a
    # second 429 besides the one that pins the period.)
    key = KeepaKey(clock, rate=20, balance=-300, period=1.0, phase=0.55)
    sched.sync(key.envelope())
    down = asyncio.Event()
    down.set()
    workers = [Worker("upserter", 5, latency=0.05), Worker("backfiller", 20, latency=0.1)]
    tasks = [asyncio.create_task(_outage_worker(sched, key, clock, w, down)) for w in workers]
    await run(clock, 8.0, tasks)
    snap = sched.snapshot()
    # Only the announced refill is credited (the period is not known yet), and
    # at most one unanswered request's cost (20) is still deducted.
    assert -300 + 20 - 20 <= snap.balance <= -300 + 20
    assert sum(len(w.grants) for w in workers) >= 1  # the outage was tried, not skipped
    down.clear()
    key._refill()
    start_balance, generated, consumed = key.balance, key.generated, key.consumed
    periods_seen: set[float] = set()
    for _ in range(30):
        await run(clock, 1.0, tasks)
        periods_seen.add(sched.snapshot().period_s)
    await stop(tasks)
    key._refill()
    assert sched.snapshot().period_s == 1.0
    # Unknown (the default) until pinned, then the refill period: never the
    # outage's length.
    assert all(p == 60.0 or p == pytest.approx(1.0, abs=0.002) for p in periods_seen)
    used = key.consumed - consumed + min(key.balance, 0)
    available = start_balance + key.generated - generated
    assert used / available >= 0.9
    assert sum(w.rate_limited for w in workers) <= 1


async def test_outage_on_the_real_simulator_then_the_key_is_used_at_once() -> None:
    # Real HTTP over loopback; "minutes" of 1 s. The key is in deficit when the
    # simulator stops answering (every connection reset: no envelope) right
    # after its first answer, for 6 periods; the half minute after recovery
    # must use what the key refills, with at most one 429.
    from helpers import wait_for

    from dealsd.keepa import KeepaClient, KeepaError, ProductParams
    from dealsd.simulator import SimOptions, Simulator

    rate, period = 20, 1.0
    sim = Simulator(SimOptions(refill_rate=rate, refill_period_s=period, initial_tokens=-300))
    base_url = await sim.start("127.0.0.1", 0)
    clock = SystemClock()
    sched = TokenScheduler(clock=clock, weights=WEIGHTS)
    failed: list[KeepaError] = []  # calls that gave up: the workers go on
    try:
        async with KeepaClient(
            base_url=base_url, api_key="test-key", domain=1, tokens=sched, clock=clock,
            connect_timeout_s=1.0, read_timeout_s=2.0, max_attempts=3,
            backoff_base_s=0.05 * period, backoff_max_s=0.2 * period,
        ) as client:

            async def upserter() -> None:
                while True:
                    try:
                        await client.deals({"priceTypes": [2]}, 0, consumer="upserter")
                    except KeepaError as exc:  # given up after its retries: next round
                        failed.append(exc)

            async def backfiller() -> None:
                n = 0
                while True:
                    asins = [f"B0OUT{(n + i) % 10_000:05d}" for i in range(4)]
                    n += 4
                    try:
                        await client.products(asins, ProductParams(), consumer="backfiller")
                    except KeepaError as exc:
                        failed.append(exc)

            tasks = [asyncio.create_task(upserter()), asyncio.create_task(backfiller())]
            await wait_for(lambda: sched.snapshot().synced_at is not None, 5, "a first answer",
                           every=0.005)  # fmt: skip
            sim.control(faults={"reset": 1.0})
            await asyncio.sleep(6 * period)
            assert sim.stats()["faults"].get("reset", 0) >= 1  # requests went, unanswered
            assert sched.snapshot().balance >= -300 - 100  # one attempt's cost at most
            sim.control(faults={"reset": 0.0})
            before = sim.stats()
            await asyncio.sleep(30.0)
            after = sim.stats()
            for task in tasks:
                assert not task.done(), task
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
    finally:
        await sim.stop()

    def made(stats: dict[str, Any]) -> int:
        return int(stats["tokens_generated"]) + int(stats["tokens_wasted"])

    start_balance = int(before["balance"])
    used = (
        int(after["tokens_consumed"]) - int(before["tokens_consumed"])
        + min(int(after["balance"]), 0)
    )  # fmt: skip
    available = start_balance + made(after) - made(before)
    assert available > 10 * rate  # the half minute did refill the deficit and more
    assert used / available >= 0.9
    assert int(after["rate_limited"]) - int(before["rate_limited"]) <= 1
    assert sched.snapshot().period_s == pytest.approx(period)
