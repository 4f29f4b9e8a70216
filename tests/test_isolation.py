"""conftest's guards, proven in a real pytest process: a failing test fails alone.

A child pytest runs tests that do what took two full-suite runs down before
(pytest printed an ``F`` and then nothing): one signals pytest's own process,
one fails with an in-process daemon (signal handlers installed) and a
simulator still running. The run must go on to the next test and print its
summary.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent

CASES = '''
import asyncio
import os
import signal

from dealsd.clock import SystemClock
from dealsd.config import load_config
from dealsd.daemon import run_daemon
from dealsd.notify import Notifier
from dealsd.simulator import SimOptions, Simulator


def test_signals_its_own_process():
    os.kill(os.getpid(), signal.SIGTERM)


def test_signals_its_own_process_group():
    os.kill(0, signal.SIGHUP)


async def test_fails_with_a_daemon_and_a_simulator_running(tmp_path):
    sim = Simulator(SimOptions(refill_period_s=0.1, catalogue_size=50))
    base = await sim.start("127.0.0.1", 0)
    path = tmp_path / "config.toml"
    path.write_text(
        f'[keepa]\\nbase_url = "{base}"\\n[database]\\npath = "{tmp_path / "d.db"}"\\n'
        '[upserter]\\ninterval_s = 1\\n[backfiller]\\nidle_s = 0.2\\n'
    )
    asyncio.create_task(
        run_daemon(
            load_config(path), api_key="k", clock=SystemClock(), notifier=Notifier(None),
            install_signals=True, snapshot_every_s=0.2,
        )
    )
    await asyncio.sleep(1.0)
    assert False, "fails while both run"


def test_runs_after_them_with_sigterm_still_caught():
    assert signal.getsignal(signal.SIGTERM) not in (signal.SIG_DFL, None)
'''


def test_failing_tests_fail_alone_and_the_run_prints_its_summary(tmp_path: Path) -> None:
    for shared in ("conftest.py", "helpers.py"):  # conftest's fixtures use helpers
        shutil.copy(HERE / shared, tmp_path / shared)
    (tmp_path / "test_cases.py").write_text(CASES)
    env = {k: v for k, v in os.environ.items() if k not in {"NOTIFY_SOCKET", "KEEPA_API_KEY"}}
    r = subprocess.run(
        [
            sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
            "-o", "asyncio_mode=auto", "-o", "asyncio_default_fixture_loop_scope=function",
            "--rootdir", str(tmp_path), str(tmp_path / "test_cases.py"),
        ],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=90,
    )  # fmt: skip
    out = r.stdout + r.stderr
    assert r.returncode == 1, (r.returncode, out[-3000:])
    assert "3 failed, 1 passed" in out, out[-3000:]
    assert "to pytest's own process" in out
    assert "fails while both run" in out
