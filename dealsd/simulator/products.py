"""Products for /product, built from the two real recorded payloads.

The two real ASINs are answered with their recorded product exactly (when asked
with the parameters they were recorded with: B0D8W1YVBX with ``buybox=1`` and
``rating=1``, B0F7XPYCSJ with neither). Any other
ASIN gets a variation of one of them: ASIN and title rewritten, prices scaled
by a per-ASIN factor (stats, buy box, price histories), fees and sales-rank
drops varied, everything else (the shape) kept. Choices come from a hash of
seed and ASIN, so an ASIN always gets the same product.

A variation asked while its deal is in the catalogue takes its averages from
the deal (``follow_deal``): the stats' Amazon, new and used averages are the
deal's ``avg`` (30 and 90 days; 180 and 365 from the 90) each times a noise
factor of +-12 % fixed per ASIN and window. The deal object thus predicts the
product's stats, with noise, as on Keepa. A deal's averages are set when it
appears and kept through its price changes, so the cached product stays right.

Keepa sends only the data the parameters paid for (``withheld``, ``strip_stats``): without
``buybox=1`` or ``offers`` no buy box (csv types 18 and 32, the ``buyBox*``
stats), without ``rating=1`` or ``offers`` no rating history (types 16, 17).
The offers themselves, and the offer-derived stats, are added when the
product is answered (``answers.py``, with ``api.with_offers``).

A product of the large sample is ~600 KB, mostly history. Those big members
are encoded once per template (and price factor) and spliced in as
``msgspec.Raw``, so building a product is encoding a small dict; the finished
bytes, with their deflated form (``gzjoin``), are kept in a byte-bounded LRU
so a repeated purchase costs neither encoding nor compression.
"""

from __future__ import annotations

import hashlib
import json
from collections import OrderedDict
from dataclasses import dataclass
from importlib import resources
from typing import Any

import msgspec

from dealsd.simulator.gzjoin import Piece, piece

REAL_ASINS = ("B0D8W1YVBX", "B0F7XPYCSJ")
PRODUCT_TYPE_INVALID = 4
# Price-type indexes whose values are money (scaled by the per-ASIN factor).
MONEY_TYPES = frozenset({0, 1, 2, 4, 5, 6, 7, 8, 9, 10, *range(18, 33)})
# csv entries stored as [t, price, shipping] triples rather than [t, value] pairs.
TRIPLE_TYPES = frozenset({7, *range(18, 30), 32})
FACTORS = (0.55, 0.7, 0.85, 1.0, 1.2, 1.45, 1.8)
REFERRAL_PCTS = (8.0, 12.0, 15.0, 15.01, 17.0)
STATS_MONEY_ARRAYS = ("current", "avg", "avg30", "avg90", "avg180", "avg365", "atIntervalStart")
STATS_PAIR_ARRAYS = ("min", "max", "minInInterval", "maxInInterval")
BIG_MEMBER = 2048  # bytes: members larger than this are pre-encoded once
BUY_BOX_TYPES = frozenset({18, 32})  # BUY_BOX_SHIPPING, BUY_BOX_USED_SHIPPING
RATING_TYPES = frozenset({16, 17})  # RATING, COUNT_REVIEWS
STATS_TYPE_ARRAYS = (
    *STATS_MONEY_ARRAYS, "outOfStockPercentage30", "outOfStockPercentage90",
    "outOfStockPercentage180", "outOfStockPercentage365", "outOfStockPercentageInInterval",
)  # fmt: skip


def withheld(*, buybox: bool, rating: bool) -> frozenset[int]:
    """The price types a request without these parameters gets no data for."""
    return frozenset({*(() if buybox else BUY_BOX_TYPES), *(() if rating else RATING_TYPES)})


def strip_stats(stats: dict[str, Any], types: frozenset[int]) -> dict[str, Any]:
    """A copy of ``stats`` with no data for ``types`` (and no buy box fields if 18 is in)."""
    if not types:
        return stats
    out = dict(stats)
    for name in STATS_TYPE_ARRAYS:
        arr = out.get(name)
        if isinstance(arr, list):
            out[name] = [-1 if t in types else v for t, v in enumerate(arr)]
    for name in STATS_PAIR_ARRAYS:
        arr = out.get(name)
        if isinstance(arr, list):
            out[name] = [None if t in types else v for t, v in enumerate(arr)]
    if 18 in types:
        for name in out:
            if name.startswith("buyBox") or name == "lastBuyBoxUpdate":
                out[name] = None
        # Keepa's "not available" for these two, as in a sample asked without buybox.
        out["buyBoxPrice"] = out["buyBoxShipping"] = -2
    return out


DEAL_PRICE_TYPES = (0, 1, 2)  # AMAZON, NEW, USED: the prices a deal object carries
NOISE = 0.12
# stats array -> the deal's avg dateRange it follows
FOLLOWS: tuple[tuple[str, int], ...] = (
    ("avg30", 2), ("avg90", 3), ("avg180", 3), ("avg365", 3), ("avg", 3),
)  # fmt: skip


def follow_deal(
    stats: dict[str, Any], deal: dict[str, Any], seed: int, asin: str, withhold: frozenset[int]
) -> dict[str, Any]:
    """``stats`` with the deal's Amazon, new and used averages, with noise."""
    out = dict(stats)
    for name, window in FOLLOWS:
        arr = out.get(name)
        if not isinstance(arr, list):
            continue
        arr = list(arr)
        for t in DEAL_PRICE_TYPES:
            if t >= len(arr) or t in withhold:
                continue
            source = deal["avg"][window][t]
            if source <= 0:
                arr[t] = -1
                continue
            noise = 1 + NOISE * (2 * unit(seed, asin, f"{name}{t}") - 1)
            arr[t] = max(1, int(source * noise))
        out[name] = arr
    return out


def unit(seed: int, asin: str, what: str) -> float:
    """A stable number in [0, 1) for (seed, asin, what)."""
    digest = hashlib.blake2b(f"{seed}:{what}:{asin}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


@dataclass(frozen=True, slots=True)
class Template:
    asin: str
    product: dict[str, Any]  # the recorded product, untouched
    envelope: dict[str, Any]


def load_templates() -> list[Template]:
    out = []
    folder = resources.files("dealsd") / "samples"
    for asin in REAL_ASINS:
        doc = json.loads((folder / f"product_{asin}.json").read_bytes())
        product = doc.pop("products")[0]
        out.append(Template(asin=asin, product=product, envelope=doc))
    return out


def _scale(value: Any, factor: float) -> Any:
    return int(value * factor) if isinstance(value, int) and value > 0 else value


def _scaled_csv(
    csv: list[Any], factor: float, since: int | None, drop: frozenset[int] = frozenset()
) -> list[Any]:
    out: list[Any] = []
    for t, series in enumerate(csv):
        if series is None or t in drop:
            out.append(None)
            continue
        stride = 3 if t in TRIPLE_TYPES else 2
        money = t in MONEY_TYPES and factor != 1.0
        rows = []
        for i in range(0, len(series) - stride + 1, stride):
            if since is not None and series[i] < since and i + stride < len(series):
                continue  # keep the last point: it is the current value
            row = series[i : i + stride]
            if money:
                row = [row[0], _scale(row[1], factor), *row[2:]]
            rows.extend(row)
        out.append(rows)
    return out


class ProductFactory:
    def __init__(self, *, seed: int, cache_bytes: int = 128 * 1024 * 1024) -> None:
        self.seed = seed
        self.templates = load_templates()
        self._real = {t.asin: t for t in self.templates}
        self._raw_members: dict[tuple[str, str], msgspec.Raw] = {}
        self._csv: dict[tuple[str, float, int, frozenset[int]], msgspec.Raw] = {}
        self._cache: OrderedDict[tuple[str, bool, bool, int, frozenset[int]], Piece] = (
            OrderedDict()
        )
        self._cache_size = 0
        self._cache_max = cache_bytes
        self.builds = 0

    def real_deal_fields(self) -> list[dict[str, Any]]:
        return [t.product for t in self.templates]

    def is_missing(self, asin: str, rate: float) -> bool:
        return asin not in self._real and unit(self.seed, asin, "missing") < rate

    def is_invalid(self, asin: str, rate: float) -> bool:
        return asin not in self._real and unit(self.seed, asin, "invalid") < rate

    def offer_pages(self, asin: str) -> int:
        return 1 + int(unit(self.seed, asin, "offers") * 3)

    def product_piece(
        self,
        asin: str,
        *,
        history: bool,
        stats: bool,
        days: int,
        title: str | None = None,
        withhold: frozenset[int] = frozenset(),
        deal: dict[str, Any] | None = None,
    ) -> Piece:
        """The product's JSON and its deflated form, cached.

        ``withhold``: price types the request did not pay for (``withheld``);
        ``deal``: the catalogue's deal, whose prices the product follows.
        """
        key = (asin, history, stats, days if history else 0, withhold)
        cached = self._cache.get(key)
        if cached is not None:
            self._cache.move_to_end(key)
            return cached
        product = self._build(asin, history, stats, days, title, withhold)
        if deal is not None and asin not in self._real and isinstance(product.get("stats"), dict):
            product["stats"] = follow_deal(product["stats"], deal, self.seed, asin, withhold)
        made = piece(msgspec.json.encode(product))
        self.builds += 1
        self._cache[key] = made
        self._cache_size += len(made.data) + len(made.deflated)
        while self._cache_size > self._cache_max and len(self._cache) > 1:
            _, old = self._cache.popitem(last=False)
            self._cache_size -= len(old.data) + len(old.deflated)
        return made

    def invalid_bytes(self, asin: str) -> bytes:
        # Keepa's answer for an ASIN it cannot resolve: the product, empty.
        return msgspec.json.encode(
            {"asin": asin, "domainId": 1, "productType": PRODUCT_TYPE_INVALID, "title": None,
             "csv": None, "stats": None, "lastUpdate": 0, "categories": None}
        )  # fmt: skip

    def _member(self, template: Template, name: str) -> Any:
        value = template.product[name]
        key = (template.asin, name)
        raw = self._raw_members.get(key)
        if raw is None:
            encoded = msgspec.json.encode(value)
            if len(encoded) < BIG_MEMBER:
                return value
            raw = self._raw_members[key] = msgspec.Raw(encoded)
        return raw

    def _csv_raw(
        self, template: Template, factor: float, days: int, drop: frozenset[int]
    ) -> msgspec.Raw:
        key = (template.asin, factor, days, drop)
        raw = self._csv.get(key)
        if raw is None:
            since = template.product["lastUpdate"] - days * 1440 if days > 0 else None
            csv = template.product["csv"]
            raw = msgspec.Raw(msgspec.json.encode(_scaled_csv(csv, factor, since, drop)))
            self._csv[key] = raw
        return raw

    def _build(
        self,
        asin: str,
        history: bool,
        stats: bool,
        days: int,
        title: str | None,
        withhold: frozenset[int],
    ) -> dict[str, Any]:
        real = self._real.get(asin)
        if real is not None:
            product = dict(real.product)  # exactly as recorded, minus what was not asked
            if not history:
                del product["csv"]
            elif days > 0 or withhold:
                product["csv"] = self._csv_raw(real, 1.0, days, withhold)
            if not stats:
                product.pop("stats", None)
            elif withhold and isinstance(product.get("stats"), dict):
                product["stats"] = strip_stats(product["stats"], withhold)
            if 18 in withhold and "buyBoxSellerIdHistory" in product:
                product["buyBoxSellerIdHistory"] = None
            return product
        template = self.templates[int(unit(self.seed, asin, "template") * len(self.templates))]
        factor = FACTORS[int(unit(self.seed, asin, "factor") * len(FACTORS))]
        src = template.product
        product = {
            name: self._member(template, name) for name in src if name not in ("csv", "stats")
        }
        product["asin"] = asin
        product["title"] = title or f"{src['title']} ({asin})"
        if history:
            product["csv"] = self._csv_raw(template, factor, days, withhold)
        if stats and src.get("stats") is not None:
            product["stats"] = strip_stats(self._stats(src["stats"], factor, asin), withhold)
        if 18 in withhold and "buyBoxSellerIdHistory" in product:
            product["buyBoxSellerIdHistory"] = None
        fees = dict(src.get("fbaFees") or {})
        if isinstance(fees.get("pickAndPackFee"), int):
            fees["pickAndPackFee"] = 250 + int(unit(self.seed, asin, "fee") * 600)
        product["fbaFees"] = fees
        pct = REFERRAL_PCTS[int(unit(self.seed, asin, "referral") * len(REFERRAL_PCTS))]
        product["referralFeePercentage"] = pct
        product["referralFeePercent"] = int(pct)
        return product

    def _stats(self, src: dict[str, Any], factor: float, asin: str) -> dict[str, Any]:
        stats = dict(src)
        for name in STATS_MONEY_ARRAYS:
            arr = src.get(name)
            if isinstance(arr, list):
                stats[name] = [
                    _scale(v, factor) if t in MONEY_TYPES else v for t, v in enumerate(arr)
                ]
        for name in STATS_PAIR_ARRAYS:
            arr = src.get(name)
            if isinstance(arr, list):
                stats[name] = [
                    [p[0], _scale(p[1], factor)] if p is not None and t in MONEY_TYPES else p
                    for t, p in enumerate(arr)
                ]
        for name in ("buyBoxPrice", "buyBoxSavingBasis"):
            stats[name] = _scale(src.get(name), factor)
        drops = 0.5 + unit(self.seed, asin, "drops") * 1.5
        for window in (30, 90, 180, 365):
            name = f"salesRankDrops{window}"
            value = src.get(name)
            if isinstance(value, int) and value >= 0:
                stats[name] = int(value * drops)
        return stats
