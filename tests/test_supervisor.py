from __future__ import annotations

import asyncio

from structlog.testing import capture_logs

from dealsd.clock import FakeClock
from dealsd.workers.base import RoundResult
from dealsd.workers.health import Health
from dealsd.workers.health_types import State
from dealsd.workers.supervisor import Supervisor


class Steady:
    def __init__(self, name: str = "steady", every: float = 1.0) -> None:
        self.name = name
        self.expected_round_s = every
        self.rounds = 0

    async def round(self) -> RoundResult:
        self.rounds += 1
        return RoundResult(sleep_s=self.expected_round_s, progressed=1, what="pages")


class Flaky:
    """Raises for the first ``fail`` rounds, then works."""

    def __init__(self, fail: int, name: str = "flaky", error: str = "boom") -> None:
        self.name = name
        self.expected_round_s = 1.0
        self.fail = fail
        self.calls: list[float] = []
        self.ok = 0
        self.error = error
        self.clock: FakeClock | None = None

    async def round(self) -> RoundResult:
        assert self.clock is not None
        self.calls.append(self.clock.monotonic())
        if len(self.calls) <= self.fail:
            raise RuntimeError(self.error)
        self.ok += 1
        return RoundResult(sleep_s=1.0, progressed=1)


async def test_a_raising_worker_is_restarted_within_seconds_while_the_other_works() -> None:
    clock = FakeClock()
    health = Health(clock=clock, margin_s=5)
    flaky, steady = Flaky(fail=2), Steady()
    flaky.clock = clock
    recorded: list[tuple[str, str]] = []

    async def on_restart(name: str, error: str) -> None:
        recorded.append((name, error))

    sup = Supervisor(workers=[flaky, steady], clock=clock, health=health, on_restart=on_restart)
    with capture_logs() as logs:
        sup.start()
        await clock.advance(0)
        await clock.advance(10)
        await sup.stop(grace_s=1)
    # Failure at t=0, retry after 1 s, failure, retry after 2 s, then working.
    assert [c - 1000.0 for c in flaky.calls[:3]] == [0.0, 1.0, 3.0]
    assert flaky.ok >= 5
    assert steady.rounds >= 10
    assert sup.restarts["flaky"] == 2
    assert recorded == [("flaky", "RuntimeError: boom")] * 2
    # The same error twice: said once with its exception, the repeat only
    # counted, then one line when the worker recovers.
    failed = [e for e in logs if e["event"] == "worker_failed"]
    assert len(failed) == 2
    assert isinstance(failed[0]["exc_info"], RuntimeError)
    assert failed[1]["recovered"] is True and failed[1]["failures"] == 2
    snap = health.snapshot()
    assert snap.worker("flaky").restarts == 2
    assert snap.worker("flaky").state is State.STOPPED


async def test_backoff_doubles_to_the_cap_and_resets_after_a_healthy_stretch() -> None:
    clock = FakeClock()
    health = Health(clock=clock)
    flaky = Flaky(fail=9)
    flaky.clock = clock
    sup = Supervisor(workers=[flaky], clock=clock, health=health, reset_after_s=30)
    assert [sup.backoff_s(n) for n in range(1, 9)] == [1, 2, 4, 8, 16, 32, 60, 60]
    sup.start()
    await clock.advance(0)
    await clock.advance(400)
    gaps = [b - a for a, b in zip(flaky.calls, flaky.calls[1:], strict=False)][:9]
    assert gaps == [1, 2, 4, 8, 16, 32, 60, 60, 60]
    # Now healthy for more than reset_after_s: the next failure starts at 1 s again.
    flaky.fail = len(flaky.calls) + 2
    n = len(flaky.calls)
    await clock.advance(10)
    gaps = [b - a for a, b in zip(flaky.calls[n - 1 :], flaky.calls[n:], strict=False)]
    assert gaps[:3] == [1, 1, 2]
    await sup.stop(grace_s=1)


async def test_a_persistent_failure_is_logged_once_then_summarised() -> None:
    clock = FakeClock()
    health = Health(clock=clock)
    flaky = Flaky(fail=10_000)
    flaky.clock = clock
    sup = Supervisor(workers=[flaky], clock=clock, health=health)
    with capture_logs() as logs:
        sup.start()
        await clock.advance(0)
        for _ in range(60):  # ten minutes, a try every 60 s at the cap
            await clock.advance(10)
        await sup.stop(grace_s=1)
    assert len(flaky.calls) >= 15
    lines = [e for e in logs if e["event"] == "worker_failed"]
    assert "exc_info" in lines[0]
    assert all("exc_info" not in e for e in lines[1:])
    assert len(lines) <= 12  # one, then a summary a minute at most


async def test_a_persistent_failure_reads_as_backing_off_then_its_last_error() -> None:
    clock = FakeClock()
    health = Health(clock=clock, margin_s=5)
    flaky = Flaky(fail=1000, error="database is locked")
    flaky.clock = clock
    sup = Supervisor(workers=[flaky], clock=clock, health=health)
    sup.start()
    await clock.advance(0)
    row = health.snapshot().worker("flaky")
    assert row.state is State.BACKING_OFF
    assert row.backoff_reason == "RuntimeError: database is locked"
    # Never any progress: once its tries keep failing it is stalled, not "running".
    await clock.advance(200)
    snap = health.snapshot()
    assert not snap.healthy
    assert snap.worker("flaky").last_error == "RuntimeError: database is locked"
    await sup.stop(grace_s=1)


class InFlight:
    """A round that blocks until released: a request or a write in flight."""

    name = "inflight"
    expected_round_s = 5.0

    def __init__(self) -> None:
        self.started = asyncio.Event()
        self.release = asyncio.Event()
        self.finished = 0
        self.cancelled = False

    async def round(self) -> RoundResult:
        self.started.set()
        try:
            await self.release.wait()
        except asyncio.CancelledError:
            self.cancelled = True
            raise
        self.finished += 1
        return RoundResult(sleep_s=5.0, progressed=1)


async def test_stop_lets_a_round_in_flight_finish_within_the_grace() -> None:
    clock = FakeClock()
    health = Health(clock=clock)
    w = InFlight()
    sup = Supervisor(workers=[w], clock=clock, health=health)
    sup.start()
    await w.started.wait()
    stopping = asyncio.create_task(sup.stop(grace_s=10))
    await clock.advance(3)
    assert not stopping.done()
    w.release.set()
    await stopping
    assert w.finished == 1 and not w.cancelled
    assert health.snapshot().worker("inflight").state is State.STOPPED


async def test_stop_cancels_a_round_that_outlives_the_grace() -> None:
    clock = FakeClock()
    health = Health(clock=clock)
    w, steady = InFlight(), Steady()
    sup = Supervisor(workers=[w, steady], clock=clock, health=health)
    sup.start()
    await w.started.wait()
    with capture_logs() as logs:
        stopping = asyncio.create_task(sup.stop(grace_s=10))
        await clock.advance(11)
        await stopping
    assert w.cancelled and w.finished == 0
    assert all(t.done() for t in sup.tasks.values())
    assert [e["workers"] for e in logs if e["event"] == "workers_cancelled"] == [
        ["worker:inflight"]
    ]


async def test_cancel_now_is_immediate_and_not_swallowed() -> None:
    clock = FakeClock()
    health = Health(clock=clock)
    w = InFlight()
    sup = Supervisor(workers=[w], clock=clock, health=health)
    sup.start()
    await w.started.wait()
    sup.cancel_now()
    await sup.wait()
    assert w.cancelled
    assert sup.tasks["inflight"].cancelled()


async def test_a_failing_restart_record_does_not_kill_the_loop() -> None:
    clock = FakeClock()
    health = Health(clock=clock)
    flaky = Flaky(fail=1)
    flaky.clock = clock

    async def on_restart(name: str, error: str) -> None:
        raise OSError("disk full")

    sup = Supervisor(workers=[flaky], clock=clock, health=health, on_restart=on_restart)
    with capture_logs() as logs:
        sup.start()
        await clock.advance(0)
        await clock.advance(5)
        await sup.stop(grace_s=1)
    assert flaky.ok >= 3
    assert any(e["event"] == "restart_not_recorded" for e in logs)


async def test_idle_rounds_keep_a_worker_healthy_and_empty_ones_do_not() -> None:
    clock = FakeClock()
    health = Health(clock=clock, margin_s=5, margin_factor=0)

    class Idle:
        name = "idle"
        expected_round_s = 10.0

        async def round(self) -> RoundResult:
            return RoundResult(sleep_s=10.0, idle=True)

    class Empty:
        name = "empty"
        expected_round_s = 10.0

        async def round(self) -> RoundResult:
            return RoundResult(sleep_s=10.0)  # neither progress nor idle: a skipped batch

    sup = Supervisor(workers=[Idle(), Empty()], clock=clock, health=health)
    sup.start()
    await clock.advance(0)
    await clock.advance(60)
    snap = health.snapshot()
    assert snap.worker("idle").state is State.RUNNING
    assert snap.worker("empty").state is State.STALLED
    await sup.stop(grace_s=1)
