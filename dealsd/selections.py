"""Deal selections: the Keepa queries one key serves, each on its own marketplace.

A selection is a ``[[selection]]`` table of the config (or, for a file of the
one-selection era, ``[upserter.selection]`` read as a selection named
``default``), resolved here into everything its upserter needs: its name,
marketplace, query, schedule, token weight and the profit settings with its
own overrides. One ``Upserter`` runs per selection; the backfiller serves
every marketplace.

Names carry through: the worker (and token consumer) of selection ``books``
is ``upserter:books``; the ``default`` selection keeps the plain name
``upserter``, so a one-selection install keeps its status rows, journal
worker names and ``[tokens] weights`` key.

Money is in each marketplace's own currency (dealsd.marketplaces).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from dealsd.config import Config, FunnelConfig, ProfitConfig, canonical_query

DEFAULT_NAME = "default"
UPSERTER = "upserter"  # the consumer whose [tokens] weight the selections share


@dataclass(frozen=True, slots=True)
class Selection:
    """One resolved deal selection: all its upserter and its deals' estimate need."""

    name: str
    domain: int
    query: Mapping[str, Any]
    interval_s: int
    max_pages_per_run: int
    weight: float
    profit: ProfitConfig
    # Hours between walks of the whole result (its own, else [upserter]
    # full_pass_h; 0: every round walks it). Between them the upserter polls
    # newest first (issue 14).
    full_pass_h: float = 6.0

    @property
    def worker(self) -> str:
        """Worker, token consumer and ledger name."""
        return worker_name(self.name)

    @property
    def price_type(self) -> int:
        return price_type(self.query)

    @property
    def key(self) -> str:
        """A short stable hash of what is asked of Keepa: the checkpoints' namespace.

        Interval, weight, name and profit are left out: changing them keeps
        the cursor and watermark; a changed query or domain starts afresh.
        """
        return selection_key(self.query, self.domain)


def price_type(query: Mapping[str, Any]) -> int:
    """The query's one price type (Keepa insists on exactly one)."""
    types = query.get("priceTypes") or [2]
    return int(types[0])


def worker_name(name: str) -> str:
    return UPSERTER if name == DEFAULT_NAME else f"{UPSERTER}:{name}"


def selection_key(query: Mapping[str, Any], domain: int) -> str:
    return hashlib.sha256(canonical_query(query, domain).encode()).hexdigest()[:12]


def resolve(cfg: Config) -> list[Selection]:
    """The config's selections, in file order (validated by ``load_config``)."""
    up = cfg.upserter
    if not cfg.selection:
        default = Selection(
            name=DEFAULT_NAME, domain=cfg.keepa.domain, query=dict(up.selection),
            interval_s=up.interval_s, max_pages_per_run=up.max_pages_per_run,
            weight=1.0, profit=cfg.profit, full_pass_h=up.full_pass_h,
        )  # fmt: skip
        return [default]
    return [
        Selection(
            name=s.name,
            domain=s.domain if s.domain is not None else cfg.keepa.domain,
            query=dict(s.query),
            interval_s=s.interval_s if s.interval_s is not None else up.interval_s,
            max_pages_per_run=(
                s.max_pages_per_run if s.max_pages_per_run is not None else up.max_pages_per_run
            ),
            weight=s.weight,
            profit=s.resolved_profit(cfg.profit),
            full_pass_h=s.full_pass_h if s.full_pass_h is not None else up.full_pass_h,
        )
        for s in cfg.selection
    ]


def funnels(cfg: Config) -> dict[str, FunnelConfig]:
    """Each ``[[selection]]``'s funnel: ``[funnel]`` with its ``[selection.funnel]`` thresholds.

    The backfiller's, not an upserter's: what a selection lists is bought by its
    thresholds (``backfill.BySelection``). Empty for ``[upserter.selection]``:
    its one selection has [funnel]'s.
    """
    return {s.name: s.resolved_funnel(cfg.funnel) for s in cfg.selection}


def token_weights(cfg: Config, selections: Sequence[Selection]) -> dict[str, float]:
    """``[tokens] weights`` with the upserter's weight split between the selections.

    Selection ``s`` becomes its own consumer with weight
    ``w_upserter * w_s / sum(w)``: while every selection and the backfiller
    wait, the selections together get exactly the upserter's share, split by
    their weights, and each has the scheduler's guarantees of a consumer.
    """
    weights = dict(cfg.tokens.weights)
    group = weights.pop(UPSERTER, 1.0)
    total = sum(s.weight for s in selections) or 1.0
    for s in selections:
        weights[s.worker] = group * s.weight / total
    return weights


class Pricing:
    """Which selection's price type and profit settle a deal's estimate.

    A deal matched by several selections on its marketplace is one row with
    one estimate: the first of its selections in config order decides it
    (a deal whose selections are all gone keeps the first configured one of
    its marketplace). The backfiller and the upserters ask the same object,
    so the estimate does not flip with whoever wrote last.
    """

    def __init__(self, selections: Sequence[Selection]) -> None:
        self.set(selections)

    def set(self, selections: Sequence[Selection]) -> None:
        self._order = list(selections)

    def names(self) -> list[str]:
        return [s.name for s in self._order]

    def choose(self, domain: int, matched: Iterable[str]) -> Selection:
        names = set(matched)
        same = [s for s in self._order if s.domain == domain]
        for s in same:
            if s.name in names:
                return s
        return (same or self._order)[0]
