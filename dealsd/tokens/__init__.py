"""The token scheduler: one per key, shared by every worker.

``scheduler`` keeps the gate: grants, tickets in flight, the scout and the
probe; ``fairness`` whose turn it is (start-time fair queuing by weight);
``costs`` what each consumer's requests really cost (batch sizing);
``balance`` predicts the key's balance from Keepa's envelopes.
"""

from __future__ import annotations

from dealsd.tokens.scheduler import TokenScheduler, TokenSnapshot

__all__ = ["TokenScheduler", "TokenSnapshot"]
