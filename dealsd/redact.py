"""Secrets out of text: the one redaction that logs, errors and status share.

The Keepa API key travels in the query string, so any URL, exception text or
traceback may carry it. This module imports nothing of dealsd, so logging can
redact without pulling in the HTTP client.
"""

from __future__ import annotations

import re

# Any ``key=`` parameter, including ``api_key=``, ``apikey=``, ``api-key=`` (``\b``
# alone misses ``_key``, ``_`` being a word character), but not ``monkey=``.
_KEY_RE = re.compile(r"(?i)(?<![a-z0-9])((?:api|access|secret)?[_-]?key=)[^&\s'\"<>#]*")


def redact(text: str) -> str:
    """Replace the value of every ``key=``-like parameter in ``text`` with ``***``."""
    return _KEY_RE.sub(r"\1***", text)
