"""The Keepa simulator over loopback: token rules, costs, catalogue, samples, faults.

Token arithmetic is checked with a FakeClock driving the simulator's time (the
HTTP is still real), so refill steps are exact and no test sleeps a period.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import os
import signal
import sys
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from helpers import sample_bytes, wait_for

from dealsd.clock import FakeClock
from dealsd.keepa.payloads import decode_deals, decode_envelope, decode_products
from dealsd.simulator import Faults, SimOptions, Simulator
from dealsd.simulator.products import withheld

REAL = ("B0D8W1YVBX", "B0F7XPYCSJ")
ENVELOPE_KEYS = {
    "timestamp", "tokensLeft", "refillIn", "refillRate", "tokenFlowReduction",
    "tokensConsumed", "processingTimeInMs",
}  # fmt: skip
USED_SELECTION = {"domainId": 1, "priceTypes": [2], "sortType": 1}


def options(**kw: Any) -> SimOptions:
    base: dict[str, Any] = dict(
        refill_rate=100, refill_period_s=0.1, catalogue_size=400, new_deals_per_period=0,
        changed_deals_per_period=0, missing_rate=0.0, invalid_rate=0.0,
    )  # fmt: skip
    base.update(kw)
    return SimOptions(**base)


class Sim:
    """A started simulator and a client session on it."""

    def __init__(self, sim: Simulator, session: aiohttp.ClientSession) -> None:
        self.sim = sim
        self.session = session
        self.url = sim.base_url

    async def get(self, path: str, **params: Any) -> tuple[int, dict[str, Any]]:
        params.setdefault("key", "k")
        async with self.session.get(self.url + path, params=params) as r:
            return r.status, json.loads(await r.read())

    async def token(self) -> dict[str, Any]:
        status, doc = await self.get("/token")
        assert status == 200
        return doc

    async def deals(self, page: int = 0, **sel: Any) -> tuple[int, dict[str, Any]]:
        selection = {**USED_SELECTION, **sel, "page": page}
        return await self.get("/deal", selection=json.dumps(selection))

    async def products(self, asins: list[str], **params: Any) -> tuple[int, dict[str, Any]]:
        return await self.get("/product", domain=1, asin=",".join(asins), **params)


async def started(opts: SimOptions, clock: FakeClock | None = None) -> AsyncIterator[Sim]:
    sim = Simulator(opts, clock=clock)
    await sim.start("127.0.0.1", 0)
    try:
        async with aiohttp.ClientSession() as session:
            yield Sim(sim, session)
    finally:
        await sim.stop()


@pytest.fixture
async def fake() -> AsyncIterator[tuple[Sim, FakeClock]]:
    clock = FakeClock()
    async for s in started(options(refill_rate=5, refill_period_s=1.0, initial_tokens=0), clock):
        yield s, clock


@pytest.fixture
async def sim() -> AsyncIterator[Sim]:
    async for s in started(options()):
        yield s


def catalogue_asins(s: Sim, n: int) -> list[str]:
    return [d["asin"] for d in s.sim.catalogue.deals if d["asin"] not in REAL][:n]


# the envelope ------------------------------------------------------------------------
async def test_every_status_class_carries_the_envelope_gzipped(sim: Sim) -> None:
    sim.sim.control(api_keys=["good"])
    cases: list[tuple[str, dict[str, Any], int]] = [
        ("/token", {"key": "good"}, 200),
        ("/deal", {"key": "good", "selection": "{not json"}, 400),
        ("/token", {"key": "wrong"}, 402),
        ("/nowhere", {"key": "good"}, 404),
    ]
    seen = []
    async with aiohttp.ClientSession(auto_decompress=False) as raw:
        for path, params, want in cases:
            async with raw.get(sim.url + path, params=params) as r:
                assert r.status == want, (path, r.status)
                assert r.headers["Content-Encoding"] == "gzip"
                body = gzip.decompress(await r.read())
            env, err = decode_envelope(body)
            assert env is not None and ENVELOPE_KEYS <= json.loads(body).keys()
            assert (err is None) == (want == 200), (path, err)
            seen.append(want)
        sim.sim.control(tokens=0)
        async with raw.get(sim.url + "/deal", params={"key": "good", "selection": "{}"}) as r:
            assert r.status == 400  # validation before the balance
        sel = json.dumps(USED_SELECTION)
        async with raw.get(sim.url + "/deal", params={"key": "good", "selection": sel}) as r:
            assert r.status == 429
            doc = json.loads(gzip.decompress(await r.read()))
            assert doc["error"]["type"] and doc["tokensConsumed"] == 0
        sim.sim.control(tokens=100, faults={"error_5xx": 1.0})
        async with raw.get(sim.url + "/token", params={"key": "good"}) as r:
            assert r.status in (500, 502, 503)
            doc = json.loads(gzip.decompress(await r.read()))
            assert ENVELOPE_KEYS <= doc.keys() and doc["error"]["message"]
    assert seen == [200, 400, 402, 404]


# the token model ---------------------------------------------------------------------
async def test_429_at_zero_and_an_expensive_request_drives_the_balance_negative(
    fake: tuple[Sim, FakeClock],
) -> None:
    s, _ = fake
    status, doc = await s.deals()
    assert (status, doc["tokensLeft"], doc["tokensConsumed"]) == (429, 0, 0)
    s.sim.control(tokens=3)
    status, doc = await s.products(catalogue_asins(s, 100))
    assert status == 200 and len(doc["products"]) == 100
    assert (doc["tokensConsumed"], doc["tokensLeft"]) == (100, -97)
    status, doc = await s.products(catalogue_asins(s, 1))
    assert (status, doc["tokensLeft"], doc["tokensConsumed"]) == (429, -97, 0)
    assert (await s.token())["tokensLeft"] == -97  # /token is free and never refused
    st = s.sim.stats()
    assert st["rate_limited"] == 2 and st["tokens_consumed"] == 100


async def test_refill_is_stepped_and_capped_at_an_hour(fake: tuple[Sim, FakeClock]) -> None:
    s, clock = fake
    await clock.advance(0.99)
    assert (await s.token())["tokensLeft"] == 0
    await clock.advance(0.02)
    assert (await s.token())["tokensLeft"] == 5
    await clock.advance(100.0)
    assert (await s.token())["tokensLeft"] == 300  # 60 x 5, not 5 x 101
    st = s.sim.stats()
    assert st["tokens_generated"] == 300 and st["tokens_wasted"] == 5 * 101 - 300
    assert st["balance_samples"][-1][1] == 300 and len(st["balance_samples"]) == 102


async def test_refill_in_counts_down_to_the_next_step(fake: tuple[Sim, FakeClock]) -> None:
    s, clock = fake
    assert (await s.token())["refillIn"] == 1000
    await clock.advance(0.35)
    assert (await s.token())["refillIn"] == 650
    await clock.advance(0.7)
    assert (await s.token())["refillIn"] == 950


async def test_a_slow_answer_reports_the_state_when_it_leaves(
    fake: tuple[Sim, FakeClock],
) -> None:
    """Balance and refillIn are read together as the answer is sent: a refill
    that fell during a slow answer is in the balance, not a refillIn of 0."""
    s, clock = fake
    s.sim.control(faults=Faults(hang=1.0, hang_s=1.5))
    pending = asyncio.create_task(s.token())
    await wait_for(lambda: clock.sleepers > 0, 5, "the request to hang on the fake clock")
    await clock.advance(1.5)
    doc = await asyncio.wait_for(pending, 5)
    assert (doc["tokensLeft"], doc["refillIn"]) == (5, 500)


async def test_plan_changes_scheduled_and_by_control_move_rate_and_cap() -> None:
    clock = FakeClock()
    opts = options(refill_rate=5, refill_period_s=1.0, initial_tokens=0, plan_changes=[(2.5, 50)])
    async for s in started(opts, clock):
        await clock.advance(2.0)
        doc = await s.token()
        assert (doc["tokensLeft"], doc["refillRate"]) == (10, 5)
        await clock.advance(1.0)
        doc = await s.token()
        assert (doc["tokensLeft"], doc["refillRate"]) == (60, 50)
        s.sim.control(tokens=2000)
        s.sim.control(refill_rate=2)  # the smaller plan's cap (120) applies at once
        doc = await s.token()
        assert (doc["tokensLeft"], doc["refillRate"]) == (120, 2)
        status, _ = await s.get("/_sim/control", **{})  # GET is not the control route
        assert status == 404
        async with s.session.post(s.url + "/_sim/control", json={"refill_rate": 7}) as r:
            assert r.status == 200 and (await r.json())["refill_rate"] == 7
        async with s.session.post(s.url + "/_sim/control", json={"bogus": 1}) as r:
            assert r.status == 400


async def test_another_user_of_the_key_drains_each_period() -> None:
    clock = FakeClock()
    opts = options(refill_rate=10, refill_period_s=1.0, initial_tokens=0)
    async for s in started(opts, clock):
        s.sim.control(other_consumer_per_period=4)
        await clock.advance(5.0)
        assert (await s.token())["tokensLeft"] == 5 * (10 - 4)
        assert s.sim.stats()["other_consumed"] == 20


# costs ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("params", "per_product"),
    [
        ({}, 1),
        ({"history": 0, "days": 30, "stats": 90, "only-live-offers": 1}, 1),
        ({"rating": 1}, 2),
        ({"buybox": 1}, 3),
        ({"stock": 1}, 3),
        ({"update": 0}, 2),
        ({"rating": 1, "stock": 1, "buybox": 1}, 6),
    ],
)
async def test_product_cost_per_parameter(
    sim: Sim, params: dict[str, Any], per_product: int
) -> None:
    asins = catalogue_asins(sim, 3)
    status, doc = await sim.products(asins, **params)
    assert status == 200 and len(doc["products"]) == 3
    assert doc["tokensConsumed"] == 3 * per_product
    assert sim.sim.stats()["tokens_consumed"] == 3 * per_product


async def test_offers_replace_the_base_token_and_ignore_buybox(sim: Sim) -> None:
    asins = catalogue_asins(sim, 6)
    pages = [sim.sim.products.offer_pages(a) for a in asins]
    status, doc = await sim.products(asins, offers=100, buybox=1)
    assert status == 200
    assert doc["tokensConsumed"] == sum(6 * p for p in pages)
    assert [len(p["offers"]) for p in doc["products"]] == [10 * p for p in pages]
    status, doc = await sim.products(asins, offers=5)
    assert status in (400, 405) and doc["error"]


async def test_deal_pages_cost_five_and_post_works(sim: Sim) -> None:
    async with sim.session.post(sim.url + "/deal?key=k", json={**USED_SELECTION, "page": 1}) as r:
        doc = json.loads(await r.read())
    assert r.status == 200 and doc["tokensConsumed"] == 5 and len(doc["deals"]["dr"]) == 150
    assert sim.sim.stats()["deal_pages"] == 1


# /deal ---------------------------------------------------------------------------------
async def test_paging_is_consistent_with_a_short_last_page(sim: Sim) -> None:
    pages = [await sim.deals(page) for page in range(4)]
    assert [st for st, _ in pages] == [200] * 4
    sizes = [len(doc["deals"]["dr"]) for _, doc in pages]
    assert sizes == [150, 150, 100, 0]
    asins = [d["asin"] for _, doc in pages for d in doc["deals"]["dr"]]
    assert len(set(asins)) == 400 and set(REAL) <= set(asins)
    again = [d["asin"] for d in (await sim.deals(1))[1]["deals"]["dr"]]
    assert again == asins[150:300]
    decoded = decode_deals(json.dumps(pages[0][1]).encode())
    assert decoded.skipped == [] and len(decoded.items) == 150


async def test_sort_newest_first_follows_the_accelerated_keepa_clock() -> None:
    clock = FakeClock()
    opts = options(refill_period_s=1.0, changed_deals_per_period=30, new_deals_per_period=2)
    async for s in started(opts, clock):
        await clock.advance(3.0)
        minute = s.sim.keepa_minute
        docs = [(await s.deals(p))[1] for p in range(3)]
        deals = [d for doc in docs for d in doc["deals"]["dr"]]
        # Deal age: by creationDate (when Keepa found the deal), newest first;
        # the 30 deals changed each minute keep their place.
        found = [d["creationDate"] for d in deals]
        assert found == sorted(found, reverse=True)
        assert found[0] == minute and found.count(minute) == 2
        updates = [d["lastUpdate"] for d in deals]
        assert updates != sorted(updates, reverse=True)
        oldest_first = [
            d["creationDate"] for d in (await s.deals(0, sortType=-1))[1]["deals"]["dr"]
        ]
        assert oldest_first == sorted(oldest_first) and oldest_first[0] < minute - 60
        drops = [d["deltaPercent"][0][2] for d in (await s.deals(0, sortType=4))[1]["deals"]["dr"]]
        assert drops == sorted(drops) and drops[0] < 0


async def test_filters_and_the_twelve_hour_window() -> None:
    clock = FakeClock()
    opts = options(refill_period_s=1.0, new_deals_per_period=1, refill_rate=1000)
    async for s in started(opts, clock):
        def wanted(d: dict[str, Any]) -> bool:
            return bool(2000 <= d["current"][2] <= 10_000 and 1 <= d["current"][3] <= 1_000_000)

        # The catalogue holds deals on both sides of the filter (42 of 400 in
        # it), so the page shows that it filters and cannot pass by being empty.
        used = [d for d in s.sim.catalogue.deals if d["current"][2] > 0]
        want = {d["asin"] for d in used if wanted(d)}
        assert 0 < len(want) < len(used)
        _, doc = await s.deals(0, currentRange=[2000, 10_000], salesRankRange=[1, 1_000_000])
        page = doc["deals"]["dr"]
        assert len(page) == min(len(want), 150)
        for d in page:
            assert wanted(d) and d["asin"] in want, d["asin"]
        await clock.advance(12 * 60 + 361)  # every seeded deal is now older than 12 h
        listed = [d for p in range(6) for d in (await s.deals(p))[1]["deals"]["dr"]]
        assert 700 <= len(listed) <= 721  # only the deals born in the window
        assert min(d["creationDate"] for d in listed) >= s.sim.keepa_minute - 720


async def test_bad_selections_and_product_queries_are_400(sim: Sim) -> None:
    bad_selections = [
        "{oops",
        json.dumps({"priceTypes": [2]}),  # no domainId
        json.dumps({"domainId": 1, "priceTypes": [1, 2]}),
        json.dumps({"domainId": 1, "priceTypes": []}),
        json.dumps([1, 2]),
    ]
    for text in bad_selections:
        status, doc = await sim.get("/deal", selection=text)
        assert status == 400 and doc["error"]["message"], text
    status, doc = await sim.products([f"B0{i:08d}" for i in range(101)])
    assert status == 400
    status, doc = await sim.get("/product", asin="B000000001")  # no domain
    assert status == 400
    assert sim.sim.stats()["tokens_consumed"] == 0


# /product ------------------------------------------------------------------------------
async def test_the_two_real_samples_are_served_exactly_as_recorded(sim: Sim) -> None:
    recorded = {a: json.loads(sample_bytes(a))["products"][0]
                for a in REAL}  # fmt: skip
    # Asked as they were recorded: B0D8W1YVBX with buybox and rating (its
    # tokensConsumed 4 = 1 + 2 + 1), B0F7XPYCSJ with neither (1).
    status, doc = await sim.products(["B0D8W1YVBX"], stats=180, buybox=1, rating=1)
    assert status == 200
    assert doc["products"] == [recorded["B0D8W1YVBX"]]
    status, doc = await sim.products(["B0F7XPYCSJ"], stats=180)
    assert status == 200
    assert doc["products"] == [recorded["B0F7XPYCSJ"]]
    _, doc = await sim.products(list(REAL), history=0, buybox=1, rating=1)  # no csv, no stats
    for p in doc["products"]:
        want = {k: v for k, v in recorded[p["asin"]].items() if k not in ("csv", "stats")}
        assert p == want


async def test_other_asins_are_deterministic_variations_of_the_samples(sim: Sim) -> None:
    asins = catalogue_asins(sim, 20)
    _, doc = await sim.products(asins, stats=180)
    keys = [set(json.loads(sample_bytes(a))["products"][0])
            for a in REAL]  # fmt: skip
    products = doc["products"]
    assert [p["asin"] for p in products] == asins
    assert all(set(p) in keys for p in products)
    assert len({p["stats"]["avg90"][1] for p in products}) > 3  # prices vary per ASIN
    decoded = decode_products(json.dumps(doc).encode())
    assert decoded.skipped == [] and len(decoded.items) == 20
    other = Simulator(options())  # same seed, another instance: same answer
    for p in products[:3]:
        mine = other.products.product_piece(
            p["asin"], history=True, stats=True, days=0, title=p["title"],
            withhold=withheld(buybox=False, rating=False),
            deal=other.catalogue.by_asin[p["asin"]],
        ).data  # fmt: skip
        assert json.loads(mine) == p


async def test_a_product_follows_its_deal_with_noise(sim: Sim) -> None:
    # The deal object predicts the product: its 90-day averages within the
    # noise (+-12 %), as the screen assumes.
    asins = catalogue_asins(sim, 30)
    _, doc = await sim.products(asins, stats=180)
    products = doc["products"]
    assert len(products) == 30
    ratios = []
    for p in products:
        deal = sim.sim.catalogue.by_asin[p["asin"]]
        ratios.append(p["stats"]["avg90"][2] / deal["avg"][3][2])
    assert all(0.87 <= r <= 1.13 for r in ratios), ratios
    assert len({round(r, 3) for r in ratios}) > 10  # noise, not one factor


async def test_a_realistic_share_of_deals_is_profitable() -> None:
    # The hidden premium: 3-10 % of deals resell far above their price.
    sim = Simulator(options(catalogue_size=3000, profitable_share=0.06))
    deals = [d for d in sim.catalogue.deals if d["current"][2] > 0]
    premium = [d["avg"][3][2] / d["current"][2] for d in deals]
    share = sum(1 for p in premium if p > 1.55) / len(deals)
    assert 0.03 <= share <= 0.10, share


async def test_missing_and_invalid_products() -> None:
    async for s in started(options(missing_rate=0.3, invalid_rate=0.2)):
        asins = catalogue_asins(s, 100)
        _, doc = await s.products(asins, update=-1)
        returned = {p["asin"]: p for p in doc["products"]}
        missing = set(asins) - set(returned)
        invalid = [a for a, p in returned.items() if p["productType"] == 4]
        assert 10 < len(missing) < 50 and 5 < len(invalid) < 40
        assert doc["tokensConsumed"] == len(returned)  # unknown + update=-1: free
        assert not missing & set(s.sim.products_bought)
        _, again = await s.products(asins)  # Keepa looked the unknown ones up: billed
        assert {p["asin"] for p in again["products"]} == set(returned)
        assert again["tokensConsumed"] == 100


# faults ----------------------------------------------------------------------------------
async def test_reset_truncated_and_non_json_faults(sim: Sim) -> None:
    sim.sim.control(faults=Faults(reset=1.0))
    with pytest.raises(aiohttp.ClientConnectionError):
        await sim.token()
    sim.sim.control(faults=Faults(truncated=1.0))
    with pytest.raises(aiohttp.ClientPayloadError):
        await sim.deals()
    assert sim.sim.stats()["tokens_consumed"] == 5  # executed and billed, answer lost
    sim.sim.control(faults=Faults(non_json=1.0))
    async with sim.session.get(sim.url + "/token", params={"key": "k"}) as r:
        assert r.status == 200 and r.content_type == "text/html"
        with pytest.raises(json.JSONDecodeError):
            json.loads(await r.read())
    sim.sim.control(faults=Faults())
    # /token is free: what it reports is the balance as it answered, which a
    # refill between the reads (a loaded machine) can only raise.
    before = sim.sim.stats()["balance"]
    left = (await sim.token())["tokensLeft"]
    assert before <= left <= sim.sim.stats()["balance"]
    st = sim.sim.stats()
    assert st["faults"]["reset"] >= 1 and st["faults"]["truncated"] == 1
    assert st["faults"]["non_json"] == 1 and st["responses"]["token"]["reset"] >= 1


async def test_a_hang_outlasts_the_client_and_stop_ends_it(sim: Sim) -> None:
    sim.sim.control(faults=Faults(hang=1.0, hang_s=60.0))
    timeout = aiohttp.ClientTimeout(total=0.2)
    with pytest.raises(TimeoutError):
        async with sim.session.get(sim.url + "/token?key=k", timeout=timeout) as r:
            await r.read()
    assert sim.sim.stats()["faults"]["hang"] == 1
    await asyncio.wait_for(sim.sim.stop(), 5)  # not after 60 s


async def test_bad_items_are_skipped_by_the_decoder_one_by_one(sim: Sim) -> None:
    sim.sim.control(faults=Faults(bad_items=0.5))
    _, doc = await sim.deals()
    deals = decode_deals(json.dumps(doc).encode())
    assert len(deals.items) + len(deals.skipped) == 150
    assert 30 < len(deals.skipped) < 120
    # 100 products, half of them lying: an unusable one (no asin, 1 lie in 4)
    # is missing from a draw of ~50 with a chance of (3/4)**50, ~6e-7.
    _, doc = await sim.products(catalogue_asins(sim, 100), stats=180)
    products = decode_products(json.dumps(doc).encode())
    assert len(products.items) + len(products.skipped) == 100 and products.skipped
    # A product with an odd field is kept with the field named; one without
    # an ASIN cannot be, and is skipped.
    repaired = [i for i in products.items if i.unreadable]
    assert repaired
    assert sim.sim.stats()["faults"]["bad_items"] == (
        len(deals.skipped) + len(products.skipped) + len(repaired)
    )


async def test_outage_and_a_wrong_key_recover_via_control(sim: Sim) -> None:
    sim.sim.control(outage=True)
    outcomes: set[int | str] = set()
    for _ in range(12):
        try:
            status, _ = await sim.get("/token")
            outcomes.add(status)
        except aiohttp.ClientConnectionError:
            outcomes.add("reset")
    assert outcomes <= {503, "reset"} and outcomes
    async with sim.session.post(sim.url + "/_sim/control", json={"outage": False}) as r:
        assert r.status == 200
    sim.sim.control(api_keys=["right"])
    status, doc = await sim.get("/deal", key="wrong", selection=json.dumps(USED_SELECTION))
    assert status == 402 and doc["error"]["type"] and doc["tokensConsumed"] == 0
    body = {"api_keys": ["right", "wrong"]}
    async with sim.session.post(sim.url + "/_sim/control", json=body) as r:
        assert r.status == 200
    status, _ = await sim.get("/deal", key="wrong", selection=json.dumps(USED_SELECTION))
    assert status == 200


async def test_stats_over_http(sim: Sim) -> None:
    await sim.products(catalogue_asins(sim, 2))
    async with sim.session.get(sim.url + "/_sim/stats") as r:
        st = await r.json()
    assert st["requests"]["product"] == 1 and st["products_billed"] == 2
    assert sorted(st["products_bought"]) == sorted(catalogue_asins(sim, 2))


# the process -----------------------------------------------------------------------------
async def test_main_runs_as_a_process_and_stops_on_sigterm() -> None:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "dealsd.simulator", "--port", "0", "--period", "0.1",
        "--refill-rate", "7", "--catalogue", "200", "--api-key", "sekrit",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        url = (await asyncio.wait_for(proc.stdout.readline(), 10)).decode().strip()
        assert url.startswith("http://127.0.0.1:")
        async with aiohttp.ClientSession() as session:
            async with session.get(url + "/token", params={"key": "sekrit"}) as r:
                doc = await r.json()
            assert r.status == 200 and doc["refillRate"] == 7
            async with session.get(url + "/token", params={"key": "nope"}) as r:
                assert r.status == 402
        proc.send_signal(signal.SIGTERM)
        _, err = await asyncio.wait_for(proc.communicate(), 10)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 0, err.decode()[-2000:]
    assert b"sekrit" not in err
