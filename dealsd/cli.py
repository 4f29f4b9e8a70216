"""Command line: `dealsd run | status | check-config | demo | simulator`."""

from __future__ import annotations


def main(argv: list[str] | None = None) -> int:
    print("dealsd: not yet")
    return 1
