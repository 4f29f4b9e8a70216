"""The one worker loop: rounds, sleeps, the error policy, restarts, stopping.

Every worker is a plain object with ``name``, ``expected_round_s`` and
``async def round() -> RoundResult``. The loop around it lives here once:
a round that raises is logged (its traceback once per distinct error, then
counted by ``logs.FailureLog``, docs/field-notes.md #7), and the worker is run again after an
exponential backoff (1 s doubling to 60 s, reset after a healthy stretch),
seconds rather than the old system's 30 minutes (docs/field-notes.md #10).

Stopping is graceful then firm: the stop event ends every sleep at once and
lets rounds in flight finish for ``grace_s``; what is still running after that
is cancelled. ``CancelledError`` is never swallowed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence

import structlog

from dealsd.clock import Clock
from dealsd.logs import FailureLog
from dealsd.workers.base import Worker
from dealsd.workers.health import Health

log = structlog.get_logger(__name__)


OnRestart = Callable[[str, str], Awaitable[None]]


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class Supervisor:
    """Runs workers as tasks, restarts the ones that raise, stops them all."""

    def __init__(
        self,
        *,
        workers: Sequence[Worker],
        clock: Clock,
        health: Health,
        stop: asyncio.Event | None = None,
        on_restart: OnRestart | None = None,
        backoff_base_s: float = 1.0,
        backoff_cap_s: float = 60.0,
        reset_after_s: float = 300.0,
    ) -> None:
        self._workers = list(workers)
        self._clock = clock
        self._health = health
        self.stop_event = stop if stop is not None else asyncio.Event()
        self._on_restart = on_restart
        self._base = backoff_base_s
        self._cap = backoff_cap_s
        self._reset_after = reset_after_s
        self._tasks: dict[str, asyncio.Task[None]] = {}
        # Set by wake(): ends the sleeps in progress (a fixed key must not wait
        # out a 600 s access-denied pause). Replaced on each wake so a sleep
        # begun afterwards is not cut short by an old wake.
        self._woken = asyncio.Event()
        # A persistent fault is said once with its traceback, then counted in
        # one summary line a minute at most (docs/field-notes.md #7).
        self._errors = FailureLog(clock=clock)
        self.restarts: dict[str, int] = {w.name: 0 for w in self._workers}
        for w in self._workers:
            health.register(w.name, expected_round_s=w.expected_round_s)

    @property
    def tasks(self) -> dict[str, asyncio.Task[None]]:
        return dict(self._tasks)

    def start(self) -> None:
        for w in self._workers:
            if w.name not in self._tasks:
                self._tasks[w.name] = asyncio.create_task(self._loop(w), name=f"worker:{w.name}")

    def add(self, worker: Worker) -> None:
        """Run one more worker (a selection added on SIGHUP); started at once if running."""
        self._workers.append(worker)
        self.restarts.setdefault(worker.name, 0)
        self._health.register(worker.name, expected_round_s=worker.expected_round_s)
        if self._tasks and not self.stop_event.is_set():
            self.start()

    async def remove(self, name: str) -> None:
        """Stop and forget one worker (a selection removed on SIGHUP).

        Cancelled, not drained: each of its writes is one transaction, so a
        round cut anywhere leaves what it stored whole and nothing half-done.
        """
        self._workers = [w for w in self._workers if w.name != name]
        task = self._tasks.pop(name, None)
        if task is not None and not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        self.restarts.pop(name, None)
        self._health.unregister(name)

    def backoff_s(self, failures: int) -> float:
        """Delay before the next try after ``failures`` consecutive failures (>= 1)."""
        return float(min(self._cap, self._base * 2 ** max(0, failures - 1)))

    async def _loop(self, worker: Worker) -> None:
        name = worker.name
        failures = 0
        last_failure = 0.0
        active_fault: str | None = None
        try:
            while not self.stop_event.is_set():
                self._health.running(name)
                # The worker may change its schedule live (SIGHUP): keep health's
                # stall window in step with it.
                self._health.set_expected_round(name, worker.expected_round_s)
                try:
                    result = await worker.round()
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    failures += 1
                    last_failure = self._clock.monotonic()
                    delay = self.backoff_s(failures)
                    self.restarts[name] = self.restarts.get(name, 0) + 1
                    fault = f"{name}:{_describe(exc)}"
                    if fault != active_fault and active_fault is not None:
                        self._errors.clear(active_fault)
                    first = fault not in self._errors.active()
                    self._errors.log_failure(
                        log,
                        "worker_failed",
                        fault,
                        level="error",
                        worker=name,
                        error=_describe(exc),
                        retry_in_s=round(delay, 1),
                        **({"exc_info": exc} if first else {}),
                    )
                    active_fault = fault
                    self._health.restarted(name, _describe(exc))
                    self._health.backing_off(name, _describe(exc), delay)
                    await self._record_restart(name, _describe(exc))
                    if await self._sleep(delay):
                        break
                    continue
                if active_fault is not None:
                    self._errors.clear(active_fault)
                    active_fault = None
                if result.progressed > 0 or result.idle:
                    self._health.progress(name, result.progressed, result.what, idle=result.idle)
                if failures and self._clock.monotonic() - last_failure >= self._reset_after:
                    log.info("worker_recovered", worker=name, after_failures=failures)
                    failures = 0
                if await self._sleep(result.sleep_s, result.wake):
                    break
        finally:
            self._health.stopped(name)

    def wake(self) -> None:
        """End every worker's current sleep now (their next round starts at once)."""
        self._woken.set()
        self._woken = asyncio.Event()

    async def _sleep(self, seconds: float, wake: asyncio.Event | None = None) -> bool:
        """Sleep unless stopped or woken first (by ``wake()`` or the round's own
        ``wake`` event); True when stopped."""
        if self.stop_event.is_set():
            return True
        if wake is not None and wake.is_set():
            return False
        waiters = {
            asyncio.ensure_future(self._woken.wait()),
            asyncio.ensure_future(self.stop_event.wait()),
            asyncio.ensure_future(self._clock.sleep(seconds)),
        }
        if wake is not None:
            waiters.add(asyncio.ensure_future(wake.wait()))
        try:
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waiters:
                w.cancel()
        return self.stop_event.is_set()

    async def _record_restart(self, name: str, error: str) -> None:
        if self._on_restart is None:
            return
        try:
            await self._on_restart(name, error)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            # Counting a restart must not become a second failure of the worker.
            log.warning("restart_not_recorded", worker=name, error=_describe(exc))

    async def stop(self, grace_s: float = 10.0) -> None:
        """Set the stop event, give rounds in flight ``grace_s``, cancel the rest."""
        self.stop_event.set()
        pending = [t for t in self._tasks.values() if not t.done()]
        if pending:
            # The grace period is measured on the injected clock, like every wait.
            timer = asyncio.ensure_future(self._clock.sleep(grace_s))
            try:
                all_done = asyncio.ensure_future(asyncio.wait(pending))
                await asyncio.wait({timer, all_done}, return_when=asyncio.FIRST_COMPLETED)
                all_done.cancel()
            finally:
                timer.cancel()
            still = [t for t in pending if not t.done()]
            if still:
                log.warning(
                    "workers_cancelled",
                    workers=sorted(t.get_name() for t in still),
                    grace_s=grace_s,
                )
                self.cancel_now()
        await self._reap()

    def cancel_now(self) -> None:
        """Cancel every worker task at once (a second SIGTERM)."""
        self.stop_event.set()
        for t in self._tasks.values():
            if not t.done():
                t.cancel()

    async def _reap(self) -> None:
        # Collect every task's outcome so nothing ends silently: an error
        # escaping the loop itself (a bug here, not in a worker) is logged.
        tasks = list(self._tasks.values())
        if tasks:
            await asyncio.wait(tasks)
        for name, t in self._tasks.items():
            if t.cancelled():
                continue
            exc = t.exception()
            if exc is not None:
                log.error("worker_loop_crashed", worker=name, error=_describe(exc))

    async def wait(self) -> None:
        """Wait until every worker loop has ended."""
        if self._tasks:
            await asyncio.wait(list(self._tasks.values()))
