"""The token scheduler: one per key, shared by every worker.

``scheduler`` keeps turns, grants and tickets (start-time fair queuing by
weight); ``balance`` predicts the key's balance from Keepa's envelopes.
"""

from __future__ import annotations

from dealsd.tokens.scheduler import TokenScheduler, TokenSnapshot

__all__ = ["TokenScheduler", "TokenSnapshot"]
