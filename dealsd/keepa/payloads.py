"""Keepa's JSON objects as typed values, and their decoding.

Only the fields dealsd uses are declared; msgspec skips the rest without
building them, which keeps a 600 KB product cheap. Each item of a list is
decoded on its own from its raw bytes, so one malformed item is skipped and
counted with its reason while its neighbours survive, and the raw bytes (the
object exactly as Keepa sent it) are kept for storage.

Keepa's conventions: prices are integer cents; -1 means no data and -2 not
available. Turning those into NULL is the mapping's job (``dealsd.mapping``),
not the decoder's: the decoder keeps what was sent.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Generic, TypeVar

import msgspec

# Price-type indexes (docs/keepa.md, "Prices and arrays").
AMAZON, NEW, USED, SALES = 0, 1, 2, 3
COUNT_NEW, COUNT_USED = 11, 12
BUY_BOX_SHIPPING = 18

PRODUCT_TYPE_INVALID = 4
ROOT_CATEGORY_UNKNOWN = (0, 9_223_372_036_854_775_807)
IMAGE_BASE_URL = "https://m.media-amazon.com/images/I/"


class Envelope(msgspec.Struct, frozen=True, rename="camel"):
    """The token envelope Keepa puts on every response, errors included."""

    timestamp: int
    tokens_left: int
    refill_in: int  # ms until the next refill; -1 if the response did not say
    refill_rate: int
    tokens_consumed: int = 0
    token_flow_reduction: float = 0.0
    processing_time_in_ms: int = 0


class KeepaErrorBody(msgspec.Struct, frozen=True):
    type: str | None = None
    message: str | None = None
    details: str | None = None


class Deal(msgspec.Struct, frozen=True, rename="camel"):
    asin: str
    last_update: int
    current: list[int]
    title: str | None = None
    root_cat: int | None = None
    image: list[int] | None = None
    creation_date: int | None = None
    categories: list[int] | None = None


class FbaFees(msgspec.Struct, frozen=True, rename="camel"):
    pick_and_pack_fee: int | None = None


class Stats(msgspec.Struct, frozen=True, rename="camel"):
    current: list[int] = []
    avg30: list[int] = []
    avg90: list[int] = []
    avg180: list[int] = []
    avg365: list[int] = []
    sales_rank_drops30: int = -1
    sales_rank_drops90: int = -1
    sales_rank_drops180: int = -1
    sales_rank_drops365: int = -1
    buy_box_price: int | None = None


class Product(msgspec.Struct, frozen=True, rename="camel"):
    asin: str
    product_type: int = 0
    title: str | None = None
    root_category: int | None = None
    last_update: int = -1
    fba_fees: FbaFees | None = None
    referral_fee_percentage: float | None = None
    stats: Stats | None = None


T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Item(Generic[T]):
    """A decoded object together with the exact bytes it was decoded from."""

    value: T
    raw: bytes


@dataclass(frozen=True, slots=True)
class Skipped:
    """An item that could not be decoded: where it was and why."""

    index: int
    asin: str | None
    reason: str


@dataclass(frozen=True, slots=True)
class Decoded(Generic[T]):
    items: list[Item[T]]
    skipped: list[Skipped]


class _Envelope(msgspec.Struct):
    """The envelope, tolerant: used on bodies that may be errors or partial."""

    timestamp: int | None = None
    tokensLeft: int | None = None  # Keepa's field names, as sent
    refillIn: int | None = None
    refillRate: int | None = None
    tokensConsumed: int | None = None
    tokenFlowReduction: float | None = None
    processingTimeInMs: int | None = None
    error: KeepaErrorBody | None = None


class _DealsBody(msgspec.Struct):
    dr: list[msgspec.Raw] = []


class _DealResponse(msgspec.Struct):
    deals: _DealsBody | None = None


class _ProductResponse(msgspec.Struct):
    products: list[msgspec.Raw] | None = None


class _AsinOnly(msgspec.Struct):
    asin: str | None = None


class PayloadError(ValueError):
    """The body as a whole is not what Keepa sends (not JSON, wrong shape)."""


def decode_envelope(body: bytes) -> tuple[Envelope | None, KeepaErrorBody | None]:
    """Read the envelope and error of any response body; (None, None) if unreadable."""
    try:
        env = msgspec.json.decode(body, type=_Envelope)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None, None
    if env.tokensLeft is None or env.refillRate is None:
        return None, env.error
    envelope = Envelope(
        timestamp=env.timestamp or 0,
        tokens_left=env.tokensLeft,
        refill_in=env.refillIn if env.refillIn is not None else -1,
        refill_rate=env.refillRate,
        tokens_consumed=env.tokensConsumed or 0,
        token_flow_reduction=env.tokenFlowReduction or 0.0,
        processing_time_in_ms=env.processingTimeInMs or 0,
    )
    return envelope, env.error


def _decode_items(raws: list[msgspec.Raw], typ: type[T]) -> Decoded[T]:
    decoder = msgspec.json.Decoder(typ)
    items: list[Item[T]] = []
    skipped: list[Skipped] = []
    for index, raw in enumerate(raws):
        data = bytes(raw)
        try:
            items.append(Item(decoder.decode(data), data))
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            try:
                asin = msgspec.json.decode(data, type=_AsinOnly).asin
            except (msgspec.DecodeError, msgspec.ValidationError):
                asin = None
            skipped.append(Skipped(index, asin, str(exc)))
    return Decoded(items, skipped)


def decode_deals(body: bytes) -> Decoded[Deal]:
    """Decode a /deal response body; raise PayloadError if the body itself is bad."""
    try:
        resp = msgspec.json.decode(body, type=_DealResponse)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise PayloadError(f"deal response: {exc}") from None
    if resp.deals is None:
        raise PayloadError("deal response: no `deals` object")
    return _decode_items(resp.deals.dr, Deal)


def decode_products(body: bytes) -> Decoded[Product]:
    """Decode a /product response body; raise PayloadError if the body itself is bad."""
    try:
        resp = msgspec.json.decode(body, type=_ProductResponse)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise PayloadError(f"product response: {exc}") from None
    if resp.products is None:
        raise PayloadError("product response: no `products` list")
    return _decode_items(resp.products, Product)


class History(msgspec.Struct, frozen=True, rename="camel"):
    """A stored product's price histories, for charts (``product_history.payload``).

    Separate from ``Product``: the backfiller never decodes the ``csv``
    arrays (most of a 600 KB product), only a chart of one product does.
    """

    asin: str
    domain_id: int = 1
    title: str | None = None
    last_update: int = -1
    csv: list[list[int] | None] | None = None


def decode_history(raw: bytes) -> History:
    """One product object (as stored, decompressed); raise PayloadError if it is not one."""
    try:
        return msgspec.json.decode(raw, type=History)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise PayloadError(f"product history: {exc}") from None
