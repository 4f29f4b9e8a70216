"""The Keepa-to-column mapping, against real payloads.

Expected values were read by hand from dealsd/samples/*.json (and
from the deal objects written below), never computed by the code under test.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from helpers import sample_bytes

from dealsd import estimate as est
from dealsd import mapping, marketplaces
from dealsd.keepa.payloads import Product, decode_deals, decode_products


def _product(asin: str) -> Product:
    body = sample_bytes(asin)
    decoded = decode_products(body)
    assert decoded.skipped == []
    [item] = decoded.items
    return item.value


@dataclass(frozen=True)
class Profit:
    reference: str = "new"
    referral_fee_pct: float = 15.0
    fba_fee_cents: int = 0
    extra_cost_cents: int = 0
    # schema v2's costs, all off here: the tests below are about the v1 parts.
    buy_shipping_cents: int = 0
    prep_cents: int = 0
    inbound_cents_per_lb: int = 0
    referral_fee_min_cents: int = 0
    closing_fee_cents: int = 0
    closing_fee_categories: tuple[int, ...] = ()


USED, NEW, AMAZON = 2, 1, 0


def _est(**values: object) -> dict[str, object]:
    """An estimate result: every estimate column, None unless given."""
    return {**dict.fromkeys(est.ESTIMATE_COLUMNS), **values}


# The schema v2 columns with no data in either sample (the shipping-inclusive
# offer prices need `offers`; both samples were recorded without them).
_NO_OFFER_DATA = {
    f"{when}_{stem}_shipping_cents": None
    for stem in ("used_like_new", "used_very_good", "used_good", "used_acceptable",
                 "used_buy_box", "new_fbm")
    for when in ("current", "avg90")
} | {"current_used_shipping_cents": None, "current_new_shipping_cents": None}


# ---------------------------------------------------------------- products


def test_product_columns_b0d8w1yvbx_read_by_hand() -> None:
    cols = mapping.product_columns(_product("B0D8W1YVBX"))
    assert cols == {
        "avg30_new_cents": 1742,
        "avg90_new_cents": 1797,
        "avg180_new_cents": 1849,
        "avg365_new_cents": 1908,
        # USED is -1 in every average: no data, not a price of -1 cent.
        "avg30_used_cents": None,
        "avg90_used_cents": None,
        "avg180_used_cents": None,
        "avg365_used_cents": None,
        "avg90_amazon_cents": None,
        "avg90_buy_box_cents": 1805,
        "avg90_sales_rank": 27,
        "sales_rank_drops_30": 35,
        "sales_rank_drops_90": 75,
        "sales_rank_drops_180": 165,
        "sales_rank_drops_365": 424,
        "offer_count_new": 5,
        "offer_count_used": None,
        "buy_box_cents": 1499,
        "fba_fee_cents": 409,
        "referral_fee_pct": 15.01,
        # schema v2
        **_NO_OFFER_DATA,
        "buy_box_shipping_cents": 1499,  # stats.current[18]
        "monthly_sold": 100000,
        "avg30_sales_rank": 43,
        "avg180_sales_rank": 63,
        "est_sales_per_month": 25,  # salesRankDrops90 75 / 3
        "offer_count_new_fba": 3,  # stats.current[34]
        "offer_count_new_fbm": 2,  # stats.current[35]
        "avg90_offer_count_used": None,  # avg90[12] -1
        "amazon_oos_pct_90": 100,  # outOfStockPercentage90[0]
        "amazon_offering": 0,  # stats.current[0] -1: Amazon does not offer it
        "package_weight_g": 141,
        "binding": None,  # null in the sample
        "publication_date": None,  # 0
        "release_date": None,  # 0
    }


def test_product_columns_b0f7xpycsj_sentinels_become_null() -> None:
    cols = mapping.product_columns(_product("B0F7XPYCSJ"))
    assert cols == {
        "avg30_new_cents": 2599,
        "avg90_new_cents": 2599,
        "avg180_new_cents": 2599,
        "avg365_new_cents": 2598,
        "avg30_used_cents": None,
        "avg90_used_cents": None,
        "avg180_used_cents": None,
        "avg365_used_cents": None,
        "avg90_amazon_cents": None,
        "avg90_buy_box_cents": None,
        "avg90_sales_rank": 11253,
        "sales_rank_drops_30": 13,
        "sales_rank_drops_90": 35,
        "sales_rank_drops_180": 84,
        "sales_rank_drops_365": 99,
        "offer_count_new": 1,
        "offer_count_used": None,
        "buy_box_cents": None,  # buyBoxPrice is -2 in the sample
        "fba_fee_cents": 435,
        "referral_fee_pct": 12.0,
        # schema v2
        **_NO_OFFER_DATA,
        "buy_box_shipping_cents": None,  # current[18] -1: recorded without buybox
        "monthly_sold": 300,
        "avg30_sales_rank": 11218,
        "avg180_sales_rank": 15750,
        "est_sales_per_month": 12,  # salesRankDrops90 35 / 3 = 11.67
        "offer_count_new_fba": 1,
        "offer_count_new_fbm": None,  # current[35] -1
        "avg90_offer_count_used": None,
        "amazon_oos_pct_90": 100,
        "amazon_offering": 0,
        "package_weight_g": 235,
        "binding": None,
        "publication_date": None,
        "release_date": None,
    }


def test_product_columns_names_are_the_one_list() -> None:
    cols = mapping.product_columns(_product("B0D8W1YVBX"))
    assert tuple(cols) == mapping.PRODUCT_COLUMNS
    assert len(set(mapping.PRODUCT_COLUMNS)) == len(mapping.PRODUCT_COLUMNS)
    assert not set(mapping.PRODUCT_COLUMNS) & set(mapping.DEAL_COLUMNS)


def test_product_without_stats_or_fees_is_all_null() -> None:
    body = b'{"products": [{"asin": "B000000001", "productType": 0}]}'
    [item] = decode_products(body).items
    cols = mapping.product_columns(item.value)
    assert set(cols) == set(mapping.PRODUCT_COLUMNS)
    assert all(v is None for v in cols.values()), cols


def test_product_that_lies_short_arrays_and_odd_negatives() -> None:
    # A stats object with truncated arrays, -2 and -7 where numbers belong.
    product = {
        "asin": "B000000002",
        "fbaFees": {"pickAndPackFee": -1},
        "referralFeePercentage": -1.0,
        "stats": {
            "current": [1, 2, 3],  # no index 11/12
            "avg30": [],
            "avg90": [-2, -7, 0],  # amazon -2, new -7, used 0
            "salesRankDrops30": -2,
            "salesRankDrops90": 0,
            "buyBoxPrice": -1,
        },
    }
    [item] = decode_products(json.dumps({"products": [product]}).encode()).items
    cols = mapping.product_columns(item.value)
    assert cols["avg90_amazon_cents"] is None
    assert cols["avg90_new_cents"] is None
    assert cols["avg90_used_cents"] == 0  # zero is a value, not a sentinel
    assert cols["avg90_buy_box_cents"] is None
    assert cols["avg30_new_cents"] is None
    assert cols["offer_count_new"] is None
    assert cols["offer_count_used"] is None
    assert cols["sales_rank_drops_30"] is None
    assert cols["sales_rank_drops_90"] == 0
    assert cols["sales_rank_drops_180"] is None  # absent: the decoder's -1
    assert cols["buy_box_cents"] is None
    assert cols["fba_fee_cents"] is None
    assert cols["referral_fee_pct"] is None


def test_refresh_through_sqlite_keeps_names(tmp_path: Path) -> None:
    """docs/field-notes.md #8: a row written by column name and read back estimates the same."""
    db = sqlite3.connect(tmp_path / "m.db")
    db.row_factory = sqlite3.Row
    db.execute(
        f"CREATE TABLE products (asin TEXT PRIMARY KEY, {', '.join(mapping.PRODUCT_COLUMNS)})"
    )
    cols = mapping.product_columns(_product("B0D8W1YVBX"))
    names = ", ".join(cols)
    marks = ", ".join("?" for _ in cols)
    db.execute(f"INSERT INTO products (asin, {names}) VALUES (?, {marks})", ["X", *cols.values()])
    row = db.execute("SELECT * FROM products").fetchone()
    profit = Profit(extra_cost_cents=50)
    fresh = est.estimate(cols, buy_cost_cents=1000, price_type=NEW, profit=profit)
    again = est.estimate(dict(row), buy_cost_cents=1000, price_type=NEW, profit=profit)
    assert again == fresh
    assert fresh["profit_cents"] == 68  # not 0, not None: the refresh bug of the old system
    db.close()


# ---------------------------------------------------------------- estimate


@pytest.mark.parametrize(
    ("reference", "sale", "fees", "profit_cents", "margin", "roi"),
    [
        # 1797 * 15.01 % = 269.73 -> 270; + 409 pick-and-pack + 50 extra = 729;
        # 1797 - 1000 - 729 = 68; 68 / 1797 = 3.78 %; 68 / 1000 = 6.8 %.
        ("new", 1797, 729, 68, 3.78, 6.8),
        # 1805 * 15.01 % = 270.93 -> 271; fees 271 + 409 + 50 = 730; 75 / 1805 = 4.155 %.
        ("buy_box", 1805, 730, 75, 4.16, 7.5),
    ],
)
def test_estimate_uses_product_fees(
    reference: str, sale: int, fees: int, profit_cents: int, margin: float, roi: float
) -> None:
    cols = mapping.product_columns(_product("B0D8W1YVBX"))
    got = est.estimate(
        cols, buy_cost_cents=1000, price_type=NEW, profit=Profit(reference, 15.0, 0, 50)
    )
    assert got == _est(
        expected_sale_cents=sale, buy_price_cents=1000, all_in_cost_cents=1000,
        fees_cents=fees, profit_cents=profit_cents, margin_pct=margin, roi_pct=roi,
    )  # fmt: skip


@pytest.mark.parametrize("reference", ["used", "amazon"])
def test_estimate_reference_without_data_is_null(reference: str) -> None:
    cols = mapping.product_columns(_product("B0D8W1YVBX"))
    got = est.estimate(cols, buy_cost_cents=1000, price_type=USED, profit=Profit(reference))
    assert got == _est()


def test_estimate_config_defaults_fill_missing_fees() -> None:
    cols: dict[str, Any] = {"avg90_used_cents": 2000, "referral_fee_pct": None}
    got = est.estimate(
        cols, buy_cost_cents=1200, price_type=USED, profit=Profit("used", 15.0, 300, 0)
    )
    # 2000 * 15 % = 300 referral + 300 config FBA fee; 2000 - 1200 - 600 = 200.
    assert got == _est(
        expected_sale_cents=2000, buy_price_cents=1200, all_in_cost_cents=1200,
        fees_cents=600, profit_cents=200, margin_pct=10.0, roi_pct=16.67,
    )  # fmt: skip


def test_estimate_loss_is_negative_not_clamped() -> None:
    cols = {"avg90_amazon_cents": 1000, "referral_fee_pct": 15.0, "fba_fee_cents": 0}
    got = est.estimate(cols, buy_cost_cents=1500, price_type=AMAZON, profit=Profit("amazon"))
    # fees 150; 1000 - 1500 - 150 = -650; / 1000 = -65 %; / 1500 = -43.33 %.
    assert got == _est(
        expected_sale_cents=1000, buy_price_cents=1500, all_in_cost_cents=1500,
        fees_cents=150, profit_cents=-650, margin_pct=-65.0, roi_pct=-43.33,
    )  # fmt: skip


def test_estimate_null_buy_cost_keeps_only_the_sale() -> None:
    cols = {"avg90_new_cents": 1000}
    got = est.estimate(cols, buy_cost_cents=None, price_type=NEW, profit=Profit("new"))
    # The fees need only the sale: 1000 * 15 %.
    assert got == _est(expected_sale_cents=1000, fees_cents=150)


@pytest.mark.parametrize("sale", [0, -1, -2, None, "1000", True])
def test_estimate_no_usable_sale_is_all_null(sale: object) -> None:
    got = est.estimate(
        {"avg90_new_cents": sale}, buy_cost_cents=100, price_type=NEW, profit=Profit("new")
    )
    assert got == _est()


def test_estimate_unknown_reference_is_an_error() -> None:
    with pytest.raises(ValueError, match="lowest"):
        est.estimate({}, buy_cost_cents=1, price_type=NEW, profit=Profit("lowest"))


# ---------------------------------------------------------------- deals

IMAGE = [53, 49, 97, 98, 99, 88, 89, 90, 43, 76, 46, 106, 112, 103]  # "51abcXYZ+L.jpg"


def _deal(**fields: Any) -> dict[str, Any]:
    deal: dict[str, Any] = {
        "asin": "0316769487",
        "parentAsin": None,
        "title": "  The Catcher &amp; the Rye \n",
        "rootCat": 283155,
        "categories": [283155, 10],
        "image": IMAGE,
        "current": [-1, 2599, 1450, 123456, -1, -1, -1, -1, -1, -1, -1, 7, 12],
        "currentSince": [-1, 8075000, 8075100, 8075700],
        "lastUpdate": 8075762,
        "creationDate": 8075000,
        "warehouseCondition": 0,
    }
    deal.update(fields)
    return deal


def _rows(*deals: dict[str, Any]) -> list[dict[str, object]]:
    body = json.dumps({"deals": {"dr": list(deals)}, "tokensLeft": 5, "refillRate": 5}).encode()
    decoded = decode_deals(body)
    assert decoded.skipped == []
    return [
        mapping.deal_row(i.value, i.raw, domain_id=1, seen_at="2026-05-10T05:00:00Z")
        for i in decoded.items
    ]


def test_deal_row_full() -> None:
    [row] = _rows(_deal())
    assert tuple(row) == mapping.DEAL_COLUMNS
    deal_json = row.pop("deal_json")
    assert row == {
        "asin": "0316769487",
        "domain_id": 1,
        "currency": "USD",
        "title": "The Catcher &amp; the Rye",
        "image_url": "https://m.media-amazon.com/images/I/51abcXYZ+L.jpg",
        "root_category": 283155,
        "current_amazon_cents": None,
        "current_new_cents": 2599,
        "current_used_cents": 1450,
        "current_sales_rank": 123456,
        "keepa_last_update": "2026-05-10T04:02:00Z",  # date -u -d @1778385720
        "last_seen_at": "2026-05-10T05:00:00Z",
        # No price type and profit settings given: no screen.
        "screen_profit_cents": None,
        "screen_roi_pct": None,
    }
    assert isinstance(deal_json, str)
    assert json.loads(deal_json) == _deal()  # every field kept, even ones not mapped


@pytest.mark.parametrize("root", [0, 9223372036854775807, None])
def test_deal_unknown_root_category_is_null(root: int | None) -> None:
    [row] = _rows(_deal(rootCat=root))
    assert row["root_category"] is None


@pytest.mark.parametrize(
    "image",
    [None, [], [200, 201, 202], [300], [-1], [47, 101, 118, 105, 108], [97, 32, 98], [97, 10]],
    ids=["null", "empty", "non-ascii", "not-a-byte", "negative", "slash", "space", "newline"],
)
def test_deal_bad_or_missing_image_is_null(image: list[int] | None) -> None:
    [row] = _rows(_deal(image=image))
    assert row["image_url"] is None


def test_deal_missing_image_key_is_null() -> None:
    deal = _deal()
    del deal["image"]
    [row] = _rows(deal)
    assert row["image_url"] is None


def test_deal_sentinel_prices_and_short_current() -> None:
    a, b = _rows(
        _deal(asin="A1", current=[-1, -2, -1, -2]),
        _deal(asin="A2", current=[1999]),  # a lying, truncated array
    )
    assert [a[k] for k in est.CURRENT_PRICE_COLUMN.values()] == [None, None, None]
    assert a["current_sales_rank"] is None
    assert b["current_amazon_cents"] == 1999
    assert b["current_new_cents"] is None
    assert b["current_used_cents"] is None
    assert b["current_sales_rank"] is None


@pytest.mark.parametrize("title", [None, "", "   \n\t"])
def test_deal_blank_title_is_null(title: str | None) -> None:
    [row] = _rows(_deal(title=title))
    assert row["title"] is None


@pytest.mark.parametrize("minutes", [-1, 0])
def test_deal_never_updated_is_null(minutes: int) -> None:
    [row] = _rows(_deal(lastUpdate=minutes))
    assert row["keepa_last_update"] is None


def test_deal_json_keeps_unicode_as_sent() -> None:
    [row] = _rows(_deal(title="Café \u2013 crème"))
    assert row["title"] == "Café – crème"
    assert "crème" in json.loads(str(row["deal_json"]))["title"]


# ---------------------------------------------------------------- buy cost


def test_buy_cost_from_row_by_price_type() -> None:
    [row] = _rows(_deal())
    assert est.buy_cost_cents(row, 2) == 1450
    assert est.buy_cost_cents(row, 1) == 2599
    assert est.buy_cost_cents(row, 0) is None  # amazon -1
    assert est.buy_cost_cents(row, 3) is None  # sales rank is no price
    assert est.buy_cost_cents(row, 18) is None


def test_buy_cost_from_current_array() -> None:
    current = [-1, 2599, 1450, 123456]
    assert est.buy_cost_cents(current, 2) == 1450
    assert est.buy_cost_cents(current, 0) is None
    assert est.buy_cost_cents(current, 3) is None
    assert est.buy_cost_cents([500], 1) is None  # index missing


def test_buy_cost_from_row_read_back_with_null() -> None:
    assert est.buy_cost_cents({"current_used_cents": None}, 2) is None
    assert est.buy_cost_cents({}, 2) is None


def test_every_mapped_column_exists_in_the_schema(tmp_path: Path) -> None:
    """The names here and the `deals` table must agree (docs/field-notes.md #8): checked
    on a real database file migrated by the real schema."""
    from dealsd.store import schema

    conn = sqlite3.connect(tmp_path / "s.db", isolation_level=None)
    try:
        schema.apply_migrations(conn)
        table = {str(r[1]) for r in conn.execute("PRAGMA table_info(deals)")}
    finally:
        conn.close()
    for names in (mapping.DEAL_COLUMNS, mapping.PRODUCT_COLUMNS, est.ESTIMATE_COLUMNS):
        assert set(names) <= table, set(names) - table


def test_each_marketplace_has_its_currency_and_yen_have_no_cents() -> None:
    # Keepa's domain ids (7, amazon.cn, is closed) and ISO 4217 codes.
    assert marketplaces.CURRENCIES == {
        1: "USD", 2: "GBP", 3: "EUR", 4: "EUR", 5: "JPY", 6: "CAD",
        8: "EUR", 9: "EUR", 10: "INR", 11: "MXN", 12: "BRL",
    }  # fmt: skip
    assert marketplaces.digits("JPY") == 0 and marketplaces.digits("EUR") == 2
    decoded = decode_deals(
        json.dumps({"deals": {"dr": [_deal()]}, "tokensLeft": 5, "refillRate": 5}).encode()
    )
    [item] = decoded.items
    row = mapping.deal_row(item.value, item.raw, domain_id=5, seen_at="2026-05-10T05:00:00Z")
    # A price in yen is stored as Keepa sends it: whole yen, not hundredths.
    assert (row["currency"], row["current_used_cents"]) == ("JPY", 1450)
    assert marketplaces.currency(7) is None
