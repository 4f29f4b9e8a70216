"""Plain helpers shared by the tests (fixtures live in conftest.py).

No test module imports another: what two tests share lives here.
"""

from __future__ import annotations

from importlib import resources

# The two real Keepa /product responses, shipped as package data.
SAMPLE_ASINS = ("B0D8W1YVBX", "B0F7XPYCSJ")


def sample_bytes(asin: str) -> bytes:
    """The raw body of a real /product sample shipped in ``dealsd/samples/``."""
    return (resources.files("dealsd") / "samples" / f"product_{asin}.json").read_bytes()
