"""The backfiller: buys /product data for deals, one batch per round.

Work comes in this order (the funnel, ``[funnel]``):

1. the second tier, when ``detail_min_profit_cents`` is set (in [funnel] or a
   ``[selection.funnel]``): backfilled deals whose full estimate reaches it
   and that were never detailed, best first, bought again with the expensive
   parameters (``detail_offers``, ``detail_buybox``) and no history: the
   landed prices and the buy box that make the estimate of a candidate exact;
2. deals never backfilled whose screen (the estimate the upserter made from
   the deal object alone) passes the thresholds, best screen profit first (a
   deal without a screen last; ``order = "newest"``: Keepa's lastUpdate);
3. deals whose derived columns are older than ``refresh_after_h``, refreshed
   with the cheap stats-only parameters (no history, offers or rating; the
   buy box stays when configured, so its columns can be renewed);
4. with ``below_threshold = "idle"``, the deals below the thresholds, best
   first: bought only when nothing above is pending. With "skip" they wait
   in the table, unbought, and a lower threshold on SIGHUP brings them back.

The thresholds are money in each deal's marketplace's smallest unit, so a
selection may have its own (``[selection.funnel]``): a deal passes when it
passes those of any selection listing it (``backfill.BySelection``).

Each kind has its own observed cost per product (``tokens.observe``'s kind)
and its own ledger stage. When nothing is pending the backfiller waits at
most ``idle_s``, and not at all once the upserter stores new deals
(``work_arrived``). The batch
size follows the refill rate and the cost per product actually observed
(``tokens.batch_size``; docs/field-notes.md #5), not a fixed number.

Each product is its own write (its payload compressed off the event loop),
so a crash loses at most the batch in flight; what is stored is never bought
again. Products Keepa does not return, or returns as invalid (productType 4),
are retried later with a growing delay and given up after ``max_attempts``. A
failing batch costs that batch only; an AccessDenied stops spending for a
long while and makes the daemon unhealthy.

It serves every marketplace: one /product request is for one domain, so a
batch is the queue's head deal's domain and the next deals of that domain.
A deal's estimate follows the selection that settles it (``Pricing``).
"""

from __future__ import annotations

import asyncio
import functools
import sqlite3
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import structlog

from dealsd import estimate, mapping
from dealsd.clock import Clock, iso_utc
from dealsd.config import BackfillerConfig, FunnelConfig
from dealsd.keepa import (
    KeepaClient,
    KeepaError,
    ProductPage,
    ProductParams,
    RequestRejected,
)
from dealsd.keepa.payloads import PRODUCT_TYPE_INVALID, Item, PayloadError, Product
from dealsd.logs import FailureLog
from dealsd.selections import Pricing
from dealsd.store import Store, backfill, feed
from dealsd.tokens import TokenScheduler
from dealsd.workers.base import DealsChanged, KeepaWorker, RoundResult
from dealsd.workers.health import Health

log = structlog.get_logger(__name__)

# After a failed batch: soon enough to catch a passing fault, slow enough that
# a persistent one does not spin.
FAILED_BATCH_PAUSE_S = 10.0
# The two kinds of work differ in price (history and offers vs stats only), so
# their observed cost per product is learned apart (tokens.observe's kind); the
# full backfill is the consumer's main work and keeps the plain key.
KIND_BACKFILL = ""
KIND_REFRESH = "refresh"
KIND_DETAIL = "detail"
# The column each kind of work stamps on the deal it stored (or gave up).
STAMP_COLUMN = {
    KIND_BACKFILL: "backfilled_at",
    KIND_REFRESH: "refreshed_at",
    KIND_DETAIL: "detailed_at",
}
# Keepa asks for batches of 20 or fewer when offers are fetched.
MAX_OFFERS_BATCH = 20
# zlib level of the stored history payload (any level decompresses the same).
# On a 208 KB full-history product level 1 takes 2.2 ms and keeps 87 KB;
# level 6 takes 14 ms for 80 KB: 9 % of disk is not worth 6x the CPU, which
# alone capped the backfill at ~65 products/s a core (bench/pipeline.py).
PAYLOAD_ZLIB_LEVEL = 1


def product_params(cfg: BackfillerConfig) -> ProductParams:
    """The full backfill's /product parameters, from the config."""
    return ProductParams(
        history=cfg.history,
        days=cfg.days,
        stats=cfg.stats,
        offers=cfg.offers,
        only_live_offers=cfg.only_live_offers,
        rating=cfg.rating,
        buybox=cfg.buybox,
        update=cfg.update,
    )


@dataclass(frozen=True, slots=True)
class Batch:
    """What one round buys: the ASINs and at which parameters.

    What each costs to buy is read when its product is stored (``_product_writer``):
    the deal's price may move while the batch is being bought.
    """

    asins: list[str]
    params: ProductParams
    kind: str  # KIND_BACKFILL, KIND_REFRESH or KIND_DETAIL
    picked_at: str  # the round's time, stamped on its ledger row
    domain: int = 1  # one /product request is one marketplace

    @property
    def refresh(self) -> bool:
        """A second look at a backfilled product (refresh or detail): no history kept,
        what was not asked for keeps its backfilled value."""
        return self.kind != KIND_BACKFILL

    @property
    def stage(self) -> str:
        """The ledger's name for this kind of work."""
        return self.kind or "backfill"


def detail_params(cfg: BackfillerConfig, funnel: FunnelConfig) -> ProductParams:
    """The second tier's parameters: stats with offers and/or the buy box, no history."""
    return ProductParams(
        history=False,
        stats=cfg.stats or 180,
        offers=funnel.detail_offers,
        buybox=funnel.detail_buybox,
        update=cfg.update,
    )


C = TypeVar("C", bound=backfill.Condition)
# Each selection's funnel: [funnel] with its own thresholds (selections.funnels).
SelectionFunnels = Mapping[str, FunnelConfig]


def _by_selection(
    funnel: FunnelConfig, selections: SelectionFunnels, of: Callable[[FunnelConfig], C]
) -> backfill.BySelection[C]:
    return backfill.BySelection(of(funnel), tuple((n, of(f)) for n, f in selections.items()))


def _screen(f: FunnelConfig) -> backfill.Screen:
    return backfill.Screen(
        min_profit_cents=f.min_screen_profit_cents, min_roi_pct=f.min_screen_roi_pct
    )


def _detail(f: FunnelConfig) -> backfill.DetailBar:
    return backfill.DetailBar(min_profit_cents=f.detail_min_profit_cents)


def screen_of(
    funnel: FunnelConfig, selections: SelectionFunnels | None = None
) -> backfill.BySelection[backfill.Screen]:
    """The screen's thresholds: [funnel]'s, and those of each selection."""
    return _by_selection(funnel, selections or {}, _screen)


def detail_of(
    funnel: FunnelConfig, selections: SelectionFunnels | None = None
) -> backfill.BySelection[backfill.DetailBar] | None:
    """The second tier's thresholds; None when neither [funnel] nor a selection sets one."""
    bars = _by_selection(funnel, selections or {}, _detail)
    if all(bar.min_profit_cents is None for bar in bars.conditions()):
        return None
    return bars


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
        self._funnel = funnel if funnel is not None else FunnelConfig()
        self._selection_funnels: SelectionFunnels = selection_funnels or {}
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
        if funnel is not None:
            self._funnel = funnel
        if selection_funnels is not None:
            self._selection_funnels = selection_funnels
        self._pricing = pricing

    async def _round(self) -> RoundResult:
        """One batch: pick it, buy it from Keepa, store what came back."""
        if self._work_arrived is not None:
            # Cleared before looking: deals stored after the pick end the wait.
            self._work_arrived.clear()
        batch = await self._pick()
        if batch is None:
            # Nothing to do is a sign of life, not a stall.
            return RoundResult(sleep_s=float(self._cfg.idle_s), idle=True, wake=self._work_arrived)
        page = await self._fetch(batch)
        if page is None:  # the batch failed: counted, and rescheduled if it was its fault
            return RoundResult(sleep_s=self._pause_s())
        await self._store_page(batch, page)
        # More work may be waiting: the token scheduler paces the next batch.
        return RoundResult(sleep_s=0.0)

    async def _pick(self) -> Batch | None:
        """The next batch, in the funnel's order (module docstring); None if nothing is due."""
        cfg, funnel = self._cfg, self._funnel
        now_s = self._clock.now()
        now = iso_utc(now_s)
        screen = screen_of(funnel, self._selection_funnels)
        detail = detail_of(funnel, self._selection_funnels)
        order = backfill.BY_NEWEST if funnel.order == "newest" else backfill.BY_SCREEN
        attempts = cfg.max_attempts
        older = iso_utc(now_s - cfg.refresh_after_h * 3600.0)
        full = product_params(cfg)
        steps: list[tuple[ProductParams, str, Callable[..., list[Any]]]] = []

        def pending(**tier: Any) -> Callable[..., list[Any]]:
            return lambda c, d, limit: backfill.pending_backfill(
                c, now=now, max_attempts=attempts, limit=limit, screen=screen, domain_id=d,
                **tier,
            )  # fmt: skip

        if detail is not None:
            steps.append((
                detail_params(cfg, funnel), KIND_DETAIL,
                lambda c, d, limit: backfill.detail_due(c, bar=detail, limit=limit, domain_id=d),
            ))  # fmt: skip
        steps.append((full, KIND_BACKFILL, pending(order=order)))
        steps.append((
            full.stats_only(), KIND_REFRESH,
            lambda c, d, limit: backfill.due_refresh(
                c, older_than=older, limit=limit, domain_id=d
            ),
        ))  # fmt: skip
        if funnel.below_threshold == "idle":
            steps.append((full, KIND_BACKFILL, pending(below=True)))
        for params, kind, query in steps:
            size = self._batch_size(params, kind)
            rows = await self._one_domain(functools.partial(query, limit=size))
            if rows:
                return Batch(
                    asins=[r.asin for r in rows], params=params, kind=kind, picked_at=now,
                    domain=rows[0].domain_id,
                )  # fmt: skip
        return None
    async def _one_domain(
        self, query: Callable[[sqlite3.Connection, int | None], list[backfill.PendingRow]]
    ) -> list[backfill.PendingRow]:
        """The queue's head and what follows it of the head's marketplace only."""
        rows = await self._store.read(lambda c: query(c, None))
        if rows and any(r.domain_id != rows[0].domain_id for r in rows):
            domain = rows[0].domain_id
            rows = await self._store.read(lambda c: query(c, domain))
        return rows

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

    def _batch_size(self, params: ProductParams, kind: str) -> int:
        """Products of this kind whose observed cost fits the scheduler's batch budget."""
        hi = min(self._cfg.max_batch, MAX_OFFERS_BATCH) if params.offers else self._cfg.max_batch
        return self._tokens.batch_size(
            self.name,
            lo=min(self._cfg.min_batch, hi),
            hi=hi,
            default_cost=self._client.estimate_product_cost(params, 1),
            kind=kind,
        )

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
