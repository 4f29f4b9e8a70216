from __future__ import annotations

import asyncio

import pytest

from dealsd.clock import (
    FakeClock,
    epoch_to_keepa_minutes,
    iso_utc,
    keepa_minutes_to_epoch,
    parse_iso_utc,
    sleep_or_stop,
)


async def test_fake_clock_wakes_sleepers_in_deadline_order() -> None:
    clock = FakeClock()
    woke: list[str] = []

    async def sleeper(name: str, s: float) -> None:
        await clock.sleep(s)
        woke.append(f"{name}@{clock.monotonic() - 1000.0:g}")

    tasks = [asyncio.create_task(sleeper("b", 5)), asyncio.create_task(sleeper("a", 2))]
    await asyncio.sleep(0)
    await clock.advance(1)
    assert woke == []
    await clock.advance(10)
    assert woke == ["a@2", "b@5"]
    assert clock.monotonic() == pytest.approx(1011.0)
    await asyncio.gather(*tasks)


async def test_cancelled_sleeper_is_skipped() -> None:
    clock = FakeClock()
    task = asyncio.create_task(clock.sleep(3))
    await asyncio.sleep(0)
    task.cancel()
    await clock.advance(5)
    assert task.cancelled()
    assert clock.sleepers == 0


async def test_wall_jump_leaves_monotonic_alone() -> None:
    clock = FakeClock()
    mono, wall = clock.monotonic(), clock.now()
    clock.jump_wall(-3600)
    assert clock.monotonic() == mono
    assert clock.now() == wall - 3600


async def test_sleep_or_stop_returns_early_when_stopped() -> None:
    clock = FakeClock()
    stop = asyncio.Event()
    task = asyncio.create_task(sleep_or_stop(clock, stop, 60))
    await asyncio.sleep(0)
    stop.set()
    assert await task is True
    assert await sleep_or_stop(clock, asyncio.Event(), 0) is False


async def test_sleep_or_stop_times_out() -> None:
    clock = FakeClock()
    task = asyncio.create_task(sleep_or_stop(clock, asyncio.Event(), 2))
    await asyncio.sleep(0)
    await clock.advance(2)
    assert await task is False


def test_iso_round_trip_and_format() -> None:
    assert iso_utc(0) == "1970-01-01T00:00:00Z"
    assert parse_iso_utc("2026-05-10T04:19:00Z") == 1778386740.0


def test_keepa_time() -> None:
    # docs/keepa.md: unix_ms = (keepa_minutes + 21564000) * 60000
    assert keepa_minutes_to_epoch(8075762) == (8075762 + 21564000) * 60
    assert iso_utc(keepa_minutes_to_epoch(8075762) or 0) == "2026-05-10T04:02:00Z"
    assert keepa_minutes_to_epoch(-1) is None
    assert keepa_minutes_to_epoch(0) is None
    assert epoch_to_keepa_minutes((8075762 + 21564000) * 60 + 59) == 8075762
