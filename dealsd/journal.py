"""Lines for systemd's journal before (or without) logging: the priority prefix.

Under systemd a service's stderr is the journal, and with ``SyslogLevelPrefix=``
(on by default) a line starting ``<N>`` is logged at priority N. This module
imports nothing but the standard library, so the config and `dealsd status`
can say a refusal at its priority without loading the logging stack.
"""

from __future__ import annotations

import io
import os
import sys
from collections.abc import Mapping
from typing import IO

PRIORITY = {"critical": 3, "error": 3, "warning": 4, "info": 6, "debug": 7}


def is_journal(stream: IO[str], env: Mapping[str, str]) -> bool:
    """Whether ``stream`` is systemd's journal stream (``$JOURNAL_STREAM``)."""
    expected = env.get("JOURNAL_STREAM", "")
    if not expected:
        return False
    # systemd's advice: trust $JOURNAL_STREAM only if it names this very stream
    # (a child whose stderr was redirected inherits the variable).
    try:
        st = os.fstat(stream.fileno())
    except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
        return True  # no descriptor to compare (a test stream): trust it
    return f"{st.st_dev}:{st.st_ino}" == expected


def early_line(
    message: str,
    *,
    level: str = "error",
    stream: IO[str] | None = None,
    env: Mapping[str, str] = os.environ,
) -> None:
    """Say ``message`` on stderr where no log handler speaks yet (or ever).

    A config refused before logging is configured, or ``check-config`` run by
    the unit's ExecReload, still reaches the journal through stderr; with
    systemd's ``SyslogLevelPrefix=`` (on by default) its ``<N>`` prefix is the
    priority, without one the line is info (6) and ``journalctl -p warning``
    never shows why the service refused to start. Off the journal (a TTY, a
    pipe) the line is plain text. Each line gets the prefix: journald makes
    every line its own entry.
    """
    out = sys.stderr if stream is None else stream
    if is_journal(out, env):
        prefix = f"<{PRIORITY[level]}>"
        message = "\n".join(prefix + line for line in message.splitlines() or [""])
    print(message, file=out, flush=True)
