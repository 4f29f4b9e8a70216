"""End-to-end product throughput on one core: ``python -m bench.pipeline``.

A 100-product /product response is built from the real recorded sample
(``dealsd/samples/product_B0D8W1YVBX.json``, compact as Keepa sends it:
~208 KB a product, mostly price history) with each copy's ASIN rewritten.
The pipeline is what the client and the backfiller really run on such a
body: ``decode_envelope`` and ``decode_products`` (dealsd/keepa/payloads.py, as
the client calls them), then for each
product the backfiller's own ``_store_one`` (derive the schema v2 columns with
``dealsd.mapping``, zlib-compress in a thread, read the deal row, estimate and
commit through the store with ``backfill.store_product``), all products of the
batch gathered as ``round()`` does. The process is pinned to one CPU, threads
included, so the thread hop cannot borrow the second core.

The floor is a plain ``json.loads`` of the same body. Goals: the pipeline
costs <= 2x that floor, and runs >= 2x what the largest Keepa plan can buy:
ASSUMED PLAN 4,000 tokens/min at ~1 token per product (history and stats are
free extras, docs/keepa.md) = 67 products/s, so the goal is >= 134 products/s.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import sqlite3
import sys
import tempfile
import time
import zlib
from pathlib import Path
from typing import Any, cast

import msgspec

from bench import Row
from dealsd.clock import SystemClock, iso_utc
from dealsd.config import BackfillerConfig, ProfitConfig
from dealsd.keepa import KeepaClient, payloads
from dealsd.logs import configure_logging
from dealsd.store import Store
from dealsd.tokens import TokenScheduler
from dealsd.workers.backfill_queue import KIND_BACKFILL, Batch, product_params
from dealsd.workers.backfiller import PAYLOAD_ZLIB_LEVEL, Backfiller
from dealsd.workers.health import Health

ZLIB_LEVEL = PAYLOAD_ZLIB_LEVEL
SAMPLE = Path(__file__).resolve().parent.parent / "dealsd" / "samples" / "product_B0D8W1YVBX.json"
BATCH = 100
BATCHES = 3
PLAN_TOKENS_PER_MIN = 4000
TOKENS_PER_PRODUCT = 1.0
PLAN_PRODUCTS_S = PLAN_TOKENS_PER_MIN / 60 / TOKENS_PER_PRODUCT
ENVELOPE = (
    b'{"timestamp":1764000000000,"tokensLeft":3900,"refillIn":41000,"refillRate":4000,'
    b'"tokensConsumed":100,"tokenFlowReduction":0.0,"processingTimeInMs":900,"products":['
)


def sample_body(n: int, start: int = 0) -> tuple[bytes, int]:
    """A /product body of ``n`` copies of the real sample; (body, bytes of one product)."""
    doc = json.loads(SAMPLE.read_bytes())
    one = msgspec.json.encode(doc["products"][0])
    real = f'"{doc["products"][0]["asin"]}"'.encode()
    parts = [one.replace(real, f'"B{i:09d}"'.encode()) for i in range(start, start + n)]
    return ENVELOPE + b",".join(parts) + b"]}", len(one)


def _seed(db: Path, n: int) -> None:
    now = iso_utc(time.time())
    conn = sqlite3.connect(db)
    conn.executemany(
        "INSERT INTO deals (asin, domain_id, current_used_cents, keepa_last_update, "
        "first_seen_at, last_seen_at) VALUES (?, 1, 2500, ?, ?, ?)",
        [(f"B{i:09d}", now, now, now) for i in range(n)],
    )
    conn.commit()
    conn.close()


async def _pipeline(db: Path, bodies: list[bytes]) -> float:
    """Seconds to take every body through decode and the backfiller's per-product path."""
    clock = SystemClock()
    store = await Store.open(db, clock=clock)
    await store.close()
    _seed(db, BATCH * len(bodies))
    store = await Store.open(db, clock=clock)
    health = Health(clock=clock)
    health.register("backfiller", expected_round_s=30)
    tokens = TokenScheduler(clock=clock, weights={"backfiller": 3.0}, batch_minutes=1.0)
    # _store_one never touches the client: the network part is bench/looplag's.
    bf = Backfiller(
        client=cast(KeepaClient, None), tokens=tokens, store=store, clock=clock,
        config=BackfillerConfig(), price_type=2, profit=ProfitConfig(), health=health,
    )  # fmt: skip
    params = product_params(BackfillerConfig())
    batch = Batch(asins=[], params=params, kind=KIND_BACKFILL, picked_at="")
    started = time.perf_counter()
    for body in bodies:
        payloads.decode_envelope(body)
        page = payloads.decode_products(body)
        oks = await asyncio.gather(*(bf._store_one(item, 1, batch) for item in page.items))
        assert all(oks), "a product was not stored"
    elapsed = time.perf_counter() - started
    await store.close()
    return elapsed


def _timed(fn: Any, *args: Any) -> float:
    t0 = time.perf_counter()
    fn(*args)
    return time.perf_counter() - t0


def zlib_levels(raw: bytes, levels: tuple[int, ...] = (1, 2, 3, 6, 9)) -> list[Row]:
    rows = []
    for level in levels:
        took = min(_timed(zlib.compress, raw, level) for _ in range(5))
        size = len(zlib.compress(raw, level))
        rows.append(
            Row(
                f"  zlib level {level}" + (" (dealsd's)" if level == ZLIB_LEVEL else ""),
                "-",
                f"{took * 1000:.1f} ms/product, {size / 1000:.0f} KB ({len(raw) / size:.2f}x)",
                True,
            )
        )
    return rows


def run() -> list[Row]:
    configure_logging("warning", "console")  # the table is the output, not the chatter
    out: list[Row] = []
    pinned = False
    if hasattr(os, "sched_setaffinity"):
        before = os.sched_getaffinity(0)
        os.sched_setaffinity(0, {min(before)})  # threads started from now on inherit it
        pinned = True
    try:
        bodies = [sample_body(BATCH, start=i * BATCH)[0] for i in range(BATCHES)]
        one_size = sample_body(1)[1]
        n = BATCH * BATCHES
        floor = min(sum(_timed(json.loads, b) for b in bodies) for _ in range(2))
        decode = sum(
            _timed(lambda b: (payloads.decode_envelope(b), payloads.decode_products(b)), b)
            for b in bodies
        )
        with tempfile.TemporaryDirectory(prefix="dealsd-bench-") as tmp:
            db = Path(tmp) / "pipe.db"
            took = asyncio.run(_pipeline(db, bodies))
            conn = sqlite3.connect(db)
            stored, payload_bytes = conn.execute(
                "SELECT count(*), sum(length(payload)) FROM product_history"
            ).fetchone()
            conn.close()
            wal = Path(f"{db}-wal")
            db_bytes = os.path.getsize(db) + (wal.stat().st_size if wal.exists() else 0)
    finally:
        if pinned:
            os.sched_setaffinity(0, before)
    rate = n / took
    ratio = took / floor
    goal = math.ceil(2 * PLAN_PRODUCTS_S)
    out.append(
        Row(
            f"json.loads of {n} products ({len(bodies[0]) / 1e6:.1f} MB/100), the floor",
            "-",
            f"{n / floor:.0f} products/s",
            True,
        )
    )
    out.append(Row("msgspec envelope + products decode", "-", f"{n / decode:.0f} products/s", True))
    out.append(
        Row(
            f"pipeline: decode, derive, zlib {ZLIB_LEVEL}, store (1 CPU)",
            f">= {goal:.0f}/s (2x {PLAN_TOKENS_PER_MIN}/min plan)",
            f"{rate:.0f} products/s",
            rate >= goal and stored == n,
        )
    )
    out.append(Row("  its cost / json.loads", "<= 2.0", f"{ratio:.2f}", ratio <= 2.0))
    per = payload_bytes / stored
    out.append(
        Row(
            "bytes per stored product (payload)",
            "-",
            f"{per / 1000:.0f} KB of {one_size / 1000:.0f} KB ({one_size / per:.2f}x)",
            True,
        )
    )
    per_db = db_bytes / stored
    out.append(
        Row(
            "database size after 100,000 such products",
            "-",
            f"{per_db * 100_000 / 1e9:.1f} GB (extrapolated from {stored})",
            True,
        )
    )
    raw = payloads.decode_products(sample_body(1)[0]).items[0].raw
    out.append(Row("zlib level: time vs size on one product", "-", "", True))
    out += zlib_levels(raw)
    return out


if __name__ == "__main__":  # the same as `python -m bench pipeline`
    from bench.__main__ import main

    sys.exit(main(["pipeline"]))
