"""The systemd notify protocol over $NOTIFY_SOCKET, in plain Python.

systemd passes a datagram socket address in $NOTIFY_SOCKET (a path, or an
abstract name written with a leading ``@``); the service sends newline
separated ``KEY=value`` assignments to it (sd_notify(3)). No C library is
needed for that, so there is none.

A notification must never take the daemon down: when systemd is not there
(a console run, tests) every call is a no-op, and a send that fails is logged
once, counted, and otherwise ignored. The systemd side then notices on its
own (start timeout, watchdog), which is the right place for that decision.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable, Mapping

import structlog

log = structlog.get_logger(__name__)

# sendto on a datagram socket blocks only while systemd's queue is full; cap
# that so a wedged PID 1 cannot freeze the event loop for long.
SEND_TIMEOUT_S = 0.5


def _kernel_monotonic_ns() -> int:
    # Not the injected Clock: systemd compares MONOTONIC_USEC with its own
    # CLOCK_MONOTONIC, so only the kernel's reading means anything to it.
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC)


def socket_address(value: str | None) -> str | None:
    """$NOTIFY_SOCKET as an AF_UNIX address; None when unset or not one we can use."""
    if not value or len(value) < 2:
        return None
    if value[0] == "@":
        return "\0" + value[1:]  # abstract namespace
    if value[0] == "/":
        return value
    return None  # e.g. systemd >= 254 "vsock:CID:PORT": not for a local daemon


def watchdog_interval(env: Mapping[str, str], pid: int) -> float | None:
    """How often to ping: half of $WATCHDOG_USEC, if the watchdog is meant for ``pid``."""
    try:
        usec = int(env.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    if usec <= 0:
        return None
    owner = env.get("WATCHDOG_PID")
    if owner is not None:
        try:
            if int(owner) != pid:
                return None  # inherited from a parent: not ours to feed
        except ValueError:
            return None
    # Half the timeout, as sd_watchdog_enabled(3) advises: one lost or late
    # ping must not be enough to get the service killed.
    return usec / 2 / 1_000_000


class Notifier:
    """Sends state changes to systemd; a silent no-op when not run by systemd."""

    def __init__(
        self,
        address: str | None,
        *,
        watchdog_interval_s: float | None = None,
        monotonic_ns: Callable[[], int] = _kernel_monotonic_ns,
    ) -> None:
        self._address = address
        self._watchdog_interval_s = watchdog_interval_s
        self._monotonic_ns = monotonic_ns
        self._sock: socket.socket | None = None
        self._failures = 0
        self._failing = False
        if address is not None:
            # Unconnected, addressed per send like sd_notify: a socket systemd
            # re-creates on daemon-reexec is reached again without reconnecting.
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.settimeout(SEND_TIMEOUT_S)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, *, pid: int | None = None) -> Notifier:
        """The notifier systemd asked for, from $NOTIFY_SOCKET and $WATCHDOG_*."""
        env = os.environ if env is None else env
        raw = env.get("NOTIFY_SOCKET")
        address = socket_address(raw)
        if raw and address is None:
            log.warning("notify_socket_unsupported", notify_socket=raw)
        if address is None:
            return cls(None)
        interval = watchdog_interval(env, os.getpid() if pid is None else pid)
        return cls(address, watchdog_interval_s=interval)

    @property
    def enabled(self) -> bool:
        return self._sock is not None

    @property
    def failures(self) -> int:
        """Sends that failed since this notifier was made."""
        return self._failures

    def watchdog_interval_s(self) -> float | None:
        """Seconds between ``watchdog()`` calls; None when systemd set no watchdog."""
        return self._watchdog_interval_s if self.enabled else None

    def notify(self, *assignments: str) -> bool:
        """Send ``KEY=value`` lines in one datagram; True if it was sent."""
        if self._sock is None or self._address is None:
            return False
        data = "\n".join(assignments).encode("utf-8", errors="replace")
        try:
            self._sock.sendto(data, self._address)
        except OSError as exc:
            self._failures += 1
            if not self._failing:
                # Once per outage: a dead socket pinged every minute must not
                # fill the journal (docs/field-notes.md #7).
                self._failing = True
                log.warning(
                    "notify_send_failed",
                    socket=self._shown_address(),
                    error=f"{type(exc).__name__}: {exc}",
                    message=assignments[0].split("=", 1)[0] if assignments else "",
                )
            return False
        if self._failing:
            self._failing = False
            log.info("notify_send_recovered", socket=self._shown_address(), failures=self._failures)
        return True

    def ready(self, status: str | None = None) -> bool:
        """Start-up (or a reload) is complete; systemd marks the unit active."""
        if status is None:
            return self.notify("READY=1")
        return self.notify("READY=1", _status_line(status))

    def status(self, text: str) -> bool:
        """The one-line status `systemctl status` shows."""
        return self.notify(_status_line(text))

    def watchdog(self) -> bool:
        """Keep-alive: send at least every ``watchdog_interval_s()`` seconds."""
        return self.notify("WATCHDOG=1")

    def reloading(self) -> bool:
        """A reload has started; call ``ready()`` when it is done."""
        # systemd >= 253 (Type=notify-reload) wants the kernel's monotonic time
        # with RELOADING=1 to tell this reload from an earlier one.
        usec = self._monotonic_ns() // 1000
        return self.notify("RELOADING=1", f"MONOTONIC_USEC={usec}")

    def stopping(self) -> bool:
        """Shutdown has begun; systemd stops expecting watchdog pings."""
        return self.notify("STOPPING=1")

    def extend_timeout(self, seconds: float) -> bool:
        """Ask for more time to start or stop (e.g. while draining the writer)."""
        return self.notify(f"EXTEND_TIMEOUT_USEC={max(0, int(seconds * 1_000_000))}")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def _shown_address(self) -> str:
        address = self._address or ""
        return "@" + address[1:] if address.startswith("\0") else address


def _status_line(text: str) -> str:
    # A newline would end the STATUS= assignment and start a bogus one.
    return "STATUS=" + " ".join(text.split())
