"""The time formats: the database's ISO-8601 stamps and Keepa's minutes.

Apart from ``dealsd.clock`` (which re-exports them) because they need no event
loop: `dealsd status` and `dealsd deals` format times without importing
asyncio (a quarter of their start-up).
"""

from __future__ import annotations

from datetime import UTC, datetime


def iso_utc(epoch_s: float) -> str:
    """The one timestamp format of the database: ISO-8601 UTC with a ``Z``."""
    return datetime.fromtimestamp(epoch_s, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_iso_utc(text: str) -> float:
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC).timestamp()


KEEPA_EPOCH_MINUTES = 21_564_000


def keepa_minutes_to_epoch(minutes: int) -> float | None:
    """Keepa time (minutes since 2011-01-01) to epoch seconds; -1 and 0 mean never."""
    if minutes <= 0:
        return None
    return (minutes + KEEPA_EPOCH_MINUTES) * 60.0


def epoch_to_keepa_minutes(epoch_s: float) -> int:
    return int(epoch_s // 60) - KEEPA_EPOCH_MINUTES
