from __future__ import annotations

from dataclasses import dataclass

from dealsd.clock import FakeClock
from dealsd.workers.health import Health
from dealsd.workers.health_types import State


@dataclass
class Stats:
    queue_len: int = 0
    last_commit_at: float | None = None


def make(clock: FakeClock, **kw: object) -> Health:
    return Health(clock=clock, margin_s=60.0, margin_factor=0.5, **kw)  # type: ignore[arg-type]


async def test_stall_window_follows_each_workers_own_schedule() -> None:
    clock = FakeClock()
    h = make(clock)
    h.register("upserter", expected_round_s=300)  # window 300*1.5+60 = 510
    h.register("fast", expected_round_s=10)  # window 10*1.5+60 = 75
    h.progress("upserter")
    h.progress("fast")
    await clock.advance(100)
    snap = h.snapshot()
    assert snap.worker("upserter").state is State.RUNNING
    assert snap.worker("fast").state is State.STALLED
    assert not snap.healthy
    assert any("fast stalled" in c for c in snap.causes)
    await clock.advance(400)  # 500 s: a slow plan is still not stalled
    assert h.snapshot().worker("upserter").state is not State.STALLED
    await clock.advance(20)  # 520 s: past 510, a dead loop
    assert h.snapshot().worker("upserter").state is State.STALLED


async def test_progress_clears_a_stall() -> None:
    clock = FakeClock()
    h = make(clock)
    h.register("w", expected_round_s=10)
    await clock.advance(80)
    assert h.snapshot().worker("w").state is State.STALLED
    h.progress("w", 3, "products")
    snap = h.snapshot()
    assert snap.healthy
    row = snap.worker("w")
    assert row.state is State.RUNNING and row.progress_total == 3
    assert row.last_progress_at == clock.now()


async def test_idle_progress_counts_as_alive() -> None:
    clock = FakeClock()
    h = make(clock)
    h.register("backfiller", expected_round_s=30)  # window 105
    for _ in range(10):
        await clock.advance(30)
        h.progress("backfiller", 0, "products", idle=True)
    snap = h.snapshot()
    assert snap.healthy
    assert snap.worker("backfiller").idle
    assert snap.worker("backfiller").progress_total == 0


async def test_announced_token_wait_widens_the_window() -> None:
    clock = FakeClock()
    h = make(clock)
    h.register("backfiller", expected_round_s=30)
    h.progress("backfiller")
    await clock.advance(50)
    h.waiting_for_tokens("backfiller", 1200.0)  # a big batch on a 5/min plan
    await clock.advance(1000)
    snap = h.snapshot()
    assert snap.worker("backfiller").state is State.WAITING_FOR_TOKENS
    assert snap.healthy
    await clock.advance(1200 + 60 + 10)  # far past the wait it announced
    assert h.snapshot().worker("backfiller").state is State.STALLED


async def test_backing_off_does_not_hide_a_worker_that_never_progresses() -> None:
    clock = FakeClock()
    h = make(clock)
    h.register("w", expected_round_s=10)  # window 75
    h.progress("w")
    for _ in range(5):  # fails every round, each time promising a next try
        await clock.advance(20)
        h.backing_off("w", "RuntimeError: boom", 20)
    row = h.snapshot().worker("w")
    assert row.state is State.STALLED
    h.progress("w")
    h.backing_off("w", "AccessDenied", 3600)
    row = h.snapshot().worker("w")
    assert row.state is State.BACKING_OFF and row.backoff_reason == "AccessDenied"


async def test_stopped_worker_is_not_stalled() -> None:
    clock = FakeClock()
    h = make(clock)
    h.register("w", expected_round_s=1)
    h.stopped("w")
    await clock.advance(10_000)
    assert h.snapshot().worker("w").state is State.STOPPED


async def test_writer_with_queued_writes_and_no_commit_is_unhealthy() -> None:
    clock = FakeClock()
    stats = Stats(queue_len=5, last_commit_at=clock.now())
    h = make(clock, writer_stats=lambda: stats, writer_bound_s=30.0)
    assert h.snapshot().healthy
    await clock.advance(20)
    stats.last_commit_at = clock.now()  # it commits: fine
    await clock.advance(25)
    assert h.snapshot().healthy
    await clock.advance(40)  # 65 s since the last commit it made, still queued
    snap = h.snapshot()
    assert not snap.healthy and any("writer stuck" in c for c in snap.causes)
    stats.queue_len = 0  # nothing queued: an idle writer is fine
    assert h.snapshot().healthy


async def test_wall_clock_jump_does_not_fake_a_stall() -> None:
    clock = FakeClock()
    stats = Stats(queue_len=2, last_commit_at=clock.now())
    h = make(clock, writer_stats=lambda: stats, writer_bound_s=30.0)
    h.register("w", expected_round_s=10)
    h.progress("w")
    h.snapshot()
    clock.jump_wall(86_400)
    snap = h.snapshot()
    assert snap.healthy, snap.causes


async def test_access_denied_is_a_cause() -> None:
    clock = FakeClock()
    h = make(clock)
    h.register("w", expected_round_s=10)
    h.progress("w")
    h.access_denied("402 payment required")
    snap = h.snapshot()
    assert not snap.healthy
    assert snap.causes == ("keepa access denied: 402 payment required",)
    h.access_granted()
    assert h.snapshot().healthy


async def test_summary_line_and_restarts() -> None:
    clock = FakeClock()
    h = make(clock)
    h.register("a", expected_round_s=10)
    h.register("b", expected_round_s=10)
    h.progress("a")
    h.progress("b")
    h.waiting_for_tokens("b", 5)
    h.restarted("a", "ValueError: boom")
    h.note_counts(deals=120, pending=7, tokens=-3)
    snap = h.snapshot()
    assert snap.worst_state is State.WAITING_FOR_TOKENS
    assert snap.worker("a").restarts == 1 and snap.worker("a").last_error == "ValueError: boom"
    line = h.summary_line(snap)
    assert line == "deals=120 pending=7 tokens=-3 workers=waiting_for_tokens healthy"
    await clock.advance(1000)
    assert "UNHEALTHY" in h.summary_line()


async def test_last_success_for_the_janitor() -> None:
    clock = FakeClock()
    h = make(clock)
    h.register("upserter", expected_round_s=300)
    assert not h.has_succeeded("upserter")
    assert h.last_success_at("upserter") is None
    await clock.advance(10)
    assert h.seconds_since_success("upserter") == 10
    h.progress("upserter")
    await clock.advance(5)
    assert h.has_succeeded("upserter")
    assert h.seconds_since_success("upserter") == 5
    assert h.seconds_since_success("unknown") is None


async def test_a_refused_key_is_unhealthy_but_keeps_the_watchdog() -> None:
    # A restart cannot fix a key: status says unhealthy, the watchdog goes on.
    clock = FakeClock()
    stats = Stats()
    h = make(clock, writer_stats=lambda: stats, writer_bound_s=60.0)
    h.register("upserter", expected_round_s=300)  # window 510 s
    h.progress("upserter")
    h.access_denied("product: HTTP 402: payment required")
    h.backing_off("upserter", "keepa access denied", 600.0)
    await clock.advance(520)  # past its window, but it said it sleeps 600 s
    snap = h.snapshot()
    assert not snap.healthy and snap.watchdog_ok
    assert snap.causes == ("keepa access denied: product: HTTP 402: payment required",)
    assert snap.worker("upserter").state is State.BACKING_OFF
    # It must try again when it said it would: silent past that, it is stalled.
    await clock.advance(600 + 510 - 520 + 1)
    snap = h.snapshot()
    assert snap.worker("upserter").state is State.STALLED
    assert not snap.watchdog_ok
    # Trying again and being refused again announces the next try: not stalled.
    h.backing_off("upserter", "keepa access denied", 600.0)
    assert h.snapshot().watchdog_ok


async def test_a_stuck_writer_stops_the_watchdog_even_with_a_refused_key() -> None:
    clock = FakeClock()
    stats = Stats(queue_len=3, last_commit_at=1.0)
    h = make(clock, writer_stats=lambda: stats, writer_bound_s=60.0)
    h.access_denied("invalid key")
    assert h.snapshot().watchdog_ok
    await clock.advance(61)
    snap = h.snapshot()
    assert any(c.startswith("writer stuck") for c in snap.causes)
    assert not snap.watchdog_ok
    # Without access denied, backing off never widens the window.
    h.access_granted()
    h.register("backfiller", expected_round_s=10)  # window 75 s
    h.progress("backfiller")
    h.backing_off("backfiller", "batch failed", 600.0)
    await clock.advance(76)
    assert h.snapshot().worker("backfiller").state is State.STALLED


def fail_round(h: Health, name: str, error: str, next_try_s: float) -> None:
    """What the supervisor reports for a round that raised: started, failed, backing off."""
    h.running(name)
    h.restarted(name, error)
    h.backing_off(name, error, next_try_s)


async def test_a_worker_retrying_through_an_outage_is_stalled_but_keeps_the_watchdog() -> None:
    # Keepa down: every round fails on schedule. Unhealthy, but a restart cannot
    # bring Keepa back, so the watchdog goes on until the worker stops trying.
    clock = FakeClock()
    h = make(clock, call_bound_s=20.0)
    h.register("upserter", expected_round_s=10)  # window 75 s
    h.progress("upserter")
    for _ in range(20):  # 100 s of failed rounds, one every 5 s
        await clock.advance(5)
        fail_round(h, "upserter", "TransientError: deal: cannot connect", 5.0)
    snap = h.snapshot()
    row = snap.worker("upserter")
    assert row.state is State.STALLED and row.trying
    assert not snap.healthy and snap.watchdog_ok
    [cause] = snap.causes
    assert cause.startswith("upserter stalled: no progress for over 75s, still trying")
    assert "last error: TransientError: deal: cannot connect" in cause
    # It stops trying (a round that never ends): its next try was due in 5 s;
    # past that, its window and one Keepa call's retries, a restart may help.
    h.running("upserter")
    await clock.advance(75 + 20 - 1)
    assert h.snapshot().watchdog_ok
    await clock.advance(2)
    snap = h.snapshot()
    assert not snap.watchdog_ok and not snap.worker("upserter").trying
    assert "upserter stalled and stopped trying" in snap.causes[0]


async def test_a_request_held_by_the_token_scheduler_is_still_trying() -> None:
    clock = FakeClock()
    queued = {"backfiller": 0}
    h = make(clock, token_queue=lambda: queued)
    h.register("backfiller", expected_round_s=10)  # window 75 s
    h.running("backfiller")
    await clock.advance(200)
    assert not h.snapshot().watchdog_ok
    queued["backfiller"] = 1  # a 429 retry waiting for the refill
    snap = h.snapshot()
    assert snap.worker("backfiller").state is State.STALLED
    assert snap.worker("backfiller").trying and snap.watchdog_ok


async def test_a_fresh_start_is_starting_until_each_worker_progressed() -> None:
    clock = FakeClock()
    h = make(clock)
    h.register("upserter", expected_round_s=10)
    h.register("backfiller", expected_round_s=10)
    snap = h.snapshot()
    assert snap.phase == "starting" and not snap.healthy and snap.watchdog_ok
    assert snap.starting == ("upserter", "backfiller") and snap.causes == ()
    assert h.summary_line(snap).endswith("starting: no progress yet from upserter, backfiller")
    h.progress("backfiller", 0, "products", idle=True)
    assert h.snapshot().starting == ("upserter",)
    h.progress("upserter")
    snap = h.snapshot()
    assert snap.phase == "healthy" and snap.healthy and snap.starting == ()


async def test_an_error_before_any_progress_is_unhealthy_at_once() -> None:
    # A restart during an outage: no stall window to wait out before saying so.
    clock = FakeClock()
    h = make(clock)
    h.register("upserter", expected_round_s=300)  # window 510 s
    h.register("janitor", expected_round_s=600)
    h.progress("janitor", 0, idle=True)
    fail_round(h, "upserter", "TransientError: deal: HTTP 503", 1.0)
    snap = h.snapshot()
    assert snap.phase == "unhealthy" and not snap.healthy and snap.watchdog_ok
    assert snap.causes == (
        "upserter has made no progress since start; last error: TransientError: deal: HTTP 503",
    )
    assert snap.worker("upserter").state is State.BACKING_OFF
    h.progress("upserter")
    assert h.snapshot().healthy
