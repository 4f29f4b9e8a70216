"""Shared guards: nothing a test starts outlives it, and no test can kill pytest.

The shared fixtures come first: ``sim`` (the simulator with the tests'
usual options, over loopback), ``start_sim`` (one with options of the
test's own), ``clock`` (a FakeClock) and ``store`` (a Store on a new file in
tmp_path, in that clock's time). Then the guards.

Two ways a failing end-to-end test could take the whole run down instead of
failing alone:

- It leaves an in-process daemon, a simulator or a child process running. The
  daemon's store writer then gets cancelled under it by the event loop's
  teardown, or a child keeps a pipe or a port: teardown hangs until something
  outside kills pytest, and no summary is printed. ``_stop_leftovers`` stops
  what the test started, each step bounded, so teardown always ends.
- A signal reaches pytest itself. SIGTERM and SIGHUP terminate a process that
  has no handler for them, with no output at all; an in-process daemon run
  with ``install_signals=True`` installs handlers and, on the way out, asyncio
  resets them to that default, so a later ``os.kill(os.getpid(), SIGTERM)``
  (or a signal to pytest's process group, pid 0 or -1) kills the run without
  a word. ``_no_signals_to_pytest`` makes signalling pytest's own process or
  group an error in the test that tries, and turns a SIGTERM/SIGHUP that does
  arrive (CI cancelling the job) into a KeyboardInterrupt, so pytest stops
  with its summary instead of dying silently.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import StartSim, sim_options

from dealsd.clock import FakeClock
from dealsd.daemon import Daemon
from dealsd.simulator import Simulator
from dealsd.store import Store

# Bounds for teardown: long enough for a daemon to drain, short enough that a
# hung one fails its test instead of the run.
DAEMON_STOP_S = 20.0
CANCEL_S = 5.0
SIM_STOP_S = 10.0
CHILD_STOP_S = 5.0

_TERMINATING = (signal.SIGTERM, signal.SIGHUP)


@pytest.fixture
async def start_sim() -> AsyncIterator[StartSim]:
    """``await start_sim(**options)``: a simulator on a free loopback port, ``sim_options``
    with the test's changes; each one started is stopped after the test."""
    started: list[Simulator] = []

    async def start(**options: Any) -> Simulator:
        sim = Simulator(sim_options(**options))
        await sim.start("127.0.0.1", 0)
        started.append(sim)
        return sim

    yield start
    for sim in started:
        await sim.stop()


@pytest.fixture
async def sim(start_sim: StartSim) -> Simulator:
    """The simulator with the usual options (``helpers.sim_options()``), at ``sim.base_url``."""
    return await start_sim()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def store(tmp_path: Path, clock: FakeClock) -> AsyncIterator[Store]:
    s = await Store.open(tmp_path / "deals.db", clock=clock)
    yield s
    await s.close()


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"pytest received {signal.Signals(signum).name}")


def _install_interrupts() -> None:
    for sig in _TERMINATING:
        if signal.getsignal(sig) in (signal.SIG_DFL, None):
            signal.signal(sig, _interrupt)


def _targets_pytest(pid: int) -> bool:
    me = os.getpid()
    return pid in (0, -1, me, -me) or pid == -os.getpgid(0)


@pytest.fixture(autouse=True)
def _no_signals_to_pytest(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    real_kill, real_killpg = os.kill, os.killpg

    def kill(pid: int, sig: int) -> None:
        if sig != 0 and _targets_pytest(pid):
            raise AssertionError(f"a test sent signal {sig} to pytest's own process (group)")
        real_kill(pid, sig)

    def killpg(pgid: int, sig: int) -> None:
        if sig != 0 and pgid in (0, os.getpgid(0)):
            raise AssertionError(f"a test sent signal {sig} to pytest's own process group")
        real_killpg(pgid, sig)

    def raise_signal(sig: int) -> None:
        raise AssertionError(f"a test raised signal {sig} in pytest's own process")

    monkeypatch.setattr(os, "kill", kill)
    monkeypatch.setattr(os, "killpg", killpg)
    monkeypatch.setattr(signal, "raise_signal", raise_signal)
    _install_interrupts()
    yield
    # An in-process daemon with signal handlers leaves SIG_DFL behind.
    _install_interrupts()


class _Started:
    """What the current test started: daemons, simulators, child processes."""

    def __init__(self) -> None:
        self.daemons: list[Daemon] = []
        self.simulators: list[Simulator] = []
        self.children: list[subprocess.Popen[Any]] = []


@pytest.fixture(autouse=True)
async def _stop_leftovers(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[None]:
    started = _Started()
    daemon_init = Daemon.__init__
    sim_start = Simulator.start
    popen_init = subprocess.Popen.__init__

    def track_daemon(self: Daemon, *args: Any, **kwargs: Any) -> None:
        daemon_init(self, *args, **kwargs)
        started.daemons.append(self)

    async def track_simulator(self: Simulator, *args: Any, **kwargs: Any) -> str:
        started.simulators.append(self)
        return await sim_start(self, *args, **kwargs)

    def track_child(self: subprocess.Popen[Any], *args: Any, **kwargs: Any) -> None:
        popen_init(self, *args, **kwargs)
        started.children.append(self)

    monkeypatch.setattr(Daemon, "__init__", track_daemon)
    monkeypatch.setattr(Simulator, "start", track_simulator)
    monkeypatch.setattr(subprocess.Popen, "__init__", track_child)
    yield
    monkeypatch.undo()  # nothing started during teardown is tracked
    await _stop_daemons(started.daemons)
    for sim in started.simulators:
        try:
            await asyncio.wait_for(sim.stop(), SIM_STOP_S)
        except (TimeoutError, OSError, RuntimeError):
            pass  # the test has failed already or will say why
    for child in started.children:
        if child.poll() is None:
            child.kill()
            try:
                child.wait(CHILD_STOP_S)
            except subprocess.TimeoutExpired:
                pass


async def _stop_daemons(daemons: list[Daemon]) -> None:
    """Stop in-process daemons a test left running: ask, then cancel, each bounded."""
    if not daemons:
        return
    for daemon in daemons:
        daemon.stop.set()
    me = asyncio.current_task()
    running = {
        t for t in asyncio.all_tasks()
        if t is not me and getattr(t.get_coro(), "__qualname__", "") == "run_daemon"
    }  # fmt: skip
    if not running:
        return
    _done, pending = await asyncio.wait(running, timeout=DAEMON_STOP_S)
    if pending:
        for daemon in daemons:
            daemon.parts.supervisor.cancel_now()
        _done, pending = await asyncio.wait(pending, timeout=CANCEL_S)
    for task in pending:
        task.cancel()
    if pending:
        await asyncio.wait(pending, timeout=CANCEL_S)
