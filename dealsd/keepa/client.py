"""The Keepa HTTP client: one session, three endpoints, every envelope to the scheduler.

Each call takes its turn from the token scheduler, sends one request, hands the
token envelope of whatever came back (errors included) to ``tokens.sync`` in
the same task, and only then classifies the response. A 200 is decoded item by
item (malformed items are skipped and counted); what any other answer means,
another attempt or which error, is ``dealsd.keepa.retry``'s table, and this
module acts on it: a 429 takes a new turn (the scheduler, now synced, waits for
the refill), a fault sleeps the policy's backoff on the injected clock, and
both are tried again within ``max_attempts``.

The API key travels in the query string, so every URL is a secret. URLs are
built with ``params=`` and never logged; aiohttp exceptions (which carry the
URL) are described, redacted, and never chained.
"""

from __future__ import annotations

import asyncio
import math
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any, Generic, NoReturn, TypeVar

import aiohttp
import msgspec
import structlog
from yarl import URL

from dealsd.clock import Clock
from dealsd.keepa.errors import DETAIL_MAX, AccessDenied, TransientError, format_error
from dealsd.keepa.errors import describe_transport as _describe
from dealsd.keepa.params import DEAL_COST, MAX_ASINS, ProductParams, estimate_product_cost
from dealsd.keepa.payloads import (
    Deal,
    Decoded,
    Envelope,
    Item,
    KeepaErrorBody,
    PayloadError,
    Product,
    Skipped,
    decode_deals,
    decode_envelope,
    decode_products,
    decode_token,
)
from dealsd.keepa.retry import Retry, RetryPolicy, classify
from dealsd.redact import redact

if TYPE_CHECKING:
    # Only a type here: the scheduler imports the payload types of this package.
    from dealsd.tokens import TokenScheduler

log = structlog.get_logger(__name__)

BIG_BODY = 1 << 20

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class DealPage:
    items: list[Item[Deal]]
    skipped: list[Skipped]
    envelope: Envelope | None


@dataclass(frozen=True, slots=True)
class ProductPage:
    items: list[Item[Product]]
    skipped: list[Skipped]
    missing: list[str]  # asked for, neither returned nor skipped
    envelope: Envelope | None
    tokens_consumed: int


@dataclass(frozen=True, slots=True)
class _Reply(Generic[T]):
    value: T
    envelope: Envelope | None


class KeepaClient:
    """The one way dealsd talks to Keepa; an async context manager owning the session."""

    def __init__(
        self,
        *,
        base_url: str,
        api_key: str,
        domain: int,
        tokens: TokenScheduler,
        clock: Clock,
        connect_timeout_s: float = 10.0,
        read_timeout_s: float = 60.0,
        max_attempts: int = 5,
        session: aiohttp.ClientSession | None = None,
        rng: random.Random | None = None,
        backoff_base_s: float = 1.0,
        backoff_max_s: float = 60.0,
    ) -> None:
        url = URL(base_url)
        if url.scheme not in ("http", "https") or not url.host:
            raise ValueError(f"keepa base_url must be http(s)://host[:port]: {redact(base_url)}")
        self._retry = RetryPolicy(
            max_attempts=max_attempts, backoff_base_s=backoff_base_s,
            backoff_max_s=backoff_max_s, rng=rng if rng is not None else random.Random(),
        )
        self._base = url
        self._key = api_key
        self._domain = domain
        self._tokens = tokens
        self._clock = clock
        # sock_read is per read, so a server that trickles bytes is bounded by
        # the total; it is generous because offer requests can take 20 s.
        self._timeout = aiohttp.ClientTimeout(
            total=connect_timeout_s + 3 * read_timeout_s,
            sock_connect=connect_timeout_s,
            sock_read=read_timeout_s,
        )
        self._session = session
        self._owns_session = session is None

    def __repr__(self) -> str:
        return f"KeepaClient(base_url={str(self._base)!r}, domain={self._domain})"

    def set_api_key(self, api_key: str) -> None:
        """Use ``api_key`` from the next request on (SIGHUP after the key file changed)."""
        self._key = api_key

    def uses_api_key(self, api_key: str) -> bool:
        # Lets the daemon compare without ever handing the key out of the client.
        return self._key == api_key

    async def __aenter__(self) -> KeepaClient:
        self._ensure_session()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        if self._session is not None and self._owns_session:
            await self._session.close()
            self._session = None

    def _ensure_session(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=self._timeout,
                headers={"Accept-Encoding": "gzip", "User-Agent": "dealsd"},
                auto_decompress=True,
            )
            self._owns_session = True
        return self._session

    def _scrub(self, text: str) -> str:
        """Redact ``key=`` and, belt and braces, the key itself wherever it appears."""
        text = redact(text)
        if self._key:
            text = text.replace(self._key, "***")
        return text

    # -- endpoints ----------------------------------------------------------------

    def estimate_product_cost(self, params: ProductParams, n: int) -> int:
        return estimate_product_cost(params, n)

    def expected_product_cost(
        self, params: ProductParams, n: int, *, consumer: str = "backfiller", kind: str = ""
    ) -> int:
        """What ``products()`` will ask the scheduler for: the observed cost of this
        kind of work when there is one, else the table's estimate."""
        return self._expected_cost(consumer, n, estimate_product_cost(params, 1), kind=kind)

    def _expected_cost(
        self, consumer: str, n: int, default_per_item: float, *, kind: str = ""
    ) -> int:
        """The scheduler's observed cost per item when it has one, else the table's."""
        observed = self._tokens.cost_per_item(consumer, kind=kind)
        per_item = default_per_item if observed is None else observed
        return max(0, math.ceil(per_item * n - 1e-9))

    async def deals(
        self,
        selection: Mapping[str, Any],
        page: int,
        *,
        consumer: str = "upserter",
        domain: int | None = None,
    ) -> DealPage:
        """One page of /deal for ``selection`` (``page`` and ``domainId`` set here).

        ``domain``: the selection's marketplace (default: the client's).
        """
        body = dict(selection)
        body["page"] = page
        body["domainId"] = self._domain if domain is None else domain
        cost = self._expected_cost(consumer, 1, DEAL_COST)
        reply = await self._call(
            "deal", consumer=consumer, cost=cost, query={},
            json_body=msgspec.json.encode(body), decode=decode_deals,
        )
        self._warn_skipped("deal", reply.value.skipped)
        if reply.envelope is not None:
            self._tokens.observe(consumer, items=1, tokens=reply.envelope.tokens_consumed)
        return DealPage(reply.value.items, reply.value.skipped, reply.envelope)

    async def products(
        self,
        asins: Sequence[str],
        params: ProductParams,
        *,
        consumer: str = "backfiller",
        kind: str = "",
        domain: int | None = None,
    ) -> ProductPage:
        """/product for up to 100 ASINs; ``missing`` lists those Keepa did not answer for.

        One request is one marketplace: ``domain`` (default: the client's).

        ``kind`` names the kind of work (e.g. "refresh") whose observed cost per
        product is estimated and learned separately within ``consumer``.
        """
        wanted = list(dict.fromkeys(a.strip() for a in asins if a.strip()))
        if not wanted:
            raise ValueError("products() needs at least one ASIN")
        if len(wanted) > MAX_ASINS:
            raise ValueError(f"at most {MAX_ASINS} ASINs per call, got {len(wanted)}")
        domain = self._domain if domain is None else domain
        query = {"domain": str(domain), "asin": ",".join(wanted), **params.to_query()}
        cost = self.expected_product_cost(params, len(wanted), consumer=consumer, kind=kind)
        reply = await self._call(
            "product", consumer=consumer, cost=cost, query=query, json_body=None,
            decode=decode_products,
        )
        decoded = reply.value
        self._warn_skipped("product", decoded.skipped)
        seen = {item.value.asin.upper() for item in decoded.items}
        seen.update(s.asin.upper() for s in decoded.skipped if s.asin)
        missing = [a for a in wanted if a.upper() not in seen]
        consumed = reply.envelope.tokens_consumed if reply.envelope is not None else 0
        if reply.envelope is not None:
            self._tokens.observe(consumer, items=len(wanted), tokens=consumed, kind=kind)
        return ProductPage(decoded.items, decoded.skipped, missing, reply.envelope, consumed)

    async def token_status(self, *, consumer: str = "startup") -> Envelope:
        """The envelope alone (free): a startup check of the key, never for polling."""
        reply = await self._call(
            "token", consumer=consumer, cost=0, query={}, json_body=None, decode=decode_token
        )
        if reply.envelope is None:
            raise TransientError("token: response without a token envelope", status=200)
        return reply.envelope

    def _warn_skipped(self, endpoint: str, skipped: list[Skipped]) -> None:
        # One line per response, not per item: a broken field in every item
        # must not write 150 lines a page.
        if skipped:
            first = skipped[0]
            log.warning(
                "keepa.items_skipped", endpoint=endpoint, count=len(skipped),
                first_asin=first.asin, first_reason=self._scrub(first.reason)[:DETAIL_MAX],
            )

    # -- one call, with its retries -----------------------------------------------

    async def _call(
        self,
        endpoint: str,
        *,
        consumer: str,
        cost: int,
        query: Mapping[str, str],
        json_body: bytes | None,
        decode: Callable[[bytes], Decoded[T]],
    ) -> _Reply[Decoded[T]]:
        attempts = self._retry.max_attempts
        last: Retry | None = None
        transient = 0
        for attempt in range(1, attempts + 1):
            await self._tokens.acquire(consumer, cost)
            try:
                return await self._attempt(endpoint, query, json_body, decode)
            except Retry as retry:
                last = retry
                if retry.envelope is None:
                    # No envelope (timeout, reset, a body without one): the
                    # grant is not in flight any more, whether or not we retry.
                    self._tokens.release(consumer)
            except BaseException:
                # Cancelled (or failed) before a response: without this the
                # grant would count as in flight for minutes, and a lost first
                # request would hold the next grant for a whole period. After
                # an envelope was synced this does nothing.
                self._tokens.release(consumer)
                raise
            if attempt == attempts:
                break
            if last.status == 429:
                # No sleep here: the scheduler, synced to a balance <= 0, holds
                # the next acquire until the refill.
                log.info("keepa.retry", endpoint=endpoint, attempt=attempt, reason=last.reason)
                continue
            transient += 1
            delay = self._retry.delay(transient)
            log.info(
                "keepa.retry", endpoint=endpoint, attempt=attempt, reason=last.reason,
                delay_s=round(delay, 3),
            )
            await self._clock.sleep(delay)
        assert last is not None
        log.warning(
            "keepa.gave_up", endpoint=endpoint, attempts=attempts,
            status=last.status, reason=last.reason,
        )
        raise self._retry.give_up(endpoint, last)

    async def _attempt(
        self,
        endpoint: str,
        query: Mapping[str, str],
        json_body: bytes | None,
        decode: Callable[[bytes], Decoded[T]],
    ) -> _Reply[Decoded[T]]:
        session = self._ensure_session()
        params = {"key": self._key, **query}
        url = self._base / endpoint
        failure: str | None = None
        status = 0
        body = b""
        # The exception is only described inside the except block and raised
        # outside it, so no aiohttp exception (and its URL) rides along as
        # __context__ of what the caller sees.
        try:
            if json_body is None:
                request = session.get(url, params=params, timeout=self._timeout)
            else:
                request = session.post(
                    url, params=params, data=json_body, timeout=self._timeout,
                    headers={"Content-Type": "application/json"},
                )
            async with request as resp:
                status = resp.status
                body = await resp.read()
        except (aiohttp.ClientError, TimeoutError) as exc:
            failure = self._scrub(_describe(exc))
        if failure is not None:
            raise Retry(failure, status=None, envelope=None)
        envelope, error = decode_envelope(body)
        if envelope is not None:
            self._tokens.sync(envelope)
        log.debug(
            "keepa.response", endpoint=endpoint, status=status, bytes=len(body),
            tokens_left=envelope.tokens_left if envelope else None,
            consumed=envelope.tokens_consumed if envelope else None,
        )
        if status != 200:
            self._raise_for(endpoint, status, body, envelope, error)
        bad: str | None = None
        try:
            # A 100-product page with history is tens of MB: decoding it in a
            # thread keeps the loop (and the watchdog) running meanwhile.
            if len(body) > BIG_BODY:
                decoded = await asyncio.to_thread(decode, body)
            else:
                decoded = decode(body)
        except PayloadError as exc:
            bad = f"bad body ({self._scrub(str(exc))[:DETAIL_MAX]})"
        if bad is not None:
            raise Retry(bad, status=status, envelope=envelope)
        return _Reply(decoded, envelope)

    def _raise_for(
        self,
        endpoint: str,
        status: int,
        body: bytes,
        envelope: Envelope | None,
        error: KeepaErrorBody | None,
    ) -> NoReturn:
        detail = self._scrub(format_error(error, body))
        verdict = classify(endpoint, status, detail, envelope, error)
        if isinstance(verdict, Retry):
            if status == 429:
                self._tokens.note_rate_limited()
            raise verdict
        # Logged here, not in the policy: the lines keep this module's logger name.
        if isinstance(verdict, AccessDenied):
            log.error("keepa.access_denied", endpoint=endpoint, status=status, detail=detail)
        else:
            log.warning("keepa.rejected", endpoint=endpoint, status=status, detail=detail)
        raise verdict
