"""End to end: the simulator over loopback -> the real daemon -> a real SQLite file.

Time is accelerated in the simulator (a Keepa minute lasts 0.1 s) and the
daemon's intervals are a second; nothing in between is replaced.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import sys
import time
import zlib
from pathlib import Path

import pytest
from helpers import (
    SAMPLE_ASINS,
    NotifyListener,
    Running,
    counts,
    db_query,
    sample_bytes,
    sim_options,
    wait_for,
    write_config,
)

from dealsd.clock import iso_utc
from dealsd.config import load_config
from dealsd.notify import Notifier
from dealsd.simulator import Simulator


def catalogue_size(sim: Simulator) -> int:
    return int(sim.options.catalogue_size)


async def test_first_run_fills_the_table_and_backfills_it(sim: Simulator, tmp_path: Path) -> None:
    path = write_config(tmp_path, sim.base_url)
    cfg = load_config(path)
    db = tmp_path / "deals.db"
    d = Running(cfg, path)
    await wait_for(lambda: counts(db)[0] > 0 and counts(db)[0] == counts(db)[1], 15, "backfill")
    assert await d.finish() == 0
    total, backfilled = counts(db)
    assert total == backfilled > 150  # more than one page, all of it backfilled
    # Every deal has its history: the product exactly as Keepa sent it, zlib-compressed.
    rows = db_query(db, "SELECT asin, payload FROM product_history")
    deals = {r["asin"] for r in db_query(db, "SELECT asin FROM deals")}
    assert {r["asin"] for r in rows} == deals and len(rows) == total
    for r in rows:
        assert json.loads(zlib.decompress(r["payload"]))["asin"] == r["asin"]
    # Nothing bought twice in one uninterrupted run.
    assert max(sim.products_bought.values()) == 1
    daemon = db_query(db, "SELECT stopped_at, healthy FROM daemon")[0]
    assert daemon["stopped_at"] is not None
    ledger = db_query(db, "SELECT endpoint, sum(tokens) FROM token_ledger GROUP BY endpoint")
    assert {r[0] for r in ledger} == {"deal", "product"}


async def test_derived_columns_of_the_real_samples_flow_through(
    sim: Simulator, tmp_path: Path
) -> None:
    # The parameters B0D8W1YVBX was recorded with: the simulator then answers
    # exactly the recorded product (without them, no buy box, no rating).
    path = write_config(tmp_path, sim.base_url, backfiller="buybox = true\nrating = true")
    db = tmp_path / "deals.db"
    d = Running(load_config(path), path)

    def both_backfilled() -> bool:
        if not db.exists():
            return False
        try:
            rows = db_query(
                db,
                "SELECT count(*) FROM deals WHERE asin IN (?, ?) AND backfilled_at IS NOT NULL",
                SAMPLE_ASINS,
            )
        except sqlite3.OperationalError:
            return False
        return int(rows[0][0]) == 2

    await wait_for(both_backfilled, 15, "the two real products")
    assert await d.finish() == 0
    found = db_query(db, "SELECT * FROM deals WHERE asin IN (?, ?)", SAMPLE_ASINS)
    rows = {r["asin"]: r for r in found}
    # Values read by hand from dealsd/samples/product_B0D8W1YVBX.json.
    a = rows["B0D8W1YVBX"]
    assert a["avg90_new_cents"] == 1797
    assert a["avg90_buy_box_cents"] == 1805
    assert a["sales_rank_drops_30"] == 35
    assert a["offer_count_new"] == 5
    assert a["fba_fee_cents"] == 409
    assert a["referral_fee_pct"] == pytest.approx(15.01)
    b = rows["B0F7XPYCSJ"]
    assert b["buy_box_cents"] is None  # buyBoxPrice -2: not available, never a price
    payload = db_query(db, "SELECT payload FROM product_history WHERE asin = ?", ("B0D8W1YVBX",))
    sample = sample_bytes("B0D8W1YVBX")
    stored = json.loads(zlib.decompress(payload[0]["payload"]))
    assert stored == json.loads(sample)["products"][0]


async def test_a_restart_resumes_from_its_checkpoints(sim: Simulator, tmp_path: Path) -> None:
    path = write_config(tmp_path, sim.base_url, max_batch=10)
    cfg = load_config(path)
    db = tmp_path / "deals.db"
    d = Running(cfg, path)
    await wait_for(lambda: counts(db)[1] >= 40, 15, "a partial backfill")
    assert await d.finish() == 0
    first_bought = sum(sim.products_bought.values())
    pages_first = sim.stats()["deal_pages"]
    d = Running(cfg, path)
    await wait_for(lambda: counts(db)[0] > 0 and counts(db)[0] == counts(db)[1], 15, "backfill")
    assert await d.finish() == 0
    twice = {a: n for a, n in sim.products_bought.items() if n > 1}
    # At most the batch in flight when the first run stopped is bought again.
    assert len(twice) <= 10, twice
    assert sum(sim.products_bought.values()) - first_bought <= counts(db)[0] - 40 + 10
    # The second run's upserter did not page the whole result again: it had a
    # watermark, and sortType 1 stops at the first deal not newer than it.
    assert sim.stats()["deal_pages"] - pages_first <= 3 * 4


async def test_missing_and_invalid_products_are_retried_then_given_up(tmp_path: Path) -> None:
    s = Simulator(sim_options(catalogue_size=200, missing_rate=0.1, invalid_rate=0.05))
    await s.start("127.0.0.1", 0)
    try:
        path = write_config(tmp_path, s.base_url)
        db = tmp_path / "deals.db"
        d = Running(load_config(path), path)

        def settled() -> bool:
            try:
                rows = db_query(
                    db,
                    "SELECT count(*) FROM deals WHERE backfilled_at IS NULL "
                    "AND backfill_attempts < 2",
                )
            except sqlite3.OperationalError:
                return False
            # Every deal stored first: the first round's pages (newest first,
            # then the whole result) must not end between two page writes.
            return counts(db)[0] == 200 and int(rows[0][0]) == 0

        await wait_for(settled, 15, "every product backfilled or given up")
        assert await d.finish() == 0
    finally:
        await s.stop()
    gave_up = db_query(
        db, "SELECT asin, backfill_attempts, backfill_error FROM deals WHERE backfilled_at IS NULL"
    )
    assert gave_up, "the simulator withheld some products"
    for r in gave_up:
        assert r["backfill_attempts"] == 2 and r["backfill_error"]
    # Asked once per attempt, never more.
    assert all(n <= 2 for n in s.products_bought.values())


async def test_janitor_prunes_while_healthy_and_pauses_during_an_outage(
    sim: Simulator, tmp_path: Path
) -> None:
    path = write_config(tmp_path, sim.base_url)
    db = tmp_path / "deals.db"
    # Retries after the outage come within a second, so the test need not
    # wait out the production backoff (1 s doubling to 60 s).
    d = Running(load_config(path), path, backoff_cap_s=1.0)
    await wait_for(lambda: counts(db)[0] > 0, 10, "first deals")
    old = iso_utc(time.time() - 100 * 3600)

    def plant(prefix: str) -> None:
        conn = sqlite3.connect(db, timeout=10)
        with conn:
            conn.executemany(
                "INSERT INTO deals (asin, domain_id, first_seen_at, last_seen_at) "
                "VALUES (?, 1, ?, ?)",
                [(f"{prefix}{i:05d}", old, old) for i in range(30)],
            )
        conn.close()

    def planted(prefix: str) -> int:
        sql = "SELECT count(*) FROM deals WHERE asin LIKE ?"
        return int(db_query(db, sql, (prefix + "%",))[0][0])

    plant("STALEA")
    await wait_for(lambda: planted("STALEA") == 0, 10, "stale rows pruned while healthy")
    live = counts(db)[0]
    sim.control(outage=True)
    await asyncio.sleep(3.5)  # past 2 x interval + a failed round's grace (3 s)
    plant("STALEB")
    await asyncio.sleep(2.2)  # two janitor rounds
    assert planted("STALEB") == 30, "the janitor pruned during an ingestion outage"
    assert counts(db)[0] == live + 30
    sim.control(outage=False)
    await wait_for(lambda: planted("STALEB") == 0, 10, "pruning resumed after the outage")
    assert await d.finish() == 0


async def test_sigterm_with_work_in_flight_exits_zero_with_everything_committed(
    sim: Simulator, tmp_path: Path
) -> None:
    path = write_config(tmp_path, sim.base_url, max_batch=50)
    db = tmp_path / "deals.db"
    env = dict(os.environ, KEEPA_API_KEY="test-key", PYTHONUNBUFFERED="1")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "dealsd", "run", "--config", str(path),
        env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        await wait_for(lambda: counts(db)[1] >= 20, 15, "backfill under way")
        proc.send_signal(signal.SIGTERM)
        _out, err = await asyncio.wait_for(proc.communicate(), 20)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 0, err.decode()[-3000:]
    assert b"test-key" not in err
    daemon = db_query(db, "SELECT stopped_at FROM daemon")[0]
    assert daemon["stopped_at"] is not None
    # Every product stored has its deal marked backfilled, in the same commit.
    orphans = db_query(
        db,
        "SELECT count(*) FROM product_history p JOIN deals d USING (asin) "
        "WHERE d.backfilled_at IS NULL",
    )
    assert orphans[0][0] == 0
    assert db_query(db, "PRAGMA integrity_check")[0][0] == "ok"
    # Whatever was bought and not stored is at most the batch in flight.
    stored = int(db_query(db, "SELECT count(*) FROM product_history")[0][0])
    bought = sum(sim.products_bought.values())
    assert bought - stored <= 50


async def test_systemd_ready_status_and_a_watchdog_that_outlives_a_keepa_outage(
    sim: Simulator, tmp_path: Path
) -> None:
    srv = NotifyListener(tmp_path)
    drain, seen, got = srv.drain, srv.seen, srv.got

    path = write_config(tmp_path, sim.base_url)
    db = tmp_path / "deals.db"
    notifier = Notifier(srv.addr, watchdog_interval_s=0.2)
    d = Running(load_config(path), path, notifier=notifier, health_margin_s=1.5, backoff_cap_s=1.0)
    try:
        await wait_for(lambda: seen("READY=1"), 10, "READY=1")
        await wait_for(lambda: counts(db)[0] > 0 and seen("WATCHDOG=1"), 10, "a watchdog ping")
        assert any(m.startswith("STATUS=deals=") for m in got)
        sim.control(outage=True)  # the upserter stalls, but keeps trying
        await wait_for(
            lambda: any(m.startswith("STATUS=") and "UNHEALTHY" in m for m in drain()),
            10,
            "an unhealthy STATUS=",
        )
        drain()
        await asyncio.sleep(1.0)
        # This asserted "no WATCHDOG=1" while stalled: that turned every Keepa
        # outage into a restart cycle (issue 18, point 5). A worker retrying on
        # schedule is not wedged, so the pings go on (tests/test_watchdog.py).
        assert "WATCHDOG=1" in drain()
        sim.control(outage=False)
        await wait_for(
            lambda: any(m.startswith("STATUS=") and m.endswith(" healthy") for m in drain()),
            10,
            "a healthy STATUS= once Keepa is back",
        )
        assert await d.finish() == 0
        assert seen("STOPPING=1")
    finally:
        srv.close()


async def test_a_refused_key_reads_unhealthy_but_the_watchdog_keeps_going(
    tmp_path: Path,
) -> None:
    # A restart cannot fix a key: systemd must not kill the service every
    # watchdog period for it, while STATUS= names the cause for the operator.
    srv = NotifyListener(tmp_path)
    drain, got = srv.drain, srv.got

    def status_names_the_key() -> bool:
        drain()
        return any(m.startswith("STATUS=") and "access denied" in m for m in got)

    s = Simulator(sim_options(api_keys=frozenset({"someone-else"})))
    await s.start("127.0.0.1", 0)
    path = write_config(tmp_path, s.base_url)
    notifier = Notifier(srv.addr, watchdog_interval_s=0.2)
    # Stall windows of a few seconds (upserter 1 s rounds, margin 1.5 s): the
    # workers' 600 s access-denied pauses outlast them many times over.
    d = Running(load_config(path), path, notifier=notifier, health_margin_s=1.5, backoff_cap_s=1.0)
    try:
        await wait_for(status_names_the_key, 10, "an unhealthy STATUS= naming the refused key")
        drain()
        await asyncio.sleep(4.0)  # longer than every worker's stall window
        later = drain()
        assert "WATCHDOG=1" in later, later
        statuses = [m for m in later if m.startswith("STATUS=")]
        assert not any("stalled" in m for m in statuses), statuses
        daemon = db_query(tmp_path / "deals.db", "SELECT healthy, snapshot FROM daemon")[0]
        snapshot = json.loads(daemon["snapshot"])
        assert daemon["healthy"] == 0
        assert [c for c in snapshot["causes"] if "stalled" not in c] == snapshot["causes"]
        assert any("keepa access denied" in c for c in snapshot["causes"])
        assert await d.finish() == 0
    finally:
        srv.close()
        await s.stop()


async def test_profit_follows_the_current_price_after_deals_change(tmp_path: Path) -> None:
    # Deals keep changing price; each upsert of a backfilled deal recomputes
    # profit from its new current price (docs/field-notes.md #8: never a stale 0).
    s = Simulator(sim_options(catalogue_size=160, changed_deals_per_period=10))
    await s.start("127.0.0.1", 0)
    try:
        # The simulated products have no used-price history: resell as new.
        # No closing fee: the formula below is the one this test is about.
        path = write_config(
            tmp_path, s.base_url, extra='[profit]\nreference = "new"\nclosing_fee_cents = 0\n'
        )
        db = tmp_path / "deals.db"
        d = Running(load_config(path), path)
        await wait_for(lambda: counts(db)[1] >= 150, 10, "a backfill")
        backfilled_at = time.time()
        await asyncio.sleep(2.5)  # two more upserter rounds of changed prices
        assert await d.finish() == 0
    finally:
        await s.stop()
    rows = db_query(
        db,
        "SELECT asin, current_used_cents, avg90_new_cents, referral_fee_pct, fba_fee_cents, "
        "expected_sale_cents, profit_cents, last_seen_at, backfilled_at FROM deals "
        "WHERE backfilled_at IS NOT NULL AND current_used_cents IS NOT NULL "
        "AND avg90_new_cents > 0",
    )
    assert rows
    updated_after = [r for r in rows if r["last_seen_at"] > iso_utc(backfilled_at)]
    assert updated_after, "no backfilled deal was seen again"
    for r in rows:
        sale = r["avg90_new_cents"]
        pct = r["referral_fee_pct"] if r["referral_fee_pct"] is not None else 15.0
        fees = round(sale * pct / 100) + (r["fba_fee_cents"] or 0)
        assert r["expected_sale_cents"] == sale
        assert r["profit_cents"] == sale - r["current_used_cents"] - fees, dict(r)


async def test_a_changed_selection_starts_afresh(tmp_path: Path) -> None:
    s = Simulator(sim_options(catalogue_size=160))
    await s.start("127.0.0.1", 0)
    try:
        path = write_config(tmp_path, s.base_url)
        db = tmp_path / "deals.db"

        def marks(suffix: str = "watermark") -> list[str]:
            try:
                rows = db_query(db, f"SELECT name FROM checkpoints WHERE name LIKE '%.{suffix}'")
            except sqlite3.OperationalError:
                return []
            return sorted(r[0] for r in rows)

        d = Running(load_config(path), path)
        await wait_for(lambda: len(marks()) == 1, 10, "a first watermark")
        assert await d.finish() == 0
        first = marks()
        walked = marks("full_pass_at")
        pages = s.stats()["deal_pages"]
        # Same selection plus one more filter: the old watermark says nothing
        # about this query's results, so it pages the whole result again.
        text = path.read_text().replace("sortType = 1", "sortType = 1\nhasReviews = false")
        path.write_text(text)
        d = Running(load_config(path), path)
        await wait_for(lambda: len(marks()) == 2, 10, "a second watermark")
        # The first poll of the new query only learns its watermark; its own full
        # pass (cursor from page 0, not the old query's) walks the whole result.
        await wait_for(lambda: len(marks("full_pass_at")) == len(walked) + 1, 10, "a new full pass")
        assert await d.finish() == 0
    finally:
        await s.stop()
    assert first[0] in marks()
    # 160 deals: the fresh poll's page 0, then the full pass's pages 0 and 1
    assert s.stats()["deal_pages"] - pages >= 3
