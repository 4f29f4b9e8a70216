"""`dealsd demo`: the real daemon against the built-in Keepa simulator.

Nothing is faked beyond Keepa itself: the simulator serves HTTP on a free
loopback port with an accelerated refill (a Keepa "minute" lasts one second),
and the daemon is the same ``run_daemon`` that systemd runs, with a real
config file, lock, SQLite database, token scheduler and workers. Progress is
printed while it runs; the database is kept so it can be inspected after.
"""

from __future__ import annotations

import asyncio
import shutil
import sqlite3
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, TextIO

from dealsd.clock import SystemClock
from dealsd.config import load_config
from dealsd.daemon import run_daemon
from dealsd.deals import Filters, run_deals
from dealsd.notify import Notifier
from dealsd.simulator import SimOptions, Simulator
from dealsd.store import liveness

# One Keepa minute per second at 20 tokens/minute, starting from a small
# balance: the first fill is quick and the backfill then visibly runs at the
# pace of the refill, as it would on a real plan (only 60 times faster).
DEMO_PERIOD_S = 1.0
DEMO_REFILL = 20
DEMO_INITIAL_TOKENS = 100
DEMO_CATALOGUE = 3000
TOP_DEALS = 10

CONFIG_TEMPLATE = """\
# Written by `dealsd demo`: the daemon against the local simulator.
[keepa]
base_url = "{base_url}"

[database]
path = "{db}"

[upserter]
interval_s = 5

[upserter.selection]
# New offers bought new, resold at the new 90-day average: like with like.
# (The simulator's products are built from the real samples, which have no
# used-price history: a used selection would be priced against nothing.)
# Every category, $5 to $60: what a small arbitrage buyer looks at.
priceTypes = [1]
salesRankRange = [10000, 10000000]
currentRange = [500, 6000]
deltaPercentRange = [10, 100]
minRating = 10
sortType = 4
isRangeEnabled = true
isFilterEnabled = true
singleVariation = true

[backfiller]
idle_s = 0.5

[janitor]
interval_s = 60

[profit]
reference = "new"

[log]
level = "warning"
format = "console"
"""


def _counts(db: Path) -> dict[str, Any]:
    if not db.exists():
        return {}
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=2.0)
    try:
        conn.row_factory = sqlite3.Row
        summary = liveness.status_summary(conn, now=time.time())
        deals = summary.get("deals") or {}
        return dict(deals)
    except sqlite3.Error:
        return {}
    finally:
        conn.close()


def _line(elapsed: float, db: Path, sim: Simulator) -> str:
    d = _counts(db)
    st = sim.stats()
    return (
        f"[{elapsed:5.1f}s] deals {d.get('total', 0):>5}  backfilled {d.get('backfilled', 0):>5}"
        f"  pending {d.get('pending_backfill', 0):>5}"
        f"  tokens spent {st.get('tokens_consumed', 0):>5}"
        f"  generated {st.get('tokens_generated', 0):>5}"
    )


async def _demo(seconds: float, out: TextIO) -> int:
    workdir = Path(tempfile.mkdtemp(prefix="dealsd-demo-"))
    db = workdir / "deals.db"
    sim = Simulator(
        SimOptions(
            refill_rate=DEMO_REFILL,
            refill_period_s=DEMO_PERIOD_S,
            catalogue_size=DEMO_CATALOGUE,
            initial_tokens=DEMO_INITIAL_TOKENS,
        )
    )
    base_url = await sim.start("127.0.0.1", 0)
    config_path = workdir / "config.toml"
    config_path.write_text(CONFIG_TEMPLATE.format(base_url=base_url, db=db))
    cfg = load_config(config_path)
    print(f"dealsd demo: simulator at {base_url}, database {db}, {seconds:g} s", file=out)
    stop = asyncio.Event()
    started = time.monotonic()
    daemon = asyncio.create_task(
        run_daemon(
            cfg,
            api_key="demo-key",
            clock=SystemClock(),
            notifier=Notifier(None),
            stop=stop,
            config_path=config_path,
            snapshot_every_s=1.0,
        )
    )
    try:
        while not daemon.done() and (left := seconds - (time.monotonic() - started)) > 0:
            await asyncio.wait({daemon}, timeout=min(2.0, left))
            print(_line(time.monotonic() - started, db, sim), file=out, flush=True)
        stop.set()
        code = await daemon
    finally:
        stop.set()
        if not daemon.done():
            daemon.cancel()
        await sim.stop()
    st = sim.stats()
    d = _counts(db)
    print(
        f"dealsd demo: done in {time.monotonic() - started:.1f}s (daemon exit {code}): "
        f"{d.get('total', 0)} deals stored, {d.get('backfilled', 0)} backfilled, "
        f"{st.get('tokens_consumed', 0)} tokens spent ({DEMO_INITIAL_TOKENS} at start "
        f"+ {st.get('tokens_generated', 0)} generated)",
        file=out,
    )
    print(f"database: {db}", file=out)
    first, *others = dealsd_commands(f"status --database {db}")
    print(f"inspect it: {first}", file=out)
    for other in others:
        print(f"        or: {other}", file=out)
    print(f"\nthe {TOP_DEALS} best deals it found, by profit:", file=out)
    run_deals(db, Filters(sort="profit", limit=TOP_DEALS), out=out)
    first, *others = dealsd_commands(f"deals --database {db} --limit 100")
    print(f"see more: {first}", file=out)
    for other in others:
        print(f"      or: {other}", file=out)
    return 0 if code == 0 else code


def _shown(path: Path) -> str:
    """``path`` as typed from the current directory: relative below it, else absolute."""
    path = path.absolute()
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def dealsd_commands(args: str) -> list[str]:
    """Commands that run `dealsd ARGS` from here, the first the plainest.

    Someone who ran ``python3 dev.py demo`` has no ``dealsd`` on their PATH
    (it lives in the repo's .venv), so a bare ``dealsd status`` would fail:
    name the script that is running, or ``python -m dealsd``, and dev.py's
    form when this environment is the repo's .venv.
    """
    script = Path(sys.argv[0]) if sys.argv and sys.argv[0] else None
    if script is not None and script.name == "dealsd" and script.is_file():
        found = shutil.which("dealsd")
        if found is not None and Path(found).resolve() == script.resolve():
            return [f"dealsd {args}"]
        commands = [f"{_shown(script)} {args}"]
    else:
        commands = [f"{_shown(Path(sys.executable))} -m dealsd {args}"]
    dev = Path(sys.prefix).parent / "dev.py"
    if dev.is_file():
        commands.append(f"python3 {_shown(dev)} dealsd {args}")
    return commands


def run_demo(*, seconds: float = 30.0, out: TextIO | None = None) -> int:
    from dealsd.logs import configure_logging

    out = out if out is not None else sys.stdout

    configure_logging("warning", "console")
    return asyncio.run(_demo(seconds, out))
