"""Benchmarks: scripts that print figures, not tests (the machine is noisy).

Each module with a ``run() -> list[Row]`` is picked up by ``python -m bench``,
which prints one table of every figure against its goal.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Row:
    """One measured figure and the goal it is held against."""

    figure: str
    goal: str
    measured: str
    ok: bool
