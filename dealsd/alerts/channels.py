"""Alert channels: Apprise URLs read from a secret file, sent to, never shown.

An Apprise URL (``discord://webhook_id/token``, ``tgram://bot/chat``,
``mailtos://user:pass@host``, ``json://host/path`` ...) IS a secret: it is
read from ``$CREDENTIALS_DIRECTORY/alert_channels`` (systemd
``LoadCredential=``) or the file named by ``[alerts] channels_file``, one
``name = url`` a line, and only the scheme ever appears in a log line, a
status output, an error or the database. Apprise's own log output (which
prints hosts and payloads) is captured per send, redacted, and kept as the
channel's last error instead of reaching the journal.

Apprise is an optional extra (``dealsd[alerts]``): only this module imports it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dealsd.config import ALERT_CHANNELS_CREDENTIAL, AlertsConfig, ConfigError

_NAME_RE = re.compile(r"[A-Za-z0-9_-]+")
# The pieces of a URL that may be secret: anything between separators that is
# long enough to be a token, password, id or host.
_PIECE_RE = re.compile(r"[^/:@?&=#,\s]{4,}")
ERROR_MAX = 300


class NoChannels(ConfigError):
    """Rules but no channels file or credential visible to this process."""


@dataclass(frozen=True, slots=True)
class Channel:
    name: str
    url: str

    @property
    def shown(self) -> str:
        """What may be shown of the URL: its scheme only."""
        return self.url.split("://", 1)[0] + "://***"


def _source(alerts: AlertsConfig, env: Mapping[str, str]) -> Path | None:
    cred_dir = env.get("CREDENTIALS_DIRECTORY", "").strip()
    if cred_dir and (Path(cred_dir) / ALERT_CHANNELS_CREDENTIAL).exists():
        return Path(cred_dir) / ALERT_CHANNELS_CREDENTIAL
    if alerts.channels_file is not None:
        return Path(alerts.channels_file)
    return None


def _valid(url: str) -> bool:
    import apprise

    return apprise.Apprise.instantiate(url) is not None


def load_channels(alerts: AlertsConfig, env: Mapping[str, str] = os.environ) -> list[Channel]:
    """The configured channels, checked; ``ConfigError`` names the line and rule at fault."""
    if not alerts.rule:
        return []
    path = _source(alerts, env)
    if path is None:
        raise NoChannels(
            "config",
            "alerts.channels_file",
            "alert rules need channels: name a file of `name = apprise-url` lines, or a "
            f"systemd credential (LoadCredential={ALERT_CHANNELS_CREDENTIAL}:...)",
        )
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise ConfigError(path, "alerts.channels_file", f"cannot read it: {reason}") from None
    channels: dict[str, Channel] = {}
    for n, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, url = (part.strip() for part in line.partition("="))
        where = f"line {n}"
        if not sep or not _NAME_RE.fullmatch(name) or "://" not in url:
            raise ConfigError(path, "alerts.channels_file", f"{where}: expected `name = url`")
        channel = Channel(name, url)
        if not _valid(url):
            raise ConfigError(
                path,
                "alerts.channels_file",
                f"{where}: {name}: Apprise does not understand this URL ({channel.shown})",
            )
        if name in channels:
            raise ConfigError(path, "alerts.channels_file", f"{where}: {name} is defined twice")
        channels[name] = channel
    if not channels:
        raise ConfigError(path, "alerts.channels_file", "no channel in the file")
    for i, rule in enumerate(alerts.rule):
        for name in rule.channels:
            if name not in channels:
                raise ConfigError(
                    "config",
                    f"alerts.rule[{i}].channels",
                    f"unknown channel {name!r} (the channels file has "
                    f"{', '.join(sorted(channels))})",
                )
    return list(channels.values())


class Redactor:
    """Removes every secret-looking piece of the configured URLs from a text."""

    def __init__(self, urls: Sequence[str]) -> None:
        pieces: set[str] = set()
        for url in urls:
            rest = url.split("://", 1)[-1]
            pieces.update(_PIECE_RE.findall(rest))
            pieces.add(rest)
        # Longest first, so a URL goes before the pieces it contains.
        self._pieces = sorted(pieces, key=len, reverse=True)

    def __call__(self, text: str) -> str:
        for piece in self._pieces:
            text = text.replace(piece, "***")
        return text


class Sender:
    """Sends a title and a Markdown body to one channel through Apprise."""

    def __init__(self, channels: Sequence[Channel], *, timeout_s: float = 30.0) -> None:
        import apprise

        self._apprise = apprise
        self._channels = {c.name: c for c in channels}
        self.redact = Redactor([c.url for c in channels])
        self._timeout_s = timeout_s
        # Apprise logs hosts and payloads: keep them out of the journal; each
        # send captures them and keeps a redacted excerpt as its error.
        logging.getLogger("apprise").propagate = False

    @property
    def names(self) -> list[str]:
        return list(self._channels)

    async def send(self, channel: str, *, title: str, body: str) -> str | None:
        """None when delivered, else the (redacted) reason it was not."""
        target = self._channels.get(channel)
        if target is None:
            return f"channel {channel!r} is no longer configured"
        try:
            return await asyncio.wait_for(
                asyncio.to_thread(self._send_blocking, target, title, body), self._timeout_s
            )
        except TimeoutError:
            return f"no answer within {self._timeout_s:.0f}s"

    def _send_blocking(self, target: Channel, title: str, body: str) -> str | None:
        apprise: Any = self._apprise
        ap = apprise.Apprise()
        ap.add(target.url)
        with apprise.LogCapture(level=logging.WARNING) as captured:
            try:
                ok = ap.notify(title=title, body=body, body_format=apprise.NotifyFormat.MARKDOWN)
            except Exception as exc:  # a plugin bug must not kill the sender
                return self.redact(f"{type(exc).__name__}: {exc}")[:ERROR_MAX]
            logged = captured.getvalue()
        if ok:
            return None
        lines = [ln.split(" - ", 2)[-1] for ln in logged.splitlines() if ln.strip()]
        return self.redact("; ".join(lines) or "Apprise reported a failure")[:ERROR_MAX]
