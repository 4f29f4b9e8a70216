"""`python -m dealsd.simulator` / `dealsd simulator`: the simulator as a process.

Prints its base URL as the first line of stdout (so a parent can read it),
then serves until SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys

import structlog

from dealsd.simulator.options import Faults, SimOptions
from dealsd.simulator.server import Simulator


def _plan_change(text: str) -> tuple[float, int]:
    try:
        at, rate = text.split(":", 1)
        return float(at), int(rate)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected SECONDS:RATE, got {text!r}") from None


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dealsd simulator", description="Serve a local Keepa API.")
    a = p.add_argument
    a("--host", default="127.0.0.1")
    a("--port", type=int, default=0, help="0 picks a free port (default)")
    a("--refill-rate", type=int, default=20, help="tokens per period (default 20)")
    a("--period", type=float, default=60.0, help="seconds per Keepa minute (default 60)")
    a("--initial", type=int, default=None, help="initial balance (default: the cap)")
    a("--catalogue", type=int, default=2000, help="deals in the catalogue")
    a("--seed", type=int, default=1)
    a("--new-deals", type=int, default=5, help="new deals per period")
    a("--changed-deals", type=int, default=20, help="changed deals per period")
    a("--latency", type=float, default=0.0, help="seconds added to every answer")
    a("--error-rate", type=float, default=0.0, help="fraction answered 500/502/503")
    a("--hang-rate", type=float, default=0.0)
    a("--hang-s", type=float, default=30.0)
    a("--reset-rate", type=float, default=0.0)
    a("--truncated-rate", type=float, default=0.0)
    a("--non-json-rate", type=float, default=0.0)
    a("--bad-items-rate", type=float, default=0.0)
    a("--plan-change", type=_plan_change, action="append", default=[], metavar="SECONDS:RATE")
    a("--other-consumer", type=int, default=0, help="tokens another user spends per period")
    a("--api-key", action="append", default=None, help="accepted key (repeat); default: any")
    a("--missing-rate", type=float, default=0.02)
    a("--invalid-rate", type=float, default=0.01)
    return p


def options_from_args(args: argparse.Namespace) -> SimOptions:
    return SimOptions(
        refill_rate=args.refill_rate,
        refill_period_s=args.period,
        initial_tokens=args.initial,
        catalogue_size=args.catalogue,
        seed=args.seed,
        new_deals_per_period=args.new_deals,
        changed_deals_per_period=args.changed_deals,
        latency_s=args.latency,
        faults=Faults(
            error_5xx=args.error_rate,
            hang=args.hang_rate,
            hang_s=args.hang_s,
            reset=args.reset_rate,
            truncated=args.truncated_rate,
            non_json=args.non_json_rate,
            bad_items=args.bad_items_rate,
        ),
        plan_changes=list(args.plan_change),
        other_consumer_per_period=args.other_consumer,
        api_keys=frozenset(args.api_key) if args.api_key else None,
        missing_rate=args.missing_rate,
        invalid_rate=args.invalid_rate,
    )


async def _serve(options: SimOptions, host: str, port: int) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    sim = Simulator(options)
    url = await sim.start(host, port)
    print(url, flush=True)
    try:
        await stop.wait()
    finally:
        await sim.stop()
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if not structlog.is_configured():
        # stdout carries the URL line a parent process reads; logs go to stderr.
        structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))
    try:
        return asyncio.run(_serve(options_from_args(args), args.host, args.port))
    except OSError as exc:  # the port is taken, the host does not resolve
        print(f"dealsd simulator: {exc}", file=sys.stderr)
        return 1
