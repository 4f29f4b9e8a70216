"""What a failed Keepa call raises, and the words for it, never with the API key.

The key travels in the query string, so every URL is a secret: ``redact``
scrubs ``key=``-like parameters from any text, and every ``KeepaError``
redacts its message and detail. Transport failures are described in words
(``describe_transport``) because aiohttp's own messages carry the URL.
"""

from __future__ import annotations

import re

import aiohttp

from dealsd.keepa.payloads import Envelope, KeepaErrorBody
from dealsd.redact import redact

# The part of an error body kept in an exception: enough to read, not a dump.
DETAIL_MAX = 300

# How Keepa (and the simulator) say "this key is no good", whatever the status.
BAD_KEY_RE = re.compile(r"(?i)(invalid|unknown|wrong|missing|bad)[ _-]?(api[ _-]?)?key")


class KeepaError(Exception):
    """A Keepa call that failed; the message never contains the API key."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        envelope: Envelope | None = None,
        detail: str | None = None,
        error: KeepaErrorBody | None = None,
    ) -> None:
        super().__init__(redact(message))
        self.status = status
        self.envelope = envelope
        self.detail = None if detail is None else redact(detail)
        self.error = error


class TransientError(KeepaError):
    """Server or network faults that outlasted ``max_attempts``."""


class RateLimited(TransientError):
    """HTTP 429 on every attempt: the balance stayed <= 0."""


class RequestRejected(KeepaError):
    """400/404/405: Keepa refused the request itself; retrying will not help."""


class AccessDenied(KeepaError):
    """402 or an invalid key: nothing will work until an operator acts."""


def describe_transport(exc: BaseException) -> str:
    """A transport failure in words, without the URL aiohttp puts in its messages."""
    if isinstance(exc, TimeoutError):  # aiohttp's ServerTimeoutError included
        return "timeout"
    if isinstance(exc, aiohttp.ClientPayloadError):
        return "truncated or corrupt body"
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return "server disconnected"
    if isinstance(exc, aiohttp.ClientConnectorError):
        return f"cannot connect ({exc.os_error.__class__.__name__})"
    if isinstance(exc, aiohttp.ClientOSError):
        return f"connection error ({exc.__class__.__name__}, errno {exc.errno})"
    return f"{exc.__class__.__name__}"


def format_error(error: KeepaErrorBody | None, body: bytes) -> str:
    if error is not None and (error.type or error.message or error.details):
        parts = [p for p in (error.type, error.message, error.details) if p]
        text = ": ".join(parts)
    else:
        text = body[:DETAIL_MAX].decode("utf-8", "replace").strip()
    return text[:DETAIL_MAX]
