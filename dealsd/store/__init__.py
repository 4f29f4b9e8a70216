"""The store: one writer connection behind a queue, a pool of readers, the schema.

``writer`` (the ``Store``: group commit through one aiosqlite connection),
``groups`` (running a group, replaying it without the write that raised),
``readers`` (the read-only pool), ``schema`` (migrations), ``queries`` (the
SQL the workers and ``status`` use).
"""

from __future__ import annotations

from dealsd.store.schema import NotADatabase, SchemaTooNew
from dealsd.store.writer import Store, StoreClosed, StoreError, StoreFull, WriterStats

__all__ = [
    "NotADatabase",
    "SchemaTooNew",
    "Store",
    "StoreClosed",
    "StoreError",
    "StoreFull",
    "WriterStats",
]
