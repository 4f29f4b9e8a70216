"""The store on real SQLite files: group commit, replies after COMMIT, isolation of a
failing write, back-pressure, shutdown, cancellation, migrations and refusals, a
lock held by another connection, a full disk, and kill -9 of an acknowledging process."""

from __future__ import annotations

import asyncio
import functools
import hashlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from helpers import wait_for

from dealsd.clock import FakeClock, iso_utc
from dealsd.store import (
    NotADatabase,
    SchemaTooNew,
    Store,
    StoreClosed,
    StoreFull,
    feed,
    migrations,
    schema,
)

HERE = Path(__file__).parent


def put(key: str, value: str = "v") -> Callable[[sqlite3.Connection], int]:
    def fn(conn: sqlite3.Connection) -> int:
        return conn.execute(
            "INSERT INTO checkpoints (name, value, updated_at) VALUES (?, ?, 't')", (key, value)
        ).rowcount

    return fn


def keys(db: Path) -> set[str]:
    conn = sqlite3.connect(db)
    try:
        return {r[0] for r in conn.execute("SELECT name FROM checkpoints")}
    finally:
        conn.close()


async def test_many_concurrent_writes_share_few_commits(
    store: Store, tmp_path: Path, clock: FakeClock
) -> None:
    results = await asyncio.gather(*(store.write(put(f"k{i}")) for i in range(600)))
    assert results == [1] * 600
    stats = store.writer_stats()
    assert stats.writes == 600
    # One commit per write would be 600; group_max=200 makes 3 the floor.
    assert 3 <= stats.commits <= 30
    assert stats.last_commit_at == clock.now()
    assert stats.queue_len == 0
    assert len(keys(tmp_path / "deals.db")) == 600


async def test_a_reply_arrives_only_after_commit(store: Store, tmp_path: Path) -> None:
    # A separate connection in this thread sees only committed data: if a
    # reply came before COMMIT, the row would be missing when it arrives.
    other = sqlite3.connect(tmp_path / "deals.db", isolation_level=None)
    unseen: list[str] = []

    async def one(i: int) -> None:
        await store.write(put(f"k{i}"))
        if other.execute("SELECT 1 FROM checkpoints WHERE name = ?", (f"k{i}",)).fetchone() is None:
            unseen.append(f"k{i}")

    await asyncio.gather(*(one(i) for i in range(300)))
    other.close()
    assert unseen == []


async def test_an_error_rolls_back_only_its_own_write(store: Store, tmp_path: Path) -> None:
    def bad(conn: sqlite3.Connection) -> None:
        conn.execute("INSERT INTO checkpoints VALUES ('bad-partial', 'v', 't')")
        raise RuntimeError("worker bug")

    tasks = [asyncio.ensure_future(store.write(put(f"k{i}"))) for i in range(20)]
    failing = asyncio.ensure_future(store.write(bad))
    tasks += [asyncio.ensure_future(store.write(put(f"j{i}"))) for i in range(20)]
    with pytest.raises(RuntimeError, match="worker bug"):
        await failing
    assert await asyncio.gather(*tasks) == [1] * 40
    # A constraint error is the caller's too, not the group's.
    with pytest.raises(sqlite3.IntegrityError):
        await store.write(put("k0"))
    got = keys(tmp_path / "deals.db")
    assert len(got) == 40 and "bad-partial" not in got
    assert store.writer_stats().commits <= 4


async def test_a_failing_write_is_replayed_out_of_its_group_and_the_rest_land_once(
    store: Store, tmp_path: Path
) -> None:
    """A group runs without a savepoint per write: a failure undoes the whole
    group and the others run again. Each must land exactly once, and hand back
    what its committed run returned, not what the discarded run did."""
    await store.write(lambda c: c.execute("INSERT INTO checkpoints VALUES ('n', '0', 't')"))
    before = store.writer_stats()
    runs: list[int] = []  # outside the connection, on purpose: it counts the runs

    def bump(i: int) -> Callable[[sqlite3.Connection], int]:
        def fn(conn: sqlite3.Connection) -> int:
            runs.append(i)
            conn.execute("INSERT INTO checkpoints VALUES (?, 'v', 't')", (f"k{i}",))
            got = conn.execute(
                "UPDATE checkpoints SET value = value + 1 WHERE name = 'n' RETURNING value"
            ).fetchone()
            return int(got[0])

        return fn

    def bad(conn: sqlite3.Connection) -> None:
        conn.execute("UPDATE checkpoints SET value = value + 1000 WHERE name = 'n'")
        raise RuntimeError("worker bug")

    def dupe(conn: sqlite3.Connection) -> None:
        conn.execute("UPDATE checkpoints SET value = value + 1000 WHERE name = 'n'")
        conn.execute("INSERT INTO checkpoints VALUES ('k3', 'v', 't')")

    probed: list[int] = []

    def probe(conn: sqlite3.Connection) -> int:
        # Breaks the contract on purpose: its result tells which run it came from.
        probed.append(len(runs))
        return len(runs)

    # Failures in the first pass (mid-group) and in the replay (a duplicate
    # key, a last bad write), all in one group: submitted before any yield.
    fns = [probe, *(bump(i) for i in range(60)), bad, *(bump(i) for i in range(60, 120))]
    fns += [dupe, bad]
    got = await asyncio.gather(*(store.write(fn) for fn in fns), return_exceptions=True)
    assert probed == [0, 60] and got[0] == 60  # the committed run's result
    assert isinstance(got[61], RuntimeError) and isinstance(got[-1], RuntimeError)
    assert isinstance(got[-2], sqlite3.IntegrityError)
    assert got[1:61] == list(range(1, 61))  # the replay keeps the order of the queue
    assert got[62:122] == list(range(61, 121))
    after = store.writer_stats()
    assert after.commits - before.commits == 1 and after.replays - before.replays == 1
    assert after.writes - before.writes == len(fns)
    conn = sqlite3.connect(tmp_path / "deals.db")
    assert conn.execute("SELECT value FROM checkpoints WHERE name = 'n'").fetchone() == ("120",)
    conn.close()
    assert keys(tmp_path / "deals.db") == {"n"} | {f"k{i}" for i in range(120)}
    # The contract this relies on: a write may run twice, never more.
    per_write = [runs.count(i) for i in range(120)]
    assert max(per_write) == 2 and min(per_write) == 1


async def test_a_group_without_failures_runs_each_write_once(store: Store) -> None:
    runs: list[int] = []

    def mark(i: int) -> Callable[[sqlite3.Connection], None]:
        def fn(conn: sqlite3.Connection) -> None:
            runs.append(i)
            conn.execute("INSERT INTO checkpoints VALUES (?, 'v', 't')", (f"k{i}",))

        return fn

    await asyncio.gather(*(store.write(mark(i)) for i in range(150)))
    assert sorted(runs) == list(range(150))
    assert store.writer_stats().replays == 0


async def test_producers_cancelled_while_waiting_for_room(tmp_path: Path, clock: FakeClock) -> None:
    db = tmp_path / "deals.db"
    s = await Store.open(db, clock=clock, queue_max=3, group_max=2, busy_timeout_s=0.05)
    holder = sqlite3.connect(db, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    tasks = [asyncio.ensure_future(s.write(put(f"k{i}"))) for i in range(40)]
    await wait_for(lambda: s.writer_stats().busy_since is not None, 5, "busy_since", every=0.01)
    gone = set(range(10, 40, 3))  # waiting for room, never queued: must never land
    for i in gone:
        tasks[i].cancel()
    holder.execute("COMMIT")
    holder.close()
    # Cancelled as they are woken for room: the room must pass on, not be lost.
    for i in range(11, 40, 7):
        await asyncio.sleep(0)
        tasks[i].cancel()
    results = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 10)
    landed = keys(db)
    for i, r in enumerate(results):
        if i in gone:
            assert isinstance(r, asyncio.CancelledError) and f"k{i}" not in landed
        elif not isinstance(r, BaseException):
            assert r == 1 and f"k{i}" in landed
    assert sum(1 for r in results if r == 1) >= 40 - len(gone) - 5
    assert await asyncio.wait_for(s.write(put("after")), 5) == 1
    assert s.writer_stats().queue_len == 0
    await s.close()


async def test_a_producer_cancelled_as_it_is_given_room_passes_the_room_on(
    tmp_path: Path, clock: FakeClock
) -> None:
    db = tmp_path / "deals.db"
    s = await Store.open(db, clock=clock, queue_max=1, group_max=1, busy_timeout_s=0.05)
    holder = sqlite3.connect(db, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    c: asyncio.Future[int] | None = None

    async def a_then_cancel_c() -> int:
        got = await s.write(put("a"))
        # A's reply and C's "room for you" are set in the same writer step and
        # A runs first: C is cancelled after being given room, before using it.
        assert c is not None
        c.cancel()
        return got

    a = asyncio.ensure_future(a_then_cancel_c())
    b = asyncio.ensure_future(s.write(put("b")))  # queued while A is being committed
    c = asyncio.ensure_future(s.write(put("c")))  # waits for room
    d = asyncio.ensure_future(s.write(put("d")))  # waits behind C: C must hand it the room
    await wait_for(lambda: s.writer_stats().busy_since is not None, 5, "busy_since", every=0.01)
    holder.execute("COMMIT")
    holder.close()
    assert list(await asyncio.wait_for(asyncio.gather(a, b, d), 5)) == [1, 1, 1]
    assert c.cancelled() and keys(db) == {"a", "b", "d"}
    await s.close()


async def test_producers_wait_when_the_queue_is_full(tmp_path: Path, clock: FakeClock) -> None:
    db = tmp_path / "deals.db"
    s = await Store.open(db, clock=clock, queue_max=5, group_max=3, busy_timeout_s=0.05)
    holder = sqlite3.connect(db, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # the writer cannot commit: the queue fills
    tasks = [asyncio.ensure_future(s.write(put(f"k{i}"))) for i in range(30)]
    await wait_for(lambda: s.writer_stats().busy_since is not None, 5, "busy_since", every=0.01)
    await asyncio.sleep(0.1)
    stats = s.writer_stats()
    # Held in memory: at most queue_max queued plus the one group taken.
    assert stats.queue_len == 5 + 3
    assert not any(t.done() for t in tasks)
    holder.execute("COMMIT")
    holder.close()
    assert await asyncio.gather(*tasks) == [1] * 30
    await s.close()
    assert len(keys(db)) == 30


async def test_close_commits_everything_queued_then_refuses(
    tmp_path: Path, clock: FakeClock
) -> None:
    db = tmp_path / "deals.db"
    s = await Store.open(db, clock=clock, queue_max=10)
    # 200 producers against a queue of 10: most are still waiting to enqueue
    # when close() starts, and were accepted, so they must land too.
    tasks = [asyncio.ensure_future(s.write(put(f"k{i}"))) for i in range(200)]
    await asyncio.sleep(0)
    await s.close()
    assert [t.result() for t in tasks] == [1] * 200
    assert len(keys(db)) == 200
    with pytest.raises(StoreClosed):
        await s.write(put("late"))
    with pytest.raises(StoreClosed):
        await s.read(lambda c: 1)
    await s.close()  # twice is harmless


async def test_cancelled_callers_never_break_the_writer(store: Store, tmp_path: Path) -> None:
    tasks = [asyncio.ensure_future(store.write(put(f"k{i}"))) for i in range(200)]
    await asyncio.sleep(0)
    for t in tasks[::2]:
        t.cancel()
    await asyncio.sleep(0.002)  # some cancelled mid-group, after their write ran
    for t in tasks[1::4]:
        t.cancel()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    got = keys(tmp_path / "deals.db")
    for i, r in enumerate(results):
        if not isinstance(r, BaseException):
            assert r == 1 and f"k{i}" in got  # acknowledged means committed
    assert await store.write(put("after")) == 1
    assert store.writer_stats().queue_len == 0


async def test_a_caller_cancelled_while_the_lock_is_held(tmp_path: Path, clock: FakeClock) -> None:
    db = tmp_path / "deals.db"
    s = await Store.open(db, clock=clock, busy_timeout_s=0.05)
    holder = sqlite3.connect(db, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    waiting = asyncio.ensure_future(s.write(put("gone")))
    await wait_for(lambda: s.writer_stats().busy_since is not None, 5, "busy_since", every=0.01)
    waiting.cancel()
    holder.execute("COMMIT")
    holder.close()
    assert await s.write(put("next")) == 1
    assert "next" in keys(db)
    assert waiting.cancelled()
    await s.close()


async def test_a_lock_held_by_another_connection_is_waited_out(
    tmp_path: Path, clock: FakeClock
) -> None:
    db = tmp_path / "deals.db"
    s = await Store.open(db, clock=clock, busy_timeout_s=0.1)
    holder = sqlite3.connect(db, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    writes = [asyncio.ensure_future(s.write(put(f"k{i}"))) for i in range(10)]
    # Held well past busy_timeout: several tries time out, none reaches a caller.
    await asyncio.sleep(0.6)
    stats = s.writer_stats()
    assert stats.busy_since == clock.now()
    assert stats.last_error is not None and "locked" in stats.last_error
    assert stats.queue_len == 10 and not any(w.done() for w in writes)
    holder.execute("COMMIT")
    holder.close()
    assert await asyncio.gather(*writes) == [1] * 10
    assert s.writer_stats().busy_since is None
    await s.close()
    assert len(keys(db)) == 10


async def test_a_full_disk_fails_the_group_then_service_resumes(
    store: Store, clock: FakeClock
) -> None:
    pages = await store.write(lambda c: c.execute("PRAGMA page_count").fetchone()[0])
    await store.write(lambda c: c.execute(f"PRAGMA max_page_count = {pages + 2}"))
    big = os.urandom(200_000)
    with pytest.raises(StoreFull):
        await store.write(
            lambda c: c.execute("INSERT INTO checkpoints VALUES ('big', ?, 't')", (big.hex(),))
        )
    stats = store.writer_stats()
    assert stats.full_since == clock.now()
    assert stats.last_error is not None and "full" in stats.last_error
    assert await store.write(put("small")) == 1  # small writes still fit
    await store.write(lambda c: c.execute("PRAGMA max_page_count = 1000000"))
    await store.write(
        lambda c: c.execute("INSERT INTO checkpoints VALUES ('big', ?, 't')", (big.hex(),))
    )
    assert store.writer_stats().full_since is None


async def test_readers_are_read_only_and_see_commits(store: Store) -> None:
    await store.write(put("a"))
    assert await store.read(feed.get_checkpoints) == {"a": "v"}
    with pytest.raises(sqlite3.OperationalError, match="readonly"):
        await store.read(put("b"))
    counts = await asyncio.gather(
        *(store.read(lambda c: c.execute("SELECT count(*) FROM checkpoints").fetchone()[0])
          for _ in range(20))
    )  # fmt: skip
    assert counts == [1] * 20


def _open_fds(path: Path) -> int:
    n = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{fd}").startswith(str(path)):
                n += 1
        except OSError:
            pass
    return n


async def test_close_closes_every_connection(tmp_path: Path, clock: FakeClock) -> None:
    db = tmp_path / "deals.db"
    for _ in range(3):
        s = await Store.open(db, clock=clock, readers=3)
        await s.write(put(f"k{_}"))
        await s.read(feed.get_checkpoints)
        assert _open_fds(db) >= 4
        await s.close()
    assert _open_fds(db) == 0


async def test_migrates_a_version_0_file_in_one_transaction(
    tmp_path: Path, clock: FakeClock
) -> None:
    db = tmp_path / "old.db"
    conn = sqlite3.connect(db)
    conn.execute("CREATE TABLE notes (x TEXT)")
    conn.execute("INSERT INTO notes VALUES ('kept')")
    conn.commit()
    conn.close()
    s = await Store.open(db, clock=clock)
    await s.close()
    conn = sqlite3.connect(db)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == schema.SCHEMA_VERSION
    assert conn.execute("SELECT x FROM notes").fetchall() == [("kept",)]
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert {
        "deals",
        "product_history",
        "checkpoints",
        "workers",
        "daemon",
        "token_ledger",
        "alert_state",
        "alert_outbox",
        "alert_channels",
    } <= tables
    conn.close()


def test_a_failing_migration_changes_nothing(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / "m.db", isolation_level=None)
    broken = [*migrations.MIGRATIONS, "CREATE TABLE extra (a);\nTHIS IS NOT SQL;\n"]
    schema.apply_migrations(conn)
    with pytest.raises(sqlite3.OperationalError):
        schema.apply_migrations(conn, broken)
    assert schema.user_version(conn) == schema.SCHEMA_VERSION
    assert conn.execute("SELECT name FROM sqlite_master WHERE name = 'extra'").fetchone() is None
    assert not conn.in_transaction
    conn.close()


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


async def test_refuses_a_newer_schema_without_touching_it(tmp_path: Path, clock: FakeClock) -> None:
    db = tmp_path / "new.db"
    conn = sqlite3.connect(db)
    conn.execute("CREATE TABLE future (x)")
    conn.execute("PRAGMA user_version = 7")
    conn.commit()
    conn.close()
    before = _digest(db)
    with pytest.raises(SchemaTooNew, match="7"):
        await Store.open(db, clock=clock)
    assert _digest(db) == before
    assert _open_fds(db) == 0


@pytest.mark.parametrize("content", [b"not a database at all\n" * 50, b"SQLite", os.urandom(4096)])
async def test_refuses_a_file_that_is_not_sqlite(
    tmp_path: Path, clock: FakeClock, content: bytes
) -> None:
    db = tmp_path / "deals.db"
    db.write_bytes(content)
    with pytest.raises(NotADatabase):
        await Store.open(db, clock=clock)
    assert db.read_bytes() == content
    assert not (tmp_path / "deals.db-wal").exists()
    assert not (tmp_path / "deals.db-journal").exists()


CRASH_CHILD = """
import asyncio, itertools, sys
from dealsd.clock import SystemClock
from dealsd.store import Store

async def main() -> None:
    store = await Store.open(sys.argv[1], clock=SystemClock())
    ids = itertools.count()

    async def producer() -> None:
        for i in ids:
            await store.write(lambda c: c.execute(
                "INSERT INTO checkpoints VALUES (?, 'v', 't')", (f"k{i}",)))
            sys.stdout.write(f"ack {i}\\n")
            sys.stdout.flush()

    await asyncio.gather(*(producer() for _ in range(50)))

asyncio.run(main())
"""


def test_acknowledged_writes_survive_kill_9(tmp_path: Path) -> None:
    db = tmp_path / "deals.db"
    proc = subprocess.Popen(
        [sys.executable, "-c", CRASH_CHILD, str(db)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert proc.stdout is not None
    acked: list[str] = []
    for line in proc.stdout:
        if line.startswith("ack "):
            acked.append(f"k{line[4:].strip()}")
        if len(acked) >= 3000:
            break
    proc.send_signal(signal.SIGKILL)
    acked += [f"k{line[4:].strip()}" for line in proc.stdout if line.startswith("ack ")]
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert set(acked) <= keys(db)


async def test_dashboard_process_holding_the_lock_loses_no_write(tmp_path: Path) -> None:
    """A second OS process reads all along and once holds the write lock ~6 s:
    longer than the writer's 5 s busy_timeout (docs/field-notes.md #1)."""
    db = tmp_path / "deals.db"
    store = await Store.open(db, clock=FakeClock())
    dash = await asyncio.create_subprocess_exec(
        sys.executable, str(HERE / "dashboard_proc.py"), str(db), "6.0",
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert dash.stdout is not None
    assert (await dash.stdout.readline()).strip() == b"holding"
    busy_seen: list[float] = []

    async def watch() -> None:
        while True:
            b = store.writer_stats().busy_since
            if b is not None:
                busy_seen.append(b)
            await asyncio.sleep(0.05)

    watcher = asyncio.ensure_future(watch())
    now = iso_utc(1_800_000_000)
    rows = [
        {"asin": f"B{i:09d}", "domain_id": 1, "keepa_last_update": now, "last_seen_at": now}
        for i in range(2000)
    ]
    try:
        one = functools.partial(feed.upsert_deals, checkpoints={}, now=now)
        counts = await asyncio.gather(
            *(store.write(functools.partial(one, rows=[r])) for r in rows)
        )
    finally:
        watcher.cancel()
        out, _ = await dash.communicate()
        await store.close()
    assert sum(c.new for c in counts) == 2000
    assert busy_seen, "the writer never saw the lock held"
    report = json.loads(out)
    assert report["errors"] == [] and report["reads"] > 10
    assert report["held_s"] >= 5.5
    conn = sqlite3.connect(db)
    assert conn.execute("SELECT count(*) FROM deals").fetchone()[0] == 2000
    conn.close()
