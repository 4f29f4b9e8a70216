"""The configuration: one TOML file, one frozen Struct per table, refused when wrong.

Every setting has its home here (schema, default, range) and in the commented
sample ``config.toml`` at the repository root. A bad file is refused with one
line naming the file, the dotted key and what is wrong in an operator's words,
because the daemon exits 78 (EX_CONFIG) on it and systemd will not restart it:
that line is all the operator gets. The API key never lives in this file.
"""

from __future__ import annotations

import importlib.util
import json
import os
import pwd
import re
import stat
import sys
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Annotated, Any, Literal

import msgspec
from msgspec import Meta

# The errors live in their own module; ConfigError is imported from here too.
from dealsd.config.errors import ConfigError as ConfigError
from dealsd.config.errors import translate as translate
from dealsd.exits import EX_CONFIG as EX_CONFIG
from dealsd.exits import EX_OK
from dealsd.journal import early_line

DEFAULT_CONFIG_PATH = Path("/etc/dealsd/config.toml")
CREDENTIAL_NAME = "keepa_api_key"  # LoadCredential=keepa_api_key:/path in the unit

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
    weight: PositiveFloat = 1.0
    # Overrides of [profit] for this selection's deals (another marketplace has
    # other fees, in its own currency); checked against ProfitConfig.
    profit: dict[str, Any] = msgspec.field(default_factory=dict)

    def resolved_profit(self, base: ProfitConfig) -> ProfitConfig:
        return msgspec.convert({**msgspec.to_builtins(base), **self.profit}, ProfitConfig)


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


# -- loading ------------------------------------------------------------------


def resolve_config_path(arg: str | None, env: Mapping[str, str] = os.environ) -> Path:
    """``--config``, then ``$DEALSD_CONFIG``, then /etc/dealsd/config.toml."""
    if arg is not None:
        if not arg.strip():
            raise ConfigError("--config", None, "empty path")
        return Path(arg)
    from_env = env.get("DEALSD_CONFIG", "").strip()
    return Path(from_env) if from_env else DEFAULT_CONFIG_PATH


def _read_bytes(path: Path, what: str = "config file") -> bytes:
    # stat first: opening a FIFO would block the daemon until something writes it.
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise ConfigError(path, None, f"no such {what}") from None
    except OSError as exc:
        raise ConfigError(path, None, f"cannot read the {what}: {exc.strerror}") from None
    if stat.S_ISDIR(st.st_mode):
        raise ConfigError(path, None, f"is a directory, not a {what}")
    if not stat.S_ISREG(st.st_mode):
        raise ConfigError(path, None, f"not a regular file (expected a {what})")
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ConfigError(path, None, f"cannot read the {what}: {exc.strerror}") from None


def _parse(path: Path, data: bytes) -> dict[str, Any]:
    if not data.strip():
        raise ConfigError(path, None, "empty config file")
    try:
        # utf-8-sig: a byte-order mark left by a Windows editor is harmless.
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        bad = data[exc.start]
        raise ConfigError(
            path, None, f"not UTF-8 text (byte 0x{bad:02x} on line {line}); save it as UTF-8"
        ) from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(path, None, f"invalid TOML: {exc}") from None


def _reject_api_key(path: Path, raw: Mapping[str, Any]) -> None:
    for table, entries in (("", raw), ("keepa.", raw.get("keepa"))):
        if not isinstance(entries, Mapping):
            continue
        for name in ("api_key", "key"):
            if name in entries:
                raise ConfigError(
                    path,
                    f"{table}{name}",
                    "the API key does not belong in config.toml: put it in a file named "
                    "by [keepa] api_key_file, a systemd credential "
                    f"(LoadCredential={CREDENTIAL_NAME}:...) or $KEEPA_API_KEY",
                )


def _check_selection(
    path: Path, sel: Mapping[str, Any], prefix: str = "upserter.selection"
) -> None:
    for name, value in sel.items():
        key = f"{prefix}.{name}"
        if name in ("page", "domainId"):
            hint = "[keepa] domain" if name == "domainId" else "the upserter while paging"
            raise ConfigError(path, key, f"dealsd sets {name} itself (from {hint}); remove it")
        if not re.fullmatch(r"[a-z][A-Za-z0-9]*", name):
            camel = re.sub(r"_([a-z0-9])", lambda m: m.group(1).upper(), name.lower())
            raise ConfigError(
                path, key, f"Keepa's selection keys are camelCase (did you mean {camel}?)"
            )
        bad = _not_json(value)
        if bad is not None:
            raise ConfigError(path, key, f"{bad} cannot be sent to Keepa (JSON has no such type)")
    types = sel.get("priceTypes")
    if types is None:
        raise ConfigError(
            path, f"{prefix}.priceTypes", "missing: Keepa needs exactly one price type"
        )
    if (
        not isinstance(types, list)
        or len(types) != 1
        or isinstance(types[0], bool)
        or not isinstance(types[0], int)
        or not 0 <= types[0] <= 35
    ):
        raise ConfigError(
            path,
            f"{prefix}.priceTypes",
            f"expected a list of exactly one price type (0..35, e.g. [2] for used), got {types!r}",
        )


def _not_json(value: Any) -> str | None:
    """The TOML type a JSON body cannot carry (dates and times), if any."""
    if isinstance(value, dict):
        return next((b for v in value.values() if (b := _not_json(v))), None)
    if isinstance(value, list):
        return next((b for v in value if (b := _not_json(v))), None)
    if isinstance(value, str | int | float | bool):
        return None
    return f"a TOML {type(value).__name__}"


def _check(path: Path, cfg: Config) -> Config:
    b = cfg.backfiller
    if 0 < b.offers < 20:
        raise ConfigError(
            path, "backfiller.offers", f"expected 0 (no offers) or 20..100, got {b.offers}"
        )
    f = cfg.funnel
    if 0 < f.detail_offers < 20:
        raise ConfigError(
            path,
            "funnel.detail_offers",
            f"expected 0 (no offers) or 20..100, got {f.detail_offers}",
        )
    if f.detail_min_profit_cents is not None and not (f.detail_offers or f.detail_buybox):
        raise ConfigError(
            path,
            "funnel.detail_min_profit_cents",
            "the second tier asks for nothing: set funnel.detail_offers or funnel.detail_buybox",
        )
    if b.min_batch > b.max_batch:
        raise ConfigError(
            path,
            "backfiller.min_batch",
            f"must not exceed backfiller.max_batch ({b.max_batch}), got {b.min_batch}",
        )
    _check_selection(path, cfg.upserter.selection)
    _check_selections(path, cfg)
    for name in cfg.tokens.weights:
        if name not in CONSUMERS:
            raise ConfigError(
                path, f"tokens.weights.{name}", "unknown consumer (expected upserter or backfiller)"
            )
    _check_alerts(path, cfg.alerts, [s.name for s in cfg.selection] or [DEFAULT_SELECTION])
    # A consumer left out keeps its default share rather than a share of zero.
    weights = {**default_weights(), **cfg.tokens.weights}
    return msgspec.structs.replace(cfg, tokens=msgspec.structs.replace(cfg.tokens, weights=weights))


def _check_selections(path: Path, cfg: Config) -> None:
    seen: dict[str, str] = {}
    for i, sel in enumerate(cfg.selection):
        prefix = f"selection[{i}]"
        if sel.name in seen:
            raise ConfigError(path, f"{prefix}.name", "two [[selection]] tables have this name")
        _check_selection(path, sel.query, f"{prefix}.query")
        # The same query on the same marketplace twice would page Keepa twice
        # for the same deals and share one cursor.
        same = canonical_query(sel.query, sel.domain or cfg.keepa.domain)
        twin = next((n for n, q in seen.items() if q == same), None)
        if twin is not None:
            raise ConfigError(
                path, f"{prefix}.query", f"the same query on the same domain as selection {twin!r}"
            )
        seen[sel.name] = same
        unknown = sorted(set(sel.profit) - set(ProfitConfig.__struct_fields__))
        if unknown:
            raise ConfigError(path, f"{prefix}.profit.{unknown[0]}", "unknown [profit] key")
        try:
            sel.resolved_profit(cfg.profit)
        except msgspec.ValidationError as exc:
            raise ConfigError(path, f"{prefix}.profit", str(exc)) from None


def canonical_query(query: Mapping[str, Any], domain: int) -> str:
    """A selection's query and domain as one comparable text (sorted keys)."""
    return json.dumps({"domain": domain, "selection": query}, sort_keys=True)


def _check_alerts(path: Path, alerts: AlertsConfig, selections: list[str]) -> None:
    seen: set[str] = set()
    for i, rule in enumerate(alerts.rule):
        key = f"alerts.rule[{i}]"
        if rule.name in seen:
            raise ConfigError(path, f"{key}.name", f"another rule is named {rule.name!r}")
        seen.add(rule.name)
        for sel in rule.selections:
            if sel not in selections:
                raise ConfigError(
                    path,
                    f"{key}.selections",
                    f"unknown selection {sel!r} (the selections are {', '.join(selections)})",
                )
    # Found, not imported: importing Apprise (200 ms, every plugin) is for
    # the sender, not for every load of the config (status, each reload).
    if alerts.rule and importlib.util.find_spec("apprise") is None:
        raise ConfigError(
            path,
            "alerts.rule",
            "alert rules need the alerts extra: pip install 'dealsd[alerts]' (Apprise)",
        )


def load_config(path: str | os.PathLike[str]) -> Config:
    """Read, parse and validate the config file; ``ConfigError`` says what is wrong."""
    p = Path(path)
    raw = _parse(p, _read_bytes(p))
    _reject_api_key(p, raw)
    upserter = raw.get("upserter")
    if raw.get("selection") and isinstance(upserter, Mapping) and "selection" in upserter:
        raise ConfigError(
            p,
            "upserter.selection",
            "both [upserter.selection] and [[selection]] tables: move it into a "
            '[[selection]] (name = "default", its keys under [selection.query])',
        )
    try:
        cfg = msgspec.convert(raw, Config)
    except msgspec.ValidationError as exc:
        raise translate(p, exc, raw, Config) from None
    return _check(p, cfg)


class NoApiKey(ConfigError):
    """No API key in any of the three places this process can see."""


def load_api_key(cfg: Config, env: Mapping[str, str] = os.environ) -> str:
    """The Keepa key: systemd credential, then [keepa] api_key_file, then $KEEPA_API_KEY."""
    return find_api_key(cfg, env)[0]


def find_api_key(cfg: Config, env: Mapping[str, str] = os.environ) -> tuple[str, str]:
    """The Keepa key, and where it came from in words (never the key itself).

    A file that is named but unusable (missing, not a regular file, not
    readable by this process, empty) is an error, not a reason to look
    further: the operator meant that file.
    """
    cred_dir = env.get("CREDENTIALS_DIRECTORY", "").strip()
    if cred_dir and _present(path := Path(cred_dir) / CREDENTIAL_NAME):
        return _key_file(path, "keepa.api_key"), f"{path}, read as {reader()}"
    if cfg.keepa.api_key_file is not None:
        path = Path(cfg.keepa.api_key_file)
        return _key_file(path, "keepa.api_key_file"), f"{path}, read as {reader()}"
    key = env.get("KEEPA_API_KEY", "").strip()
    if key:
        return key, "$KEEPA_API_KEY"
    raise NoApiKey(
        "config",
        "keepa.api_key",
        "no API key: set a systemd credential ($CREDENTIALS_DIRECTORY/"
        f"{CREDENTIAL_NAME}), [keepa] api_key_file, or $KEEPA_API_KEY",
    )


def _present(path: Path) -> bool:
    try:
        return path.exists()
    except OSError:
        # EACCES: there may well be a credential, only not for this user
        # (systemd 252 refuses a unit's control processes its directory). Say
        # so as an error naming it, not a traceback or a silent fall-through.
        return True


def reader() -> str:
    """Who this process reads files as: what "not readable" depends on."""
    uid = os.geteuid()
    try:
        return f"user {pwd.getpwuid(uid).pw_name} (uid {uid})"
    except KeyError:  # a DynamicUser= or container uid without a passwd entry
        return f"uid {uid}"


def _key_file(path: Path, key: str) -> str:
    try:
        data = _read_bytes(path, "API key file")
    except ConfigError as exc:
        raise ConfigError(path, key, f"{exc.message} (read as {reader()})") from None
    try:
        text = data.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise ConfigError(path, key, "API key file is not text") from None
    if not text:
        raise ConfigError(path, key, "API key file is empty")
    if any(c.isspace() for c in text):
        # Never echo the content: it is (most of) a secret.
        raise ConfigError(path, key, "API key file holds more than one word")
    return text


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


# `[profit] reference` values whose Keepa data only buybox=1 or offers fetch.
BUY_BOX_REFERENCES = frozenset({"buy_box", "used_buy_box"})


def config_warnings(cfg: Config) -> list[str]:
    """What a valid config asks for that its own parameters will never fetch."""
    warnings = []
    full, grace = cfg.upserter.full_pass_h, cfg.janitor.grace_h
    if 0 < full and grace <= full:
        # Between full passes a listed deal is seen again only by a full pass.
        warnings.append(
            f"upserter.full_pass_h: {full:g} h is not shorter than janitor.grace_h "
            f"({grace:g} h): deals still listed are pruned between two full passes "
            "(set full_pass_h below grace_h, e.g. 6 for the 72 h default)"
        )
    b = cfg.backfiller
    if cfg.profit.reference in BUY_BOX_REFERENCES and not (b.buybox or b.offers):
        warnings.append(
            f'profit.reference: "{cfg.profit.reference}" needs buy box data, which '
            "backfiller.buybox = false and backfiller.offers = 0 never fetch: every "
            "expected_sale_cents and profit column stays NULL (set backfiller.buybox = true, "
            "+2 tokens a product)"
        )
    return warnings


def migration_note(cfg: Config, raw: Mapping[str, Any]) -> str | None:
    """How a file written with [upserter.selection] moves to [[selection]] tables."""
    upserter = raw.get("upserter")
    if cfg.selection or not (isinstance(upserter, Mapping) and "selection" in upserter):
        return None
    return (
        'upserter.selection: read as one [[selection]] named "default" on [keepa] domain '
        f"{cfg.keepa.domain}; to watch several queries or marketplaces with this key, "
        'replace [upserter.selection] by [[selection]] tables: name = "default" and its keys '
        "under [selection.query] keep this one's checkpoints, and each further [[selection]] "
        "has its own name, domain, query, interval_s, weight and [selection.profit] "
        "(config.toml shows one)"
    )


def _check_channels(cfg: Config, err: IO[str], env: Mapping[str, str]) -> None:
    """The alert channels, where this process can see them (as for the key)."""
    if not cfg.alerts.rule:
        return
    # Imported here: the alerts read this module's types.
    from dealsd.alerts.channels import NoChannels, load_channels

    try:
        channels = load_channels(cfg.alerts, env)
    except NoChannels:
        early_line(
            "dealsd: warning: alert rules but no channels file visible here, so the "
            "channels could not be checked; under systemd a drop-in hands them over with "
            f"LoadCredential={ALERT_CHANNELS_CREDENTIAL}:/etc/dealsd/{ALERT_CHANNELS_CREDENTIAL}",
            level="warning",
            stream=err,
            env=env,
        )
        return
    names = ", ".join(c.name for c in channels)
    early_line(f"dealsd: alert channels: {names}", level="info", stream=err, env=env)


def check_config(
    path: str | os.PathLike[str],
    *,
    out: IO[str] | None = None,
    err: IO[str] | None = None,
    env: Mapping[str, str] = os.environ,
) -> int:
    """``dealsd check-config``: the file and the API key as this process sees them.

    0 and "config OK: <path>" on stdout, where the key was found (and read as
    whom, never the key itself) on stderr, as ``nginx -t`` says it; 78 and the
    error when the file is wrong or the key it would use is unusable. No key
    visible at all is only a warning: under systemd the key arrives as a
    credential only the service sees, and ExecReload runs this as root
    without it. A config that is valid but will not do what it seems to
    (``config_warnings``) is a warning too.
    """
    err = err or sys.stderr
    try:
        cfg = load_config(path)
        _check_channels(cfg, err, env)
        _key, where = find_api_key(cfg, env)
    except NoApiKey:
        early_line(
            "dealsd: warning: no API key visible here (no $CREDENTIALS_DIRECTORY/"
            f"{CREDENTIAL_NAME}, no [keepa] api_key_file, no $KEEPA_API_KEY), so it could "
            "not be checked from here; under systemd the unit hands it over with "
            f"LoadCredential={CREDENTIAL_NAME}:/etc/dealsd/{CREDENTIAL_NAME}",
            level="warning",
            stream=err,
            env=env,
        )
    except ConfigError as exc:
        early_line(f"dealsd: config error: {exc}", stream=err, env=env)
        return EX_CONFIG
    else:
        early_line(f"dealsd: API key: {where}", level="info", stream=err, env=env)
    for warning in config_warnings(cfg):
        early_line(f"dealsd: warning: {path}: {warning}", level="warning", stream=err, env=env)
    p = Path(path)
    note = migration_note(cfg, _parse(p, _read_bytes(p)))
    if note is not None:
        early_line(f"dealsd: note: {path}: {note}", level="info", stream=err, env=env)
    print(f"config OK: {path}", file=out or sys.stdout)
    return EX_OK
