"""The simulator's HTTP face: the app and its lifecycle, the envelope, controls.

``Simulator`` owns the state (options, token bucket, a catalogue per
marketplace, the simulated time) and serves it: each request goes through one
pipeline (``_answer``) that adds the latency, lets each fault strike where it
would on Keepa, checks the key, runs the endpoint's work (``answers.py``) and
wraps it in the envelope. Every answer an API client can parse carries the
token envelope, errors included. The faults themselves, and which are billed,
are ``faults.py``'s; ``control`` and ``stats`` (also over ``/_sim/``) change
and show the running simulator.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import time
from collections import Counter
from dataclasses import asdict
from typing import Any

import msgspec
import structlog
from aiohttp import web

from dealsd.clock import Clock, SystemClock, epoch_to_keepa_minutes, sleep_or_stop
from dealsd.simulator import api
from dealsd.simulator.answers import Answers
from dealsd.simulator.bucket import TokenBucket
from dealsd.simulator.catalogue import Catalogue, RealDeal
from dealsd.simulator.faults import FaultInjector
from dealsd.simulator.gzjoin import gzip_join, piece
from dealsd.simulator.options import Faults, SimOptions
from dealsd.simulator.products import ProductFactory

log = structlog.get_logger(__name__)

CONTROL_KEYS = frozenset(
    {"refill_rate", "faults", "api_keys", "outage", "other_consumer_per_period",
     "latency_s", "tokens", "missing_rate", "invalid_rate"}
)  # fmt: skip
BIG_BODY = 256 * 1024  # gzip bodies above this in a thread: the loop keeps serving
_COMMA = piece(b",")


class Simulator:
    """A local Keepa over HTTP; see ``SimOptions`` and ``Faults``."""

    def __init__(self, options: SimOptions, *, clock: Clock | None = None) -> None:
        self.options = options
        self.clock: Clock = clock or SystemClock()
        self.base_url = ""
        self.outage = False
        self.requests: Counter[str] = Counter()
        self.responses: dict[str, Counter[str]] = {}
        self.products = ProductFactory(seed=options.seed)
        self.start_minute = epoch_to_keepa_minutes(self.clock.now())
        reals = [
            RealDeal(
                asin=p["asin"],
                title=p["title"],
                root_category=p["rootCategory"],
                categories=list(p["categories"]),
                image=p["images"][0].get("l") or p["images"][0]["m"],
                current=list(p["stats"]["current"]),
            )
            for p in self.products.real_deal_fields()
        ]
        self._reals = reals
        self.catalogue = Catalogue(
            size=options.catalogue_size, seed=options.seed, start_minute=self.start_minute,
            real=reals, newest_by=options.newest_by, profitable_share=options.profitable_share,
        )  # fmt: skip
        # One catalogue per marketplace, made when a domain is first asked for:
        # amazon.com's is the one above; another domain has other deals (its
        # own seed) and the real samples too (one ASIN on two domains).
        self.catalogues: dict[int, Catalogue] = {1: self.catalogue}
        self.bucket = TokenBucket(
            clock=self.clock,
            refill_rate=options.refill_rate,
            period_s=options.refill_period_s,
            initial=options.initial_tokens,
            plan_changes=list(options.plan_changes),
            other_per_period=options.other_consumer_per_period,
            on_step=self._on_step,
        )
        self._injector = FaultInjector(options)
        self._answers = Answers(
            options=options, bucket=self.bucket, catalogue_for=self.catalogue_for,
            products=self.products, faults=self._injector, keepa_minute=lambda: self.keepa_minute,
        )  # fmt: skip
        self._stopping = asyncio.Event()
        self._runner: web.AppRunner | None = None

    # lifecycle ------------------------------------------------------------------
    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Serve on ``host:port`` (0 = a free port); return the base URL."""
        app = web.Application(client_max_size=4 * 1024 * 1024)
        app.router.add_get("/deal", self._deal)
        app.router.add_post("/deal", self._deal)
        app.router.add_get("/product", self._product)
        app.router.add_get("/token", self._token)
        app.router.add_get("/_sim/stats", self._stats_route)
        app.router.add_post("/_sim/control", self._control_route)
        app.router.add_route("*", "/{tail:.*}", self._not_found)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        bound_host, bound_port = self._runner.addresses[0][:2]
        self.bucket.restart()
        self.base_url = f"http://{host or bound_host}:{bound_port}"
        log.info("simulator_started", url=self.base_url, refill_rate=self.bucket.refill_rate,
                 period_s=self.bucket.period_s, catalogue=len(self.catalogue.deals))  # fmt: skip
        return self.base_url

    async def stop(self) -> None:
        self._stopping.set()  # hanging answers end now, not after hang_s
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        log.info("simulator_stopped", requests=sum(self.requests.values()))

    # time -----------------------------------------------------------------------
    def catalogue_for(self, domain: int) -> Catalogue:
        """The marketplace's catalogue (``domainId`` / ``domain`` of a request)."""
        found = self.catalogues.get(domain)
        if found is None:
            found = self.catalogues[domain] = Catalogue(
                size=self.options.catalogue_size, seed=self.options.seed * 100 + domain,
                start_minute=self.catalogue.minute, real=self._reals,
            )  # fmt: skip
        return found

    def _on_step(self, step: int) -> None:
        for catalogue in self.catalogues.values():
            catalogue.step(
                self.start_minute + step,
                changed=self.options.changed_deals_per_period,
                new=self.options.new_deals_per_period,
            )

    def reprice(self, asin: str, factor: float, *, domain: int = 1) -> dict[str, Any]:
        """Change one deal's prices now (``Catalogue.reprice``); returns the deal.

        The catalogue is first brought to the current Keepa minute, so the
        deal's ``lastUpdate`` is now and a client sees a newer deal. The next
        /deal shows it: the cached query results are dropped, as if Keepa's two
        minutes had passed (a test need not wait them out).
        """
        self.bucket.advance()
        deal = self.catalogue_for(domain).reprice(asin, factor)
        self._answers.forget_queries()
        return deal

    @property
    def keepa_minute(self) -> int:
        self.bucket.advance()
        return self.start_minute + self.bucket.counters.steps

    # what was sold, and what struck -----------------------------------------------
    @property
    def products_bought(self) -> Counter[str]:
        """Products billed, per ASIN (``Answers``)."""
        return self._answers.products_bought

    @property
    def products_bought_in(self) -> Counter[tuple[int, str]]:
        """Products billed, per (marketplace, ASIN)."""
        return self._answers.products_bought_in

    @property
    def deal_pages(self) -> int:
        """/deal pages served."""
        return self._answers.deal_pages

    @property
    def deals_served(self) -> int:
        """Deals on the /deal pages served."""
        return self._answers.deals_served

    @property
    def faults_injected(self) -> Counter[str]:
        """Faults that struck, by kind (``FaultInjector``)."""
        return self._injector.injected

    # control and stats ------------------------------------------------------------
    def control(self, **changes: Any) -> None:
        """Change the running simulator: see ``CONTROL_KEYS``."""
        unknown = set(changes) - CONTROL_KEYS
        if unknown:
            raise ValueError(f"unknown control(s): {', '.join(sorted(unknown))}")
        self.bucket.advance()  # what happened before the change, at the old settings
        if "refill_rate" in changes:
            rate = int(changes["refill_rate"])
            self.bucket.set_rate(rate)
            self.options.refill_rate = rate
        if "faults" in changes:
            faults = changes["faults"]
            if isinstance(faults, Faults):
                self.options.faults = faults
            else:
                self.options.faults = self.options.faults.merged(dict(faults or {}))
        if "api_keys" in changes:
            keys = changes["api_keys"]
            self.options.api_keys = None if keys is None else frozenset(keys)
        if "outage" in changes:
            self.outage = bool(changes["outage"])
        if "other_consumer_per_period" in changes:
            other = int(changes["other_consumer_per_period"])
            self.bucket.other_per_period = other
            self.options.other_consumer_per_period = other
        if "latency_s" in changes:
            self.options.latency_s = float(changes["latency_s"])
        if "tokens" in changes:
            self.bucket.balance = int(changes["tokens"])
        for name in ("missing_rate", "invalid_rate"):
            if name in changes:
                setattr(self.options, name, float(changes[name]))
        shown = {k: v for k, v in changes.items() if k != "api_keys"}
        log.info("simulator_control", **{k: str(v) for k, v in shown.items()},
                 api_keys_changed="api_keys" in changes)  # fmt: skip

    def stats(self) -> dict[str, Any]:
        self.bucket.advance()
        c = self.bucket.counters
        return {
            "requests": dict(self.requests),
            "responses": {ep: dict(st) for ep, st in self.responses.items()},
            "rate_limited": c.refused,
            "tokens_generated": c.generated,
            "tokens_wasted": c.wasted,
            "tokens_consumed": c.consumed,
            "other_consumed": c.other_consumed,
            "balance": self.bucket.balance,
            "refill_rate": self.bucket.refill_rate,
            "refill_in_ms": self.bucket.refill_in_ms(),
            "periods": c.steps,
            "keepa_minute": self.keepa_minute,
            "balance_samples": [list(s) for s in self.bucket.samples],
            "products_billed": sum(self.products_bought.values()),
            "products_distinct": len(self.products_bought),
            "deal_pages": self.deal_pages,
            "deals_served": self.deals_served,
            "catalogue": len(self.catalogue.deals),
            "listed": len(self.catalogue.listed()),
            "faults": dict(self.faults_injected),
            "outage": self.outage,
            "options": {**asdict(self.options), "api_keys": None},
        }

    # HTTP -----------------------------------------------------------------------
    def _envelope(self, cost: int, started: float) -> dict[str, Any]:
        # Read as the answer leaves: a refill due during a slow answer is in
        # the balance, as on Keepa, not announced as a refillIn of 0.
        self.bucket.advance()
        return {
            "timestamp": int(self.clock.now() * 1000),
            "tokensLeft": self.bucket.balance,
            "refillIn": self.bucket.refill_in_ms(),
            "refillRate": self.bucket.refill_rate,
            "tokenFlowReduction": 0.0,
            "tokensConsumed": cost,
            "processingTimeInMs": max(0, round((time.monotonic() - started) * 1000)),
        }

    def _count(self, endpoint: str, status: int | str) -> None:
        self.responses.setdefault(endpoint, Counter())[str(status)] += 1

    async def _json(self, status: int, doc: dict[str, Any]) -> web.Response:
        products = doc.get("products")
        if isinstance(products, list):
            # Products arrive pre-deflated: join them instead of compressing.
            head = msgspec.json.encode({**doc, "products": []})
            assert head.endswith(b"[]}")
            pieces = [piece(head[:-2])]
            for i, p in enumerate(products):
                if i:
                    pieces.append(_COMMA)
                pieces.append(p)
            pieces.append(piece(b"]}"))
            gz = gzip_join(pieces)
        else:
            body = msgspec.json.encode(doc)
            if len(body) > BIG_BODY:
                gz = await asyncio.to_thread(gzip.compress, body, 1)
            else:
                gz = gzip.compress(body, 5)
        return web.Response(
            status=status, body=gz,
            headers={"Content-Type": "application/json;charset=utf-8", "Content-Encoding": "gzip"},
        )  # fmt: skip

    async def _error(self, status: int, etype: str, message: str, started: float) -> web.Response:
        doc = self._envelope(0, started)
        doc["error"] = {"type": etype, "message": message, "details": None}
        return await self._json(status, doc)

    async def _serve(self, request: web.Request, endpoint: str) -> web.StreamResponse:
        started = time.monotonic()
        self.requests[endpoint] += 1
        resp = await self._answer(request, endpoint, started)
        if isinstance(resp, str):  # the connection is gone: nothing more to send
            self._count(endpoint, resp)
            raise asyncio.CancelledError  # aiohttp's way to drop a request quietly
        self._count(endpoint, resp.status)
        return resp

    async def _answer(
        self, request: web.Request, endpoint: str, started: float
    ) -> web.StreamResponse | str:
        """The answer, or the name of the way it was dropped (reset, truncated, stopped)."""
        opts = self.options
        faults = opts.faults
        injector = self._injector
        if opts.latency_s > 0 and await sleep_or_stop(self.clock, self._stopping, opts.latency_s):
            return "stopped"
        self.bucket.advance()
        if self.outage:
            if injector.outage():
                return injector.reset(request)
            return await self._error(503, "unavailable", "Service Unavailable", started)
        if injector.roll("reset", faults.reset):
            return injector.reset(request)
        if injector.roll("error_5xx", faults.error_5xx):
            status = injector.error_status()
            return await self._error(status, "internal", "simulated server fault", started)
        if injector.roll("non_json", faults.non_json):
            return injector.html_page()
        key = request.query.get("key", "")
        if not key or (opts.api_keys is not None and key not in opts.api_keys):
            etype = "invalidKey" if not key else "payment"
            return await self._error(402, etype, "Invalid API key or no access", started)
        try:
            doc, cost = await self._execute(request, endpoint)
        except api.Rejected as exc:
            if exc.status == 429:
                self.bucket.counters.refused += 1
            return await self._error(exc.status, exc.type, exc.message, started)
        if injector.roll("hang", faults.hang):
            # Keepa did the work and billed it; the answer comes too late.
            if await sleep_or_stop(self.clock, self._stopping, faults.hang_s):
                return "stopped"
        envelope = self._envelope(cost, started)
        resp = await self._json(200, {**envelope, **doc})
        if injector.roll("truncated", faults.truncated):
            return await injector.truncate(request, resp)
        return resp

    async def _execute(self, request: web.Request, endpoint: str) -> tuple[dict[str, Any], int]:
        if endpoint == "token":
            return {}, 0
        if endpoint == "deal":
            selection = await api.read_selection(request)
            return self._answers.deals(selection)
        return self._answers.products(api.ProductQuery.parse(request.query))

    async def _deal(self, request: web.Request) -> web.StreamResponse:
        return await self._serve(request, "deal")

    async def _product(self, request: web.Request) -> web.StreamResponse:
        return await self._serve(request, "product")

    async def _token(self, request: web.Request) -> web.StreamResponse:
        return await self._serve(request, "token")

    async def _not_found(self, request: web.Request) -> web.StreamResponse:
        self.requests["other"] += 1
        self.bucket.advance()
        self._count("other", 404)
        return await self._error(
            404, "notFound", f"no such endpoint: {request.path}", time.monotonic()
        )

    async def _stats_route(self, request: web.Request) -> web.Response:
        stats = self.stats()
        stats["products_bought"] = dict(self.products_bought)
        return web.json_response(stats)

    async def _control_route(self, request: web.Request) -> web.Response:
        try:
            changes = json.loads(await request.read())
            if not isinstance(changes, dict):
                raise ValueError("the body must be a JSON object")
            self.control(**changes)
        except (ValueError, TypeError) as exc:
            return web.json_response({"error": str(exc)}, status=400)
        return web.json_response(self.stats())
