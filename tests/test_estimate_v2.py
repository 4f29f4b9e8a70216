"""Schema v2's columns and the all-in estimate, worked through by hand.

Every expected value was read by hand from dealsd/samples/*.json or written
into the synthetic payloads below, and every sum done by hand in the comments;
none is computed by the code under test.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import structlog
from helpers import Running, StartSim, sample_bytes, wait_for, write_config

from dealsd import estimate as est
from dealsd import mapping
from dealsd.config import Config, check_config, config_warnings, load_config
from dealsd.keepa.payloads import Product, decode_products

NEW, USED = 1, 2


@dataclass(frozen=True)
class Profit:
    reference: str
    referral_fee_pct: float = 15.0
    fba_fee_cents: int = 0
    extra_cost_cents: int = 25
    buy_shipping_cents: int = 399
    prep_cents: int = 50
    inbound_cents_per_lb: int = 40
    referral_fee_min_cents: int = 30
    closing_fee_cents: int = 180
    closing_fee_categories: tuple[int, ...] = (283155, 5174, 2625373, 229534, 468642)


def _product(asin: str) -> Product:
    decoded = decode_products(sample_bytes(asin))
    assert decoded.skipped == []
    [item] = decoded.items
    assert item.unreadable == ()
    return item.value


def _columns(asin: str, root_category: int) -> dict[str, object]:
    # The estimate reads the deal row: product columns plus the deal's root category.
    return {**mapping.product_columns(_product(asin)), "root_category": root_category}


def test_estimate_of_b0d8w1yvbx_by_hand() -> None:
    cols = _columns("B0D8W1YVBX", 3760911)  # rootCategory: Beauty, not a media category
    got = est.estimate(cols, buy_cost_cents=500, price_type=NEW, profit=Profit("buy_box"))
    # sale: avg90[18] BUY_BOX_SHIPPING = 1805 (shipping included; an FBA buy box ships free)
    # buy price: the deal's new price 500; Keepa's new price with shipping
    #   (current[7] NEW_FBM_SHIPPING, current[10] NEW_FBA) is -1 (no offers asked),
    #   so + buy_shipping 399 = 899
    # all-in: 899 + prep 50 + inbound 40 c/lb * 141 g / 453.59237 g/lb (12.43 -> 12) = 961
    # fees: referral 15.01 % of 1805 = 270.93 -> 271 (above the 30 minimum)
    #       + FBA pick&pack 409 (fbaFees.pickAndPackFee) + closing fee 0 (not media)
    #       + extra 25 = 705
    # profit: 1805 - 961 - 705 = 139; margin 139 / 1805 = 7.70 %; ROI 139 / 961 = 14.46 %
    assert got == {
        "expected_sale_cents": 1805,
        "buy_price_cents": 899,
        "all_in_cost_cents": 961,
        "fees_cents": 705,
        "profit_cents": 139,
        "margin_pct": 7.7,
        "roi_pct": 14.46,
    }


def test_estimate_of_b0f7xpycsj_by_hand_with_a_closing_fee() -> None:
    # The closing fee list is configuration: here the product's root category
    # (16310091, Industrial & Scientific) is listed, so the fee is charged.
    cols = _columns("B0F7XPYCSJ", 16310091)
    profit = Profit("new", closing_fee_categories=(16310091,))
    got = est.estimate(cols, buy_cost_cents=700, price_type=USED, profit=profit)
    # sale: avg90[1] NEW = 2599
    # buy price: the deal's used price 700; current[19..22] USED_*_SHIPPING are -1,
    #   so + buy_shipping 399 = 1099
    # all-in: 1099 + prep 50 + inbound 40 * 235 g / 453.59237 (20.72 -> 21) = 1170
    # fees: referral 12.0 % (referralFeePercentage) of 2599 = 311.88 -> 312
    #       + FBA 435 + closing 180 + extra 25 = 952
    # profit: 2599 - 1170 - 952 = 477; margin 477 / 2599 = 18.35 %; ROI 477 / 1170 = 40.77 %
    assert got == {
        "expected_sale_cents": 2599,
        "buy_price_cents": 1099,
        "all_in_cost_cents": 1170,
        "fees_cents": 952,
        "profit_cents": 477,
        "margin_pct": 18.35,
        "roi_pct": 40.77,
    }


def test_keepas_price_with_shipping_is_the_buy_price_unless_stale() -> None:
    base = {"avg90_used_cents": 3000, "package_weight_g": 453, "root_category": 1}
    profit = Profit("used", referral_fee_pct=10.0, inbound_cents_per_lb=0, prep_cents=0)
    # Lowest used with shipping 1399 >= the deal's 1000: that is what buying costs.
    got = est.estimate({**base, "current_used_shipping_cents": 1399},
                           buy_cost_cents=1000, price_type=USED, profit=profit)  # fmt: skip
    assert got["buy_price_cents"] == 1399 and got["all_in_cost_cents"] == 1399
    # Below the deal's price it is older than the deal (the price rose): item + 399.
    got = est.estimate({**base, "current_used_shipping_cents": 1399},
                           buy_cost_cents=1500, price_type=USED, profit=profit)  # fmt: skip
    assert got["buy_price_cents"] == 1899
    # Amazon's own offer: its price, no shipping added.
    got = est.estimate({"avg90_amazon_cents": 3000, "root_category": 1},
                           buy_cost_cents=1000, price_type=0,
                           profit=Profit("amazon", inbound_cents_per_lb=0))  # fmt: skip
    assert got["buy_price_cents"] == 1000


def test_the_estimates_null_rules() -> None:
    cols: dict[str, Any] = {"avg90_new_cents": 100, "root_category": 283155,
                            "package_weight_g": None, "fba_fee_cents": 0}  # fmt: skip
    got = est.estimate(cols, buy_cost_cents=40, price_type=NEW, profit=Profit("new"))
    # referral 15 % of 100 = 15, raised to the 30 minimum; closing 180 (Books); extra 25.
    assert got["fees_cents"] == 30 + 180 + 25
    # Inbound is priced per pound and the weight is unknown: no all-in cost, no profit.
    assert got["buy_price_cents"] == 40 + 399
    assert got["all_in_cost_cents"] is None and got["profit_cents"] is None
    assert got["roi_pct"] is None and got["margin_pct"] is None
    # Unknown category with a closing fee configured: the fees are unknown, not 0.
    got = est.estimate({**cols, "root_category": None, "package_weight_g": 453},
                           buy_cost_cents=40, price_type=NEW, profit=Profit("new"))  # fmt: skip
    assert got["fees_cents"] is None and got["profit_cents"] is None
    assert got["all_in_cost_cents"] == 40 + 399 + 50 + 40  # 453 g = 0.9987 lb -> 40


@pytest.mark.parametrize(
    ("drops30", "drops90", "drops180", "expected"),
    [
        (35, 75, 165, 25),  # B0D8W1YVBX: 75 / 3
        (13, 35, 84, 12),  # B0F7XPYCSJ: 35 / 3 = 11.67
        (10, 1, 5, 0),  # 1 / 3 = 0.33
        (10, 2, 5, 1),  # 2 / 3 = 0.67
        (7, -1, 60, 7),  # 90 days unknown: the 30-day count
        (-2, -1, 45, 8),  # only 180 days: 45 / 6 = 7.5, half up
        (-1, -2, -1, None),
        (None, None, None, None),
    ],
)
def test_estimated_sales_per_month(
    drops30: int | None, drops90: int | None, drops180: int | None, expected: int | None
) -> None:
    assert mapping.est_sales_per_month(drops30, drops90, drops180) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [(1978, "1978"), (200301, "2003-01"), (20150409, "2015-04-09"), (0, None), (-1, None),
     (None, None), (200313, None), (20150432, None), (123, None)],
)  # fmt: skip
def test_keepa_dates(value: int | None, expected: str | None) -> None:
    assert mapping.keepa_date(value) == expected


_LIAR: dict[str, Any] = {
    "asin": "B000000009",
    "lastUpdate": None,
    "monthlySold": None,
    "packageWeight": -1,
    "binding": "  ",
    "publicationDate": None,
    "releaseDate": 20150409,
    "stats": {
        # AMAZON -1 (not offering), new FBM shipping -2, used like new null,
        # very good 1500, good -1, acceptable "x"; the array stops before 32.
        "current": [-1, 2000, 1100, 5000, -1, -1, -1, -2, -1, -1, -1, 4, 2, -1, -1, -1, -1,
                    -1, None, None, 1500, -1, "x"],
        "avg30": None,
        "avg90": [1, 2],
        "outOfStockPercentage90": [None],
        "salesRankDrops30": None,
        "salesRankDrops90": -2,
        "salesRankDrops180": 60,
    },
}  # fmt: skip


def test_a_product_full_of_nulls_and_sentinels_is_kept_and_no_sentinel_is_a_price() -> None:
    decoded = decode_products(json.dumps({"products": [_LIAR]}).encode())
    assert decoded.skipped == []
    [item] = decoded.items
    assert set(item.unreadable) == {
        "lastUpdate", "stats.current", "stats.avg30", "stats.outOfStockPercentage90",
        "stats.salesRankDrops30",
    }  # fmt: skip
    cols = mapping.product_columns(item.value)
    assert cols["current_used_very_good_shipping_cents"] == 1500
    assert cols["current_used_like_new_shipping_cents"] is None  # null
    assert cols["current_used_good_shipping_cents"] is None  # -1
    assert cols["current_used_acceptable_shipping_cents"] is None  # "x"
    assert cols["current_used_shipping_cents"] == 1500  # the lowest known of the four
    assert cols["current_new_fbm_shipping_cents"] is None  # -2
    assert cols["current_used_buy_box_shipping_cents"] is None  # the array is short
    assert cols["buy_box_shipping_cents"] is None  # null at 18
    assert cols["avg90_used_very_good_shipping_cents"] is None  # avg90 has 2 entries
    assert cols["avg30_sales_rank"] is None  # avg30 null
    assert cols["amazon_offering"] == 0  # current[0] -1
    assert cols["amazon_oos_pct_90"] is None
    assert cols["offer_count_new_fba"] is None  # short array
    assert cols["est_sales_per_month"] == 10  # 90 and 30 unknown: 60 / 6
    assert cols["monthly_sold"] is None and cols["package_weight_g"] is None
    assert cols["binding"] is None and cols["publication_date"] is None
    assert cols["release_date"] == "2015-04-09"
    # Nothing negative reached a column.
    assert all(not (isinstance(v, int) and v < 0) for v in cols.values()), cols


def test_amazon_offering_now_and_unknown() -> None:
    def offering(current: Any) -> object:
        body = {"products": [{"asin": "B000000010", "stats": {"current": current}}]}
        [item] = decode_products(json.dumps(body).encode()).items
        return mapping.product_columns(item.value)["amazon_offering"]

    assert offering([1999, 2000]) == 1
    assert offering([-1, 2000]) == 0
    assert offering([-2, 2000]) is None  # not available is not "no"
    assert offering([]) is None


def test_check_config_warns_when_the_reference_is_never_fetched(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text('[profit]\nreference = "buy_box"\n')
    cfg = load_config(path)
    [warning] = config_warnings(cfg)
    assert warning.startswith('profit.reference: "buy_box" needs buy box data')
    err = io.StringIO()
    assert check_config(path, out=io.StringIO(), err=err, env={"KEEPA_API_KEY": "k"}) == 0
    assert 'profit.reference: "buy_box" needs buy box data' in err.getvalue()
    for fix in ("[backfiller]\nbuybox = true\n", "[backfiller]\noffers = 20\n"):
        path.write_text('[profit]\nreference = "used_buy_box"\n' + fix)
        assert config_warnings(load_config(path)) == []
    assert config_warnings(Config()) == []  # the defaults ("used") need nothing paid


async def test_the_daemon_logs_the_config_warning_at_start(
    start_sim: StartSim, tmp_path: Path
) -> None:
    sim = await start_sim()
    path = write_config(tmp_path, sim.base_url, extra='[profit]\nreference = "buy_box"\n')
    with structlog.testing.capture_logs() as logs:
        d = Running(load_config(path), path)
        await wait_for(lambda: any(e["event"] == "ready" for e in logs), 10, "ready")
        assert await d.finish() == 0
    [line] = [e for e in logs if e["event"] == "config_warning"]
    assert 'profit.reference: "buy_box" needs buy box data' in line["warning"]
