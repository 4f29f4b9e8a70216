"""The command line as a user runs it: real processes, real exit codes."""

from __future__ import annotations

import asyncio
import os
import shlex
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from helpers import NotifyListener, clean_env, write_config

from dealsd.simulator import Faults, SimOptions, Simulator


def dealsd(
    *args: str, env: dict[str, str] | None = None, timeout: float = 20
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dealsd", *args],
        capture_output=True,
        text=True,
        env=env or clean_env(),
        timeout=timeout,
    )


def good_config(tmp_path: Path, base_url: str = "http://127.0.0.1:9") -> Path:
    """A valid config (one attempt per request); by default Keepa is nowhere."""
    return write_config(tmp_path, base_url, max_attempts=1)


def test_config_errors_exit_78_naming_file_and_key(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[upserter]\nintervl_s = 5\n")
    for cmd in ("check-config", "run"):
        r = dealsd(cmd, "--config", str(bad), env=clean_env(KEEPA_API_KEY="x"))
        assert r.returncode == 78, (cmd, r.stderr)
        assert "bad.toml" in r.stderr and "upserter.intervl_s" in r.stderr
    ok = good_config(tmp_path)
    r = dealsd("check-config", "--config", str(ok))
    assert r.returncode == 0, r.stderr
    # A valid file but no API key anywhere: a config error too, not a crash.
    r = dealsd("run", "--config", str(ok))
    assert r.returncode == 78 and "keepa.api_key" in r.stderr
    assert not (tmp_path / "deals.db").exists()


def test_status_without_a_database_exits_2(tmp_path: Path) -> None:
    r = dealsd("status", "--database", str(tmp_path / "none.db"))
    assert r.returncode == 2
    assert "no database" in r.stderr


def test_simulator_subcommand_serves_keepa(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "dealsd", "simulator", "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=clean_env(),
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        url = next(w for w in line.split() if w.startswith("http://"))
        with urllib.request.urlopen(f"{url}/token?key=k", timeout=5) as resp:
            assert resp.status == 200
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=10)


def test_demo_runs_the_real_daemon_and_reports(tmp_path: Path) -> None:
    # As `python3 dev.py demo` runs it: the venv's console script, from the
    # repo, with the venv's bin not on PATH; the command it prints must work.
    root = Path(__file__).resolve().parent.parent
    script = Path(sys.executable).parent / "dealsd"
    venv_bin = str(script.parent)
    path = os.pathsep.join(p for p in os.environ.get("PATH", "").split(os.pathsep) if p != venv_bin)
    env = clean_env(TMPDIR=str(tmp_path), PATH=path)
    argv = [str(script)] if script.is_file() else [sys.executable, "-m", "dealsd"]
    r = subprocess.run(
        [*argv, "demo", "--seconds", "3"], capture_output=True, text=True, env=env,
        cwd=root, timeout=40,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    assert "deals stored" in r.stdout
    lines = r.stdout.splitlines()
    inspect = next(ln.split(": ", 1)[1] for ln in lines if ln.startswith("inspect it: "))
    assert not inspect.startswith("dealsd ") or shutil.which("dealsd", path=path)
    shown = subprocess.run(
        shlex.split(inspect), capture_output=True, text=True, env=env, cwd=root, timeout=20
    )
    # 1: the demo's daemon has stopped ("not running"); 2 would be "no database".
    assert shown.returncode == 1, shown.stdout + shown.stderr
    assert "deals" in shown.stdout
    db = Path(next(ln.split(": ", 1)[1] for ln in lines if ln.startswith("database: ")))
    conn = sqlite3.connect(db)
    try:
        total, backfilled = conn.execute(
            "SELECT count(*), count(backfilled_at) FROM deals"
        ).fetchone()
    finally:
        conn.close()
    assert total > 0 and backfilled > 0


async def _read_until(stream: asyncio.StreamReader, needle: str, within: float) -> str:
    seen: list[str] = []
    deadline = time.monotonic() + within
    while True:
        left = deadline - time.monotonic()
        assert left > 0, f"{needle!r} not logged; got:\n" + "".join(seen)[-3000:]
        line = await asyncio.wait_for(stream.readline(), left)
        assert line, f"process ended before {needle!r}:\n" + "".join(seen)[-3000:]
        seen.append(line.decode())
        if needle in seen[-1]:
            return seen[-1]


async def test_sighup_applies_live_changes_and_rejects_a_bad_file(
    sim: Simulator, tmp_path: Path
) -> None:
    path = good_config(tmp_path, sim.base_url)
    notify = NotifyListener(tmp_path)  # systemd's side of the notify protocol
    notified = notify.drain

    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "dealsd", "run", "--config", str(path),
        env=clean_env(KEEPA_API_KEY="k", NOTIFY_SOCKET=notify.addr),
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert proc.stderr is not None
    try:
        await _read_until(proc.stderr, "ready", 10)
        assert "READY=1" in notified()
        # A second daemon on the same database is refused, naming the holder.
        second = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "dealsd", "run", "--config", str(path),
            env=clean_env(KEEPA_API_KEY="k"), stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        _o, err2 = await asyncio.wait_for(second.communicate(), 10)
        assert second.returncode == 75 and str(proc.pid) in err2.decode()

        path.write_text(path.read_text().replace("interval_s = 1", "interval_s = 7", 1))
        proc.send_signal(signal.SIGHUP)
        line = await _read_until(proc.stderr, "config_changed", 10)
        assert "upserter.interval_s" in line
        await asyncio.sleep(0.2)
        messages = notified()
        # RELOADING=1 first, READY=1 once the new config is in force.
        assert "RELOADING=1" in messages, messages
        assert "READY=1" in messages[messages.index("RELOADING=1"):], messages
        path.write_text("[upserter]\ninterval_s = -3\n")
        proc.send_signal(signal.SIGHUP)
        await _read_until(proc.stderr, "reload_rejected", 10)
        assert proc.returncode is None  # still running on the old config
        proc.send_signal(signal.SIGTERM)
        await _read_until(proc.stderr, "stopped", 15)
        assert await asyncio.wait_for(proc.wait(), 15) == 0
    finally:
        notify.close()
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_a_second_sigterm_exits_at_once(tmp_path: Path) -> None:
    # Every request hangs longer than the stop grace: the first SIGTERM waits
    # for the rounds in flight, the second cancels them.
    s = Simulator(
        SimOptions(refill_period_s=0.1, faults=Faults(hang=1.0, hang_s=60.0))
    )
    base = await s.start("127.0.0.1", 0)
    path = write_config(tmp_path, base, max_attempts=1, read_timeout_s=60)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "dealsd", "run", "--config", str(path),
        env=clean_env(KEEPA_API_KEY="k"), stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert proc.stderr is not None
    try:
        await _read_until(proc.stderr, "ready", 10)
        await asyncio.sleep(0.5)  # the upserter's first request is now hanging
        proc.send_signal(signal.SIGTERM)
        await _read_until(proc.stderr, "stopping", 5)
        await asyncio.sleep(0.5)
        assert proc.returncode is None  # still waiting for the round in flight
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 8) == 0
        assert time.monotonic() - started < 8
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        await s.stop()


def test_an_unusable_database_path_exits_73_without_a_traceback(tmp_path: Path) -> None:
    path = good_config(tmp_path)
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    path.write_text(path.read_text().replace(str(tmp_path / "deals.db"), str(blocker / "deals.db")))
    r = dealsd("run", "--config", str(path), env=clean_env(KEEPA_API_KEY="k"))
    assert r.returncode == 73, r.stderr
    assert "database_unavailable" in r.stderr and "Traceback" not in r.stderr


def _catches(pid: int, sig: signal.Signals) -> bool:
    """Whether process ``pid`` has a handler for ``sig`` (its SigCgt mask in /proc)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    mask = next(int(ln.split()[1], 16) for ln in status.splitlines() if ln.startswith("SigCgt:"))
    return bool(mask >> (sig - 1) & 1)


@pytest.mark.parametrize("after_s", [0.0, 0.05])
def test_sigterm_during_startup_exits_zero(tmp_path: Path, after_s: float) -> None:
    # Before the event loop's handlers exist (imports, migrations), SIGTERM
    # must still mean a clean stop, not death by signal (-15). The signal is
    # sent once the early handler is in (a SIGTERM before the interpreter
    # runs any of dealsd cannot be caught by anything): a fixed delay raced
    # the interpreter's own start-up on a loaded machine.
    path = good_config(tmp_path)
    proc = subprocess.Popen(
        [sys.executable, "-m", "dealsd", "run", "--config", str(path)],
        env=clean_env(KEEPA_API_KEY="k"), stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 20
    while not _catches(proc.pid, signal.SIGTERM):
        assert proc.poll() is None and time.monotonic() < deadline, "no SIGTERM handler"
        time.sleep(0.002)
    time.sleep(after_s)
    proc.send_signal(signal.SIGTERM)
    _out, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err[-2000:]


def test_check_config_refuses_a_missing_key_file_as_run_does(tmp_path: Path) -> None:
    # It used to answer "config OK" here while `run` exited 78.
    missing = tmp_path / "keepa_api_key"
    path = good_config(tmp_path)
    path.write_text(path.read_text().replace("[keepa]\n", f"[keepa]\napi_key_file = '{missing}'\n"))
    for cmd in ("check-config", "run"):
        r = dealsd(cmd, "--config", str(path))
        assert r.returncode == 78, (cmd, r.stderr)
        assert f"{missing}: keepa.api_key_file: no such API key file (read as " in r.stderr, cmd
        assert "Traceback" not in r.stderr
    missing.write_text("the-k3y\n")
    r = dealsd("check-config", "--config", str(path))
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == f"config OK: {path}"
    assert f"API key: {missing}, read as " in r.stderr and "k3y" not in r.stdout + r.stderr
    # No key anywhere (systemd's ExecReload, as root, without the credential):
    # a warning naming LoadCredential, and still exit 0 for a valid file.
    r = dealsd("check-config", "--config", str(good_config(tmp_path)))
    assert r.returncode == 0, r.stderr
    assert "warning: no API key visible here" in r.stderr
    assert "LoadCredential=keepa_api_key:/etc/dealsd/keepa_api_key" in r.stderr


def _on_a_stream_socket(*args: str, matching: bool = True, **env: str) -> tuple[int, list[str]]:
    """Run dealsd with stderr on a Unix stream socket, as systemd's journal stream is.

    ``$JOURNAL_STREAM`` names that socket's device:inode, or with ``matching``
    False another stream's (the variable inherited by a process whose stderr
    was redirected elsewhere).
    """
    import socket

    ours, theirs = socket.socketpair()
    with ours, theirs:
        st = os.fstat(theirs.fileno())
        named = f"{st.st_dev}:{st.st_ino if matching else st.st_ino + 1}"
        proc = subprocess.Popen(
            [sys.executable, "-m", "dealsd", *args],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=theirs.fileno(),
            env=clean_env(JOURNAL_STREAM=named, **env),
        )  # fmt: skip
        theirs.close()
        ours.settimeout(30)
        chunks = []
        while chunk := ours.recv(65536):
            chunks.append(chunk)
        code = proc.wait(timeout=30)
    return code, b"".join(chunks).decode().splitlines()


def test_a_refused_start_reaches_the_journal_as_an_error(tmp_path: Path) -> None:
    # journalctl -u dealsd -p warning must show why the service will not start:
    # with SyslogLevelPrefix (systemd's default) a line's <N> is its priority.
    bad = tmp_path / "bad.toml"
    bad.write_text("[upserter]\nintervl_s = 5\n")
    code, lines = _on_a_stream_socket("run", "--config", str(bad), KEEPA_API_KEY="k")
    assert code == 78
    assert lines and all(line.startswith("<3>") for line in lines), lines
    assert lines[0].startswith(f"<3>dealsd: config error: {bad}: upserter.intervl_s: ")
    # A valid file but no key at all: refused before logging exists, an error too.
    ok = good_config(tmp_path)
    code, lines = _on_a_stream_socket("run", "--config", str(ok))
    assert code == 78
    assert lines[0].startswith("<3>dealsd: config error: config: keepa.api_key: no API key")
    # check-config as ExecReload runs it: the error at 3, the missing key at 4.
    code, lines = _on_a_stream_socket("check-config", "--config", str(bad))
    assert code == 78 and lines[0].startswith("<3>dealsd: config error: "), lines
    code, lines = _on_a_stream_socket("check-config", "--config", str(ok))
    # ... and the note on moving [upserter.selection] to [[selection]], at info.
    assert code == 0 and [line[:3] for line in lines] == ["<4>", "<6>"], lines
    assert lines[0].startswith("<4>dealsd: warning: no API key visible here")
    assert "upserter.selection: read as one [[selection]]" in lines[1]


def test_status_says_why_it_cannot_read_as_an_error_on_the_journal(tmp_path: Path) -> None:
    # `dealsd status` run by a unit (a health check's ExecStartPost, a timer):
    # its own fatal lines carry <3> like run's, not the journal's default 6.
    missing = tmp_path / "none.db"
    code, lines = _on_a_stream_socket("status", "--database", str(missing))
    assert code == 2 and len(lines) == 1, lines
    assert lines[0].startswith("<3>dealsd status: ") and str(missing) in lines[0], lines
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"not a database, " * 512)
    code, lines = _on_a_stream_socket("status", "--database", str(garbage))
    assert code == 2 and len(lines) == 1, lines
    assert lines[0].startswith(f"<3>dealsd status: cannot read {garbage}: "), lines
    # Off the journal the same line is plain text.
    r = dealsd("status", "--database", str(missing), env=clean_env())
    assert r.returncode == 2 and r.stderr.startswith("dealsd status: "), r.stderr


def test_fatal_lines_are_plain_text_on_a_pipe_a_tty_or_another_stream(tmp_path: Path) -> None:
    import pty

    bad = tmp_path / "bad.toml"
    bad.write_text("[upserter]\nintervl_s = 5\n")
    expected = f"dealsd: config error: {bad}: upserter.intervl_s: "
    # A pipe, no $JOURNAL_STREAM.
    r = dealsd("run", "--config", str(bad), env=clean_env(KEEPA_API_KEY="k"))
    assert r.returncode == 78 and r.stderr.startswith(expected), r.stderr
    # $JOURNAL_STREAM naming some other stream than this stderr.
    code, lines = _on_a_stream_socket("run", "--config", str(bad), matching=False)
    assert code == 78 and lines and lines[0].startswith(expected), lines
    # A terminal.
    leader, follower = pty.openpty()
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "dealsd", "run", "--config", str(bad)],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=follower,
            env=clean_env(KEEPA_API_KEY="k"),
        )  # fmt: skip
        os.close(follower)
        chunks = []
        while True:
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # EIO: the terminal's last writer is gone
                break
            if not chunk:
                break
            chunks.append(chunk)
        assert proc.wait(timeout=30) == 78
    finally:
        os.close(leader)
    text = b"".join(chunks).decode()
    assert text.startswith(expected), text
