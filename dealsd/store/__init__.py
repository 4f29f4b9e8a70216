"""The store: one writer connection behind a queue, a pool of readers, the schema.

``writer`` (the ``Store``: group commit through one aiosqlite connection),
``groups`` (running a group, replaying it without the write that raised),
``readers`` (the read-only pool), ``schema`` (the current schema, and
applying to a file the steps of ``migrations`` it lacks), ``migrations``
(each released step's DDL), and the SQL the workers and ``status`` run, one
module per concern: ``feed`` (/deal rows, checkpoints, the token ledger's
rows), ``backfill`` (the /product queue and the funnel's counts),
``liveness`` (the daemon's and workers' rows, the status summary),
``pruning`` (the janitor), sharing ``sql``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from dealsd.store.schema import NotADatabase, SchemaTooNew

if TYPE_CHECKING:
    from dealsd.store.writer import Store, StoreClosed, StoreError, StoreFull, WriterStats

# The writer imports aiosqlite, asyncio and the logging stack: loaded on first
# use, so a reader of the database (`dealsd status`, `dealsd deals`) that
# only needs the queries starts in a fraction of the time.
_WRITER = frozenset({"Store", "StoreClosed", "StoreError", "StoreFull", "WriterStats"})


def __getattr__(name: str) -> Any:
    if name not in _WRITER:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.writer"), name)

__all__ = [
    "NotADatabase",
    "SchemaTooNew",
    "Store",
    "StoreClosed",
    "StoreError",
    "StoreFull",
    "WriterStats",
]
