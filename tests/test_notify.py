"""The notify protocol against real datagram sockets (a path, and an abstract name)."""

from __future__ import annotations

import os
import socket
import struct
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from dealsd.notify import Notifier, socket_address, watchdog_interval


class Receiver:
    """A stand-in for PID 1's notify socket: a real AF_UNIX datagram socket."""

    def __init__(self, address: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(address)
        self.sock.settimeout(2.0)

    def recv(self) -> bytes:
        return self.sock.recv(4096)

    def empty(self) -> bool:
        self.sock.setblocking(False)
        try:
            self.sock.recv(4096)
        except BlockingIOError:
            return True
        finally:
            self.sock.settimeout(2.0)
        return False

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def path_socket(tmp_path: Path) -> Iterator[tuple[str, Receiver]]:
    # AF_UNIX paths are limited to 107 bytes: keep it short where tmp_path is long.
    path = str(tmp_path / "n.sock")
    if len(path) > 100:
        path = f"/tmp/dealsd-notify-{uuid.uuid4().hex[:8]}.sock"
    receiver = Receiver(path)
    yield path, receiver
    receiver.close()
    if os.path.exists(path):
        os.unlink(path)


@pytest.fixture
def abstract_socket() -> Iterator[tuple[str, Receiver]]:
    name = f"dealsd-test-{uuid.uuid4().hex}"
    receiver = Receiver("\0" + name)
    yield "@" + name, receiver
    receiver.close()


def test_no_socket_is_a_silent_noop() -> None:
    n = Notifier.from_env({"WATCHDOG_USEC": "120000000"})
    assert not n.enabled
    assert n.ready() is False
    assert n.status("x") is False
    assert n.watchdog() is False
    assert n.reloading() is False
    assert n.stopping() is False
    # A watchdog nobody can be told about is not one to feed.
    assert n.watchdog_interval_s() is None
    assert n.failures == 0


def test_each_message_over_a_path_socket(path_socket: tuple[str, Receiver]) -> None:
    address, rx = path_socket
    n = Notifier.from_env({"NOTIFY_SOCKET": address})
    assert n.enabled
    assert n.ready() is True
    assert rx.recv() == b"READY=1"
    n.status("upserter ok: 450 deals\nbackfiller waiting")
    assert rx.recv() == b"STATUS=upserter ok: 450 deals backfiller waiting"
    n.watchdog()
    assert rx.recv() == b"WATCHDOG=1"
    n.stopping()
    assert rx.recv() == b"STOPPING=1"
    n.ready(status="reloaded")
    assert rx.recv() == b"READY=1\nSTATUS=reloaded"
    n.extend_timeout(2.5)
    assert rx.recv() == b"EXTEND_TIMEOUT_USEC=2500000"
    assert rx.empty()
    n.close()
    assert n.ready() is False


def test_abstract_socket(abstract_socket: tuple[str, Receiver]) -> None:
    address, rx = abstract_socket
    n = Notifier.from_env({"NOTIFY_SOCKET": address})
    assert n.ready() is True
    assert rx.recv() == b"READY=1"
    n.close()


def test_reloading_carries_kernel_monotonic_usec(path_socket: tuple[str, Receiver]) -> None:
    address, rx = path_socket
    n = Notifier.from_env({"NOTIFY_SOCKET": address})
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    n.reloading()
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    lines = rx.recv().decode().split("\n")
    assert lines[0] == "RELOADING=1"
    key, value = lines[1].split("=")
    assert key == "MONOTONIC_USEC"
    assert before <= int(value) <= after
    n.close()


def test_reloading_uses_injected_monotonic(path_socket: tuple[str, Receiver]) -> None:
    address, rx = path_socket
    n = Notifier(socket_address(address), monotonic_ns=lambda: 7_000_123_456)
    n.reloading()
    assert rx.recv() == b"RELOADING=1\nMONOTONIC_USEC=7000123"
    n.close()


def test_send_errors_logged_once_never_raised(path_socket: tuple[str, Receiver]) -> None:
    address, rx = path_socket
    n = Notifier.from_env({"NOTIFY_SOCKET": address})
    rx.close()
    os.unlink(address)  # systemd gone (or re-executing): nobody at the address
    with capture_logs() as logs:
        for _ in range(5):
            assert n.watchdog() is False
    assert n.failures == 5
    failed = [e for e in logs if e["event"] == "notify_send_failed"]
    assert len(failed) == 1
    assert failed[0]["log_level"] == "warning"
    assert failed[0]["socket"] == address
    assert failed[0]["message"] == "WATCHDOG"

    # The socket comes back at the same path (daemon-reexec): sends resume and
    # the recovery is said once, with the count.
    rx2 = Receiver(address)
    try:
        with capture_logs() as logs:
            assert n.watchdog() is True
            assert n.watchdog() is True
        assert rx2.recv() == b"WATCHDOG=1"
        assert [e["event"] for e in logs] == ["notify_send_recovered"]
        assert logs[0]["failures"] == 5
        # A second outage is reported again.
        rx2.close()
        os.unlink(address)
        with capture_logs() as logs:
            n.ready()
            n.ready()
        assert [e["event"] for e in logs] == ["notify_send_failed"]
    finally:
        rx2.close()
        n.close()


def test_oversized_message_fails_softly(path_socket: tuple[str, Receiver]) -> None:
    address, _rx = path_socket
    n = Notifier.from_env({"NOTIFY_SOCKET": address})
    with capture_logs() as logs:
        assert n.status("x" * 400_000) is False  # EMSGSIZE: logged, not raised
    assert n.failures == 1
    assert [e["event"] for e in logs] == ["notify_send_failed"]
    n.close()


@pytest.mark.parametrize("value", ["relative/path", "vsock:2:1234", "@", "/"])
def test_unusable_socket_value_gives_a_noop(value: str) -> None:
    with capture_logs() as logs:
        n = Notifier.from_env({"NOTIFY_SOCKET": value})
    assert not n.enabled
    assert n.ready() is False
    assert [e["event"] for e in logs] == ["notify_socket_unsupported"]


def test_watchdog_interval_is_half_the_timeout(path_socket: tuple[str, Receiver]) -> None:
    address, _ = path_socket
    env = {"NOTIFY_SOCKET": address, "WATCHDOG_USEC": "120000000"}
    assert Notifier.from_env(env).watchdog_interval_s() == 60.0
    mine = {**env, "WATCHDOG_PID": str(os.getpid())}
    assert Notifier.from_env(mine).watchdog_interval_s() == 60.0
    other = {**env, "WATCHDOG_PID": str(os.getpid() + 1)}
    assert Notifier.from_env(other).watchdog_interval_s() is None
    assert Notifier.from_env({"NOTIFY_SOCKET": address}).watchdog_interval_s() is None


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"WATCHDOG_USEC": "3000000"}, 1.5),
        ({"WATCHDOG_USEC": "3000000", "WATCHDOG_PID": "42"}, 1.5),
        ({"WATCHDOG_USEC": "3000000", "WATCHDOG_PID": "43"}, None),
        ({"WATCHDOG_USEC": "3000000", "WATCHDOG_PID": "x"}, None),
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "-5"}, None),
        ({"WATCHDOG_USEC": "soon"}, None),
        ({}, None),
    ],
)
def test_watchdog_interval_parsing(env: dict[str, str], expected: float | None) -> None:
    assert watchdog_interval(env, 42) == expected


def test_from_env_reads_os_environ(
    monkeypatch: pytest.MonkeyPatch, abstract_socket: tuple[str, Receiver]
) -> None:
    address, rx = abstract_socket
    monkeypatch.setenv("NOTIFY_SOCKET", address)
    monkeypatch.setenv("WATCHDOG_USEC", "10000000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    n = Notifier.from_env()
    assert n.watchdog_interval_s() == 5.0
    n.watchdog()
    assert rx.recv() == b"WATCHDOG=1"
    n.close()


def test_sent_by_the_main_process_itself(path_socket: tuple[str, Receiver]) -> None:
    """NotifyAccess=main: systemd accepts a datagram only if the kernel-attached
    sender PID is the service's main PID. Another process sends READY=1 via
    from_env(); the credentials must name that very process."""
    address, rx = path_socket
    rx.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
    script = "from dealsd.notify import Notifier; print(Notifier.from_env().ready())"
    proc = subprocess.Popen(
        [sys.executable, "-c", script],
        env={**os.environ, "NOTIFY_SOCKET": address},
        stdout=subprocess.PIPE,
        text=True,
    )
    out, _ = proc.communicate(timeout=30)
    assert out.strip() == "True"
    msg, ancdata, _flags, _addr = rx.sock.recvmsg(4096, socket.CMSG_SPACE(12))
    assert msg == b"READY=1"
    [(level, kind, data)] = ancdata
    assert (level, kind) == (socket.SOL_SOCKET, socket.SCM_CREDENTIALS)
    pid, _uid, _gid = struct.unpack("3i", data[:12])
    assert pid == proc.pid
