"""Command line: `dealsd run | status | deals | web | check-config | demo | simulator`.

Nothing imports this module; it only parses arguments, loads the config and
hands over to the part that does the work. A bad config exits 78 (EX_CONFIG,
which the systemd unit lists in RestartPreventExitStatus: restarting cannot
fix a typo) with the file, the key and what is wrong.
"""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path

from dealsd.exits import EX_CONFIG, EXIT_NO_DATABASE


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="dealsd", description="Keeps a SQLite database of Amazon deals fed from Keepa."
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run = sub.add_parser("run", help="run the daemon in the foreground")
    run.add_argument(
        "--config", help="config file (default: $DEALSD_CONFIG, then /etc/dealsd/config.toml)"
    )
    st = sub.add_parser("status", help="show what the daemon is doing (exit 0 healthy)")
    st.add_argument("--config", help="config file naming the database")
    st.add_argument("--database", help="read this database directly instead")
    st.add_argument("--json", action="store_true", help="machine-readable output")
    # Listed for --help only: `dealsd deals` has its own parser (dealsd.deals),
    # so no other command imports it.
    sub.add_parser("deals", help="the best deals now (table, --csv or --json)")
    web = sub.add_parser("web", help="browse the database in Datasette (needs dealsd[web])")
    web.add_argument("--config", help="config file naming the database")
    web.add_argument("--database", help="serve this database directly instead")
    web.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    web.add_argument("--port", type=int, default=8001, help="port (default 8001)")
    cc = sub.add_parser("check-config", help="validate the config file (exit 78 if invalid)")
    cc.add_argument("--config")
    demo = sub.add_parser("demo", help="run dealsd against the built-in Keepa simulator")
    demo.add_argument("--seconds", type=float, default=30.0, help="how long to run (default 30)")
    al = sub.add_parser("alerts", help="test the alert channels, list what was sent")
    al_sub = al.add_subparsers(dest="alerts_command", required=True, metavar="ACTION")
    al_test = al_sub.add_parser("test", help="send a test message to each channel")
    al_test.add_argument("--config")
    al_test.add_argument("--rule", help="only the channels of this rule")
    al_list = al_sub.add_parser("list", help="alerts queued and sent lately")
    al_list.add_argument("--config", help="config file naming the database")
    al_list.add_argument("--database", help="read this database directly instead")
    al_list.add_argument("--limit", type=int, default=30)
    # Listed for --help only: its arguments belong to the simulator's own parser.
    sub.add_parser("simulator", help="serve the local Keepa simulator (see: dealsd simulator -h)")
    return p


def _config_error(exc: Exception, *, command: str = "dealsd", code: int = EX_CONFIG) -> int:
    # Said before logging is configured: early_line gives the journal its <3>.
    from dealsd.journal import early_line

    early_line(f"{command}: config error: {exc}")
    return code


def _run(config_arg: str | None) -> int:
    # A SIGTERM during start-up (imports, migrations) must still mean "stop
    # cleanly, exit 0", not death by the default disposition: record it here,
    # before the slow imports; run_daemon starts with it set and stops at once.
    # Even before asyncio, imported here rather than at the top because
    # `dealsd deals` and `status` never need it (a third of their start-up).
    early: list[int] = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, _frame: early.append(signum))
    import asyncio

    stop = asyncio.Event()

    def _early_stop(signum: int, _frame: object) -> None:
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _early_stop)
    if early:
        stop.set()

    from dealsd.alerts.channels import load_channels
    from dealsd.clock import SystemClock
    from dealsd.config import ConfigError, load_api_key, load_config, resolve_config_path
    from dealsd.daemon import run_daemon
    from dealsd.logs import configure_logging
    from dealsd.notify import Notifier

    try:
        path = resolve_config_path(config_arg)
        cfg = load_config(path)
        api_key = load_api_key(cfg)
        channels = load_channels(cfg.alerts)
    except ConfigError as exc:
        return _config_error(exc)
    configure_logging(cfg.log.level, cfg.log.format)
    alert_sender = None
    if channels:
        from dealsd.alerts.channels import Sender

        alert_sender = Sender(channels)
    notifier = Notifier.from_env()
    try:
        return asyncio.run(
            run_daemon(
                cfg,
                api_key=api_key,
                clock=SystemClock(),
                notifier=notifier,
                config_path=path,
                key_loader=load_api_key,
                stop=stop,
                alert_channels=alert_sender,
            )
        )
    finally:
        notifier.close()


def _status(args: argparse.Namespace) -> int:
    from dealsd.status import run_status

    db = _database("status", args)
    return db if isinstance(db, int) else run_status(db, as_json=args.json)


def _database(command: str, args: argparse.Namespace) -> Path | int:
    """The database named by --database or the config; an unreadable config exits 2."""
    if args.database is not None:
        return Path(args.database)
    from dealsd.config import ConfigError, load_config, resolve_config_path

    try:
        cfg = load_config(resolve_config_path(args.config))
    except ConfigError as exc:
        return _config_error(exc, command=f"dealsd {command}", code=EXIT_NO_DATABASE)
    return Path(cfg.database.path)


def _deals(args: argparse.Namespace) -> int:
    from dealsd.deals import Filters, Output, run_deals

    db = _database("deals", args)
    if isinstance(db, int):
        return db
    filters = Filters(
        min_profit=args.min_profit,
        min_roi_pct=args.min_roi,
        max_sales_rank=args.max_rank,
        categories=tuple(args.category),
        selection=args.selection,
        sort=args.sort,
        limit=args.limit,
    )
    output: Output = "csv" if args.csv else "json" if args.json else "table"
    return run_deals(db, filters, output=output)


def _web(args: argparse.Namespace) -> int:
    from dealsd.web import run_web

    db = _database("web", args)
    return db if isinstance(db, int) else run_web(db, host=args.host, port=args.port)


def _alerts(args: argparse.Namespace) -> int:
    from dealsd.alerts.commands import run_list, run_test

    if args.alerts_command == "list":
        db = _database("alerts list", args)
        return db if isinstance(db, int) else run_list(db, limit=args.limit)
    from dealsd.config import ConfigError, load_config, resolve_config_path

    try:
        return run_test(load_config(resolve_config_path(args.config)), rule=args.rule)
    except ConfigError as exc:
        return _config_error(exc)


def _check_config(config_arg: str | None) -> int:
    from dealsd.config import ConfigError, check_config, resolve_config_path

    try:
        path = resolve_config_path(config_arg)
    except ConfigError as exc:
        return _config_error(exc)
    return check_config(path)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["simulator"]:
        from dealsd.simulator import main as simulator_main

        return simulator_main(argv[1:])
    if argv[:1] == ["deals"]:
        from dealsd.deals import parse_args

        return _deals(parse_args(argv[1:]))
    args = _parser().parse_args(argv)
    if args.command == "run":
        return _run(args.config)
    if args.command == "status":
        return _status(args)
    if args.command == "web":
        return _web(args)
    if args.command == "check-config":
        return _check_config(args.config)
    if args.command == "alerts":
        return _alerts(args)
    if args.command == "demo":
        from dealsd.demo import run_demo

        return run_demo(seconds=args.seconds)
    raise AssertionError(args.command)  # argparse refuses unknown commands first
