"""Every query the daemon and ``dealsd status`` run, as plain functions.

Each takes a ``sqlite3.Connection`` and is called inside ``store.write(fn)``
(the writer's group transaction: no function here commits) or
``store.read(fn)``. They work whatever the connection's ``row_factory``.
Column names are checked against the schema, so a misspelt column raises
instead of silently writing nothing (docs/field-notes.md #8).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from dealsd.store import schema
from dealsd.timefmt import iso_utc

# What a /deal page updates: the mapping's deal row, less the key and the
# seen-stamp, which the upsert handles itself. One list, in the schema.
DEAL_FEED_COLUMNS: tuple[str, ...] = tuple(
    c for c in schema.DEAL_COLUMNS if c not in ("asin", "last_seen_at")
)
_NEVER_WRITTEN_BY_COLUMNS = frozenset({"asin", "first_seen_at"})
_WORKER_COLUMNS = frozenset(
    {"name", "state", "detail", "last_progress_at", "progress_total", "restarts",
     "last_error", "last_error_at", "updated_at"}
)  # fmt: skip
_DAEMON_COLUMNS = frozenset(
    {"pid", "started_at", "heartbeat_at", "stopped_at", "healthy", "snapshot"}
)
BACKFILLER = "backfiller"  # the consumer whose ledger gives the cost per product
_CHUNK = 500  # host parameters per IN (...) list, well under SQLite's limit

# Feed columns follow the newest Keepa data only: a page fetched later that
# carries an older snapshot of a deal (paging while deals change) must not
# roll the row back. last_seen_at moves forward whatever the data's age.
_NEWER = (
    "(deals.keepa_last_update IS NULL OR excluded.keepa_last_update >= deals.keepa_last_update)"
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
    + ", last_seen_at = max(deals.last_seen_at, excluded.last_seen_at)"
)


def upsert_params(asin: str, row: Mapping[str, object], now: str) -> tuple[object, ...]:
    """The UPSERT_DEAL_SQL parameters of one feed row."""
    get = row.get
    return (asin, *[get(c) for c in DEAL_FEED_COLUMNS], now, get("last_seen_at") or now)


@dataclass(frozen=True, slots=True)
class UpsertCounts:
    new: int
    updated: int


@dataclass(frozen=True, slots=True)
class PendingRow:
    """A deal to fetch from /product, with the prices that set its buy cost."""

    asin: str
    current_amazon_cents: int | None
    current_new_cents: int | None
    current_used_cents: int | None
    domain_id: int = 1


def _key(domain_id: int | None, asin: str) -> tuple[str, list[object]]:
    """WHERE text and parameters for one deal: (domain_id, asin), or the ASIN alone.

    ``domain_id`` None is the one-marketplace form (a database of one domain,
    as tests and the tools of v1 write it); the daemon always names the domain.
    """
    if domain_id is None:
        return "asin = ?", [asin]
    return "domain_id = ? AND asin = ?", [domain_id, asin]


def _writable_deal_columns() -> frozenset[str]:
    return frozenset(schema.table_columns("deals")) - _NEVER_WRITTEN_BY_COLUMNS


def _check(names: Iterable[str], allowed: Iterable[str], table: str) -> list[str]:
    names = list(names)
    unknown = sorted(set(names) - set(allowed))
    if unknown:
        raise ValueError(f"unknown {table} column(s): {', '.join(unknown)}")
    return names


def _dicts(cur: sqlite3.Cursor) -> list[dict[str, Any]]:
    names = [d[0] for d in cur.description]
    return [dict(zip(names, tuple(row), strict=True)) for row in cur.fetchall()]


def _chunks(items: Sequence[str]) -> Iterable[Sequence[str]]:
    for i in range(0, len(items), _CHUNK):
        yield items[i : i + _CHUNK]


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
    backfill, stats and estimate columns are left alone, except that for an
    updated row already backfilled ``recompute(row)`` (the row as it now is)
    may return columns to write, e.g. the profit estimate. ``selection``
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
    for chunk in _chunks(list(merged)):
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
    allowed = _writable_deal_columns()
    for chunk in _chunks(asins):
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
            names = _check(cols, allowed, "deals")
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


_PENDING_COLS = "asin, current_amazon_cents, current_new_cents, current_used_cents, domain_id"


def _one_domain(domain_id: int | None) -> tuple[str, tuple[object, ...]]:
    return ("", ()) if domain_id is None else ("AND domain_id = ? ", (domain_id,))


@dataclass(frozen=True, slots=True)
class Screen:
    """The funnel's thresholds on the screen; None: no threshold."""

    min_profit_cents: int | None = None
    min_roi_pct: float | None = None

    def passes_sql(self) -> tuple[str, tuple[object, ...]]:
        """A WHERE fragment true for deals whose screen passes (or is unknown: no
        screen can say it is below), and its parameters."""
        return (
            "(? IS NULL OR screen_profit_cents IS NULL OR screen_profit_cents >= ?) "
            "AND (? IS NULL OR screen_roi_pct IS NULL OR screen_roi_pct >= ?)",
            (self.min_profit_cents, self.min_profit_cents, self.min_roi_pct, self.min_roi_pct),
        )


NO_SCREEN = Screen()  # frozen: one shared default
BY_SCREEN, BY_NEWEST = "screen", "newest"
_QUEUE_ORDER = {BY_SCREEN: "screen_profit_cents DESC", BY_NEWEST: "keepa_last_update DESC"}


def pending_backfill(
    conn: sqlite3.Connection,
    *,
    now: str,
    max_attempts: int,
    limit: int,
    screen: Screen = NO_SCREEN,
    below: bool = False,
    order: str = BY_SCREEN,
    domain_id: int | None = None,
) -> list[PendingRow]:
    """Never-backfilled deals due now (of one domain if named): those whose screen passes
    ``screen`` (``below``: those below it), best screen profit first (unknown last), or
    ``order`` newest."""
    passes, params = screen.passes_sql()
    where, args = _one_domain(domain_id)
    cur = conn.execute(
        f"SELECT {_PENDING_COLS} FROM deals "
        "WHERE backfilled_at IS NULL "
        "AND (backfill_retry_at IS NULL OR backfill_retry_at <= ?) AND backfill_attempts < ? "
        f"AND {'NOT' if below else ''} ({passes}) {where}"
        f"ORDER BY {_QUEUE_ORDER[order]} LIMIT ?",
        (now, max_attempts, *params, *args, limit),
    )
    return [PendingRow(*tuple(r)) for r in cur.fetchall()]


def detail_due(
    conn: sqlite3.Connection, *, min_profit_cents: int, limit: int, domain_id: int | None = None
) -> list[PendingRow]:
    """Backfilled deals never detailed whose full estimate reaches ``min_profit_cents``,
    best first (of one domain if named): the second tier's candidates."""
    where, args = _one_domain(domain_id)
    cur = conn.execute(
        f"SELECT {_PENDING_COLS} FROM deals WHERE backfilled_at IS NOT NULL "
        f"AND detailed_at IS NULL AND profit_cents >= ? {where}"
        "ORDER BY profit_cents DESC LIMIT ?",
        (min_profit_cents, *args, limit),
    )
    return [PendingRow(*tuple(r)) for r in cur.fetchall()]


def due_refresh(
    conn: sqlite3.Connection, *, older_than: str, limit: int, domain_id: int | None = None
) -> list[PendingRow]:
    """Backfilled deals whose data (refresh, else backfill) is older than ``older_than``.

    Oldest first (of one domain if named).
    """
    where, args = _one_domain(domain_id)
    cur = conn.execute(
        f"SELECT {_PENDING_COLS} FROM deals WHERE backfilled_at IS NOT NULL "
        f"AND COALESCE(refreshed_at, backfilled_at) < ? {where}"
        "ORDER BY COALESCE(refreshed_at, backfilled_at) LIMIT ?",
        (older_than, *args, limit),
    )
    return [PendingRow(*tuple(r)) for r in cur.fetchall()]


def store_product(
    conn: sqlite3.Connection,
    *,
    asin: str,
    fetched_at: str,
    keepa_last_update: str | None,
    tokens_spent: int,
    payload_zlib: bytes | None,
    columns: Mapping[str, object],
    domain_id: int | None = None,
) -> bool:
    """Write a product's derived columns (and its history when ``payload_zlib``).

    The caller puts ``backfilled_at`` or ``refreshed_at`` in ``columns``. Clears
    any backfill error and retry time. False, writing nothing, when the deal
    is gone (pruned while its product was being fetched).
    """
    names = _check(columns, _writable_deal_columns(), "deals")
    sets = [f"{n} = ?" for n in names] + ["backfill_error = NULL", "backfill_retry_at = NULL"]
    where, key = _key(domain_id, asin)
    sql = f"UPDATE deals SET {', '.join(sets)} WHERE {where}"
    cur = conn.execute(sql, [*columns.values(), *key])
    if cur.rowcount == 0:
        return False
    if payload_zlib is not None:
        # The history takes its deal's key (domain_id from the deal row).
        conn.execute(
            "INSERT INTO product_history (domain_id, asin, fetched_at, keepa_last_update, "
            f"tokens_spent, payload) SELECT domain_id, asin, ?, ?, ?, ? FROM deals WHERE {where} "
            "ON CONFLICT (domain_id, asin) DO UPDATE SET "
            "fetched_at = excluded.fetched_at, keepa_last_update = excluded.keepa_last_update, "
            "tokens_spent = excluded.tokens_spent, payload = excluded.payload",
            (fetched_at, keepa_last_update, tokens_spent, payload_zlib, *key),
        )
    return True


def deal_by_asin(
    conn: sqlite3.Connection, asin: str, domain_id: int | None = None
) -> dict[str, Any] | None:
    """The whole `deals` row of ``asin`` as a dict, None if there is none."""
    where, key = _key(domain_id, asin)
    rows = _dicts(conn.execute(f"SELECT * FROM deals WHERE {where}", key))
    return rows[0] if rows else None


def selections_of(conn: sqlite3.Connection, domain_id: int, asin: str) -> list[str]:
    """The selections that have matched this deal (``deal_selections``)."""
    cur = conn.execute(
        "SELECT selection FROM deal_selections WHERE domain_id = ? AND asin = ?",
        (domain_id, asin),
    )
    return [str(r[0]) for r in cur.fetchall()]


def record_backfill_failure(
    conn: sqlite3.Connection, *, asin: str, reason: str, retry_at: str | None, now: str,
    domain_id: int | None = None,
) -> int:  # fmt: skip
    """Count a failed backfill; ``retry_at`` None means given up. Returns attempts (0: no deal).

    ``now`` is not stored by the schema (the failure time is the writer's
    commit time); it stays in the signature so a later column needs no
    change at the callers.
    """
    del now
    where, key = _key(domain_id, asin)
    row = conn.execute(
        "UPDATE deals SET backfill_attempts = backfill_attempts + 1, backfill_error = ?, "
        f"backfill_retry_at = ? WHERE {where} RETURNING backfill_attempts",
        (reason, retry_at, *key),
    ).fetchone()
    return 0 if row is None else int(row[0])


def prune_stale(conn: sqlite3.Connection, *, older_than: str, limit: int) -> int:
    """Delete up to ``limit`` deals not seen since ``older_than`` (history cascades)."""
    cur = conn.execute(
        # By rowid: exactly the rows chosen, whatever marketplace shares an ASIN.
        "DELETE FROM deals WHERE rowid IN (SELECT rowid FROM deals WHERE last_seen_at < ? "
        "ORDER BY last_seen_at LIMIT ?)",
        (older_than, limit),
    )
    return cur.rowcount


def prune_unseen_by(conn: sqlite3.Connection, *, older_than: str, limit: int) -> int:
    """Forget up to ``limit`` selection matches not seen since ``older_than``.

    The deal itself goes with ``prune_stale`` once no selection saw it (its
    ``last_seen_at`` is the latest of theirs); a match alone ages out here,
    so a removed selection stops being named on deals others still see.
    """
    cur = conn.execute(
        "DELETE FROM deal_selections WHERE (domain_id, asin, selection) IN "
        "(SELECT domain_id, asin, selection FROM deal_selections "
        "WHERE last_seen_at < ? ORDER BY last_seen_at LIMIT ?)",
        (older_than, limit),
    )
    return cur.rowcount


def prune_checkpoints(conn: sqlite3.Connection, *, prefix: str, older_than: str) -> int:
    """Delete checkpoints named ``prefix``... not written since ``older_than``.

    A live selection writes its cursor every page, so what is this old
    belongs to a selection removed (or whose query changed) long ago.
    """
    cur = conn.execute(
        "DELETE FROM checkpoints WHERE substr(name, 1, ?) = ? AND updated_at < ?",
        (len(prefix), prefix, older_than),
    )
    return cur.rowcount


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


def prune_ledger(conn: sqlite3.Connection, *, older_than: str) -> int:
    return conn.execute("DELETE FROM token_ledger WHERE at < ?", (older_than,)).rowcount


def write_worker(conn: sqlite3.Connection, row: Mapping[str, object]) -> None:
    """Upsert one worker's row (needs name, state, updated_at); ``restarts`` is kept."""
    names = _check(row, _WORKER_COLUMNS, "workers")
    updates = ", ".join(f"{n} = excluded.{n}" for n in names if n != "name")
    conn.execute(
        f"INSERT INTO workers ({', '.join(names)}) VALUES ({', '.join('?' * len(names))}) "
        f"ON CONFLICT (name) DO UPDATE SET {updates}",
        list(row.values()),
    )


def forget_workers(conn: sqlite3.Connection, *, keep: Sequence[str]) -> int:
    """Delete the rows of workers not in ``keep`` (a selection removed on SIGHUP)."""
    if not keep:
        return 0
    marks = ",".join("?" * len(keep))
    return conn.execute(f"DELETE FROM workers WHERE name NOT IN ({marks})", list(keep)).rowcount


def bump_restarts(conn: sqlite3.Connection, name: str, now: str) -> None:
    conn.execute(
        "INSERT INTO workers (name, state, restarts, updated_at) VALUES (?, 'starting', 1, ?) "
        "ON CONFLICT (name) DO UPDATE SET restarts = restarts + 1, "
        "updated_at = excluded.updated_at",
        (name, now),
    )


def write_daemon(conn: sqlite3.Connection, row: Mapping[str, object]) -> None:
    """Upsert the single daemon row (id 1) with the given columns."""
    names = _check(row, _DAEMON_COLUMNS, "daemon")
    updates = ", ".join(f"{n} = excluded.{n}" for n in names) or "id = id"
    conn.execute(
        f"INSERT INTO daemon (id{''.join(', ' + n for n in names)}) "
        f"VALUES (1{', ?' * len(names)}) ON CONFLICT (id) DO UPDATE SET {updates}",
        list(row.values()),
    )


def _one(conn: sqlite3.Connection, sql: str, *params: object) -> Any:
    return conn.execute(sql, params).fetchone()[0]


def selection_counts(
    conn: sqlite3.Connection, *, now: float, workers: Mapping[str, str]
) -> dict[str, dict[str, int]]:
    """Per selection (name -> its worker): deals matched, /deal pages and tokens last hour.

    One indexed query each rather than a GROUP BY over the ledger, which
    would sort an hour of it every time status runs.
    """
    hour_ago = iso_utc(now - 3600)
    out: dict[str, dict[str, int]] = {}
    for name, worker in workers.items():
        pages, tokens = conn.execute(
            "SELECT coalesce(sum(items), 0), coalesce(sum(tokens), 0) FROM token_ledger "
            "WHERE at >= ? AND consumer = ? AND endpoint = 'deal'",
            (hour_ago, worker),
        ).fetchone()
        deals = _one(conn, "SELECT count(*) FROM deal_selections WHERE selection = ?", name)
        out[name] = {"deals": int(deals), "pages": int(pages), "tokens": int(tokens)}
    return out


def status_summary(conn: sqlite3.Connection, *, now: float) -> dict[str, Any]:
    """Everything ``dealsd status`` shows from the database; every query uses an index."""
    hour_ago, day_ago = iso_utc(now - 3600), iso_utc(now - 86400)
    gave_up_where = "backfill_attempts > 0 AND backfill_retry_at IS NULL"
    deals = {
        "total": _one(conn, "SELECT count(*) FROM deals"),
        "backfilled": _one(conn, "SELECT count(*) FROM deals WHERE backfilled_at IS NOT NULL"),
        "pending_backfill": _one(
            conn,
            f"SELECT count(*) FROM deals WHERE backfilled_at IS NULL AND NOT ({gave_up_where})",
        ),
        "gave_up": _one(
            conn,
            f"SELECT count(*) FROM deals WHERE backfilled_at IS NULL AND {gave_up_where}",
        ),
        "added_last_hour": _one(
            conn, "SELECT count(*) FROM deals WHERE first_seen_at >= ?", hour_ago
        ),
        "added_last_day": _one(
            conn, "SELECT count(*) FROM deals WHERE first_seen_at >= ?", day_ago
        ),
        "newest_keepa_update": _one(conn, "SELECT max(keepa_last_update) FROM deals"),
        # Products stored with a field that could not be read (kept, not lost).
        "unreadable_fields": _one(
            conn, "SELECT count(*) FROM deals WHERE unreadable_fields IS NOT NULL"
        ),
    }
    spent = _one(conn, "SELECT coalesce(sum(tokens), 0) FROM token_ledger WHERE at >= ?", hour_ago)
    tokens, items = tuple(
        conn.execute(
            "SELECT coalesce(sum(tokens), 0), coalesce(sum(items), 0) FROM token_ledger "
            "WHERE at >= ? AND consumer = ? AND endpoint = 'product'",
            (day_ago, BACKFILLER),
        ).fetchone()
    )
    daemon = _dicts(conn.execute("SELECT * FROM daemon WHERE id = 1"))
    return {
        "deals": deals,
        "tokens": {
            "spent_last_hour": int(spent),
            "per_product": round(tokens / items, 2) if items else None,
        },
        "workers": _dicts(conn.execute("SELECT * FROM workers ORDER BY name")),
        "daemon": daemon[0] if daemon else None,
    }


# The funnel's stages as the ledger names them: (endpoint, kind) -> stage.
STAGE_OF: Mapping[tuple[str, str | None], str] = {
    ("deal", None): "deals",
    ("product", "backfill"): "backfill",
    ("product", None): "backfill",  # rows written before schema v6
    ("product", "refresh"): "refresh",
    ("product", "detail"): "detail",
}


def funnel_summary(
    conn: sqlite3.Connection,
    *,
    screen: Screen,
    profitable_profit_cents: int,
    profitable_roi_pct: float,
    now: str,
    max_attempts: int,
) -> dict[str, Any]:
    """The funnel's counts and the tokens of each stage; every query uses an index."""
    passes, params = screen.passes_sql()
    spent: dict[str, int] = {}
    for endpoint, kind, tokens in conn.execute(
        "SELECT endpoint, kind, coalesce(sum(tokens), 0) FROM token_ledger GROUP BY endpoint, kind"
    ):
        stage = STAGE_OF.get((str(endpoint), kind), str(kind or endpoint))
        spent[stage] = spent.get(stage, 0) + int(tokens)
    return {
        "seen": _one(conn, "SELECT count(*) FROM deals"),
        "screened_in": _one(conn, f"SELECT count(*) FROM deals WHERE {passes}", *params),
        "backfilled": _one(conn, "SELECT count(*) FROM deals WHERE backfilled_at IS NOT NULL"),
        "detailed": _one(conn, "SELECT count(*) FROM deals WHERE detailed_at IS NOT NULL"),
        "profitable": _one(
            conn,
            "SELECT count(*) FROM deals WHERE backfilled_at IS NOT NULL "
            "AND profit_cents >= ? AND roi_pct >= ?",
            profitable_profit_cents,
            profitable_roi_pct,
        ),
        "pending_screened_in": _one(
            conn,
            "SELECT count(*) FROM deals WHERE backfilled_at IS NULL "
            "AND (backfill_retry_at IS NULL OR backfill_retry_at <= ?) AND backfill_attempts < ? "
            f"AND {passes}",
            now,
            max_attempts,
            *params,
        ),
        "tokens_by_stage": spent,
    }
