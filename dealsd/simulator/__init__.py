"""A local Keepa: the API dealsd talks to in tests, in `dealsd demo`, and for users.

An aiohttp server with Keepa's endpoints (/deal, /product, /token), its token
envelope and token rules, a deterministic deal catalogue that evolves with
accelerated time, products built from two real recorded payloads, and
injectable faults. It imports no daemon part: only ``dealsd.clock``.
"""

from __future__ import annotations

from dealsd.simulator.cli import main
from dealsd.simulator.options import Faults, SimOptions
from dealsd.simulator.server import Simulator

__all__ = ["Faults", "SimOptions", "Simulator", "main"]
