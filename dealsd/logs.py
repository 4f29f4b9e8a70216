"""Logging: structlog everywhere, one line per event, and a persistent fault said once.

``configure_logging`` routes structlog and the stdlib loggers (aiohttp,
asyncio) through one ``ProcessorFormatter`` on one handler, so every line has
the same shape whoever wrote it. Formats:

- ``journal``: ``<6>event=ready db=/var/lib/dealsd/deals.db logger=dealsd.daemon``.
  No timestamp (journald stamps each line) and a syslog priority prefix so
  ``journalctl -p warning`` filters. A traceback is escaped onto the same line:
  a multi-line entry would become several journal entries, the rest at <6>.
- ``logfmt`` (``auto`` off a terminal): the same with ``ts=`` and ``level=``.
- ``console`` (``auto`` on a terminal): structlog's ConsoleRenderer.
- ``json``: one JSON object per line.

Every value passes ``redact`` first: Keepa puts the API key in the query
string, so any URL or aiohttp error text may carry ``key=<secret>``.

``FailureLog`` is docs/field-notes.md #7 (1.6 GB of logs): the first occurrence of a
fault is logged in full, repeats are counted into one summary line at most
every ``summary_every_s``, and the recovery is one more line.
"""

from __future__ import annotations

import io
import logging
import os
import re
import sys
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass
from typing import Any, TextIO

import structlog
from structlog.typing import EventDict, ExcInfo, Processor, WrappedLogger

from dealsd.clock import Clock, iso_utc
from dealsd.journal import PRIORITY, early_line, is_journal
from dealsd.redact import redact as redact_text

__all__ = [
    "FailureLog",
    "configure_logging",
    "early_line",
    "logfmt",
    "redact",
    "redact_text",
    "set_level",
]

# Python logging levels by name (the journal priorities are dealsd.journal.PRIORITY).
LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}
FORMATS = ("auto", "journal", "console", "json", "logfmt")

# Characters that force a logfmt value into quotes.
_NEEDS_QUOTES = re.compile(r'[\s"=\\]|[^\x21-\x7e\u00a0-\U0010ffff]')
_ESCAPES = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\r": "\\r", "\t": "\\t"}


# -- processors ---------------------------------------------------------------


def _scrub(value: Any) -> Any:
    if isinstance(value, str):
        return redact_text(value) if "key=" in value.lower() else value
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, Mapping):
        return {k: _scrub(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_scrub(v) for v in value]
    # A URL, an exception, anything whose text may hold the key: keep the
    # object unless its text needs scrubbing (renderers str() it anyway).
    text = str(value)
    return redact_text(text) if "key=" in text.lower() else value


def redact(_logger: WrappedLogger, _method: str, event_dict: EventDict) -> EventDict:
    """Processor: ``key=<anything>`` becomes ``key=***`` in every value."""
    return {k: v if k.startswith("_") else _scrub(v) for k, v in event_dict.items()}


def _escape(text: str) -> str:
    out = []
    for ch in text:
        if ch in _ESCAPES:
            out.append(_ESCAPES[ch])
        elif ch < " " or ch == "\x7f":
            out.append(f"\\x{ord(ch):02x}")
        else:
            out.append(ch)
    return "".join(out)


def _logfmt_value(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    text = value if isinstance(value, str) else str(value)
    if text and not _NEEDS_QUOTES.search(text):
        return text
    return f'"{_escape(text)}"'


def logfmt(fields: Mapping[str, Any]) -> str:
    """``k=v k2="v with spaces"`` on one line: quotes, backslashes and newlines escaped."""
    return " ".join(
        f"{re.sub(r'[^A-Za-z0-9_.-]', '_', str(k)) or '_'}={_logfmt_value(v)}"
        for k, v in fields.items()
    )


def _ordered(event_dict: EventDict, *, head: tuple[str, ...]) -> dict[str, Any]:
    """``head`` keys first, the caller's fields next, the logger name last."""
    out = {k: event_dict[k] for k in head if k in event_dict}
    out.update((k, v) for k, v in event_dict.items() if k not in out and k != "logger")
    if "logger" in event_dict:
        out["logger"] = event_dict["logger"]
    return out


def _journal_renderer(_logger: WrappedLogger, _method: str, event_dict: EventDict) -> str:
    level = str(event_dict.pop("level", "info"))
    event_dict.pop("timestamp", None)
    return f"<{PRIORITY.get(level, 6)}>{logfmt(_ordered(event_dict, head=('event',)))}"


def _logfmt_renderer(_logger: WrappedLogger, _method: str, event_dict: EventDict) -> str:
    fields = _ordered(event_dict, head=("timestamp", "level", "event"))
    if "timestamp" in fields:
        fields = {"ts": fields.pop("timestamp"), **fields}
    return logfmt(fields)


def _redacted_traceback(sio: TextIO, exc_info: ExcInfo) -> None:
    buf = io.StringIO()
    structlog.dev.plain_traceback(buf, exc_info)
    sio.write(redact_text(buf.getvalue()))


# -- setup --------------------------------------------------------------------


class _DealsdHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Marks the handler this module installed, so a second call replaces it."""


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def resolve_format(fmt: str, *, stream: TextIO, env: Mapping[str, str]) -> str:
    """``auto`` -> ``journal`` under systemd, ``console`` on a TTY, else ``logfmt``."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown log format {fmt!r}")
    if fmt != "auto":
        return fmt
    if is_journal(stream, env):
        return "journal"
    return "console" if _isatty(stream) else "logfmt"


def _final_processors(fmt: str, stream: TextIO) -> list[Processor]:
    stamp = structlog.processors.TimeStamper(fmt="iso", utc=True)
    if fmt == "console":
        return [
            stamp,
            redact,
            structlog.dev.ConsoleRenderer(
                colors=_isatty(stream), exception_formatter=_redacted_traceback
            ),
        ]
    # The traceback becomes an "exception" string so redaction reaches it.
    exc: list[Processor] = [structlog.processors.format_exc_info, redact]
    if fmt == "json":
        return [stamp, *exc, structlog.processors.JSONRenderer()]
    if fmt == "journal":
        return [*exc, _journal_renderer]
    return [stamp, *exc, _logfmt_renderer]


def configure_logging(
    level: str,
    fmt: str,
    *,
    stream: TextIO | None = None,
    env: Mapping[str, str] = os.environ,
) -> str:
    """Install the one handler on the root logger; returns the format chosen."""
    out = sys.stderr if stream is None else stream
    chosen = resolve_format(fmt, stream=out, env=env)
    # Bound before the formatter so structlog and stdlib records arrive alike.
    pre_chain: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_logger_name,
        structlog.stdlib.add_log_level,
    ]
    handler = _DealsdHandler(out)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=pre_chain,
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                *_final_processors(chosen, out),
            ],
        )
    )
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _DealsdHandler)]:
        root.removeHandler(old)
    root.addHandler(handler)
    set_level(level)
    logging.captureWarnings(True)
    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            *pre_chain,
            structlog.stdlib.PositionalArgumentsFormatter(),
            structlog.processors.StackInfoRenderer(),
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        # Not cached: tests (structlog.testing.capture_logs) and a reconfigure
        # must reach loggers that modules created at import time.
        cache_logger_on_first_use=False,
    )
    return chosen


def set_level(level: str) -> None:
    """Change the threshold of every logger at once (SIGHUP)."""
    try:
        logging.getLogger().setLevel(LEVELS[level.lower()])
    except KeyError:
        raise ValueError(f"unknown log level {level!r}") from None


# -- repeat suppression -------------------------------------------------------


@dataclass(slots=True)
class _Fault:
    logger: Any
    event: str
    level: str
    first_wall: float
    first_mono: float
    last_line: float  # monotonic time of the last line written for it
    count: int = 1  # occurrences, the first included


class FailureLog:
    """Say a fault once, then count it: at most one line per ``summary_every_s``.

    ``key`` names the fault (``"keepa:TransientError"``); a new key is a new
    fault. ``clear(key)`` after a success writes the recovery line.
    """

    def __init__(self, *, clock: Clock, summary_every_s: float = 60.0) -> None:
        self._clock = clock
        self._every = summary_every_s
        self._faults: MutableMapping[str, _Fault] = {}

    def log_failure(
        self, logger: Any, event: str, key: str, *, level: str = "warning", **fields: Any
    ) -> bool:
        """Log or count one occurrence; True when a line was written."""
        now = self._clock.monotonic()
        fault = self._faults.get(key)
        if fault is None:
            self._faults[key] = _Fault(logger, event, level, self._clock.now(), now, now)
            getattr(logger, level)(event, fault_key=key, **fields)
            return True
        fault.count += 1
        if now - fault.last_line < self._every:
            return False
        fault.last_line = now
        # The traceback was shown once; a summary carries only the latest fields.
        fields.pop("exc_info", None)
        getattr(logger, level)(
            event,
            fault_key=key,
            repeated=fault.count - 1,
            since=iso_utc(fault.first_wall),
            **fields,
        )
        return True

    def clear(self, key: str) -> bool:
        """The fault is over: one ``recovered`` line if it had been logged."""
        fault = self._faults.pop(key, None)
        if fault is None:
            return False
        fault.logger.info(
            fault.event,
            fault_key=key,
            recovered=True,
            failures=fault.count,
            since=iso_utc(fault.first_wall),
            # Monotonic: a wall-clock jump must not make a fault last -3600 s.
            lasted_s=round(self._clock.monotonic() - fault.first_mono, 1),
        )
        return True

    def active(self) -> list[str]:
        """Keys of the faults not yet cleared."""
        return list(self._faults)
