"""The backfill queue: which deals to fetch from /product next, and what that wrote.

The funnel's tiers (screened-in backfill, detail, refresh, the rest) are
selected here; a fetched product's columns and history are stored, or its
failure counted; and the funnel's counts read back for the snapshot. The
query conventions (no commits, checked column names) are in ``store.sql``.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

from dealsd.store.sql import check_columns, deal_key, dicts, scalar, writable_deal_columns


@dataclass(frozen=True, slots=True)
class PendingRow:
    """A deal to fetch from /product, with the prices that set its buy cost."""

    asin: str
    current_amazon_cents: int | None
    current_new_cents: int | None
    current_used_cents: int | None
    domain_id: int = 1


_PENDING_COLS = "asin, current_amazon_cents, current_new_cents, current_used_cents, domain_id"


def _one_domain(domain_id: int | None) -> tuple[str, tuple[object, ...]]:
    # The unary + keeps the key's index out of it: without statistics SQLite
    # would read every deal of the marketplace by (domain_id, asin) and sort
    # them all, where the tier's own index gives its order and the LIMIT stops it.
    return ("", ()) if domain_id is None else ("AND +domain_id = ? ", (domain_id,))


class Condition(Protocol):
    """A funnel threshold as a WHERE fragment on ``deals``, with its parameters.

    Frozen dataclasses: equal thresholds are equal and hash alike, so the
    selections that share one are asked together (``BySelection``).
    """

    def passes_sql(self) -> tuple[str, tuple[object, ...]]: ...


C = TypeVar("C", bound=Condition)


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


@dataclass(frozen=True, slots=True)
class DetailBar:
    """The second tier's threshold on the full estimate; None: no second tier (never true)."""

    min_profit_cents: int | None = None

    def passes_sql(self) -> tuple[str, tuple[object, ...]]:
        return "profit_cents >= ?", (self.min_profit_cents,)


# A deal's rows in deal_selections, from inside a statement on `deals`. The
# conditions' columns (screen_*, profit_cents) are not deal_selections': they
# name the outer deal.
_LISTED = "FROM deal_selections AS s WHERE s.domain_id = deals.domain_id AND s.asin = deals.asin"


def _marks(n: int) -> str:
    return ", ".join("?" * n)


@dataclass(frozen=True, slots=True)
class BySelection(Generic[C]):
    """A funnel threshold per selection: a deal passes when it passes the one of any
    selection listing it in deal_selections; ``default`` ([funnel]) is every other
    selection's (one not in ``own``, or gone from the config) and a deal no selection lists.

    ``own``: (selection, its threshold), config order. Money is in each deal's own
    marketplace's smallest unit, so a selection on another currency needs its own.
    """

    default: C
    own: tuple[tuple[str, C], ...] = ()

    def groups(self) -> dict[C, list[str]]:
        """The thresholds other than ``default``, each with the selections that have it."""
        out: dict[C, list[str]] = {}
        for name, cond in self.own:
            if cond != self.default:
                out.setdefault(cond, []).append(name)
        return out

    def conditions(self) -> list[C]:
        """Every distinct threshold in force, ``default`` first."""
        return [self.default, *self.groups()]

    def passes_sql(self) -> tuple[str, tuple[object, ...]]:
        """``default``'s own fragment when no selection has another threshold (the
        statement, and its plan, are then those of one threshold); else a look at the
        deal's selections: each row judged by its selection's threshold."""
        base, base_params = self.default.passes_sql()
        groups = self.groups()
        if not groups:
            return base, base_params
        cases: list[str] = []
        params: list[object] = []
        for cond, names in groups.items():
            sql, args = cond.passes_sql()
            cases.append(f"WHEN s.selection IN ({_marks(len(names))}) THEN ({sql})")
            params += [*names, *args]
        return (
            f"(EXISTS (SELECT 1 {_LISTED} AND CASE {' '.join(cases)} ELSE ({base}) END) "
            f"OR (({base}) AND NOT EXISTS (SELECT 1 {_LISTED})))",
            (*params, *base_params, *base_params),
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
    screen: Condition = NO_SCREEN,
    below: bool = False,
    order: str = BY_SCREEN,
    domain_id: int | None = None,
) -> list[PendingRow]:
    """Never-backfilled deals due now (of one domain if named): those whose screen passes
    ``screen`` (a ``Screen``, or one per selection: ``BySelection``; ``below``: those
    below it), best screen profit first (unknown last), or ``order`` newest."""
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
    conn: sqlite3.Connection, *, bar: Condition, limit: int, domain_id: int | None = None
) -> list[PendingRow]:
    """Backfilled deals never detailed whose full estimate passes ``bar`` (a ``DetailBar``,
    or one per selection), best first (of one domain if named): the second tier's
    candidates."""
    passes, params = bar.passes_sql()
    return _backfilled(
        conn,
        f"detailed_at IS NULL AND {passes}",
        params,
        order="profit_cents DESC",
        limit=limit,
        domain_id=domain_id,
    )


def due_refresh(
    conn: sqlite3.Connection, *, older_than: str, limit: int, domain_id: int | None = None
) -> list[PendingRow]:
    """Backfilled deals whose data (refresh, else backfill) is older than ``older_than``.

    Oldest first (of one domain if named).
    """
    return _backfilled(
        conn,
        "COALESCE(refreshed_at, backfilled_at) < ?",
        (older_than,),
        order="COALESCE(refreshed_at, backfilled_at)",
        limit=limit,
        domain_id=domain_id,
    )


def _backfilled(
    conn: sqlite3.Connection,
    cond: str,
    params: tuple[object, ...],
    *,
    order: str,
    limit: int,
    domain_id: int | None,
) -> list[PendingRow]:
    """Backfilled deals (of one domain if named) where ``cond`` holds for its
    parameters ``params``, the first ``limit`` by ``order``: the detail and refresh tiers."""
    where, args = _one_domain(domain_id)
    cur = conn.execute(
        f"SELECT {_PENDING_COLS} FROM deals WHERE backfilled_at IS NOT NULL "
        f"AND {cond} {where}ORDER BY {order} LIMIT ?",
        (*params, *args, limit),
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
    names = check_columns(columns, writable_deal_columns(), "deals")
    sets = [f"{n} = ?" for n in names] + ["backfill_error = NULL", "backfill_retry_at = NULL"]
    where, key = deal_key(domain_id, asin)
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
    where, key = deal_key(domain_id, asin)
    rows = dicts(conn.execute(f"SELECT * FROM deals WHERE {where}", key))
    return rows[0] if rows else None


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
    where, key = deal_key(domain_id, asin)
    row = conn.execute(
        "UPDATE deals SET backfill_attempts = backfill_attempts + 1, backfill_error = ?, "
        f"backfill_retry_at = ? WHERE {where} RETURNING backfill_attempts",
        (reason, retry_at, *key),
    ).fetchone()
    return 0 if row is None else int(row[0])


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
    screen: BySelection[Screen],
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
        "seen": scalar(conn, "SELECT count(*) FROM deals"),
        "screened_in": _screened_in(conn, screen),
        "backfilled": scalar(conn, "SELECT count(*) FROM deals WHERE backfilled_at IS NOT NULL"),
        "detailed": scalar(conn, "SELECT count(*) FROM deals WHERE detailed_at IS NOT NULL"),
        "profitable": scalar(
            conn,
            "SELECT count(*) FROM deals WHERE backfilled_at IS NOT NULL "
            "AND profit_cents >= ? AND roi_pct >= ?",
            profitable_profit_cents,
            profitable_roi_pct,
        ),
        "pending_screened_in": scalar(
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


def _screened_in(conn: sqlite3.Connection, screen: BySelection[Screen]) -> int:
    """Deals whose screen passes, from indexes only: those passing [funnel]'s thresholds
    (the screen's index), then, when selections have their own, the difference their
    verdict makes on the deals they list (each deal once, found by its selections' index).

    Counting ``screen.passes_sql()`` over every deal would read the whole table: the
    screen's index does not hold a deal's key.
    """
    base, base_params = screen.default.passes_sql()
    count = int(scalar(conn, f"SELECT count(*) FROM deals WHERE {base}", *base_params))
    own = [name for names in screen.groups().values() for name in names]
    if not own:
        return count
    passes, params = screen.passes_sql()
    # A screen's fragment is true or false, never NULL: a deal's difference is -1, 0 or 1.
    differ = scalar(
        conn,
        f"SELECT coalesce(sum(({passes}) - ({base})), 0) FROM deals WHERE rowid IN ("
        "SELECT d.rowid FROM deal_selections AS o JOIN deals AS d "
        "ON d.domain_id = o.domain_id AND d.asin = o.asin "
        f"WHERE o.selection IN ({_marks(len(own))}))",
        *params,
        *base_params,
        *own,
    )
    return count + int(differ)
