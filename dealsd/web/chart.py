"""A product's price history as an inline SVG chart, drawn on the server.

Keepa-style: prices as step lines (a price holds until the next change) on
the left axis, the sales rank on the right (logarithmic: a rank spans six
orders of magnitude, and one launch spike would flatten everything else on
a linear axis), one colour per series, a gap where Keepa had no data.
Inline SVG needs no JavaScript and no asset from elsewhere (the web view
must work with no internet).

Each series is one ``<path>``: ``M`` starts a run of data, each later point
is ``H x V y`` (hold the price until x, then step to y), so a path has one
``M`` or ``V`` per point Keepa sent with data.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from html import escape

from dealsd.keepa.payloads import BUY_BOX_SHIPPING, NEW, SALES, USED, History
from dealsd.mapping import history_points
from dealsd.marketplaces import digits

WIDTH, HEIGHT = 960, 380
LEFT, RIGHT, TOP, BOTTOM = 64, 76, 34, 46  # margins: axis labels live there
TICKS = 5


@dataclass(frozen=True, slots=True)
class Series:
    key: str
    label: str
    price_type: int
    colour: str
    width: float
    rank_axis: bool = False


# Keepa's own colours. New is drawn wide under the buy box, which often
# has the same price: both stay visible.
SERIES: tuple[Series, ...] = (
    Series("new", "New", NEW, "#8888dd", 4.0),
    Series("used", "Used", USED, "#444444", 2.0),
    Series("buy_box", "Buy box", BUY_BOX_SHIPPING, "#ff00b4", 1.5),
    Series("sales_rank", "Sales rank", SALES, "#3a883a", 1.0, rank_axis=True),
)

Points = list[tuple[float, int | None]]


def _scale(lo: float, hi: float, a: float, b: float) -> tuple[float, float]:
    """(factor, offset) mapping [lo, hi] onto [a, b]."""
    span = hi - lo or 1.0
    k = (b - a) / span
    return k, a - lo * k


def _path(
    points: Points, *, x: tuple[float, float], y: Callable[[float], float], end: float
) -> str:
    kx, ox = x
    parts: list[str] = []
    open_run = False
    for t, v in points:
        px = kx * t + ox
        if v is None:
            if open_run:
                parts.append(f"H{px:.1f}")  # held until Keepa lost the data
            open_run = False
            continue
        py = y(v)
        parts.append(f"H{px:.1f}V{py:.1f}" if open_run else f"M{px:.1f},{py:.1f}")
        open_run = True
    if open_run:
        parts.append(f"H{kx * end + ox:.1f}")  # the last value holds until now
    return "".join(parts)


def _top(values: Sequence[int]) -> float:
    return max(values) * 1.08 if values and max(values) > 0 else 1.0


def _money(amount: float, currency: str | None) -> str:
    d = digits(currency)
    return f"{amount / 10**d:,.{d}f}"


def render_svg(
    history: History, *, now: float | None = None, currency: str | None = None
) -> str:
    """The chart of ``history`` (a decoded ``product_history`` payload) as SVG markup.

    Prices are in ``currency``'s units (cents of most, whole yen: dealsd.marketplaces).
    """
    now = time.time() if now is None else now
    data = {s.key: history_points(history.csv, s.price_type) for s in SERIES}
    times = [t for pts in data.values() for t, _ in pts]
    x0, x1 = (min(times), max(now, max(times))) if times else (now - 86400, now)
    prices = [v for s in SERIES if not s.rank_axis for _, v in data[s.key] if v is not None]
    ranks = [v for s in SERIES if s.rank_axis for _, v in data[s.key] if v is not None]
    p_top = _top(prices)
    # Whole decades around the ranks seen, for ticks at 1, 10, 100, ...
    r_lo = math.floor(math.log10(max(1, min(ranks)))) if ranks else 0
    r_hi = max(r_lo + 1, math.ceil(math.log10(max(ranks) + 1))) if ranks else 1
    right = WIDTH - RIGHT
    bottom = HEIGHT - BOTTOM
    sx = _scale(x0, x1, LEFT, right)
    kp, op = _scale(0, p_top, bottom, TOP)
    kr, orr = _scale(r_lo, r_hi, bottom, TOP)

    def price_y(v: float) -> float:
        return kp * v + op

    def rank_y(v: float) -> float:
        return kr * math.log10(max(1.0, v)) + orr

    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="dealsd-chart" width="{WIDTH}" '
        f'height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" '
        f'aria-label="price history of {escape(history.asin)}" '
        'font-family="sans-serif" font-size="11">',
        f'<rect x="{LEFT}" y="{TOP}" width="{right - LEFT}" height="{bottom - TOP}" '
        'fill="#fafafa" stroke="#ccc"/>',
    ]
    for i in range(TICKS + 1):
        frac = i / TICKS
        y = bottom - frac * (bottom - TOP)
        out.append(f'<line x1="{LEFT}" x2="{right}" y1="{y:.1f}" y2="{y:.1f}" stroke="#e4e4e4"/>')
        label = _money(frac * p_top, currency)
        out.append(f'<text x="{LEFT - 6}" y="{y + 4:.1f}" text-anchor="end">{label}</text>')
        t = x0 + frac * (x1 - x0)
        x = sx[0] * t + sx[1]
        day = time.strftime("%Y-%m-%d", time.gmtime(t))
        out.append(f'<text x="{x:.1f}" y="{bottom + 16}" text-anchor="middle">{day}</text>')
    for decade in range(r_lo, r_hi + 1) if ranks else ():
        y = rank_y(10.0**decade)
        out.append(f'<text x="{right + 6}" y="{y + 4:.1f}" fill="#3a883a">{10**decade:,}</text>')
    legend_x = LEFT
    for s in SERIES:
        pts = data[s.key]
        shown = sum(1 for _, v in pts if v is not None)
        d = _path(pts, x=sx, y=rank_y if s.rank_axis else price_y, end=x1)
        width = s.width
        out.append(
            f'<path class="series" data-series="{s.key}" d="{d}" fill="none" '
            f'stroke="{s.colour}" stroke-width="{width}"/>'
        )
        out.append(
            f'<rect x="{legend_x}" y="12" width="12" height="12" fill="{s.colour}"/>'
            f'<text x="{legend_x + 16}" y="22">{s.label} ({shown} points)</text>'
        )
        legend_x += 170
    out.append("</svg>")
    return "".join(out)
