"""The backfiller: buys /product data for deals, one batch per round.

A round takes the next batch from its queue (``backfill_queue``: the funnel's
tiers, their thresholds, the batch size), buys it under the one policy for a
paid call (``base.KeepaWorker``) and stores what came back. The choosing lives
apart because it asks the database alone; what costs tokens and what is kept
are here.

Each kind of work (backfill, refresh, detail) has its own observed cost per
product (``tokens.observe``'s kind) and its own ledger stage. When nothing is
pending the backfiller waits at most ``idle_s``, and not at all once the
upserter stores new deals (``work_arrived``).

Each product is its own write (its payload compressed off the event loop),
so a crash loses at most the batch in flight; what is stored is never bought
again. Products Keepa does not return, or returns as invalid (productType 4),
are retried later with a growing delay and given up after ``max_attempts``. A
failing batch costs that batch only; an AccessDenied stops spending for a
long while and makes the daemon unhealthy.

It serves every marketplace (a batch is of one domain, as one /product
request is). A deal's estimate follows the selection that settles it
(``Pricing``).
"""

from __future__ import annotations

import asyncio
import sqlite3
import zlib
from collections.abc import Callable, Sequence

import structlog

from dealsd import estimate, mapping
from dealsd.clock import Clock, iso_utc
from dealsd.config import BackfillerConfig, FunnelConfig
from dealsd.keepa import KeepaClient, KeepaError, ProductPage, RequestRejected
from dealsd.keepa.payloads import PRODUCT_TYPE_INVALID, Item, PayloadError, Product
from dealsd.logs import FailureLog
from dealsd.selections import Pricing
from dealsd.store import Store, backfill, feed
from dealsd.tokens import TokenScheduler
from dealsd.workers.backfill_queue import (
    KIND_BACKFILL,
    KIND_DETAIL,
    KIND_REFRESH,
    BackfillQueue,
    Batch,
    SelectionFunnels,
)
from dealsd.workers.base import DealsChanged, KeepaWorker, RoundResult
from dealsd.workers.health import Health

log = structlog.get_logger(__name__)

# After a failed batch: soon enough to catch a passing fault, slow enough that
# a persistent one does not spin.
FAILED_BATCH_PAUSE_S = 10.0
# The column each kind of work stamps on the deal it stored (or gave up).
STAMP_COLUMN = {
    KIND_BACKFILL: "backfilled_at",
    KIND_REFRESH: "refreshed_at",
    KIND_DETAIL: "detailed_at",
}
# zlib level of the stored history payload (any level decompresses the same).
# On a 208 KB full-history product level 1 takes 2.2 ms and keeps 87 KB;
# level 6 takes 14 ms for 80 KB: 9 % of disk is not worth 6x the CPU, which
# alone capped the backfill at ~65 products/s a core (bench/pipeline.py).
PAYLOAD_ZLIB_LEVEL = 1


class Backfiller(KeepaWorker):
    name = "backfiller"

    def __init__(
        self,
        *,
        client: KeepaClient,
        tokens: TokenScheduler,
        store: Store,
        clock: Clock,
        config: BackfillerConfig,
        price_type: int,
        profit: estimate.ProfitSettings,
        health: Health,
        funnel: FunnelConfig | None = None,
        selection_funnels: SelectionFunnels | None = None,
        work_arrived: asyncio.Event | None = None,
        pricing: Pricing | None = None,
        on_change: DealsChanged | None = None,
    ) -> None:
        super().__init__(tokens=tokens, health=health)
        self._queue = BackfillQueue(
            tokens=tokens, store=store, clock=clock, consumer=self.name, config=config,
            funnel=funnel, selection_funnels=selection_funnels,
        )  # fmt: skip
        self._work_arrived = work_arrived
        self._client = client
        self._store = store
        self._clock = clock
        self._cfg = config
        # The one selection's settings; with several, ``pricing`` chooses per deal.
        self._price_type = price_type
        self._profit = profit
        self._pricing = pricing
        self._on_change = on_change
        self.failed_batches = 0
        self._faults = FailureLog(clock=clock)
        # Kept apart from _faults, which a good batch clears: an odd field is
        # said once per kind of oddity, then counted, however many batches pass.
        self._oddities = FailureLog(clock=clock)
        self.given_up = 0
        self.unreadable_products = 0

    @property
    def expected_round_s(self) -> float:
        return float(self._cfg.idle_s)

    def reconfigure(
        self,
        *,
        config: BackfillerConfig,
        price_type: int,
        profit: estimate.ProfitSettings,
        funnel: FunnelConfig | None = None,
        selection_funnels: SelectionFunnels | None = None,
        pricing: Pricing | None = None,
    ) -> None:
        """Live changes (SIGHUP): the next pick uses them; the queue is a query, so
        new thresholds ([funnel]'s or a selection's) reorder it without losing a deal."""
        self._cfg = config
        self._price_type = price_type
        self._profit = profit
        self._queue.reconfigure(config=config, funnel=funnel, selection_funnels=selection_funnels)
        self._pricing = pricing

    async def _round(self) -> RoundResult:
        """One batch: pick it, buy it from Keepa, store what came back."""
        if self._work_arrived is not None:
            # Cleared before looking: deals stored after the pick end the wait.
            self._work_arrived.clear()
        batch = await self._queue.next_batch()
        if batch is None:
            # Nothing to do is a sign of life, not a stall.
            return RoundResult(sleep_s=float(self._cfg.idle_s), idle=True, wake=self._work_arrived)
        page = await self._fetch(batch)
        if page is None:  # the batch failed: counted, and rescheduled if it was its fault
            return RoundResult(sleep_s=self._pause_s())
        await self._store_page(batch, page)
        # More work may be waiting: the token scheduler paces the next batch.
        return RoundResult(sleep_s=0.0)

    async def _fetch(self, batch: Batch) -> ProductPage | None:
        """Buy the batch from Keepa; None when it failed (already counted and logged)."""
        asins, params, kind = batch.asins, batch.params, batch.kind
        # The ETA uses what the client will ask for: this kind's observed cost.
        cost = self._client.expected_product_cost(params, len(asins), consumer=self.name, kind=kind)
        try:
            page = await self._paid(
                cost,
                self._client.products(
                    asins, params, consumer=self.name, kind=kind, domain=batch.domain
                ),
            )
        except RequestRejected as exc:
            # Keepa refused this batch itself: an ASIN it will never accept
            # must not block the queue, so each one is retried later on its own clock.
            self._batch_failed(exc, len(asins))
            for asin in asins:
                await self._failure(asin, f"rejected: {exc}", batch)
            return None
        except (KeepaError, PayloadError) as exc:
            self._batch_failed(exc, len(asins))
            return None
        for key in self._faults.active():
            self._faults.clear(key)
        return page

    async def _store_page(self, batch: Batch, page: ProductPage) -> None:
        """Store each product bought; reschedule what came back invalid, malformed or not at all."""
        returned = max(1, len(page.items))
        per_product = round(page.tokens_consumed / returned)
        valid = []
        for item in page.items:
            if item.value.product_type == PRODUCT_TYPE_INVALID:
                reason = "invalid product (productType 4)"
                await self._failure(item.value.asin, reason, batch)
            else:
                valid.append(item)
        # Each product is still its own write (the store isolates a failing
        # one: it fails alone), but they are handed over together so the writer can
        # commit them in one group instead of one fsync per product.
        results = await asyncio.gather(
            *(self._store_one(item, per_product, batch) for item in valid)
        )  # fmt: skip
        stored = sum(1 for ok in results if ok)
        for skipped in page.skipped:
            if skipped.asin is not None:
                await self._failure(skipped.asin, f"malformed: {skipped.reason}", batch)
        for asin in page.missing:
            await self._failure(asin, "not returned by keepa", batch)
        await self._store.write(
            lambda c: feed.record_tokens(
                c,
                at=batch.picked_at,
                consumer=self.name,
                endpoint="product",
                items=len(page.items),
                tokens=page.tokens_consumed,
                kind=batch.stage,
            )
        )
        log.info(
            "backfill_batch",
            mode=batch.stage,
            domain=batch.domain,
            asked=len(batch.asins),
            stored=stored,
            missing=len(page.missing),
            skipped=len(page.skipped),
            tokens=page.tokens_consumed,
        )
        if stored == 0:
            # Everything failed and was rescheduled: that was still work done.
            self._health.progress(self.name, 0, "products", idle=True)

    async def _store_one(self, item: Item[Product], tokens_spent: int, batch: Batch) -> bool:
        product, params, refresh = item.value, batch.params, batch.refresh
        # zlib releases the GIL: compressing a 200 KB product in a thread keeps
        # the event loop (and the other worker) responsive (bench/looplag.py).
        level = PAYLOAD_ZLIB_LEVEL
        payload = None if refresh else await asyncio.to_thread(zlib.compress, item.raw, level)
        columns = mapping.product_columns(product)
        if refresh:
            # What a refresh's (or detail's) parameters did not ask for is not "no data":
            # the backfill's values stay (e.g. offer prices bought with `offers`).
            for name in mapping.unfetched_columns(offers=bool(params.offers), buybox=params.buybox):
                columns.pop(name, None)
        columns["unreadable_fields"] = ",".join(item.unreadable) or None
        if item.unreadable:
            self._unreadable(product.asin, item.unreadable)
        stamp = iso_utc(self._clock.now())
        columns[STAMP_COLUMN[batch.kind]] = stamp
        ok = await self._store.write(
            self._product_writer(product, batch.domain, stamp, tokens_spent, payload, columns)
        )
        self._health.progress(self.name, 1, "products")
        return ok

    def _unreadable(self, asin: str, fields: Sequence[str]) -> None:
        """A paid product kept with fields left NULL: said once per kind, then counted."""
        self.unreadable_products += 1
        self._oddities.log_failure(
            log,
            "product_fields_unreadable",
            "unreadable:" + ",".join(fields),
            asin=asin,
            fields=",".join(fields),
            unreadable_products=self.unreadable_products,
        )

    def _product_writer(
        self,
        product: Product,
        domain: int,
        fetched_at: str,
        tokens_spent: int,
        payload: bytes | None,
        columns: dict[str, object],
    ) -> Callable[[sqlite3.Connection], bool]:
        one_type, one_profit, pricing = self._price_type, self._profit, self._pricing
        on_change = self._on_change

        def write(conn: sqlite3.Connection) -> bool:
            # The estimate is made from the row as it is at commit time: its
            # current price (the upserter may have moved it since the batch
            # was chosen) and the columns this fetch did not renew.
            row = backfill.deal_by_asin(conn, product.asin, domain)
            if row is None:
                return False  # pruned while its product was being fetched
            price_type, profit = one_type, one_profit
            if pricing is not None:
                settle = pricing.choose(domain, feed.selections_of(conn, domain, product.asin))
                price_type, profit = settle.price_type, settle.profit
            merged = {**row, **columns}
            buy = estimate.buy_cost_cents(merged, price_type)
            figures = estimate.estimate(
                merged, buy_cost_cents=buy, price_type=price_type, profit=profit
            )
            stored = backfill.store_product(
                conn,
                asin=product.asin,
                fetched_at=fetched_at,
                keepa_last_update=mapping.keepa_time_iso(product.last_update),
                tokens_spent=tokens_spent,
                payload_zlib=payload,
                columns={**columns, **figures},
                domain_id=domain,
            )
            if stored and on_change is not None:
                on_change(conn, [product.asin], fetched_at, domain)
            return stored

        return write

    def _pause_s(self) -> float:
        # Never longer than the idle time: the stall window is built from it.
        return min(FAILED_BATCH_PAUSE_S, float(self._cfg.idle_s))

    def _batch_failed(self, exc: BaseException, size: int) -> None:
        self.failed_batches += 1
        self._health.error(self.name, f"{type(exc).__name__}: {exc}")
        self._health.backing_off(self.name, f"batch failed: {type(exc).__name__}", self._pause_s())
        # An outage fails every batch: say it once, then count it.
        self._faults.log_failure(
            log,
            "backfill_batch_failed",
            f"backfill:{type(exc).__name__}",
            error=f"{type(exc).__name__}: {exc}",
            batch=size,
            failed_batches=self.failed_batches,
        )

    async def _failure(self, asin: str, reason: str, batch: Batch) -> None:
        now_s = self._clock.now()
        now = iso_utc(now_s)
        domain = batch.domain
        if batch.refresh:
            # A refresh that fails keeps the columns it has; it is simply
            # not due again until refresh_after_h has passed once more. A
            # detail that fails is not asked again: the backfill's estimate stands.
            await self._store.write(
                lambda c: backfill.store_product(
                    c,
                    asin=asin,
                    fetched_at=now,
                    keepa_last_update=None,
                    tokens_spent=0,
                    payload_zlib=None,
                    columns={STAMP_COLUMN[batch.kind]: now},
                    domain_id=domain,
                )
            )
            return
        cfg = self._cfg

        def write(conn: sqlite3.Connection) -> int:
            found = conn.execute(
                "SELECT backfill_attempts FROM deals WHERE domain_id = ? AND asin = ?",
                (domain, asin),
            ).fetchone()
            attempts = int(found[0]) if found else 0
            retry_at: str | None = None
            if attempts + 1 < cfg.max_attempts:
                retry_at = iso_utc(now_s + cfg.retry_base_s * 2**attempts)
            return backfill.record_backfill_failure(
                conn, asin=asin, reason=reason, retry_at=retry_at, now=now, domain_id=domain
            )

        attempts = await self._store.write(write)
        if attempts >= cfg.max_attempts:
            self.given_up += 1
            log.warning(
                "backfill_gave_up", asin=asin, domain=domain, reason=reason, attempts=attempts
            )
        else:
            log.debug(
                "backfill_retry_later", asin=asin, domain=domain, reason=reason, attempts=attempts
            )
