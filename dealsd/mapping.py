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

import msgspec

from dealsd import estimate as profit_estimate
from dealsd.keepa.payloads import (
    AMAZON,
    BUY_BOX_SHIPPING,
    BUY_BOX_USED_SHIPPING,
    COUNT_NEW,
    COUNT_NEW_FBA,
    COUNT_NEW_FBM,
    COUNT_USED,
    IMAGE_BASE_URL,
    NEW,
    NEW_FBA,
    NEW_FBM_SHIPPING,
    ROOT_CATEGORY_UNKNOWN,
    SALES,
    USED,
    USED_ACCEPTABLE_SHIPPING,
    USED_GOOD_SHIPPING,
    USED_NEW_SHIPPING,
    USED_VERY_GOOD_SHIPPING,
    Deal,
    Product,
    Stats,
)
from dealsd.marketplaces import currency
from dealsd.store.schema import DEAL_COLUMNS as DEAL_COLUMNS
from dealsd.timefmt import iso_utc, keepa_minutes_to_epoch

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


def _lowest(read: Callable[[Stats], list[int]], *types: int) -> Callable[[Product], Value]:
    """The lowest known value among ``types`` of one stats array; None if none is known."""

    def get(product: Product) -> Value:
        if product.stats is None:
            return None
        known = [v for t in types if (v := _at(read(product.stats), t)) is not None]
        return min(known) if known else None

    return get


def _positive(read: Callable[[Product], int | None]) -> Callable[[Product], Value]:
    """A product fact where Keepa's 0 and -1 both mean unknown (weight, monthlySold)."""

    def get(product: Product) -> Value:
        value = read(product)
        return value if value is not None and value > 0 else None

    return get


def _amazon_offering(product: Product) -> Value:
    # stats.current[AMAZON]: a price when Amazon offers it now, -1 when it does not.
    if product.stats is None:
        return None
    value = _at(product.stats.current, AMAZON)
    if value is not None:
        return 1
    current = product.stats.current
    return 0 if len(current) > AMAZON and current[AMAZON] == -1 else None


def est_sales_per_month(drops30: object, drops90: object, drops180: object) -> int | None:
    """Sales a month from Keepa's sales rank drops (docs/schema.md, "Sales speed").

    The 90-day count over 3 months, else the 30-day count, else the 180-day
    count over 6; halves round up. Each drop is at least one sale, so this is
    a floor for fast sellers (two sales between Keepa's rank updates are one drop).
    """
    for drops, months in ((drops90, 3), (drops30, 1), (drops180, 6)):
        if isinstance(drops, int) and not isinstance(drops, bool) and drops >= 0:
            return (2 * drops + months) // (2 * months)
    return None


def _est_sales(product: Product) -> Value:
    s = product.stats
    if s is None:
        return None
    return est_sales_per_month(
        s.sales_rank_drops30, s.sales_rank_drops90, s.sales_rank_drops180
    )


def keepa_date(value: int | None) -> str | None:
    """Keepa's YYYY, YYYYMM or YYYYMMDD integer as ISO text (``1978``, ``2003-01``,
    ``2015-04-09``); None for 0, -1 or anything else."""
    if value is None or value <= 0:
        return None
    text = str(value)
    parts = {4: (text,), 6: (text[:4], text[4:]), 8: (text[:4], text[4:6], text[6:])}.get(
        len(text)
    )
    if parts is None or (len(parts) > 1 and not 1 <= int(parts[1]) <= 12):
        return None
    if len(parts) == 3 and not 1 <= int(parts[2]) <= 31:
        return None
    return "-".join(parts)


def _binding(product: Product) -> Value:
    text = product.binding.strip() if product.binding is not None else ""
    return text or None


_AVG_FIELDS: tuple[tuple[str, Callable[[Stats], list[int]]], ...] = (
    ("avg30", lambda s: s.avg30),
    ("avg90", lambda s: s.avg90),
    ("avg180", lambda s: s.avg180),
    ("avg365", lambda s: s.avg365),
)


def _current(s: Stats) -> list[int]:
    return s.current


def _avg90(s: Stats) -> list[int]:
    return s.avg90


# Shipping-inclusive price types ([t, price, shipping] triples in csv; the
# stats arrays hold price + shipping): column stem -> Keepa price type.
SHIPPING_TYPES: tuple[tuple[str, int], ...] = (
    ("used_like_new", USED_NEW_SHIPPING),
    ("used_very_good", USED_VERY_GOOD_SHIPPING),
    ("used_good", USED_GOOD_SHIPPING),
    ("used_acceptable", USED_ACCEPTABLE_SHIPPING),
    ("used_buy_box", BUY_BOX_USED_SHIPPING),
    ("new_fbm", NEW_FBM_SHIPPING),
)
_USED_BY_CONDITION = (
    USED_NEW_SHIPPING, USED_VERY_GOOD_SHIPPING, USED_GOOD_SHIPPING, USED_ACCEPTABLE_SHIPPING,
)  # fmt: skip

# The table. Column names match the `deals` stats columns of the schema.
PRODUCT_MAP: tuple[Column, ...] = (
    *(Column(f"{name}_new_cents", _stats_array(read, NEW)) for name, read in _AVG_FIELDS),
    *(Column(f"{name}_used_cents", _stats_array(read, USED)) for name, read in _AVG_FIELDS),
    Column("avg90_amazon_cents", _stats_array(_avg90, AMAZON)),
    Column("avg90_buy_box_cents", _stats_array(_avg90, BUY_BOX_SHIPPING)),
    Column("avg90_sales_rank", _stats_array(_avg90, SALES)),
    Column("sales_rank_drops_30", _stats_scalar(lambda s: s.sales_rank_drops30)),
    Column("sales_rank_drops_90", _stats_scalar(lambda s: s.sales_rank_drops90)),
    Column("sales_rank_drops_180", _stats_scalar(lambda s: s.sales_rank_drops180)),
    Column("sales_rank_drops_365", _stats_scalar(lambda s: s.sales_rank_drops365)),
    Column("offer_count_new", _stats_array(_current, COUNT_NEW)),
    Column("offer_count_used", _stats_array(_current, COUNT_USED)),
    Column("buy_box_cents", _stats_scalar(lambda s: s.buy_box_price)),
    Column("fba_fee_cents", _fba_fee),
    Column("referral_fee_pct", _referral_pct),
    # schema v2
    *(
        Column(f"{when}_{stem}_shipping_cents", _stats_array(read, t))
        for stem, t in SHIPPING_TYPES
        for when, read in (("current", _current), ("avg90", _avg90))
    ),
    Column("current_used_shipping_cents", _lowest(_current, *_USED_BY_CONDITION)),
    Column("current_new_shipping_cents", _lowest(_current, NEW_FBM_SHIPPING, NEW_FBA)),
    Column("buy_box_shipping_cents", _stats_array(_current, BUY_BOX_SHIPPING)),
    Column("monthly_sold", _positive(lambda p: p.monthly_sold)),
    Column("avg30_sales_rank", _stats_array(lambda s: s.avg30, SALES)),
    Column("avg180_sales_rank", _stats_array(lambda s: s.avg180, SALES)),
    Column("est_sales_per_month", _est_sales),
    Column("offer_count_new_fba", _stats_array(_current, COUNT_NEW_FBA)),
    Column("offer_count_new_fbm", _stats_array(_current, COUNT_NEW_FBM)),
    Column("avg90_offer_count_used", _stats_array(_avg90, COUNT_USED)),
    Column("amazon_oos_pct_90", _stats_array(lambda s: s.out_of_stock_percentage90, AMAZON)),
    Column("amazon_offering", _amazon_offering),
    Column("package_weight_g", _positive(lambda p: p.package_weight)),
    Column("binding", _binding),
    Column("publication_date", lambda p: keepa_date(p.publication_date)),
    Column("release_date", lambda p: keepa_date(p.release_date)),
)
PRODUCT_COLUMNS: tuple[str, ...] = tuple(c.name for c in PRODUCT_MAP)

# The paid /product parameter whose data each column comes from (docs/keepa.md):
# buy box data comes with `buybox=1` or `offers`; shipping-inclusive offer
# prices by condition (isExtraData in Keepa's Java client) only with `offers`.
BUY_BOX_COLUMNS: tuple[str, ...] = (
    "buy_box_cents", "avg90_buy_box_cents", "buy_box_shipping_cents",
    "current_used_buy_box_shipping_cents", "avg90_used_buy_box_shipping_cents",
)  # fmt: skip
OFFERS_COLUMNS: tuple[str, ...] = (
    *(
        f"{when}_{stem}_shipping_cents"
        for stem, _ in SHIPPING_TYPES
        if stem != "used_buy_box"
        for when in ("current", "avg90")
    ),
    "current_used_shipping_cents",
    "current_new_shipping_cents",
)


def unfetched_columns(*, offers: bool, buybox: bool) -> frozenset[str]:
    """The product columns whose Keepa data these parameters do not ask for."""
    out: set[str] = set()
    if not offers:
        out.update(OFFERS_COLUMNS)
        if not buybox:
            out.update(BUY_BOX_COLUMNS)
    return frozenset(out)


# `[profit] reference` -> the price type whose 90-day average the deal object
# carries in avg[3][type] (the screen's resale price, like REFERENCE_COLUMN's).
REFERENCE_PRICE_TYPE: Mapping[str, int] = {
    "used": USED,
    "new": NEW,
    "buy_box": BUY_BOX_SHIPPING,
    "used_buy_box": BUY_BOX_USED_SHIPPING,
    "amazon": AMAZON,
}
DEAL_AVG_90_DAYS = 3  # the deal's dateRange index of its 90-day averages
SCREEN_COLUMNS: tuple[str, ...] = ("screen_profit_cents", "screen_roi_pct")


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


def deal_row(
    deal: Deal,
    raw: bytes,
    *,
    domain_id: int,
    seen_at: str,
    price_type: int | None = None,
    profit: profit_estimate.ProfitSettings | None = None,
) -> dict[str, object]:
    """The `deals` row for one decoded deal; ``raw`` is the object exactly as sent.

    With the selection's ``price_type`` and the ``profit`` settings the row
    carries the deal's screen (``screen``); without, the screen is None.
    """
    title = deal.title.strip() if deal.title is not None else None
    row: dict[str, object] = {
        "asin": deal.asin,
        "domain_id": domain_id,
        "currency": currency(domain_id),
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
        **dict.fromkeys(SCREEN_COLUMNS),
    }
    if price_type is not None and profit is not None:
        row.update(screen(deal, price_type=price_type, profit=profit))
    return row


def _deal_avg90(raw: msgspec.Raw, price_type: int) -> int | None:
    """avg[3][price_type] of a deal as sent, or None when absent or not a number."""
    try:
        avg = msgspec.json.decode(raw)
    except msgspec.DecodeError:
        return None
    if not isinstance(avg, list) or len(avg) <= DEAL_AVG_90_DAYS:
        return None
    row = avg[DEAL_AVG_90_DAYS]
    if not isinstance(row, list) or price_type >= len(row):
        return None
    value = row[price_type]
    # bool is an int subclass, and JSON true is no price.
    return _non_negative(value) if type(value) is int else None


def screen(
    deal: Deal, *, price_type: int, profit: profit_estimate.ProfitSettings
) -> dict[str, object]:
    """The screen: ``estimate`` run on what the deal object alone says, before paying.

    The resale price is the deal's 90-day average (``avg[3]``) of the
    reference's price type, the buy price its ``current``; fees the product
    would give (referral percentage, FBA fee, weight) are unknown, so the
    config's defaults stand in, exactly as in the full estimate of a product
    without them. The same function makes both, so they cannot disagree about
    a fee. None where the estimate is None.
    """
    reference_type = REFERENCE_PRICE_TYPE.get(profit.reference)
    if reference_type is None:
        raise ValueError(f"unknown profit reference {profit.reference!r}")
    columns: dict[str, object] = {
        profit_estimate.REFERENCE_COLUMN[profit.reference]: _deal_avg90(deal.avg, reference_type),
        "root_category": root_category(deal.root_cat),
    }
    result = profit_estimate.estimate(
        columns,
        buy_cost_cents=profit_estimate.buy_cost_cents(deal.current, price_type),
        price_type=price_type,
        profit=profit,
    )
    return {"screen_profit_cents": result["profit_cents"], "screen_roi_pct": result["roi_pct"]}


def product_columns(product: Product) -> dict[str, object]:
    """The stats and fee columns of one product (backfill and refresh alike)."""
    return {column.name: column.get(product) for column in PRODUCT_MAP}


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
