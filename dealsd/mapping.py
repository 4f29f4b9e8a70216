"""Keepa objects to column values: the one mapping, pure and typed.

Every column dealsd derives from Keepa data is named here once, next to the
function that computes it (docs/field-notes.md #8: the old refresh path read rows
by display names while rows used column names, and profit silently became 0).
The full backfill and the stats-only refresh both call ``product_columns``, so
they cannot disagree about a name or a unit.

Keepa's sentinels (-1 no data, -2 not available) and every other negative
price or count become ``None`` (NULL) here and nowhere else: a sentinel must
never reach a column as if it were a price.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from dealsd.clock import iso_utc, keepa_minutes_to_epoch
from dealsd.keepa.payloads import (
    AMAZON,
    BUY_BOX_SHIPPING,
    COUNT_NEW,
    COUNT_USED,
    IMAGE_BASE_URL,
    NEW,
    ROOT_CATEGORY_UNKNOWN,
    SALES,
    USED,
    Deal,
    Product,
    Stats,
)

Value = int | float | str | None


def _non_negative(value: int | None) -> int | None:
    """A price, rank or count as Keepa sends it; None for -1, -2 and any negative."""
    if value is None or value < 0:
        return None
    return value


def _at(values: Sequence[int] | None, index: int) -> int | None:
    """values[index] with sentinels as None; short or missing arrays are no data."""
    if values is None or index >= len(values):
        return None
    return _non_negative(values[index])


@dataclass(frozen=True, slots=True)
class Column:
    """One stats-derived column: its name and how it is read from a product."""

    name: str
    get: Callable[[Product], Value]


def _stats_array(read: Callable[[Stats], list[int]], index: int) -> Callable[[Product], Value]:
    def get(product: Product) -> Value:
        return None if product.stats is None else _at(read(product.stats), index)

    return get


def _stats_scalar(read: Callable[[Stats], int | None]) -> Callable[[Product], Value]:
    def get(product: Product) -> Value:
        return None if product.stats is None else _non_negative(read(product.stats))

    return get


def _fba_fee(product: Product) -> Value:
    fees = product.fba_fees
    return None if fees is None else _non_negative(fees.pick_and_pack_fee)


def _referral_pct(product: Product) -> Value:
    pct = product.referral_fee_percentage
    # Keepa has no sentinel documented for this float; a negative one is no data.
    return None if pct is None or pct < 0 else float(pct)


_AVG_FIELDS: tuple[tuple[str, Callable[[Stats], list[int]]], ...] = (
    ("avg30", lambda s: s.avg30),
    ("avg90", lambda s: s.avg90),
    ("avg180", lambda s: s.avg180),
    ("avg365", lambda s: s.avg365),
)

# The table. Column names match the `products` stats columns of the schema.
PRODUCT_MAP: tuple[Column, ...] = (
    *(Column(f"{name}_new_cents", _stats_array(read, NEW)) for name, read in _AVG_FIELDS),
    *(Column(f"{name}_used_cents", _stats_array(read, USED)) for name, read in _AVG_FIELDS),
    Column("avg90_amazon_cents", _stats_array(lambda s: s.avg90, AMAZON)),
    Column("avg90_buy_box_cents", _stats_array(lambda s: s.avg90, BUY_BOX_SHIPPING)),
    Column("avg90_sales_rank", _stats_array(lambda s: s.avg90, SALES)),
    Column("sales_rank_drops_30", _stats_scalar(lambda s: s.sales_rank_drops30)),
    Column("sales_rank_drops_90", _stats_scalar(lambda s: s.sales_rank_drops90)),
    Column("sales_rank_drops_180", _stats_scalar(lambda s: s.sales_rank_drops180)),
    Column("sales_rank_drops_365", _stats_scalar(lambda s: s.sales_rank_drops365)),
    Column("offer_count_new", _stats_array(lambda s: s.current, COUNT_NEW)),
    Column("offer_count_used", _stats_array(lambda s: s.current, COUNT_USED)),
    Column("buy_box_cents", _stats_scalar(lambda s: s.buy_box_price)),
    Column("fba_fee_cents", _fba_fee),
    Column("referral_fee_pct", _referral_pct),
)
PRODUCT_COLUMNS: tuple[str, ...] = tuple(c.name for c in PRODUCT_MAP)

DEAL_COLUMNS: tuple[str, ...] = (
    "asin",
    "domain_id",
    "title",
    "image_url",
    "root_category",
    "current_amazon_cents",
    "current_new_cents",
    "current_used_cents",
    "current_sales_rank",
    "keepa_last_update",
    "deal_json",
    "last_seen_at",
)

# The deal's current-price column for each selection price type.
CURRENT_PRICE_COLUMN: Mapping[int, str] = {
    AMAZON: "current_amazon_cents",
    NEW: "current_new_cents",
    USED: "current_used_cents",
}

ESTIMATE_COLUMNS: tuple[str, ...] = ("expected_sale_cents", "profit_cents", "margin_pct")

# `[profit] reference` -> the avg90 column that prices a resale.
REFERENCE_COLUMN: Mapping[str, str] = {
    "used": "avg90_used_cents",
    "new": "avg90_new_cents",
    "buy_box": "avg90_buy_box_cents",
    "amazon": "avg90_amazon_cents",
}


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


def image_url(image: Sequence[int] | None) -> str | None:
    """The image URL from Keepa's array of ASCII codes; None if absent or not a file name."""
    if not image:
        return None
    try:
        name = bytes(image).decode("ascii")
    except (ValueError, UnicodeDecodeError):
        return None
    # A lying payload must not turn into a URL pointing elsewhere or a broken one.
    if not name.isprintable() or "/" in name or any(c.isspace() for c in name):
        return None
    return IMAGE_BASE_URL + name


def root_category(value: int | None) -> int | None:
    if value is None or value in ROOT_CATEGORY_UNKNOWN or value < 0:
        return None
    return value


def keepa_time_iso(minutes: int | None) -> str | None:
    epoch = None if minutes is None else keepa_minutes_to_epoch(minutes)
    return None if epoch is None else iso_utc(epoch)


def deal_row(deal: Deal, raw: bytes, *, domain_id: int, seen_at: str) -> dict[str, object]:
    """The `deals` row for one decoded deal; ``raw`` is the object exactly as sent."""
    title = deal.title.strip() if deal.title is not None else None
    row: dict[str, object] = {
        "asin": deal.asin,
        "domain_id": domain_id,
        # Kept as sent (HTML entities included): unescaping is the display's job.
        "title": title or None,
        "image_url": image_url(deal.image),
        "root_category": root_category(deal.root_cat),
        "current_amazon_cents": _at(deal.current, AMAZON),
        "current_new_cents": _at(deal.current, NEW),
        "current_used_cents": _at(deal.current, USED),
        "current_sales_rank": _at(deal.current, SALES),
        "keepa_last_update": keepa_time_iso(deal.last_update),
        "deal_json": raw.decode("utf-8", errors="replace"),
        "last_seen_at": seen_at,
    }
    return row


def product_columns(product: Product) -> dict[str, object]:
    """The stats and fee columns of one product (backfill and refresh alike)."""
    return {column.name: column.get(product) for column in PRODUCT_MAP}


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
    if price_type not in CURRENT_PRICE_COLUMN:
        return None
    return _at(row, price_type)


def _int_or_none(value: object) -> int | None:
    # bool is an int subclass; a True price would be a bug upstream, not 1 cent.
    if isinstance(value, bool) or not isinstance(value, int):
        return None
    return value


def _float_or_none(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def estimate(
    columns: Mapping[str, object],
    *,
    buy_cost_cents: int | None,
    profit: ProfitSettings,
) -> dict[str, object]:
    """Expected resale price, profit and margin from the product columns.

    Each output is None when one of its own inputs is None: the sale price
    needs the reference average; profit and margin also need the buy cost.
    A sale price of 0 or less prices nothing, so all three are None then.
    The product's own referral percentage and FBA fee win over the config's
    defaults, which only fill in when Keepa has none.
    """
    result: dict[str, object] = dict.fromkeys(ESTIMATE_COLUMNS)
    column = REFERENCE_COLUMN.get(profit.reference)
    if column is None:
        raise ValueError(f"unknown profit reference {profit.reference!r}")
    sale = _int_or_none(columns.get(column))
    if sale is None or sale <= 0:
        return result
    result["expected_sale_cents"] = sale
    if buy_cost_cents is None or buy_cost_cents < 0:
        return result
    pct = _float_or_none(columns.get("referral_fee_pct"))
    if pct is None:
        pct = profit.referral_fee_pct
    fba = _int_or_none(columns.get("fba_fee_cents"))
    if fba is None:
        fba = profit.fba_fee_cents
    fees = round(sale * pct / 100) + fba + profit.extra_cost_cents
    profit_cents = sale - buy_cost_cents - fees
    result["profit_cents"] = profit_cents
    result["margin_pct"] = round(profit_cents / sale * 100, 2)
    return result


# Price types whose csv history is [time, price, shipping] triples (docs/keepa.md).
SHIPPING_TRIPLE_TYPES = frozenset({7, *range(18, 30), 32})


def history_points(
    csv: Sequence[Sequence[int] | None] | None, price_type: int
) -> list[tuple[float, int | None]]:
    """One csv history as (epoch seconds, value) points; None where Keepa has no data.

    Keepa's arrays are flat ``[keepaMinute, value, ...]`` pairs, or triples
    ``[keepaMinute, price, shipping, ...]`` for the shipping types, whose value
    is the price plus shipping. A negative value (-1 no data, -2 not
    available) starts a gap; it is kept as None so a chart can end the line
    there instead of drawing through it. Points with an unusable time are dropped.
    """
    values = csv[price_type] if csv is not None and price_type < len(csv) else None
    if not values:
        return []
    stride = 3 if price_type in SHIPPING_TRIPLE_TYPES else 2
    points: list[tuple[float, int | None]] = []
    for i in range(0, len(values) - stride + 1, stride):
        epoch = keepa_minutes_to_epoch(values[i])
        if epoch is None:
            continue
        value = _non_negative(values[i + 1])
        if value is not None and stride == 3:
            value += _non_negative(values[i + 2]) or 0
        points.append((epoch, value))
    return points
