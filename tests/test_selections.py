"""Several deal selections on two marketplaces through one key (issue 16).

The real daemon against the real simulator, which serves a catalogue per
domain: three selections, ``books`` and ``cheap`` on amazon.com (they overlap
on cheap books) and ``de`` on amazon.de. Each selection's deals are stored
under (domain_id, asin) with the selections that matched them
(``deal_selections``), each product is bought once from its own marketplace,
a selection removed on SIGHUP stops being polled and its deals age out while
those another selection sees stay, and its checkpoints outlive the removal
and a restart. A v1 database and a one-selection config upgrade in place.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import re
import signal
import sqlite3
import zlib
from pathlib import Path
from typing import Any

import msgspec
from helpers import (
    DaemonProc,
    Running,
    StartSim,
    db_query,
    status,
    status_doc,
    wait_for,
    write_config,
)

from dealsd import selections
from dealsd.clock import SystemClock, iso_utc
from dealsd.config import Config, load_config
from dealsd.keepa import KeepaClient, ProductParams
from dealsd.simulator import Simulator
from dealsd.store import migrations, schema
from dealsd.tokens import TokenScheduler

BOOKS: dict[str, Any] = {"priceTypes": [2], "sortType": 1, "includeCategories": [283155]}
CHEAP: dict[str, Any] = {"priceTypes": [2], "sortType": 1, "currentRange": [0, 5000]}
DE: dict[str, Any] = {"priceTypes": [1], "sortType": 1}


def _table(name: str, domain: int, query: dict[str, Any], extra: str = "") -> str:
    keys = "\n".join(f"{k} = {json.dumps(v)}" for k, v in query.items())
    return f"[[selection]]\nname = {name!r}\ndomain = {domain}\n{extra}[selection.query]\n{keys}\n"


THREE = (
    _table("books", 1, BOOKS)
    + _table("cheap", 1, CHEAP)
    + _table("de", 3, DE, "weight = 2\n")
    + "[selection.profit]\nclosing_fee_cents = 0\n"
)


def matched(sim: Simulator, domain: int, query: dict[str, Any]) -> set[str]:
    """What the simulator's marketplace lists for ``query``: what must be stored."""
    return {str(d["asin"]) for d in sim.catalogue_for(domain).query(query)}


def stored(db: Path) -> set[tuple[int, str]]:
    return {(int(r[0]), str(r[1])) for r in db_query(db, "SELECT domain_id, asin FROM deals")}


def seen_by(db: Path) -> set[tuple[int, str, str]]:
    rows = db_query(db, "SELECT domain_id, asin, selection FROM deal_selections")
    return {(int(r[0]), str(r[1]), str(r[2])) for r in rows}


def pending(db: Path) -> int:
    return int(db_query(db, "SELECT count(*) FROM deals WHERE backfilled_at IS NULL")[0][0])


async def test_three_selections_on_two_marketplaces_share_one_key(
    start_sim: StartSim, tmp_path: Path
) -> None:
    sim = await start_sim(catalogue_size=300)
    path = write_config(tmp_path, sim.base_url, selections=THREE)
    db = tmp_path / "deals.db"
    books, cheap, de = matched(sim, 1, BOOKS), matched(sim, 1, CHEAP), matched(sim, 3, DE)
    overlap = books & cheap
    # The catalogue must give every case something to show.
    assert books - cheap and cheap - books and overlap and de, (len(books), len(cheap), len(de))
    want = {(1, a) for a in books | cheap} | {(3, a) for a in de}
    running = Running(load_config(path), path)
    await wait_for(lambda: "started_at" in _status_row(db), 10, "the daemon started")
    await wait_for(lambda: stored(db) == want and pending(db) == 0, 30, "all three stored")
    # Each selection's matches, under its marketplace's key, and nothing else.
    assert seen_by(db) == (
        {(1, a, "books") for a in books}
        | {(1, a, "cheap") for a in cheap}
        | {(3, a, "de") for a in de}
    )
    # The overlap is one row per deal, with both selections recorded.
    rows = db_query(db, "SELECT count(*) FROM deals WHERE domain_id = 1")
    assert rows[0][0] == len(books | cheap) < len(books) + len(cheap)
    # Money in each marketplace's currency, named in the row.
    currencies = db_query(db, "SELECT domain_id, currency, count(*) FROM deals GROUP BY 1, 2")
    assert {(r[0], r[1]): r[2] for r in currencies} == {
        (1, "USD"): len(books | cheap),
        (3, "EUR"): len(de),
    }
    # The backfiller asked each product of its own marketplace, once.
    assert set(sim.products_bought_in) == want
    assert set(sim.products_bought_in.values()) == {1}
    # Each selection pays for its own pages, under its own name.
    ledger = db_query(db, "SELECT DISTINCT consumer FROM token_ledger WHERE endpoint = 'deal'")
    assert {r[0] for r in ledger} == {"upserter:books", "upserter:cheap", "upserter:de"}
    # `dealsd status`, per selection.
    await wait_for(
        lambda: (
            all(s.last_pass_at for s in _status_selections(db).values())
            and len(_status_selections(db)) == 3
        ),
        10,
        "a pass of each in the snapshot",
    )
    code, doc = await status_doc(db)
    assert code == 0, doc
    sel = doc["selections"]
    assert list(sel) == ["books", "cheap", "de"]
    assert (sel["de"]["domain"], sel["de"]["currency"], sel["de"]["deals"]) == (3, "EUR", len(de))
    assert sel["cheap"]["deals"] == len(cheap) and sel["books"]["worker"] == "upserter:books"
    assert all(s["pages_last_hour"] >= 1 and s["tokens_last_hour"] >= 5 for s in sel.values())
    assert all(s["freshness_s"] is not None for s in sel.values())
    code, text = await status(db, as_json=False)
    assert "selection de (domain 3, EUR, weight 2.0): last pass " in text, text
    assert f"; {len(cheap)} deals; newest " in text
    assert await running.finish() == 0


def _status_row(db: Path) -> dict[str, Any]:
    if not db.exists():
        return {}
    try:
        rows = db_query(db, "SELECT started_at FROM daemon")
    except sqlite3.OperationalError:  # not migrated yet
        return {}
    return {"started_at": rows[0][0]} if rows else {}


def _status_selections(db: Path) -> dict[str, Any]:
    from dealsd.status import read_status

    return read_status(db).selections


def _ledger_pages(db: Path, consumer: str) -> int:
    rows = db_query(
        db, "SELECT coalesce(sum(items), 0) FROM token_ledger WHERE consumer = ?", (consumer,)
    )
    return int(rows[0][0])


def _checkpoints(db: Path) -> dict[str, str]:
    return {str(r[0]): str(r[1]) for r in db_query(db, "SELECT name, value FROM checkpoints")}


# For the removal: every round pages the whole result (no newest-first
# watermark), so what a selection still matches is seen again every second;
# cheap pages one page a round, so a stop can find it in the middle of a pass.
FULL = {**BOOKS, "sortType": 4}
CHEAP_FULL = {**CHEAP, "sortType": 4}
DE_FULL = {**DE, "sortType": 4}
DE_TABLE = _table("de", 3, DE_FULL, "weight = 2\n") + "[selection.profit]\nclosing_fee_cents = 0\n"
WITH_CHEAP = (
    _table("books", 1, FULL) + _table("cheap", 1, CHEAP_FULL, "max_pages_per_run = 1\n") + DE_TABLE
)
NO_CHEAP = _table("books", 1, FULL) + DE_TABLE


def _cursor(db: Path, name: str) -> Any:
    value = _checkpoints(db).get(name)
    return None if value is None else json.loads(value).get("page")


async def test_sighup_removes_a_selection_its_deals_age_out_and_its_checkpoints_stay(
    start_sim: StartSim, tmp_path: Path
) -> None:
    sim = await start_sim(catalogue_size=800)
    # A grace of 7.2 s: rounds every second keep what is still matched seen.
    janitor = "interval_s = 1\ngrace_h = 0.002"
    path = write_config(tmp_path, sim.base_url, selections=WITH_CHEAP, janitor=janitor)
    # Every round a whole walk (full_pass_h 0, issue 14): with the newest-first
    # polls between full passes, a deal still matched is only seen again at
    # the next full pass, far past this 7.2 s grace.
    path.write_text(path.read_text().replace("full_pass_h = 0.5", "full_pass_h = 0"))
    db = tmp_path / "deals.db"
    books, cheap, de = matched(sim, 1, FULL), matched(sim, 1, CHEAP_FULL), matched(sim, 3, DE_FULL)
    assert books - cheap and books & cheap and de
    # Only cheap sees these; it has two pages (the stop below lands between them).
    only_cheap = cheap - books
    assert only_cheap and 150 < len(cheap) <= 300, len(cheap)
    sels = {s.name: s for s in selections.resolve(load_config(path))}
    cursor = f"upserter.{sels['cheap'].key}.cursor"
    proc = await DaemonProc(path).start()
    try:
        await proc.ready()
        await wait_for(
            lambda: len(seen_by(db)) == len(books) + len(cheap) + len(de), 30, "every match stored"
        )
        # The journal names the selection (and its marketplace) on its lines.
        await wait_for(lambda: bool(_rounds(proc, "de")) and bool(_rounds(proc, "cheap")), 10, "")
        assert "domain=3" in _rounds(proc, "de")[0]
        path.write_text(path.read_text().replace(WITH_CHEAP, NO_CHEAP))
        proc.signal(signal.SIGHUP)
        await wait_for(lambda: "selection_removed" in proc.log_text(), 10, "the removal")
        assert "selection_changed" not in proc.log_text()  # books and de unchanged
        await asyncio.sleep(1.0)  # a page in flight at the removal may still be stored
        pages_then = _ledger_pages(db, "upserter:cheap")
        saved = _checkpoints(db)[cursor]
        # What only cheap saw ages out; what books sees too stays, books alone named.
        want = {(1, a) for a in books} | {(3, a) for a in de}
        await wait_for(lambda: stored(db) == want, 30, "cheap's own deals pruned after the grace")
        await wait_for(
            lambda: not any(s == "cheap" for _d, _a, s in seen_by(db)), 10, "its matches forgotten"
        )
        # It is not polled any more; its checkpoints are kept for a re-add.
        assert _ledger_pages(db, "upserter:cheap") == pages_then
        assert _checkpoints(db)[cursor] == saved
        workers = [r[0] for r in db_query(db, "SELECT name FROM workers ORDER BY name")]
        assert workers == ["backfiller", "janitor", "upserter:books", "upserter:de"]
        # Added back live: polled again, its deals back under their key.
        path.write_text(path.read_text().replace(NO_CHEAP, WITH_CHEAP))
        proc.signal(signal.SIGHUP)
        await wait_for(lambda: "selection_added" in proc.log_text(), 10, "the re-add")
        await wait_for(lambda: stored(db) >= {(1, a) for a in cheap}, 20, "cheap's deals back")
        # Stopped in the middle of its pass (page 1 of 2 next) ...
        await wait_for(lambda: _cursor(db, cursor) == 1, 10, "cheap between its two pages")
        proc.signal(signal.SIGTERM)
        assert await proc.wait() == 0
    finally:
        await proc.ensure_dead()
    assert _cursor(db, cursor) == 1
    before = len(_rounds(proc, "cheap"))
    assert before >= 1
    # ... a restart goes on with page 1 (its pass finishes in that round)
    # instead of starting over at page 0 (a pass then still unfinished).
    proc = await DaemonProc(path).start()
    try:
        await proc.ready()
        await wait_for(lambda: bool(_rounds(proc, "cheap")), 20, "cheap's first round")
        first = _rounds(proc, "cheap")[0]
        assert re.search(r"\bpages=1\b", first) and "finished=true" in first, first
        proc.signal(signal.SIGTERM)
        assert await proc.wait() == 0
    finally:
        await proc.ensure_dead()


def _rounds(proc: DaemonProc, selection: str) -> list[str]:
    lines = proc.log_text().splitlines()
    return [ln for ln in lines if "upserter_round" in ln and f"selection={selection}" in ln]


def _v1_database(path: Path, *, now: float, watermark: int) -> None:
    """A file of the one-selection era, as the v1 daemon left it, seen just now."""
    seen = iso_utc(now)
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA foreign_keys = ON")
    schema.apply_migrations(conn, migrations.MIGRATIONS[:1])
    conn.executemany(
        "INSERT INTO deals (asin, domain_id, title, current_used_cents, keepa_last_update, "
        "first_seen_at, last_seen_at, backfilled_at, avg90_used_cents, backfill_attempts, "
        "backfill_error) VALUES (?, 1, ?, 1500, ?, ?, ?, ?, ?, ?, ?)",
        [
            ("B0OLD00001", "bought", seen, seen, seen, seen, 2400, 0, None),
            ("B0OLD00002", "pending", seen, seen, seen, None, None, 0, None),
            ("B0OLD00003", "given up", seen, seen, seen, None, None, 5, "not returned"),
        ],
    )
    conn.execute(
        "INSERT INTO product_history (asin, fetched_at, keepa_last_update, tokens_spent, payload) "
        "VALUES ('B0OLD00001', ?, ?, 3, ?)",
        (seen, seen, zlib.compress(b'{"asin": "B0OLD00001"}')),
    )
    # The v1 upserter's watermark for the config's selection (named by its hash).
    key = selections.selection_key({"priceTypes": [2], "sortType": 1}, 1)
    conn.execute(
        "INSERT INTO checkpoints VALUES (?, ?, ?)", (f"upserter.{key}.watermark", watermark, seen)
    )
    conn.close()


async def test_a_v1_config_and_database_upgrade_without_losing_a_row_or_rebuying(
    start_sim: StartSim, tmp_path: Path
) -> None:
    sim = await start_sim(catalogue_size=400)
    # The one-selection config of v1 ([upserter.selection]), unchanged but for
    # full_pass_h = 0: every round is then the v1 pass (newest first, stopping
    # at the watermark). With a periodic full pass (issue 14) the first one
    # walks the whole result by design, and how far it got before the test
    # stops depends on the machine's speed (a second page stored under load).
    path = write_config(tmp_path, sim.base_url)
    path.write_text(path.read_text().replace("full_pass_h = 0.5", "full_pass_h = 0"))
    db = tmp_path / "deals.db"
    newest = max(int(d["lastUpdate"]) for d in sim.catalogue.deals)
    _v1_database(db, now=sim.clock.now(), watermark=newest)
    old = {(1, a) for a in ("B0OLD00001", "B0OLD00002", "B0OLD00003")}
    running = Running(load_config(path), path)
    listed = matched(sim, 1, {"priceTypes": [2], "sortType": 1})
    await wait_for(lambda: len(stored(db)) >= len(old) + 150, 30, "the first page stored")
    await wait_for(lambda: "B0OLD00002" in sim.products_bought, 30, "the pending one bought")
    assert await running.finish() == 0
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        # v5 (the selections) and every later step (v6: the funnel's columns).
        assert schema.user_version(conn) == schema.SCHEMA_VERSION >= 5
        keys = {(int(d), str(a)) for d, a in conn.execute("SELECT domain_id, asin FROM deals")}
        assert old <= keys  # not a row lost
        # The bought one kept its product and was not bought again.
        assert sim.products_bought["B0OLD00001"] == 0
        payload = conn.execute(
            "SELECT payload FROM product_history WHERE asin = 'B0OLD00001'"
        ).fetchone()[0]
        assert zlib.decompress(payload) == b'{"asin": "B0OLD00001"}'
        # Every v1 row is the default selection's, in dollars.
        rows = conn.execute(
            "SELECT d.asin, s.selection, d.currency FROM deals d JOIN deal_selections s "
            "USING (domain_id, asin) WHERE d.asin LIKE 'B0OLD%' ORDER BY 1"
        ).fetchall()
        assert rows == [(a, "default", "USD") for _d, a in sorted(old)]
        # The v1 watermark was honoured: every pass stopped at its first page
        # (a watermark lost would have paged, and stored, all of the result).
        assert len(listed) > 150
        assert len(keys) == len(old) + 150, len(keys)
    finally:
        conn.close()


def _three_selections() -> tuple[list[selections.Selection], dict[str, float]]:
    cfg = msgspec.convert(
        {
            "selection": [
                {"name": "books", "domain": 1, "query": BOOKS},
                {"name": "cheap", "domain": 1, "query": CHEAP, "weight": 2},
                {"name": "de", "domain": 3, "query": DE},
            ]
        },
        Config,
    )
    sels = selections.resolve(cfg)
    return sels, selections.token_weights(cfg, sels)


def test_the_upserters_weight_is_split_between_the_selections() -> None:
    sels, weights = _three_selections()
    assert weights == {
        "backfiller": 3.0,
        "upserter:books": 0.25,
        "upserter:cheap": 0.5,
        "upserter:de": 0.25,
    }
    assert [s.worker for s in sels] == ["upserter:books", "upserter:cheap", "upserter:de"]


async def test_saturated_selections_share_by_weight_on_the_simulator(
    start_sim: StartSim,
) -> None:
    # Three selections on two marketplaces and the backfiller, each asking
    # again as soon as it is answered, through the real client and scheduler.
    # The period is 0.5 s so that a round trip on a loaded machine stays short
    # beside it: the four then always want more than the key gives.
    sels, weights = _three_selections()
    sim = await start_sim(refill_rate=20, refill_period_s=0.5, initial_tokens=20)
    clock = SystemClock()
    tokens = TokenScheduler(clock=clock, weights=weights, batch_minutes=1.0)
    async with KeepaClient(
        base_url=sim.base_url, api_key="k", domain=1, tokens=tokens, clock=clock
    ) as client:

        async def poll(sel: selections.Selection) -> None:
            for page in itertools.count():
                await client.deals(sel.query, page % 2, consumer=sel.worker, domain=sel.domain)

        async def backfill() -> None:
            params = ProductParams(history=False)
            for batch in itertools.count():
                n = tokens.batch_size("backfiller", lo=1, hi=100, default_cost=1.0)
                asins = [f"B0SHARE{(batch * 100 + i) % 10_000:04d}" for i in range(n)]
                await client.products(asins, params, domain=(1, 3)[batch % 2])

        tasks = [asyncio.create_task(poll(s)) for s in sels]
        tasks.append(asyncio.create_task(backfill()))
        await asyncio.sleep(30 * 0.5)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    by = tokens.snapshot().consumed_by
    total = sum(by.get(c, 0) for c in weights)
    assert total > 0 and set(weights) <= set(by), by
    shares = {c: by[c] / total for c in weights}
    want = {c: w / sum(weights.values()) for c, w in weights.items()}
    assert all(abs(shares[c] - want[c]) <= 0.05 for c in weights), (shares, want)
    assert sim.stats()["rate_limited"] == 0
    # Both marketplaces were asked: /product batches are one domain each.
    assert {d for d, _a in sim.products_bought_in} == {1, 3}
