"""The Datasette that `dealsd web` serves: one database, read-only, dealsd's metadata.

Read-only beside the running daemon: the database is added *mutable*, which
Datasette opens with ``mode=ro``. In WAL mode such a reader takes no lock
the writer waits for and sees each committed write. Not ``immutable`` (-i):
SQLite then ignores the WAL and skips locking, so it would show stale rows
and could read a page while the daemon rewrites it. Not ``--nolock`` either,
which drops the locks that keep a reader's snapshot consistent (it exists for
files a browser keeps locked). Datasette 0.65 has no write API and the
connection is read-only, so nothing can be written through it.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import uvicorn
from datasette.app import Datasette
from datasette.database import Database
from datasette.plugins import pm

from dealsd.web import plugin
from dealsd.web.metadata import DATABASE, metadata

SETTINGS = {
    # The file in WAL mode is not a consistent copy without its -wal: no download.
    "allow_download": False,
    "default_page_size": 50,
    "sql_time_limit_ms": 3000,
    "suggest_facets": False,
}


def make_datasette(db: Path) -> Datasette:
    """A Datasette over ``db`` (named ``dealsd``) with dealsd's plugin and metadata."""
    if pm.get_plugin("dealsd") is None:
        pm.register(plugin, name="dealsd")
    templates = resources.files("dealsd.web") / "templates"
    ds = Datasette(
        [],
        metadata=metadata(),
        template_dir=str(templates),
        settings=SETTINGS,
    )
    ds.add_database(Database(ds, path=str(db), is_mutable=True), name=DATABASE)
    return ds


def serve(db: Path, *, host: str, port: int) -> int:
    ds = make_datasette(db)
    print(f"dealsd web: serving {db} read-only at http://{host}:{port}/{DATABASE}", flush=True)
    uvicorn.run(ds.app(), host=host, port=port, log_level="warning", lifespan="on")
    return 0
