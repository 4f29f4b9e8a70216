"""The simulator answers what Keepa would for the parameters given, and bills them.

Buy box data only with ``buybox=1`` or ``offers``; offers only with ``offers``;
rating history only with ``rating=1`` (or ``offers``); stock only with
``stock=1``. Each case asks with and without, over loopback, and compares the
fields present and the tokens charged. Expected values of the real sample were
read by hand from dealsd/samples/product_B0D8W1YVBX.json.
"""

from __future__ import annotations

import json
from typing import Any

import aiohttp
import pytest
from helpers import StartSim

from dealsd import mapping
from dealsd.keepa.payloads import decode_products
from dealsd.simulator import Simulator

ASIN = "B0D8W1YVBX"  # recorded with buybox=1 and rating=1 (tokensConsumed 4)


@pytest.fixture
async def sim(start_sim: StartSim) -> Simulator:
    return await start_sim(refill_rate=10_000)


async def _product(sim: Simulator, asin: str = ASIN, **params: int) -> tuple[dict[str, Any], int]:
    """The product and the tokens charged for ``/product`` with ``params``."""
    query = {"key": "k", "domain": "1", "asin": asin, "stats": "180", **{
        k: str(v) for k, v in params.items()}}  # fmt: skip
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{sim.base_url}/product", params=query) as resp:
            assert resp.status == 200
            doc = await resp.json()
    [product] = doc["products"]
    return product, int(doc["tokensConsumed"])


def _columns(product: dict[str, Any]) -> dict[str, object]:
    [item] = decode_products(json.dumps({"products": [product]}).encode()).items
    return mapping.product_columns(item.value)


async def test_buy_box_only_with_buybox(sim: Simulator) -> None:
    without, cost_without = await _product(sim)
    with_, cost_with = await _product(sim, buybox=1)
    assert (cost_without, cost_with) == (1, 3)  # +2 for the buy box
    s = without["stats"]
    assert s["buyBoxPrice"] == -2 and s["buyBoxShipping"] == -2
    assert s["current"][18] == -1 and s["avg90"][18] == -1
    assert without["csv"][18] is None and without["csv"][32] is None
    assert s["buyBoxIsFBA"] is None and without["buyBoxSellerIdHistory"] is None
    s = with_["stats"]
    assert s["buyBoxPrice"] == 1499 and s["buyBoxShipping"] == 0
    assert s["current"][18] == 1499 and s["avg90"][18] == 1805
    assert with_["csv"][18] is not None and s["buyBoxIsFBA"] is True
    # ... and so the columns: NULL without it, never a price made of -2.
    cols = _columns(without)
    assert (cols["buy_box_cents"], cols["avg90_buy_box_cents"], cols["buy_box_shipping_cents"]) == (
        None, None, None)  # fmt: skip
    cols = _columns(with_)
    assert (cols["buy_box_cents"], cols["avg90_buy_box_cents"], cols["buy_box_shipping_cents"]) == (
        1499, 1805, 1499)  # fmt: skip
    # The rest of the product does not depend on it.
    assert without["stats"]["avg90"][1] == with_["stats"]["avg90"][1] == 1797


async def test_rating_history_only_with_rating(sim: Simulator) -> None:
    without, cost_without = await _product(sim)
    with_, cost_with = await _product(sim, rating=1)
    assert (cost_without, cost_with) == (1, 2)
    assert without["csv"][16] is None and without["csv"][17] is None
    assert without["stats"]["current"][16] == -1 and without["stats"]["current"][17] == -1
    # RATING 43 (4.3 stars) and 11598 reviews now, in the recorded sample.
    assert with_["stats"]["current"][16] == 43 and with_["stats"]["current"][17] == 11598
    assert len(with_["csv"][16]) == 218 and len(with_["csv"][17]) == 5912


async def test_offers_only_with_offers_and_they_bring_the_buy_box(sim: Simulator) -> None:
    without, cost_without = await _product(sim)
    assert "offers" not in without and cost_without == 1
    assert all(without["stats"]["current"][t] == -1 for t in (7, 19, 20, 21, 22, 32))
    with_, cost_with = await _product(sim, offers=20)
    offers = with_["offers"]
    assert 10 <= len(offers) <= 20
    pages = sim.products.offer_pages(ASIN)
    assert cost_with == 6 * pages  # 6 tokens a page of 10 offers, instead of the base token
    assert all("stockCSV" not in o for o in offers)
    # What Keepa derives from the offers: the lowest price with shipping per
    # used condition (2..5 -> price types 19..22), computed here from the offers.
    landed: dict[int, int] = {}
    for o in offers:
        _, price, shipping = o["offerCSV"]
        if o["condition"] > 1:
            t = 17 + o["condition"]
            landed[t] = min(price + shipping, landed.get(t, price + shipping))
    assert landed
    for t, value in landed.items():
        assert with_["stats"]["current"][t] == value
    cols = _columns(with_)
    assert cols["current_used_shipping_cents"] == min(landed.values())
    assert cols["buy_box_cents"] is not None  # offers bring the buy box without buybox=1
    assert cols["offer_count_new_fba"] is not None


async def test_stock_only_with_stock(sim: Simulator) -> None:
    without, cost_without = await _product(sim, offers=20)
    with_, cost_with = await _product(sim, offers=20, stock=1)
    assert cost_with == cost_without + 2
    assert all("stockCSV" not in o for o in without["offers"])
    assert with_["offers"] and all(len(o["stockCSV"]) == 2 for o in with_["offers"])
    # Without offers there is nothing to hold stock counts; the +2 is still billed
    # (Keepa's table lists it flat; whether it bills it without offers is not known).
    alone, cost_alone = await _product(sim, stock=1)
    assert "offers" not in alone and cost_alone == 3


async def test_a_variation_follows_the_parameters_too(sim: Simulator) -> None:
    # A variation of the buy box sample: found among the first catalogue ASINs.
    others = [a for a in sorted(sim.catalogue.by_asin) if a not in ("B0D8W1YVBX", "B0F7XPYCSJ")]
    for asin in others[:20]:
        with_, _ = await _product(sim, asin, buybox=1, rating=1)
        if with_["stats"]["buyBoxPrice"] > 0:
            break
    else:
        pytest.fail("no variation of B0D8W1YVBX among 20 ASINs")
    without, _ = await _product(sim, asin)
    assert without["stats"]["buyBoxPrice"] == -2 and without["csv"][18] is None
    assert with_["csv"][18] is not None
    assert without["csv"][16] is None and with_["csv"][16] is not None
    assert without["stats"]["avg90"][1] == with_["stats"]["avg90"][1]
