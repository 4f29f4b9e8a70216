"""What an alert says: a title and a Markdown body a buyer can act on.

Apprise turns Markdown into each channel's own format (HTML for email,
plain text where a service has no markup). A digest lists many alerts in one
message, for a first fill or a channel that comes back after hours.
"""

from __future__ import annotations

from collections.abc import Sequence

from dealsd.alerts.outbox import REASON_PRICE_DROP, Pending
from dealsd.alerts.rules import DealFacts

# Keepa's domain ids and the Amazon storefront each stands for.
AMAZON_HOSTS = {
    1: "www.amazon.com",
    2: "www.amazon.co.uk",
    3: "www.amazon.de",
    4: "www.amazon.fr",
    5: "www.amazon.co.jp",
    6: "www.amazon.ca",
    8: "www.amazon.it",
    9: "www.amazon.es",
    10: "www.amazon.in",
    11: "www.amazon.com.mx",
    12: "www.amazon.com.br",
}
DIGEST_LINES_MAX = 50
TITLE_MAX = 80


def money(cents: int | None) -> str:
    """``$12.34``; a dash where Keepa gave nothing (never a made-up 0)."""
    if cents is None:
        return "-"
    sign = "-" if cents < 0 else ""
    return f"{sign}${abs(cents) / 100:,.2f}"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}%"


def _int(value: int | None) -> str:
    return "-" if value is None else f"{value:,}"


def amazon_url(deal: DealFacts) -> str:
    return f"https://{AMAZON_HOSTS.get(deal.domain_id, AMAZON_HOSTS[1])}/dp/{deal.asin}"


def keepa_url(deal: DealFacts) -> str:
    return f"https://keepa.com/#!product/{deal.domain_id}-{deal.asin}"


def _name(deal: DealFacts) -> str:
    title = deal.title or deal.asin
    return title if len(title) <= TITLE_MAX else title[: TITLE_MAX - 1] + "…"


def single(alert: Pending) -> tuple[str, str]:
    """(title, body) of one alert."""
    d = alert.facts
    why = "price drop" if alert.reason == REASON_PRICE_DROP else "new deal"
    title = f"{money(d.profit_cents)} profit: {_name(d)}"
    body = "\n".join(
        [
            f"**{_name(d)}** ({why}, rule *{alert.rule}*)",
            "",
            f"- Buy: **{money(d.buy_cents)}** with shipping (all-in {money(d.all_in_cost_cents)}), "
            f"expected sale {money(d.expected_sale_cents)}",
            f"- Profit: **{money(d.profit_cents)}**, ROI {_pct(d.roi_pct)}, "
            f"margin {_pct(d.margin_pct)}",
            f"- Sales rank {_int(d.sales_rank)}, sales per month {_int(d.monthly_sold)}, "
            f"rank drops (30 d) {_int(d.rank_drops_30)}",
            "",
            f"[Amazon]({amazon_url(d)}) · [Keepa]({keepa_url(d)})",
        ]
    )
    return title, body


def digest(alerts: Sequence[Pending]) -> tuple[str, str]:
    """(title, body) of many alerts in one message, best profit first."""
    ranked = sorted(alerts, key=lambda a: -(a.facts.profit_cents or 0))
    shown = ranked[:DIGEST_LINES_MAX]
    lines = [
        f"- {money(a.facts.profit_cents)} profit, buy {money(a.facts.buy_cents)}, "
        f"ROI {_pct(a.facts.roi_pct)}: [{_name(a.facts)}]({amazon_url(a.facts)}) "
        f"([Keepa]({keepa_url(a.facts)}))"
        for a in shown
    ]
    if len(ranked) > len(shown):
        lines.append(f"- … and {len(ranked) - len(shown)} more: `dealsd alerts list`")
    return f"{len(alerts)} deals worth a look", "\n".join(lines)
