"""Alert rules: which deals are worth a message, decided from the stored row.

A rule is the config's ``[[alerts.rule]]``: every threshold it gives must
pass, and one whose input is unknown (NULL) does not pass: a deal with no
sales rank never matches ``max_sales_rank``. Only a backfilled deal, whose
full estimate exists, can match (the screen alone is not a reason to buy).
Pure: the outbox calls it inside the write that changed the deal.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from dealsd import estimate
from dealsd.config import AlertRuleConfig

# The columns a rule and a message read, in one place (the deals view and the
# message use the same names).
FACT_COLUMNS = (
    "asin",
    "domain_id",
    "title",
    "root_category",
    "current_amazon_cents",
    "current_new_cents",
    "current_used_cents",
    "current_sales_rank",
    "sales_rank_drops_30",
    "monthly_sold",
    "est_sales_per_month",
    "buy_price_cents",
    "all_in_cost_cents",
    "expected_sale_cents",
    "profit_cents",
    "margin_pct",
    "roi_pct",
    "backfilled_at",
)


@dataclass(frozen=True, slots=True)
class DealFacts:
    """What a rule and a message know of one deal (None: Keepa gave nothing)."""

    asin: str
    domain_id: int
    title: str | None
    category: int | None
    buy_cents: int | None  # what the operator pays, shipping included
    all_in_cost_cents: int | None  # buy + prep + inbound
    expected_sale_cents: int | None
    profit_cents: int | None
    roi_pct: float | None
    margin_pct: float | None
    sales_rank: int | None
    rank_drops_30: int | None
    monthly_sold: int | None  # Keepa's monthlySold, else the estimate from rank drops
    backfilled: bool


def _int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _num(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def facts(row: Mapping[str, object], *, price_type: int) -> DealFacts:
    """A ``deals`` row (``FACT_COLUMNS``) as the facts rules compare.

    The buy price is the estimate's (shipping included) where the backfill
    made one, else the deal's current price for the selection's price type;
    ROI is the estimate's (profit over the all-in cost).
    """
    buy = _int(row.get("buy_price_cents"))
    if buy is None:
        buy = estimate.buy_cost_cents(row, price_type)
    sold = _int(row.get("monthly_sold"))
    if sold is None:
        sold = _int(row.get("est_sales_per_month"))
    title = row.get("title")
    return DealFacts(
        asin=str(row["asin"]),
        domain_id=int(str(row["domain_id"])),
        title=title if isinstance(title, str) else None,
        category=_int(row.get("root_category")),
        buy_cents=buy,
        all_in_cost_cents=_int(row.get("all_in_cost_cents")),
        expected_sale_cents=_int(row.get("expected_sale_cents")),
        profit_cents=_int(row.get("profit_cents")),
        roi_pct=_num(row.get("roi_pct")),
        margin_pct=_num(row.get("margin_pct")),
        sales_rank=_int(row.get("current_sales_rank")),
        rank_drops_30=_int(row.get("sales_rank_drops_30")),
        monthly_sold=sold,
        backfilled=row.get("backfilled_at") is not None,
    )


def _at_least(value: float | None, bound: float | None) -> bool:
    return bound is None or (value is not None and value >= bound)


def _at_most(value: float | None, bound: float | None) -> bool:
    return bound is None or (value is not None and value <= bound)


def matches(rule: AlertRuleConfig, deal: DealFacts, *, selections: Sequence[str]) -> bool:
    """True when ``deal`` passes every threshold ``rule`` sets."""
    if not deal.backfilled or deal.profit_cents is None:
        return False
    # A rule naming no selection watches them all (with one selection, the
    # same as naming "default"); ``selections`` are those that matched the deal.
    if rule.selections and not any(s in selections for s in rule.selections):
        return False
    if rule.categories and deal.category not in rule.categories:
        return False
    return (
        _at_least(deal.profit_cents, rule.min_profit_cents)
        and _at_least(deal.roi_pct, rule.min_roi_pct)
        and _at_least(deal.margin_pct, rule.min_margin_pct)
        and _at_most(deal.sales_rank, rule.max_sales_rank)
        and _at_least(deal.monthly_sold, rule.min_monthly_sold)
        and _at_least(deal.rank_drops_30, rule.min_rank_drops_30)
        and _at_most(deal.buy_cents, rule.max_buy_cents)
    )
