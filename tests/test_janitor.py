"""The janitor's rounds against a real SQLite file, in fake time.

Its contract (dealsd/workers/janitor.py): a deal not seen for ``grace_h``
hours is deleted with its product history, in chunks; fresh deals stay; it
prunes only while the upserter has succeeded recently (docs/field-notes.md
#6), and says so once when it pauses; the cutoff follows the upserter's last
success, so a wall clock jumping forward ages nothing. Only ``round()`` is used.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from helpers import db_query
from structlog.testing import capture_logs

from dealsd.clock import FakeClock, iso_utc
from dealsd.config import JanitorConfig
from dealsd.store import Store
from dealsd.workers.health import Health
from dealsd.workers.janitor import Janitor

UPSERTER_ROUND_S = 300.0
HOUR = 3600.0


@pytest.fixture
def health(clock: FakeClock) -> Health:
    h = Health(clock=clock)
    h.register("upserter", expected_round_s=UPSERTER_ROUND_S)
    return h


def janitor(store: Store, clock: FakeClock, health: Health, **config: float) -> Janitor:
    cfg = JanitorConfig(**{"grace_h": 1.0, "interval_s": 60, **config})  # type: ignore[arg-type]
    return Janitor(store=store, clock=clock, config=cfg, health=health)


async def seed(store: Store, clock: FakeClock, seen_ago_s: dict[str, float]) -> None:
    """One deal per ASIN, last seen that many seconds ago, each with its product history."""

    def write(conn: sqlite3.Connection) -> None:
        for asin, ago in seen_ago_s.items():
            seen = iso_utc(clock.now() - ago)
            conn.execute(
                "INSERT INTO deals (asin, domain_id, first_seen_at, last_seen_at) "
                "VALUES (?, 1, ?, ?)",
                (asin, seen, seen),
            )
            conn.execute(
                # Schema v2: a history is keyed like its deal, (domain_id, asin).
                "INSERT INTO product_history (domain_id, asin, fetched_at, payload) "
                "VALUES (1, ?, ?, x'00')",
                (asin, seen),
            )

    await store.write(write)


def asins(tmp_path: Path, table: str) -> set[str]:
    return {r[0] for r in db_query(tmp_path / "deals.db", f"SELECT asin FROM {table}")}


STALE = {f"OLD{i:07d}": 2 * HOUR + i for i in range(5)}
FRESH = {f"NEW{i:07d}": 10 * 60.0 + i for i in range(5)}


async def test_prunes_deals_not_seen_for_the_grace_with_their_history(
    store: Store, clock: FakeClock, health: Health, tmp_path: Path
) -> None:
    await seed(store, clock, {**STALE, **FRESH})
    health.progress("upserter", 1, "pages")  # the upserter is looking
    with capture_logs() as logs:
        result = await janitor(store, clock, health).round()
    assert (result.progressed, result.what, result.idle) == (5, "deals", False)
    assert asins(tmp_path, "deals") == set(FRESH)
    assert asins(tmp_path, "product_history") == set(FRESH)  # deleted with its deal
    pruned = [e for e in logs if e["event"] == "janitor_pruned"]
    assert [e["deleted"] for e in pruned] == [5]
    # Nothing left to prune: an idle round, still a sign of life.
    again = await janitor(store, clock, health).round()
    assert again.idle and again.progressed == 0
    assert asins(tmp_path, "deals") == set(FRESH)


async def test_prunes_in_chunks_until_none_is_left(
    store: Store, clock: FakeClock, health: Health, tmp_path: Path
) -> None:
    await seed(store, clock, {**STALE, **FRESH})
    health.progress("upserter", 1, "pages")
    result = await janitor(store, clock, health, chunk=2).round()  # 2 + 2 + 1
    assert result.progressed == 5
    assert asins(tmp_path, "deals") == set(FRESH)


async def test_nothing_is_pruned_before_the_upserter_first_succeeds(
    store: Store, clock: FakeClock, health: Health, tmp_path: Path
) -> None:
    await seed(store, clock, STALE)
    with capture_logs() as logs:
        result = await janitor(store, clock, health).round()
    assert result.idle and result.progressed == 0
    assert asins(tmp_path, "deals") == set(STALE)
    # Right after start, waiting for the upserter is normal: no warning.
    assert not [e for e in logs if e["event"] == "janitor_paused"]


async def test_pauses_while_the_upserter_is_failing_and_says_so_once(
    store: Store, clock: FakeClock, health: Health, tmp_path: Path
) -> None:
    await seed(store, clock, STALE)
    health.progress("upserter", 1, "pages")
    await clock.advance(2 * UPSERTER_ROUND_S + 61)  # past 2 rounds and a failed round's grace
    j = janitor(store, clock, health)
    with capture_logs() as logs:
        first = await j.round()
        second = await j.round()
    assert first.idle and second.idle
    assert asins(tmp_path, "deals") == set(STALE)  # an outage prunes nothing
    assert [e["event"] for e in logs if e["event"].startswith("janitor_")] == ["janitor_paused"]
    health.progress("upserter", 1, "pages")  # ingestion is back
    with capture_logs() as logs:
        result = await j.round()
    assert result.progressed == len(STALE)
    assert asins(tmp_path, "deals") == set()
    assert [e["event"] for e in logs if e["event"].startswith("janitor_")] == [
        "janitor_resumed", "janitor_pruned",
    ]  # fmt: skip


async def test_a_wall_clock_jump_ages_nothing(
    store: Store, clock: FakeClock, health: Health, tmp_path: Path
) -> None:
    await seed(store, clock, FRESH)
    health.progress("upserter", 1, "pages")
    clock.jump_wall(10 * HOUR)  # NTP, a VM resumed: monotonic time did not move
    result = await janitor(store, clock, health).round()
    # The cutoff is the upserter's last success minus the grace, not "now".
    assert result.progressed == 0
    assert asins(tmp_path, "deals") == set(FRESH)


async def test_token_ledger_rows_older_than_a_week_are_pruned(
    store: Store, clock: FakeClock, health: Health, tmp_path: Path
) -> None:
    def ledger(conn: sqlite3.Connection) -> None:
        for days in (8, 6):
            conn.execute(
                "INSERT INTO token_ledger (at, consumer, endpoint, items, tokens) "
                "VALUES (?, 'upserter', 'deal', 1, 5)",
                (iso_utc(clock.now() - days * 86_400),),
            )

    await store.write(ledger)
    health.progress("upserter", 1, "pages")
    await janitor(store, clock, health).round()
    left = db_query(tmp_path / "deals.db", "SELECT at FROM token_ledger")
    assert [r["at"] for r in left] == [iso_utc(clock.now() - 6 * 86_400)]
