"""What a simulated Keepa looks like: its plan, its catalogue and its faults."""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Any


@dataclass
class Faults:
    """Fault rates, each a probability per request (``bad_items``: per item), 0..1."""

    error_5xx: float = 0.0  # 500/502/503 with an error body + envelope
    hang: float = 0.0  # sleep hang_s before answering (the client times out)
    hang_s: float = 30.0
    reset: float = 0.0  # close the connection without a response
    truncated: float = 0.0  # gzip body cut in half (Content-Length promises all of it)
    non_json: float = 0.0  # 200 with an HTML body, as a proxy in front of Keepa would send
    bad_items: float = 0.0  # per item: a deal/product with a missing field or wrong type

    def merged(self, changes: dict[str, Any]) -> Faults:
        """A copy with ``changes`` applied; unknown names are refused."""
        known = {f.name for f in fields(self)}
        unknown = set(changes) - known
        if unknown:
            raise ValueError(f"unknown fault(s): {', '.join(sorted(unknown))}")
        return replace(self, **{k: float(v) for k, v in changes.items()})


@dataclass
class SimOptions:
    refill_rate: int = 20  # tokens per period ("per minute")
    refill_period_s: float = 60.0  # accelerated time: 1.0 makes a Keepa minute last 1 s
    initial_tokens: int | None = None  # default: the cap, 60 x refill_rate
    catalogue_size: int = 2000  # deals in the catalogue
    seed: int = 1
    new_deals_per_period: int = 5  # deals appearing each period
    changed_deals_per_period: int = 20  # deals whose lastUpdate/current advance each period
    latency_s: float = 0.0
    faults: Faults = field(default_factory=Faults)
    # (seconds after start, new refill_rate)
    plan_changes: list[tuple[float, int]] = field(default_factory=list)
    other_consumer_per_period: int = 0  # another user of the same key spends this each period
    api_keys: frozenset[str] | None = None  # None = any key accepted; others get 402
    missing_rate: float = 0.02  # fraction of ASINs the /product endpoint does not return
    # sortType 1 orders by this deal time: "creationDate" (Keepa's "deal age",
    # as dealsd reads it) or "lastUpdate" (the other reading).
    newest_by: str = "creationDate"
    profitable_share: float = 0.06  # deals whose resale premium makes them profitable
    invalid_rate: float = 0.01  # fraction returned with productType 4
