"""One gzip body from pieces compressed separately, so cached pieces stay compressed.

A 100-product answer is ~12 MB of JSON; compressing it per request would make
the simulator the bottleneck of the benchmarks that push such answers through
it. Each piece is instead deflated once on its own and ended with a full
flush (byte-aligned, no reference to anything before it), so any sequence of
pieces is a valid deflate stream: the request only concatenates, adds the
final block, and computes the CRC (fast, and all zlib offers: it has no
crc32_combine).
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterable
from dataclasses import dataclass

_HEADER = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"  # deflate, no name, no mtime
_FINAL_BLOCK = b"\x03\x00"  # an empty final block: what flush() emits on no input


@dataclass(frozen=True, slots=True)
class Piece:
    data: bytes
    deflated: bytes


def deflate(data: bytes, level: int = 1) -> bytes:
    comp = zlib.compressobj(level, zlib.DEFLATED, -zlib.MAX_WBITS)
    return comp.compress(data) + comp.flush(zlib.Z_FULL_FLUSH)


def piece(data: bytes, level: int = 1) -> Piece:
    return Piece(data, deflate(data, level))


def gzip_join(pieces: Iterable[Piece]) -> bytes:
    """The gzip member whose content is the pieces' data, in order."""
    crc = 0
    size = 0
    parts = [_HEADER]
    for p in pieces:
        crc = zlib.crc32(p.data, crc)
        size += len(p.data)
        parts.append(p.deflated)
    parts.append(_FINAL_BLOCK)
    parts.append(struct.pack("<II", crc & 0xFFFFFFFF, size & 0xFFFFFFFF))
    return b"".join(parts)
