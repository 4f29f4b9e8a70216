"""Keepa's token balance, per API key, as the server keeps it.

The balance refills in discrete steps of ``refill_rate`` every period and is
capped at 60 x ``refill_rate`` (unused tokens expire after an hour). A request
runs whenever the balance is >= 1, even if it costs more: the balance then goes
negative and nothing runs until refills lift it above zero again.

Time is read from the injected clock's monotonic time and the steps are
applied lazily (``advance``) when someone looks, so a ``FakeClock`` drives the
bucket exactly and an idle simulator costs nothing. Plan changes and another
consumer of the same key are events on the same timeline.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from dealsd.clock import Clock

HOUR_OF_REFILLS = 60  # the cap, in periods of refill


@dataclass(slots=True)
class BucketCounters:
    generated: int = 0  # tokens credited by refills
    wasted: int = 0  # refill tokens lost to the cap
    consumed: int = 0  # tokens charged to requests
    other_consumed: int = 0  # tokens spent by the other user of the key
    steps: int = 0  # refill steps so far (= simulated Keepa minutes)
    refused: int = 0  # requests answered 429


class TokenBucket:
    def __init__(
        self,
        *,
        clock: Clock,
        refill_rate: int,
        period_s: float,
        initial: int | None,
        plan_changes: list[tuple[float, int]],
        other_per_period: int,
        on_step: Callable[[int], None] | None = None,
        max_samples: int = 5000,
    ) -> None:
        if period_s <= 0:
            raise ValueError("refill period must be positive")
        self._clock = clock
        self.period_s = period_s
        self.refill_rate = refill_rate
        self.balance = initial if initial is not None else self.cap
        self.other_per_period = other_per_period
        self._plan = sorted(plan_changes)
        self._on_step = on_step
        self._start = clock.monotonic()
        self.counters = BucketCounters()
        # (seconds since start, balance after the event), one per step.
        self.samples: deque[tuple[float, int]] = deque(maxlen=max_samples)
        self.samples.append((0.0, self.balance))

    @property
    def cap(self) -> int:
        return HOUR_OF_REFILLS * self.refill_rate

    def restart(self) -> None:
        """Start the timeline now (the server starts serving), keeping the balance."""
        self._start = self._clock.monotonic()

    def advance(self) -> None:
        """Apply every refill step and plan change due by now, in time order."""
        now = self._clock.monotonic() - self._start
        while True:
            next_step = (self.counters.steps + 1) * self.period_s
            next_plan = self._plan[0][0] if self._plan else None
            if next_plan is not None and next_plan <= now and next_plan <= next_step:
                _, rate = self._plan.pop(0)
                self.set_rate(rate)
                continue
            if next_step > now:
                return
            self._step(next_step)

    def _step(self, at: float) -> None:
        self.counters.steps += 1
        target = self.balance + self.refill_rate
        credited = max(0, min(target, self.cap) - self.balance)
        self.counters.generated += credited
        self.counters.wasted += self.refill_rate - credited
        self.balance += credited
        if self.other_per_period > 0 and self.balance >= 1:
            # Another program on the same key: Keepa runs its request at a
            # balance >= 1 like any other, so it too can push it negative.
            self.balance -= self.other_per_period
            self.counters.other_consumed += self.other_per_period
        self.samples.append((round(at, 6), self.balance))
        if self._on_step is not None:
            self._on_step(self.counters.steps)

    def set_rate(self, rate: int) -> None:
        if rate < 0:
            raise ValueError("refill rate must be >= 0")
        self.refill_rate = rate
        # A smaller plan's cap applies at once: tokens above it expire.
        self.balance = min(self.balance, max(self.cap, 0)) if self.balance > 0 else self.balance

    def refill_in_ms(self) -> int:
        """Milliseconds until the next refill step (after ``advance``)."""
        elapsed = self._clock.monotonic() - self._start
        left = (self.counters.steps + 1) * self.period_s - elapsed
        return max(0, round(left * 1000))

    def try_charge(self, cost: int) -> bool:
        """Run-or-refuse, Keepa's rule: at balance >= 1 charge all of ``cost``."""
        if self.balance < 1:
            self.counters.refused += 1
            return False
        self.charge(cost)
        return True

    def charge(self, cost: int) -> None:
        self.balance -= cost
        self.counters.consumed += cost

    def elapsed_s(self) -> float:
        return self._clock.monotonic() - self._start
