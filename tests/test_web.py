"""The web view: Datasette with dealsd's metadata and plugin, on the real samples.

Through Datasette's own test client (no server), then `dealsd web` as a real
process, without Datasette installed, and once in headless Chromium. The
chart's points per series are counted here from the sample's csv arrays.
"""

from __future__ import annotations

import json
import re
import sqlite3
import subprocess
import sys
import time
import urllib.request
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import sample_bytes, sample_database
from screenshot_web import chromium, colours, screenshot, served

from dealsd.clock import iso_utc
from dealsd.store import backfill, feed

datasette_app = pytest.importorskip("datasette.app", reason="the web extra is not installed")

from dealsd.web.app import make_datasette  # noqa: E402  (needs datasette)

ASIN = "B0D8W1YVBX"
PAGE = f"/dealsd/deals/1,{ASIN}"  # the key is (domain_id, asin)
NOW = time.time()


@pytest.fixture
def db(tmp_path: Path) -> Path:
    path = tmp_path / "deals.db"
    sample_database(path, now=NOW)
    return path


@pytest.fixture
def ds(db: Path) -> Iterator[Any]:
    app = make_datasette(db)
    yield app
    app.get_database("dealsd").close()


def write(db: Path, fn: Any) -> None:
    conn = sqlite3.connect(db, isolation_level=None)
    try:
        conn.execute("BEGIN")
        fn(conn)
        conn.execute("COMMIT")
    finally:
        conn.close()


async def rows(ds: Any, path: str) -> list[dict[str, Any]]:
    r = await ds.client.get(path + ("&" if "?" in path else "?") + "_shape=array")
    assert r.status_code == 200, r.text[:500]
    got: list[dict[str, Any]] = r.json()
    return got


def hand_counts(asin: str) -> dict[str, int]:
    """Points with data per series, counted from the raw csv arrays (pairs; buy box triples)."""
    csv = json.loads(sample_bytes(asin))["products"][0]["csv"]

    def pairs(values: list[int] | None) -> int:
        return sum(1 for v in (values or [])[1::2] if v >= 0)

    buy_box = csv[18] or []
    return {
        "new": pairs(csv[1]),
        "used": pairs(csv[2]),
        "buy_box": sum(1 for v in buy_box[1::3] if v >= 0),  # [time, price, shipping]
        "sales_rank": pairs(csv[3]),
    }


def chart_counts(page: str) -> dict[str, int]:
    """Points drawn per series: each point is an M (a run starts) or a V (a step)."""
    paths = re.findall(r'<path class="series" data-series="(\w+)" d="([^"]*)"', page)
    return {name: d.count("M") + d.count("V") for name, d in paths}


async def test_pages_have_dealsd_titles_and_column_help(ds: Any) -> None:
    home = await ds.client.get("/")
    assert home.status_code == 200 and "dealsd" in home.text
    database = await ds.client.get("/dealsd")
    assert database.status_code == 200
    for title in ("Best deals by ROI", "New in the last hour", "The backfill queue",
                  "Keepa tokens per day"):
        assert title in database.text, title  # fmt: skip
    for table, title in (("deals", "Deals"), ("product_history", "Product histories"),
                         ("token_ledger", "Token ledger"), ("workers", "Workers")):
        page = await ds.client.get(f"/dealsd/{table}")
        assert page.status_code == 200
        assert f">{title}</h1>" in page.text, table  # fmt: skip
    table = await ds.client.get("/dealsd/deals")
    assert "sale minus all-in cost minus fees" in table.text  # a column's description
    assert "EQQUALBERRY" in table.text
    history = await ds.client.get("/dealsd/product_history")
    assert "KB of zlib-compressed Keepa JSON" in history.text


async def test_a_deal_page_charts_the_real_history_point_by_point(ds: Any) -> None:
    page = await ds.client.get(PAGE)
    assert page.status_code == 200
    want = hand_counts(ASIN)
    assert want["new"] > 100 and want["buy_box"] > 100 and want["sales_rank"] > 1000
    assert want["used"] == 0  # the sample has no used offer: an empty series
    assert chart_counts(page.text) == want
    assert f'href="https://www.amazon.com/dp/{ASIN}"' in page.text
    assert f'href="https://keepa.com/#!product/1-{ASIN}"' in page.text
    panel = page.text.split("Price history", 1)[1].split("</section>", 1)[0]
    assert "<svg" in panel and "<script" not in panel  # drawn on the server, no JavaScript


async def test_a_deal_not_backfilled_says_so(ds: Any, db: Path) -> None:
    stamp = iso_utc(NOW)
    write(db, lambda c: feed.upsert_deals(
        c, [{"asin": "B000NEW001", "domain_id": 3, "title": "fresh", "last_seen_at": stamp}],
        checkpoints={}, now=stamp))  # fmt: skip
    page = await ds.client.get("/dealsd/deals/3,B000NEW001")
    assert page.status_code == 200
    assert "not been backfilled" in page.text and "<svg" not in page.text
    assert 'href="https://www.amazon.de/dp/B000NEW001"' in page.text


async def test_best_by_roi_orders_by_roi_and_takes_min_sales(ds: Any, db: Path) -> None:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    raw = {asin: (roi, buy, sold) for asin, roi, buy, sold in conn.execute(
        "SELECT asin, roi_pct, buy_price_cents, coalesce(monthly_sold, est_sales_per_month) "
        "FROM deals")}  # fmt: skip
    conn.close()
    assert all(v[0] is not None and v[2] is not None for v in raw.values())
    by_roi = sorted(raw, key=lambda a: -raw[a][0])
    got = await rows(ds, "/dealsd/best_by_roi.json?min_sales_per_month=")
    assert [r["asin"] for r in got] == by_roi
    first = got[0]
    assert first["buy"] == raw[first["asin"]][1] / 100  # money in currency units
    assert first["sales_per_month"] == raw[first["asin"]][2]
    # A threshold between the two samples' sales keeps only the faster seller.
    slow, fast = sorted(raw, key=lambda a: raw[a][2])
    assert raw[slow][2] < raw[fast][2]
    half_way = (raw[slow][2] + raw[fast][2]) // 2 + 1
    kept = await rows(ds, f"/dealsd/best_by_roi.json?min_sales_per_month={half_way}")
    assert [r["asin"] for r in kept] == [fast]


async def test_yen_are_shown_whole_in_the_queries_and_on_the_chart(ds: Any, db: Path) -> None:
    def to_japan(c: sqlite3.Connection) -> None:
        c.execute("UPDATE deals SET domain_id = 5, currency = 'JPY' WHERE asin = ?", (ASIN,))
        c.execute("UPDATE product_history SET domain_id = 5 WHERE asin = ?", (ASIN,))

    write(db, to_japan)
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    [(buy,)] = conn.execute("SELECT buy_price_cents FROM deals WHERE asin = ?", (ASIN,))
    conn.close()
    got = {r["asin"]: r for r in await rows(ds, "/dealsd/best_by_roi.json?min_sales_per_month=")}
    assert (got[ASIN]["buy"], got[ASIN]["currency"]) == (buy, "JPY")  # not buy / 100
    page = await ds.client.get(f"/dealsd/deals/5,{ASIN}")
    assert page.status_code == 200 and f"https://www.amazon.co.jp/dp/{ASIN}" in page.text
    labels = re.findall(r'text-anchor="end">([^<]*)</text>', page.text)
    assert labels and all("." not in label for label in labels), labels
    usd = await ds.client.get(PAGE.replace(ASIN, "B0F7XPYCSJ"))
    usd_labels = re.findall(r'text-anchor="end">([^<]*)</text>', usd.text)
    assert usd_labels and all("." in label for label in usd_labels), usd_labels  # cents


async def test_new_in_the_last_hour(ds: Any, db: Path) -> None:
    old = iso_utc(NOW - 2 * 3600)
    write(db, lambda c: c.execute("UPDATE deals SET first_seen_at = ? WHERE asin = ?",
                                  (old, "B0F7XPYCSJ")))  # fmt: skip
    assert [r["asin"] for r in await rows(ds, "/dealsd/new_last_hour.json")] == [ASIN]


async def test_the_backfill_queue(ds: Any, db: Path) -> None:
    stamp = iso_utc(NOW)

    def queue(c: sqlite3.Connection) -> None:
        for i, asin in enumerate(("BQUEUED001", "BGAVEUP001")):
            feed.upsert_deals(c, [{"asin": asin, "domain_id": 1, "title": asin,
                                   "keepa_last_update": iso_utc(NOW - i * 60),
                                   "last_seen_at": stamp}], checkpoints={}, now=stamp)
        backfill.record_backfill_failure(c, asin="BGAVEUP001", reason="gone", retry_at=None,
                                         now=stamp)  # fmt: skip

    write(db, queue)
    got = await rows(ds, "/dealsd/backfill_queue.json")
    assert [(r["asin"], r["state"]) for r in got] == [("BQUEUED001", "queued"),
                                                      ("BGAVEUP001", "gave up")]  # fmt: skip
    assert got[1]["backfill_error"] == "gone"


async def test_tokens_per_day(ds: Any, db: Path) -> None:
    def ledger(c: sqlite3.Connection) -> None:
        for at, consumer, endpoint, items, tokens in (
            ("2026-11-30T10:00:00Z", "upserter", "deal", 1, 5),
            ("2026-11-30T11:00:00Z", "upserter", "deal", 1, 5),
            ("2026-11-30T11:00:00Z", "backfiller", "product", 20, 20),
            ("2026-12-01T01:00:00Z", "backfiller", "product", 7, 8),
        ):
            feed.record_tokens(c, at=at, consumer=consumer, endpoint=endpoint, items=items,
                               tokens=tokens)  # fmt: skip

    write(db, ledger)
    got = await rows(ds, "/dealsd/tokens_per_day.json")
    assert [(r["day"], r["consumer"], r["requests"], r["items"], r["tokens"]) for r in got] == [
        ("2026-12-01", "backfiller", 1, 7, 8),
        ("2026-11-30", "backfiller", 1, 20, 20),
        ("2026-11-30", "upserter", 2, 2, 10),
    ]


async def test_read_only_and_consistent_beside_a_writer_in_wal_mode(ds: Any, db: Path) -> None:
    with pytest.raises(sqlite3.OperationalError, match="readonly"):
        await ds.get_database("dealsd").execute_fn(
            lambda conn: conn.execute("DELETE FROM deals")
        )
    refused = await ds.client.get("/dealsd.json?sql=DELETE+FROM+deals")
    assert refused.status_code == 400
    # The daemon mid-transaction, holding the write lock: pages still answer,
    # with the last committed state, and see the commit once it is made.
    writer = sqlite3.connect(db, isolation_level=None)
    try:
        writer.execute("BEGIN IMMEDIATE")
        writer.execute("UPDATE deals SET title = 'renamed' WHERE asin = ?", (ASIN,))
        during = await rows(ds, f"/dealsd/deals.json?asin={ASIN}")
        assert during[0]["title"].startswith("EQQUALBERRY")
        writer.execute("COMMIT")
    finally:
        writer.close()
    # Every read connection (Datasette has one per thread) sees the commit,
    # the one that refused the DELETE above included.
    after = [(await rows(ds, f"/dealsd/deals.json?asin={ASIN}"))[0]["title"] for _ in range(12)]
    assert set(after) == {"renamed"}
    left = await rows(ds, "/dealsd/deals.json")
    assert len(left) == 2  # the refused DELETE deleted nothing


def test_dealsd_web_serves_on_loopback(db: Path) -> None:
    with served(db) as url:
        assert url.startswith("http://127.0.0.1:")
        with urllib.request.urlopen(url + PAGE, timeout=10) as resp:
            page = resp.read().decode()
    assert chart_counts(page) == hand_counts(ASIN)


def test_without_datasette_it_says_what_to_install(db: Path) -> None:
    # Datasette made unimportable in a real process, as on a plain install.
    code = ("import sys; sys.modules['datasette'] = None; from dealsd.cli import main; "
            f"sys.exit(main(['web', '--database', {str(db)!r}]))")  # fmt: skip
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert r.returncode == 69, r.stderr
    assert "pip install 'dealsd[web]'" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.skipif(chromium() is None, reason="no chromium (Debian: apt-get install chromium)")
def test_a_real_browser_renders_the_deal_page(tmp_path: Path) -> None:
    from dealsd.web.chart import SERIES

    shot = screenshot(tmp_path / "deal.png")
    # The page the browser built carries the chart with every point of the sample.
    assert chart_counts(shot.dom) == hand_counts(ASIN)
    assert f'href="https://www.amazon.com/dp/{ASIN}"' in shot.dom
    # And it was painted: each series' legend swatch is a square of its colour,
    # and a series with points has more pixels of its colour than that, its line.
    # (Used has no points in this sample: its swatch alone is the yardstick.)
    pixels = colours(shot.png)
    drawn = {s.key: pixels[bytes.fromhex(s.colour[1:])] for s in SERIES}
    swatch = drawn.pop("used")
    assert swatch >= 64, drawn
    for key, count in drawn.items():
        assert count > swatch + 20, (key, count, swatch)


def test_a_history_without_data_or_unreadable_still_renders() -> None:
    from dealsd.keepa.payloads import History
    from dealsd.web.chart import render_svg
    from dealsd.web.plugin import panel_html

    # history=0 in the backfiller's config: a product with no csv at all.
    empty = render_svg(History(asin="B000EMPTY1"), now=NOW)
    assert empty.startswith("<svg") and chart_counts(empty) == dict.fromkeys(
        ("new", "used", "buy_box", "sales_rank"), 0
    )
    broken = panel_html(1, "B000BROKE1", b"not zlib at all", "2026-12-01T00:00:00Z")
    assert "cannot be read" in broken and "<svg" not in broken
    not_json = panel_html(1, "B000BROKE2", zlib.compress(b"[1, 2]"), None)
    assert "cannot be read" in not_json
