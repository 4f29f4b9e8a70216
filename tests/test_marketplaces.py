"""Money as stored (each currency's smallest unit) and as every view shows it."""

from __future__ import annotations

import sqlite3

import pytest

from dealsd import marketplaces as mp


@pytest.mark.parametrize(
    ("amount", "currency", "shown", "plain", "in_units"),
    [
        (1234, "USD", "$12.34", "12.34", 12.34),
        (123456, "USD", "$1,234.56", "1234.56", 1234.56),
        (-350, "EUR", "-€3.50", "-3.50", -3.5),
        (5, "GBP", "£0.05", "0.05", 0.05),
        (1999, "JPY", "¥1,999", "1999", 1999),
        (-40, "JPY", "-¥40", "-40", -40),
        (1234, None, "12.34", "12.34", 12.34),  # a row from before currencies: cents
    ],
)
def test_each_currency_shows_its_own_decimals(
    amount: int, currency: str | None, shown: str, plain: str, in_units: float
) -> None:
    assert mp.show(amount, currency) == shown
    assert mp.show(amount, currency, symbol=False) == plain
    assert mp.units(amount, currency) == in_units


def test_the_sql_divisor_agrees_with_units() -> None:
    conn = sqlite3.connect(":memory:")
    conn.execute("CREATE TABLE deals (currency TEXT, profit_cents INTEGER)")
    conn.executemany("INSERT INTO deals VALUES (?, 1999)", [("JPY",), ("EUR",), (None,)])
    got = conn.execute(
        f"SELECT currency, profit_cents * 1.0 / {mp.SQL_PER_UNIT} FROM deals ORDER BY 1"
    ).fetchall()
    assert got == [(None, 19.99), ("EUR", 19.99), ("JPY", 1999.0)]
    assert [mp.units(1999, c) for c, _ in got] == [19.99, 19.99, 1999]


def test_marketplaces_name_a_storefront_and_a_currency() -> None:
    assert mp.amazon_url(3, "B0X") == "https://www.amazon.de/dp/B0X"
    assert mp.amazon_url(7, "B0X") is None and mp.amazon_url("3", "B0X") is None
    assert mp.keepa_url(5, "B0X") == "https://keepa.com/#!product/5-B0X"
    assert mp.currency(5) == "JPY" and mp.currency(7) is None and mp.currency(None) is None
    assert set(mp.CURRENCIES.values()) <= set(mp.SYMBOLS)
