"""What a failed Keepa attempt means: another attempt (after how long), or an error.

The client (``dealsd.keepa.client``) sends, syncs every envelope and acts; this
module only decides, from what came back:

- 429: the server's balance is <= 0. ``Retry``, with no backoff: the client
  takes a new turn, and the scheduler, now synced, waits for the refill.
- 5xx and 408: ``Retry`` after a backoff with full jitter (``RetryPolicy``).
  So is an attempt with no usable answer (a timeout, a reset, a truncated or
  non-JSON body): the client raises ``Retry`` for it where it sees it.
- 401/402/403 and any error text naming a bad key: ``AccessDenied``, not
  retried: callers stop spending.
- 400/404/405 and any other status: ``RequestRejected`` with Keepa's error
  text, not retried.

Once ``max_attempts`` are spent, the last reason becomes ``RateLimited`` (a
429) or ``TransientError`` (``RetryPolicy.give_up``).

It is kept apart from the transport so that the whole table (each answer and
what it leads to) reads in one place, with no session, scheduler or log line
in it: noting a 429 to the scheduler and logging a refusal stay with the client.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

from dealsd.keepa.errors import (
    BAD_KEY_RE,
    AccessDenied,
    KeepaError,
    RateLimited,
    RequestRejected,
    TransientError,
)
from dealsd.keepa.payloads import Envelope, KeepaErrorBody


class Retry(Exception):
    """Internal: this attempt failed in a way worth another (reason is redacted)."""

    def __init__(self, reason: str, *, status: int | None, envelope: Envelope | None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status
        self.envelope = envelope


def classify(
    endpoint: str,
    status: int,
    detail: str,
    envelope: Envelope | None,
    error: KeepaErrorBody | None,
) -> Retry | KeepaError:
    """What a non-200 answer leads to: another attempt, or the error the caller sees.

    ``detail`` is Keepa's error text, already scrubbed of the key.
    """
    if status == 429:
        return Retry("429 not enough tokens", status=status, envelope=envelope)
    if status >= 500 or status == 408:
        return Retry(f"HTTP {status}", status=status, envelope=envelope)
    message = f"{endpoint}: HTTP {status}: {detail}" if detail else f"{endpoint}: HTTP {status}"
    kwargs: dict[str, Any] = {
        "status": status, "envelope": envelope, "detail": detail, "error": error,
    }
    if status in (401, 402, 403) or BAD_KEY_RE.search(detail):
        return AccessDenied(message, **kwargs)
    return RequestRejected(message, **kwargs)


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How many attempts a call gets and how long it waits between faults."""

    max_attempts: int = 5
    backoff_base_s: float = 1.0
    backoff_max_s: float = 60.0
    rng: random.Random = field(default_factory=random.Random)

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError(f"max_attempts must be >= 1, got {self.max_attempts}")

    def delay(self, transient: int) -> float:
        """The wait after this call's ``transient``-th fault (1 for the first; 429s
        do not count): doubling from the base, capped at the max."""
        cap = min(self.backoff_max_s, self.backoff_base_s * 2 ** (transient - 1))
        return self.rng.uniform(0.0, cap)  # full jitter: no synchronized retries

    def give_up(self, endpoint: str, last: Retry) -> TransientError:
        """What the caller sees when every attempt failed; ``last`` names the last failure."""
        cls = RateLimited if last.status == 429 else TransientError
        return cls(
            f"{endpoint}: {last.reason} after {self.max_attempts} attempts",
            status=last.status, envelope=last.envelope,
        )
