"""The funnel (issue 14) against the simulator over loopback and a real SQLite file.

The upserter's fresh pass (newest first, a creationDate watermark) beside
its full pass; the screen made from the deal object; the backfill queue by
the screen with the ``[funnel]`` thresholds, the idle tier and the detail
tier; the backfiller woken by new deals; a SIGHUP that changes thresholds
([funnel]'s, and a selection's own on another marketplace); the funnel in
`dealsd status`; check-config on thresholds read in another currency.
"""

from __future__ import annotations

import asyncio
import json
import signal
from pathlib import Path
from typing import Any

import msgspec
import pytest
from helpers import (
    DaemonProc,
    StartSim,
    WorkerParts,
    db_query,
    one_selection,
    status,
    status_doc,
    wait_for,
    worker_parts,
    write_config,
)

from dealsd import funnel as funnel_figures
from dealsd import mapping
from dealsd.config import BackfillerConfig, FunnelConfig, ProfitConfig, UpserterConfig
from dealsd.keepa.payloads import Deal
from dealsd.simulator import Simulator
from dealsd.workers.backfill_queue import KIND_DETAIL
from dealsd.workers.backfiller import Backfiller
from dealsd.workers.health import Health
from dealsd.workers.supervisor import Supervisor
from dealsd.workers.upserter import Upserter

BIGGEST_DROP: dict[str, Any] = {"priceTypes": [2], "sortType": 4}
CATALOGUE = 400  # two full pages of 150 and a short one
PROFIT = ProfitConfig(fba_fee_cents=400)


def upserter(parts: WorkerParts, *, work: asyncio.Event | None = None, **cfg: Any) -> Upserter:
    config: dict[str, Any] = {"interval_s": 1, "selection": BIGGEST_DROP, **cfg}
    return Upserter(
        client=parts.client, tokens=parts.tokens, store=parts.store, clock=parts.clock,
        selection=one_selection(UpserterConfig(**config), profit=PROFIT), health=parts.health,
        work_arrived=work,
    )  # fmt: skip


def backfiller(
    parts: WorkerParts, funnel: FunnelConfig, *, work: asyncio.Event | None = None, **cfg: Any
) -> Backfiller:
    return Backfiller(
        client=parts.client, tokens=parts.tokens, store=parts.store, clock=parts.clock,
        config=BackfillerConfig(**{"max_batch": 20, "idle_s": 60.0, **cfg}), price_type=2,
        profit=PROFIT, health=parts.health, funnel=funnel, work_arrived=work,
    )  # fmt: skip


def rows(db: Path, sql: str = "SELECT * FROM deals") -> list[dict[str, Any]]:
    return [dict(r) for r in db_query(db, sql)]


def pages(sim: Simulator) -> int:
    return int(sim.stats()["deal_pages"])


def _selection(name: str, domain: int, funnel: str = "", price_type: int = 2) -> str:
    """A ``[[selection]]`` table on ``domain``, with its ``[selection.funnel]`` lines if any."""
    table = f"[[selection]]\nname = '{name}'\ndomain = {domain}\n[selection.query]\n"
    query = f"priceTypes = [{price_type}]\n"
    return table + query + (f"[selection.funnel]\n{funnel}" if funnel else "")


async def fresh_due() -> None:
    """Past the upserter's interval_s of 1 s, and Keepa's query cache (2 minutes) gone."""
    await asyncio.sleep(1.05)


# -- the fresh pass and its watermark ---------------------------------------------


async def test_the_fresh_pass_stops_at_the_page_of_the_first_deal_older_than_the_watermark(
    start_sim: StartSim, tmp_path: Path
) -> None:
    sim = await start_sim(catalogue_size=CATALOGUE)
    db = tmp_path / "deals.db"
    async with worker_parts(sim.base_url, db, name="upserter") as parts:
        up = upserter(parts)
        await up.round()
        # A first round: page 0 newest first (learns the watermark), then the
        # whole result in the user's order (3 pages).
        assert pages(sim) == 1 + 3 and len(rows(db)) == CATALOGUE
        [mark] = [int(r["value"]) for r in rows(db, "SELECT * FROM checkpoints")
                  if r["name"].endswith(".watermark")]  # fmt: skip
        assert mark == max(d["creationDate"] for d in sim.catalogue.deals)
        minute = sim.catalogue.minute + 1
        for i in range(40):  # 200 new deals, 5 a minute
            sim.catalogue.step(minute + i, changed=0, new=5)
        await fresh_due()
        before = pages(sim)
        await up.round()
        # 200 new deals newest first: page 0 (150 new), page 1 (50 new, then
        # older ones): it stops there; the full pass is not due for 6 h.
        assert pages(sim) - before == 2
        assert len(rows(db)) == CATALOGUE + 200
        assert up.full_pass_tokens == 3 * 5
        await fresh_due()
        before = pages(sim)
        await up.round()
        # Nothing new: page 0 reaches the watermark. (The deals of the
        # watermark's own minute are read again: one found in that minute
        # after the last pass read it must not be missed.)
        assert pages(sim) - before == 1


@pytest.mark.parametrize("newest_by", ["creationDate", "lastUpdate"])
async def test_a_new_deal_behind_old_just_updated_ones_is_not_missed(
    start_sim: StartSim, tmp_path: Path, newest_by: str
) -> None:
    # 5 deals found, then 200 old ones updated a minute later. Ordered by
    # creationDate (as the simulator models Keepa) the new deals lead; ordered
    # by lastUpdate they sit behind 200 updated ones, on page 1. The pass stops
    # only at a deal older than the watermark by both times, so either way
    # every new deal is stored.
    sim = await start_sim(catalogue_size=CATALOGUE, newest_by=newest_by)
    db = tmp_path / "deals.db"
    async with worker_parts(sim.base_url, db, name="upserter") as parts:
        up = upserter(parts)
        await up.round()
        known = {r["asin"] for r in rows(db)}
        minute = sim.catalogue.minute + 1
        sim.catalogue.step(minute, changed=0, new=5)
        new = {d["asin"] for d in sim.catalogue.deals} - known
        assert len(new) == 5
        sim.catalogue.step(minute + 1, changed=200, new=0)
        await fresh_due()
        await up.round()
        assert new <= {r["asin"] for r in rows(db)}


async def test_the_screen_is_the_estimate_of_the_deal_and_follows_its_price(
    start_sim: StartSim, tmp_path: Path
) -> None:
    sim = await start_sim(catalogue_size=CATALOGUE)
    db = tmp_path / "deals.db"
    async with worker_parts(sim.base_url, db, name="upserter") as parts:
        up = upserter(parts, full_pass_h=0)  # every round walks everything
        await up.round()
        before = {r["asin"]: r for r in rows(db)}
        screened = [r for r in before.values() if r["screen_profit_cents"] is not None]
        assert len(screened) >= CATALOGUE - 5  # a deal without a used average has none
        for row in screened[:50]:
            deal = msgspec.json.decode(row["deal_json"].encode(), type=Deal)
            want = mapping.screen(deal, price_type=2, profit=PROFIT)
            assert (row["screen_profit_cents"], row["screen_roi_pct"]) == (
                want["screen_profit_cents"], want["screen_roi_pct"],
            )  # fmt: skip
        sim.catalogue.step(sim.catalogue.minute + 1, changed=100, new=0)
        changed = {
            d["asin"] for d in sim.catalogue.deals if d["lastUpdate"] == sim.catalogue.minute
        }
        await fresh_due()
        await up.round()
        after = {r["asin"]: r for r in rows(db)}
        moved = [a for a in changed if after[a]["current_used_cents"]
                 != before[a]["current_used_cents"]]  # fmt: skip
        assert len(moved) > 50
        for asin in moved:
            assert after[asin]["screen_profit_cents"] != before[asin]["screen_profit_cents"]
            deal = msgspec.json.decode(after[asin]["deal_json"].encode(), type=Deal)
            want = mapping.screen(deal, price_type=2, profit=PROFIT)
            assert after[asin]["screen_profit_cents"] == want["screen_profit_cents"]


# -- the backfill queue ------------------------------------------------------------


async def fill(sim: Simulator, db: Path) -> list[dict[str, Any]]:
    async with worker_parts(sim.base_url, db, name="upserter") as parts:
        await upserter(parts, full_pass_h=0).round()
    return rows(db)


async def drain(bf: Backfiller, limit: int = 60) -> int:
    """Rounds until one finds nothing to do; returns the rounds that did work."""
    for n in range(limit):
        if (await bf.round()).idle:
            return n
    raise AssertionError("the backfiller never ran out of work")


async def test_the_queue_is_best_screen_first_and_skips_what_is_below(
    start_sim: StartSim, tmp_path: Path
) -> None:
    sim = await start_sim(catalogue_size=CATALOGUE, refill_rate=5000)
    db = tmp_path / "deals.db"
    deals = await fill(sim, db)
    screens = sorted((r["screen_profit_cents"] for r in deals
                      if r["screen_profit_cents"] is not None), reverse=True)  # fmt: skip
    threshold = screens[60]  # about 60 deals at or above it
    funnel = FunnelConfig(min_screen_profit_cents=threshold)
    async with worker_parts(sim.base_url, db, name="backfiller") as parts:
        bf = backfiller(parts, funnel, max_batch=10, min_batch=10)
        await parts.client.token_status()
        await bf.round()
        first = rows(db, "SELECT * FROM deals WHERE backfilled_at IS NOT NULL")
        assert len(first) == 10
        # The first batch is the ten best screens.
        assert sorted(r["screen_profit_cents"] for r in first) == sorted(screens[:10])
        assert await drain(bf) > 0
    done = rows(db, "SELECT * FROM deals WHERE backfilled_at IS NOT NULL")
    left = rows(db, "SELECT * FROM deals WHERE backfilled_at IS NULL")
    assert all(
        r["screen_profit_cents"] is None or r["screen_profit_cents"] >= threshold for r in done
    )
    below = [r for r in left if r["screen_profit_cents"] is not None]
    assert below and all(r["screen_profit_cents"] < threshold for r in below)
    assert len(done) + len(left) == CATALOGUE  # nothing lost, nothing bought below
    assert not any(a.startswith("B0") and a in {r["asin"] for r in left}
                   for a in sim.products_bought)  # fmt: skip


async def test_below_the_threshold_idle_is_bought_only_when_nothing_else_is_pending(
    start_sim: StartSim, tmp_path: Path
) -> None:
    sim = await start_sim(catalogue_size=CATALOGUE, refill_rate=5000)
    db = tmp_path / "deals.db"
    deals = await fill(sim, db)
    threshold = sorted((r["screen_profit_cents"] or 0 for r in deals), reverse=True)[40]
    funnel = FunnelConfig(min_screen_profit_cents=threshold, below_threshold="idle")
    order: list[list[int | None]] = []
    async with worker_parts(sim.base_url, db, name="backfiller") as parts:
        bf = backfiller(parts, funnel, max_batch=20, min_batch=20)
        await parts.client.token_status()
        seen: set[str] = set()
        for _ in range(40):
            if (await bf.round()).idle:
                break
            now = {r["asin"]: r["screen_profit_cents"] for r in rows(
                db, "SELECT * FROM deals WHERE backfilled_at IS NOT NULL")}  # fmt: skip
            order.append([v for a, v in now.items() if a not in seen])
            seen |= set(now)
    assert len(seen) == CATALOGUE  # everything bought in the end
    above = [any(v is None or v >= threshold for v in batch) for batch in order]
    # Every batch with a deal above the threshold comes before any batch of
    # deals below it only.
    first_below = above.index(False)
    assert all(above[:first_below]) and not any(above[first_below:])


async def test_the_detail_tier_buys_offers_for_candidates_only_at_its_own_cost(
    start_sim: StartSim, tmp_path: Path
) -> None:
    sim = await start_sim(catalogue_size=CATALOGUE, refill_rate=5000)
    db = tmp_path / "deals.db"
    await fill(sim, db)
    funnel = FunnelConfig(detail_min_profit_cents=500, detail_offers=20, detail_buybox=False)
    async with worker_parts(sim.base_url, db, name="backfiller") as parts:
        bf = backfiller(parts, funnel, max_batch=50)
        await parts.client.token_status()
        assert await drain(bf, limit=100) > 0
        detail_cost = parts.tokens.cost_per_item("backfiller", kind=KIND_DETAIL)
        backfill_cost = parts.tokens.cost_per_item("backfiller")
    done = rows(db, "SELECT * FROM deals WHERE backfilled_at IS NOT NULL")
    detailed = [r for r in done if r["detailed_at"] is not None]
    assert detailed and len(detailed) < len(done) // 2
    # Only candidates, each with the offers' landed price now in its estimate.
    for r in detailed:
        assert r["current_used_shipping_cents"] is not None or r["backfill_error"] is None
    not_detailed = [r for r in done if r["detailed_at"] is None]
    # A candidate is detailed once; after it the estimate may fall below: fine.
    assert all((r["profit_cents"] or -1) < 500 for r in not_detailed)
    assert backfill_cost == pytest.approx(1.0, abs=0.2)
    assert detail_cost is not None and detail_cost >= 6  # offers: 6 per 10 found
    stages = {r["kind"]: r["n"] for r in rows(
        db, "SELECT kind, sum(items) AS n FROM token_ledger WHERE endpoint = 'product' "
        "GROUP BY kind")}  # fmt: skip
    assert stages["detail"] == len(detailed) and stages["backfill"] == len(done)


# -- waking ------------------------------------------------------------------------


async def test_the_backfiller_wakes_when_the_upserter_stores_new_deals(
    start_sim: StartSim, tmp_path: Path
) -> None:
    sim = await start_sim(catalogue_size=CATALOGUE, refill_rate=5000)
    db = tmp_path / "deals.db"
    work = asyncio.Event()
    stop = asyncio.Event()
    async with worker_parts(sim.base_url, db, name="backfiller") as parts:
        await parts.client.token_status()
        bf = backfiller(parts, FunnelConfig(), work=work, idle_s=120.0)
        health = Health(clock=parts.clock)
        sup = Supervisor(workers=[bf], clock=parts.clock, health=health, stop=stop)
        rounds = 0
        real_round = bf.round

        async def counted() -> Any:
            nonlocal rounds
            rounds += 1
            return await real_round()

        bf.round = counted  # type: ignore[method-assign]
        sup.start()
        try:
            await wait_for(lambda: rounds >= 1, 5, "a first round")
            await asyncio.sleep(0.3)
            assert rounds == 1  # nothing pending: asleep for idle_s (120 s)
            async with worker_parts(sim.base_url, db, name="upserter") as up_parts:
                await upserter(up_parts, work=work, full_pass_h=0).round()

            def backfilled() -> bool:
                got = db_query(db, "SELECT count(*) FROM deals WHERE backfilled_at IS NOT NULL")
                return int(got[0][0]) > 0

            # Woken at once, not 120 s later.
            await wait_for(backfilled, 10, "a backfill after the deals arrived")
        finally:
            stop.set()
            await sup.stop(grace_s=5)


# -- SIGHUP and status -------------------------------------------------------------


async def test_a_reload_with_a_lower_threshold_reorders_the_queue_losing_nothing(
    start_sim: StartSim, tmp_path: Path
) -> None:
    sim = await start_sim(catalogue_size=300, refill_rate=3000)
    high = "[funnel]\nmin_screen_profit_cents = 1500\n"
    path = write_config(tmp_path, sim.base_url, extra=high)
    db = tmp_path / "deals.db"
    d = await DaemonProc(path).start()
    try:
        await d.ready()

        def settled() -> bool:
            try:
                pending = db_query(
                    db, "SELECT count(*) FROM deals WHERE backfilled_at IS NULL "
                    "AND (screen_profit_cents IS NULL OR screen_profit_cents >= 1500)")  # fmt: skip
                total = db_query(db, "SELECT count(*) FROM deals")
            except Exception:
                return False
            return int(total[0][0]) >= 300 and int(pending[0][0]) == 0

        await wait_for(settled, 30, "every deal above the high threshold backfilled")
        skipped = rows(db, "SELECT asin, screen_profit_cents FROM deals "
                       "WHERE backfilled_at IS NULL")  # fmt: skip
        assert skipped and all(r["screen_profit_cents"] < 1500 for r in skipped)
        assert not {r["asin"] for r in skipped} & set(sim.products_bought)
        path.write_text(path.read_text().replace(high, "[funnel]\nmin_screen_profit_cents = 0\n"))
        d.signal(signal.SIGHUP)
        want = {r["asin"] for r in skipped if r["screen_profit_cents"] >= 0}
        assert want

        def bought() -> bool:
            got = db_query(db, "SELECT asin FROM deals WHERE backfilled_at IS NOT NULL")
            return want <= {r["asin"] for r in got}

        await wait_for(bought, 30, "the deals the new threshold lets in")
        assert "config_changed" in d.log_text() and "funnel.min_screen_profit_cents" in d.log_text()
        still = {r["asin"] for r in rows(db, "SELECT asin FROM deals")}
        assert {r["asin"] for r in skipped} <= still  # nothing was lost while skipped
        # The snapshot (every 5 s) catches up with the table.
        for _ in range(100):
            _code, doc = await status_doc(db)
            funnel = doc["funnel"]
            if funnel is not None and funnel["backfilled"] >= len(want):
                break
            await asyncio.sleep(0.2)
        assert funnel is not None and funnel["seen"] >= 300
        assert funnel["backfilled"] >= len(want) and funnel["tokens_by_stage"]["backfill"] > 0
        assert funnel["tokens_by_stage"]["deals"] > 0
        assert funnel["profitable"] >= 0 and funnel["queue_eta_s"] is not None
        _, text = await status(db, as_json=False)
        assert "funnel: " in text and " seen, " in text and " screened in, " in text
        assert "funnel tokens (7 days): backfill" in text and "screened-in queue:" in text
        d.signal(signal.SIGTERM)
        assert await d.wait() == 0
    finally:
        await d.ensure_dead()
    text = json.dumps(funnel)
    assert "screened_in" in text


async def test_a_reload_of_a_selections_own_threshold_changes_what_it_buys_losing_nothing(
    start_sim: StartSim, tmp_path: Path
) -> None:
    # amazon.com by [funnel]'s 0 cents, amazon.co.jp by its own ¥1500, then ¥0.
    sim = await start_sim(catalogue_size=300, refill_rate=3000)
    high = "min_screen_profit_cents = 1500\n"
    two = _selection("us", 1) + _selection("jp", 5, high)
    path = write_config(
        tmp_path, sim.base_url, extra="[funnel]\nmin_screen_profit_cents = 0\n", selections=two
    )
    db = tmp_path / "deals.db"
    listed = {d: len(sim.catalogue_for(d).query({"priceTypes": [2]})) for d in (1, 5)}
    bar = {1: 0, 5: 1500}

    def passing(domain: int, threshold: int) -> str:
        return (f"domain_id = {domain} AND (screen_profit_cents IS NULL "
                f"OR screen_profit_cents >= {threshold})")  # fmt: skip

    def count(where: str) -> int:
        return int(db_query(db, f"SELECT count(*) FROM deals WHERE {where}")[0][0])

    def settled() -> bool:
        try:
            stored = {d: count(f"domain_id = {d}") for d in listed}
            waiting = sum(count(f"backfilled_at IS NULL AND {passing(d, bar[d])}") for d in bar)
        except Exception:
            return False
        return stored == listed and waiting == 0

    async def snapshot_screened_in(want: int) -> int | None:
        # The snapshot (every 5 s) catches up with the table.
        got = None
        for _ in range(150):
            _code, doc = await status_doc(db)
            got = doc["funnel"]["screened_in"] if doc["funnel"] is not None else None
            if got == want:
                break
            await asyncio.sleep(0.2)
        return got

    d = await DaemonProc(path).start()
    try:
        await d.ready()
        await wait_for(settled, 40, "every deal above its selection's threshold backfilled")
        skipped = rows(db, "SELECT domain_id, asin, screen_profit_cents FROM deals "
                       "WHERE backfilled_at IS NULL")  # fmt: skip
        # Below ¥1500 on amazon.co.jp is not bought; on amazon.com [funnel]'s 0 is the bar.
        assert skipped and {r["domain_id"] for r in skipped if r["screen_profit_cents"] >= 0} == {5}
        assert all(r["screen_profit_cents"] < 1500 for r in skipped if r["domain_id"] == 5)
        assert not {(r["domain_id"], r["asin"]) for r in skipped} & set(sim.products_bought_in)
        bought_us = count("domain_id = 1 AND backfilled_at IS NOT NULL "
                          "AND screen_profit_cents BETWEEN 0 AND 1499")  # fmt: skip
        assert bought_us > 0  # what jp's own threshold skips, [funnel]'s lets in on .com
        want = count(passing(1, 0)) + count(passing(5, 1500))
        assert await snapshot_screened_in(want) == want
        path.write_text(path.read_text().replace(high, "min_screen_profit_cents = 0\n"))
        d.signal(signal.SIGHUP)
        let_in = {(5, r["asin"]) for r in skipped if r["domain_id"] == 5}
        let_in -= {(5, r["asin"]) for r in skipped if r["screen_profit_cents"] < 0}
        assert let_in

        def bought() -> bool:
            got = db_query(db, "SELECT domain_id, asin FROM deals WHERE backfilled_at IS NOT NULL")
            return let_in <= {(r["domain_id"], r["asin"]) for r in got}

        await wait_for(bought, 30, "the yen deals the new threshold lets in")
        assert "config_changed" in d.log_text() and "reloaded" in d.log_text()
        still = {(r["domain_id"], r["asin"]) for r in rows(db, "SELECT * FROM deals")}
        assert {(r["domain_id"], r["asin"]) for r in skipped} <= still  # nothing was lost
        # What stays below 0 on either marketplace is still not bought.
        below = {(r["domain_id"], r["asin"]) for r in skipped if r["screen_profit_cents"] < 0}
        assert not below & set(sim.products_bought_in)
        want = count(passing(1, 0)) + count(passing(5, 0))
        assert await snapshot_screened_in(want) == want
        d.signal(signal.SIGTERM)
        assert await d.wait() == 0
    finally:
        await d.ensure_dead()


def test_check_config_warns_when_a_full_pass_is_not_shorter_than_the_grace() -> None:
    from dealsd.config import Config, config_warnings

    cfg = Config()
    assert config_warnings(cfg) == []  # 6 h between full passes, 72 h grace
    late = msgspec.structs.replace(
        cfg, upserter=msgspec.structs.replace(cfg.upserter, full_pass_h=72.0)
    )
    [warning] = config_warnings(late)
    assert warning.startswith("upserter.full_pass_h: 72 h is not shorter than janitor.grace_h")
    every_round = msgspec.structs.replace(
        cfg, upserter=msgspec.structs.replace(cfg.upserter, full_pass_h=0.0)
    )
    assert config_warnings(every_round) == []
    # A selection's own full_pass_h: checked, and resolved for its upserter.
    from dealsd.config import SelectionConfig
    from dealsd.selections import resolve

    query = {"priceTypes": [2]}
    two = msgspec.structs.replace(late, selection=[
        SelectionConfig(name="slow", query=query, full_pass_h=100.0),
        SelectionConfig(name="busy", query=query, full_pass_h=1.0),
    ])  # fmt: skip
    # Every selection has its own pace: [upserter]'s 72 h walks nothing.
    [warning] = config_warnings(two)
    assert warning.startswith("selection[0].full_pass_h: 100 h is not shorter than")
    assert [s.full_pass_h for s in resolve(two)] == [100.0, 1.0]
    one_own = msgspec.structs.replace(
        two, selection=[two.selection[1], SelectionConfig(name="x", query=query)]
    )
    assert [w.split(":")[0] for w in config_warnings(one_own)] == ["upserter.full_pass_h"]
    assert [s.full_pass_h for s in resolve(one_own)] == [1.0, 72.0]


def test_check_config_warns_when_funnel_money_is_read_in_another_currency(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from dealsd.config import check_config, config_warnings, load_config

    def warnings(toml: str, name: str = "config.toml") -> list[str]:
        path = tmp_path / name
        path.write_text(toml)
        return config_warnings(load_config(path))

    cents = "[funnel]\nmin_screen_profit_cents = 300\ndetail_min_profit_cents = 500\n"
    [warning] = warnings(cents + _selection("us", 1) + _selection("jp", 5))
    assert warning.startswith(
        'selection[1].funnel: selection "jp" is on domain 5 (JPY), [keepa] domain 1 is USD, '
        "and [funnel]'s thresholds are in each marketplace's smallest unit: "
        "min_screen_profit_cents = 300 is ¥300 there, not $3.00, "
        "detail_min_profit_cents = 500 is ¥500 there, not $5.00 "
        "(set min_screen_profit_cents and detail_min_profit_cents in its [selection.funnel], "
        "in JPY)"
    ), warning
    # Only what the selection leaves to [funnel] is named.
    [warning] = warnings(
        cents + _selection("us", 1) + _selection("jp", 5, "min_screen_profit_cents = 450\n")
    )
    assert "detail_min_profit_cents = 500 is ¥500" in warning
    assert "min_screen_profit_cents = 300" not in warning
    # [keepa] domain's own currency is what [funnel] is written in: another one is named.
    jp_home = "[keepa]\ndomain = 5\n" + cents
    [warning] = warnings(jp_home + _selection("us", 1) + _selection("jp", 5))
    assert warning.startswith('selection[0].funnel: selection "us" is on domain 1 (USD), ')
    assert "[keepa] domain 5 is JPY" in warning and "$3.00 there, not ¥300" in warning
    # No warning: each selection says its own, one currency only, no money threshold.
    both = _selection("jp", 5, "min_screen_profit_cents = 450\ndetail_min_profit_cents = 750\n")
    assert warnings(cents + _selection("us", 1) + both) == []
    assert warnings(cents + _selection("us", 1) + _selection("new", 1, price_type=1)) == []
    roi = "[funnel]\nmin_screen_roi_pct = 30.0\n"
    assert warnings(roi + _selection("us", 1) + _selection("jp", 5)) == []
    # check-config says it, and the file is still OK.
    path = tmp_path / "config.toml"
    path.write_text(cents + _selection("us", 1) + _selection("jp", 5))
    assert check_config(path, env={"KEEPA_API_KEY": "k"}) == 0
    captured = capsys.readouterr()
    assert f"dealsd: warning: {path}: selection[1].funnel: selection \"jp\"" in captured.err
    assert captured.out.strip() == f"config OK: {path}"


def test_the_journal_line_and_the_figures_of_the_funnel() -> None:
    counts = {
        "seen": 1000, "screened_in": 300, "backfilled": 120, "detailed": 9, "profitable": 6,
        "pending_screened_in": 180, "tokens_by_stage": {"deals": 40, "backfill": 130, "detail": 70},
    }  # fmt: skip
    part = funnel_figures.figures(
        counts, refill_rate=20, period_s=60.0, cost_per_product=1.5, full_pass_tokens=335
    )
    assert part.tokens_per_profitable == 40.0  # 240 tokens / 6 profitable
    assert part.queue_eta_s == 180 * 1.5 / 20 * 60  # 13.5 minutes of refill
    line = funnel_figures.line(part)
    assert line["funnel"] == (
        "seen 1000 > screened in 300 > backfilled 120 > detailed 9 > profitable 6"
    )
    assert line["tokens_by_stage"] == "backfill=130,deals=40,detail=70"
    none = funnel_figures.figures(
        {**counts, "profitable": 0, "pending_screened_in": 5},
        refill_rate=0, period_s=60.0, cost_per_product=None, full_pass_tokens=None,
    )  # fmt: skip
    assert none.tokens_per_profitable is None and none.queue_eta_s is None


def test_an_odd_average_costs_the_screen_not_the_deal() -> None:
    from dealsd.keepa.payloads import decode_deals

    good = {"asin": "B0GOOD0001", "lastUpdate": 9, "current": [-1, 3000, 2000, 50],
            "rootCat": 283155, "avg": [[-1] * 4] * 3 + [[-1, 5000, 4000, 60]]}  # fmt: skip
    odd = {**good, "asin": "B0ODD00001", "avg": "n/a"}
    short = {**good, "asin": "B0SHORT001", "avg": [[1, 2]]}
    none = {k: v for k, v in good.items() if k != "avg"} | {"asin": "B0NONE0001"}
    body = json.dumps({"deals": {"dr": [good, odd, short, none]}}).encode()
    decoded = decode_deals(body)
    assert decoded.skipped == [] and len(decoded.items) == 4
    screens = [mapping.screen(i.value, price_type=2, profit=PROFIT) for i in decoded.items]
    # 4000 resale - 2000 buy - 600 referral - 400 FBA - 180 closing = 820, ROI 41 %.
    assert screens[0] == {"screen_profit_cents": 820, "screen_roi_pct": 41.0}
    assert all(s == {"screen_profit_cents": None, "screen_roi_pct": None} for s in screens[1:])
