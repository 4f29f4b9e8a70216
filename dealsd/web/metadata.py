"""Datasette metadata for a dealsd database: titles, column help, canned queries.

The deals queries select from ``deals.view_sql``, the view of `dealsd deals`,
so the web view and the terminal show the same columns under the same
names (and follow the schema v2 switch together). Money is shown in
currency units there (whole yen for JPY, dealsd.marketplaces); the tables
themselves keep the stored integers: cents, or yen.
"""

from __future__ import annotations

from typing import Any

from dealsd.deals import DEFAULT_SORT, FIELDS, SORTS, view_sql
from dealsd.marketplaces import SQL_PER_UNIT

DATABASE = "dealsd"  # the name the database is served under: /dealsd/deals/...
MIN_SALES_PER_MONTH = 5
FIELD_SQL = {f.key: f.sql for f in FIELDS}
SINCE_HOUR = "strftime('%Y-%m-%dT%H:%M:%SZ', 'now', '-1 hour')"

DEAL_COLUMNS: dict[str, str] = {
    "asin": "Amazon product id",
    "domain_id": "Keepa marketplace (1 = amazon.com, 3 = .de, ...)",
    "title": "Product title as Keepa sent it",
    "root_category": "Amazon root category id",
    "current_amazon_cents": "Price sold by Amazon now, cents; blank: Amazon does not offer it",
    "current_new_cents": "Lowest new price now, cents; blank: no offer",
    "current_used_cents": "Lowest used price now, cents; blank: no offer",
    "current_sales_rank": "Sales rank now (lower sells more)",
    "keepa_last_update": "When Keepa last updated this deal (UTC)",
    "first_seen_at": "When dealsd first stored this deal (UTC)",
    "last_seen_at": "When the deal was last in Keepa's deal feed (UTC)",
    "backfilled_at": "When the history and stats were fetched; blank: not yet",
    "sales_rank_drops_30": "Sales rank drops in 30 days",
    "monthly_sold": "Amazon's 'bought in past month' (a floor: 100, 1000, ...); blank: none",
    "est_sales_per_month": "Estimated sales a month, from the sales rank drops",
    "expected_sale_cents": "dealsd's resale price estimate, cents",
    "buy_price_cents": "What buying costs, shipping included, cents",
    "all_in_cost_cents": "Buy price plus prep and inbound shipping, cents",
    "fees_cents": "Referral, FBA and closing fees plus the extra cost, cents",
    "profit_cents": "Estimated profit: sale minus all-in cost minus fees, cents (may be negative)",
    "margin_pct": "Profit as a percent of the expected sale",
    "roi_pct": "Profit as a percent of the all-in cost",
    "backfill_attempts": "Failed backfill attempts so far",
    "backfill_error": "Why the last backfill attempt failed",
    "currency": "The money columns' currency (ISO 4217); JPY amounts are whole yen",
}


def _deals_select() -> str:
    """The view's columns, money in currency units, from the view's subquery."""
    cols = ", ".join(
        f"ROUND({f.key} * 1.0 / {SQL_PER_UNIT}, 2) AS {f.key}" if f.kind == "cents" else f.key
        for f in FIELDS
    )
    return f"SELECT {cols} FROM ({view_sql()})"


def canned_queries() -> dict[str, dict[str, Any]]:
    deals = _deals_select()
    return {
        "best_by_roi": {
            "title": "Best deals by ROI, with enough sales per month",
            "description": (
                "Deals with an ROI, selling at least min_sales_per_month a month "
                "(Amazon's bought-in-past-month, else the estimate from rank drops; "
                f"default {MIN_SALES_PER_MONTH}), best ROI first."
            ),
            "sql": (
                f"{deals} WHERE roi_pct IS NOT NULL AND sales_per_month >= "
                f"CAST(COALESCE(NULLIF(:min_sales_per_month, ''), {MIN_SALES_PER_MONTH}) "
                "AS INTEGER) ORDER BY roi_pct DESC, asin, domain_id LIMIT 200"
            ),
        },
        "new_last_hour": {
            "title": "New in the last hour",
            "description": "Deals dealsd first stored in the last hour, newest first.",
            "sql": f"{deals} WHERE first_seen_at >= {SINCE_HOUR} ORDER BY first_seen_at DESC",
        },
        "backfill_queue": {
            "title": "The backfill queue",
            "description": (
                "Deals whose history is not fetched yet, newest Keepa update first "
                "(the backfiller's order); 'gave up' ones failed too often."
            ),
            "sql": (
                "SELECT asin, title, keepa_last_update, first_seen_at, backfill_attempts, "
                "backfill_retry_at, backfill_error, CASE WHEN backfill_attempts > 0 AND "
                "backfill_retry_at IS NULL THEN 'gave up' WHEN backfill_attempts > 0 "
                "THEN 'retrying' ELSE 'queued' END AS state FROM deals "
                "WHERE backfilled_at IS NULL ORDER BY keepa_last_update DESC"
            ),
        },
        "tokens_per_day": {
            "title": "Keepa tokens per day",
            "description": "Tokens spent per UTC day, consumer and endpoint (7 days are kept).",
            "sql": (
                "SELECT substr(at, 1, 10) AS day, consumer, endpoint, count(*) AS requests, "
                "sum(items) AS items, sum(tokens) AS tokens FROM token_ledger "
                "GROUP BY day, consumer, endpoint ORDER BY day DESC, tokens DESC"
            ),
        },
    }


def metadata() -> dict[str, Any]:
    """The whole metadata document Datasette is started with."""
    return {
        "title": "dealsd",
        "description": (
            "The deals dealsd found, read-only beside the running daemon. "
            "Money in the tables is in cents of the row's `currency` (whole yen for JPY, "
            "which has no cents); NULL (blank) means unknown, never 0."
        ),
        "databases": {
            DATABASE: {
                "tables": {
                    "deals": {
                        "title": "Deals",
                        "description": "One row per product on deal; open a row for its "
                        "price history chart and the Amazon and Keepa links.",
                        "label_column": "title",
                        # The column `dealsd deals` sorts by default, from its table.
                        "sort_desc": FIELD_SQL[SORTS[DEFAULT_SORT][0]],
                        "columns": DEAL_COLUMNS,
                    },
                    "product_history": {
                        "title": "Product histories",
                        "description": "The full Keepa product as fetched (zlib-compressed "
                        "JSON); charted on each deal's page.",
                        "columns": {
                            "payload": "Keepa's product JSON, zlib-compressed",
                            "tokens_spent": "Keepa tokens this product cost",
                        },
                    },
                    "token_ledger": {
                        "title": "Token ledger",
                        "description": "One row per paid Keepa request (7 days kept).",
                        "sort_desc": "at",
                    },
                    "workers": {"title": "Workers", "description": "What each worker is doing."},
                    "daemon": {"title": "Daemon", "description": "The daemon's heartbeat row."},
                    "checkpoints": {
                        "title": "Checkpoints",
                        "description": "Where the upserter resumes (internal).",
                    },
                },
                "queries": canned_queries(),
            }
        },
    }
