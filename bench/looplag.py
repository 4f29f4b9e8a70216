"""Event-loop responsiveness while the real backfiller path runs: ``python -m bench.looplag``.

The simulator runs in its own OS process (its encoding must not be charged to
our loop); this process runs the real ``KeepaClient``, ``TokenScheduler``,
``Store`` and ``Backfiller`` over loopback, a deals table seeded with pending
ASINs, and rounds of 100 full-history products. A probe task asks to wake
every 10 ms and records how late it woke: that lateness is what the
upserter, the watchdog ping and signal handling would also suffer.

Second family: which CPU-heavy calls release the GIL. A worker thread runs
the call while the main thread sleeps 1 ms at a time; the longest gap between
its wake-ups is the longest the call held the GIL (a call that releases it
shows ~1 ms). ``asyncio.to_thread`` only helps the loop for calls that do.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

from bench import Row, stop_process
from bench.pipeline import ZLIB_LEVEL, sample_body
from dealsd.clock import SystemClock, iso_utc
from dealsd.config import BackfillerConfig, ProfitConfig
from dealsd.keepa import KeepaClient, payloads
from dealsd.logs import configure_logging
from dealsd.store import Store
from dealsd.tokens import TokenScheduler
from dealsd.workers.backfiller import Backfiller
from dealsd.workers.health import Health

PROBE_S = 0.010
ROUNDS = 10  # of 100 products each
GOAL_P99_MS = 50.0


@contextlib.contextmanager
def simulator_process(*args: str) -> Iterator[str]:
    """``python -m dealsd.simulator`` in its own process; yields its base URL."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "dealsd.simulator", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().strip()
        if not url.startswith("http"):
            raise RuntimeError(f"simulator did not start (said {url!r})")
        yield url
    finally:
        stop_process(proc, within_s=10)


async def _probe(lags: list[float], stop: asyncio.Event) -> None:
    while not stop.is_set():
        due = time.perf_counter() + PROBE_S
        await asyncio.sleep(PROBE_S)
        lags.append(max(0.0, time.perf_counter() - due))


async def backfill_under_probe(base_url: str, db: Path) -> tuple[list[float], int, float]:
    """Probe lags (s), products stored and seconds taken by ROUNDS backfiller rounds."""
    clock = SystemClock()
    tokens = TokenScheduler(clock=clock, weights={"backfiller": 3.0}, batch_minutes=1.0)
    store = await Store.open(db, clock=clock)
    await seed_pending(store, 100 * (ROUNDS + 1))
    health = Health(clock=clock)
    health.register("backfiller", expected_round_s=30)
    lags: list[float] = []
    stop = asyncio.Event()
    try:
        async with KeepaClient(
            base_url=base_url, api_key="bench", domain=1, tokens=tokens, clock=clock,
            read_timeout_s=120,
        ) as client:  # fmt: skip
            await client.token_status()
            bf = Backfiller(
                client=client, tokens=tokens, store=store, clock=clock,
                config=BackfillerConfig(max_batch=100, min_batch=100), price_type=2,
                profit=ProfitConfig(), health=health,
            )  # fmt: skip
            await bf.round()  # warm: connection, simulator cache for the first batch
            probe = asyncio.create_task(_probe(lags, stop))
            started = time.perf_counter()
            for _ in range(ROUNDS):
                await bf.round()
            elapsed = time.perf_counter() - started
            stop.set()
            await probe
    finally:
        await store.close()
    conn = sqlite3.connect(db)
    stored = int(conn.execute("SELECT count(*) FROM product_history").fetchone()[0])
    conn.close()
    return lags, stored - 100, elapsed


async def seed_pending(store: Store, n: int) -> None:
    """``n`` deals never backfilled, as the upserter leaves them."""
    now = iso_utc(time.time())
    rows = [(f"B{i:09d}", f"title {i}", 2000 + i, now, now, now) for i in range(n)]

    def write(conn: sqlite3.Connection) -> None:
        conn.executemany(
            "INSERT INTO deals (asin, domain_id, title, current_used_cents, keepa_last_update, "
            "first_seen_at, last_seen_at) VALUES (?, 1, ?, ?, ?, ?, ?)",
            rows,
        )

    await store.write(write)


def longest_gil_hold(call: Callable[[], object]) -> tuple[float, float]:
    """(longest gap in ms between the main thread's 1 ms sleeps, call seconds)."""
    done = threading.Event()
    took = [0.0]

    def work() -> None:
        t0 = time.perf_counter()
        call()
        took[0] = time.perf_counter() - t0
        done.set()

    thread = threading.Thread(target=work)
    last = time.perf_counter()
    gap = 0.0
    thread.start()
    while not done.is_set():
        time.sleep(0.001)
        now = time.perf_counter()
        gap = max(gap, now - last)
        last = now
    thread.join()
    return gap * 1000, took[0]


def pct(values: list[float], q: int) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


def run() -> list[Row]:
    configure_logging("warning", "console")  # the table is the output, not the chatter
    out: list[Row] = []
    body, _ = sample_body(100)
    one = payloads.decode_products(body).items[0].raw
    calls: list[tuple[str, Callable[[], object]]] = [
        (f"msgspec decode_products, {len(body) / 1e6:.0f} MB body",
         lambda: payloads.decode_products(body)),
        ("msgspec decode_envelope, same body", lambda: payloads.decode_envelope(body)),
        (f"zlib.compress level {ZLIB_LEVEL}, x20 products",
         lambda: [zlib.compress(one, ZLIB_LEVEL) for _ in range(20)]),
    ]  # fmt: skip
    for name, call in calls:
        hold, took = longest_gil_hold(call)
        out.append(
            Row(f"GIL: {name}", "-", f"held {hold:.1f} ms of a {took * 1000:.0f} ms call", True)
        )
    with tempfile.TemporaryDirectory(prefix="dealsd-bench-") as tmp:
        db = Path(tmp) / "deals.db"
        args = ("--period", "0.1", "--refill-rate", "100000", "--missing-rate", "0",
                "--invalid-rate", "0", "--new-deals", "0", "--changed-deals", "0")  # fmt: skip
        with simulator_process(*args) as url:
            lags, stored, elapsed = asyncio.run(backfill_under_probe(url, db))
        size = os.path.getsize(db)
    ms = [x * 1000 for x in lags]
    p99 = pct(ms, 99)
    out.append(
        Row(
            f"backfill {ROUNDS}x100 products over loopback",
            "-",
            f"{stored} in {elapsed:.1f} s ({stored / elapsed:.0f}/s), db {size / 1e6:.0f} MB",
            stored == 100 * ROUNDS,
        )
    )
    out.append(Row("  loop lag p50 (10 ms timer)", "-", f"{pct(ms, 50):.1f} ms", True))
    out.append(
        Row("  loop lag p99", f"<= {GOAL_P99_MS:.0f} ms", f"{p99:.1f} ms", p99 <= GOAL_P99_MS)
    )
    out.append(Row("  loop lag max", "-", f"{max(ms):.1f} ms ({len(ms)} samples)", True))
    return out


if __name__ == "__main__":  # the same as `python -m bench looplag`
    from bench.__main__ import main

    sys.exit(main(["looplag"]))
