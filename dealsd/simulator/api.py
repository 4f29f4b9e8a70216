"""Keepa's request rules: parameter parsing, validation, costs, lying items.

Pure functions over request parameters and JSON bytes; the server applies them.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import msgspec
from aiohttp import web

from dealsd.simulator.catalogue import CATEGORIES, N_TYPES, PAGE_SIZE

DEAL_PAGE_COST = 5
MAX_ASINS = 100
DOMAINS = frozenset({1, 2, 3, 4, 5, 6, 8, 9, 10, 11, 12})
OFFER_PAGE_COST = 6  # per page of 10 offers, replacing the base token


class Rejected(Exception):
    """A request Keepa refuses: the status and the error body's type and message."""

    def __init__(self, status: int, type_: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.type = type_
        self.message = message


def bad(message: str) -> Rejected:
    return Rejected(400, "invalidParameter", message)


# /deal ---------------------------------------------------------------------------
async def read_selection(request: web.Request) -> dict[str, Any]:
    """The selection of a GET (``selection=``) or POST (JSON body), validated."""
    if request.method == "POST":
        text = (await request.read()).decode("utf-8", "replace")
    else:
        text = request.query.get("selection", "")
    if not text:
        raise bad("selection missing")
    try:
        selection = json.loads(text)
    except ValueError as exc:
        raise bad(f"selection is not valid JSON: {exc}") from None
    if not isinstance(selection, dict):
        raise bad("selection must be a JSON object")
    return validate_selection(selection)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def validate_selection(sel: dict[str, Any]) -> dict[str, Any]:
    domain = sel.get("domainId")
    if not _is_int(domain) or domain not in DOMAINS:
        raise bad("domainId missing or invalid")
    types = sel.get("priceTypes")
    if not isinstance(types, list) or len(types) != 1:
        raise bad("priceTypes must hold exactly one price type")
    if not _is_int(types[0]) or not 0 <= types[0] < N_TYPES:
        raise bad("priceTypes: unknown price type")
    page = sel.get("page", 0)
    if not _is_int(page) or page < 0:
        raise bad("page must be an integer >= 0")
    if not _is_int(sel.get("sortType", 0)):
        raise bad("sortType must be an integer")
    for name in ("currentRange", "salesRankRange", "deltaPercentRange"):
        value = sel.get(name)
        if value is not None and not (
            isinstance(value, list) and len(value) == 2 and all(_is_int(v) for v in value)
        ):
            raise bad(f"{name} must be [min, max]")
    return sel


def selection_key(selection: Mapping[str, Any]) -> str:
    return json.dumps({k: v for k, v in selection.items() if k != "page"}, sort_keys=True)


@dataclass(frozen=True, slots=True)
class DealResult:
    """One query's result as serialized at query time: pages stay consistent."""

    items: list[bytes]
    categories: dict[str, list[Any]]

    @classmethod
    def of(
        cls, deals: Sequence[Mapping[str, Any]], encode: Callable[[Mapping[str, Any]], bytes]
    ) -> DealResult:
        counts = Counter(int(d["rootCat"]) for d in deals)
        ids = sorted(counts)
        categories: dict[str, list[Any]] = {
            "categoryIds": ids,
            "categoryNames": [CATEGORIES.get(i, str(i)) for i in ids],
            "categoryCount": [counts[i] for i in ids],
        }
        return cls([encode(d) for d in deals], categories)

    def page(self, page: int) -> list[bytes]:
        return self.items[page * PAGE_SIZE : (page + 1) * PAGE_SIZE]


# /product ------------------------------------------------------------------------
def _int_param(query: Mapping[str, str], name: str, default: int) -> int:
    text = query.get(name)
    if text is None or text == "":
        return default
    try:
        return int(text)
    except ValueError:
        raise bad(f"{name} must be an integer") from None


@dataclass(frozen=True, slots=True)
class ProductQuery:
    domain: int
    asins: list[str]
    history: bool
    days: int
    stats: int
    update: int | None
    offers: int
    rating: bool
    buybox: bool
    stock: bool

    @classmethod
    def parse(cls, query: Mapping[str, str]) -> ProductQuery:
        if "domain" not in query:
            raise bad("domain missing")
        domain = _int_param(query, "domain", 0)
        if domain not in DOMAINS:
            raise bad("domain invalid")
        asins = [a.strip() for a in query.get("asin", "").split(",") if a.strip()]
        if not asins:
            raise bad("asin missing")
        if len(asins) > MAX_ASINS:
            raise bad(f"at most {MAX_ASINS} ASINs per request")
        offers = _int_param(query, "offers", 0)
        if offers and not 20 <= offers <= 100:
            raise Rejected(405, "invalidParameter", "offers must be within 20..100")
        update = _int_param(query, "update", -2)
        return cls(
            domain=domain,
            asins=list(dict.fromkeys(asins)),  # one answer (and bill) per ASIN
            history=_int_param(query, "history", 1) != 0,
            days=max(0, _int_param(query, "days", 0)),
            stats=_int_param(query, "stats", 0),
            update=None if update == -2 else update,
            offers=offers,
            rating=_int_param(query, "rating", 0) == 1,
            buybox=_int_param(query, "buybox", 0) == 1,
            stock=_int_param(query, "stock", 0) == 1,
        )

    def cost_per_product(self, offer_pages: int) -> int:
        """Keepa's documented table: base (or offer pages) plus the paid extras."""
        cost = OFFER_PAGE_COST * offer_pages if self.offers else 1
        if self.rating:
            cost += 1
        if self.buybox and not self.offers:
            cost += 2
        if self.stock:
            cost += 2
        if self.update == 0:  # a refresh forced on data that was fresh
            cost += 1
        return cost


def with_offers(product: bytes, asin: str, pages: int, limit: int, minute: int) -> bytes:
    """Splice an ``offers`` list (``pages`` pages of 10, at most ``limit``) into a product."""
    n = min(limit, pages * 10)
    offers = [
        {
            "offerId": i,
            "sellerId": f"SIMSELLER{i:03d}",
            "condition": 1 if i % 3 else 2,
            "isFBA": i % 2 == 0,
            "isPrime": i % 2 == 0,
            "lastSeen": minute,
            "offerCSV": [minute, 1000 + 37 * i + len(asin), 0],
        }
        for i in range(n)
    ]
    extra = msgspec.json.encode({"offers": offers, "liveOffersOrder": list(range(n))})
    return product[:-1] + b"," + extra[1:]


# lying items ---------------------------------------------------------------------
def corrupt_deal(data: bytes, rng: random.Random) -> bytes:
    deal = msgspec.json.decode(data)
    how = rng.randrange(4)
    if how == 0:
        deal.pop("asin", None)
    elif how == 1:
        deal.pop("lastUpdate", None)
    elif how == 2:
        deal["current"] = "not a list"
    else:
        deal["lastUpdate"] = "yesterday"
    return msgspec.json.encode(deal)


def corrupt_product(data: bytes, rng: random.Random) -> bytes:
    product = msgspec.json.decode(data)
    how = rng.randrange(3)
    if how == 0:
        product.pop("asin", None)
    elif how == 1 and isinstance(product.get("stats"), dict):
        avg90 = list(product["stats"].get("avg90") or [-1] * N_TYPES)
        avg90[1] = "n/a"
        product["stats"]["avg90"] = avg90
    else:
        product["productType"] = "standard"
    return msgspec.json.encode(product)
