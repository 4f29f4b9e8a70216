"""Keepa: the HTTP client, its errors, the /product parameters and the payload types.

``from dealsd.keepa import KeepaClient, ...`` is the public path; the modules:
``client`` (one session, the endpoints, every envelope to the scheduler),
``retry`` (what a failed attempt means: another attempt after a backoff, or
which error), ``errors`` (what a failed call raises), ``params`` (what a
/product request asks for and costs), ``payloads`` (Keepa's objects, decoded
item by item).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from dealsd.keepa.params import (
    DEAL_COST,
    DEAL_PAGE_SIZE,
    MAX_ASINS,
    ProductParams,
    estimate_product_cost,
)
from dealsd.redact import redact

if TYPE_CHECKING:
    from dealsd.keepa.client import DealPage, KeepaClient, ProductPage
    from dealsd.keepa.errors import (
        AccessDenied,
        KeepaError,
        RateLimited,
        RequestRejected,
        TransientError,
    )
    from dealsd.keepa.errors import describe_transport as _describe

# The client and its errors import aiohttp (a third of a second): loaded on
# first use, so what only reads payloads (`dealsd status`, `dealsd deals`,
# the mapping) does not pay for the HTTP stack.
_LAZY = {
    "DealPage": ("client", "DealPage"),
    "KeepaClient": ("client", "KeepaClient"),
    "ProductPage": ("client", "ProductPage"),
    "AccessDenied": ("errors", "AccessDenied"),
    "KeepaError": ("errors", "KeepaError"),
    "RateLimited": ("errors", "RateLimited"),
    "RequestRejected": ("errors", "RequestRejected"),
    "TransientError": ("errors", "TransientError"),
    "_describe": ("errors", "describe_transport"),
}


def __getattr__(name: str) -> Any:
    try:
        module, attr = _LAZY[name]
    except KeyError:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
    return getattr(importlib.import_module(f"{__name__}.{module}"), attr)


__all__ = [
    "DEAL_COST",
    "DEAL_PAGE_SIZE",
    "MAX_ASINS",
    "AccessDenied",
    "DealPage",
    "KeepaClient",
    "KeepaError",
    "ProductPage",
    "ProductParams",
    "RateLimited",
    "RequestRejected",
    "TransientError",
    "_describe",
    "estimate_product_cost",
    "redact",
]
