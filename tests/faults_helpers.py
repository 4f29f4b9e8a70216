"""Helpers for tests/test_faults.py and bench/soak.py: the daemon as a real OS
process, `dealsd status` through the real CLI, and the secret checks.

The in-process helpers (``write_config``, ``sim_options``, ``counts``,
``db_query``, ``wait_for``) are tests/test_daemon.py's, reused as they are.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import sys
from pathlib import Path
from typing import Any

# A key nobody could mistake for anything else: it must never show up in a
# log line, a status output or the database file (docs/field-notes.md, docs/keepa.md).
SECRET = "SECRET-KEY-1234567890"
HERE = Path(__file__).resolve().parent


def daemon_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DEALSD_", "KEEPA_"))}
    env.pop("NOTIFY_SOCKET", None)
    env.pop("CREDENTIALS_DIRECTORY", None)
    env.update(PYTHONUNBUFFERED="1", **extra)
    return env


class DaemonProc:
    """`python -m dealsd run --config X` as a real process; stderr kept whole."""

    def __init__(self, config: Path, *, env: dict[str, str] | None = None) -> None:
        self.config = config
        self.env = env if env is not None else daemon_env(KEEPA_API_KEY=SECRET)
        self.proc: asyncio.subprocess.Process | None = None
        self.stderr = bytearray()
        self._reader: asyncio.Task[None] | None = None

    async def start(self) -> DaemonProc:
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "dealsd", "run", "--config", str(self.config),
            env=self.env, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        self._reader = asyncio.create_task(self._read())
        return self

    async def _read(self) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        while chunk := await self.proc.stderr.read(65536):
            self.stderr += chunk

    async def ready(self, within: float = 20.0) -> None:
        """Wait for its ``ready`` log line: signal handlers are installed by then."""
        deadline = asyncio.get_running_loop().time() + within
        while b"ready" not in self.stderr:
            assert self.proc is not None
            if self.proc.returncode is not None:
                raise AssertionError(f"dealsd exited {self.proc.returncode}: {self.log_text()}")
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"dealsd not ready: {self.log_text()[-2000:]}")
            await asyncio.sleep(0.05)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def signal(self, sig: signal.Signals) -> None:
        assert self.proc is not None
        if self.proc.returncode is None:
            self.proc.send_signal(sig)

    async def wait(self, within: float = 30.0) -> int:
        assert self.proc is not None
        rc = await asyncio.wait_for(self.proc.wait(), within)
        if self._reader is not None:
            await asyncio.wait_for(self._reader, 5)
        return rc

    async def kill(self) -> int:
        self.signal(signal.SIGKILL)
        return await self.wait()

    def log_text(self) -> str:
        return self.stderr.decode(errors="replace")

    async def ensure_dead(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            await self.kill()


async def status(db: Path, *, as_json: bool) -> tuple[int, str]:
    """`dealsd status --database DB [--json]` through the real CLI."""
    args = ["status", "--database", str(db)] + (["--json"] if as_json else [])
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "dealsd", *args, env=daemon_env(),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode is not None
    return proc.returncode, out.decode() + err.decode()


async def status_doc(db: Path) -> tuple[int, dict[str, Any]]:
    rc, text = await status(db, as_json=True)
    return rc, json.loads(text)


def database_bytes(db: Path) -> bytes:
    """The database file and its WAL and shared memory, as bytes on disk."""
    out = b""
    for suffix in ("", "-wal", "-shm", "-journal"):
        p = Path(f"{db}{suffix}")
        if p.exists():
            out += p.read_bytes()
    return out


def assert_no_secret(*texts: str | bytes, key: str = SECRET) -> None:
    for t in texts:
        raw = t.encode() if isinstance(t, str) else t
        assert key.encode() not in raw, "the API key leaked"


def integrity(db: Path) -> str:
    conn = sqlite3.connect(db, timeout=10)  # read-write: recovers a WAL left by a kill
    try:
        return str(conn.execute("PRAGMA integrity_check").fetchone()[0])
    finally:
        conn.close()


async def hold_write_lock(db: Path, hold_s: float) -> asyncio.subprocess.Process:
    """A separate OS process holding BEGIN IMMEDIATE for ``hold_s`` (tests/dashboard_proc.py).

    Returns once it says it holds the lock; its stdout's last line is a JSON report.
    """
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(HERE / "dashboard_proc.py"), str(db), str(hold_s), "0.2",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert proc.stdout is not None
    line = await asyncio.wait_for(proc.stdout.readline(), 20)
    assert line.strip() == b"holding", line
    return proc
