"""The simulated deal catalogue: deterministic from a seed, evolving per Keepa minute.

Each deal follows Keepa's Deal object (docs/keepa.md, "/deal"): arrays indexed
by price type (36 entries, -1 = no data), ``delta``/``deltaPercent``/``avg``
indexed by date range then price type, times in Keepa minutes. Drops are
negative deltas (current - average), so sortType 4 puts the deepest drop first.

Every period some deals change (new prices, ``lastUpdate`` = that minute) and
new ones appear (``creationDate`` = that minute); a deal not updated for 12 h
of simulated time is no longer listed, as Keepa only lists products updated
in the last 12 hours. The two real sample ASINs are always part of the
catalogue.

``sortType`` 1 ("deal age, newest deals first") orders by ``creationDate``, when
Keepa found the deal (README, "Which field orders the newest deals"), or by
``lastUpdate`` with ``newest_by="lastUpdate"``, so tests can show the upserter
is right under either reading.

Profit, as on Keepa: each deal has a hidden resale premium (its 90-day average
over its price when found); a ``profitable_share`` of deals has a large one,
the rest a small one. The deal's ``avg`` carries it, so the deal object
predicts the product's stats; the product (``products.py``) derives its own
averages from the deal's with noise. A price change moves ``current`` and
keeps the averages, as a drop does on Keepa.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import msgspec

N_TYPES = 36
LISTED_FOR_MINUTES = 12 * 60
RESULT_LIMIT = 10_000
PAGE_SIZE = 150
AMAZON, NEW, USED, SALES, LISTPRICE = 0, 1, 2, 3, 4
COUNT_NEW, COUNT_USED, RATING, COUNT_REVIEWS = 11, 12, 16, 17
PRICE_TYPES = (AMAZON, NEW, USED, LISTPRICE)

CATEGORIES: dict[int, str] = {
    283155: "Books",
    3760911: "Beauty & Personal Care",
    16310091: "Industrial & Scientific",
    172282: "Electronics",
    1055398: "Home & Kitchen",
}
_ASIN_CHARS = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"


@dataclass(frozen=True, slots=True)
class RealDeal:
    """What a catalogue deal borrows from a real sample product."""

    asin: str
    title: str
    root_category: int
    categories: list[int]
    image: str
    current: list[int]


def _blank() -> list[int]:
    return [-1] * N_TYPES


class Catalogue:
    def __init__(
        self,
        *,
        size: int,
        seed: int,
        start_minute: int,
        real: Iterable[RealDeal] = (),
        newest_by: str = "creationDate",
        profitable_share: float = 0.06,
    ) -> None:
        if newest_by not in ("creationDate", "lastUpdate"):
            raise ValueError(f"newest_by must be creationDate or lastUpdate, got {newest_by!r}")
        self._rng = random.Random(f"catalogue:{seed}")
        self.newest_by = newest_by
        self.profitable_share = profitable_share
        self.minute = start_minute
        self.deals: list[dict[str, Any]] = []
        self.by_asin: dict[str, dict[str, Any]] = {}
        self._bytes: dict[str, bytes] = {}
        self._asins: set[str] = set()
        reals = list(real)
        self._asins.update(r.asin for r in reals)
        for r in reals:
            self._add(self._real_deal(r))
        for _ in range(max(0, size - len(reals))):
            # Spread the first lastUpdates over the last 6 h: the catalogue
            # looks lived-in, and nothing falls off the 12 h window at once.
            self._add(self._new_deal(self.minute - self._rng.randrange(0, 360)))

    # building -----------------------------------------------------------------
    def _new_asin(self) -> str:
        while True:
            asin = "B0" + "".join(self._rng.choice(_ASIN_CHARS) for _ in range(8))
            if asin not in self._asins:
                self._asins.add(asin)
                return asin

    def _new_deal(self, minute: int) -> dict[str, Any]:
        rng = self._rng
        root = rng.choice(list(CATEGORIES))
        listprice = rng.randrange(1000, 50_000)
        current = _blank()
        current[NEW] = int(listprice * rng.uniform(0.45, 0.95))
        current[USED] = int(current[NEW] * rng.uniform(0.35, 0.9))
        current[AMAZON] = current[NEW] if rng.random() < 0.4 else -1
        current[LISTPRICE] = listprice
        current[SALES] = rng.randrange(1_000, 5_000_000)
        current[COUNT_NEW] = rng.randrange(1, 40)
        current[COUNT_USED] = rng.randrange(0, 60)
        current[RATING] = rng.randrange(20, 51)
        current[COUNT_REVIEWS] = rng.randrange(0, 20_000)
        asin = self._new_asin()
        image = "".join(rng.choice(_ASIN_CHARS) for _ in range(11)) + "L.jpg"
        deal = {
            "asin": asin,
            "parentAsin": None,
            "title": f"Simulated product {asin} ({CATEGORIES[root]})",
            "rootCat": root,
            "categories": [root * 10 + rng.randrange(1, 9)],
            "image": list(image.encode()),
            "creationDate": minute,
            "lightningEnd": 0,
            "warehouseCondition": 0,
            "warehouseConditionComment": None,
        }
        if rng.random() < self.profitable_share:
            premium = rng.uniform(1.6, 2.6)
        else:
            premium = rng.uniform(1.02, 1.45)
        self._price(deal, current, minute, since=minute - rng.randrange(0, 5000), premium=premium)
        return deal

    def _real_deal(self, real: RealDeal) -> dict[str, Any]:
        current = list(real.current) + [-1] * (N_TYPES - len(real.current))
        if current[USED] < 0 and current[NEW] > 0:
            # The recorded product has no used offer; its deal (a separate,
            # made-up observation) has one so a used-price selection lists it.
            current[USED] = int(current[NEW] * 0.7)
        deal = {
            "asin": real.asin,
            "parentAsin": None,
            "title": real.title,
            "rootCat": real.root_category,
            "categories": real.categories,
            "image": list(real.image.encode()),
            "creationDate": self.minute - 30,
            "lightningEnd": 0,
            "warehouseCondition": 0,
            "warehouseConditionComment": None,
        }
        self._price(deal, current, self.minute - 1, since=self.minute - 600, premium=1.2)
        return deal

    def _price(
        self,
        deal: dict[str, Any],
        current: list[int],
        minute: int,
        since: int,
        premium: float | None = None,
    ) -> None:
        """Set current prices and everything derived from them, as of ``minute``.

        ``premium``: a new deal's averages over its price (the 90-day one; the
        shorter windows remember less of it). None keeps the averages.
        """
        rng = self._rng
        old = deal.get("current")
        avg = deal.get("avg")
        if premium is not None or avg is None:
            lift = 1.2 if premium is None else premium
            avg = [_blank() for _ in range(4)]
            for r in range(4):
                # Longer windows remember higher prices: the deal is a drop.
                window = 1.0 + (lift - 1.0) * (0.4 + 0.2 * r)
                for t in range(N_TYPES):
                    if current[t] > 0:
                        avg[r][t] = int(current[t] * window * rng.uniform(0.97, 1.03))
        delta = [
            [c - a if c > 0 and a > 0 else 0 for c, a in zip(current, row, strict=True)]
            for row in avg
        ]
        pct = [
            [round(d * 100 / a) if a > 0 else 0 for d, a in zip(drow, arow, strict=True)]
            for drow, arow in zip(delta, avg, strict=True)
        ]
        deal["current"] = current
        deal["currentSince"] = [since if c > 0 else -1 for c in current]
        deal["deltaLast"] = [
            c - o if old is not None and c > 0 and o > 0 else 0
            for c, o in zip(current, old or current, strict=True)
        ]
        deal["delta"] = delta
        deal["deltaPercent"] = pct
        deal["avg"] = avg
        deal["lastUpdate"] = minute

    def _add(self, deal: dict[str, Any]) -> None:
        self.deals.append(deal)
        self.by_asin[deal["asin"]] = deal

    # evolution ------------------------------------------------------------------
    def step(self, minute: int, *, changed: int, new: int) -> None:
        """One Keepa minute passes: ``changed`` deals move, ``new`` appear."""
        self.minute = minute
        rng = self._rng
        for deal in rng.sample(self.deals, min(changed, len(self.deals))):
            self._move(
                deal, minute, lambda: rng.uniform(0.9, 1.1), lambda: rng.uniform(0.5, 1.5)
            )
        for _ in range(new):
            self._add(self._new_deal(minute))
        if minute % 60 == 0:
            # Deals past the 12 h window are never listed again: drop them so a
            # long accelerated run does not grow without bound.
            cutoff = minute - LISTED_FOR_MINUTES
            gone = [d for d in self.deals if d["lastUpdate"] < cutoff]
            if gone:
                self.deals = [d for d in self.deals if d["lastUpdate"] >= cutoff]
                for d in gone:
                    self.by_asin.pop(d["asin"], None)
                    self._bytes.pop(d["asin"], None)

    def reprice(self, asin: str, factor: float) -> dict[str, Any]:
        """One deal's price changes now, as a change in ``step`` does: its Amazon, new
        and used prices times ``factor`` (list price and sales rank stay), its averages
        kept, ``lastUpdate`` (and ``currentSince``) this minute. Returns the deal.

        For tests that need one known price move instead of ``step``'s random
        ones. KeyError: no such deal in this catalogue.
        """
        deal = self.by_asin[asin]
        self._move(deal, self.minute, lambda: factor)
        return deal

    def _move(
        self,
        deal: dict[str, Any],
        minute: int,
        price: Callable[[], float],
        rank: Callable[[], float] | None = None,
    ) -> None:
        """The deal's prices (not the list price) times ``price()`` each, its sales rank
        times ``rank()`` if given, as of ``minute``; its averages stay."""
        current = list(deal["current"])
        for t in PRICE_TYPES:
            if current[t] > 0 and t != LISTPRICE:
                current[t] = max(1, int(current[t] * price()))
        if rank is not None:
            current[SALES] = max(1, int(current[SALES] * rank()))
        self._price(deal, current, minute, since=minute)
        self._bytes.pop(deal["asin"], None)  # its /deal bytes are those of the old price

    # reading ----------------------------------------------------------------------
    def deal_bytes(self, deal: Mapping[str, Any]) -> bytes:
        asin = str(deal["asin"])
        cached = self._bytes.get(asin)
        if cached is None:
            cached = self._bytes[asin] = msgspec.json.encode(deal)
        return cached

    def listed(self) -> list[dict[str, Any]]:
        cutoff = self.minute - LISTED_FOR_MINUTES
        return [d for d in self.deals if d["lastUpdate"] >= cutoff]

    def query(self, selection: Mapping[str, Any]) -> list[dict[str, Any]]:
        """Deals matching ``selection`` (validated by the caller), sorted, capped."""
        pt = int(selection["priceTypes"][0])
        ranges_on = selection.get("isRangeEnabled", True) is not False
        date_range = int(selection.get("dateRange", 0) or 0)
        if not 0 <= date_range <= 3:
            date_range = 0
        # A deal is listed under a price type only if it has that price now.
        deals = [d for d in self.listed() if d["current"][pt] > 0]
        if ranges_on:
            deals = [d for d in deals if _in_ranges(d, selection, pt, date_range)]
        include = selection.get("includeCategories") or []
        exclude = selection.get("excludeCategories") or []
        if include:
            deals = [d for d in deals if _in_categories(d, include)]
        if exclude:
            deals = [d for d in deals if not _in_categories(d, exclude)]
        sort_type = int(selection.get("sortType", 0) or 0)
        deals.sort(key=lambda d: d["asin"])  # the stable order under every sort
        key = _sort_key(abs(sort_type), pt, date_range, self.newest_by)
        if key is not None:
            deals.sort(key=key, reverse=sort_type < 0)
        return deals[:RESULT_LIMIT]


def _within(value: int, bounds: Any) -> bool:
    if not isinstance(bounds, list) or len(bounds) != 2:
        return True
    lo, hi = bounds
    return value >= 0 and lo <= value <= hi


def _in_ranges(deal: Mapping[str, Any], sel: Mapping[str, Any], pt: int, dr: int) -> bool:
    current = deal["current"]
    if "currentRange" in sel and not _within(current[pt], sel["currentRange"]):
        return False
    if "salesRankRange" in sel and not _within(current[SALES], sel["salesRankRange"]):
        return False
    if "deltaPercentRange" in sel:
        drop = -deal["deltaPercent"][dr][pt]
        if not _within(drop, sel["deltaPercentRange"]):
            return False
    return True


def _in_categories(deal: Mapping[str, Any], cats: list[Any]) -> bool:
    return deal["rootCat"] in cats or any(c in cats for c in deal["categories"])


def _sort_key(sort_type: int, pt: int, dr: int, newest_by: str = "creationDate") -> Any:
    if sort_type == 1:  # deal age: newest first
        return lambda d: -d[newest_by]
    if sort_type == 2:  # largest absolute drop first
        return lambda d: d["delta"][dr][pt]
    if sort_type == 3:  # best sales rank first, unknown ranks last
        return lambda d: d["current"][SALES] if d["current"][SALES] > 0 else 1 << 62
    if sort_type == 4:  # deepest percent drop first
        return lambda d: d["deltaPercent"][dr][pt]
    return None
