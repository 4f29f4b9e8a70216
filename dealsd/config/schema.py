"""The configuration's schema: one frozen Struct per TOML table, with its defaults and ranges.

Every setting has its home here (type, default, range) and in the commented
sample ``config.toml`` at the repository root; ``dealsd.config.load`` reads a
file into these types and ``dealsd.config.errors`` words msgspec's refusals
from them. What a reload (SIGHUP) applies live is decided here too, next to
the tables: a new table is live or not from the day it is added.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Literal, TypeVar

import msgspec
from msgspec import Meta

PositiveInt = Annotated[int, Meta(ge=1)]
PositiveFloat = Annotated[float, Meta(gt=0)]
NonNegativeInt = Annotated[int, Meta(ge=0)]
BatchSize = Annotated[int, Meta(ge=1, le=100)]  # Keepa's /product takes at most 100 ASINs
# Keepa's domain ids: 7 does not exist (docs/keepa.md, "Domains").
Domain = Literal[1, 2, 3, 4, 5, 6, 8, 9, 10, 11, 12]
HttpUrl = Annotated[str, Meta(pattern=r"^https?://[^\s/]+", description="an http(s):// URL")]
NonEmpty = Annotated[str, Meta(min_length=1)]

CONSUMERS = ("upserter", "backfiller")  # who spends tokens


def default_selection() -> dict[str, Any]:
    """Keepa's documented realistic selection: used books on amazon.com, biggest drops first."""
    return {
        "includeCategories": [283155],
        "priceTypes": [2],
        "salesRankRange": [10000, 10000000],
        "currentRange": [2000, 45100],
        "deltaPercentRange": [10, 100],
        "minRating": 10,
        "warehouseConditions": [2, 3, 4, 5],
        "sortType": 4,
        "isRangeEnabled": True,
        "isFilterEnabled": True,
        "singleVariation": True,
    }


def default_weights() -> dict[str, float]:
    return {"upserter": 1.0, "backfiller": 3.0}


class _Table(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Options inherited by every table: immutable, and a typo is an error."""


class KeepaConfig(_Table, frozen=True):
    base_url: HttpUrl = "https://api.keepa.com"
    domain: Domain = 1
    api_key_file: NonEmpty | None = None
    connect_timeout_s: PositiveFloat = 10.0
    read_timeout_s: PositiveFloat = 60.0
    max_attempts: PositiveInt = 5


class DatabaseConfig(_Table, frozen=True):
    path: NonEmpty = "/var/lib/dealsd/deals.db"


class UpserterConfig(_Table, frozen=True):
    interval_s: PositiveInt = 300
    # 10,000 results per query / 150 deals per page.
    max_pages_per_run: Annotated[int, Meta(ge=1, le=67)] = 67
    # Hours between walks of the whole result in the selection's own order
    # (prices of known deals, deals leaving it); between them each round asks
    # the same filters newest first and stops at the watermark. 0: every round
    # walks the whole result (dealsd before the funnel).
    full_pass_h: Annotated[float, Meta(ge=0)] = 6.0
    selection: dict[str, Any] = msgspec.field(default_factory=default_selection)


SelectionName = Annotated[
    str, Meta(pattern=r"^[a-z0-9][a-z0-9_-]{0,31}$", description="a name of a-z, 0-9, _ and -")
]


class SelectionConfig(_Table, frozen=True):
    """One ``[[selection]]``: a Keepa deal query on one marketplace (dealsd.selections)."""

    name: SelectionName
    query: dict[str, Any]
    domain: Domain | None = None  # None: [keepa] domain
    interval_s: PositiveInt | None = None  # None: [upserter] interval_s
    max_pages_per_run: Annotated[int, Meta(ge=1, le=67)] | None = None
    # Hours between walks of its whole result; None: [upserter] full_pass_h.
    # A big, slow-moving query can walk less often than a small, busy one.
    full_pass_h: Annotated[float, Meta(ge=0)] | None = None
    weight: PositiveFloat = 1.0
    # Overrides of [profit] for this selection's deals (another marketplace has
    # other fees, in its own currency); checked against ProfitConfig.
    profit: dict[str, Any] = msgspec.field(default_factory=dict)
    # Overrides of [funnel]'s money thresholds (SELECTION_FUNNEL_KEYS), in this
    # marketplace's smallest unit; checked against FunnelConfig.
    funnel: dict[str, Any] = msgspec.field(default_factory=dict)

    def resolved_profit(self, base: ProfitConfig) -> ProfitConfig:
        return overlay(base, self.profit)

    def resolved_funnel(self, base: FunnelConfig) -> FunnelConfig:
        return overlay(base, self.funnel)


T = TypeVar("T", bound=msgspec.Struct)


def overlay(base: T, overrides: Mapping[str, Any]) -> T:
    """``base`` with ``overrides`` set, checked as ``base``'s table (ValidationError)."""
    return msgspec.convert({**msgspec.to_builtins(base), **overrides}, type(base))


class BackfillerConfig(_Table, frozen=True):
    history: bool = True
    days: NonNegativeInt = 0
    stats: NonNegativeInt = 180
    offers: Annotated[int, Meta(ge=0, le=100)] = 0
    only_live_offers: bool = False
    rating: bool = False
    buybox: bool = False
    update: Annotated[int, Meta(ge=-1)] = -1
    refresh_after_h: PositiveFloat = 24.0
    min_batch: BatchSize = 1
    max_batch: BatchSize = 100
    idle_s: PositiveFloat = 30.0
    max_attempts: PositiveInt = 5
    retry_base_s: PositiveFloat = 300.0


class JanitorConfig(_Table, frozen=True):
    grace_h: PositiveFloat = 72.0
    interval_s: PositiveInt = 600
    chunk: PositiveInt = 500


class TokensConfig(_Table, frozen=True):
    weights: dict[str, PositiveFloat] = msgspec.field(default_factory=default_weights)
    batch_minutes: PositiveFloat = 1.0


# Amazon US root categories that pay the variable closing fee on media:
# Books, CDs & Vinyl (music), Movies & TV (video, DVD), Software, Video Games.
MEDIA_CATEGORIES_US: tuple[int, ...] = (283155, 5174, 2625373, 229534, 468642)


def default_media_categories() -> list[int]:
    return list(MEDIA_CATEGORIES_US)


class ProfitConfig(_Table, frozen=True):
    reference: Literal["used", "new", "buy_box", "used_buy_box", "amazon"] = "used"
    referral_fee_pct: Annotated[float, Meta(ge=0, le=100)] = 15.0
    fba_fee_cents: NonNegativeInt = 0
    extra_cost_cents: NonNegativeInt = 0
    buy_shipping_cents: NonNegativeInt = 0
    prep_cents: NonNegativeInt = 0
    inbound_cents_per_lb: NonNegativeInt = 0
    referral_fee_min_cents: NonNegativeInt = 0
    closing_fee_cents: NonNegativeInt = 180
    closing_fee_categories: list[int] = msgspec.field(default_factory=default_media_categories)


class FunnelConfig(_Table, frozen=True):
    """Which deals are worth tokens: the screen (free, from the deal object) and two tiers."""

    # Deals whose screen is below these are not bought (unset: buy everything).
    min_screen_profit_cents: int | None = None
    min_screen_roi_pct: float | None = None
    # "skip": never bought; "idle": bought only when no other work is pending.
    below_threshold: Literal["skip", "idle"] = "skip"
    # The backfill queue: "screen" (best screen profit first) or "newest" (by
    # Keepa's lastUpdate, the order before the funnel).
    order: Literal["screen", "newest"] = "screen"
    # The second tier: offers / buy box for deals whose full estimate reaches
    # this profit (unset: no second tier).
    detail_min_profit_cents: int | None = None
    detail_offers: Annotated[int, Meta(ge=0, le=100)] = 20
    detail_buybox: bool = True
    # What counts as a profitable deal in `dealsd status` and the journal.
    profitable_min_profit_cents: int = 300
    profitable_min_roi_pct: float = 30.0


# What a [selection.funnel] may set: the thresholds that decide what is bought.
# The rest of [funnel] (order, the second tier's parameters, what status calls
# profitable) is one for all selections.
SELECTION_FUNNEL_KEYS = ("min_screen_profit_cents", "min_screen_roi_pct", "detail_min_profit_cents")


Percent = Annotated[float, Meta(ge=0, le=100)]
ALERT_CHANNELS_CREDENTIAL = "alert_channels"  # LoadCredential=alert_channels:/path
DEFAULT_SELECTION = "default"  # the one selection of [upserter] selection


class AlertRuleConfig(_Table, frozen=True):
    """One ``[[alerts.rule]]``: a deal matches when every threshold given passes."""

    name: NonEmpty
    # Channel names from the channels file; empty = every channel.
    channels: list[NonEmpty] = msgspec.field(default_factory=list)
    min_profit_cents: int | None = None
    min_roi_pct: float | None = None
    min_margin_pct: float | None = None
    max_sales_rank: PositiveInt | None = None
    min_monthly_sold: NonNegativeInt | None = None
    min_rank_drops_30: NonNegativeInt | None = None
    max_buy_cents: PositiveInt | None = None
    categories: list[int] = msgspec.field(default_factory=list)
    selections: list[NonEmpty] = msgspec.field(default_factory=list)


class AlertsConfig(_Table, frozen=True):
    # Apprise URLs carry secrets: they live in this file (one `name = url` a
    # line) or the systemd credential alert_channels, never in config.toml.
    channels_file: NonEmpty | None = None
    max_per_minute: PositiveInt = 10
    realert_drop_pct: Annotated[float, Meta(gt=0, le=100)] = 10.0
    poll_s: PositiveFloat = 5.0
    retry_base_s: PositiveFloat = 30.0
    retry_max_s: PositiveFloat = 900.0
    rule: list[AlertRuleConfig] = msgspec.field(default_factory=list)


class LogConfig(_Table, frozen=True):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["auto", "journal", "console", "json"] = "auto"


class Config(_Table, frozen=True):
    keepa: KeepaConfig = msgspec.field(default_factory=KeepaConfig)
    database: DatabaseConfig = msgspec.field(default_factory=DatabaseConfig)
    upserter: UpserterConfig = msgspec.field(default_factory=UpserterConfig)
    backfiller: BackfillerConfig = msgspec.field(default_factory=BackfillerConfig)
    janitor: JanitorConfig = msgspec.field(default_factory=JanitorConfig)
    tokens: TokensConfig = msgspec.field(default_factory=TokensConfig)
    profit: ProfitConfig = msgspec.field(default_factory=ProfitConfig)
    funnel: FunnelConfig = msgspec.field(default_factory=FunnelConfig)
    alerts: AlertsConfig = msgspec.field(default_factory=AlertsConfig)
    log: LogConfig = msgspec.field(default_factory=LogConfig)
    # [[selection]] tables; none: [upserter.selection] is the one selection "default".
    selection: list[SelectionConfig] = msgspec.field(default_factory=list)


# -- SIGHUP -------------------------------------------------------------------

# What a reload applies live (dotted prefixes). [keepa] and [database] shape the
# HTTP session and the open database; log.format the installed handler: they
# wait for a restart.
LIVE_KEYS: frozenset[str] = frozenset(
    {
        "upserter", "selection", "backfiller", "janitor", "tokens", "profit", "funnel",
        "alerts", "log.level",
    }
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class Change:
    key: str
    old: Any
    new: Any


def _flatten(value: Any, prefix: str, out: dict[str, Any]) -> dict[str, Any]:
    if isinstance(value, dict):
        for k, v in value.items():
            _flatten(v, f"{prefix}.{k}" if prefix else str(k), out)
    else:
        out[prefix] = value
    return out


def _is_live(key: str) -> bool:
    return any(key == p or key.startswith(p + ".") for p in LIVE_KEYS)


def diff_live(old: Config, new: Config) -> tuple[list[Change], list[str]]:
    """(changes a reload applies, keys that changed but need a restart)."""
    a = _flatten(msgspec.to_builtins(old), "", {})
    b = _flatten(msgspec.to_builtins(new), "", {})
    live: list[Change] = []
    restart: list[str] = []
    for key in [*a, *(k for k in b if k not in a)]:
        before, after = a.get(key), b.get(key)
        if before == after and (key in a) == (key in b):
            continue
        if _is_live(key):
            live.append(Change(key, before, after))
        else:
            restart.append(key)
    return live, restart
