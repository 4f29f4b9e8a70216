"""`dealsd status`: text, JSON and exit codes for a healthy, a stalled, a stopped,
a dead and a hung daemon, read from a real database."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import pytest
from helpers import Running, hold_write_lock, wait_for, write_config

from dealsd.cli import main
from dealsd.clock import SystemClock, iso_utc
from dealsd.config import load_config
from dealsd.lock import InstanceLock
from dealsd.simulator import SimOptions, Simulator
from dealsd.status import LOCK_PROBE_S, gather, write_lock_held
from dealsd.store import Store, liveness


def config(tmp_path: Path, base_url: str) -> Path:
    """helpers.write_config with one quick attempt per request: a failure shows at once."""
    return write_config(tmp_path, base_url, max_attempts=1, read_timeout_s=2, connect_timeout_s=1)


def status(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    capsys.readouterr()
    code = main(["status", *args])
    return code, capsys.readouterr().out


def dig(doc: dict[str, Any], dotted: str) -> Any:
    for part in dotted.split("."):
        doc = doc[part]
    return doc


async def start(path: Path, **kw: Any) -> tuple[asyncio.Event, asyncio.Task[int]]:
    d = Running(load_config(path), path, api_key="k", **kw)
    return d.stop, d.task


async def test_healthy_running_then_stopped(
    sim: Simulator, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = config(tmp_path, sim.base_url)
    db = tmp_path / "deals.db"
    stop, task = await start(path)

    def settled() -> bool:
        try:
            doc = gather(db)
        except Exception:
            return False
        return bool(doc["healthy"]) and doc["deals"]["total"] > 0 and (
            doc["deals"]["pending_backfill"] == 0
        )

    await wait_for(settled, 10, "a healthy daemon with every deal backfilled", every=0.1)
    code, out = status(capsys, "--config", str(path), "--json")
    assert code == 0
    doc = json.loads(out)
    for key in (
        "healthy", "deals.total", "deals.backfilled", "deals.pending_backfill",
        "workers.upserter.state", "workers.upserter.last_progress_at",
        "workers.backfiller.state", "tokens.refill_rate", "backfill_eta_s",
    ):  # fmt: skip
        dig(doc, key)
    assert doc["healthy"] is True
    assert doc["deals"]["total"] == doc["deals"]["backfilled"] > 0
    assert doc["tokens"]["refill_rate"] == 500
    assert doc["backfill_eta_s"] == 0
    code, text = status(capsys, "--config", str(path))
    assert code == 0
    assert "running" in text and "healthy" in text and "worker upserter" in text

    stop.set()
    assert await task == 0
    code, text = status(capsys, "--database", str(db))
    assert code == 1
    assert "not running: stopped since" in text
    code, out = status(capsys, "--database", str(db), "--json")
    doc = json.loads(out)
    assert code == 1 and doc["healthy"] is False
    assert doc["daemon"]["state"] == "stopped"
    assert doc["workers"]["upserter"]["state"] == "stopped"


async def test_stalled_daemon_reads_unhealthy_with_its_cause(
    sim: Simulator, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sim.control(outage=True)  # ingestion never succeeds
    path = config(tmp_path, sim.base_url)
    db = tmp_path / "deals.db"
    stop, task = await start(path, health_margin_s=1.0)

    def stalled() -> bool:
        try:
            return bool(gather(db)["workers"]["upserter"]["state"] == "stalled")
        except Exception:
            return False

    await wait_for(stalled, 10, "the upserter read as stalled", every=0.1)
    code, out = status(capsys, "--database", str(db), "--json")
    doc = json.loads(out)
    assert code == 1 and doc["healthy"] is False
    assert doc["daemon"]["state"] == "running"
    assert any("upserter stalled" in c for c in doc["daemon"]["causes"])
    code, text = status(capsys, "--database", str(db))
    assert code == 1 and "UNHEALTHY" in text and "cause: upserter stalled" in text
    stop.set()
    assert await task == 0


async def _db_with_daemon_row(db: Path, *, heartbeat: float, stopped: bool) -> None:
    store = await Store.open(db, clock=SystemClock())
    row = {
        "pid": 424242,
        "started_at": iso_utc(heartbeat - 60),
        "heartbeat_at": iso_utc(heartbeat),
        "stopped_at": iso_utc(heartbeat) if stopped else None,
        "healthy": 1,
        "snapshot": json.dumps({"status": "healthy", "heartbeat_s": 5, "causes": []}),
    }
    await store.write(lambda c: liveness.write_daemon(c, row))
    await store.close()


async def test_a_daemon_that_died_without_stopping_is_not_running(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "deals.db"
    # A heartbeat a second old and healthy=1, but no process holds the lock.
    await _db_with_daemon_row(db, heartbeat=time.time() - 1, stopped=False)
    code, text = status(capsys, "--database", str(db))
    assert code == 1
    assert "died without stopping" in text
    assert json.loads(status(capsys, "--database", str(db), "--json")[1])["healthy"] is False


async def test_a_held_lock_with_a_stale_heartbeat_is_hung_not_healthy(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "deals.db"
    await _db_with_daemon_row(db, heartbeat=time.time() - 600, stopped=False)
    with InstanceLock(db):
        code, out = status(capsys, "--database", str(db), "--json")
    doc = json.loads(out)
    assert code == 1 and doc["healthy"] is False
    assert doc["daemon"]["state"] == "hung"


def test_no_database_and_a_bad_config_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["status", "--database", str(tmp_path / "nope.db")]) == 2
    bad = tmp_path / "bad.toml"
    bad.write_text("[upserter]\ninterval_s = 'abc'\n")
    assert main(["status", "--config", str(bad)]) == 2
    assert "upserter.interval_s" in capsys.readouterr().err


async def test_access_denied_is_unhealthy_with_its_cause_and_stops_spending(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    s = Simulator(SimOptions(refill_period_s=0.1, api_keys=frozenset({"the-right-key"})))
    base = await s.start("127.0.0.1", 0)
    try:
        path = config(tmp_path, base)
        db = tmp_path / "deals.db"
        stop, task = await start(path)  # with the key "k": 402

        def denied() -> bool:
            try:
                return any("access denied" in c for c in gather(db)["daemon"]["causes"])
            except Exception:
                return False

        await wait_for(denied, 10, "access denied among the causes", every=0.1)
        await asyncio.sleep(1.0)
        code, out = status(capsys, "--database", str(db), "--json")
        doc = json.loads(out)
        assert code == 1 and doc["healthy"] is False
        assert doc["workers"]["upserter"]["state"] == "backing_off"
        # Each worker asked once and then backed off: no tight loop of 402s.
        assert sum(s.stats()["requests"].values()) <= 4
        stop.set()
        assert await task == 0
    finally:
        await s.stop()


async def test_a_lock_taken_for_a_commit_is_not_a_lock_held_elsewhere(tmp_path: Path) -> None:
    # The daemon takes the write lock itself for each commit; a late heartbeat
    # often means its writer is busy with its own work. Only a lock that stays
    # taken through the probe is "held elsewhere" (under load, an instant's
    # probe once called the daemon's own commit another process's lock).
    db = tmp_path / "deals.db"
    await (await Store.open(db, clock=SystemClock())).close()
    assert write_lock_held(db) is False
    brief = await hold_write_lock(db, 0.3)
    t0 = time.monotonic()
    held = await asyncio.to_thread(write_lock_held, db)
    waited = time.monotonic() - t0
    assert held is False and waited < LOCK_PROBE_S, waited  # waited the commit out
    await brief.wait()
    long = await hold_write_lock(db, 2 * LOCK_PROBE_S + 3)
    try:
        assert await asyncio.to_thread(write_lock_held, db) is True
    finally:
        long.kill()
        await long.wait()
