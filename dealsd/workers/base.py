"""What every worker shares: the round it runs and the result it returns.

A worker is an object with a ``name``, an ``expected_round_s`` (how long a
round normally takes: the stall window is derived from it) and an async
``round()`` that does one unit of work and says how long to sleep. The loop,
the sleep, restarts and the error policy live once, in the supervisor.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

# Called INSIDE the write that changed these deals' numbers (connection, ASINs,
# the write's time), so what it writes commits with them: the alert outbox.
DealsChanged = Callable[[sqlite3.Connection, Sequence[str], str], object]


@dataclass(frozen=True, slots=True)
class RoundResult:
    """What one round did and how long to wait before the next.

    ``progressed`` counts units of real work (pages, products, rows); ``idle``
    says the round looked for work and found none, which is a sign of life
    too. A round with neither (a batch that failed and was skipped) is not
    progress: repeated, it makes the worker read as stalled.
    """

    sleep_s: float
    progressed: int = 0
    what: str = "items"
    idle: bool = False


class Worker(Protocol):
    @property
    def name(self) -> str: ...

    @property
    def expected_round_s(self) -> float: ...

    async def round(self) -> RoundResult: ...


