"""Plain helpers shared by the tests (fixtures live in conftest.py).

No test module imports another: what two tests share lives here.
"""

from __future__ import annotations

import json
import sqlite3
import zlib
from importlib import resources
from pathlib import Path

import msgspec

from dealsd import mapping
from dealsd.clock import iso_utc
from dealsd.config import ProfitConfig
from dealsd.keepa import payloads
from dealsd.store import queries, schema
from dealsd.workers.backfiller import PAYLOAD_ZLIB_LEVEL

# The two real Keepa /product responses, shipped as package data.
SAMPLE_ASINS = ("B0D8W1YVBX", "B0F7XPYCSJ")


def sample_bytes(asin: str) -> bytes:
    """The raw body of a real /product sample shipped in ``dealsd/samples/``."""
    return (resources.files("dealsd") / "samples" / f"product_{asin}.json").read_bytes()


def _current(values: list[int], index: int) -> int | None:
    return values[index] if index < len(values) and values[index] >= 0 else None


def sample_database(db: Path, *, now: float) -> None:
    """A migrated database holding the real samples as backfilled deals with history.

    Written through the daemon's own mapping and queries (as the upserter and
    the backfiller write), the payload stored as the backfiller stores it.
    """
    conn = sqlite3.connect(db, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode = WAL")
        schema.apply_migrations(conn)
        stamp = iso_utc(now)
        for asin in SAMPLE_ASINS:
            raw = msgspec.json.encode(json.loads(sample_bytes(asin))["products"][0])
            product = msgspec.json.decode(raw, type=payloads.Product)
            current = product.stats.current if product.stats is not None else []
            row = {"asin": asin, "domain_id": 1, "title": product.title,
                   "current_new_cents": _current(current, payloads.NEW),
                   "current_used_cents": _current(current, payloads.USED),
                   "current_sales_rank": _current(current, payloads.SALES),
                   "keepa_last_update": mapping.keepa_time_iso(product.last_update),
                   "last_seen_at": stamp}  # fmt: skip
            columns = mapping.product_columns(product)
            # Bought new, priced at the 90-day new average: the samples have
            # no used history at all.
            buy = _current(current, payloads.NEW)
            columns.update(mapping.estimate(columns, buy_cost_cents=buy,
                                            profit=ProfitConfig(reference="new")))  # fmt: skip
            conn.execute("BEGIN")
            queries.upsert_deals(conn, [row], checkpoints={}, now=stamp)
            queries.store_product(
                conn, asin=asin, fetched_at=stamp, keepa_last_update=row["keepa_last_update"],
                tokens_spent=1, payload_zlib=zlib.compress(raw, PAYLOAD_ZLIB_LEVEL),
                columns={**columns, "backfilled_at": stamp},
            )  # fmt: skip
            conn.execute("COMMIT")
    finally:
        conn.close()
