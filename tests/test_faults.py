"""The reliability fault suite (issue 6): the real daemon against the simulator
over loopback, in accelerated time, with one kind of trouble per test.

Nothing in between is replaced: the daemon runs in this event loop
(``run_daemon``) where a test needs to look at its health as it changes, and as
``python -m dealsd run`` where a test needs signals, a SIGKILL or the CLI. The
recognisable key ``helpers.SECRET`` is checked against every log,
status output and database file a test produces. Longer variants carry
``@pytest.mark.soak`` (``pytest -m soak``).
"""

from __future__ import annotations

import asyncio
import errno
import json
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import (
    PERIOD_S,
    SECRET,
    DaemonProc,
    NotifyListener,
    Running,
    assert_no_secret,
    clean_env,
    counts,
    database_bytes,
    db_query,
    hold_write_lock,
    integrity,
    sim_options,
    status,
    status_doc,
    wait_for,
    write_config,
)
from structlog.testing import capture_logs

from dealsd.clock import SystemClock, iso_utc
from dealsd.config import load_api_key, load_config
from dealsd.notify import Notifier
from dealsd.simulator import Faults, Simulator
from dealsd.status import gather
from dealsd.store import Store

ROOT = Path(__file__).resolve().parent.parent


async def started(sim: Simulator) -> Simulator:
    await sim.start("127.0.0.1", 0)
    return sim


def stored_asins(db: Path) -> set[str]:
    try:
        return {r[0] for r in db_query(db, "SELECT asin FROM deals")}
    except sqlite3.OperationalError:
        return set()


def backfilled_asins(db: Path) -> set[str]:
    try:
        rows = db_query(db, "SELECT asin FROM deals WHERE backfilled_at IS NOT NULL")
    except sqlite3.OperationalError:
        return set()
    return {r[0] for r in rows}


def check_stored_rows(db: Path, sim: Simulator) -> None:
    """Nothing wrong stored: every deal is a catalogue deal, every payload a whole product."""
    catalogue = sim.catalogue.by_asin
    for r in db_query(db, "SELECT asin, keepa_last_update, deal_json FROM deals"):
        assert r["asin"] in catalogue, r["asin"]
        assert r["keepa_last_update"], dict(r)
        deal = json.loads(r["deal_json"])
        assert deal["asin"] == r["asin"] and isinstance(deal["lastUpdate"], int)
        assert all(isinstance(v, int) for v in deal["current"]), r["asin"]
    # A product with an odd field is paid for: it is stored as sent, with the
    # field named in unreadable_fields and nothing misread from it.
    for r in db_query(
        db,
        "SELECT h.asin, h.payload, d.unreadable_fields, d.avg90_new_cents FROM product_history "
        "AS h JOIN deals AS d USING (domain_id, asin)",
    ):
        product = json.loads(zlib.decompress(r["payload"]))
        odd = (r["unreadable_fields"] or "").split(",")
        assert product["asin"] == r["asin"]
        assert isinstance(product["productType"], int) or "productType" in odd, r["asin"]
        avg90 = (product.get("stats") or {}).get("avg90") or []
        if not all(isinstance(v, int) for v in avg90):
            assert "stats.avg90" in odd, r["asin"]
            if not isinstance(avg90[1], int):
                assert r["avg90_new_cents"] is None, r["asin"]


def wrote_twice(sim: Simulator) -> int:
    return sum(n - 1 for n in sim.products_bought.values() if n > 1)


# -- 1. broken answers --------------------------------------------------------


async def test_broken_answers_are_survived_and_bad_items_skipped(tmp_path: Path) -> None:
    faults = Faults(
        error_5xx=0.1, hang=0.06, hang_s=3.0, reset=0.1, truncated=0.1, non_json=0.1,
        bad_items=0.02,
    )  # fmt: skip
    # Enough deals that the backfiller never runs out of work: once it did,
    # requests slowed to the upserter's polls and waiting for the rarest
    # fault (a hang, ~4 % of requests) could take 25 s.
    sim = await started(Simulator(sim_options(catalogue_size=1500, faults=faults, seed=3)))
    path = write_config(
        tmp_path, sim.base_url, max_batch=10,
        read_timeout_s=0.5, connect_timeout_s=0.5, max_attempts=5,
    )  # fmt: skip
    db = tmp_path / "deals.db"
    with capture_logs() as logs:
        d = Running(load_config(path), path, api_key=SECRET, backoff_cap_s=1.0)
        kinds = ("error_5xx", "hang", "reset", "truncated", "non_json", "bad_items")

        def through() -> bool:
            injected = sim.stats()["faults"]
            return counts(db)[1] >= 40 and all(injected.get(k, 0) > 0 for k in kinds)

        # Usually met in 2-7 s; the bound is for the unlucky draw, not the norm.
        await wait_for(through, 60, "40 deals backfilled through every kind of fault")
        assert await d.finish() == 0
    injected = sim.stats()["faults"]
    check_stored_rows(db, sim)
    skipped = [e for e in logs if e["event"] == "keepa.items_skipped"]
    assert sum(int(e["count"]) for e in skipped) > 0, "malformed items were not counted"
    # A malformed product is a failed attempt for its deal (retried, then given up).
    bad_products = sum(int(e["count"]) for e in skipped if e["endpoint"] == "product")
    failed = db_query(db, "SELECT count(*) FROM deals WHERE backfill_attempts > 0")
    assert failed[0][0] >= min(1, bad_products)
    print(f"faults injected: {injected}; malformed items skipped: {len(skipped)} lines")
    assert integrity(db) == "ok"
    assert_no_secret(repr(logs), database_bytes(db))


# -- 2. another consumer of the key, a plan change ----------------------------


async def test_a_429_storm_and_plan_changes_keep_ingesting(tmp_path: Path) -> None:
    # "5 tokens a minute" at 4x scale: 20 per 0.1 s period, 15 of them taken
    # by another consumer of the same key; then 25 (100), then 5 (20) again.
    sim = await started(
        Simulator(
            sim_options(
                catalogue_size=600, refill_rate=20, initial_tokens=20,
                other_consumer_per_period=15,
            )
        )
    )  # fmt: skip
    path = write_config(tmp_path, sim.base_url, max_batch=20)
    db = tmp_path / "deals.db"
    d = Running(load_config(path), path, api_key=SECRET, backoff_cap_s=1.0)
    phases: list[tuple[str, int, int]] = []
    t0 = time.monotonic()
    await wait_for(lambda: counts(db)[1] > 0, 10, "a first backfill under the storm")
    for name, rate in (("plan 5", 20), ("plan 25", 100), ("plan 5 again", 20)):
        sim.control(refill_rate=rate)
        before = counts(db)[1]
        await asyncio.sleep(1.0)
        phases.append((name, before, counts(db)[1]))
    elapsed = time.monotonic() - t0
    assert await d.finish() == 0
    for name, before, after in phases:
        assert after > before, (name, phases)
    stats = sim.stats()
    assert stats["other_consumed"] > 0
    periods = elapsed / PERIOD_S
    # A 429 costs nothing but must not become a hammering loop: at most about
    # one per consumer per refill period, however long the storm lasts.
    assert stats["rate_limited"] <= 2 * periods + 10, (stats["rate_limited"], periods)
    print(f"429 storm: rate_limited={stats['rate_limited']} periods={periods:.0f} phases={phases}")


# -- 3. Keepa unreachable for longer than the janitor's grace ----------------


async def test_an_outage_longer_than_the_grace_prunes_nothing_and_recovers(tmp_path: Path) -> None:
    # One page of deals re-seen every round (sortType 2 has no watermark), a
    # grace of 1.8 s: during a 3.5 s outage every deal looks stale.
    sim = await started(Simulator(sim_options(catalogue_size=140)))
    path = write_config(tmp_path, sim.base_url)
    path.write_text(
        path.read_text()
        .replace("sortType = 1", "sortType = 2")
        .replace("grace_h = 1", "grace_h = 0.0005")
    )
    db = tmp_path / "deals.db"
    d = Running(load_config(path), path, api_key=SECRET, backoff_cap_s=1.0, health_margin_s=1.0)
    await wait_for(lambda: counts(db)[0] == 140, 10, "the catalogue stored")
    await asyncio.sleep(2.0)  # healthy past the grace: the janitor keeps what is re-seen
    assert counts(db)[0] == 140
    sim.control(outage=True)
    outage_start = time.monotonic()
    unhealthy: dict[str, Any] | None = None
    while time.monotonic() - outage_start < 3.5:
        assert counts(db)[0] == 140, "the janitor pruned during an ingestion outage"
        doc = gather(db)
        if not doc["healthy"] and doc["daemon"]["state"] == "running":
            unhealthy = doc
        await asyncio.sleep(0.2)
    assert unhealthy is not None, "status stayed healthy through the outage"
    assert any("upserter" in c for c in unhealthy["daemon"]["causes"]), unhealthy["daemon"]
    rc, text = await status(db, as_json=False)
    assert rc == 1 and "UNHEALTHY" in text and "cause: upserter" in text, text
    assert d.task.done() is False  # it stayed up
    sim.control(outage=False)
    back = time.monotonic()
    back_iso = iso_utc(time.time())
    pages = sim.stats()["deal_pages"]
    await wait_for(lambda: sim.stats()["deal_pages"] > pages, 10, "a deal page after recovery")
    resumed_s = time.monotonic() - back
    await wait_for(
        lambda: db_query(db, "SELECT min(last_seen_at) FROM deals")[0][0] >= back_iso,
        10,
        "every deal seen again",
    )
    await wait_for(lambda: gather(db)["healthy"], 10, "healthy again")
    assert counts(db)[0] == 140
    assert await d.finish() == 0
    # One refill period + the interval (1 s) + the capped retry backoff (1 s).
    assert resumed_s <= PERIOD_S + 1.0 + 1.0 + 1.0, resumed_s
    print(f"outage: resumed {resumed_s:.2f}s after Keepa came back")


# -- 4. a refused key, fixed on disk, reloaded ---------------------------------


async def test_a_refused_key_does_not_spin_and_a_reload_reads_the_fixed_key(tmp_path: Path) -> None:
    sim = await started(Simulator(sim_options(catalogue_size=100, api_keys=frozenset({SECRET}))))
    wrong = "SECRET-KEY-WRONG-0000"
    key_file = tmp_path / "keepa.key"
    key_file.write_text(wrong + "\n")
    path = write_config(tmp_path, sim.base_url, api_key_file=str(key_file))
    db = tmp_path / "deals.db"
    d = await DaemonProc(path, env=clean_env()).start()
    try:
        await wait_for(lambda: sum(sim.stats()["requests"].values()) > 0, 10, "a first request")
        doc: dict[str, Any] = {}
        for _ in range(40):  # the subprocess snapshots every 5 s
            rc, doc = await status_doc(db)
            if any("access denied" in c for c in doc["daemon"]["causes"]):
                break
            await asyncio.sleep(0.5)
        assert rc == 1 and not doc["healthy"], doc
        assert any("access denied" in c for c in doc["daemon"]["causes"]), doc
        rc, text = await status(db, as_json=False)
        assert rc == 1 and "access denied" in text, text
        # No tight retry loop: a refused key stops the spending.
        before = sum(sim.stats()["requests"].values())
        await asyncio.sleep(2.0)
        assert sum(sim.stats()["requests"].values()) - before <= 1
        assert before <= 6, sim.stats()["requests"]
        key_file.write_text(SECRET + "\n")
        fixed = time.monotonic()
        d.signal(signal.SIGHUP)
        await wait_for(lambda: counts(db)[0] > 0, 10, "deals with the fixed key")
        recovered_s = time.monotonic() - fixed
        d.signal(signal.SIGTERM)
        assert await d.wait() == 0, d.log_text()[-3000:]
    finally:
        await d.ensure_dead()
    log_text = d.log_text()
    assert "api_key_changed" in log_text
    assert_no_secret(log_text, text, json.dumps(doc), database_bytes(db))
    assert_no_secret(log_text, database_bytes(db), key=wrong)
    print(f"refused key: recovered {recovered_s:.2f}s after SIGHUP")


# -- 5. SIGKILL at random moments ---------------------------------------------


async def kill_loop(sim: Simulator, tmp_path: Path, kills: int, seed: int) -> dict[str, Any]:
    max_batch = 10
    path = write_config(tmp_path, sim.base_url, max_batch=max_batch)
    db = tmp_path / "deals.db"
    rng = random.Random(seed)
    seen: set[str] = set()
    backfilled: set[str] = set()
    marks: dict[str, str] = {}
    logs: list[str] = []
    restarts = 0
    for i in range(kills):
        d = await DaemonProc(path).start()
        try:
            # Random moments, from "still importing" to "well into a batch".
            await asyncio.sleep(rng.uniform(0.25, 0.85))  # ready at ~0.35 s
            assert d.proc is not None and d.proc.returncode is None, d.log_text()[-2000:]
            await d.kill()
        finally:
            await d.ensure_dead()
        restarts += 1
        logs.append(d.log_text())
        if not db.exists():
            continue
        assert integrity(db) == "ok", f"kill {i}"
        now_seen, now_backfilled = stored_asins(db), backfilled_asins(db)
        assert seen <= now_seen, f"kill {i}: committed deals lost: {sorted(seen - now_seen)[:5]}"
        assert backfilled <= now_backfilled, f"kill {i}: committed backfills lost"
        seen, backfilled = now_seen, now_backfilled
        try:
            rows = db_query(db, "SELECT name, value FROM checkpoints")
        except sqlite3.OperationalError:
            rows = []
        for r in rows:
            if r["name"].endswith(".watermark"):
                # Cursors only move forward across kills.
                assert int(r["value"]) >= int(marks.get(r["name"], "-1")), r["name"]
                marks[r["name"]] = r["value"]
    # The last start runs to the end of the backfill and stops cleanly.
    d = await DaemonProc(path).start()
    try:
        await d.ready()
        await wait_for(lambda: counts(db)[0] == counts(db)[1] > 0, 30, "the backfill done")
        d.signal(signal.SIGTERM)
        assert await d.wait() == 0, d.log_text()[-3000:]
    finally:
        await d.ensure_dead()
    logs.append(d.log_text())
    assert integrity(db) == "ok"
    assert seen <= stored_asins(db)
    twice = wrote_twice(sim)
    # Paid work is checkpointed: at most the batch in flight is bought again.
    assert twice <= restarts * max_batch, (twice, restarts)
    assert_no_secret(*logs, database_bytes(db))
    assert not any("Traceback" in t for t in logs[-1:])
    return {"restarts": restarts, "bought_twice": twice, "deals": counts(db)[0]}


def crash_sim(size: int) -> Simulator:
    # 50 tokens a second: a backfill that spans many short runs.
    return Simulator(
        sim_options(catalogue_size=size, refill_rate=6, initial_tokens=30, new_deals_per_period=1)
    )


async def test_sigkill_at_random_moments_loses_nothing_committed(tmp_path: Path) -> None:
    sim = await started(crash_sim(200))
    result = await kill_loop(sim, tmp_path, kills=20, seed=5)
    print(f"crash consistency: {result}")


@pytest.mark.soak
@pytest.mark.timeout(900)
async def test_soak_sigkill_many_times(tmp_path: Path) -> None:
    sim = await started(crash_sim(1500))
    result = await kill_loop(sim, tmp_path, kills=200, seed=11)
    print(f"crash consistency (soak): {result}")


# -- 6. another process holds the write lock ----------------------------------


async def lock_hold(sim: Simulator, tmp_path: Path, hold_s: float) -> None:
    path = write_config(tmp_path, sim.base_url, max_batch=10)
    db = tmp_path / "deals.db"
    sock = NotifyListener(tmp_path)
    d = Running(
        load_config(path),
        path,
        api_key=SECRET,
        notifier=Notifier(sock.addr, watchdog_interval_s=0.2),
    )
    try:
        await wait_for(lambda: counts(db)[1] >= 20, 15, "a backfill under way")
        holder = await hold_write_lock(db, hold_s)
        taken = time.monotonic()
        before_seen, before_backfilled = stored_asins(db), backfilled_asins(db)
        await wait_for(lambda: "writer busy" in sock.last_status(), hold_s, "STATUS= writer busy")
        named_after = time.monotonic() - taken
        # A restart cannot take the lock back: the watchdog pings go on while
        # STATUS= names the busy writer (one follows every health tick).
        named_at = len(sock.got)
        await wait_for(lambda: sock.seen("WATCHDOG=1", since=named_at), 2, "a ping, writer busy")
        assert holder.returncode is None, "the lock was released before the ping came"
        # `dealsd status` cannot read it from the snapshot (the daemon cannot
        # write one under the lock): it sees the late heartbeat and the lock.
        await asyncio.sleep(max(0.0, 2.0 - named_after))  # the heartbeat is late by now
        rc, text = await status(db, as_json=False)
        assert rc == 1 and "cause: writer busy" in text, text
        while holder.returncode is None and time.monotonic() - taken < hold_s - 0.5:
            assert d.task.done() is False
            await asyncio.sleep(0.2)
        out, _ = await asyncio.wait_for(holder.communicate(), hold_s + 10)
        report = json.loads(out.decode().strip().splitlines()[-1])
        assert report["errors"] == [], report
        resumed = counts(db)[1]
        await wait_for(lambda: counts(db)[1] > resumed, 10, "work after the lock is released")
        await wait_for(lambda: "writer busy" not in sock.last_status(), 10, "the cause cleared")
        assert await d.finish() == 0
    finally:
        sock.close()
    assert before_seen <= stored_asins(db) and before_backfilled <= backfilled_asins(db)
    assert integrity(db) == "ok"
    assert_no_secret(database_bytes(db))
    print(f"write lock held {hold_s}s: named in STATUS= after {named_after:.1f}s")


async def test_a_write_lock_held_by_another_process_is_waited_out(tmp_path: Path) -> None:
    sim = await started(crash_sim(600))
    await lock_hold(sim, tmp_path, hold_s=8.0)


@pytest.mark.soak
@pytest.mark.timeout(300)
async def test_soak_a_write_lock_held_70s(tmp_path: Path) -> None:
    sim = await started(crash_sim(4000))
    await lock_hold(sim, tmp_path, hold_s=70.0)


# -- 7. disk full ---------------------------------------------------------------


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    mnt = tmp_path / "small"
    mnt.mkdir()
    r = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=600k", "tmpfs", str(mnt)],
        capture_output=True, text=True,
    )  # fmt: skip
    if r.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {r.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


async def grow(mnt: Path) -> None:
    """Give the small file system room: 32 MB."""
    remount = await asyncio.create_subprocess_exec("mount", "-o", "remount,size=32m", str(mnt))
    assert await remount.wait() == 0


def fill(mnt: Path, *, leave: int) -> Path:
    """Fill the file system at ``mnt`` but ``leave`` bytes; the filler's path."""
    filler = mnt / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        while os.write(fd, bytes(1 << 16)):
            pass
    except OSError as exc:
        if exc.errno != errno.ENOSPC:
            raise
    finally:
        os.close(fd)
    os.truncate(filler, max(0, filler.stat().st_size - leave))
    return filler


async def test_a_full_disk_is_named_and_survived(small_fs: Path, tmp_path: Path) -> None:
    sim = await started(crash_sim(600))
    path = write_config(tmp_path, sim.base_url, max_batch=10)
    db = small_fs / "deals.db"
    path.write_text(path.read_text().replace(str(tmp_path / "deals.db"), str(db)))
    sock = NotifyListener(tmp_path)
    d = Running(load_config(path), path, api_key=SECRET, notifier=Notifier(sock.addr))
    t0 = time.monotonic()
    try:
        await wait_for(lambda: "database full" in sock.last_status(), 30, "STATUS= database full")
        assert d.task.done() is False
        full_at = time.monotonic()
        full_counts = counts(db)
        assert integrity(db) == "ok"
        await grow(small_fs)
        await wait_for(lambda: counts(db)[1] > full_counts[1], 15, "backfill after space returned")
        await wait_for(lambda: "database full" not in sock.last_status(), 10, "the cause cleared")
        recovered_s = time.monotonic() - full_at
        assert await d.finish() == 0
    finally:
        sock.close()
    assert integrity(db) == "ok"
    check_stored_rows(db, sim)
    print(f"disk full: named after {full_at - t0:.1f}s of filling, recovered in {recovered_s:.1f}s")


async def test_a_daemon_started_on_a_full_disk_says_so_and_recovers(
    small_fs: Path, tmp_path: Path
) -> None:
    # The database exists and the disk is full but for the 32 KB WAL index
    # SQLite needs to open it, so the first writes fail: the upserter's page and
    # the start-up snapshot. CI once met the snapshot's failure by a race in the
    # test above, and it ended the daemon without a word before READY=1.
    sim = await started(crash_sim(600))
    path = write_config(tmp_path, sim.base_url, max_batch=10)
    db = small_fs / "deals.db"
    path.write_text(path.read_text().replace(str(tmp_path / "deals.db"), str(db)))
    await (await Store.open(db, clock=SystemClock())).close()
    fill(small_fs, leave=40 * 1024)
    sock = NotifyListener(tmp_path)
    with capture_logs() as logs:
        d = Running(load_config(path), path, api_key=SECRET, notifier=Notifier(sock.addr))
        try:
            await wait_for(lambda: sock.seen("READY=1"), 15, "READY=1")
            await wait_for(lambda: "database full" in sock.last_status(), 15, "STATUS= full")
            assert counts(db) == (0, 0)
            assert d.task.done() is False
            await grow(small_fs)
            await wait_for(lambda: counts(db)[1] > 0, 20, "backfill after space returned")
            await wait_for(lambda: "database full" not in sock.last_status(), 10, "cleared")
            assert await d.finish() == 0
        finally:
            sock.close()
    events = [e["event"] for e in logs]
    assert "crashed" not in events and "snapshot_failed" in events, events
    assert events.count("store_full") >= 1 and "store_full_cleared" in events, events
    assert integrity(db) == "ok"
    check_stored_rows(db, sim)


# -- 8. bad operator input through the real CLI --------------------------------


def run_cli(*args: str, **kw: Any) -> subprocess.CompletedProcess[str]:
    # Root reads a mode-000 file anyway: run without the capabilities that allow it.
    drop = ["-dac_override", "-dac_read_search"]
    caps = ",".join(drop)
    prefix = (
        ["setpriv", f"--inh-caps={caps}", f"--bounding-set={caps}"]
        if os.geteuid() == 0 and shutil.which("setpriv")
        else []
    )
    return subprocess.run(
        [*prefix, sys.executable, "-m", "dealsd", *args], capture_output=True, text=True,
        timeout=30,
        env=clean_env(KEEPA_API_KEY=SECRET), cwd=ROOT, **kw,
    )  # fmt: skip


def test_broken_config_files_exit_78_naming_the_file(tmp_path: Path) -> None:
    as_dir = tmp_path / "dir.toml"
    as_dir.mkdir()
    empty = tmp_path / "empty.toml"
    empty.write_bytes(b"")
    latin1 = tmp_path / "latin1.toml"
    latin1.write_bytes('[database]\npath = "/tmp/caf\xe9.db"\n'.encode("latin-1"))
    secret = tmp_path / "secret.toml"
    secret.write_text("[database]\npath = '/tmp/x.db'\n")
    secret.chmod(0o000)
    for cfg in (as_dir, empty, latin1, secret):
        r = run_cli("run", "--config", str(cfg))
        assert r.returncode == 78, (cfg, r.returncode, r.stderr)
        assert str(cfg) in r.stderr and "Traceback" not in r.stderr, r.stderr
        assert_no_secret(r.stderr, r.stdout)


def test_a_database_that_is_not_sqlite_is_refused_untouched(tmp_path: Path) -> None:
    db = tmp_path / "deals.db"
    junk = b"this is a spreadsheet, not a database\n" * 200
    db.write_bytes(junk)
    path = write_config(tmp_path, "http://127.0.0.1:9")
    r = run_cli("run", "--config", str(path))
    assert r.returncode == 65, (r.returncode, r.stderr)
    assert str(db) in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert db.read_bytes() == junk
    assert not Path(f"{db}-wal").exists() and not Path(f"{db}-journal").exists()
    assert_no_secret(r.stderr, r.stdout)
    # Restarting cannot turn the file into a database: systemd must not retry it.
    unit = (ROOT / "systemd" / "dealsd.service").read_text()
    prevent = next(ln for ln in unit.splitlines() if ln.startswith("RestartPreventExitStatus="))
    assert {"65", "78"} <= set(prevent.split("=", 1)[1].split()), prevent


# -- 10. signals under load ----------------------------------------------------


async def test_sighup_storm_then_sigterm_mid_batch_commits_everything(tmp_path: Path) -> None:
    sim = await started(Simulator(sim_options(catalogue_size=800, latency_s=0.3)))
    path = write_config(tmp_path, sim.base_url, max_batch=100)
    db = tmp_path / "deals.db"
    d = await DaemonProc(path).start()
    try:
        await wait_for(lambda: counts(db)[1] > 0, 15, "backfill under way")
        storm_end = time.monotonic() + 1.5
        while time.monotonic() < storm_end:  # ten reloads a second
            d.signal(signal.SIGHUP)
            await asyncio.sleep(0.1)

        def product_in_flight() -> bool:
            s = sim.stats()
            answered: int = sum(s["responses"].get("product", {}).values())
            return int(s["requests"].get("product", 0)) > answered

        await wait_for(product_in_flight, 10, "a product batch in flight")
        d.signal(signal.SIGTERM)
        rc = await d.wait()
    finally:
        await d.ensure_dead()
    text = d.log_text()
    assert rc == 0, text[-3000:]
    assert "Traceback" not in text
    # Signals coalesce (one reload per pending flag), but the storm was served.
    assert 3 <= text.count("reloaded") <= 25, text.count("reloaded")
    assert integrity(db) == "ok"
    stored = int(db_query(db, "SELECT count(*) FROM product_history")[0][0])
    orphans = db_query(
        db,
        "SELECT count(*) FROM product_history p JOIN deals d USING (asin) "
        "WHERE d.backfilled_at IS NULL",
    )
    assert orphans[0][0] == 0
    # The batch in flight at SIGTERM finished and was stored: nothing bought was dropped.
    assert sum(sim.products_bought.values()) - stored <= 0, (sim.products_bought.total(), stored)
    assert db_query(db, "SELECT stopped_at FROM daemon")[0][0] is not None
    assert_no_secret(text, database_bytes(db))


async def test_sigterm_with_the_writer_blocked_commits_what_it_acknowledged(tmp_path: Path) -> None:
    sim = await started(crash_sim(600))
    path = write_config(tmp_path, sim.base_url, max_batch=10)
    db = tmp_path / "deals.db"
    d = await DaemonProc(path).start()
    try:
        await wait_for(lambda: counts(db)[1] >= 20, 15, "backfill under way")
        holder = await hold_write_lock(db, 2.0)
        await asyncio.sleep(1.0)  # writes queue up behind the lock
        d.signal(signal.SIGTERM)
        await asyncio.wait_for(holder.communicate(), 15)
        rc = await d.wait()
    finally:
        await d.ensure_dead()
    text = d.log_text()
    assert rc == 0, text[-3000:]
    assert integrity(db) == "ok"
    stored = int(db_query(db, "SELECT count(*) FROM product_history")[0][0])
    assert stored == len(backfilled_asins(db))
    assert sum(sim.products_bought.values()) - stored <= 10
    assert db_query(db, "SELECT stopped_at FROM daemon")[0][0] is not None
    assert_no_secret(text, database_bytes(db))


# Scenario 9 (the key never leaks) is checked inside each test above; this one
# looks at every place at once with a key that is also in the environment.
def test_the_key_is_not_in_check_config_or_status(tmp_path: Path) -> None:
    path = write_config(tmp_path, "http://127.0.0.1:9")
    r = run_cli("check-config", "--config", str(path))
    assert r.returncode == 0
    r2 = run_cli("status", "--config", str(path), "--json")
    assert_no_secret(r.stdout, r.stderr, r2.stdout, r2.stderr)
    assert shutil.which is not None and load_api_key is not None
