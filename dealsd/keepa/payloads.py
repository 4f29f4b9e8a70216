"""Keepa's JSON objects as typed values, and their decoding.

Only the fields dealsd uses are declared; msgspec skips the rest without
building them, which keeps a 600 KB product cheap. Each item of a list is
decoded on its own from its raw bytes, so one malformed item is skipped and
counted with its reason while its neighbours survive, and the raw bytes (the
object exactly as Keepa sent it) are kept for storage.

Keepa's conventions: prices are integer cents; -1 means no data and -2 not
available. Turning those into NULL is the mapping's job (``dealsd.mapping``),
not the decoder's: the decoder keeps what was sent.

A product is paid for, so it is never lost to one odd field: when the strict
decode fails (a JSON ``null`` or a string where a number is declared), the
product is decoded again field by field (``_repair``). A field that cannot be
read gets its default (-1, an empty list, None: no data), an array keeps its
readable entries (an unreadable one becomes -1), and the field's name is kept
in ``Item.unreadable`` so the oddity is counted and logged. Only a product
without a readable ``asin`` is skipped: nothing could be stored for it. The
strict decode stays the fast path: the repair runs for odd products only.
"""

from __future__ import annotations

import types
import typing
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import msgspec

# Price-type indexes (docs/keepa.md, "Prices and arrays").
AMAZON, NEW, USED, SALES = 0, 1, 2, 3
NEW_FBM_SHIPPING, NEW_FBA = 7, 10
COUNT_NEW, COUNT_USED = 11, 12
BUY_BOX_SHIPPING = 18
USED_NEW_SHIPPING, USED_VERY_GOOD_SHIPPING, USED_GOOD_SHIPPING, USED_ACCEPTABLE_SHIPPING = (
    19, 20, 21, 22,
)  # fmt: skip
BUY_BOX_USED_SHIPPING = 32
COUNT_NEW_FBA, COUNT_NEW_FBM = 34, 35

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
    # avg[dateRange][priceType], kept undecoded: only the screen reads it
    # (mapping.screen, leniently, so an odd average never costs the deal), and
    # 144 numbers a deal decoded for every page cost what the page's other
    # fields cost together (bench/tokens.py).
    # (msgspec takes Raw alone, not in a union: an absent avg is JSON null.)
    avg: msgspec.Raw = msgspec.field(default_factory=lambda: msgspec.Raw(b"null"))


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
    out_of_stock_percentage90: list[int] = []


class Product(msgspec.Struct, frozen=True, rename="camel"):
    asin: str
    product_type: int = 0
    title: str | None = None
    root_category: int | None = None
    last_update: int = -1
    fba_fees: FbaFees | None = None
    referral_fee_percentage: float | None = None
    stats: Stats | None = None
    monthly_sold: int | None = None
    package_weight: int | None = None  # grams; 0 or -1: unknown
    binding: str | None = None
    publication_date: int | None = None  # YYYY, YYYYMM or YYYYMMDD; 0 or -1: unknown
    release_date: int | None = None


T = TypeVar("T")
S = TypeVar("S", bound=msgspec.Struct)


@dataclass(frozen=True, slots=True)
class Item(Generic[T]):
    """A decoded object together with the exact bytes it was decoded from."""

    value: T
    raw: bytes
    # Fields that could not be read and were left as "no data" (see _repair).
    unreadable: tuple[str, ...] = ()


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


def _struct_type(annotation: Any) -> type[msgspec.Struct] | None:
    """The Struct in ``annotation`` (``Stats`` or ``Stats | None``), if any."""
    options = typing.get_args(annotation) if isinstance(annotation, types.UnionType) else (
        annotation,
    )
    for option in options:
        if isinstance(option, type) and issubclass(option, msgspec.Struct):
            return option
    return None


def _repair(typ: type[S], obj: dict[str, Any], prefix: str, unreadable: list[str]) -> S:
    """``typ`` from a generic JSON object, field by field; odd fields are recorded.

    Raises ValueError when a required field (one without a default) cannot be read.
    """
    kwargs: dict[str, Any] = {}
    for field in msgspec.structs.fields(typ):
        if field.encode_name not in obj:
            if field.required:
                raise ValueError(f"{prefix}{field.encode_name}: missing")
            continue
        value = obj[field.encode_name]
        try:
            kwargs[field.name] = msgspec.convert(value, field.type)
            continue
        except msgspec.ValidationError:
            pass
        name = prefix + field.encode_name
        inner = _struct_type(field.type)
        if inner is not None and isinstance(value, dict):
            kwargs[field.name] = _repair(inner, value, name + ".", unreadable)
            continue
        if field.required:
            raise ValueError(f"{name}: unreadable {type(value).__name__}")
        unreadable.append(name)
        if field.type == list[int] and isinstance(value, list):
            # The readable entries stay; an odd one is "no data" (-1).
            kwargs[field.name] = [v if type(v) is int else -1 for v in value]
    return typ(**kwargs)


def _decode_items(raws: list[msgspec.Raw], typ: type[T], *, repair: bool = False) -> Decoded[T]:
    decoder = msgspec.json.Decoder(typ)
    items: list[Item[T]] = []
    skipped: list[Skipped] = []
    for index, raw in enumerate(raws):
        data = bytes(raw)
        try:
            items.append(Item(decoder.decode(data), data))
            continue
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            reason = str(exc)
        if repair:
            repaired = _repaired(data, typ)
            if repaired is not None:
                items.append(repaired)
                continue
        try:
            asin = msgspec.json.decode(data, type=_AsinOnly).asin
        except (msgspec.DecodeError, msgspec.ValidationError):
            asin = None
        skipped.append(Skipped(index, asin, reason))
    return Decoded(items, skipped)


def _repaired(data: bytes, typ: type[T]) -> Item[T] | None:
    """The item decoded field by field, or None if even that is impossible."""
    try:
        obj = msgspec.json.decode(data)
    except msgspec.DecodeError:
        return None
    struct = _struct_type(typ)
    if struct is None or not isinstance(obj, dict):
        return None
    unreadable: list[str] = []
    try:
        value = _repair(struct, obj, "", unreadable)
    except ValueError:
        return None
    return Item(typing.cast(T, value), data, tuple(unreadable))


def _decode_body(body: bytes, typ: type[T], what: str) -> T:
    """A whole response body: one that does not decode is a PayloadError naming ``what``."""
    try:
        return msgspec.json.decode(body, type=typ)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise PayloadError(f"{what} response: {exc}") from None


def decode_deals(body: bytes) -> Decoded[Deal]:
    """Decode a /deal response body; raise PayloadError if the body itself is bad."""
    resp = _decode_body(body, _DealResponse, "deal")
    if resp.deals is None:
        raise PayloadError("deal response: no `deals` object")
    return _decode_items(resp.deals.dr, Deal)


def decode_products(body: bytes) -> Decoded[Product]:
    """Decode a /product response body; raise PayloadError if the body itself is bad."""
    resp = _decode_body(body, _ProductResponse, "product")
    if resp.products is None:
        raise PayloadError("product response: no `products` list")
    return _decode_items(resp.products, Product, repair=True)


def decode_token(body: bytes) -> Decoded[None]:
    """/token carries no items: its envelope is the answer (read by the caller)."""
    if decode_envelope(body)[0] is None:
        raise PayloadError("token response: no token envelope")
    return Decoded([], [])


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
