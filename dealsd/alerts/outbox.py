"""The alert outbox: alerts are written with the change that caused them.

``Evaluator.on_deals_changed`` runs INSIDE the write that stored a deal's new
numbers (the backfiller's product, the upserter's price change), so the
deal and its alert commit together: a crash between "deal stored" and
"alert sent" cannot lose the alert, and a write that is rolled back takes
its alert with it. The sender (``sender.py``) delivers from the table and
marks rows sent; a restart resumes from what is still unsent.

Once per rule and deal: ``alert_state`` remembers whether the deal matched
and at what buy price it was last alerted. It alerts again only when the buy
price fell by ``realert_drop_pct`` since, or after it stopped matching and
matches again.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from dealsd.alerts.rules import FACT_COLUMNS, DealFacts, facts, matches
from dealsd.config import DEFAULT_SELECTION, AlertRuleConfig
from dealsd.store import feed
from dealsd.store.sql import chunks

REASON_NEW = "new"
REASON_PRICE_DROP = "price_drop"


@dataclass(frozen=True, slots=True)
class Pending:
    """One unsent alert for one channel."""

    id: int
    rule: str
    channel: str
    reason: str
    attempts: int
    facts: DealFacts
    created_at: str


class Evaluator:
    """Turns deal changes into outbox rows; called by writers inside their write.

    Runs on the writer's thread within its transaction: it touches nothing but
    the connection (the write contract: it may run twice, on a replay).
    """

    def __init__(
        self,
        *,
        rules: Sequence[AlertRuleConfig],
        channels: Sequence[str],
        price_type: int,
        realert_drop_pct: float,
    ) -> None:
        self._rules = list(rules)
        self._channels = list(channels)
        self._price_type = price_type
        self._drop = realert_drop_pct / 100.0

    def reconfigure(
        self, *, rules: Sequence[AlertRuleConfig], channels: Sequence[str], realert_drop_pct: float
    ) -> None:
        """New rules apply to the next change; what was alerted stays alerted."""
        self._rules = list(rules)
        self._channels = list(channels)
        self._drop = realert_drop_pct / 100.0

    @property
    def active(self) -> bool:
        return bool(self._rules and self._channels)

    def on_deals_changed(
        self, conn: sqlite3.Connection, asins: Iterable[str], now: str, domain_id: int | None = None
    ) -> int:
        """Queue the alerts the changed deals (of ``domain_id``'s marketplace; None: the
        ASINs' deals on any) now call for; return how many."""
        if not self.active:
            return 0
        queued = 0
        cols = ", ".join(FACT_COLUMNS)
        where, args = ("", []) if domain_id is None else ("domain_id = ? AND ", [domain_id])
        for chunk in chunks(list(dict.fromkeys(asins))):
            marks = ", ".join("?" * len(chunk))
            cur = conn.execute(
                f"SELECT {cols} FROM deals WHERE {where}asin IN ({marks}) "
                "AND backfilled_at IS NOT NULL",
                [*args, *chunk],
            )
            names = [d[0] for d in cur.description]
            for raw in cur.fetchall():
                deal = facts(dict(zip(names, raw, strict=True)), price_type=self._price_type)
                for rule in self._rules:
                    queued += self._apply(conn, rule, deal, now)
        return queued

    def _apply(
        self, conn: sqlite3.Connection, rule: AlertRuleConfig, deal: DealFacts, now: str
    ) -> int:
        key = (rule.name, deal.domain_id, deal.asin)
        state = conn.execute(
            "SELECT matching, alerted_buy_cents FROM alert_state "
            "WHERE rule = ? AND domain_id = ? AND asin = ?",
            key,
        ).fetchone()
        # The selections that matched it (deal_selections); a database row of
        # the one-selection era with none is the default selection's.
        seen_by = feed.selections_of(conn, deal.domain_id, deal.asin) or [DEFAULT_SELECTION]
        if not matches(rule, deal, selections=seen_by):
            if state is not None and state[0]:
                conn.execute(
                    "UPDATE alert_state SET matching = 0 "
                    "WHERE rule = ? AND domain_id = ? AND asin = ?",
                    key,
                )
            return 0
        reason = self._reason(state, deal.buy_cents)
        if reason is None:
            return 0
        conn.execute(
            "INSERT INTO alert_state (rule, domain_id, asin, matching, alerted_buy_cents, "
            "alerted_at) VALUES (?, ?, ?, 1, ?, ?) ON CONFLICT (rule, domain_id, asin) DO "
            "UPDATE SET matching = 1, alerted_buy_cents = excluded.alerted_buy_cents, "
            "alerted_at = excluded.alerted_at",
            (*key, deal.buy_cents, now),
        )
        channels = [c for c in self._channels if not rule.channels or c in rule.channels]
        body = json.dumps(asdict(deal), separators=(",", ":"))
        conn.executemany(
            "INSERT INTO alert_outbox (created_at, rule, channel, domain_id, asin, reason, "
            "facts, next_try_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            [(now, rule.name, c, deal.domain_id, deal.asin, reason, body, now) for c in channels],
        )
        return len(channels)

    def _reason(self, state: Any, buy: int | None) -> str | None:
        if state is None or not state[0]:
            return REASON_NEW
        last = state[1]
        if buy is not None and last is not None and buy <= last * (1.0 - self._drop):
            return REASON_PRICE_DROP
        return None


def _pending(row: Sequence[Any]) -> Pending:
    data = json.loads(row[5])
    return Pending(
        id=int(row[0]),
        rule=str(row[1]),
        channel=str(row[2]),
        reason=str(row[3]),
        attempts=int(row[4]),
        facts=DealFacts(**data),
        created_at=str(row[6]),
    )


_PENDING_COLS = "id, rule, channel, reason, attempts, facts, created_at"


def due(conn: sqlite3.Connection, *, now: str, limit: int) -> list[Pending]:
    """Unsent alerts whose next try is due, oldest first."""
    cur = conn.execute(
        f"SELECT {_PENDING_COLS} FROM alert_outbox WHERE sent_at IS NULL AND next_try_at <= ? "
        "ORDER BY id LIMIT ?",
        (now, limit),
    )
    return [_pending(r) for r in cur.fetchall()]


def mark_sent(conn: sqlite3.Connection, *, ids: Sequence[int], channel: str, now: str) -> None:
    """The alerts went out as one message to ``channel`` (one alert, or a digest)."""
    for chunk in chunks(ids):
        marks = ", ".join("?" * len(chunk))
        conn.execute(
            f"UPDATE alert_outbox SET sent_at = ?, last_error = NULL WHERE id IN ({marks})",
            [now, *chunk],
        )
    conn.execute(
        "INSERT INTO alert_channels (name, last_success_at, sent_total) VALUES (?, ?, ?) "
        "ON CONFLICT (name) DO UPDATE SET last_success_at = excluded.last_success_at, "
        "failing_since = NULL, sent_total = sent_total + excluded.sent_total",
        (channel, now, len(ids)),
    )


def mark_failed(
    conn: sqlite3.Connection,
    *,
    ids: Sequence[int],
    channel: str,
    now: str,
    next_try_at: str,
    error: str,
) -> None:
    """A send failed: try these again at ``next_try_at``; the error is already redacted."""
    for chunk in chunks(ids):
        marks = ", ".join("?" * len(chunk))
        conn.execute(
            f"UPDATE alert_outbox SET attempts = attempts + 1, next_try_at = ?, last_error = ? "
            f"WHERE id IN ({marks})",
            [next_try_at, error, *chunk],
        )
    conn.execute(
        "INSERT INTO alert_channels (name, last_error, last_error_at, failing_since) "
        "VALUES (?, ?, ?, ?) ON CONFLICT (name) DO UPDATE SET last_error = excluded.last_error, "
        "last_error_at = excluded.last_error_at, "
        "failing_since = COALESCE(failing_since, excluded.failing_since)",
        (channel, error, now, now),
    )


def prune(conn: sqlite3.Connection, *, sent_before: str) -> int:
    """Forget alerts sent long ago, and the state of deals that are gone."""
    n = conn.execute(
        "DELETE FROM alert_outbox WHERE sent_at IS NOT NULL AND sent_at < ?", (sent_before,)
    ).rowcount
    conn.execute(
        "DELETE FROM alert_state WHERE NOT EXISTS (SELECT 1 FROM deals d "
        "WHERE d.asin = alert_state.asin AND d.domain_id = alert_state.domain_id)"
    )
    return int(n)
