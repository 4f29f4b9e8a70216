"""Decoding of Keepa bodies against the real samples and against lies."""

from __future__ import annotations

import json

import pytest
from helpers import sample_bytes

from dealsd.keepa.payloads import PayloadError, decode_deals, decode_envelope, decode_products


def _sample(asin: str) -> bytes:
    return sample_bytes(asin)


def test_real_product_decodes_with_values_read_from_the_file() -> None:
    decoded = decode_products(_sample("B0D8W1YVBX"))
    assert decoded.skipped == []
    [item] = decoded.items
    p = item.value
    # Expected values read by hand from the JSON file.
    assert p.asin == "B0D8W1YVBX"
    assert p.product_type == 0
    assert p.root_category == 3760911
    assert p.last_update == 8075762
    assert p.fba_fees is not None and p.fba_fees.pick_and_pack_fee == 409
    assert p.referral_fee_percentage == 15.01
    assert p.stats is not None
    assert p.stats.avg90[1] == 1797 and p.stats.avg90[18] == 1805
    assert p.stats.sales_rank_drops30 == 35 and p.stats.current[11] == 5
    assert p.stats.buy_box_price == 1499
    # The raw bytes are the product object exactly as sent.
    assert json.loads(item.raw) == json.loads(_sample("B0D8W1YVBX"))["products"][0]


def test_envelope_read_from_success_and_error_bodies() -> None:
    env, err = decode_envelope(_sample("B0F7XPYCSJ"))
    assert env is not None and err is None
    assert (env.tokens_left, env.refill_in, env.refill_rate, env.tokens_consumed) == (
        42, 18815, 60, 1)
    body = json.dumps({"timestamp": 1, "tokensLeft": -7, "refillIn": 900, "refillRate": 5,
                       "tokensConsumed": 0, "error": {"type": "tokens", "message": "x"}})
    env, err = decode_envelope(body.encode())
    assert env is not None and env.tokens_left == -7
    assert err is not None and err.type == "tokens"
    assert decode_envelope(b"<html>502</html>") == (None, None)
    assert decode_envelope(b'{"tokensLeft": 3}') == (None, None)
    # No refillIn: not "a refill is due now" (0), but unknown.
    env, _ = decode_envelope(b'{"timestamp": 1, "tokensLeft": 3, "refillRate": 5}')
    assert env is not None and env.refill_in == -1


def test_malformed_items_are_skipped_with_reason_and_neighbours_survive() -> None:
    good = {"asin": "A1", "lastUpdate": 100, "current": [-1, 500, 400, 9000]}
    body = json.dumps({"deals": {"dr": [
        good,
        {"asin": "A2", "current": [1, 2]},                      # lastUpdate missing
        {"asin": "A3", "lastUpdate": 5, "current": "1,2,3"},   # wrong type
        {"asin": "A4", "lastUpdate": "5", "current": [1]},     # number as a string
        7,                                                      # not an object
        dict(good, asin="A5"),
    ]}})
    decoded = decode_deals(body.encode())
    assert [i.value.asin for i in decoded.items] == ["A1", "A5"]
    assert [(s.index, s.asin) for s in decoded.skipped] == [(1, "A2"), (2, "A3"), (3, "A4"),
                                                            (4, None)]
    assert "lastUpdate" in decoded.skipped[0].reason
    assert "current" in decoded.skipped[1].reason


def test_product_with_string_in_stats_is_kept_not_misread() -> None:
    # A paid product is never lost to one odd entry: the entry is no data (-1,
    # never the number the string spells), its neighbours are read, and the
    # field is named so the oddity can be counted.
    product = json.loads(_sample("B0F7XPYCSJ"))["products"][0]
    product["stats"]["avg90"][1] = "2599"
    decoded = decode_products(json.dumps({"products": [product]}).encode())
    assert decoded.skipped == []
    [item] = decoded.items
    assert item.unreadable == ("stats.avg90",)
    assert item.value.stats is not None
    assert item.value.stats.avg90[1] == -1
    assert item.value.stats.avg90[4] == 3599  # LISTPRICE, read by hand
    assert item.value.stats.sales_rank_drops90 == 35


@pytest.mark.parametrize("body", [b"", b"<html>", b'{"deals": 3}', b"{}", b'{"deals": {"dr": 1'])
def test_bad_deal_bodies_raise_payload_error(body: bytes) -> None:
    with pytest.raises(PayloadError):
        decode_deals(body)


@pytest.mark.parametrize("body", [b"null", b'{"products": {}}', b'{"tokensLeft": 1}'])
def test_bad_product_bodies_raise_payload_error(body: bytes) -> None:
    with pytest.raises(PayloadError):
        decode_products(body)
