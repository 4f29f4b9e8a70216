"""The backfiller's batch sizing against a real store and the simulator.

The full backfill (history, offers) and the stats-only refresh cost very
different amounts per product, so each kind of work is sized by its own
observed cost (docs/field-notes.md #5), while fairness stays per consumer.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
import structlog
from helpers import StartSim, worker_parts

from dealsd.clock import iso_utc
from dealsd.config import BackfillerConfig, ProfitConfig
from dealsd.simulator import Simulator
from dealsd.workers.backfill_queue import KIND_REFRESH
from dealsd.workers.backfiller import Backfiller

RATE = 50  # tokens per (accelerated) minute: one minute of refill is the batch budget


@pytest.fixture
async def sim(start_sim: StartSim) -> Simulator:
    return await start_sim(refill_rate=RATE, catalogue_size=120)


async def test_refresh_batches_are_sized_by_the_refresh_cost(
    sim: Simulator, tmp_path: Path
) -> None:
    asins = sorted(sim.catalogue.by_asin)[:100]
    async with worker_parts(
        sim.base_url, tmp_path / "deals.db", name="backfiller", weight=3.0
    ) as parts:
        tokens = parts.tokens
        old = iso_utc(parts.clock.now() - 7 * 86400)

        def seed(conn: sqlite3.Connection) -> None:
            conn.executemany(
                "INSERT INTO deals (asin, domain_id, first_seen_at, last_seen_at, backfilled_at) "
                "VALUES (?, 1, ?, ?, ?)",
                [(a, old, old, old) for a in asins],
            )

        await parts.store.write(seed)
        await parts.client.token_status()  # synced: the refill rate is known
        # Full backfills with offers were seen to cost 7 a product.
        tokens.observe("backfiller", 10, 70)
        bf = Backfiller(
            client=parts.client, tokens=tokens, store=parts.store, clock=parts.clock,
            config=BackfillerConfig(max_batch=100), price_type=2,
            profit=ProfitConfig(), health=parts.health,
        )  # fmt: skip
        with structlog.testing.capture_logs() as logs:
            await bf.round()
        batch = next(e for e in logs if e["event"] == "backfill_batch")
        assert batch["mode"] == "refresh"
        # Stats only: 1 a product (the table's estimate, then observed), so
        # one minute of refill buys RATE of them, not RATE // 7.
        assert batch["asked"] == RATE
        assert tokens.cost_per_item("backfiller", kind=KIND_REFRESH) == pytest.approx(1.0)
        # ... and the refresh did not drag the full backfill's cost down.
        assert tokens.cost_per_item("backfiller") == pytest.approx(7.0)
        assert tokens.snapshot().consumed_by.get("backfiller") == RATE
