"""The deal feed: /deal rows into ``deals``, the checkpoints the upserter resumes from.

Also which selections saw a deal (``deal_selections``, written with the rows)
and the token ledger's row of each paid request, /deal or /product. The
query conventions (no commits, checked column names) are in ``store.sql``.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from dealsd.estimate import CURRENT_PRICE_COLUMN, LANDED_PRICE_COLUMN
from dealsd.store import schema
from dealsd.store.sql import check_columns, chunks, writable_deal_columns

# What a /deal page updates: the mapping's deal row, less the key and the
# seen-stamp, which the upsert handles itself. One list, in the schema.
DEAL_FEED_COLUMNS: tuple[str, ...] = tuple(
    c for c in schema.DEAL_COLUMNS if c not in ("asin", "last_seen_at")
)

# Feed columns follow the newest Keepa data only: a page fetched later that
# carries an older snapshot of a deal (paging while deals change) must not
# roll the row back. last_seen_at moves forward whatever the data's age.
_NEWER = (
    "(deals.keepa_last_update IS NULL OR excluded.keepa_last_update >= deals.keepa_last_update)"
)
# Keepa's lowest price with shipping (bought with `offers`, so rarely) is that
# of the offers when it was bought. Once the deal's own price of that type
# moves, it describes offers that are gone: after a drop it stays above the
# new price, so the estimate would go on buying at the old price for good (no
# lower profit, no price-drop alert; a refresh does not buy offers again). It
# is forgotten then, and the estimate's buy price is the deal's price plus
# `[profit] buy_shipping_cents`, as for a product bought without offers.
# (SET expressions read the row as it was before this update.)
_STALE_LANDED = tuple(
    f"{landed} = CASE WHEN {_NEWER} AND excluded.{CURRENT_PRICE_COLUMN[pt]} IS NOT "
    f"deals.{CURRENT_PRICE_COLUMN[pt]} THEN NULL ELSE deals.{landed} END"
    for pt, landed in LANDED_PRICE_COLUMN.items()
)
# Positional parameters: binding a tuple is measurably cheaper than a dict
# of names, and this statement runs once per deal (see bench/writer.py).
UPSERT_DEAL_COLUMNS: tuple[str, ...] = ("asin", *DEAL_FEED_COLUMNS, "first_seen_at", "last_seen_at")
UPSERT_DEAL_SQL = (
    f"INSERT INTO deals ({', '.join(UPSERT_DEAL_COLUMNS)}) "
    f"VALUES ({', '.join('?' * len(UPSERT_DEAL_COLUMNS))}) "
    "ON CONFLICT (domain_id, asin) DO UPDATE SET "
    + ", ".join(
        f"{c} = CASE WHEN {_NEWER} THEN excluded.{c} ELSE deals.{c} END"
        for c in DEAL_FEED_COLUMNS
        if c != "domain_id"  # part of the key: a conflict means it is equal
    )
    + ", last_seen_at = max(deals.last_seen_at, excluded.last_seen_at), "
    + ", ".join(_STALE_LANDED)
)


def upsert_params(asin: str, row: Mapping[str, object], now: str) -> tuple[object, ...]:
    """The UPSERT_DEAL_SQL parameters of one feed row."""
    get = row.get
    return (asin, *[get(c) for c in DEAL_FEED_COLUMNS], now, get("last_seen_at") or now)


@dataclass(frozen=True, slots=True)
class UpsertCounts:
    new: int
    updated: int


def _merge(rows: Sequence[Mapping[str, object]]) -> dict[str, Mapping[str, object]]:
    """One row per asin: the newest keepa_last_update wins (later rows win ties)."""
    merged: dict[str, Mapping[str, object]] = {}
    for row in rows:
        asin = str(row["asin"])
        old = merged.get(asin)
        if old is not None and str(old.get("keepa_last_update") or "") > str(
            row.get("keepa_last_update") or ""
        ):
            continue
        merged[asin] = row
    return merged


def upsert_deals(
    conn: sqlite3.Connection,
    rows: Sequence[Mapping[str, object]],
    *,
    checkpoints: Mapping[str, str],
    now: str,
    recompute: Callable[[sqlite3.Row], Mapping[str, object]] | None = None,
    selection: str | None = None,
) -> UpsertCounts:
    """Insert or update deals from the feed, and save ``checkpoints`` with them.

    ``rows`` carry the feed columns (``DEAL_FEED_COLUMNS`` plus ``asin`` and
    ``last_seen_at``, which defaults to ``now``), all of one marketplace (one
    /deal page is one domain). ``first_seen_at`` is set on insert only;
    backfill, stats and estimate columns are left alone, except that a price
    with shipping whose deal price moved is forgotten (``_STALE_LANDED``) and
    that for an updated row already backfilled ``recompute(row)`` (the row as
    it now is) may return columns to write, e.g. the profit estimate. ``selection``
    records which selection saw them (``deal_selections``).
    """
    domains = {int(str(r.get("domain_id") or 1)) for r in rows}
    if len(domains) > 1:
        raise ValueError(f"upsert_deals takes one marketplace at a time, got {sorted(domains)}")
    domain = domains.pop() if domains else 1
    if len(rows) == 1:
        counts = _upsert_one(conn, rows[0], domain, now=now, recompute=recompute)
    else:
        counts = _upsert_many(conn, rows, domain, now=now, recompute=recompute)
    if selection is not None and rows:
        conn.executemany(
            _SEEN_BY_SQL,
            [
                (domain, str(r["asin"]), selection, now, r.get("last_seen_at") or now)
                for r in rows
            ],
        )
    if checkpoints:
        set_checkpoints(conn, checkpoints, now)
    return counts


_SEEN_BY_SQL = (
    "INSERT INTO deal_selections (domain_id, asin, selection, first_seen_at, last_seen_at) "
    "VALUES (?, ?, ?, ?, ?) ON CONFLICT (domain_id, asin, selection) DO UPDATE SET "
    "last_seen_at = max(deal_selections.last_seen_at, excluded.last_seen_at)"
)


def _upsert_many(
    conn: sqlite3.Connection,
    rows: Sequence[Mapping[str, object]],
    domain: int,
    *,
    now: str,
    recompute: Callable[[sqlite3.Row], Mapping[str, object]] | None,
) -> UpsertCounts:
    merged = _merge(rows)
    existing: dict[str, bool] = {}
    for chunk in chunks(list(merged)):
        marks = ",".join("?" * len(chunk))
        for asin, backfilled in conn.execute(
            "SELECT asin, backfilled_at IS NOT NULL FROM deals "
            f"WHERE domain_id = ? AND asin IN ({marks})",
            [domain, *chunk],
        ):
            existing[asin] = bool(backfilled)
    params = [upsert_params(asin, row, now) for asin, row in merged.items()]
    if len(params) == 1:
        conn.execute(UPSERT_DEAL_SQL, params[0])
    else:
        conn.executemany(UPSERT_DEAL_SQL, params)
    if recompute is not None:
        _recompute(conn, domain, [a for a, b in existing.items() if b], recompute)
    return UpsertCounts(new=len(merged) - len(existing), updated=len(existing))


_ONE_NEW, _ONE_UPDATED = UpsertCounts(1, 0), UpsertCounts(0, 1)  # frozen: shared
_EXISTS_SQL = "SELECT backfilled_at IS NOT NULL FROM deals WHERE domain_id = ? AND asin = ?"


def _upsert_one(
    conn: sqlite3.Connection,
    row: Mapping[str, object],
    domain: int,
    *,
    now: str,
    recompute: Callable[[sqlite3.Row], Mapping[str, object]] | None,
) -> UpsertCounts:
    """``upsert_deals`` of one row: no merge, no IN list, no new counts object.

    The existence check stays a statement: an UPSERT's RETURNING sees only the
    row as it ends up, which cannot tell an insert from an update exactly.
    """
    asin = str(row["asin"])
    found = conn.execute(_EXISTS_SQL, (domain, asin)).fetchone()
    conn.execute(UPSERT_DEAL_SQL, upsert_params(asin, row, now))
    if recompute is not None and found is not None and found[0]:
        _recompute(conn, domain, [asin], recompute)
    return _ONE_NEW if found is None else _ONE_UPDATED


def _recompute(
    conn: sqlite3.Connection,
    domain: int,
    asins: Sequence[str],
    recompute: Callable[[sqlite3.Row], Mapping[str, object]],
) -> None:
    allowed = writable_deal_columns()
    for chunk in chunks(asins):
        cur = conn.cursor()
        cur.row_factory = sqlite3.Row
        marks = ",".join("?" * len(chunk))
        found = cur.execute(
            f"SELECT * FROM deals WHERE domain_id = ? AND asin IN ({marks})", [domain, *chunk]
        ).fetchall()
        for row in found:
            cols = dict(recompute(row))
            if not cols:
                continue
            names = check_columns(cols, allowed, "deals")
            sets = ", ".join(f"{n} = ?" for n in names)
            conn.execute(
                f"UPDATE deals SET {sets} WHERE domain_id = ? AND asin = ?",
                [*cols.values(), domain, row["asin"]],
            )


def set_checkpoints(conn: sqlite3.Connection, items: Mapping[str, str], now: str) -> None:
    """Save named values (upserter watermark, page cursor) with their time."""
    conn.executemany(
        "INSERT INTO checkpoints (name, value, updated_at) VALUES (?, ?, ?) "
        "ON CONFLICT (name) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at",
        [(k, v, now) for k, v in items.items()],
    )


def get_checkpoints(conn: sqlite3.Connection) -> dict[str, str]:
    return {str(n): str(v) for n, v in conn.execute("SELECT name, value FROM checkpoints")}


def selections_of(conn: sqlite3.Connection, domain_id: int, asin: str) -> list[str]:
    """The selections that have matched this deal (``deal_selections``)."""
    cur = conn.execute(
        "SELECT selection FROM deal_selections WHERE domain_id = ? AND asin = ?",
        (domain_id, asin),
    )
    return [str(r[0]) for r in cur.fetchall()]


def record_tokens(
    conn: sqlite3.Connection,
    *,
    at: str,
    consumer: str,
    endpoint: str,
    items: int,
    tokens: int,
    kind: str | None = None,
) -> None:
    """One ledger row per paid request; ``kind``: the stage (backfill, refresh, detail)."""
    conn.execute(
        "INSERT INTO token_ledger (at, consumer, endpoint, items, tokens, kind) "
        "VALUES (?, ?, ?, ?, ?, ?)",
        (at, consumer, endpoint, items, tokens, kind),
    )
