"""The `.acme` blob the toolchain writes and the runtime reads.

Layout (little endian): magic b"ACMENPU\\0" (8 bytes), format version u32, header length u32,
header (UTF-8 JSON, keys sorted), payload sha256 (32 bytes), payload (the mapped ONNX graph).
"""

from __future__ import annotations

import hashlib
import json
import struct

MAGIC = b"ACMENPU\0"
FORMAT_VERSION = 1
_PREFIX = struct.Struct("<8sII")


class BlobError(ValueError):
    """A blob that is truncated, corrupted or of another format version."""


def pack(header: dict, payload: bytes) -> bytes:
    text = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    return _PREFIX.pack(MAGIC, FORMAT_VERSION, len(text)) + text + hashlib.sha256(payload).digest() + payload


def unpack(data: bytes) -> tuple[dict, bytes]:
    if len(data) < _PREFIX.size:
        raise BlobError(f"expected at least {_PREFIX.size} bytes, found {len(data)}")
    magic, version, length = _PREFIX.unpack_from(data)
    if magic != MAGIC:
        raise BlobError(f"expected magic {MAGIC!r}, found {magic!r}")
    if version != FORMAT_VERSION:
        raise BlobError(f"expected format version {FORMAT_VERSION}, found {version}")
    start = _PREFIX.size + length
    if start + 32 > len(data):
        raise BlobError("truncated header")
    header = json.loads(data[_PREFIX.size:start])
    digest, payload = data[start:start + 32], data[start + 32:]
    if hashlib.sha256(payload).digest() != digest:
        raise BlobError("payload digest mismatch")
    return header, payload
