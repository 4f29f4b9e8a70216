"""What /deal and /product answer, apart from HTTP: the document, its cost, the bill.

The server (``server.py``) parses a request and checks its key; a selection or
a product query comes here and goes back as the document's fields and the
tokens it cost, already charged to the bucket, for the server to wrap in the
envelope. A request runs at any balance >= 1, as on Keepa; below, a 429.

What was sold is counted here (deal pages, deals served, products billed per
ASIN and per marketplace): the stats and the tests read it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

import msgspec

from dealsd.simulator import api
from dealsd.simulator.bucket import TokenBucket
from dealsd.simulator.catalogue import Catalogue
from dealsd.simulator.faults import FaultInjector
from dealsd.simulator.gzjoin import Piece, piece
from dealsd.simulator.options import SimOptions
from dealsd.simulator.products import ProductFactory, withheld


class Answers:
    """The /deal pages and /product bills of one simulator."""

    def __init__(
        self,
        *,
        options: SimOptions,
        bucket: TokenBucket,
        catalogue_for: Callable[[int], Catalogue],
        products: ProductFactory,
        faults: FaultInjector,
        keepa_minute: Callable[[], int],
    ) -> None:
        self._options = options
        self._bucket = bucket
        self._catalogue_for = catalogue_for
        self._products = products
        self._faults = faults
        self._keepa_minute = keepa_minute
        self.products_bought: Counter[str] = Counter()
        # The same, per marketplace: one ASIN on two domains is two products.
        self.products_bought_in: Counter[tuple[int, str]] = Counter()
        self.deal_pages = 0
        self.deals_served = 0
        self._queries: dict[str, tuple[float, api.DealResult]] = {}

    def forget_queries(self) -> None:
        """Drop the cached query results: the next /deal queries the catalogue."""
        self._queries.clear()

    def deals(self, selection: dict[str, Any]) -> tuple[dict[str, Any], int]:
        """One page of the selection's deals, and its cost."""
        bucket = self._bucket
        if bucket.balance < 1:
            raise api.Rejected(429, "tokens", "Not enough tokens")
        page = int(selection.get("page", 0) or 0)
        key = api.selection_key(selection)
        now = bucket.elapsed_s()
        cached = self._queries.get(key)
        # Keepa caches a query for 120 s (two Keepa minutes): paging with the
        # same selection sees one consistent result list.
        if cached is None or now - cached[0] > 2 * bucket.period_s:
            catalogue = self._catalogue_for(int(selection["domainId"]))
            deals = catalogue.query(selection)
            result = api.DealResult.of(deals, catalogue.deal_bytes)
            self._queries = {k: v for k, v in self._queries.items() if now - v[0] <= 240}
            self._queries[key] = (now, result)
        else:
            result = cached[1]
        items = result.page(page)
        items = [self._faults.deal(b) for b in items]
        bucket.charge(api.DEAL_PAGE_COST)
        self.deal_pages += 1
        self.deals_served += len(items)
        doc = {"deals": {"dr": [msgspec.Raw(b) for b in items], **result.categories}}
        return doc, api.DEAL_PAGE_COST

    def products(self, q: api.ProductQuery) -> tuple[dict[str, Any], int]:
        """The query's products, pre-deflated (``gzjoin``), and their cost."""
        if self._bucket.balance < 1:
            raise api.Rejected(429, "tokens", "Not enough tokens")
        opts = self._options
        factory = self._products
        out: list[Piece] = []
        cost = 0
        catalogue = self._catalogue_for(q.domain)
        for asin in q.asins:
            if factory.is_missing(asin, opts.missing_rate):
                if q.update != -1:  # Keepa looked it up for us, and bills the look
                    cost += 1
                    self.products_bought[asin] += 1
                continue
            if factory.is_invalid(asin, opts.invalid_rate):
                made = piece(factory.invalid_bytes(asin))
                item_cost = 1
            else:
                deal = catalogue.by_asin.get(asin)
                # Keepa answers what was paid for: buy box data with buybox=1
                # or offers, rating history with rating=1 or offers.
                withhold = withheld(
                    buybox=q.buybox or q.offers > 0, rating=q.rating or q.offers > 0
                )
                made = factory.product_piece(
                    asin, history=q.history, stats=q.stats > 0, days=q.days,
                    title=deal["title"] if deal is not None else None, withhold=withhold,
                    deal=deal,
                )  # fmt: skip
                pages = factory.offer_pages(asin) if q.offers else 0
                if q.offers:
                    minute = self._keepa_minute()
                    made = piece(
                        api.with_offers(made.data, asin, pages, q.offers, minute, stock=q.stock)
                    )
                item_cost = q.cost_per_product(pages)
            made = self._faults.product(made)
            out.append(made)
            cost += item_cost
            self.products_bought[asin] += 1
            self.products_bought_in[q.domain, asin] += 1
        self._bucket.charge(cost)
        return {"products": out}, cost
