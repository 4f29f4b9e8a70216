"""The Keepa client over loopback against the real simulator.

Each test runs the simulator (``dealsd.simulator``) in accelerated time and
the real ``TokenScheduler``; request counts come from the simulator's own
stats, so "retried" and "not retried" are what the server saw. The client's
backoff sleeps go through a ``FakeClock`` where a test needs to hold a retry,
which also proves the backoff uses the injected clock.
"""

from __future__ import annotations

import asyncio
import logging
import random
import socket
import traceback
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import pytest
import structlog
from helpers import wait_for
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from dealsd.clock import Clock, FakeClock, SystemClock
from dealsd.keepa import (
    AccessDenied,
    KeepaClient,
    KeepaError,
    ProductParams,
    RateLimited,
    RequestRejected,
    TransientError,
    _describe,
    estimate_product_cost,
    redact,
)
from dealsd.simulator import Faults, SimOptions, Simulator
from dealsd.tokens import TokenScheduler

KEY = "SECRETKEY123"
PERIOD_S = 0.1
SELECTION: dict[str, Any] = {"priceTypes": [2], "dateRange": 1, "sortType": 4}
WEIGHTS = {"upserter": 1.0, "backfiller": 3.0}


@asynccontextmanager
async def simulator(**options: Any) -> AsyncIterator[tuple[Simulator, str]]:
    opts: dict[str, Any] = {
        "refill_rate": 200, "refill_period_s": PERIOD_S, "catalogue_size": 300,
        "api_keys": frozenset({KEY}), "missing_rate": 0.0, "invalid_rate": 0.0,
    }
    opts.update(options)
    sim = Simulator(SimOptions(**opts))
    base = await sim.start("127.0.0.1", 0)
    try:
        yield sim, base
    finally:
        await sim.stop()


def scheduler(clock: Clock | None = None) -> TokenScheduler:
    return TokenScheduler(clock=clock or SystemClock(), weights=WEIGHTS, batch_minutes=1.0)


def client(
    base: str,
    tokens: TokenScheduler,
    *,
    clock: Clock | None = None,
    key: str = KEY,
    **kwargs: Any,
) -> KeepaClient:
    opts: dict[str, Any] = {
        "connect_timeout_s": 1.0, "read_timeout_s": 2.0, "max_attempts": 3,
        "rng": random.Random(7), "backoff_base_s": 0.01, "backoff_max_s": 0.05,
    }
    opts.update(kwargs)
    return KeepaClient(
        base_url=base, api_key=key, domain=1, tokens=tokens, clock=clock or SystemClock(),
        **opts,
    )


def requests(sim: Simulator) -> int:
    return int(sim.stats()["requests"])


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def exception_texts(exc: BaseException) -> str:
    """Everything a log or a traceback could show of ``exc`` and its chain."""
    parts = ["".join(traceback.format_exception(exc))]
    seen: BaseException | None = exc
    while seen is not None:
        parts += [str(seen), repr(seen), repr(seen.args), repr(vars(seen))]
        seen = seen.__cause__ or seen.__context__
    return "\n".join(parts)


# -- pure parts -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("GET https://api.keepa.com/deal?key=abc123&page=0", "GET https://api.keepa.com/deal?key=***&page=0"),
        ("http://h/product?domain=1&key=abc", "http://h/product?domain=1&key=***"),
        ("'http://h/token?KEY=abc' failed", "'http://h/token?KEY=***' failed"),
        ("url=http://h/x?key=a%20b#frag", "url=http://h/x?key=***#frag"),
        ("no key here, monkey=1", "no key here, monkey=1"),
        ("key=", "key=***"),
        ("GET /deal?api_key=abc&page=0", "GET /deal?api_key=***&page=0"),
        ("url=http://h/x?apikey=abc", "url=http://h/x?apikey=***"),
        ("API-KEY=abc def", "API-KEY=*** def"),
        ("?Api_Key=abc#x", "?Api_Key=***#x"),
        ("access_key=abc&secret_key=def", "access_key=***&secret_key=***"),
        ("donkey=1&turnkey=2", "donkey=1&turnkey=2"),
    ],
)
def test_redact(text: str, expected: str) -> None:
    assert redact(text) == expected


def test_error_messages_are_redacted() -> None:
    exc = TransientError("fetch http://h/deal?key=SECRET failed", detail="bad key=SECRET")
    assert "SECRET" not in str(exc) + repr(exc) + (exc.detail or "")


def test_transport_errors_described_without_url() -> None:
    url = URL(f"http://h/deal?key={KEY}&page=0")
    info = aiohttp.RequestInfo(url, "GET", CIMultiDictProxy(CIMultiDict()), url)
    errors: list[BaseException] = [
        aiohttp.ClientResponseError(info, (), status=500, message="boom"),
        aiohttp.InvalidURL(url),
        aiohttp.ClientPayloadError(f"cut short at {url}"),
        aiohttp.ServerTimeoutError(f"timeout reading {url}"),
    ]
    for exc in errors:
        assert KEY in str(exc) + repr(exc)  # aiohttp does carry it ...
        assert KEY not in _describe(exc)  # ... the client's words do not


def test_product_params_query_and_stats_only() -> None:
    full = ProductParams(
        history=True, days=90, stats=180, offers=20, only_live_offers=True, rating=True,
        update=48, buybox=True,
    )
    assert full.to_query() == {
        "history": "1", "days": "90", "stats": "180", "offers": "20",
        "only-live-offers": "1", "rating": "1", "buybox": "1", "update": "48",
    }
    light = full.stats_only()
    # The buy box stays: without it a refresh could not renew the buy box columns.
    assert light.to_query() == {"history": "0", "stats": "180", "buybox": "1", "update": "48"}
    # update=-1 is sent: leaving it out lets Keepa force paid refreshes.
    assert ProductParams().to_query()["update"] == "-1"
    with pytest.raises(ValueError):
        ProductParams(offers=10)


def test_estimate_product_cost() -> None:
    assert estimate_product_cost(ProductParams(), 10) == 10
    assert estimate_product_cost(ProductParams(offers=20), 10) == 60
    assert estimate_product_cost(ProductParams(rating=True), 3) == 6
    assert estimate_product_cost(ProductParams(buybox=True), 2) == 6
    # buybox is ignored by Keepa when offers are asked for.
    assert estimate_product_cost(ProductParams(offers=40, buybox=True, rating=True), 2) == 14
    assert estimate_product_cost(ProductParams().stats_only(), 100) == 100


def test_base_url_validated() -> None:
    with pytest.raises(ValueError, match="base_url"):
        client("ftp://h", scheduler())


# -- over loopback ------------------------------------------------------------------------


def responses(sim: Simulator, endpoint: str) -> dict[str, int]:
    return dict(sim.stats()["responses"].get(endpoint, {}))


def asked(sim: Simulator, endpoint: str) -> int:
    return int(sim.stats()["requests"].get(endpoint, 0))


async def test_deal_page_decoded_and_envelope_synced() -> None:
    # A 5 s period: no refill step falls between the response and the look.
    async with simulator(refill_period_s=5.0) as (sim, base):
        tokens = scheduler()
        async with client(base, tokens) as kc:
            # page and domainId are the client's: a caller's values are overridden.
            page = await kc.deals({**SELECTION, "page": 99, "domainId": 3}, 0)
        assert len(page.items) == 150 and page.skipped == []
        assert page.items[0].raw.startswith(b"{")
        assert page.envelope is not None and page.envelope.tokens_consumed == 5
        assert tokens.snapshot().balance == page.envelope.tokens_left == sim.stats()["balance"]
        assert tokens.cost_per_item("upserter") == 5
        assert responses(sim, "deal") == {"200": 1}


async def test_products_missing_and_cost_observed() -> None:
    async with simulator(refill_period_s=5.0, missing_rate=0.3) as (sim, base):
        asins = [d["asin"] for d in sim.catalogue.deals[:20]]
        expected_missing = [a for a in asins if sim.products.is_missing(a, 0.3)]
        assert 0 < len(expected_missing) < len(asins)  # the test means something
        tokens = scheduler()
        async with client(base, tokens) as kc:
            page = await kc.products(asins, ProductParams(), consumer="backfiller")
        assert page.missing == expected_missing
        assert {i.value.asin for i in page.items} == set(asins) - set(expected_missing)
        assert page.envelope is not None
        assert page.tokens_consumed == page.envelope.tokens_consumed == len(page.items)
        assert tokens.cost_per_item("backfiller") == pytest.approx(len(page.items) / 20)
        assert tokens.snapshot().balance == page.envelope.tokens_left


async def test_malformed_items_skipped_and_logged_once() -> None:
    async with simulator(faults=Faults(bad_items=0.2)) as (sim, base):
        async with client(base, scheduler()) as kc:
            with structlog.testing.capture_logs() as logs:
                page = await kc.deals(SELECTION, 0)
        assert page.skipped and page.items
        assert len(page.items) + len(page.skipped) == 150
        warned = [e for e in logs if e["event"] == "keepa.items_skipped"]
        assert len(warned) == 1 and warned[0]["count"] == len(page.skipped)
        assert warned[0]["first_reason"] == page.skipped[0].reason
        assert asked(sim, "deal") == 1  # bad items are not a reason to ask again


async def test_skipped_products_are_not_missing() -> None:
    async with simulator(faults=Faults(bad_items=0.5)) as (sim, base):
        asins = [d["asin"] for d in sim.catalogue.deals[:20]]
        async with client(base, scheduler()) as kc:
            page = await kc.products(asins, ProductParams(history=False))
        assert page.skipped
        # A product with an odd field is kept (the field named), not skipped
        # and not missing: it was paid for.
        repaired = {i.value.asin for i in page.items if i.unreadable}
        assert repaired and not repaired & set(page.missing)
        assert all(s.asin is None for s in page.skipped)
        nameless = sum(1 for s in page.skipped if s.asin is None)
        assert len(page.missing) == nameless  # an item without its ASIN cannot be placed


async def test_400_rejected_with_detail_not_retried() -> None:
    async with simulator() as (sim, base):
        tokens = scheduler()
        async with client(base, tokens) as kc:
            with pytest.raises(RequestRejected) as caught:
                await kc.deals({"priceTypes": [1, 2]}, 0)
        exc = caught.value
        assert exc.status == 400 and exc.detail is not None and "priceTypes" in exc.detail
        assert exc.error is not None and exc.error.type == "invalidParameter"
        assert exc.envelope is not None  # the error's envelope was read ...
        assert tokens.snapshot().synced_at is not None  # ... and handed to the scheduler
        assert responses(sim, "deal") == {"400": 1}


async def test_404_and_405_rejected_not_retried() -> None:
    async with simulator() as (sim, base):
        async with client(base + "/v9", scheduler()) as kc:
            with pytest.raises(RequestRejected) as caught:
                await kc.token_status()
        assert caught.value.status == 404 and "no such endpoint" in (caught.value.detail or "")
        params = ProductParams()
        object.__setattr__(params, "offers", 10)  # past the client's own check
        async with client(base, scheduler()) as kc:
            with pytest.raises(RequestRejected) as caught:
                await kc.products(["B0D8W1YVBX"], params)
        assert caught.value.status == 405
        assert responses(sim, "other") == {"404": 1} and responses(sim, "product") == {"405": 1}


@pytest.mark.parametrize("key", ["WRONGKEY99", ""])
async def test_402_access_denied_not_retried(key: str) -> None:
    async with simulator() as (sim, base):
        async with client(base, scheduler(), key=key) as kc:
            with pytest.raises(AccessDenied) as caught:
                await kc.products(["B0D8W1YVBX"], ProductParams())
        assert caught.value.status == 402
        assert responses(sim, "product") == {"402": 1}


async def test_token_status_returns_envelope() -> None:
    async with simulator(initial_tokens=77, refill_period_s=5.0) as (sim, base):
        tokens = scheduler()
        async with client(base, tokens) as kc:
            env = await kc.token_status()
        assert env.tokens_left == 77 and env.tokens_consumed == 0
        assert tokens.snapshot().balance == 77
        assert responses(sim, "token") == {"200": 1}


async def test_429_waits_for_refill_and_retries() -> None:
    async with simulator(initial_tokens=0, refill_rate=50) as (sim, base):
        tokens = scheduler()
        async with client(base, tokens) as kc:
            page = await kc.deals(SELECTION, 0)
        assert page.items
        assert responses(sim, "deal") == {"429": 1, "200": 1}
        assert tokens.snapshot().rate_limited == 1


async def test_429_every_time_gives_up_as_rate_limited() -> None:
    # No refill at all: the scheduler waits a (default, 60 s) period per retry,
    # on a fake clock that the test moves, jumping a minute at a time.
    fake = FakeClock()
    async with simulator(initial_tokens=0, refill_rate=0) as (sim, base):
        tokens = scheduler(fake)
        async with client(base, tokens, clock=fake) as kc:
            call = asyncio.create_task(kc.deals(SELECTION, 0))
            for _ in range(50):
                if call.done():
                    break
                await wait_for(
                    lambda: call.done() or bool(tokens.snapshot().waiting), 3,
                    "the call done or waiting for tokens", every=0.005,
                )  # fmt: skip
                await fake.advance(61.0)
            with pytest.raises(RateLimited) as caught:
                await call
        assert isinstance(caught.value, TransientError) and caught.value.status == 429
        assert responses(sim, "deal") == {"429": 3}
        assert tokens.snapshot().rate_limited == 3


FAULTS = ["error_5xx", "reset", "truncated", "non_json", "hang"]


@pytest.mark.parametrize("fault", FAULTS)
async def test_transient_fault_retried_after_backoff(fault: str) -> None:
    fake = FakeClock()  # the client's backoff only: the retry waits for the test
    async with simulator(faults=Faults(**{fault: 1.0, "hang_s": 5.0})) as (sim, base):
        # 1 s: short for the hang, long enough for a whole page on a loaded
        # machine (0.2 s timed out the retry's 300 KB answer once: a second fault).
        async with client(base, scheduler(), clock=fake, read_timeout_s=1.0) as kc:
            call = asyncio.create_task(kc.deals(SELECTION, 0))
            await wait_for(lambda: fake.sleepers == 1, 5, "a request asleep", every=0.005)
            assert asked(sim, "deal") == 1 and not call.done()
            sim.control(faults={fault: 0.0})
            await fake.advance(0.01)  # full jitter: at most the base (0.01) on attempt 1
            page = await asyncio.wait_for(call, 3.0)
        assert page.items
        assert asked(sim, "deal") == 2
        assert sim.stats()["faults"][fault] == 1


async def test_transient_gives_up_after_max_attempts_with_jittered_backoff() -> None:
    delays: list[float] = []

    class Recording(SystemClock):
        async def sleep(self, seconds: float) -> None:
            delays.append(seconds)
            await super().sleep(seconds)

    async with simulator(faults=Faults(error_5xx=1.0)) as (sim, base):
        async with client(
            base, scheduler(), clock=Recording(), max_attempts=4, backoff_base_s=0.02,
        ) as kc:
            with pytest.raises(TransientError) as caught:
                await kc.deals(SELECTION, 0)
    assert not isinstance(caught.value, RateLimited)
    assert caught.value.status in (500, 502, 503) and "after 4 attempts" in str(caught.value)
    assert asked(sim, "deal") == 4
    assert len(delays) == 3  # no sleep after the last attempt
    for n, delay in enumerate(delays):
        assert 0.0 <= delay <= 0.02 * 2**n
    assert len(set(delays)) == 3  # jittered, not a fixed schedule


async def test_connection_refused_is_transient() -> None:
    base = f"http://127.0.0.1:{closed_port()}"
    async with client(base, scheduler()) as kc:
        with pytest.raises(TransientError) as caught:
            await kc.token_status()
    assert "cannot connect" in str(caught.value) and caught.value.status is None


async def test_envelope_sync_absorbs_another_user_of_the_key() -> None:
    async with simulator(refill_period_s=5.0) as (sim, base):
        mine, theirs = scheduler(), scheduler()
        async with client(base, mine) as kc, client(base, theirs) as other:
            first = await kc.deals(SELECTION, 0)
            assert first.envelope is not None
            assert mine.snapshot().balance == first.envelope.tokens_left
            asins = [d["asin"] for d in sim.catalogue.deals[:100]]
            for _ in range(3):  # someone else spends 300 tokens of the same key
                await other.products(asins, ProductParams(history=False))
            # Locally nothing happened since; the next envelope says otherwise.
            assert mine.snapshot().balance == first.envelope.tokens_left
            second = await kc.deals(SELECTION, 1)
        assert second.envelope is not None
        assert second.envelope.tokens_left <= first.envelope.tokens_left - 300
        assert mine.snapshot().balance == second.envelope.tokens_left == sim.stats()["balance"]


async def test_cancel_while_waiting_for_tokens_leaves_no_waiter() -> None:
    fake = FakeClock()
    async with simulator(initial_tokens=0, refill_rate=0) as (sim, base):
        tokens = scheduler(fake)
        async with client(base, tokens, clock=fake) as kc:
            call = asyncio.create_task(kc.deals(SELECTION, 0))
            # The 429 synced a zero balance: the retry waits in acquire.
            await wait_for(
                lambda: tokens.snapshot().waiting == {"upserter": 1}, 3,
                "the upserter waiting for tokens", every=0.005,
            )  # fmt: skip
            call.cancel()
            with pytest.raises(asyncio.CancelledError):
                await call
        snap = tokens.snapshot()
        assert snap.waiting == {} and snap.in_flight == 0 and snap.balance == 0
        assert snap.granted_by == {"upserter": 5}  # the one request that was sent
        assert responses(sim, "deal") == {"429": 1}


async def test_cancel_in_flight_then_the_next_call_resyncs() -> None:
    async with simulator(refill_period_s=5.0, faults=Faults(hang_s=5.0)) as (sim, base):
        tokens = scheduler()
        async with client(base, tokens) as kc:
            # Synced first, as the daemon is by its startup check: an unsynced
            # scheduler's first grant is a probe, and a lost probe holds the
            # next grant for a (default 60 s) period.
            synced = (await kc.token_status()).tokens_left
            sim.control(faults={"hang": 1.0})
            call = asyncio.create_task(kc.deals(SELECTION, 0))
            await wait_for(
                lambda: sim.stats()["faults"].get("hang", 0) == 1, 3, "a hanging request",
                every=0.005,
            )
            call.cancel()
            with pytest.raises(asyncio.CancelledError):
                await asyncio.wait_for(call, 1.0)
            snap = tokens.snapshot()
            # Released: no longer in flight, but its cost stays deducted
            # (Keepa may have billed it) until the next envelope says.
            assert snap.waiting == {} and snap.in_flight == 0
            assert snap.balance <= synced - 5
            sim.control(faults={"hang": 0.0})
            page = await kc.deals(SELECTION, 1)  # the same session still works
        assert page.envelope is not None
        server = page.envelope.tokens_left
        assert server == sim.stats()["balance"]
        # At most the lost request's estimate below the truth, never above it.
        assert server - 5 <= tokens.snapshot().balance <= server
        assert tokens.snapshot().waiting == {}


async def test_cancelled_first_products_call_does_not_delay_the_next_grant() -> None:
    # Unsynced, the first grant is a probe; a probe that is never answered
    # holds the next grant for a whole (default 60 s) period. A caller that
    # was cancelled is not an unanswered probe: the client releases it.
    async with simulator(faults=Faults(hang_s=5.0)) as (sim, base):
        tokens = scheduler()
        async with client(base, tokens) as kc:
            sim.control(faults={"hang": 1.0})
            call = asyncio.create_task(kc.products(["B0D8W1YVBX"], ProductParams()))
            await wait_for(
                lambda: sim.stats()["faults"].get("hang", 0) == 1, 3, "a hanging request",
                every=0.005,
            )
            call.cancel()
            with pytest.raises(asyncio.CancelledError):
                await asyncio.wait_for(call, 1.0)
            assert tokens.snapshot().in_flight == 0
            sim.control(faults={"hang": 0.0})
            # Not a speed figure: without the release this waits 60 s.
            page = await asyncio.wait_for(
                kc.products(["B0F7XPYCSJ"], ProductParams(), consumer="other"), 5.0
            )
        assert page.envelope is not None
        assert tokens.snapshot().in_flight == 0


def test_release_without_a_grant_does_nothing() -> None:
    tokens = scheduler()
    assert tokens.release("backfiller") is False
    assert tokens.snapshot().in_flight == 0


async def test_key_never_leaks(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    failures: list[KeepaError] = []

    async def expect_failure(kc: KeepaClient, call: str) -> None:
        try:
            if call == "deals":
                await kc.deals({"priceTypes": []}, 0)
            elif call == "products":
                await kc.products(["B0D8W1YVBX", "B0F7XPYCSJ"], ProductParams())
            else:
                await kc.token_status()
        except KeepaError as exc:
            failures.append(exc)
        else:
            raise AssertionError(f"{call} should have failed")

    with structlog.testing.capture_logs() as logs:
        async with simulator(faults=Faults(hang_s=5.0)) as (sim, base):
            async with client(base, scheduler(), read_timeout_s=0.2, max_attempts=2) as kc:
                await expect_failure(kc, "deals")  # 400
                for fault in FAULTS:
                    sim.control(faults={fault: 1.0})
                    await expect_failure(kc, "products")
                    sim.control(faults={fault: 0.0})
                sim.control(api_keys=["SOMEONE-ELSE"])
                await expect_failure(kc, "products")  # 402
                assert KEY not in repr(kc)
            async with client(base + "/v9", scheduler()) as kc:
                await expect_failure(kc, "token")  # 404
        async with client(f"http://127.0.0.1:{closed_port()}", scheduler()) as kc:
            await expect_failure(kc, "token")
    kinds = {type(f).__name__ for f in failures}
    assert kinds == {"RequestRejected", "TransientError", "AccessDenied"}
    assert len(failures) == 9
    for exc in failures:
        assert KEY not in exception_texts(exc)
        assert exc.__cause__ is None and exc.__context__ is None
    assert logs and KEY not in repr(logs)
    assert KEY not in caplog.text
