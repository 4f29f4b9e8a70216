"""The store's writer against SQLite's own speed: ``python -m bench.writer``.

Figures:
- the ceiling: ``sqlite3.executemany`` of the deals UPSERT, one transaction per
  ``group_max`` rows, on a WAL file with synchronous=NORMAL (what the writer
  could reach if Python and asyncio cost nothing);
- the writer: many coroutines each awaiting ``store.write`` of a single-row
  UPSERT, then of a single-row ``feed.upsert_deals``, and their ratio to
  the ceiling (goal >= 0.5); the same loop without asyncio, to tell what the
  event loop and the thread hop cost from what the write itself costs;
- the same while another OS process hammers ``SELECT count(*)``;
- submit-to-commit latency at a paced 1,000 writes/s (goal p99 <= 50 ms).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import Row
from dealsd.clock import SystemClock, iso_utc
from dealsd.store import Store, feed, schema

ROWS = 30_000
PRODUCERS = 100
GROUP_MAX = 200
PACED_RATE = 1000
PACED_S = 3.0
NOW = iso_utc(1_800_000_000)

HAMMER = """
import sqlite3, sys, time
conn = sqlite3.connect(f"file:{sys.argv[1]}?mode=ro", uri=True, timeout=10)
end = time.monotonic() + float(sys.argv[2])
n = 0
while time.monotonic() < end:
    conn.execute("SELECT count(*) FROM deals").fetchone()
    n += 1
print(n)
"""


def deal_rows(n: int, prefix: str = "B") -> list[dict[str, object]]:
    return [
        {
            "asin": f"{prefix}{i:09d}",
            "domain_id": 1,
            "title": f"A product title of ordinary length, number {i}",
            "image_url": f"https://m.media-amazon.com/images/I/{i:011d}.jpg",
            "root_category": 283155,
            "current_amazon_cents": 1999,
            "current_new_cents": 1799 + i % 100,
            "current_used_cents": 1299,
            "current_sales_rank": 10_000 + i,
            "keepa_last_update": NOW,
            "deal_json": json.dumps({"asin": i, "current": [1999, 1799, 1299]}),
            "last_seen_at": NOW,
        }
        for i in range(n)
    ]


def _connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = NORMAL")
    conn.execute("PRAGMA temp_store = MEMORY")  # as the store's writer has it
    schema.apply_migrations(conn)
    return conn


def ceiling(path: Path, rows: list[dict[str, object]]) -> float:
    """Rows/s of plain executemany upserts, committed every GROUP_MAX rows."""
    conn = _connect(path)
    params = [feed.upsert_params(str(r["asin"]), r, NOW) for r in rows]
    started = time.perf_counter()
    for i in range(0, len(params), GROUP_MAX):
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany(feed.UPSERT_DEAL_SQL, params[i : i + GROUP_MAX])
        conn.execute("COMMIT")
    elapsed = time.perf_counter() - started
    conn.close()
    return len(rows) / elapsed


def one_statement(r: dict[str, object]) -> Callable[[sqlite3.Connection], object]:
    """The leanest single-row write: the ceiling's UPSERT, executed once."""
    params = feed.upsert_params(str(r["asin"]), r, NOW)
    return lambda conn: conn.execute(feed.UPSERT_DEAL_SQL, params)


def upsert_one(r: dict[str, object]) -> Callable[[sqlite3.Connection], object]:
    """What the daemon writes: ``feed.upsert_deals`` of one row."""
    return functools.partial(feed.upsert_deals, rows=[r], checkpoints={}, now=NOW)


Make = Callable[[dict[str, object]], Callable[[sqlite3.Connection], object]]


def one_in_100_fails(r: dict[str, object]) -> Callable[[sqlite3.Connection], object]:
    """The bare UPSERT, but every 100th row raises: each group pays a replay."""
    fn = one_statement(r)
    if int(str(r["asin"])[1:]) % 100 != 42:
        return fn

    def bad(conn: sqlite3.Connection) -> object:
        fn(conn)
        raise ValueError("a bad row")

    return bad


def synchronous(
    path: Path, rows: list[dict[str, object]], make: Make, *, per_write_savepoint: bool = False
) -> float:
    """Rows/s of the writer's own loop without asyncio: BEGIN, the group's writes, COMMIT.

    The writer's figure divided by this one is what asyncio and the thread hop
    cost. ``per_write_savepoint`` adds what the writer paid before groups ran
    optimistically (dealsd/store/groups.py): a SAVEPOINT and RELEASE around each write.
    """
    conn = _connect(path)
    fns = [make(r) for r in rows]
    started = time.perf_counter()
    for i in range(0, len(fns), PRODUCERS):
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("SAVEPOINT g")
        for fn in fns[i : i + PRODUCERS]:
            if per_write_savepoint:
                conn.execute("SAVEPOINT w")
                fn(conn)
                conn.execute("RELEASE w")
            else:
                fn(conn)
        conn.execute("RELEASE g")
        conn.execute("COMMIT")
    elapsed = time.perf_counter() - started
    conn.close()
    return len(rows) / elapsed


async def writer_rate(
    path: Path, rows: list[dict[str, object]], make: Make = upsert_one, group_max: int = GROUP_MAX
) -> tuple[float, int]:
    """Rows/s through the store, PRODUCERS coroutines each writing one row at a time."""
    store = await Store.open(path, clock=SystemClock(), group_max=group_max)
    it = iter([make(r) for r in rows])  # built beforehand, as synchronous() does

    async def producer() -> None:
        for fn in it:
            with contextlib.suppress(ValueError):  # one_in_100_fails
                await store.write(fn)

    started = time.perf_counter()
    await asyncio.gather(*(producer() for _ in range(PRODUCERS)))
    elapsed = time.perf_counter() - started
    commits = store.writer_stats().commits
    await store.close()
    return len(rows) / elapsed, commits


async def paced_latency(path: Path) -> list[float]:
    """Submit-to-commit seconds of single-row writes launched at PACED_RATE per second."""
    store = await Store.open(path, clock=SystemClock(), group_max=GROUP_MAX)
    rows = deal_rows(int(PACED_RATE * PACED_S), prefix="L")
    one = functools.partial(feed.upsert_deals, checkpoints={}, now=NOW)
    loop = asyncio.get_running_loop()
    latencies: list[float] = []

    async def timed(r: dict[str, object]) -> None:
        t0 = loop.time()
        await store.write(functools.partial(one, rows=[r]))
        latencies.append(loop.time() - t0)

    tasks: list[asyncio.Task[None]] = []
    start = loop.time()
    sent = 0
    while sent < len(rows):
        due = min(len(rows), int((loop.time() - start) * PACED_RATE) + 1)
        while sent < due:
            tasks.append(asyncio.create_task(timed(rows[sent])))
            sent += 1
        await asyncio.sleep(0.001)
    await asyncio.gather(*tasks)
    await store.close()
    return latencies


def pct(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]


def _rate(value: float, extra: str = "") -> str:
    return f"{value:,.0f} rows/s{extra}"


def _writer_rows(
    write: str, rate: float, commits: int, *, ceiling: float, without_asyncio: float
) -> list[Row]:
    """The writer's rate for one kind of write, held against the ceiling."""
    figure = f"writer, {PRODUCERS} coroutines x {write}"
    to_ceiling, to_sync = rate / ceiling, rate / without_asyncio
    return [
        Row(figure, "-", _rate(rate, f" ({commits} commits)"), True),
        Row("  its ratio to the ceiling", ">= 0.5", f"{to_ceiling:.2f}", to_ceiling >= 0.5),
        Row("  its ratio to the same loop without asyncio", "-", f"{to_sync:.2f}", True),
    ]


def run() -> list[Row]:
    out: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="dealsd-bench-") as tmp:
        d = Path(tmp)
        rows = deal_rows(ROWS)
        raw = ceiling(d / "raw.db", rows)
        out.append(Row("executemany upsert, no asyncio (ceiling)", "-", _rate(raw), True))
        sync_stmt = synchronous(d / "s1.db", rows, one_statement)
        sync_sp = synchronous(d / "s0.db", rows, one_statement, per_write_savepoint=True)
        sync_ups = synchronous(d / "s2.db", rows, upsert_one)
        out.append(Row("1 UPSERT per row, no asyncio", "-", _rate(sync_stmt), True))
        out.append(Row("  the same + SAVEPOINT per row (before)", "-", _rate(sync_sp), True))
        out.append(Row("upsert_deals(1 row) per row, no asyncio", "-", _rate(sync_ups), True))

        rate, commits = asyncio.run(writer_rate(d / "w1.db", rows, one_statement))
        out += _writer_rows("1 UPSERT", rate, commits, ceiling=raw, without_asyncio=sync_stmt)

        failing, commits = asyncio.run(writer_rate(d / "w4.db", rows, one_in_100_fails))
        out.append(Row("  the same, 1 write in 100 raises (replays)", "-", _rate(failing), True))

        rate, commits = asyncio.run(writer_rate(d / "w2.db", rows))
        out += _writer_rows(
            "upsert_deals(1 row)", rate, commits, ceiling=raw, without_asyncio=sync_ups
        )

        few = rows[: ROWS // 5]
        solo, _ = asyncio.run(writer_rate(d / "w3.db", few, group_max=1))
        out.append(Row("  the same, one commit per write (group_max=1)", "-", _rate(solo), True))

        db = d / "busy.db"
        asyncio.run(writer_rate(db, deal_rows(10, prefix="X")))  # create and migrate
        reader = subprocess.Popen(
            [sys.executable, "-c", HAMMER, str(db), "30"], stdout=subprocess.PIPE, text=True
        )
        time.sleep(0.3)
        try:
            rate_r, _ = asyncio.run(writer_rate(db, rows))
        finally:
            reader.terminate()
            reader.wait()
        out.append(
            Row(
                "  the same, a reader process on count(*)",
                ">= 0.5",
                f"{_rate(rate_r)} ({rate_r / raw:.2f})",
                rate_r / raw >= 0.5,
            )
        )

        lat = asyncio.run(paced_latency(d / "paced.db"))
        p50, p99 = pct(lat, 50) * 1000, pct(lat, 99) * 1000
        out.append(Row(f"latency p50 at {PACED_RATE}/s", "-", f"{p50:.1f} ms", True))
        out.append(Row(f"latency p99 at {PACED_RATE}/s", "<= 50 ms", f"{p99:.1f} ms", p99 <= 50))
    return out


if __name__ == "__main__":  # the same as `python -m bench writer`
    from bench.__main__ import main

    sys.exit(main(["writer"]))


__all__: list[Any] = ["run"]
