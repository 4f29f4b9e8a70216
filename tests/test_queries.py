"""Each query on real rows in a real database, written through the store's writer;
and every query plan checked to use an index on a deals table of 20k rows."""

from __future__ import annotations

import functools
import sqlite3
import zlib
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import pytest
from helpers import sample_bytes

from dealsd import estimate as est
from dealsd import mapping, selections
from dealsd.clock import FakeClock, iso_utc
from dealsd.config import load_config
from dealsd.keepa.payloads import decode_products
from dealsd.store import Store, backfill, feed, liveness, pruning, schema
from dealsd.workers.backfill_queue import detail_of, screen_of

T = TypeVar("T")
NOW = 1_800_000_000.0


def ts(offset_s: float = 0.0) -> str:
    return iso_utc(NOW + offset_s)


def deal(asin: str, *, updated: float = 0.0, seen: float = 0.0, **extra: object) -> dict[str, Any]:
    row: dict[str, Any] = {
        "asin": asin,
        "domain_id": 1,
        "title": f"title {asin}",
        "current_new_cents": 1000,
        "current_used_cents": 800,
        "keepa_last_update": ts(updated),
        "deal_json": "{}",
        "last_seen_at": ts(seen),
    }
    row.update(extra)
    return row


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    s = await Store.open(tmp_path / "deals.db", clock=FakeClock(NOW))
    yield s
    await s.close()


def product(
    asin: str, cols: Mapping[str, object], *, payload: bytes | None = None
) -> functools.partial[bool]:
    return functools.partial(
        backfill.store_product, asin=asin, fetched_at=ts(), keepa_last_update=None,
        tokens_spent=1, payload_zlib=payload, columns=cols,
    )  # fmt: skip


async def w(store: Store, fn: Callable[[sqlite3.Connection], T]) -> T:
    return await store.write(fn)


async def row(store: Store, asin: str) -> dict[str, Any] | None:
    def get(c: sqlite3.Connection) -> dict[str, Any] | None:
        cur = c.execute("SELECT * FROM deals WHERE asin = ?", (asin,))
        found = cur.fetchone()
        return (
            None
            if found is None
            else dict(zip([d[0] for d in cur.description], found, strict=True))
        )

    return await store.read(get)


async def upsert(store: Store, rows: list[dict[str, Any]], now: float = 0.0, **kw: Any) -> Any:
    return await w(
        store,
        lambda c: feed.upsert_deals(c, rows, checkpoints=kw.pop("cp", {}), now=ts(now), **kw),
    )


async def test_upsert_counts_merges_and_keeps_first_seen(store: Store) -> None:
    counts = await upsert(store, [deal("A"), deal("B"), deal("A", updated=-60, title="older")])
    assert (counts.new, counts.updated) == (2, 0)
    a = await row(store, "A")
    assert a is not None and a["title"] == "title A"  # the newest snapshot won the merge
    counts = await upsert(store, [deal("A", updated=60, seen=60, title="new"), deal("C")], now=60)
    assert (counts.new, counts.updated) == (1, 1)
    a = await row(store, "A")
    assert a is not None
    assert a["title"] == "new" and a["first_seen_at"] == ts(0) and a["last_seen_at"] == ts(60)


async def test_an_older_snapshot_never_rolls_a_deal_back(store: Store) -> None:
    await upsert(store, [deal("A", updated=100, current_new_cents=500)])
    await upsert(store, [deal("A", updated=50, seen=200, current_new_cents=999)], now=200)
    a = await row(store, "A")
    assert a is not None
    assert a["current_new_cents"] == 500 and a["keepa_last_update"] == ts(100)
    assert a["last_seen_at"] == ts(200)  # but it was seen


async def test_a_price_with_shipping_is_forgotten_when_its_deal_price_moves(
    store: Store,
) -> None:
    # Bought with `offers` while the deal cost 1000 new and 800 used; the deal's
    # prices then move in /deal alone. Both paths of the upsert (one row, a page).
    landed = {"current_new_shipping_cents": 1399, "current_used_shipping_cents": 1199}
    for rows in ([deal("A")], [deal("A"), deal("B")]):
        await w(store, lambda c: c.execute("DELETE FROM deals"))
        await upsert(store, rows)
        await w(store, product("A", {"backfilled_at": ts(), **landed}))
        await upsert(store, [{**r, "keepa_last_update": ts(60)} for r in rows])
        a = await row(store, "A")
        assert a is not None and {k: a[k] for k in landed} == landed  # same prices: kept
        older = [deal(str(r["asin"]), updated=30, current_used_cents=500) for r in rows]
        await upsert(store, older)  # an older snapshot changes nothing
        a = await row(store, "A")
        assert a is not None and {k: a[k] for k in landed} == landed
        dropped = [deal(str(r["asin"]), updated=90, current_used_cents=700) for r in rows]
        await upsert(store, dropped)
        a = await row(store, "A")
        assert a is not None and a["current_used_cents"] == 700
        # The used price with shipping was for other offers; the new one's stays.
        assert a["current_used_shipping_cents"] is None
        assert a["current_new_shipping_cents"] == 1399


async def test_upsert_leaves_backfill_columns_and_recomputes_backfilled_rows(store: Store) -> None:
    await upsert(store, [deal("A"), deal("B")])
    await w(
        store,
        lambda c: backfill.store_product(
            c, asin="A", fetched_at=ts(), keepa_last_update=ts(), tokens_spent=7,
            payload_zlib=None,
            columns={"backfilled_at": ts(), "avg90_used_cents": 2000, "profit_cents": 1},
        ),
    )  # fmt: skip
    seen: list[str] = []

    def recompute(r: sqlite3.Row) -> dict[str, object]:
        seen.append(r["asin"])
        # The row as it is after the upsert: the new price is visible.
        return {"profit_cents": r["avg90_used_cents"] - r["current_used_cents"]}

    await upsert(store, [deal("A", current_used_cents=1500), deal("B")], recompute=recompute)
    assert seen == ["A"]  # B is not backfilled: nothing to recompute
    a = await row(store, "A")
    assert a is not None
    assert a["profit_cents"] == 500 and a["avg90_used_cents"] == 2000
    assert a["backfilled_at"] == ts()


async def test_a_single_row_upsert_counts_recomputes_and_checkpoints_as_a_page_does(
    store: Store,
) -> None:
    # One row takes its own short path: it must mean exactly what a page means.
    seen: list[str] = []

    def recompute(r: sqlite3.Row) -> dict[str, object]:
        seen.append(r["asin"])
        return {"profit_cents": r["current_used_cents"]}

    counts = await upsert(store, [deal("A")], recompute=recompute, cp={"wm": "1"})
    assert (counts.new, counts.updated) == (1, 0) and seen == []
    counts = await upsert(store, [deal("A", current_used_cents=700)], recompute=recompute)
    assert (counts.new, counts.updated) == (0, 1) and seen == []  # not backfilled yet
    await w(store, product("A", {"backfilled_at": ts()}))
    newer = deal("A", updated=5, current_used_cents=600)
    counts = await upsert(store, [newer], recompute=recompute)
    assert (counts.new, counts.updated) == (0, 1) and seen == ["A"]
    a = await row(store, "A")
    assert a is not None and a["profit_cents"] == 600 and a["first_seen_at"] == ts(0)
    assert await store.read(feed.get_checkpoints) == {"wm": "1"}


async def test_a_failed_upsert_saves_no_checkpoint(store: Store) -> None:
    await upsert(store, [deal("A"), deal("B")])
    await w(
        store,
        lambda c: backfill.store_product(
            c, asin="A", fetched_at=ts(), keepa_last_update=None, tokens_spent=1,
            payload_zlib=None, columns={"backfilled_at": ts()},
        ),
    )  # fmt: skip
    with pytest.raises(ValueError, match="profitt_cents"):
        await upsert(
            store, [deal("A", updated=9)], cp={"wm": "9"}, recompute=lambda r: {"profitt_cents": 1}
        )
    assert await store.read(feed.get_checkpoints) == {}
    a = await row(store, "A")
    assert a is not None and a["keepa_last_update"] == ts(0)  # rolled back with it
    await upsert(store, [deal("A", updated=9)], cp={"wm": "9", "cursor": "{}"})
    await upsert(store, [], cp={"wm": "10"}, now=5)
    assert await store.read(feed.get_checkpoints) == {"wm": "10", "cursor": "{}"}


async def test_pending_backfill_newest_first_due_and_under_attempts(store: Store) -> None:
    await upsert(store, [deal(f"P{i}", updated=i * 60) for i in range(6)])

    def retry(asin: str, at: str | None) -> functools.partial[int]:
        return functools.partial(
            backfill.record_backfill_failure, asin=asin, reason="boom", retry_at=at, now=ts()
        )

    assert await w(store, retry("P5", ts(3600))) == 1  # not due for an hour
    assert await w(store, retry("P4", ts(-1))) == 1  # due again
    await w(store, retry("P3", None))
    assert await w(store, retry("P3", None)) == 2  # gave up
    assert await w(store, retry("gone", None)) == 0
    await w(
        store,
        lambda c: backfill.store_product(
            c, asin="P2", fetched_at=ts(), keepa_last_update=None, tokens_spent=1,
            payload_zlib=None, columns={"backfilled_at": ts()},
        ),
    )  # fmt: skip
    got = await store.read(
        lambda c: backfill.pending_backfill(
            c, now=ts(), max_attempts=2, limit=10, order=backfill.BY_NEWEST
        )
    )
    assert [r.asin for r in got] == ["P4", "P1", "P0"]
    assert got[0].current_new_cents == 1000 and got[0].current_amazon_cents is None
    got = await store.read(
        lambda c: backfill.pending_backfill(
            c, now=ts(), max_attempts=5, limit=2, order=backfill.BY_NEWEST
        )
    )
    assert [r.asin for r in got] == ["P4", "P3"]


async def test_due_refresh_oldest_data_first(store: Store) -> None:
    await upsert(store, [deal(a) for a in "ABCD"])
    for asin, cols in {
        "A": {"backfilled_at": ts(-300)},
        "B": {"backfilled_at": ts(-900), "refreshed_at": ts(-100)},
        "C": {"backfilled_at": ts(-600)},
    }.items():
        await w(store, product(asin, cols))
    got = await store.read(lambda c: backfill.due_refresh(c, older_than=ts(-200), limit=10))
    assert [r.asin for r in got] == ["C", "A"]  # B was refreshed recently, D never backfilled


async def test_store_product_writes_real_columns_and_history(store: Store) -> None:
    raw = sample_bytes("B0D8W1YVBX")
    [item] = decode_products(raw).items
    cols = mapping.product_columns(item.value)
    cols["backfilled_at"] = ts()
    await upsert(store, [deal("B0D8W1YVBX")])
    await w(store, lambda c: backfill.record_backfill_failure(
        c, asin="B0D8W1YVBX", reason="x", retry_at=ts(), now=ts()))  # fmt: skip
    payload = zlib.compress(item.raw)
    ok = await w(
        store,
        lambda c: backfill.store_product(
            c, asin="B0D8W1YVBX", fetched_at=ts(1), keepa_last_update=ts(-5), tokens_spent=7,
            payload_zlib=payload, columns=cols,
        ),
    )  # fmt: skip
    assert ok is True
    a = await row(store, "B0D8W1YVBX")
    assert a is not None
    assert {k: a[k] for k in cols} == cols
    assert a["backfill_error"] is None and a["backfill_retry_at"] is None
    hist = await store.read(
        lambda c: c.execute(
            "SELECT fetched_at, tokens_spent, payload FROM product_history"
        ).fetchone()
    )
    assert hist[0] == ts(1) and hist[1] == 7 and zlib.decompress(hist[2]) == item.raw
    # Pruned meanwhile: nothing is written, not even history.
    gone = await w(
        store,
        lambda c: backfill.store_product(
            c, asin="GONE", fetched_at=ts(), keepa_last_update=None, tokens_spent=7,
            payload_zlib=payload, columns=cols,
        ),
    )  # fmt: skip
    assert gone is False
    assert (
        await store.read(lambda c: c.execute("SELECT count(*) FROM product_history").fetchone()[0])
        == 1
    )
    with pytest.raises(ValueError, match="avg91"):
        await w(store, lambda c: backfill.store_product(
            c, asin="B0D8W1YVBX", fetched_at=ts(), keepa_last_update=None, tokens_spent=0,
            payload_zlib=None, columns={"avg91_used_cents": 1}))  # fmt: skip


def test_schema_has_every_mapping_column() -> None:
    cols = set(schema.table_columns("deals"))
    assert set(mapping.DEAL_COLUMNS) <= cols
    assert set(mapping.PRODUCT_COLUMNS) <= cols
    assert set(est.ESTIMATE_COLUMNS) <= cols


async def test_prune_stale_in_chunks_with_history_cascading(store: Store) -> None:
    await upsert(store, [deal(f"S{i}", seen=-10_000 - i) for i in range(5)] + [deal("FRESH")])
    for i in range(5):
        await w(store, product(f"S{i}", {"backfilled_at": ts()}, payload=b"x"))
    assert await w(store, lambda c: pruning.prune_stale(c, older_than=ts(-5000), limit=3)) == 3
    assert await w(store, lambda c: pruning.prune_stale(c, older_than=ts(-5000), limit=3)) == 2
    assert await w(store, lambda c: pruning.prune_stale(c, older_than=ts(-5000), limit=3)) == 0
    left = await store.read(
        lambda c: (
            [r[0] for r in c.execute("SELECT asin FROM deals")],
            c.execute("SELECT count(*) FROM product_history").fetchone()[0],
        )
    )
    assert left == (["FRESH"], 0)


async def test_workers_daemon_ledger_and_status_summary(store: Store) -> None:
    await upsert(store, [deal("OLD")], now=-7200)
    await upsert(store, [deal("A", updated=30), deal("B"), deal("GAVE")], now=-60)
    await w(store, lambda c: backfill.record_backfill_failure(
        c, asin="GAVE", reason="bad", retry_at=None, now=ts()))  # fmt: skip
    await w(store, lambda c: backfill.store_product(
        c, asin="A", fetched_at=ts(), keepa_last_update=None, tokens_spent=1,
        payload_zlib=None, columns={"backfilled_at": ts()}))  # fmt: skip
    for at, consumer, endpoint, items, tokens in [
        (ts(-60), "backfiller", "product", 10, 70),
        (ts(-7200), "backfiller", "product", 10, 90),
        (ts(-30), "upserter", "deal", 1, 5),
        (ts(-90_000), "upserter", "deal", 1, 5),
    ]:
        spend = functools.partial(
            feed.record_tokens,
            at=at, consumer=consumer, endpoint=endpoint, items=items, tokens=tokens,
        )  # fmt: skip
        await w(store, spend)
    assert await w(store, lambda c: pruning.prune_ledger(c, older_than=ts(-86_400))) == 1
    base = {"state": "running", "updated_at": ts(), "progress_total": 3}
    await w(store, lambda c: liveness.write_worker(c, {"name": "upserter", **base}))
    await w(store, lambda c: liveness.bump_restarts(c, "upserter", ts()))
    await w(store, lambda c: liveness.bump_restarts(c, "backfiller", ts()))
    await w(store, lambda c: liveness.write_worker(c, {"name": "upserter", **base, "detail": "x"}))
    await w(store, lambda c: liveness.write_daemon(c, {"pid": 1, "healthy": 1, "snapshot": "{}"}))
    await w(store, lambda c: liveness.write_daemon(c, {"heartbeat_at": ts()}))
    with pytest.raises(ValueError):
        await w(store, lambda c: liveness.write_worker(c, {"name": "x", "sate": "typo"}))
    summary = await store.read(lambda c: liveness.status_summary(c, now=NOW))
    assert summary["deals"] == {
        "total": 4,
        "backfilled": 1,
        "pending_backfill": 2,
        "gave_up": 1,
        "added_last_hour": 3,
        "added_last_day": 4,
        "newest_keepa_update": ts(30),
        "unreadable_fields": 0,
    }
    assert summary["tokens"] == {"spent_last_hour": 75, "per_product": 8.0}
    workers = {r["name"]: r for r in summary["workers"]}
    assert workers["upserter"]["restarts"] == 1 and workers["upserter"]["detail"] == "x"
    assert workers["backfiller"]["restarts"] == 1 and workers["backfiller"]["state"] == "starting"
    assert summary["daemon"]["pid"] == 1 and summary["daemon"]["heartbeat_at"] == ts()


def test_status_summary_on_an_empty_database_and_a_row_factory(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / "e.db", isolation_level=None)
    schema.apply_migrations(conn)
    conn.row_factory = sqlite3.Row
    s = liveness.status_summary(conn, now=NOW)
    assert s["deals"]["total"] == 0 and s["daemon"] is None and s["workers"] == []
    assert s["tokens"] == {"spent_last_hour": 0, "per_product": None}
    conn.close()


class _Spy:
    """A connection that records every statement, to EXPLAIN them afterwards."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        self.seen: list[tuple[str, tuple[Any, ...]]] = []

    def execute(self, sql: str, params: Any = ()) -> sqlite3.Cursor:
        self.seen.append((sql, tuple(params)))
        return self.conn.execute(sql, params)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.conn, name)


def test_no_query_scans_the_deals_table(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / "big.db", isolation_level=None)
    schema.apply_migrations(conn)
    conn.execute("BEGIN")
    feed.upsert_deals(
        conn,
        [deal(f"B{i:09d}", updated=-i * 7, seen=-i * 3) for i in range(20_000)],
        checkpoints={},
        now=ts(-50_000),
        selection="us",
    )
    # A second marketplace whose selection has its own thresholds (in yen).
    feed.upsert_deals(
        conn,
        [deal(f"J{i:09d}", updated=-i * 5, domain_id=5) for i in range(4_000)],
        checkpoints={},
        now=ts(-50_000),
        selection="jp",
    )
    conn.execute("UPDATE deals SET backfilled_at = last_seen_at WHERE rowid % 2 = 0")
    conn.execute("COMMIT")
    for analyzed in (False, True):  # as deployed (no statistics), and after ANALYZE
        if analyzed:
            conn.execute("ANALYZE")
        spy = _Spy(conn)
        c: Any = spy
        backfill.pending_backfill(c, now=ts(), max_attempts=5, limit=100)
        # The funnel's (issue 14): the queue by the screen above and below the
        # thresholds, in today's order, the second tier, the status figures.
        screen = backfill.Screen(min_profit_cents=300, min_roi_pct=20.0)
        for below in (False, True):
            backfill.pending_backfill(
                c, now=ts(), max_attempts=5, limit=100, screen=screen, below=below
            )
        backfill.pending_backfill(
            c, now=ts(), max_attempts=5, limit=100, order=backfill.BY_NEWEST
        )
        backfill.detail_due(c, bar=backfill.DetailBar(500), limit=20)
        backfill.funnel_summary(
            c, screen=backfill.BySelection(screen), profitable_profit_cents=300,
            profitable_roi_pct=30.0, now=ts(), max_attempts=5,
        )  # fmt: skip
        # A selection with its own thresholds: the queue, the second tier and the
        # counts look at the deal's selections (deal_selections' key, per deal).
        own = backfill.BySelection(screen, (("us", screen), ("jp", backfill.Screen(1000, None))))
        for below in (False, True):
            backfill.pending_backfill(
                c, now=ts(), max_attempts=5, limit=100, screen=own, below=below
            )
        backfill.pending_backfill(c, now=ts(), max_attempts=5, limit=100, screen=own, domain_id=5)
        bars = backfill.BySelection(backfill.DetailBar(500), (("jp", backfill.DetailBar(3000)),))
        backfill.detail_due(c, bar=bars, limit=20)
        backfill.funnel_summary(
            c, screen=own, profitable_profit_cents=300, profitable_roi_pct=30.0,
            now=ts(), max_attempts=5,
        )  # fmt: skip
        assert sum("deal_selections AS s" in sql for sql, _ in spy.seen) == 6
        backfill.due_refresh(c, older_than=ts(), limit=100)
        # The same tiers for one marketplace (a batch is one domain's).
        backfill.pending_backfill(
            c, now=ts(), max_attempts=5, limit=100, screen=screen, domain_id=1
        )
        backfill.detail_due(c, bar=backfill.DetailBar(500), limit=20, domain_id=1)
        backfill.due_refresh(c, older_than=ts(), limit=100, domain_id=1)
        liveness.status_summary(c, now=NOW)
        liveness.selection_counts(c, now=NOW, workers={"default": "upserter"})
        pruning.prune_stale(c, older_than=ts(-50_000), limit=100)
        feed.get_checkpoints(c)
        assert len(spy.seen) >= 37
        for sql, params in spy.seen:
            plan = [r[3] for r in conn.execute("EXPLAIN QUERY PLAN " + sql, params)]
            for step in plan:
                # count(*) may walk an index; nothing may walk the table or sort it.
                assert not (step.startswith("SCAN deals") and "INDEX" not in step), (sql, plan)
                assert "TEMP B-TREE" not in step, (sql, plan)
    conn.close()


def test_the_per_product_statements_use_the_asin_index(tmp_path: Path) -> None:
    # Schema v2 keys deals by (domain_id, asin) while the daemon names the asin
    # alone: without deals_asin each of these would scan the table.
    conn = sqlite3.connect(tmp_path / "big.db", isolation_level=None)
    schema.apply_migrations(conn)
    conn.execute("BEGIN")
    feed.upsert_deals(
        conn, [deal(f"B{i:09d}", updated=-i) for i in range(5_000)], checkpoints={}, now=ts()
    )
    conn.execute("COMMIT")
    spy = _Spy(conn)
    c: Any = spy
    asin = "B000000042"
    assert backfill.deal_by_asin(c, asin) is not None
    assert backfill.store_product(
        c, asin=asin, fetched_at=ts(), keepa_last_update=ts(), tokens_spent=1,
        payload_zlib=b"x", columns={"backfilled_at": ts(), "roi_pct": 12.5},
    )  # fmt: skip
    backfill.record_backfill_failure(c, asin=asin, reason="r", retry_at=None, now=ts())
    feed.upsert_deals(c, [deal(asin, updated=5)], checkpoints={}, now=ts())
    assert len(spy.seen) >= 5
    for sql, params in spy.seen:
        plan = [r[3] for r in conn.execute("EXPLAIN QUERY PLAN " + sql, params)]
        for step in plan:
            assert not (step.startswith("SCAN deals") and "INDEX" not in step), (sql, plan)
    sql = "SELECT domain_id FROM product_history WHERE asin = ?"
    (domain,) = conn.execute(sql, (asin,)).fetchone()
    assert domain == 1  # the history took its deal's key
    conn.close()


# -- the funnel's thresholds per selection ([selection.funnel]) ------------------------

SELECTION = (
    "[[selection]]\nname = '{name}'\ndomain = {domain}\n[selection.query]\npriceTypes = [{pt}]\n"
)
# [funnel] in cents for amazon.com; the yen selection says its own.
TWO_MARKETS = (
    "[funnel]\nmin_screen_profit_cents = 300\ndetail_min_profit_cents = 500\n"
    + SELECTION.format(name="us", domain=1, pt=2)
    + SELECTION.format(name="jp", domain=5, pt=2)
    + "[selection.funnel]\nmin_screen_profit_cents = 1000\ndetail_min_profit_cents = 3000\n"
)


def thresholds(
    tmp_path: Path, toml: str
) -> tuple[backfill.BySelection[backfill.Screen], backfill.BySelection[backfill.DetailBar] | None]:
    """The backfiller's thresholds of a config file, as the daemon resolves them."""
    path = tmp_path / "config.toml"
    path.write_text(toml)
    cfg = load_config(path)
    funnels = selections.funnels(cfg)
    return screen_of(cfg.funnel, funnels), detail_of(cfg.funnel, funnels)


def queue(
    screen: backfill.Condition, **kw: Any
) -> Callable[[sqlite3.Connection], list[backfill.PendingRow]]:
    return functools.partial(
        backfill.pending_backfill, now=ts(), max_attempts=5, limit=100, screen=screen, **kw
    )


def summary(screen: backfill.BySelection[backfill.Screen]) -> Callable[..., dict[str, Any]]:
    return functools.partial(
        backfill.funnel_summary, screen=screen, profitable_profit_cents=300,
        profitable_roi_pct=30.0, now=ts(), max_attempts=5,
    )  # fmt: skip


def jp(asin: str, **extra: object) -> dict[str, Any]:
    return {**deal(asin, domain_id=5, currency="JPY"), **extra}


async def test_each_selection_screens_its_deals_in_its_own_marketplaces_money(
    store: Store, tmp_path: Path
) -> None:
    screen, detail = thresholds(tmp_path, TWO_MARKETS)
    await upsert(store, [deal("US500", screen_profit_cents=500),
                         deal("US200", screen_profit_cents=200)], selection="us")  # fmt: skip
    await upsert(store, [jp("JP500", screen_profit_cents=500),
                         jp("JP1500", screen_profit_cents=1500)], selection="jp")  # fmt: skip
    # Listed by no selection, or only by one gone from the config: [funnel]'s.
    await upsert(store, [jp("JPNONE", screen_profit_cents=500)])
    await upsert(store, [jp("JPGONE", screen_profit_cents=400)], selection="old")
    got = await store.read(queue(screen))
    # $5.00 is in under the 300 cents of [funnel]; ¥500 is not under jp's 1000.
    assert {(r.domain_id, r.asin) for r in got} == {
        (1, "US500"), (5, "JP1500"), (5, "JPNONE"), (5, "JPGONE")
    }  # fmt: skip
    screens = {"US500": 500, "JP1500": 1500, "JPNONE": 500, "JPGONE": 400}
    assert [screens[r.asin] for r in got] == [1500, 500, 500, 400]  # best screen first
    below = await store.read(queue(screen, below=True))
    assert sorted(r.asin for r in below) == ["JP500", "US200"]
    one = await store.read(queue(screen, domain_id=5))
    assert [r.asin for r in one] == ["JP1500", "JPNONE", "JPGONE"]
    counts = await store.read(summary(screen))
    assert (counts["seen"], counts["screened_in"], counts["pending_screened_in"]) == (6, 4, 4)
    # The second tier: 500 cents on amazon.com, ¥3000 on amazon.co.jp.
    assert detail is not None
    for asin, profit in [("US500", 600), ("JP1500", 600), ("JP500", 3500), ("JPNONE", 400)]:
        await w(store, product(asin, {"backfilled_at": ts(), "profit_cents": profit}))
    due = await store.read(lambda c: backfill.detail_due(c, bar=detail, limit=10))
    assert [r.asin for r in due] == ["JP500", "US500"]
    # Without [funnel]'s, only what jp lists has a second tier.
    _, jp_only = thresholds(tmp_path, TWO_MARKETS.replace("detail_min_profit_cents = 500\n", ""))
    assert jp_only is not None
    due = await store.read(lambda c: backfill.detail_due(c, bar=jp_only, limit=10))
    assert [r.asin for r in due] == ["JP500"]
    # Backfilled, the screen no longer queues them; the counts follow.
    counts = await store.read(summary(screen))
    assert (counts["screened_in"], counts["pending_screened_in"]) == (4, 1)


async def test_a_deal_two_selections_list_passes_when_it_passes_either(
    store: Store, tmp_path: Path
) -> None:
    screen, detail = thresholds(
        tmp_path,
        "[funnel]\nmin_screen_profit_cents = 200\n"
        + SELECTION.format(name="a", domain=1, pt=2)
        + "[selection.funnel]\nmin_screen_profit_cents = 1000\n"
        + SELECTION.format(name="b", domain=1, pt=1)
        + "[selection.funnel]\nmin_screen_profit_cents = 400\nmin_screen_roi_pct = 50.0\n",
    )
    assert detail is None  # no second tier anywhere
    both = [
        deal("BOTH_B", screen_profit_cents=500, screen_roi_pct=60.0),  # b's
        deal("BOTH_NONE", screen_profit_cents=500, screen_roi_pct=20.0),  # a: 500, b: 20 %
    ]
    await upsert(store, both, selection="a")
    await upsert(store, both, selection="b")
    await upsert(store, [deal("A_ONLY", screen_profit_cents=500, screen_roi_pct=60.0)],
                 selection="a")  # fmt: skip
    # Also listed by a selection without thresholds of its own: [funnel]'s 200.
    gone = [deal("A_AND_OLD", screen_profit_cents=500, screen_roi_pct=20.0)]
    await upsert(store, gone, selection="a")
    await upsert(store, gone, selection="old")
    assert sorted(r.asin for r in await store.read(queue(screen))) == ["A_AND_OLD", "BOTH_B"]
    below = await store.read(queue(screen, below=True))
    assert sorted(r.asin for r in below) == ["A_ONLY", "BOTH_NONE"]
    counts = await store.read(summary(screen))
    assert (counts["screened_in"], counts["pending_screened_in"]) == (2, 2)


def test_without_thresholds_of_its_own_a_selection_leaves_the_statements_as_they_were(
    tmp_path: Path,
) -> None:
    # One selection says nothing, the other repeats [funnel]'s: one threshold in
    # force, so the statements (and their plans) are those of the one [funnel].
    screen, detail = thresholds(
        tmp_path,
        "[funnel]\nmin_screen_profit_cents = 300\nmin_screen_roi_pct = 20.0\n"
        "detail_min_profit_cents = 500\n"
        + SELECTION.format(name="us", domain=1, pt=2)
        + SELECTION.format(name="jp", domain=5, pt=2)
        + "[selection.funnel]\nmin_screen_profit_cents = 300\n",
    )
    assert detail is not None and [name for name, _ in screen.own] == ["us", "jp"]
    conn = sqlite3.connect(tmp_path / "d.db", isolation_level=None)
    schema.apply_migrations(conn)
    today_screen, today_bar = backfill.Screen(300, 20.0), backfill.DetailBar(500)

    def statements(
        screen: backfill.Condition, bar: backfill.Condition
    ) -> list[tuple[str, tuple[Any, ...]]]:
        spy = _Spy(conn)
        c: Any = spy
        for below in (False, True):
            queue(screen, below=below)(c)
        queue(screen, domain_id=5)(c)
        backfill.detail_due(c, bar=bar, limit=20)
        return spy.seen

    assert statements(screen, detail) == statements(today_screen, today_bar)
    spy = _Spy(conn)
    summary(screen)(spy)
    texts = [sql for sql, _ in spy.seen]
    # The screened-in count as it always was: the screen's covering index alone.
    assert f"SELECT count(*) FROM deals WHERE {today_screen.passes_sql()[0]}" in texts
    assert not any("deal_selections" in sql for sql in texts)
    assert not any("deal_selections" in sql for sql, _ in statements(screen, detail))
    conn.close()
