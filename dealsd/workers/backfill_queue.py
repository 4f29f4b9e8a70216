"""The backfiller's queue: which deals the next round buys, and at which parameters.

Apart from the round (``backfiller``: the paid fetch, the stored page, the
failures) because choosing is its own question, asked of the database alone:
the queue is a query, so new thresholds on SIGHUP reorder it without losing a
deal. Work comes in this order (the funnel, ``[funnel]``):

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
``screen_of`` and ``detail_of`` build them (``funnel.py`` counts with the same
screen).

The batch size follows the refill rate and the cost per product actually
observed (``tokens.batch_size``; docs/field-notes.md #5), not a fixed number.
One /product request is for one domain, so a batch is the queue's head deal's
domain and the next deals of that domain.
"""

from __future__ import annotations

import functools
import sqlite3
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from dealsd.clock import Clock, iso_utc
from dealsd.config import BackfillerConfig, FunnelConfig
from dealsd.keepa import ProductParams, estimate_product_cost
from dealsd.store import Store, backfill
from dealsd.tokens import TokenScheduler

# The two kinds of work differ in price (history and offers vs stats only), so
# their observed cost per product is learned apart (tokens.observe's kind); the
# full backfill is the consumer's main work and keeps the plain key.
KIND_BACKFILL = ""
KIND_REFRESH = "refresh"
KIND_DETAIL = "detail"
# Keepa asks for batches of 20 or fewer when offers are fetched.
MAX_OFFERS_BATCH = 20


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

    What each costs to buy is read when its product is stored (the backfiller's
    ``_product_writer``): the deal's price may move while the batch is being bought.
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


class BackfillQueue:
    """The funnel's tiers over the store: ``next_batch()`` is the round's work.

    ``consumer`` is the token scheduler's name for the backfiller, whose
    observed cost per product (by kind) sizes each batch; the price table's
    estimate (``keepa.params``) stands in until one is observed. It reads the
    store and asks the scheduler, nothing more: buying is the backfiller's.
    """

    def __init__(
        self,
        *,
        tokens: TokenScheduler,
        store: Store,
        clock: Clock,
        consumer: str,
        config: BackfillerConfig,
        funnel: FunnelConfig | None = None,
        selection_funnels: SelectionFunnels | None = None,
    ) -> None:
        self._tokens = tokens
        self._store = store
        self._clock = clock
        self._consumer = consumer
        self._cfg = config
        self._funnel = funnel if funnel is not None else FunnelConfig()
        self._selection_funnels: SelectionFunnels = selection_funnels or {}

    def reconfigure(
        self,
        *,
        config: BackfillerConfig,
        funnel: FunnelConfig | None = None,
        selection_funnels: SelectionFunnels | None = None,
    ) -> None:
        """New settings for the next pick; a funnel left None keeps the one in use."""
        self._cfg = config
        if funnel is not None:
            self._funnel = funnel
        if selection_funnels is not None:
            self._selection_funnels = selection_funnels

    async def next_batch(self) -> Batch | None:
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

    def _batch_size(self, params: ProductParams, kind: str) -> int:
        """Products of this kind whose observed cost fits the scheduler's batch budget."""
        hi = min(self._cfg.max_batch, MAX_OFFERS_BATCH) if params.offers else self._cfg.max_batch
        return self._tokens.batch_size(
            self._consumer,
            lo=min(self._cfg.min_batch, hi),
            hi=hi,
            default_cost=estimate_product_cost(params, 1),
            kind=kind,
        )
