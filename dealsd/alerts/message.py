"""What an alert says: a title and a Markdown body a buyer can act on.

Apprise turns Markdown into each channel's own format (HTML for email,
plain text where a service has no markup). A digest lists many alerts in one
message, for a first fill or a channel that comes back after hours.
"""

from __future__ import annotations

from collections.abc import Sequence

from dealsd.alerts.outbox import REASON_PRICE_DROP, Pending
from dealsd.alerts.rules import DealFacts
from dealsd.marketplaces import amazon_url, currency, keepa_url, show

DIGEST_LINES_MAX = 50
TITLE_MAX = 80


def money(amount: int | None, domain_id: object) -> str:
    """``$12.34``, ``€12.34``, ``¥1,999`` in the deal's marketplace's currency;
    a dash where Keepa gave nothing (never a made-up 0)."""
    return "-" if amount is None else show(amount, currency(domain_id))


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}%"


def _int(value: int | None) -> str:
    return "-" if value is None else f"{value:,}"


def _keepa(d: DealFacts) -> str:
    return keepa_url(d.domain_id, d.asin)


def _amazon(d: DealFacts) -> str:
    # A marketplace dealsd has no storefront for (a domain Keepa adds later): Keepa's page.
    return amazon_url(d.domain_id, d.asin) or _keepa(d)


def _name(deal: DealFacts) -> str:
    title = deal.title or deal.asin
    return title if len(title) <= TITLE_MAX else title[: TITLE_MAX - 1] + "…"


def single(alert: Pending) -> tuple[str, str]:
    """(title, body) of one alert."""
    d = alert.facts

    def m(amount: int | None) -> str:
        return money(amount, d.domain_id)

    why = "price drop" if alert.reason == REASON_PRICE_DROP else "new deal"
    title = f"{m(d.profit_cents)} profit: {_name(d)}"
    body = "\n".join(
        [
            f"**{_name(d)}** ({why}, rule *{alert.rule}*)",
            "",
            f"- Buy: **{m(d.buy_cents)}** with shipping (all-in {m(d.all_in_cost_cents)}), "
            f"expected sale {m(d.expected_sale_cents)}",
            f"- Profit: **{m(d.profit_cents)}**, ROI {_pct(d.roi_pct)}, "
            f"margin {_pct(d.margin_pct)}",
            f"- Sales rank {_int(d.sales_rank)}, sales per month {_int(d.monthly_sold)}, "
            f"rank drops (30 d) {_int(d.rank_drops_30)}",
            "",
            f"[Amazon]({_amazon(d)}) · [Keepa]({_keepa(d)})",
        ]
    )
    return title, body


def _ranked(alerts: Sequence[Pending]) -> list[Pending]:
    # Profits in two currencies do not compare without an exchange rate,
    # which dealsd does not have: then ROI, a ratio, ranks them.
    if len({currency(a.facts.domain_id) for a in alerts}) > 1:
        return sorted(alerts, key=lambda a: -(a.facts.roi_pct or 0.0))
    return sorted(alerts, key=lambda a: -(a.facts.profit_cents or 0))


def digest(alerts: Sequence[Pending]) -> tuple[str, str]:
    """(title, body) of many alerts in one message, best profit first (mixed
    currencies: best ROI first)."""
    ranked = _ranked(alerts)
    shown = ranked[:DIGEST_LINES_MAX]
    lines = [
        f"- {money(a.facts.profit_cents, a.facts.domain_id)} profit, "
        f"buy {money(a.facts.buy_cents, a.facts.domain_id)}, ROI {_pct(a.facts.roi_pct)}: "
        f"[{_name(a.facts)}]({_amazon(a.facts)}) ([Keepa]({_keepa(a.facts)}))"
        for a in shown
    ]
    if len(ranked) > len(shown):
        lines.append(f"- … and {len(ranked) - len(shown)} more: `dealsd alerts list`")
    return f"{len(alerts)} deals worth a look", "\n".join(lines)
