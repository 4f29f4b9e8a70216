"""Soak: the daemon against a simulator with every fault on, for a while.

``python -m bench.soak [--minutes M] [--period S] [--kill-every S]`` (not in
CI, not part of ``python -m bench``: it has no ``run()``). Wall-clock minutes;
time is accelerated in the simulator (a Keepa minute lasts ``--period``
seconds, 0.2 by default: an hour of wall time is 300 Keepa hours).

What it does to the daemon (``python -m dealsd run`` as its own process):
every simulator fault at a low rate, another consumer of the key, plan
changes 5 -> 25 -> 5 (scaled), an outage now and then, a separate process
holding the database write lock now and then, SIGHUP every few seconds and
SIGKILL + restart every ``--kill-every`` seconds (the last fifth of the run
without kills, so the resident memory of one long-lived process is seen).

It prints one table: faults injected (simulator counters), restarts and
unexpected exits, deals ingested against what the simulator lists, tokens
wasted (429s, products bought twice, tokens lost to the cap), RSS at start and
end of the long-lived process, the integrity check and whether the key leaked.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import signal
import sqlite3
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from dealsd.simulator import Faults, SimOptions, Simulator

SECRET = "SECRET-KEY-1234567890"
HOLDER = """
import sqlite3, sys, time
c = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=30)
c.execute("BEGIN IMMEDIATE"); time.sleep(float(sys.argv[2])); c.execute("COMMIT")
"""


def config_text(tmp: Path, base_url: str) -> str:
    return f"""
[keepa]
base_url = "{base_url}"
max_attempts = 4
read_timeout_s = 1
connect_timeout_s = 1

[database]
path = "{tmp / 'deals.db'}"

[upserter]
interval_s = 2

[upserter.selection]
priceTypes = [2]
sortType = 1

[backfiller]
idle_s = 0.5
max_batch = 20
retry_base_s = 2
max_attempts = 3

[janitor]
interval_s = 5
grace_h = 24

[log]
format = "json"
"""


def rss_kb(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


class Daemon:
    """`python -m dealsd run` as a real process, its stderr kept."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.logs = bytearray()
        self._reader = asyncio.create_task(self._read())

    @classmethod
    async def start(cls, config: Path) -> Daemon:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("DEALSD_", "KEEPA_"))}
        env.pop("NOTIFY_SOCKET", None)
        env.update(KEEPA_API_KEY=SECRET, PYTHONUNBUFFERED="1")
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "dealsd", "run", "--config", str(config),
            env=env, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        return cls(proc)

    async def _read(self) -> None:
        assert self.proc.stderr is not None
        while chunk := await self.proc.stderr.read(65536):
            self.logs += chunk

    async def stop(self, sig: signal.Signals) -> int:
        if self.proc.returncode is None:
            self.proc.send_signal(sig)
        rc = await asyncio.wait_for(self.proc.wait(), 60)
        await self._reader
        return rc


def db_counts(db: Path) -> tuple[int, int, set[str]]:
    conn = sqlite3.connect(db, timeout=30)
    try:
        total, done = conn.execute("SELECT count(*), count(backfilled_at) FROM deals").fetchone()
        asins = {r[0] for r in conn.execute("SELECT asin FROM deals")}
        return int(total), int(done), asins
    finally:
        conn.close()


async def soak(minutes: float, period: float, kill_every: float, seed: int) -> dict[str, Any]:
    rng = random.Random(seed)
    faults = Faults(
        error_5xx=0.02, hang=0.005, hang_s=3.0, reset=0.02, truncated=0.02, non_json=0.02,
        bad_items=0.002,
    )  # fmt: skip
    # 20 tokens a period is "5 a minute" at 4x; another consumer takes 5 of them.
    opts = SimOptions(
        refill_rate=20, refill_period_s=period, catalogue_size=3000, seed=seed,
        new_deals_per_period=1, changed_deals_per_period=5, faults=faults,
        other_consumer_per_period=5, missing_rate=0.01, invalid_rate=0.005,
    )  # fmt: skip
    sim = Simulator(opts)
    await sim.start("127.0.0.1", 0)
    tmp = Path(tempfile.mkdtemp(prefix="dealsd-soak-"))
    config = tmp / "config.toml"
    config.write_text(config_text(tmp, sim.base_url))
    db = tmp / "deals.db"
    started = time.monotonic()
    end = started + minutes * 60
    calm_from = end - (end - started) / 5  # no kills in the last fifth
    restarts = unexpected = outages = holds = hups = 0
    seen: set[str] = set()
    lost: set[str] = set()
    logs = bytearray()
    rss_start: int | None = None
    rss_end: int | None = None
    d = await Daemon.start(config)
    long_lived_from = time.monotonic()
    next_kill = started + kill_every * rng.uniform(0.5, 1.5)
    next_event = started + 10.0
    plans = [20, 100, 20]
    holders: list[asyncio.subprocess.Process] = []
    try:
        while time.monotonic() < end:
            await asyncio.sleep(0.5)
            now = time.monotonic()
            if d.proc.returncode is not None:
                unexpected += 1  # it died on its own: count, say so, restart
                logs += d.logs
                print(f"unexpected exit {d.proc.returncode}", file=sys.stderr)
                d = await Daemon.start(config)
                long_lived_from = now
            if rss_start is None and now >= calm_from + 5:
                rss_start = rss_kb(d.proc.pid)
            if now >= next_kill and now < calm_from:
                await d.stop(signal.SIGKILL)
                logs += d.logs
                restarts += 1
                if db.exists():
                    _t, _b, asins = db_counts(db)
                    lost |= seen - asins
                    seen = asins
                d = await Daemon.start(config)
                long_lived_from = now
                next_kill = now + kill_every * rng.uniform(0.5, 1.5)
            if now >= next_event:
                next_event = now + rng.uniform(5, 15)
                what = rng.choice(("outage", "hold", "plan", "hup", "hup"))
                if what == "outage":
                    outages += 1
                    sim.control(outage=True)
                    asyncio.get_running_loop().call_later(
                        rng.uniform(2, 6), lambda: sim.control(outage=False)
                    )
                elif what == "hold" and db.exists():
                    holds += 1
                    holders.append(
                        await asyncio.create_subprocess_exec(
                            sys.executable, "-c", HOLDER, str(db), str(rng.uniform(2, 8))
                        )
                    )
                elif what == "plan":
                    plans.append(plans.pop(0))
                    sim.control(refill_rate=plans[0])
                else:
                    hups += 1
                    d.proc.send_signal(signal.SIGHUP)
        rss_end = rss_kb(d.proc.pid)
        sim.control(outage=False)
        for h in holders:
            await h.wait()
        rc = await d.stop(signal.SIGTERM)
        logs += d.logs
        if rc != 0:
            unexpected += 1
    finally:
        if d.proc.returncode is None:
            d.proc.kill()
            await d.proc.wait()
        stats = sim.stats()
        listed_used = {x["asin"] for x in sim.catalogue.listed() if x["current"][2] > 0}
        bought = sim.products_bought
        await sim.stop()
    total, backfilled, asins = db_counts(db)
    lost |= seen - asins
    conn = sqlite3.connect(db)
    ok = conn.execute("PRAGMA integrity_check").fetchone()[0]
    conn.close()
    raw = await asyncio.to_thread(
        lambda: b"".join(p.read_bytes() for p in tmp.glob("deals.db*") if p.is_file())
    )
    rate_limited = int(stats["rate_limited"])
    covered = len(listed_used & asins)
    return {
        "minutes": minutes,
        "period_s": period,
        "faults injected": stats["faults"],
        "restarts (SIGKILL)": restarts,
        "unexpected exits": unexpected,
        "outages / lock holds / SIGHUPs": f"{outages} / {holds} / {hups}",
        "deals stored": total,
        "deals expected (listed with a used price)": len(listed_used),
        "expected deals stored": f"{covered} ({covered / max(1, len(listed_used)):.0%})",
        "backfilled": backfilled,
        "committed deals lost across kills": len(lost),
        "429s (free, but each a wasted request)": rate_limited,
        "products bought twice (tokens)": sum(n - 1 for n in bought.values() if n > 1),
        # Refill the daemon had no work for (the backfill caught up): the plan's
        # slack, not waste by dealsd; compare with "backfilled" vs "deals stored".
        "tokens lost to the cap (no work pending)": stats["tokens_wasted"],
        "tokens consumed": stats["tokens_consumed"],
        "RSS long-lived process start / end (kB)": f"{rss_start} / {rss_end}",
        "long-lived process ran (s)": round(time.monotonic() - long_lived_from),
        "integrity_check": ok,
        "key in logs or database": SECRET.encode() in bytes(logs) or SECRET.encode() in raw,
        "database": str(db),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__.split("\n")[0])
    p.add_argument("--minutes", type=float, default=3.0, help="wall-clock minutes (default 3)")
    p.add_argument("--period", type=float, default=0.2, help="seconds per Keepa minute")
    p.add_argument("--kill-every", type=float, default=20.0, help="mean seconds between SIGKILLs")
    p.add_argument("--seed", type=int, default=1)
    args = p.parse_args(argv)
    result = asyncio.run(soak(args.minutes, args.period, args.kill_every, args.seed))
    width = max(len(k) for k in result)
    for key, value in result.items():
        print(f"{key:<{width}}  {value}")
    healthy = (
        result["unexpected exits"] == 0
        and result["committed deals lost across kills"] == 0
        and result["integrity_check"] == "ok"
        and not result["key in logs or database"]
    )
    with contextlib.suppress(Exception):
        sys.stdout.flush()
    return 0 if healthy else 1


if __name__ == "__main__":
    sys.exit(main())
