"""`dealsd alerts test | list`: try every channel, see what is queued and sent.

``test`` sends one message to each channel (those of ``--rule`` only, with
it) and prints each result, so a webhook typo is found at set-up, not on the
first deal. ``list`` reads the outbox read-only, beside the running daemon.
"""

from __future__ import annotations

import asyncio
import sqlite3
import sys
from pathlib import Path
from typing import TextIO

from dealsd.alerts import queries
from dealsd.alerts.channels import Sender, load_channels
from dealsd.alerts.message import money
from dealsd.config import Config

EXIT_OK, EXIT_FAILED, EXIT_NO_DATABASE = 0, 1, 2
TEST_TITLE = "dealsd: test alert"
TEST_BODY = "If you can read this, dealsd can reach this channel."


def run_test(cfg: Config, *, rule: str | None, out: TextIO = sys.stdout) -> int:
    """Send a test message to each channel; 0 when every one took it."""
    channels = load_channels(cfg.alerts)  # ConfigError: the caller exits 78
    if rule is not None:
        wanted = [r for r in cfg.alerts.rule if r.name == rule]
        if not wanted:
            names = ", ".join(r.name for r in cfg.alerts.rule) or "none"
            print(f"dealsd alerts: no rule named {rule!r} (rules: {names})", file=sys.stderr)
            return EXIT_FAILED
        if wanted[0].channels:
            channels = [c for c in channels if c.name in wanted[0].channels]
    if not channels:
        print("dealsd alerts: no channel configured", file=sys.stderr)
        return EXIT_FAILED
    sender = Sender(channels)

    async def send_all() -> list[str | None]:
        return [await sender.send(c.name, title=TEST_TITLE, body=TEST_BODY) for c in channels]

    failed = 0
    for channel, error in zip(channels, asyncio.run(send_all()), strict=True):
        if error is None:
            print(f"{channel.name} ({channel.shown}): sent", file=out)
        else:
            failed += 1
            print(f"{channel.name} ({channel.shown}): FAILED: {error}", file=out)
    return EXIT_FAILED if failed else EXIT_OK


def run_list(db_path: Path, *, limit: int, out: TextIO = sys.stdout) -> int:
    """Print the newest alerts, queued first; 2 when there is no database."""
    try:
        conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=5)
    except sqlite3.Error as exc:
        print(f"dealsd alerts: cannot open {db_path}: {exc}", file=sys.stderr)
        return EXIT_NO_DATABASE
    try:
        channels = queries.summary(conn)
        rows = queries.recent(conn, limit=limit)
    except sqlite3.Error as exc:
        print(f"dealsd alerts: {db_path}: {exc}", file=sys.stderr)
        return EXIT_NO_DATABASE
    finally:
        conn.close()
    for ch in channels:
        state = f"failing since {ch['failing_since']}: {ch['last_error']}" if ch[
            "failing_since"
        ] else f"last sent {ch['last_success_at'] or 'never'}"
        print(f"channel {ch['channel']}: {ch['queued']} queued, {ch['sent_total']} sent, "
              f"{state}", file=out)  # fmt: skip
    if not rows:
        print("no alerts yet", file=out)
    for r in rows:
        when = f"sent {r['sent_at']}" if r["sent_at"] else f"queued ({r['attempts']} tries)"
        profit = money(r["profit_cents"], r["domain_id"])
        title = (r["title"] or "")[:50]
        print(f"{r['created_at']}  {r['rule']:<16} {r['channel']:<10} {r['asin']}  "
              f"{profit:>10}  {when}  {title}", file=out)  # fmt: skip
    return EXIT_OK
