"""What a health reading is: each worker's state and row, and the snapshot with its verdict.

Frozen values, apart from the registry that computes them (``health.Health``,
which holds each worker's mutable record and the clock): the daemon, the
heartbeat and the tests read snapshots, and a snapshot is only data. The
meaning of each field (stalled, trying, starting, ``watchdog_ok``) is the
registry's to derive; ``health``'s docstring says how.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field


class State(enum.StrEnum):
    STARTING = "starting"
    RUNNING = "running"
    WAITING_FOR_TOKENS = "waiting_for_tokens"
    BACKING_OFF = "backing_off"
    STALLED = "stalled"
    STOPPED = "stopped"


# Worst first: what the one-line summary shows when workers disagree.
_SEVERITY = {
    State.STALLED: 5,
    State.BACKING_OFF: 4,
    State.STOPPED: 3,
    State.WAITING_FOR_TOKENS: 2,
    State.STARTING: 1,
    State.RUNNING: 0,
}


@dataclass(frozen=True, slots=True)
class WorkerRow:
    """One worker as seen now; ``state`` already says ``stalled`` if it is."""

    name: str
    state: State
    expected_round_s: float
    stall_after_s: float
    last_progress_at: float | None
    progress_total: int
    progress_what: str
    idle: bool
    token_wait_s: float
    backoff_reason: str | None
    next_try_at: float | None
    restarts: int
    last_error: str | None
    last_error_at: float | None
    # False once no round was started or ended within the window (and the
    # slack for one Keepa call): the loop stopped trying, a restart may help.
    trying: bool = True


@dataclass(frozen=True, slots=True)
class HealthSnapshot:
    """The daemon's health at ``at``: the verdict, its causes, each worker's row."""

    at: float
    healthy: bool
    causes: tuple[str, ...]
    workers: tuple[WorkerRow, ...]
    writer_queue: int | None = None
    writer_last_commit_at: float | None = None
    counts: dict[str, float] = field(default_factory=dict)
    # False when a cause is one a restart may cure (a worker that stopped
    # trying, a stuck writer). Causes a restart cannot cure (Keepa down while
    # the workers keep retrying, Keepa refusing the key, a full disk) leave it
    # True: the daemon stays unhealthy and says why, but systemd must not kill
    # and restart it every watchdog period for something a restart cannot fix.
    watchdog_ok: bool = True
    # Workers with no progress and no error yet since this start: while any
    # is listed (and there is no cause) the daemon is starting, not healthy.
    starting: tuple[str, ...] = ()

    @property
    def phase(self) -> str:
        """``healthy``, ``starting`` or ``unhealthy``: the word status shows."""
        if self.causes:
            return "unhealthy"
        return "starting" if self.starting else "healthy"

    def worker(self, name: str) -> WorkerRow:
        for row in self.workers:
            if row.name == name:
                return row
        raise KeyError(name)

    @property
    def worst_state(self) -> State | None:
        if not self.workers:
            return None
        return max((w.state for w in self.workers), key=lambda s: _SEVERITY[s])
