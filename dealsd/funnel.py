"""The funnel's figures: what each stage cost and what it found, for status and the journal.

The daemon reads them from the database (``backfill.funnel_summary``: counts
by the screen and the full estimate, the ledger's tokens by stage) with the
thresholds of its running config, adds what only it knows (the refill rate,
the observed cost per product, the last full pass's cost), and writes them
into its snapshot, so `dealsd status` shows the same figures without
knowing the config.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping
from typing import Any

import msgspec

from dealsd import selections
from dealsd.config import Config
from dealsd.snapshot import FunnelPart
from dealsd.store import backfill
from dealsd.workers.backfill_queue import screen_of


def read_counts(conn: sqlite3.Connection, cfg: Config, *, now: str) -> dict[str, Any]:
    """The database's part of the funnel under ``cfg``'s thresholds (each selection's own)."""
    f = cfg.funnel
    return backfill.funnel_summary(
        conn,
        screen=screen_of(f, selections.funnels(cfg)),
        profitable_profit_cents=f.profitable_min_profit_cents,
        profitable_roi_pct=f.profitable_min_roi_pct,
        now=now,
        max_attempts=cfg.backfiller.max_attempts,
    )


def figures(
    counts: Mapping[str, Any],
    *,
    refill_rate: float,
    period_s: float,
    cost_per_product: float | None,
    full_pass_tokens: int | None,
) -> FunnelPart:
    """The snapshot's funnel: the counts, tokens per profitable deal and the queue's ETA."""
    part = msgspec.convert(dict(counts), FunnelPart, strict=False)
    spent = sum(part.tokens_by_stage.values())
    part.tokens_per_profitable = round(spent / part.profitable, 1) if part.profitable else None
    if part.pending_screened_in == 0:
        part.queue_eta_s = 0.0
    elif refill_rate > 0:
        cost = cost_per_product or 1.0
        part.queue_eta_s = round(part.pending_screened_in * cost / refill_rate * period_s, 1)
    part.full_pass_tokens = full_pass_tokens
    return part


def line(part: FunnelPart) -> dict[str, object]:
    """The journal's funnel fields (one summary line a minute)."""
    stages = part.tokens_by_stage
    return {
        "funnel": (
            f"seen {part.seen} > screened in {part.screened_in} > backfilled {part.backfilled}"
            f" > detailed {part.detailed} > profitable {part.profitable}"
        ),
        "tokens_by_stage": ",".join(f"{k}={v}" for k, v in sorted(stages.items())) or "none",
        "tokens_per_profitable": part.tokens_per_profitable,
        "queue_eta_s": part.queue_eta_s,
    }
