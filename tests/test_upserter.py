"""The upserter's rounds against the simulator over loopback and a real SQLite file.

Its contract (dealsd/workers/upserter.py): a pass pages /deal from page 0
until a short page, the watermark or ``max_pages_per_run``; each page is one
write holding its deals and the checkpoints, so a restart resumes at the next
page; checkpoints are named by the selection's hash, so a changed selection
starts afresh. Only ``round()`` is used here, as the supervisor uses it.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from helpers import StartSim, WorkerParts, db_query, one_selection, worker_parts

from dealsd.config import UpserterConfig
from dealsd.simulator import Simulator
from dealsd.store import feed
from dealsd.workers.base import RoundResult
from dealsd.workers.upserter import Upserter

INTERVAL_S = 300
NEWEST_FIRST: dict[str, Any] = {"priceTypes": [2], "sortType": 1}
# 400 deals are two full pages of 150 and a short one of 100.
CATALOGUE = 400

Round = Callable[..., Awaitable[RoundResult]]


@pytest.fixture
async def sim(start_sim: StartSim) -> Simulator:
    return await start_sim(catalogue_size=CATALOGUE)


def upserter(parts: WorkerParts, **config: Any) -> Upserter:
    """An Upserter; ``full_pass_h`` 0 unless given: every round one pass in the
    selection's order (the tests of the pass itself; tests/test_funnel.py has the
    fresh and full passes together)."""
    config.setdefault("full_pass_h", 0)
    cfg = UpserterConfig(interval_s=INTERVAL_S, **config)
    return Upserter(
        client=parts.client, tokens=parts.tokens, store=parts.store, clock=parts.clock,
        selection=one_selection(cfg), health=parts.health,
    )  # fmt: skip


@pytest.fixture
def upserter_round(sim: Simulator, tmp_path: Path) -> Round:
    """``await upserter_round(selection=..., max_pages_per_run=...)``: one round of a
    fresh Upserter, as after a restart: new parts and a reopened store each time."""

    async def one_round(
        selection: dict[str, Any] = NEWEST_FIRST, max_pages_per_run: int = 67
    ) -> RoundResult:
        async with worker_parts(
            sim.base_url, tmp_path / "deals.db", name="upserter", expected_round_s=INTERVAL_S
        ) as parts:
            return await upserter(
                parts, selection=selection, max_pages_per_run=max_pages_per_run
            ).round()

    return one_round


def stored(tmp_path: Path) -> int:
    return int(db_query(tmp_path / "deals.db", "SELECT count(*) FROM deals")[0][0])


def checkpoints(tmp_path: Path) -> dict[str, str]:
    rows = db_query(tmp_path / "deals.db", "SELECT name, value FROM checkpoints")
    return {r["name"]: r["value"] for r in rows}


def cursor(tmp_path: Path) -> dict[str, Any]:
    """The one selection's page cursor (there must be exactly one)."""
    found = [json.loads(v) for n, v in checkpoints(tmp_path).items() if n.endswith(".cursor")]
    assert len(found) == 1, checkpoints(tmp_path)
    return dict(found[0])


def watermark(tmp_path: Path) -> int | None:
    found = [int(v) for n, v in checkpoints(tmp_path).items() if n.endswith(".watermark")]
    assert len(found) <= 1, checkpoints(tmp_path)
    return found[0] if found else None


def newest_found(sim: Simulator) -> int:
    """The newest creationDate listed: what newest first is ordered by, and the watermark."""
    return max(int(d["creationDate"]) for d in sim.catalogue.deals if d["current"][2] > 0)


async def test_a_pass_pages_until_the_short_page_then_sets_the_watermark(
    sim: Simulator, tmp_path: Path, upserter_round: Round
) -> None:
    listed = sum(1 for d in sim.catalogue.deals if d["current"][2] > 0)
    assert listed == CATALOGUE  # every deal is listed under the used price
    result = await upserter_round()
    assert sim.stats()["deal_pages"] == 3  # 150 + 150 + 100: the short page ends it
    assert stored(tmp_path) == CATALOGUE
    assert result == RoundResult(sleep_s=INTERVAL_S)  # a finished pass waits an interval
    assert cursor(tmp_path) == {"page": None}
    assert watermark(tmp_path) == newest_found(sim)
    # The ledger has one paid row per page, written with the page's deals.
    ledger = db_query(tmp_path / "deals.db", "SELECT endpoint, items FROM token_ledger")
    assert [(r["endpoint"], r["items"]) for r in ledger] == [("deal", 1)] * 3


async def test_each_page_is_one_write_with_its_deals_and_the_cursor(
    sim: Simulator, tmp_path: Path
) -> None:
    # After every write, what the database holds: the deals and the cursor
    # must move together, page by page.
    after_writes: list[tuple[int, str | None]] = []

    def look(conn: sqlite3.Connection) -> tuple[int, str | None]:
        n = int(conn.execute("SELECT count(*) FROM deals").fetchone()[0])
        cps = feed.get_checkpoints(conn)
        return n, next((v for k, v in cps.items() if k.endswith(".cursor")), None)

    async with worker_parts(
        sim.base_url, tmp_path / "deals.db", name="upserter", expected_round_s=INTERVAL_S
    ) as parts:
        store, real_write = parts.store, parts.store.write

        async def write(fn: Callable[[sqlite3.Connection], Any]) -> Any:
            result = await real_write(fn)
            after_writes.append(await store.read(look))
            return result

        store.write = write  # type: ignore[method-assign]
        await upserter(parts, selection=NEWEST_FIRST).round()
    pages = [(n, json.loads(c)["page"]) for n, c in after_writes if c is not None]
    assert pages == [(150, 1), (300, 2), (400, None)], after_writes


async def test_a_restart_mid_pass_resumes_at_the_next_page(
    sim: Simulator, tmp_path: Path, upserter_round: Round
) -> None:
    result = await upserter_round(max_pages_per_run=1)
    assert stored(tmp_path) == 150 and sim.stats()["deal_pages"] == 1
    assert cursor(tmp_path)["page"] == 1
    assert watermark(tmp_path) is None  # only a finished pass sets it
    assert result.sleep_s < INTERVAL_S  # a pass cut short goes on soon
    # A new Upserter on the reopened file: page 1, not page 0 again.
    await upserter_round(max_pages_per_run=1)
    assert stored(tmp_path) == 300 and sim.stats()["deal_pages"] == 2
    assert cursor(tmp_path)["page"] == 2
    result = await upserter_round(max_pages_per_run=1)
    assert stored(tmp_path) == CATALOGUE and sim.stats()["deal_pages"] == 3
    assert cursor(tmp_path) == {"page": None}
    # The pass's newest deal was carried in the cursor across the restarts.
    assert watermark(tmp_path) == newest_found(sim)
    assert result.sleep_s == INTERVAL_S


async def test_max_pages_per_run_cuts_a_pass_into_rounds(
    sim: Simulator, tmp_path: Path, upserter_round: Round
) -> None:
    first = await upserter_round(max_pages_per_run=2)
    assert sim.stats()["deal_pages"] == 2 and stored(tmp_path) == 300
    assert first.sleep_s < INTERVAL_S
    second = await upserter_round(max_pages_per_run=2)
    assert sim.stats()["deal_pages"] == 3 and stored(tmp_path) == CATALOGUE
    assert second.sleep_s == INTERVAL_S


async def test_the_next_pass_stops_at_the_watermark(
    sim: Simulator, tmp_path: Path, upserter_round: Round
) -> None:
    await upserter_round()
    assert sim.stats()["deal_pages"] == 3
    # Nothing newer since: page 0 already reaches the watermark.
    result = await upserter_round()
    assert sim.stats()["deal_pages"] == 4
    assert result.sleep_s == INTERVAL_S and cursor(tmp_path) == {"page": None}


async def test_without_newest_first_every_pass_pages_the_whole_result(
    sim: Simulator, tmp_path: Path, upserter_round: Round
) -> None:
    biggest_drop = {"priceTypes": [2], "sortType": 4}
    await upserter_round(selection=biggest_drop)
    await upserter_round(selection=biggest_drop)
    # A watermark means nothing in another order: both passes page all 3.
    assert sim.stats()["deal_pages"] == 6
    assert stored(tmp_path) == CATALOGUE


async def test_a_changed_selection_starts_afresh(
    sim: Simulator, tmp_path: Path, upserter_round: Round
) -> None:
    await upserter_round()  # a finished pass: a watermark for NEWEST_FIRST
    old = checkpoints(tmp_path)
    # The same deals asked another way (isRangeEnabled is Keepa's default):
    # another query, so its own checkpoints and no watermark to trust.
    changed = {**NEWEST_FIRST, "isRangeEnabled": True}
    await upserter_round(selection=changed, max_pages_per_run=1)
    assert sim.stats()["deal_pages"] == 4  # page 0 of the new selection
    now = checkpoints(tmp_path)
    assert old.items() <= now.items()  # the old selection's checkpoints untouched
    new = {k: json.loads(v) for k, v in now.items() if k not in old}
    # Newest first, page 0 holds the newest deal of all: the pass's max so far.
    assert list(new.values()) == [{"page": 1, "max": newest_found(sim)}], new
    assert next(iter(new)).endswith(".cursor")
