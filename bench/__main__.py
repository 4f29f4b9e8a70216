"""``python -m bench [name ...]``: run every bench module's ``run()`` and print one table.

A module in this package takes part by defining ``run() -> list[Row]``; nothing
here names them, so a new ``bench/<part>.py`` plugs in by existing. Exit status
1 if any figure misses its goal (or a module fails), so CI may gate on it.
"""

from __future__ import annotations

import importlib
import pkgutil
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

from bench import Row


def _unimportable(exc: BaseException) -> Callable[[], list[Row]]:
    def run() -> list[Row]:
        return [Row("module imports", "imports", f"{type(exc).__name__}: {exc}", False)]

    return run


def discover(only: list[str]) -> list[tuple[str, Callable[[], list[Row]]]]:
    found = []
    for info in sorted(pkgutil.iter_modules([str(Path(__file__).parent)]), key=lambda m: m.name):
        if info.name.startswith("_") or (only and info.name not in only):
            continue
        try:
            module = importlib.import_module(f"bench.{info.name}")
        except ImportError as exc:  # a part not written yet fails its own rows only
            found.append((info.name, _unimportable(exc)))
            continue
        run = getattr(module, "run", None)
        if callable(run):
            found.append((info.name, run))
    return found


def table(rows: list[tuple[str, Row]]) -> str:
    head = ("bench", "figure", "goal", "measured", "ok")
    lines = [
        (name, r.figure, r.goal, r.measured, "pass" if r.ok else "FAIL") for name, r in rows
    ]
    widths = [max(len(str(c)) for c in col) for col in zip(head, *lines, strict=False)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    out = [fmt.format(*head), fmt.format(*("-" * w for w in widths))]
    out += [fmt.format(*line) for line in lines]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    only = list(sys.argv[1:] if argv is None else argv)
    rows: list[tuple[str, Row]] = []
    for name, run in discover(only):
        started = time.monotonic()
        print(f"bench {name} ...", file=sys.stderr, flush=True)
        try:
            got = run()
        except Exception:
            traceback.print_exc()
            got = [Row("run() completed", "no exception", "raised", False)]
        rows += [(name, r) for r in got]
        print(f"bench {name}: {time.monotonic() - started:.1f} s", file=sys.stderr, flush=True)
    if not rows:
        print("no bench module with run() found", file=sys.stderr)
        return 1
    print(table(rows))
    return 0 if all(r.ok for _, r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
