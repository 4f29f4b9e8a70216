"""Benchmarks: scripts that print figures, not tests (the machine is noisy).

Each module with a ``run() -> list[Row]`` is picked up by ``python -m bench``,
which prints one table of every figure against its goal.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class Row:
    """One measured figure and the goal it is held against."""

    figure: str
    goal: str
    measured: str
    ok: bool


def stop_process(proc: subprocess.Popen[Any], *, within_s: float) -> None:
    """SIGTERM, then SIGKILL if it has not exited within ``within_s``; reaped either way."""
    proc.terminate()
    try:
        proc.wait(timeout=within_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
