"""A paid product is never lost to one odd field (a JSON null, a string where a
number belongs): the backfiller stores it with its payload, that field alone
NULL, the oddity named in ``unreadable_fields``, counted in ``status`` and
logged once per kind, not once per product.
"""

from __future__ import annotations

import json
import sqlite3
import zlib
from pathlib import Path

import structlog
from helpers import StartSim, worker_parts

from dealsd.clock import iso_utc
from dealsd.config import BackfillerConfig, ProfitConfig
from dealsd.simulator import Faults
from dealsd.status import read_status, render
from dealsd.store import liveness
from dealsd.workers.backfiller import Backfiller


async def test_odd_products_are_stored_counted_and_logged_once(
    start_sim: StartSim, tmp_path: Path
) -> None:
    # Every product the simulator sends lies in one of its four ways.
    sim = await start_sim(refill_rate=5000, catalogue_size=120, faults=Faults(bad_items=1.0))
    asins = sorted(sim.catalogue.by_asin)[:60]
    async with worker_parts(sim.base_url, tmp_path / "deals.db", name="backfiller") as w:
        clock, store = w.clock, w.store
        now = iso_utc(clock.now())

        def seed(conn: sqlite3.Connection) -> None:
            conn.executemany(
                "INSERT INTO deals (asin, domain_id, current_used_cents, keepa_last_update, "
                "first_seen_at, last_seen_at) VALUES (?, 1, 900, ?, ?, ?)",
                [(a, now, now, now) for a in asins],
            )

        await store.write(seed)
        await w.client.token_status()
        bf = Backfiller(
            client=w.client, tokens=w.tokens, store=store, clock=clock,
            config=BackfillerConfig(max_batch=60, min_batch=60), price_type=2,
            profit=ProfitConfig(), health=w.health,
        )  # fmt: skip
        with structlog.testing.capture_logs() as logs:
            await bf.round()
        rows = await store.read(
            lambda c: [dict(zip([d[0] for d in cur.description], r, strict=True))
                       for cur in [c.execute("SELECT * FROM deals")] for r in cur.fetchall()]
        )  # fmt: skip
        summary = await store.read(lambda c: liveness.status_summary(c, now=clock.now()))
        histories = await store.read(
            lambda c: dict(c.execute("SELECT asin, payload FROM product_history").fetchall())
        )
    odd = [r for r in rows if r["unreadable_fields"] is not None]
    kinds = {r["unreadable_fields"] for r in odd}
    # The three readable lies, each named as the field that could not be read.
    assert kinds == {"stats.avg90", "lastUpdate,stats.salesRankDrops90", "productType"}, kinds
    for r in odd:
        assert r["backfilled_at"] is not None and r["backfill_attempts"] == 0
        # The payload is stored exactly as sent, oddity included.
        stored = json.loads(zlib.decompress(histories[r["asin"]]))
        assert stored["asin"] == r["asin"]
        if r["unreadable_fields"] == "stats.avg90":
            assert stored["stats"]["avg90"][1] == "n/a"
            assert r["avg90_new_cents"] is None  # the odd entry alone is NULL ...
            assert r["avg90_sales_rank"] is not None  # ... its neighbours were read
        if r["unreadable_fields"].startswith("lastUpdate"):
            assert stored["lastUpdate"] is None and stored["stats"]["salesRankDrops90"] is None
            assert r["sales_rank_drops_90"] is None
            assert r["sales_rank_drops_30"] is not None
            assert r["est_sales_per_month"] == r["sales_rank_drops_30"]  # the next window
    # Only a product without its asin could not be stored: it is retried later.
    lost = [r for r in rows if r["backfilled_at"] is None]
    assert all(r["backfill_attempts"] == 1 for r in lost)
    assert len(odd) + len(lost) == len(asins)
    assert summary["deals"]["unreadable_fields"] == len(odd)
    # ... and `dealsd status` shows it.
    doc = read_status(tmp_path / "deals.db")
    assert doc.deals.unreadable_fields == len(odd)
    assert f"products with unreadable Keepa fields: {len(odd)}" in render(doc)
    # Said once per kind of oddity, then counted: not one line per product.
    lines = [e for e in logs if e["event"] == "product_fields_unreadable"]
    assert sorted(e["fields"] for e in lines) == sorted(kinds)
    assert bf.unreadable_products == len(odd) > len(lines)
