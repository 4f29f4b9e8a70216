"""``dealsd check-config``: a valid file checked further, as this process sees it.

Beyond loading it (``dealsd.config.load``), the check looks where the daemon
will look: the API key and the alert channels, which under systemd arrive as
credentials only the service sees, so not finding them here is a warning, not
an error. A config that is valid but will not do what it seems to, and one
written for an older layout, get a line each too.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any

from dealsd.config.errors import ConfigError
from dealsd.config.load import CREDENTIAL_NAME, NoApiKey, find_api_key, load_config, read_toml
from dealsd.config.schema import ALERT_CHANNELS_CREDENTIAL, Config
from dealsd.exits import EX_CONFIG, EX_OK
from dealsd.journal import early_line
from dealsd.marketplaces import currency, show

# `[profit] reference` values whose Keepa data only buybox=1 or offers fetch.
BUY_BOX_REFERENCES = frozenset({"buy_box", "used_buy_box"})
# The [funnel] thresholds that are money (in each marketplace's smallest unit).
MONEY_THRESHOLDS = ("min_screen_profit_cents", "detail_min_profit_cents")


def config_warnings(cfg: Config) -> list[str]:
    """What a valid config asks for that its own parameters will never fetch."""
    warnings = []
    grace = cfg.janitor.grace_h
    passes = {
        f"selection[{i}].full_pass_h": s.full_pass_h
        for i, s in enumerate(cfg.selection)
        if s.full_pass_h is not None
    }
    # [upserter]'s pace is that of [upserter.selection] and of every selection
    # without its own.
    if not cfg.selection or len(passes) < len(cfg.selection):
        passes = {"upserter.full_pass_h": cfg.upserter.full_pass_h, **passes}
    for key, full in passes.items():
        if 0 < full and grace <= full:
            # Between full passes a listed deal is seen again only by a full pass.
            warnings.append(
                f"{key}: {full:g} h is not shorter than janitor.grace_h "
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
    warnings += _funnel_currency_warnings(cfg)
    return warnings


def _funnel_currency_warnings(cfg: Config) -> list[str]:
    """[funnel] money thresholds a selection of another currency reads in its own unit."""
    given = {k: v for k in MONEY_THRESHOLDS if (v := getattr(cfg.funnel, k)) is not None}
    home = cfg.keepa.domain
    domains = [s.domain if s.domain is not None else home for s in cfg.selection]
    if not given or len({currency(d) for d in domains}) < 2:
        return []
    base = currency(home)
    warnings = []
    for i, (sel, domain) in enumerate(zip(cfg.selection, domains, strict=True)):
        cur = currency(domain)
        missing = [k for k in given if k not in sel.funnel]
        if cur == base or not missing:
            continue
        amounts = ", ".join(
            f"{k} = {given[k]} is {show(given[k], cur)} there, not {show(given[k], base)}"
            for k in missing
        )
        warnings.append(
            f'selection[{i}].funnel: selection "{sel.name}" is on domain {domain} ({cur}), '
            f"[keepa] domain {home} is {base}, and [funnel]'s thresholds are in each "
            f"marketplace's smallest unit: {amounts} (set {' and '.join(missing)} in its "
            f"[selection.funnel], in {cur})"
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
        "has its own name, domain, query, interval_s, weight, [selection.profit] and "
        "[selection.funnel] (config.toml shows them)"
    )


def _check_channels(cfg: Config, err: IO[str], env: Mapping[str, str]) -> None:
    """The alert channels, where this process can see them (as for the key)."""
    if not cfg.alerts.rule:
        return
    # Imported here: the alerts import dealsd.config's types (an import cycle).
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
    note = migration_note(cfg, read_toml(Path(path)))
    if note is not None:
        early_line(f"dealsd: note: {path}: {note}", level="info", stream=err, env=env)
    print(f"config OK: {path}", file=out or sys.stdout)
    return EX_OK
