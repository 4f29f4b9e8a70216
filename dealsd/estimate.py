"""The profit estimate: what buying a deal costs, all in, and what reselling it earns.

Pure and typed, like the mapping it reads: ``estimate`` takes a deal row (the
deal's columns and its product columns, ``dealsd.mapping``) and the
``[profit]`` settings, and returns the ``ESTIMATE_COLUMNS``. The backfiller
calls it with the row as it is at commit time, the upserter whenever a deal's
current price changes, so both always agree (docs/field-notes.md #8).
docs/schema.md ("The estimate") has the formulas and the NULL rules.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol

from dealsd.keepa.payloads import AMAZON, NEW, USED

# The deal's current-price column for each selection price type.
CURRENT_PRICE_COLUMN: Mapping[int, str] = {
    AMAZON: "current_amazon_cents",
    NEW: "current_new_cents",
    USED: "current_used_cents",
}

ESTIMATE_COLUMNS: tuple[str, ...] = (
    "expected_sale_cents",
    "buy_price_cents",
    "all_in_cost_cents",
    "fees_cents",
    "profit_cents",
    "margin_pct",
    "roi_pct",
)

# `[profit] reference` -> the avg90 column that prices a resale. An FBA offer
# ships free, so its price is the whole price; it competes with the other
# offers' prices. "used" and "new" are the lowest item prices, shipping left
# out: the cautious choice (a buyer of a merchant-fulfilled offer pays its
# shipping on top, so an FBA offer can usually ask a little more).
# "used_buy_box" and "buy_box" include shipping, as the winning offer's buyer
# pays it.
REFERENCE_COLUMN: Mapping[str, str] = {
    "used": "avg90_used_cents",
    "new": "avg90_new_cents",
    "buy_box": "avg90_buy_box_cents",
    "used_buy_box": "avg90_used_buy_box_shipping_cents",
    "amazon": "avg90_amazon_cents",
}

# The selection's price type -> the product column with its lowest price
# shipping included (needs `offers`). Amazon ships its own offers free.
LANDED_PRICE_COLUMN: Mapping[int, str] = {
    NEW: "current_new_shipping_cents",
    USED: "current_used_shipping_cents",
}
GRAMS_PER_LB = 453.59237


class ProfitSettings(Protocol):
    """What ``estimate`` reads from the config's ``[profit]`` table."""

    @property
    def reference(self) -> str: ...
    @property
    def referral_fee_pct(self) -> float: ...
    @property
    def fba_fee_cents(self) -> int: ...
    @property
    def extra_cost_cents(self) -> int: ...
    @property
    def buy_shipping_cents(self) -> int: ...
    @property
    def prep_cents(self) -> int: ...
    @property
    def inbound_cents_per_lb(self) -> int: ...
    @property
    def referral_fee_min_cents(self) -> int: ...
    @property
    def closing_fee_cents(self) -> int: ...
    @property
    def closing_fee_categories(self) -> Sequence[int]: ...


def buy_cost_cents(row: Mapping[str, object] | Sequence[int], price_type: int) -> int | None:
    """What buying the deal costs: its current price for the selection's price type.

    ``row`` is a ``deal_row`` (or a `deals` row read back) or a deal's raw
    ``current`` array. Price types other than Amazon, new and used have no
    buy price column, so they give None.
    """
    if isinstance(row, Mapping):
        column = CURRENT_PRICE_COLUMN.get(price_type)
        if column is None:
            return None
        value = row.get(column)
        return value if isinstance(value, int) and value >= 0 else None
    if price_type not in CURRENT_PRICE_COLUMN or price_type >= len(row):
        return None
    value = row[price_type]
    return value if value >= 0 else None  # Keepa's -1 and -2 are no price


def _int_or_none(value: object) -> int | None:
    # bool is an int subclass; a True price would be a bug upstream, not 1 cent.
    if isinstance(value, bool) or not isinstance(value, int):
        return None
    return value


def _float_or_none(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def buy_price_cents(
    columns: Mapping[str, object], item_cents: int | None, price_type: int, extra_shipping: int
) -> int | None:
    """What buying costs, shipping included: the deal's item price made like-for-like.

    Keepa's lowest price with shipping (``LANDED_PRICE_COLUMN``) when it was
    fetched and is not below the item price (the lowest landed price is never
    below the lowest item price, so a lower one is stale: the deal's price
    rose since the backfill; after a drop it would not be, so the upserter
    forgets it whenever the deal's price moves: ``store.feed``); otherwise the
    item price plus the configured ``buy_shipping_cents``. None without an item
    price.
    """
    if item_cents is None or item_cents < 0:
        return None
    if price_type == AMAZON:
        return item_cents
    column = LANDED_PRICE_COLUMN.get(price_type)
    landed = _int_or_none(columns.get(column)) if column is not None else None
    if landed is not None and landed >= item_cents:
        return landed
    return item_cents + extra_shipping


def _pct(part: int, whole: int) -> float:
    return round(part / whole * 100, 2)


def estimate(
    columns: Mapping[str, object],
    *,
    buy_cost_cents: int | None,
    price_type: int,
    profit: ProfitSettings,
) -> dict[str, object]:
    """Expected resale price, fees, all-in cost, profit, margin and ROI.

    ``columns`` are the product columns (with ``root_category`` for the
    closing fee); ``buy_cost_cents`` is the deal's item price for
    ``price_type``. Each output is None when one of its own inputs is None:
    the sale price needs the reference average; the fees also need the
    category when a closing fee is configured; the all-in cost needs the buy
    price, and the package weight when inbound shipping is priced per pound;
    profit, margin and ROI need both. A sale price of 0 or less prices
    nothing, so everything is None then. The product's own referral percentage
    and FBA fee win over the config's defaults, which only fill in when Keepa
    has none. docs/schema.md ("The estimate") has the formulas.
    """
    result: dict[str, object] = dict.fromkeys(ESTIMATE_COLUMNS)
    column = REFERENCE_COLUMN.get(profit.reference)
    if column is None:
        raise ValueError(f"unknown profit reference {profit.reference!r}")
    sale = _int_or_none(columns.get(column))
    if sale is None or sale <= 0:
        return result
    result["expected_sale_cents"] = sale
    fees = _fees(columns, sale, profit)
    result["fees_cents"] = fees
    buy = buy_price_cents(columns, buy_cost_cents, price_type, profit.buy_shipping_cents)
    result["buy_price_cents"] = buy
    all_in = None if buy is None else _all_in(columns, buy, profit)
    result["all_in_cost_cents"] = all_in
    if fees is None or all_in is None:
        return result
    profit_cents = sale - all_in - fees
    result["profit_cents"] = profit_cents
    result["margin_pct"] = _pct(profit_cents, sale)
    result["roi_pct"] = _pct(profit_cents, all_in) if all_in > 0 else None
    return result


def _fees(columns: Mapping[str, object], sale: int, profit: ProfitSettings) -> int | None:
    """Referral (at least the per-item minimum) + FBA + closing fee + extra cost."""
    pct = _float_or_none(columns.get("referral_fee_pct"))
    if pct is None:
        pct = profit.referral_fee_pct
    fba = _int_or_none(columns.get("fba_fee_cents"))
    if fba is None:
        fba = profit.fba_fee_cents
    referral = max(round(sale * pct / 100), profit.referral_fee_min_cents)
    closing = 0
    if profit.closing_fee_cents:
        category = _int_or_none(columns.get("root_category"))
        if category is None:
            return None  # a media product would pay it: unknown, not zero
        if category in profit.closing_fee_categories:
            closing = profit.closing_fee_cents
    return referral + fba + closing + profit.extra_cost_cents


def _all_in(columns: Mapping[str, object], buy: int, profit: ProfitSettings) -> int | None:
    """Buy price with shipping + prep + inbound shipping to Amazon by package weight."""
    inbound = 0
    if profit.inbound_cents_per_lb:
        grams = _int_or_none(columns.get("package_weight_g"))
        if grams is None or grams <= 0:
            return None
        inbound = round(profit.inbound_cents_per_lb * grams / GRAMS_PER_LB)
    return buy + profit.prep_cents + inbound
