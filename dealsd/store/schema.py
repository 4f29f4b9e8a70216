"""The database schema as it is now, and how a file is brought to it.

The version (``SCHEMA_VERSION``: how many released steps
``dealsd.store.migrations`` holds), the columns a deal row fills, each
table's columns read from the steps themselves, the one transaction that
applies the steps a file lacks, and the write connection's checks and
settings: a file that is not SQLite, or is from a newer dealsd, is refused
untouched.
The table and column names are a contract with dashboard authors
(``docs/schema.md``); renaming one breaks their queries.

Standard library only: ``dealsd status`` imports this on its fast path.
"""

from __future__ import annotations

import functools
import sqlite3
from collections.abc import Sequence
from pathlib import Path

from dealsd.store.migrations import MIGRATIONS

# The columns a deal of the /deal feed fills (dealsd.mapping.deal_row makes
# them, in this order; the upsert writes them). Here, with the schema, so
# the store and `dealsd status` need not import the mapping (msgspec types).
DEAL_COLUMNS: tuple[str, ...] = (
    "asin",
    "domain_id",
    "currency",
    "title",
    "image_url",
    "root_category",
    "current_amazon_cents",
    "current_new_cents",
    "current_used_cents",
    "current_sales_rank",
    "keepa_last_update",
    "deal_json",
    "last_seen_at",
    # schema v6: the screen, made by the upserter from the deal (``screen``)
    "screen_profit_cents",
    "screen_roi_pct",
)

# One version number, from the one list: a new step is a new version.
SCHEMA_VERSION = len(MIGRATIONS)


SQLITE_HEADER = b"SQLite format 3\x00"


class NotADatabase(Exception):
    """The file exists but is not an SQLite database; it was left untouched."""


class SchemaTooNew(Exception):
    """The file was written by a newer dealsd: refuse it rather than guess."""

    def __init__(self, found: int, supported: int) -> None:
        super().__init__(
            f"database schema version {found} is newer than this dealsd supports "
            f"({supported}); upgrade dealsd"
        )
        self.found = found
        self.supported = supported


@functools.cache
def table_columns(table: str) -> tuple[str, ...]:
    """The columns of ``table`` at SCHEMA_VERSION, read from the migrations themselves."""
    conn = sqlite3.connect(":memory:")
    try:
        conn.executescript("".join(MIGRATIONS))
        cols = tuple(str(r[1]) for r in conn.execute(f"PRAGMA table_info({table})"))
    finally:
        conn.close()
    if not cols:
        raise KeyError(table)
    return cols


def user_version(conn: sqlite3.Connection) -> int:
    return int(conn.execute("PRAGMA user_version").fetchone()[0])


def apply_migrations(conn: sqlite3.Connection, migrations: Sequence[str] = MIGRATIONS) -> int:
    """Bring ``conn``'s database to ``len(migrations)`` in ONE transaction; return the old version.

    ``conn`` must be in autocommit mode (``isolation_level=None``). Either every
    step and the new ``user_version`` commit together or nothing changes, so
    a crash or a bad step never leaves a half-migrated file. A version newer
    than ``migrations`` raises ``SchemaTooNew`` before anything is written.
    """
    found = user_version(conn)
    target = len(migrations)
    if found > target:
        raise SchemaTooNew(found, target)
    if found == target:
        return found
    # executescript would COMMIT on its own first (Python 3.11), so the
    # script carries its own BEGIN/COMMIT; a failure leaves the BEGIN open
    # and it is rolled back below.
    steps = "".join(migrations[i] for i in range(found, target))
    try:
        conn.executescript(
            f"BEGIN IMMEDIATE;\n{steps}\nPRAGMA user_version = {int(target)};\nCOMMIT;"
        )
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return found


def check_header(path: Path) -> None:
    """Refuse a non-SQLite file before SQLite opens (and might write to) it."""
    try:
        with path.open("rb") as f:
            head = f.read(len(SQLITE_HEADER))
    except FileNotFoundError:
        return
    except IsADirectoryError as exc:
        raise NotADatabase(f"{path}: is a directory") from exc
    if head and head != SQLITE_HEADER:
        raise NotADatabase(f"{path}: not an SQLite database (header {head[:16]!r})")


def prepare_writer(conn: sqlite3.Connection, *, busy_timeout_ms: int) -> int:
    """Settings of the one write connection, then migrations; returns the old version."""
    conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
    # Version first: a file from a newer dealsd must not even get its journal
    # mode changed.
    found = user_version(conn)
    if found > SCHEMA_VERSION:
        raise SchemaTooNew(found, SCHEMA_VERSION)
    conn.execute("PRAGMA journal_mode = WAL")
    # NORMAL in WAL loses nothing on process death, only on power loss.
    conn.execute("PRAGMA synchronous = NORMAL")
    conn.execute("PRAGMA foreign_keys = ON")
    # Each write's SAVEPOINT journals the pages it touches: in memory that
    # costs ~5 us a write, in a temp file ~15 us (bench/writer.py).
    conn.execute("PRAGMA temp_store = MEMORY")
    return apply_migrations(conn)
