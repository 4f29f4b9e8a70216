"""Keepa: the HTTP client, its errors, the /product parameters and the payload types.

``from dealsd.keepa import KeepaClient, ...`` is the public path; the modules:
``client`` (one session, the endpoints, every envelope to the scheduler),
``errors`` (what a failed call raises), ``params`` (what a /product request
asks for and costs), ``payloads`` (Keepa's objects, decoded item by item).
"""

from __future__ import annotations

from dealsd.keepa.client import DealPage, KeepaClient, ProductPage
from dealsd.keepa.errors import (
    AccessDenied,
    KeepaError,
    RateLimited,
    RequestRejected,
    TransientError,
)
from dealsd.keepa.errors import describe_transport as _describe
from dealsd.keepa.params import (
    DEAL_COST,
    DEAL_PAGE_SIZE,
    MAX_ASINS,
    ProductParams,
    estimate_product_cost,
)
from dealsd.redact import redact

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
