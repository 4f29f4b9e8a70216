"""Health from progress, not from existence (docs/field-notes.md #2 and #6).

Each worker reports what it does (``running``, ``waiting_for_tokens``,
``backing_off``, ``stopped``) and every bit of progress it makes. Whether it is
*stalled* is never reported: it is derived here from how long the worker has
gone without progress, against a window built from the worker's own schedule
(its ``expected_round_s``), the token wait it said it expects, and a margin.
A slow plan therefore reads as slow, not stalled, and a dead loop reads as
stalled however alive its task looks.

A worker with nothing to do makes *idle progress*: a round that looked for
work and found none is a sign of life.

Stalled is not wedged. A worker that keeps starting rounds on schedule and
gets errors (Keepa down: resets, 503s, timeouts) makes no progress, so it is
stalled and the daemon unhealthy; but it is *trying*, and a restart cannot
bring Keepa back. Only a worker that stopped trying (no round started or
ended within its window, counted from the next try it announced, plus the
longest one Keepa call may take with all its retries, ``call_bound_s``) is
one a restart may cure, and only that stops the watchdog (``watchdog_ok``).

Healthy means every worker has shown it can do its work since this start:
right after a start, a worker that has not progressed yet and has no error
is *starting*: the snapshot lists it in ``starting`` and is not ``healthy``
(phase ``starting``, no cause) until each worker has progressed once, or its
first window passes and it reads as stalled. One that failed before its first
progress is unhealthy at once, without waiting out a stall window: a restart
during an outage must not read healthy while nothing works.

``Health`` is the registry: each worker's mutable record, the clock, the
derivation. What it hands out (``State``, ``WorkerRow``, ``HealthSnapshot``)
is frozen data in ``health_types``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

from dealsd.clock import Clock
from dealsd.workers.health_types import HealthSnapshot, State, WorkerRow


class WriterStatsLike(Protocol):
    """What health needs from ``store.writer_stats()``."""

    @property
    def queue_len(self) -> int: ...

    @property
    def last_commit_at(self) -> float | None: ...


@dataclass(slots=True)
class _Worker:
    name: str
    expected_round_s: float
    registered_mono: float
    state: State = State.STARTING
    last_progress_mono: float | None = None
    last_progress_at: float | None = None  # wall clock, for people and the db
    progress_total: int = 0
    progress_what: str = "items"
    idle: bool = False
    token_wait_s: float = 0.0
    wait_since_mono: float = 0.0
    backoff_reason: str | None = None
    next_try_mono: float | None = None
    next_try_at: float | None = None
    restarts: int = 0
    last_error: str | None = None
    last_error_at: float | None = None
    # Any sign the worker's loop still turns: a round started (``running``),
    # ended in an error or a backoff, progress, an announced token wait.
    last_attempt_mono: float = 0.0


class Health:
    """Progress and states per worker, and the verdict ``healthy``.

    ``margin_s`` and ``margin_factor`` widen each stall window: the window is
    ``(expected_round_s + token wait) * (1 + margin_factor) + margin_s``.
    ``writer_bound_s`` is how long queued writes may wait for a commit.
    ``call_bound_s`` is the longest one Keepa call may take with all its
    retries (timeouts and backoffs): a round in flight that long is still
    trying, not wedged. ``token_queue`` says how many requests each worker
    has queued in the token scheduler: one held there (a 429 retry waiting
    for the refill) is trying too.
    """

    def __init__(
        self,
        *,
        clock: Clock,
        writer_stats: Callable[[], WriterStatsLike] | None = None,
        margin_s: float = 60.0,
        margin_factor: float = 0.5,
        writer_bound_s: float = 60.0,
        call_bound_s: float = 0.0,
        token_queue: Callable[[], Mapping[str, int]] | None = None,
    ) -> None:
        self._clock = clock
        self._writer_stats = writer_stats
        self._margin_s = margin_s
        self._margin_factor = margin_factor
        self._writer_bound_s = writer_bound_s
        self._call_bound_s = call_bound_s
        self._token_queue = token_queue
        self._workers: dict[str, _Worker] = {}
        self._access_denied: str | None = None
        self._counts: dict[str, float] = {}
        # The writer's last commit in monotonic time: a wall-clock jump must not
        # make a committing writer look stuck.
        self._writer_seen_commit: float | None = None
        self._writer_seen_mono = clock.monotonic()

    # -- reports from workers -------------------------------------------------

    def register(self, name: str, *, expected_round_s: float) -> None:
        if name not in self._workers:
            now = self._clock.monotonic()
            self._workers[name] = _Worker(name, expected_round_s, now, last_attempt_mono=now)
        else:
            self._workers[name].expected_round_s = expected_round_s

    def unregister(self, name: str) -> None:
        """A worker removed for good (a selection taken out on SIGHUP): no longer watched."""
        self._workers.pop(name, None)

    def set_expected_round(self, name: str, expected_round_s: float) -> None:
        self._w(name).expected_round_s = expected_round_s

    def progress(self, name: str, n: int = 1, what: str = "pages", *, idle: bool = False) -> None:
        """Record progress; ``idle=True`` (or n=0 with idle) is a round that found no work."""
        w = self._w(name)
        w.last_progress_mono = w.last_attempt_mono = self._clock.monotonic()
        w.last_progress_at = self._clock.now()
        w.progress_total += max(0, n)
        w.progress_what = what
        w.idle = idle and n == 0
        if w.state in (State.STARTING, State.BACKING_OFF, State.WAITING_FOR_TOKENS):
            w.state = State.RUNNING
        w.backoff_reason = None
        w.next_try_mono = w.next_try_at = None

    def running(self, name: str) -> None:
        """A round starts (the supervisor says so before each one)."""
        w = self._w(name)
        w.last_attempt_mono = self._clock.monotonic()
        w.state = State.RUNNING
        w.token_wait_s = 0.0
        w.backoff_reason = None
        w.next_try_mono = w.next_try_at = None

    def waiting_for_tokens(self, name: str, expected_wait_s: float) -> None:
        w = self._w(name)
        w.state = State.WAITING_FOR_TOKENS
        w.token_wait_s = max(0.0, expected_wait_s)
        w.wait_since_mono = w.last_attempt_mono = self._clock.monotonic()

    def backing_off(self, name: str, reason: str, next_try_in_s: float) -> None:
        w = self._w(name)
        w.state = State.BACKING_OFF
        w.backoff_reason = reason
        w.last_attempt_mono = self._clock.monotonic()
        w.next_try_mono = w.last_attempt_mono + next_try_in_s
        w.next_try_at = self._clock.now() + next_try_in_s

    def stopped(self, name: str) -> None:
        self._w(name).state = State.STOPPED

    def restarted(self, name: str, error: str) -> None:
        w = self._w(name)
        w.restarts += 1
        w.last_error = error
        w.last_error_at = self._clock.now()
        w.last_attempt_mono = self._clock.monotonic()

    def error(self, name: str, error: str) -> None:
        """A failure inside a round that the worker handled itself (counted, not a restart)."""
        w = self._w(name)
        w.last_error = error
        w.last_error_at = self._clock.now()
        w.last_attempt_mono = self._clock.monotonic()

    def access_denied(self, detail: str) -> None:
        self._access_denied = detail

    def access_granted(self) -> None:
        self._access_denied = None

    def note_counts(self, **counts: float) -> None:
        """Figures for the summary line (deals, pending, tokens), set by the daemon."""
        self._counts.update(counts)

    # -- questions -------------------------------------------------------------

    def last_success_at(self, name: str) -> float | None:
        """Wall time of the worker's last progress, None if it never made any."""
        w = self._workers.get(name)
        return None if w is None else w.last_progress_at

    def seconds_since_success(self, name: str) -> float | None:
        """Monotonic seconds since the last progress (since registration if none)."""
        w = self._workers.get(name)
        if w is None:
            return None
        since = w.last_progress_mono if w.last_progress_mono is not None else w.registered_mono
        return self._clock.monotonic() - since

    def has_succeeded(self, name: str) -> bool:
        w = self._workers.get(name)
        return w is not None and w.last_progress_mono is not None

    def expected_round_s(self, name: str) -> float | None:
        w = self._workers.get(name)
        return None if w is None else w.expected_round_s

    def stall_window_s(self, name: str) -> float:
        return self._window(self._w(name))

    def snapshot(self) -> HealthSnapshot:
        now_mono = self._clock.monotonic()
        queued = self._token_queue() if self._token_queue is not None else {}
        rows = tuple(
            self._row(w, now_mono, queued.get(w.name, 0) > 0) for w in self._workers.values()
        )
        causes: list[str] = []
        starting: list[str] = []
        restartable = 0  # causes a restart may cure
        if self._access_denied is not None:
            causes.append(f"keepa access denied: {self._access_denied}")
        for row in rows:
            # The store's own "full since" clears on any commit, and the small
            # snapshot write still fits when a batch no longer does: a worker
            # whose last failure was a full disk, with no progress since, is
            # the lasting sign (a restart frees no space: not restartable).
            w = self._workers[row.name]
            if (
                w.last_error is not None
                and w.last_error.startswith("StoreFull")
                and (w.last_progress_at or 0.0) < (w.last_error_at or 0.0)
                and row.state is not State.STOPPED
            ):
                causes.append(f"database full: {row.name} cannot store its work ({w.last_error})")
            failing = f"; last error: {w.last_error}" if w.last_error else ""
            if row.state is State.STALLED and not row.trying:
                restartable += 1
                causes.append(
                    f"{row.name} stalled and stopped trying: no round started or ended "
                    f"for over {row.stall_after_s + self._call_bound_s:.0f}s"
                )
            elif row.state is State.STALLED:
                causes.append(
                    f"{row.name} stalled: no progress for over {row.stall_after_s:.0f}s, "
                    f"still trying{failing}"
                )
            elif w.last_progress_mono is None and row.state is not State.STOPPED:
                if w.last_error is not None:
                    causes.append(f"{row.name} has made no progress since start{failing}")
                else:
                    starting.append(row.name)
        queue_len: int | None = None
        last_commit: float | None = None
        if self._writer_stats is not None:
            stats = self._writer_stats()
            queue_len, last_commit = stats.queue_len, stats.last_commit_at
            if last_commit != self._writer_seen_commit:
                self._writer_seen_commit = last_commit
                self._writer_seen_mono = now_mono
            waited = now_mono - self._writer_seen_mono
            # Another process holding the write lock, or a full disk, is named
            # as such: the operator must act, and a restart would cure neither,
            # so neither stops the watchdog (they replace "writer stuck").
            busy_since: float | None = getattr(stats, "busy_since", None)
            full_since: float | None = getattr(stats, "full_since", None)
            now = self._clock.now()
            if full_since is not None:
                causes.append(
                    f"database full for {max(0.0, now - full_since):.0f}s: writes rolled back "
                    f"({getattr(stats, 'last_error', None) or 'disk full'})"
                )
            elif busy_since is not None:
                # The store sets busy_since only once SQLite's busy_timeout (5 s)
                # ran out: a dashboard's short write never gets this far.
                causes.append(
                    f"writer busy: another process holds the database write lock "
                    f"(waiting {now - busy_since:.0f}s past the busy timeout, {queue_len} queued)"
                )
            elif queue_len > 0 and waited > self._writer_bound_s:
                restartable += 1
                causes.append(f"writer stuck: {queue_len} queued, no commit for {waited:.0f}s")
        return HealthSnapshot(
            at=self._clock.now(),
            healthy=not causes and not starting,
            causes=tuple(causes),
            workers=rows,
            writer_queue=queue_len,
            writer_last_commit_at=last_commit,
            counts=dict(self._counts),
            watchdog_ok=restartable == 0,
            starting=tuple(starting),
        )

    def summary_line(self, snap: HealthSnapshot | None = None) -> str:
        """One line for systemd STATUS= and the periodic info log."""
        snap = snap or self.snapshot()
        parts: list[str] = []
        c = snap.counts
        if "deals" in c:
            parts.append(f"deals={int(c['deals'])}")
        if "pending" in c:
            parts.append(f"pending={int(c['pending'])}")
        if "tokens" in c:
            parts.append(f"tokens={int(c['tokens'])}")
        worst = snap.worst_state
        parts.append(f"workers={worst.value if worst else 'none'}")
        if snap.causes:
            parts.append("UNHEALTHY: " + "; ".join(snap.causes))
        elif snap.starting:
            parts.append("starting: no progress yet from " + ", ".join(snap.starting))
        else:
            parts.append("healthy")
        return " ".join(parts)

    # -- internals ------------------------------------------------------------

    def _w(self, name: str) -> _Worker:
        try:
            return self._workers[name]
        except KeyError:
            raise KeyError(f"worker {name!r} not registered with health") from None

    def _window(self, w: _Worker) -> float:
        base = w.expected_round_s + w.token_wait_s
        return base * (1.0 + self._margin_factor) + self._margin_s

    def _attempt_deadline(self, w: _Worker, window: float) -> float:
        """Until when the worker's loop may show no sign and still be trying.

        Its window from its last sign, widened by an announced token wait or
        next try (a supervisor backoff, a failed batch's pause, a refused key's
        long pause), plus ``call_bound_s`` for a round inside one Keepa call's
        retries.
        """
        deadline = w.last_attempt_mono + window
        if w.state is State.WAITING_FOR_TOKENS:
            deadline = max(deadline, w.wait_since_mono + w.token_wait_s + self._margin_s)
        if w.state is State.BACKING_OFF and w.next_try_mono is not None:
            deadline = max(deadline, w.next_try_mono + window)
        return deadline + self._call_bound_s

    def _row(self, w: _Worker, now_mono: float, queued: bool = False) -> WorkerRow:
        window = self._window(w)
        state = w.state
        trying = True
        if state is not State.STOPPED:
            since = w.last_progress_mono if w.last_progress_mono is not None else w.registered_mono
            deadline = since + window
            if state is State.WAITING_FOR_TOKENS:
                # A wait the scheduler announced is allowed in full, counted from
                # when it began, not from the last progress.
                deadline = max(deadline, w.wait_since_mono + w.token_wait_s + self._margin_s)
            # Backing off never widens the window: a worker failing every round
            # is exactly the dead loop this must catch, however busy it looks.
            # Except while Keepa refuses the key: the worker then waits for an
            # operator on purpose (minutes between tries), and reading that as
            # a stall would make it restartable. It must still try again when
            # it said it would: the window counts from that moment.
            if (
                state is State.BACKING_OFF
                and self._access_denied is not None
                and w.next_try_mono is not None
            ):
                deadline = max(deadline, w.next_try_mono + window)
            if now_mono > deadline:
                state = State.STALLED
                trying = queued or now_mono <= self._attempt_deadline(w, window)
        return WorkerRow(
            name=w.name,
            state=state,
            expected_round_s=w.expected_round_s,
            stall_after_s=window,
            last_progress_at=w.last_progress_at,
            progress_total=w.progress_total,
            progress_what=w.progress_what,
            idle=w.idle,
            token_wait_s=w.token_wait_s,
            backoff_reason=w.backoff_reason,
            next_try_at=w.next_try_at,
            restarts=w.restarts,
            last_error=w.last_error,
            last_error_at=w.last_error_at,
            trying=trying,
        )
