"""Injected faults: the dice, their counts, and the broken answers themselves.

Deliberately broken answers (a reset, a truncated body, an HTML page) are the
faults a client must survive; which ones are charged follows where the fault
happens: a proxy's HTML page or a 5xx is refused before Keepa did the work
(free), a truncated body or a hang is a request Keepa executed and billed
whose answer got lost on the way. So the server (``server.py``) decides where
in a request each may strike, and this module only rolls and breaks.

One generator, seeded from the options' seed, decides every fault (the
request's and each lying item's) in the order they are rolled; how an item
lies is drawn from a second one. Rates are read from the options as a request
is answered, so a ``control(faults=...)`` applies from the next request on.
"""

from __future__ import annotations

import random
from collections import Counter

from aiohttp import web

from dealsd.simulator import api
from dealsd.simulator.gzjoin import Piece, piece
from dealsd.simulator.options import SimOptions

HTML_PAGE = b"<html><head><title>502 Bad Gateway</title></head><body>bad gateway</body></html>"


class FaultInjector:
    """The fault dice for one simulator; ``injected`` counts what struck, by kind."""

    def __init__(self, options: SimOptions) -> None:
        self._options = options
        self.injected: Counter[str] = Counter()
        self._rng = random.Random(f"faults:{options.seed}")
        self._item_rng = random.Random(f"items:{options.seed}")

    def roll(self, kind: str, rate: float) -> bool:
        """Whether the fault ``kind`` strikes now (counted when it does)."""
        if rate > 0 and self._rng.random() < rate:
            self.injected[kind] += 1
            return True
        return False

    def outage(self) -> bool:
        """One answer during an outage (counted): True a reset, False a 503."""
        self.injected["outage"] += 1
        return self._rng.random() < 0.5

    def error_status(self) -> int:
        """Which 5xx a server fault answers."""
        return self._rng.choice((500, 502, 503))

    # lying items ----------------------------------------------------------------
    def deal(self, data: bytes) -> bytes:
        """The deal as served: now and then one that lies (``Faults.bad_items``)."""
        if self.roll("bad_items", self._options.faults.bad_items):
            return api.corrupt_deal(data, self._item_rng)
        return data

    def product(self, made: Piece) -> Piece:
        """The product as served: now and then one that lies (``Faults.bad_items``)."""
        if self.roll("bad_items", self._options.faults.bad_items):
            return piece(api.corrupt_product(made.data, self._item_rng))
        return made

    # broken answers -------------------------------------------------------------
    @staticmethod
    def html_page() -> web.Response:
        """What a proxy in front of Keepa sends: a 200 that is not JSON."""
        return web.Response(status=200, body=HTML_PAGE, content_type="text/html")

    @staticmethod
    def reset(request: web.Request) -> str:
        """Reset the connection: the client gets no answer at all."""
        if request.transport is not None:
            request.transport.abort()  # no status line, no body: a reset
        return "reset"

    @staticmethod
    async def truncate(request: web.Request, full: web.Response) -> str:
        """Send half of ``full``'s body, then drop the connection."""
        body = bytes(full.body) if isinstance(full.body, bytes | bytearray) else b""
        resp = web.StreamResponse(status=200, headers=full.headers)
        resp.content_length = len(body)  # promise all of it, send half
        await resp.prepare(request)
        await resp.write(body[: len(body) // 2])
        if request.transport is not None:
            request.transport.abort()
        return "truncated"
