"""What each consumer's requests really cost, learned from the envelopes.

Two figures per consumer, both moving averages of what Keepa billed:

- the ratio of a request's real cost to the caller's estimate, so a grant
  deducts (and charges the consumer's share) what its requests really cost,
  not what the caller guessed; and
- the tokens per item of each kind of work (``observe``), so a batch is sized
  to what ``batch_minutes`` of refill pays for.

The scheduler owns one ``CostModel`` and feeds it; this module knows nothing of
turns, the balance or time.
"""

from __future__ import annotations

import math

EWMA_ALPHA = 0.3


def _ewma(old: float | None, new: float) -> float:
    return new if old is None else EWMA_ALPHA * new + (1 - EWMA_ALPHA) * old


class CostModel:
    """Per-consumer cost ratios and per-item costs (an EWMA each)."""

    def __init__(self) -> None:
        self._cost_per_item: dict[tuple[str, str], float] = {}  # (consumer, kind)
        self._ratio: dict[str, float] = {}  # consumer -> EWMA of real cost / estimate

    # -- a request's cost against its estimate ---------------------------------

    def expected(self, consumer: str, cost: int) -> float:
        """What a request ``consumer`` estimates at ``cost`` should really cost."""
        return cost * self._ratio.get(consumer, 1.0)

    def learn_ratio(self, consumer: str, ratio: float) -> None:
        """Fold one request's real cost / estimate into ``consumer``'s ratio."""
        ratio = min(max(ratio, 0.1), 50.0)
        self._ratio[consumer] = _ewma(self._ratio.get(consumer), ratio)

    # -- per item, for batch sizing --------------------------------------------

    def observe(self, consumer: str, items: int, tokens: int, *, kind: str = "") -> None:
        """Record what ``items`` really cost, for batch sizing (an EWMA per item).

        ``kind`` keeps work of different prices apart within one consumer (the
        backfiller's full backfill and its stats-only refresh): one average of
        both would size each kind's batches by the other's cost.
        """
        if items <= 0 or tokens < 0:
            return
        key = (consumer, kind)
        self._cost_per_item[key] = _ewma(self._cost_per_item.get(key), tokens / items)

    def cost_per_item(self, consumer: str, *, kind: str = "") -> float | None:
        """The observed tokens per item of ``consumer``'s ``kind`` of work (None: not yet)."""
        return self._cost_per_item.get((consumer, kind))

    def batch_size(
        self, consumer: str, *, budget: float, lo: int, hi: int, default_cost: float, kind: str
    ) -> int:
        """Items of ``kind`` whose expected cost fits ``budget`` tokens, in [lo, hi]."""
        per_item = self._cost_per_item.get((consumer, kind), default_cost)
        n = math.floor(budget / per_item + 1e-9) if per_item > 0 else hi
        return max(lo, min(hi, n))
