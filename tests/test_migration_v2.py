"""Schema v1 -> v2 in place: the (domain_id, asin) key, in one transaction, nothing lost.

The v1 file is built with the v1 DDL exactly as released (``migrations.MIGRATIONS[0]``)
and filled the way the v1 daemon filled it: deals, some backfilled with their
history payload, one given up, and the other tables.
"""

from __future__ import annotations

import sqlite3
import zlib
from pathlib import Path

import pytest

from dealsd.clock import FakeClock
from dealsd.store import Store, backfill, feed, migrations, pruning, schema

V1 = migrations.MIGRATIONS[0]
T = "2026-11-28T12:00:00Z"


def _v1_file(path: Path) -> None:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA foreign_keys = ON")
    schema.apply_migrations(conn, [V1])
    assert schema.user_version(conn) == 1
    conn.executemany(
        "INSERT INTO deals (asin, domain_id, title, current_used_cents, keepa_last_update, "
        "first_seen_at, last_seen_at, backfilled_at, avg90_used_cents, profit_cents, "
        "backfill_attempts, backfill_retry_at, backfill_error) "
        "VALUES (?, 1, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [
            ("B000000001", "one", 1200, T, T, T, T, 2000, 300, 0, None, None),
            ("B000000002", "two", 800, T, T, T, T, 1500, 200, 0, None, None),
            ("B000000003", "three", 500, T, T, T, None, None, None, 0, None, None),
            ("B000000004", "gave up", 900, T, T, T, None, None, None, 5, None, "not returned"),
        ],
    )
    conn.executemany(
        "INSERT INTO product_history (asin, fetched_at, keepa_last_update, tokens_spent, payload) "
        "VALUES (?, ?, ?, ?, ?)",
        [
            ("B000000001", T, T, 4, zlib.compress(b'{"asin": "B000000001"}')),
            ("B000000002", T, T, 1, zlib.compress(b'{"asin": "B000000002"}')),
        ],
    )
    conn.execute("INSERT INTO checkpoints VALUES ('upserter.x.watermark', '8075762', ?)", (T,))
    conn.execute("INSERT INTO token_ledger (at, consumer, endpoint, items, tokens) "
                 "VALUES (?, 'backfiller', 'product', 2, 5)", (T,))  # fmt: skip
    conn.close()


def _ro(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    conn.row_factory = sqlite3.Row
    return conn


async def test_a_v1_file_with_deals_and_histories_migrates_in_place(tmp_path: Path) -> None:
    db = tmp_path / "v1.db"
    _v1_file(db)
    store = await Store.open(db, clock=FakeClock())
    await store.close()
    conn = _ro(db)
    assert schema.user_version(conn) == schema.SCHEMA_VERSION  # v2, the alerts, the funnel
    # The key is (domain_id, asin), for both tables.
    pk = {r["name"]: r["pk"] for r in conn.execute("PRAGMA table_info(deals)") if r["pk"]}
    assert pk == {"domain_id": 1, "asin": 2}
    pk = {r["name"]: r["pk"] for r in conn.execute("PRAGMA table_info(product_history)")
          if r["pk"]}  # fmt: skip
    assert pk == {"domain_id": 1, "asin": 2}
    fk = conn.execute("PRAGMA foreign_key_list(product_history)").fetchall()
    assert {(r["table"], r["from"], r["to"], r["on_delete"]) for r in fk} == {
        ("deals", "domain_id", "domain_id", "CASCADE"), ("deals", "asin", "asin", "CASCADE"),
    }  # fmt: skip
    # Every row and value kept.
    rows = {r["asin"]: dict(r) for r in conn.execute("SELECT * FROM deals")}
    assert sorted(rows) == ["B000000001", "B000000002", "B000000003", "B000000004"]
    one = rows["B000000001"]
    assert (one["title"], one["current_used_cents"], one["avg90_used_cents"]) == ("one", 1200, 2000)
    assert (one["profit_cents"], one["backfilled_at"], one["first_seen_at"]) == (300, T, T)
    gave_up = rows["B000000004"]
    assert (gave_up["backfill_attempts"], gave_up["backfill_error"]) == (5, "not returned")
    # The new columns start empty: unknown, never zero.
    assert one["roi_pct"] is None and one["monthly_sold"] is None
    assert one["unreadable_fields"] is None
    history = {r["asin"]: r for r in conn.execute("SELECT * FROM product_history")}
    assert sorted(history) == ["B000000001", "B000000002"]
    assert history["B000000001"]["domain_id"] == 1 and history["B000000001"]["tokens_spent"] == 4
    assert zlib.decompress(history["B000000002"]["payload"]) == b'{"asin": "B000000002"}'
    assert conn.execute("SELECT count(*) FROM checkpoints").fetchone()[0] == 1
    assert conn.execute("SELECT count(*) FROM token_ledger").fetchone()[0] == 1
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert conn.execute("PRAGMA foreign_key_check").fetchall() == []
    # A dashboard query naming only the asin works, and uses an index.
    (blob,) = conn.execute(
        "SELECT payload FROM product_history WHERE asin = ?", ("B000000001",)
    ).fetchone()
    assert zlib.decompress(blob) == b'{"asin": "B000000001"}'
    (title,) = conn.execute("SELECT title FROM deals WHERE asin = ?", ("B000000002",)).fetchone()
    assert title == "two"
    for table in ("deals", "product_history"):
        plan = " ".join(str(r[3]) for r in conn.execute(
            f"EXPLAIN QUERY PLAN SELECT * FROM {table} WHERE asin = ?", ("x",)))  # fmt: skip
        assert "USING INDEX" in plan, plan
    conn.close()


async def test_the_migrated_file_is_written_on_the_new_key(tmp_path: Path) -> None:
    # The daemon's own statements on a migrated file: the upsert conflicts on
    # the new key, a history is replaced, a deal's deletion takes its history.
    db = tmp_path / "v1.db"
    _v1_file(db)
    store = await Store.open(db, clock=FakeClock())
    row = {"asin": "B000000001", "domain_id": 1, "title": "one again", "keepa_last_update": T,
           "current_used_cents": 1100, "last_seen_at": T}  # fmt: skip
    counts = await store.write(
        lambda c: feed.upsert_deals(c, [row], checkpoints={}, now=T)
    )
    assert (counts.new, counts.updated) == (0, 1)
    def refresh(c: sqlite3.Connection) -> bool:
        return backfill.store_product(
            c, asin="B000000002", fetched_at=T, keepa_last_update=T, tokens_spent=2,
            payload_zlib=zlib.compress(b"{}"), columns={"refreshed_at": T},
        )  # fmt: skip

    stored = await store.write(refresh)
    assert stored
    history = await store.read(
        lambda c: c.execute("SELECT asin, domain_id, tokens_spent FROM product_history "
                            "ORDER BY asin").fetchall()
    )  # fmt: skip
    assert [tuple(r) for r in history] == [("B000000001", 1, 4), ("B000000002", 1, 2)]
    title = await store.read(
        lambda c: c.execute("SELECT title FROM deals WHERE asin = 'B000000001'").fetchone()[0]
    )
    assert title == "one again"
    pruned = await store.write(
        lambda c: pruning.prune_stale(c, older_than="2026-11-29T00:00:00Z", limit=10)
    )
    assert pruned == 4
    await store.close()
    conn = _ro(db)
    # Each deal's deletion took its history with it (the cascade on the new key).
    assert conn.execute("SELECT count(*) FROM product_history").fetchone()[0] == 0
    assert conn.execute("PRAGMA foreign_key_check").fetchall() == []
    conn.close()


def test_a_failing_v2_step_leaves_the_v1_file_as_it_was(tmp_path: Path) -> None:
    # The whole v1 -> v2 step is one transaction: a failure after the tables
    # were rebuilt (here: a broken statement appended to v2) leaves v1 intact.
    db = tmp_path / "v1.db"
    _v1_file(db)
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("PRAGMA foreign_keys = ON")
    broken = [V1, migrations.MIGRATIONS[1] + "\nTHIS IS NOT SQL;\n"]
    with pytest.raises(sqlite3.OperationalError):
        schema.apply_migrations(conn, broken)
    assert not conn.in_transaction
    assert schema.user_version(conn) == 1
    cols = [r[1] for r in conn.execute("PRAGMA table_info(deals)")]
    assert "roi_pct" not in cols and "deals_v2" not in {
        r[0] for r in conn.execute("SELECT name FROM sqlite_master")
    }
    assert conn.execute("SELECT count(*) FROM deals").fetchone()[0] == 4
    assert conn.execute("SELECT count(*) FROM product_history").fetchone()[0] == 2
    conn.close()


def test_a_new_database_and_a_migrated_one_have_the_same_schema(tmp_path: Path) -> None:
    fresh = sqlite3.connect(":memory:", isolation_level=None)
    schema.apply_migrations(fresh)
    db = tmp_path / "v1.db"
    _v1_file(db)
    old = sqlite3.connect(db, isolation_level=None)
    old.execute("PRAGMA foreign_keys = ON")
    schema.apply_migrations(old)

    def shape(c: sqlite3.Connection) -> dict[str, list[tuple[object, ...]]]:
        names = [r[0] for r in c.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        return {n: c.execute(f"PRAGMA table_info({n})").fetchall() for n in sorted(names)}

    assert shape(old) == shape(fresh)
    indexes = "SELECT name FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL"
    assert sorted(old.execute(indexes).fetchall()) == sorted(fresh.execute(indexes).fetchall())
    old.close()
    fresh.close()
