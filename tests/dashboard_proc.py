"""A stand-in dashboard, run as its own OS process by tests/test_store.py.

``python tests/dashboard_proc.py DB HOLD_S [TAIL_S]``: reads ``count(*)`` from
``deals`` continuously on one connection while another connection takes the
write lock (``BEGIN IMMEDIATE``) once and keeps it HOLD_S seconds, as a
dashboard saving its own settings in a slow transaction might. Prints
``holding`` when the lock is taken (so the test knows), then, TAIL_S after
releasing it, one JSON line: reads done, errors seen, seconds held.
"""

from __future__ import annotations

import json
import sqlite3
import sys
import time


def main(argv: list[str]) -> int:
    db, hold_s = argv[0], float(argv[1])
    tail_s = float(argv[2]) if len(argv) > 2 else 1.0
    reader = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10.0)
    locker = sqlite3.connect(db, isolation_level=None, timeout=10.0)
    reads = 0
    errors: list[str] = []

    def read() -> None:
        nonlocal reads
        try:
            reader.execute("SELECT count(*) FROM deals").fetchone()
            reads += 1
        except sqlite3.Error as exc:
            errors.append(f"read: {exc}")

    for _ in range(5):
        read()
    locker.execute("BEGIN IMMEDIATE")
    taken = time.monotonic()
    print("holding", flush=True)
    while time.monotonic() - taken < hold_s:
        read()  # WAL readers are never blocked by a writer
        time.sleep(0.01)
    locker.execute("COMMIT")
    held = time.monotonic() - taken
    end = time.monotonic() + tail_s
    while time.monotonic() < end:
        read()
        time.sleep(0.01)
    reader.close()
    locker.close()
    print(json.dumps({"reads": reads, "errors": errors, "held_s": round(held, 2)}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
