"""dealsd's Datasette plugin: a deal's page gets its price chart and links.

Registered by ``dealsd.web.app`` on the Datasette it builds (not through an
entry point, so a Datasette serving other files never loads it). The chart
is drawn from ``product_history.payload`` with the project's own decoders;
the database is only read.
"""

from __future__ import annotations

import sqlite3
import zlib
from collections.abc import Awaitable, Callable
from html import escape
from typing import Any, TypeVar, cast

from datasette import hookimpl as _hookimpl
from datasette.utils import tilde_encode, urlsafe_components
from markupsafe import Markup

from dealsd.keepa.payloads import PayloadError, decode_history
from dealsd.marketplaces import amazon_url, currency, keepa_url
from dealsd.web.chart import render_svg
from dealsd.web.metadata import DATABASE

F = TypeVar("F", bound=Callable[..., Any])


def hookimpl(fn: F) -> F:
    """Datasette's (untyped) hook marker, keeping the function's type."""
    return cast(F, _hookimpl(fn))


PANEL_SQL = (
    "SELECT d.domain_id, d.asin, h.payload, h.fetched_at FROM deals d "
    "LEFT JOIN product_history h ON h.domain_id = d.domain_id AND h.asin = d.asin "
    "WHERE d.domain_id = ? AND d.asin = ?"
)


def _links(domain_id: object, asin: str) -> str:
    links = [(url, label) for url, label in ((amazon_url(domain_id, asin), "Amazon"),
             (keepa_url(domain_id, asin), "Keepa")) if url]  # fmt: skip
    return " · ".join(
        f'<a href="{escape(url)}" rel="noreferrer">{label}</a>' for url, label in links
    )


def panel_html(domain_id: object, asin: str, payload: object, fetched_at: object) -> str:
    """The links and the chart (or why there is none) for one deal."""
    head = f'<section class="dealsd-deal"><h2>Price history</h2><p>{_links(domain_id, asin)}</p>'
    if not isinstance(payload, bytes):
        return head + "<p>No history yet: this deal has not been backfilled.</p></section>"
    try:
        history = decode_history(zlib.decompress(payload))
    except (zlib.error, PayloadError) as exc:
        return head + f"<p>The stored history cannot be read: {escape(str(exc))}</p></section>"
    note = f"<p>Fetched {escape(str(fetched_at))} (UTC).</p>" if fetched_at else ""
    return head + render_svg(history, currency=currency(domain_id)) + note + "</section>"


@hookimpl
def prepare_connection(conn: sqlite3.Connection, database: str) -> None:
    """Each read connection: autocommit, and refusing writes before SQLite does.

    Python's sqlite3 otherwise opens a transaction (an implicit BEGIN) before
    any DELETE/INSERT/UPDATE. On a read-only connection the statement then
    fails but the transaction stays open, and every later page served by that
    connection reads the snapshot of that moment: the daemon's new deals
    never appear (seen in tests/test_web.py with a refused `?sql=DELETE`).
    """
    if database != DATABASE:
        return
    conn.isolation_level = None
    conn.execute("PRAGMA query_only = 1")


@hookimpl
def extra_template_vars(
    view_name: str, table: str | None, database: str | None, request: Any, datasette: Any
) -> Callable[[], Awaitable[dict[str, Any]]] | dict[str, Any]:
    if view_name != "row" or database != DATABASE or table != "deals" or request is None:
        return {}

    async def inner() -> dict[str, Any]:
        key = urlsafe_components(request.url_vars["pks"])  # (domain_id, asin)
        if len(key) != 2:
            return {"dealsd_panel": ""}
        result = await datasette.get_database(database).execute(PANEL_SQL, key)
        row = result.first()
        if row is None:
            return {"dealsd_panel": ""}
        html = panel_html(row["domain_id"], row["asin"], row["payload"], row["fetched_at"])
        return {"dealsd_panel": Markup(html)}

    return inner


def _domain(row: Any) -> object:
    try:
        return row["domain_id"]
    except (KeyError, IndexError, TypeError):
        return None


@hookimpl
def render_cell(
    row: Any, value: object, column: str, table: str | None, database: str | None, datasette: Any
) -> Markup | None:
    if database != DATABASE:
        return None
    domain = _domain(row)
    if column == "asin" and table is None and isinstance(value, str) and isinstance(domain, int):
        # Canned query results: the ASIN opens the deal's page (with its chart).
        key = f"{domain},{tilde_encode(value)}"
        href = f"{datasette.urls.table(DATABASE, 'deals')}/{key}"
        return Markup(f'<a href="{escape(href)}">{escape(value)}</a>')
    if column == "payload" and table == "product_history" and isinstance(value, bytes):
        return Markup(f"{len(value) / 1024:,.0f} KB of zlib-compressed Keepa JSON")
    return None
