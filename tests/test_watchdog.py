"""The watchdog asks "would a restart help?" (systemd/README.md, "Watchdog:
what a restart can cure"), and status tells a restart that cured nothing.

A real datagram socket stands for systemd's NOTIFY_SOCKET, the simulator over
loopback for Keepa, put into its outage mode (resets and 503s) on purpose.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from helpers import (
    DaemonProc,
    NotifyListener,
    Running,
    StartSim,
    counts,
    wait_for,
    write_config,
)
from structlog.testing import capture_logs

from dealsd.cli import main
from dealsd.config import load_config
from dealsd.daemon import Daemon
from dealsd.notify import Notifier
from dealsd.simulator import Simulator
from dealsd.status import gather
from dealsd.store import liveness
from dealsd.workers.base import RoundResult

# Stall windows of a few seconds (1 s rounds, margin 1.5 s) and one Keepa call
# bounded to 2 s (one attempt, 1 s + 1 s timeouts): the decisions show quickly.
FAST: dict[str, Any] = dict(health_margin_s=1.5, backoff_cap_s=1.0)


def config(tmp_path: Path, base_url: str) -> Path:
    return write_config(tmp_path, base_url, max_attempts=1, read_timeout_s=1, connect_timeout_s=1)


@pytest.fixture
def daemons(monkeypatch: pytest.MonkeyPatch) -> list[Daemon]:
    """Each Daemon the test's ``run_daemon`` builds, to reach its parts."""
    made: list[Daemon] = []
    init = Daemon.__init__

    def keep(self: Daemon, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **kwargs)
        made.append(self)

    monkeypatch.setattr(Daemon, "__init__", keep)
    return made


def watched(tmp_path: Path, sim: Simulator, **kw: Any) -> tuple[NotifyListener, Path, Running]:
    """The daemon on ``sim`` with a NOTIFY_SOCKET listener and pings every 0.2 s."""
    srv = NotifyListener(tmp_path)
    path = config(tmp_path, sim.base_url)
    notifier = Notifier(srv.addr, watchdog_interval_s=0.2)
    return srv, tmp_path / "deals.db", Running(load_config(path), path, notifier=notifier, **kw)


def doc(db: Path) -> dict[str, Any]:
    try:
        return gather(db)
    except Exception:  # not created yet
        return {"healthy": False, "daemon": {"causes": [], "state": "none"}}


async def test_pings_go_on_through_a_keepa_outage_while_status_says_unhealthy(
    start_sim: StartSim, tmp_path: Path
) -> None:
    sim = await start_sim(catalogue_size=40)  # two backfill batches: settled in seconds
    srv, db, d = watched(tmp_path, sim, **FAST)
    try:

        def settled() -> bool:
            stored, backfilled = counts(db)
            return stored > 0 and backfilled == stored

        # Every deal backfilled first: the backfiller then idles through the
        # outage (no /product call to fail), and the upserter's stall is the
        # one unhealthy spell. Else a backfiller that stalled on a batch and
        # then idled (its deals parked for retry) made two, each said once.
        await wait_for(
            lambda: settled() and doc(db)["healthy"] and srv.seen("WATCHDOG=1"), 15, "healthy"
        )
        with capture_logs() as logs:
            sim.control(outage=True)
            await wait_for(
                lambda: "upserter stalled" in srv.last_status(), 15, "the upserter's stall"
            )
            srv.drain()
            await asyncio.sleep(4.0)  # past the upserter's window + one call's bound
            during = srv.drain()
            # Before: none here; systemd then restarted dealsd every stall
            # window + WatchdogSec for an outage a restart cannot cure. A
            # ping is due every 0.2 s: at least one a second even when loaded.
            assert during.count("WATCHDOG=1") >= 4, during
            status = srv.last_status()
            assert "UNHEALTHY" in status and "upserter stalled" in status, status

            def names_the_upserter() -> bool:
                return any(
                    "upserter stalled" in c and "still trying" in c and "last error" in c
                    for c in doc(db)["daemon"]["causes"]
                )

            # The row trails STATUS= while a snapshot write waits for the
            # writer (a loaded machine): wait for it rather than race it.
            await wait_for(names_the_upserter, 10, "status naming the upserter's stall")
            now = doc(db)
            assert now["healthy"] is False and now["daemon"]["state"] == "running"
            sim.control(outage=False)
            await wait_for(lambda: doc(db)["healthy"], 15, "healthy again")

            def recovered() -> bool:
                return any(e["event"] == "watchdog_kept" and e.get("recovered") for e in logs)

            # The row is committed before the loop, back from the write, says
            # the recovery line: wait for the line rather than race it.
            await wait_for(recovered, 5, "the watchdog_kept recovery line")
        kept = [e for e in logs if e["event"] == "watchdog_kept"]
        # Said once as a warning (a summary a minute later would carry repeated=),
        # then the recovery line when the outage ends.
        assert [e["log_level"] for e in kept] == ["warning", "info"], kept
        assert kept[1].get("recovered") is True and kept[1]["failures"] >= 10
        assert not [e for e in logs if e["event"] == "watchdog_withheld"]
        assert await d.finish() == 0
    finally:
        srv.close()


async def test_pings_stop_when_a_worker_stops_trying(
    sim: Simulator, tmp_path: Path, daemons: list[Daemon]
) -> None:
    srv, db, d = watched(tmp_path, sim, **FAST)
    try:
        await wait_for(lambda: doc(db)["healthy"] and srv.seen("WATCHDOG=1"), 15, "healthy")
        [daemon] = daemons
        wedged = asyncio.Event()

        async def hang() -> RoundResult:
            wedged.set()
            await asyncio.Event().wait()  # an await that never returns
            raise AssertionError("unreachable")

        daemon.parts.upserter.round = hang  # type: ignore[method-assign]
        await wait_for(wedged.is_set, 10, "the wedged round")
        with capture_logs() as logs:
            await wait_for(lambda: "stopped trying" in srv.last_status(), 15, "stopped trying")
            srv.drain()
            await asyncio.sleep(1.0)
            assert "WATCHDOG=1" not in srv.drain()
        withheld = [e for e in logs if e["event"] == "watchdog_withheld"]
        assert withheld and withheld[0]["log_level"] == "error"
        assert any("upserter stalled and stopped trying" in c for c in doc(db)["daemon"]["causes"])
        assert await d.finish() == 0
    finally:
        srv.close()


async def test_pings_stop_while_the_writer_is_stuck(
    sim: Simulator, tmp_path: Path, daemons: list[Daemon]
) -> None:
    srv, db, d = watched(tmp_path, sim, writer_bound_s=2.0, **FAST)
    release = threading.Event()
    try:
        await wait_for(lambda: counts(db)[0] > 0 and srv.seen("WATCHDOG=1"), 15, "running")
        [daemon] = daemons
        # A write that never finishes (a hung disk): the writer thread is stuck in it.
        stuck = asyncio.ensure_future(daemon.store.write(lambda c: release.wait(60)))
        await wait_for(lambda: "writer stuck" in srv.last_status(), 15, "writer stuck")
        srv.drain()
        await asyncio.sleep(1.0)
        assert "WATCHDOG=1" not in srv.drain()
        release.set()
        await asyncio.wait_for(stuck, 10)
        await wait_for(lambda: "WATCHDOG=1" in srv.drain(), 15, "pings once it commits again")
        assert await d.finish() == 0
    finally:
        release.set()
        srv.close()


async def test_status_after_a_restart_during_an_outage_is_unhealthy_and_names_the_last_end(
    sim: Simulator, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = config(tmp_path, sim.base_url)
    db = tmp_path / "deals.db"
    sim.control(outage=True)
    first = await DaemonProc(path).start()
    try:
        await first.ready()
        # A start during the outage fails before any progress: its next
        # heartbeat (5 s) says so; then it dies without stopping, as a
        # watchdog kill or a crash leaves it.
        await wait_for(lambda: doc(db)["daemon"]["causes"], 20, "the first run's causes")
        before = doc(db)["daemon"]["causes"]
        await first.kill()
    finally:
        await first.ensure_dead()
    second = Running(load_config(path), path, **FAST)

    def second_says() -> bool:
        # The second run's own row: until its first snapshot the row (and so
        # the causes) is still the first run's, though the lock is its. Only
        # the second run has a previous run; started_at cannot tell them
        # apart, as both runs may start within the same (whole) second.
        d = doc(db)["daemon"]
        return d["state"] == "running" and d["previous_run"] is not None and bool(d["causes"])

    await wait_for(second_says, 15, "the second run's causes")
    now = doc(db)
    # Before: "running, healthy" until a whole stall window passed.
    assert now["healthy"] is False
    assert any("no progress since start" in c for c in now["daemon"]["causes"])
    prev = now["daemon"]["previous_run"]
    assert prev["ended"] == "died" and prev["stopped_at"] is None
    assert prev["causes"] == before and prev["watchdog"] is True
    capsys.readouterr()
    assert main(["status", "--database", str(db)]) == 1
    text = capsys.readouterr().out
    assert "running (pid" in text and "UNHEALTHY" in text
    assert "previous run: died without stopping" in text
    assert "it was unhealthy: " + before[0] in text
    assert main(["status", "--database", str(db), "--json"]) == 1
    assert json.loads(capsys.readouterr().out)["daemon"]["previous_run"]["ended"] == "died"
    sim.control(outage=False)
    assert await second.finish() == 0


class PingTimes:
    """NOTIFY_SOCKET read by a thread of its own, each WATCHDOG=1 timed on arrival.

    Its own thread, blocked in recv, so the times do not wait for this test's
    event loop (which the daemon under test shares).
    """

    def __init__(self, srv: NotifyListener) -> None:
        self._sock = srv.sock
        self._sock.setblocking(True)
        self._sock.settimeout(0.1)
        self.at: list[float] = []
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while not self._done.is_set():
            try:
                data = self._sock.recv(65536)
            except TimeoutError:
                continue
            if "WATCHDOG=1" in data.decode().splitlines():
                self.at.append(time.monotonic())

    def stop(self) -> None:
        self._done.set()
        self._thread.join(5)

    def gaps(self) -> list[float]:
        return [b - a for a, b in zip(self.at, self.at[1:], strict=False)]


async def test_pings_stay_within_the_watchdog_interval_while_every_snapshot_write_is_slow(
    sim: Simulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Pings every 1 s (WatchdogSec=2 s), snapshots every 5 s as in production,
    # and every daemon-row write held 2.5 s in the writer (a slow disk): longer
    # than a tick, so each pass of the watch loop times out waiting for it.
    interval_s, slow_s = 1.0, 2.5
    write_daemon = liveness.write_daemon
    slowed = 0

    def slow_write_daemon(conn: sqlite3.Connection, row: Mapping[str, object]) -> None:
        nonlocal slowed
        slowed += 1
        time.sleep(slow_s)  # in the writer's thread, as a slow fsync would be
        write_daemon(conn, row)

    monkeypatch.setattr(liveness, "write_daemon", slow_write_daemon)
    srv = NotifyListener(tmp_path)
    pings = PingTimes(srv)
    path = config(tmp_path, sim.base_url)
    notifier = Notifier(srv.addr, watchdog_interval_s=interval_s)
    d = Running(load_config(path), path, notifier=notifier, snapshot_every_s=5.0)
    try:
        await wait_for(lambda: len(pings.at) >= 8, 30, "eight pings")
        assert slowed >= 3, "the slowed write must have been on the path of these pings"
        gaps = pings.gaps()
        # Before: a tick of sleep, then up to a tick waiting for the write,
        # each tick the whole ping interval: gaps of 2 x 1 s = all of
        # WatchdogSec, and systemd kills a daemon that is only slow to write.
        assert max(gaps) < 2 * interval_s, gaps
        assert await d.finish() == 0
    finally:
        pings.stop()
        srv.close()
