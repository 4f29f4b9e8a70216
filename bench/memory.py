"""Resident memory of a running daemon on a 100,000-deal database: ``python -m bench.memory``.

The database is ``bench.startup.build_db``'s (100,000 backfilled deals, as many
``product_history`` rows). ``python -m dealsd run`` then runs as its own OS
process against the simulator (its own process too) in accelerated time: a
Keepa minute lasts PERIOD_S = 0.1 s, so one wall second is 10 Keepa minutes
of refill and an accelerated hour is 6 wall seconds; the workers' own
intervals are set to 1 s. New deals keep appearing, the upserter pages them
in, the backfiller buys their full history and the janitor runs: the daemon
does all its kinds of work while VmRSS is read from /proc/PID/status.

The daemon gets the ``Environment=`` lines of ``systemd/dealsd.service`` (it
is measured as deployed: MALLOC_ARENA_MAX=2), then runs once more without
MALLOC_ARENA_MAX on the same starting database, for comparison.

Figures: RSS at steady state (median of the last half), and its growth: the
least-squares slope over the last two thirds, in MB per accelerated hour.
"""

from __future__ import annotations

import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

from bench import Row
from bench.looplag import simulator_process
from bench.startup import build_db, daemon_process, write_config

PERIOD_S = 0.1
WALL_S = 45.0
SAMPLE_EVERY_S = 0.5
RSS_GOAL_MB = 100.0
SLOPE_GOAL_MB_H = 1.0  # ~24 MB a day of accelerated time would be a leak worth finding
ACCEL_HOUR_S = 60 * PERIOD_S  # wall seconds in one accelerated hour


def vm_rss_mb(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except FileNotFoundError:
        return None
    return None


def slope(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of (x, y) points."""
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    den = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in points) / den if den else 0.0


UNIT = Path(__file__).resolve().parent.parent / "systemd" / "dealsd.service"


def unit_environment(unit: Path = UNIT) -> dict[str, str]:
    """The ``Environment=`` settings of the systemd unit: the daemon is measured as deployed."""
    env = {}
    for line in unit.read_text().splitlines():
        if line.startswith("Environment="):
            name, _, value = line.removeprefix("Environment=").partition("=")
            env[name] = value
    return env


def soak(d: Path, db: Path, env: dict[str, str]) -> tuple[list[tuple[float, float]], str]:
    """VmRSS samples (wall s, MB) of one daemon run; and what it did, or how it died."""
    sim_args = ("--period", str(PERIOD_S), "--refill-rate", "50", "--catalogue", "3000",
                "--new-deals", "5", "--changed-deals", "20")  # fmt: skip
    samples: list[tuple[float, float]] = []
    conn = sqlite3.connect(db)
    before = conn.execute("SELECT count(*) FROM product_history").fetchone()[0]
    conn.close()
    with simulator_process(*sim_args) as url:
        cfg = write_config(
            d, db, url,
            upserter={"interval_s": 1, "max_pages_per_run": 3},
            backfiller={"idle_s": 1.0},
            janitor={"interval_s": 1},
        )  # fmt: skip
        with daemon_process(cfg, extra_env=env) as proc:
            started = time.monotonic()
            while (elapsed := time.monotonic() - started) < WALL_S:
                rss = vm_rss_mb(proc.pid)
                if rss is None or proc.poll() is not None:
                    break
                samples.append((elapsed, rss))
                time.sleep(SAMPLE_EVERY_S)
            exited = proc.poll()
    conn = sqlite3.connect(db)
    deals, after = conn.execute(
        "SELECT (SELECT count(*) FROM deals), (SELECT count(*) FROM product_history)"
    ).fetchone()
    conn.close()
    ran = samples[-1][0] if samples else 0.0
    if exited is not None or ran < WALL_S * 0.9 or after <= before:
        return samples, f"FAILED: exited {exited} after {ran:.0f} s, {after - before} bought"
    return samples, f"{deals:,} deals, {after - before:+,} histories bought"


def run() -> list[Row]:
    out: list[Row] = []
    env = unit_environment()
    with tempfile.TemporaryDirectory(prefix="dealsd-bench-") as tmp:
        d = Path(tmp)
        db = d / "deals.db"
        build_db(db)
        pristine = d / "pristine.db"
        shutil.copyfile(db, pristine)
        samples, did = soak(d, db, env)
        shutil.copyfile(pristine, db)
        plain = {k: v for k, v in env.items() if k != "MALLOC_ARENA_MAX"}
        plain_samples, _ = soak(d, db, plain)
    ran = samples[-1][0] if samples else 0.0
    out.append(
        Row(
            f"daemon, unit's environment, {ran:.0f} s = {ran / ACCEL_HOUR_S:.0f} accel. hours",
            "stays up, works",
            did,
            not did.startswith("FAILED"),
        )
    )
    if not samples:
        return out
    tail = [rss for t, rss in samples if t >= ran / 2]
    steady = statistics.median(tail)
    out.append(
        Row(
            "  RSS at steady state, 100k deals + 100k histories",
            f"<= {RSS_GOAL_MB:.0f} MB",
            f"{steady:.1f} MB (peak {max(r for _, r in samples):.1f})",
            steady <= RSS_GOAL_MB,
        )
    )
    grow = [(t / ACCEL_HOUR_S, rss) for t, rss in samples if t >= ran / 3]
    per_h = slope(grow)
    out.append(
        Row(
            "  RSS growth (slope, last 2/3 of the run)",
            f"<= {SLOPE_GOAL_MB_H:.0f} MB/accel. hour",
            f"{per_h:+.2f} MB/accelerated hour",
            per_h <= SLOPE_GOAL_MB_H,
        )
    )
    if plain_samples:
        pran = plain_samples[-1][0]
        plain_steady = statistics.median([r for t, r in plain_samples if t >= pran / 2])
        out.append(
            Row("  the same without MALLOC_ARENA_MAX=2", "-", f"{plain_steady:.1f} MB", True)
        )
    return out


if __name__ == "__main__":  # the same as `python -m bench memory`
    from bench.__main__ import main

    sys.exit(main(["memory"]))
