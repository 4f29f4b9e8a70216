"""docs/schema.md's example queries, run against a database dealsd filled itself.

The backfiller buys the two real samples and some of their variations from
the simulator with ``offers`` (so the prices by condition with shipping and
the buy box are there), then every ```sql block of the page is executed and
must return rows, and the Python example runs against the same file.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import sqlite3
from pathlib import Path

from helpers import StartSim, sample_bytes, worker_parts

from dealsd.clock import iso_utc
from dealsd.config import BackfillerConfig, ProfitConfig
from dealsd.workers.backfiller import Backfiller

DOC = Path(__file__).resolve().parent.parent / "docs" / "schema.md"
REAL = ("B0D8W1YVBX", "B0F7XPYCSJ")


def _blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", DOC.read_text(), flags=re.S)


async def _filled(start_sim: StartSim, db: Path) -> None:
    sim = await start_sim(refill_rate=5000, catalogue_size=60)
    asins = [*REAL, *[a for a in sorted(sim.catalogue.by_asin) if a not in REAL][:18]]
    async with worker_parts(sim.base_url, db, name="backfiller", weight=3.0) as w:
        now = iso_utc(w.clock.now())

        def seed(conn: sqlite3.Connection) -> None:
            conn.executemany(
                "INSERT INTO deals (asin, domain_id, title, root_category, current_used_cents, "
                "keepa_last_update, first_seen_at, last_seen_at) "
                "VALUES (?, 1, ?, 283155, 400, ?, ?, ?)",
                [(a, f"title of {a}", now, now, now) for a in asins],
            )

        await w.store.write(seed)
        await w.client.token_status()
        bf = Backfiller(
            client=w.client, tokens=w.tokens, store=w.store, clock=w.clock,
            config=BackfillerConfig(offers=20, min_batch=20, max_batch=20), price_type=2,
            profit=ProfitConfig(reference="new", buy_shipping_cents=399), health=w.health,
        )  # fmt: skip
        await bf.round()


async def test_every_example_query_returns_rows(start_sim: StartSim, tmp_path: Path) -> None:
    db = tmp_path / "deals.db"
    await _filled(start_sim, db)
    queries = _blocks("sql")
    assert len(queries) >= 6
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    conn.row_factory = sqlite3.Row
    results = {}
    for sql in queries:
        rows = conn.execute(sql).fetchall()
        assert rows, sql
        results[sql.splitlines()[0]] = rows
    conn.close()
    by_roi = results["-- The best deals by ROI that sell at least 10 a month."]
    assert all(r["roi_pct"] is not None and r["sales_per_month"] >= 10 for r in by_roi)
    assert [r["roi_pct"] for r in by_roi] == sorted((r["roi_pct"] for r in by_roi), reverse=True)
    by_condition = results["-- Used prices by condition, shipping included, now and over 90 days."]
    assert any(r["good"] is not None for r in by_condition)
    competition = results[
        "-- Little competition: no Amazon offer now, Amazon mostly out of stock, few FBA sellers."
    ]
    assert "B0D8W1YVBX" in {r["asin"] for r in competition}  # 3 FBA offers, Amazon 100 % OOS


async def test_the_python_example_runs(start_sim: StartSim, tmp_path: Path) -> None:
    db = tmp_path / "deals.db"
    await _filled(start_sim, db)
    [code] = _blocks("python")
    assert "/var/lib/dealsd/deals.db" in code
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        # The doc's own code, on this test's file.
        exec(code.replace("/var/lib/dealsd/deals.db", str(db)), {})
    # Counted here from the sample itself: pairs for NEW (1), triples for the
    # buy box (18), an entry whose price is -1 being no offer.
    csv = json.loads(sample_bytes("B0D8W1YVBX"))["products"][0]["csv"]
    new = sum(1 for v in csv[1][1::2] if v != -1)
    buy_box = sum(1 for v in csv[18][1::3] if v != -1)
    title = json.loads(sample_bytes("B0D8W1YVBX"))["products"][0]["title"]
    assert out.getvalue() == f"{title} {new} new-price points, {buy_box} buy box points\n"
    assert buy_box < len(csv[18]) // 2  # what the old `len(csv[t]) // 2` would have said
