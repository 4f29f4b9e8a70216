"""`dealsd web`: the database in Datasette, with dealsd's metadata and price charts.

Datasette is an optional extra (``dealsd[web]``): this module imports it
only once it is known to be installed, so without it `dealsd web` says what
to install instead of failing on an import.
"""

from __future__ import annotations

import sys
from pathlib import Path

from dealsd.exits import EX_UNAVAILABLE, EXIT_NO_DATABASE

INSTALL_HINT = (
    "dealsd web needs Datasette, which is not installed here; install the web extra: "
    "pip install 'dealsd[web]' (from a checkout: pip install -e '.[web]')"
)


def run_web(db: Path, *, host: str, port: int) -> int:
    try:
        import datasette  # noqa: F401
    except ImportError:
        print(f"dealsd web: {INSTALL_HINT}", file=sys.stderr)
        return EX_UNAVAILABLE
    if not db.is_file():
        print(f"dealsd web: no database at {db}", file=sys.stderr)
        return EXIT_NO_DATABASE
    from dealsd.web.app import serve

    return serve(db, host=host, port=port)
