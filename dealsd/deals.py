"""`dealsd deals`: the best deals now, as a table, CSV or JSON, read from the database.

The database is opened read-only (``mode=ro``): in WAL mode this never blocks
the running daemon and always sees its last committed writes. NULL means
unknown (docs/schema.md) and is shown blank, never as 0.

``FIELDS`` is the one place that names the `deals` columns this view shows,
filters and sorts by; every other part (the query, the filters, the sort
orders, the CSV and JSON keys, the web view's canned queries) goes through
the field keys, so a schema change is an edit of that table alone.

Exit status (dealsd.exits): 0 even when no deal matches, 2 no database, an
unreadable one or a bad config, 64 a filter this database cannot apply.
"""

from __future__ import annotations

import argparse
import csv
import html
import json
import sqlite3
import sys
import time
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Literal, NamedTuple, TextIO

from dealsd.exits import EX_OK, EX_USAGE, EXIT_NO_DATABASE
from dealsd.marketplaces import SQL_PER_UNIT, show, units

Kind = Literal["text", "cents", "pct", "count", "time"]
Output = Literal["table", "csv", "json"]


# NamedTuples, not dataclasses: importing dataclasses (and inspect with it)
# is a sixth of this command's start-up.
class Field(NamedTuple):
    """One column of the view: its key (CSV/JSON), its header and where it comes from."""

    key: str
    header: str
    sql: str  # an expression over `deals`
    kind: Kind
    shown: bool = True  # in the terminal table (CSV and JSON carry every field)


# The table (schema v2: buy price with shipping, all-in cost, fees and ROI
# are stored by the estimate, dealsd/estimate.py). Sales per month: Amazon's
# "bought in past month" where Keepa has it, else the estimate from the
# sales rank drops (docs/schema.md).
FIELDS: tuple[Field, ...] = (
    Field("asin", "ASIN", "asin", "text"),
    Field("domain_id", "domain", "domain_id", "count", shown=False),
    Field("title", "title", "title", "text"),
    Field("buy", "buy", "buy_price_cents", "cents"),
    Field("all_in", "all in", "all_in_cost_cents", "cents", shown=False),
    Field("fees", "fees", "fees_cents", "cents", shown=False),
    Field("sale", "sale", "expected_sale_cents", "cents"),
    Field("profit", "profit", "profit_cents", "cents"),
    Field("roi_pct", "ROI", "roi_pct", "pct"),
    Field("margin_pct", "margin", "margin_pct", "pct", shown=False),
    Field("sales_rank", "rank", "current_sales_rank", "count"),
    Field("sales_per_month", "sold/mo", "coalesce(monthly_sold, est_sales_per_month)", "count"),
    Field("category", "category", "root_category", "count", shown=False),
    Field("updated_at", "age", "keepa_last_update", "time"),
    Field("first_seen_at", "first seen", "first_seen_at", "time", shown=False),
    # The money fields' currency (dealsd.marketplaces): shown in the table
    # only when the rows are in more than one.
    Field("currency", "cur", "currency", "text", shown=False),
)
FIELD_KEYS: tuple[str, ...] = tuple(f.key for f in FIELDS)

# --sort NAME -> (field key, descending). NULLs always come last.
SORTS: Mapping[str, tuple[str, bool]] = {
    "profit": ("profit", True),
    "roi": ("roi_pct", True),
    "margin": ("margin_pct", True),
    "rank": ("sales_rank", False),
    "new": ("first_seen_at", True),
}
DEFAULT_SORT = "profit"
DEFAULT_LIMIT = 20
TITLE_WIDTH = 48

class Filters(NamedTuple):
    """What `dealsd deals` selects; each None is "no limit" (the alert rules' names)."""

    min_profit: float | None = None  # in currency units, each deal's own (5 = $5.00 or ¥5)
    min_roi_pct: float | None = None
    max_sales_rank: int | None = None
    categories: tuple[int, ...] = ()
    selection: str | None = None
    sort: str = DEFAULT_SORT
    limit: int = DEFAULT_LIMIT


class FilterUnsupported(Exception):
    """A filter the database cannot apply (e.g. --selection before selections exist)."""


def view_sql() -> str:
    """The view's rows as one SELECT over `deals`, each field aliased by its key."""
    return f"SELECT {', '.join(f'{f.sql} AS {f.key}' for f in FIELDS)} FROM deals"


def _has_table(conn: sqlite3.Connection, name: str) -> bool:
    row = conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (name,))
    return row.fetchone() is not None


def build_query(conn: sqlite3.Connection, f: Filters) -> tuple[str, list[object]]:
    """The SQL and parameters for ``f``; raises FilterUnsupported."""
    where: list[str] = []
    args: list[object] = []
    if f.min_profit is not None:
        where.append(f"profit >= ? * {SQL_PER_UNIT}")
        args.append(f.min_profit)
    if f.min_roi_pct is not None:
        where.append("roi_pct >= ?")
        args.append(f.min_roi_pct)
    if f.max_sales_rank is not None:
        where.append("sales_rank <= ?")
        args.append(f.max_sales_rank)
    if f.categories:
        where.append(f"category IN ({', '.join('?' * len(f.categories))})")
        args.extend(f.categories)
    if f.selection is not None:
        # Selections are recorded per deal from the multi-selection issue (16)
        # on; until then every deal comes from the one configured selection,
        # and silently ignoring the filter would show deals it does not select.
        if not _has_table(conn, "deal_selections"):
            raise FilterUnsupported(
                f"--selection {f.selection}: this database records no selections yet "
                "(no deal_selections table): all its deals come from the one "
                "[upserter.selection] of the config; leave out --selection"
            )
        where.append(
            "(domain_id, asin) IN (SELECT domain_id, asin FROM deal_selections WHERE selection = ?)"
        )
        args.append(f.selection)
    key, desc = SORTS[f.sort]
    order = f"{key} {'DESC' if desc else 'ASC'} NULLS LAST, asin, domain_id"
    sql = f"SELECT * FROM ({view_sql()})"
    if where:
        sql += " WHERE " + " AND ".join(where)
    sql += f" ORDER BY {order} LIMIT ?"
    args.append(f.limit)
    return sql, args


def connect_ro(db_path: Path) -> sqlite3.Connection:
    """A read-only connection (``mode=ro``); raises FileNotFoundError with no file."""
    if not db_path.is_file():
        raise FileNotFoundError(f"no database at {db_path}")
    # as_uri() escapes '?', '#' and '%' in the path, which a bare "file:" would not.
    return sqlite3.connect(f"{db_path.resolve().as_uri()}?mode=ro", uri=True, timeout=5.0)


def fetch(db_path: Path, f: Filters) -> list[dict[str, object]]:
    """The selected deals, best first, each a dict keyed by FIELD_KEYS."""
    conn = connect_ro(db_path)
    try:
        sql, args = build_query(conn, f)
        cur = conn.execute(sql, args)
        names = [d[0] for d in cur.description]
        return [dict(zip(names, row, strict=True)) for row in cur]
    finally:
        conn.close()


def age(stamp: object, now: float) -> str:
    """A short age like ``45s``, ``12m``, ``3.5h``, ``2d``; blank when unknown."""
    if not isinstance(stamp, str):
        return ""
    try:
        # fromisoformat, not clock.parse_iso_utc: that one's strptime and
        # the clock's asyncio import cost more than this whole query.
        s = max(0.0, now - datetime.fromisoformat(stamp).timestamp())
    except ValueError:
        return ""
    if s < 120:
        return f"{s:.0f}s"
    if s < 7200:
        return f"{s // 60:.0f}m"
    if s < 172_800:
        return f"{s / 3600:.1f}h"
    return f"{s / 86400:.0f}d"


def _currency(row: Mapping[str, object]) -> str | None:
    cur = row.get("currency")
    return cur if isinstance(cur, str) else None


def cell(field: Field, value: object, now: float, currency: str | None = None) -> str:
    """A value as the terminal table shows it: NULL is blank."""
    if value is None:
        return ""
    if field.kind == "cents":
        return show(value, currency, symbol=False) if isinstance(value, int) else ""
    if field.kind == "pct":
        return f"{value:.1f}%" if isinstance(value, int | float) else ""
    if field.kind == "count":
        return f"{value:,}" if isinstance(value, int) else str(value)
    if field.kind == "time":
        return age(value, now)
    text = html.unescape(str(value)) if field.key == "title" else str(value)
    return text if len(text) <= TITLE_WIDTH else text[: TITLE_WIDTH - 1] + "…"


def export_value(field: Field, value: object, currency: str | None = None) -> object:
    """A value for CSV and JSON: money in currency units, titles unescaped, NULL as None."""
    if value is None:
        return None
    if field.kind == "cents" and isinstance(value, int):
        return units(value, currency)
    if field.kind == "pct" and isinstance(value, float):
        return round(value, 2)
    if field.key == "title":
        return html.unescape(str(value))
    return value


def render_table(rows: Sequence[Mapping[str, object]], *, now: float) -> str:
    several = len({_currency(r) for r in rows}) > 1
    shown = [f for f in FIELDS if f.shown or (several and f.key == "currency")]
    body = [[cell(f, r.get(f.key), now, _currency(r)) for f in shown] for r in rows]
    widths = [max([len(f.header), *(len(line[i]) for line in body)]) for i, f in enumerate(shown)]
    left = {"text"}

    def line(values: Sequence[str]) -> str:
        parts = [
            v.ljust(w) if f.kind in left else v.rjust(w)
            for f, v, w in zip(shown, values, widths, strict=True)
        ]
        return "  ".join(parts).rstrip()

    out = [line([f.header for f in shown]), line(["-" * w for w in widths])]
    out += [line(values) for values in body]
    return "\n".join(out)


def write_csv(rows: Sequence[Mapping[str, object]], out: TextIO) -> None:
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(FIELD_KEYS)
    for r in rows:
        values = (export_value(f, r.get(f.key), _currency(r)) for f in FIELDS)
        writer.writerow("" if v is None else v for v in values)


def to_json(rows: Sequence[Mapping[str, object]]) -> str:
    docs = [{f.key: export_value(f, r.get(f.key), _currency(r)) for f in FIELDS} for r in rows]
    return json.dumps(docs, indent=2, ensure_ascii=False)


def run_deals(
    db_path: Path,
    filters: Filters,
    *,
    output: Output = "table",
    out: TextIO | None = None,
    now: float | None = None,
) -> int:
    """Print the deals ``filters`` selects from ``db_path``; return the exit status."""
    out = out if out is not None else sys.stdout
    now = time.time() if now is None else now
    try:
        rows = fetch(db_path, filters)
    except (FileNotFoundError, FilterUnsupported, sqlite3.DatabaseError) as exc:
        # A missing column (a schema this version does not know) lands here too.
        why = f"cannot read {db_path}: {exc}" if isinstance(exc, sqlite3.Error) else str(exc)
        print(f"dealsd deals: {why}", file=sys.stderr)
        return EX_USAGE if isinstance(exc, FilterUnsupported) else EXIT_NO_DATABASE
    if output == "csv":
        write_csv(rows, out)
    elif output == "json":
        print(to_json(rows), file=out)
    elif rows:
        print(render_table(rows, now=now), file=out)
        if filters.sort == "profit" and len({_currency(r) for r in rows}) > 1:
            # No exchange rates here: ¥500 ranks beside $5.00 as if equal.
            print("dealsd deals: several currencies: profit ranks their amounts as if equal; "
                  "--sort roi compares them fairly", file=sys.stderr)  # fmt: skip
    else:
        print("no deals match", file=out)
    return EX_OK


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    """`dealsd deals` arguments (the flags mirror the alert rules' names)."""
    p = argparse.ArgumentParser(prog="dealsd deals", description="The best deals now.")
    p.add_argument("--config", help="config file naming the database")
    p.add_argument("--database", help="read this database directly instead")
    p.add_argument("--min-profit", type=float, metavar="AMOUNT",
                   help="profit at least this, in each deal's currency units (5 = 5.00; yen: 5)")
    p.add_argument("--min-roi", type=float, metavar="PCT", help="ROI at least PCT percent")
    p.add_argument("--max-rank", type=int, metavar="RANK", help="sales rank at most RANK")
    p.add_argument("--category", type=int, action="append", metavar="ID", default=[],
                   help="root category id (repeat for several)")
    p.add_argument("--selection", metavar="NAME", help="only deals of this selection")
    p.add_argument("--sort", choices=sorted(SORTS), default=DEFAULT_SORT,
                   help=f"order, best first; unknown values last (default {DEFAULT_SORT})")
    p.add_argument("--limit", type=_positive, default=DEFAULT_LIMIT,
                   help=f"at most this many deals (default {DEFAULT_LIMIT})")  # fmt: skip
    fmt = p.add_mutually_exclusive_group()
    fmt.add_argument("--csv", action="store_true", help="CSV for spreadsheets")
    fmt.add_argument("--json", action="store_true", help="a JSON list for scripts")
    return p.parse_args(argv)
