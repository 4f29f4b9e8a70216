"""Keepa's request rules: parameter parsing, validation, costs, lying items.

Pure functions over request parameters and JSON bytes; the server and its answers
(``answers.py``) apply them.
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


# Keepa's offer conditions: 1 new, 2..5 used like new / very good / good / acceptable.
USED_CONDITION_TYPE = {2: 19, 3: 20, 4: 21, 5: 22}  # -> USED_*_SHIPPING price type
FBM_SHIPPING_CENTS = 399


def _offer(i: int, asin: str, minute: int, stock: bool) -> dict[str, Any]:
    fba = i % 2 == 0
    offer: dict[str, Any] = {
        "offerId": i,
        "sellerId": f"SIMSELLER{i:03d}",
        "condition": 1 + i % 5,
        "isFBA": fba,
        "isPrime": fba,
        "lastSeen": minute,
        # [time, price, shipping]: an FBA offer ships free.
        "offerCSV": [minute, 1000 + 37 * i + len(asin), 0 if fba else FBM_SHIPPING_CENTS],
    }
    if stock:
        offer["stockCSV"] = [minute, 1 + (i * 7 + len(asin)) % 30]
    return offer


def _offer_stats(stats: dict[str, Any], offers: list[dict[str, Any]]) -> dict[str, Any]:
    """The stats fields Keepa derives from the offers it fetched: lowest prices
    with shipping by condition, the buy boxes (the lowest landed new and used
    offer here), the FBA/FBM counts."""
    lowest: dict[int, int] = {}

    def note(price_type: int, landed: int) -> None:
        lowest[price_type] = min(landed, lowest.get(price_type, landed))

    new_fba = new_fbm = 0
    for offer in offers:
        _, price, shipping = offer["offerCSV"][-3:]
        landed = price + shipping
        if offer["condition"] == 1:
            if offer["isFBA"]:
                new_fba += 1
                note(10, price)  # NEW_FBA
            else:
                new_fbm += 1
                note(7, landed)  # NEW_FBM_SHIPPING
            note(18, landed)  # BUY_BOX_SHIPPING
        else:
            note(USED_CONDITION_TYPE[offer["condition"]], landed)
            note(32, landed)  # BUY_BOX_USED_SHIPPING
    out = dict(stats)
    current = list(out.get("current") or [-1] * 36)
    for price_type, value in lowest.items():
        current[price_type] = value
    out["current"] = current
    out["offerCountFBA"], out["offerCountFBM"] = new_fba, new_fbm
    out["retrievedOfferCount"] = len(offers)
    if 18 in lowest:
        out["buyBoxPrice"], out["buyBoxShipping"] = lowest[18], 0
    return out


def with_offers(
    product: bytes, asin: str, pages: int, limit: int, minute: int, *, stock: bool = False
) -> bytes:
    """The product with an ``offers`` list (``pages`` pages of 10, at most ``limit``).

    Offers also bring what Keepa derives from them into ``stats`` (when stats
    were asked for); ``stock`` adds each offer's ``stockCSV``.
    """
    n = min(limit, pages * 10)
    offers = [_offer(i, asin, minute, stock) for i in range(n)]
    doc = msgspec.json.decode(product)
    doc["offers"] = offers
    doc["liveOffersOrder"] = list(range(n))
    if isinstance(doc.get("stats"), dict):
        doc["stats"] = _offer_stats(doc["stats"], offers)
    return msgspec.json.encode(doc)


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
    """A product that lies: no asin (unusable), a string or nulls where numbers
    belong (Keepa sends nulls: readable around them), a productType string."""
    product = msgspec.json.decode(data)
    how = rng.randrange(4)
    if how == 0:
        product.pop("asin", None)
    elif how == 1 and isinstance(product.get("stats"), dict):
        avg90 = list(product["stats"].get("avg90") or [-1] * N_TYPES)
        avg90[1] = "n/a"
        product["stats"]["avg90"] = avg90
    elif how == 2 and isinstance(product.get("stats"), dict):
        product["lastUpdate"] = None
        product["stats"]["salesRankDrops90"] = None
    else:
        product["productType"] = "standard"
    return msgspec.json.encode(product)
