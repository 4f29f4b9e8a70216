"""Keepa's marketplaces and their money: one table, one way to show an amount.

Money is stored in each marketplace's own currency, as Keepa sends it: an
integer in the currency's smallest unit (ISO 4217 minor unit). The `*_cents`
columns hold cents of USD, GBP, EUR, CAD, MXN, BRL, paise of INR, and whole
yen for JPY, whose smallest unit is the yen itself: 1999 is ¥1,999, not
¥19.99. Every view that shows an amount (`dealsd deals`, its CSV and JSON,
the web view, alert messages) goes through ``units`` or ``show`` here.

Standard library only, imported by `dealsd deals` on its fast path.
"""

from __future__ import annotations

from typing import NamedTuple


class Marketplace(NamedTuple):
    host: str  # the Amazon storefront
    currency: str  # ISO 4217


# Keepa's domain ids (7 was amazon.cn, closed).
MARKETPLACES: dict[int, Marketplace] = {
    1: Marketplace("www.amazon.com", "USD"),
    2: Marketplace("www.amazon.co.uk", "GBP"),
    3: Marketplace("www.amazon.de", "EUR"),
    4: Marketplace("www.amazon.fr", "EUR"),
    5: Marketplace("www.amazon.co.jp", "JPY"),
    6: Marketplace("www.amazon.ca", "CAD"),
    8: Marketplace("www.amazon.it", "EUR"),
    9: Marketplace("www.amazon.es", "EUR"),
    10: Marketplace("www.amazon.in", "INR"),
    11: Marketplace("www.amazon.com.mx", "MXN"),
    12: Marketplace("www.amazon.com.br", "BRL"),
}
CURRENCIES: dict[int, str] = {d: m.currency for d, m in MARKETPLACES.items()}
# Decimals of each currency's smallest unit: what a `*_cents` integer is divided by.
MINOR_UNIT_DIGITS: dict[str, int] = {c: 0 if c == "JPY" else 2 for c in CURRENCIES.values()}
SYMBOLS: dict[str, str] = {
    "USD": "$", "GBP": "£", "EUR": "€", "JPY": "¥", "CAD": "CA$", "INR": "₹", "MXN": "MX$",
    "BRL": "R$",
}  # fmt: skip
# SQL: how many stored units make one currency unit, from a row's `currency`
# (NULL, a row from before schema v5, is cents as it always was).
SQL_PER_UNIT = "(CASE currency WHEN 'JPY' THEN 1 ELSE 100 END)"


def currency(domain: object) -> str | None:
    """The currency of Keepa domain ``domain``; None for one dealsd does not know."""
    return CURRENCIES.get(domain) if isinstance(domain, int) else None


def digits(currency: str | None) -> int:
    """Decimals of ``currency``'s smallest unit; 2 where unknown (what cents always meant)."""
    return MINOR_UNIT_DIGITS.get(currency or "", 2)


def units(amount: int, currency: str | None) -> float | int:
    """A stored amount in currency units: 1234 USD is 12.34, 1999 JPY is 1999."""
    d = digits(currency)
    return amount if d == 0 else round(amount / 10**d, d)


def show(amount: int, currency: str | None, *, symbol: bool = True) -> str:
    """``$12.34``, ``-€3.50``, ``¥1,999``; without ``symbol``: ``12.34``, ``1999``."""
    d = digits(currency)
    sign = "-" if amount < 0 else ""
    mark = SYMBOLS.get(currency or "", "") if symbol else ""
    value = abs(amount) / 10**d
    text = f"{value:,.{d}f}" if symbol else f"{value:.{d}f}"
    return f"{sign}{mark}{text}"


def amazon_url(domain_id: object, asin: str) -> str | None:
    m = MARKETPLACES.get(domain_id) if isinstance(domain_id, int) else None
    return None if m is None else f"https://{m.host}/dp/{asin}"


def keepa_url(domain_id: object, asin: str) -> str:
    domain = domain_id if isinstance(domain_id, int) else 1
    return f"https://keepa.com/#!product/{domain}-{asin}"
