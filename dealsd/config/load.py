"""Loading: a TOML file read into the schema and refused when wrong, and the API key found.

A bad file is refused with one line naming the file, the dotted key and what
is wrong in an operator's words, because the daemon exits 78 (EX_CONFIG) on it
and systemd will not restart it: that line is all the operator gets. msgspec
checks types and ranges against ``dealsd.config.schema``; the checks here are
the ones a type cannot say (one key against another, Keepa's query rules).
The API key never lives in the config file; it is read here from where the
operator put it, and an error about it never echoes its content.
"""

from __future__ import annotations

import importlib.util
import json
import os
import pwd
import re
import stat
import tomllib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import msgspec

from dealsd.config.errors import ConfigError, translate
from dealsd.config.schema import (
    CONSUMERS,
    DEFAULT_SELECTION,
    SELECTION_FUNNEL_KEYS,
    AlertsConfig,
    Config,
    FunnelConfig,
    ProfitConfig,
    default_weights,
    overlay,
)

DEFAULT_CONFIG_PATH = Path("/etc/dealsd/config.toml")
CREDENTIAL_NAME = "keepa_api_key"  # LoadCredential=keepa_api_key:/path in the unit


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


def read_toml(path: Path) -> dict[str, Any]:
    """The file's TOML as read, before any check: what ``check-config``'s notes look at too."""
    return _parse(path, _read_bytes(path))


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
    _check_detail(path, "funnel", f)
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
        _check_overrides(
            path, f"{prefix}.profit", cfg.profit, sel.profit,
            ProfitConfig.__struct_fields__, "unknown [profit] key",
        )  # fmt: skip
        funnel = _check_overrides(
            path, f"{prefix}.funnel", cfg.funnel, sel.funnel, SELECTION_FUNNEL_KEYS,
            f"unknown [selection.funnel] key (a selection sets {', '.join(SELECTION_FUNNEL_KEYS)})",
        )  # fmt: skip
        _check_detail(path, f"{prefix}.funnel", funnel)


S = TypeVar("S", ProfitConfig, FunnelConfig)


def _check_overrides(
    path: Path, key: str, base: S, overrides: Mapping[str, Any], allowed: Iterable[str],
    unknown: str,
) -> S:  # fmt: skip
    """``base`` with a selection's ``overrides`` (table ``key``), each refused by its own key."""
    bad = sorted(set(overrides) - set(allowed))
    if bad:
        raise ConfigError(path, f"{key}.{bad[0]}", unknown)
    try:
        return overlay(base, overrides)
    except msgspec.ValidationError as exc:
        raw = {**msgspec.to_builtins(base), **overrides}
        err = translate(path, exc, raw, type(base))
        raise ConfigError(path, f"{key}.{err.key}" if err.key else key, err.message) from None


def _check_detail(path: Path, key: str, f: FunnelConfig) -> None:
    """A second tier (``key``.detail_min_profit_cents) must ask Keepa for something."""
    if f.detail_min_profit_cents is not None and not (f.detail_offers or f.detail_buybox):
        raise ConfigError(
            path,
            f"{key}.detail_min_profit_cents",
            "the second tier asks for nothing: set funnel.detail_offers or funnel.detail_buybox",
        )


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
    raw = read_toml(p)
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
