"""The firmware image `model.i8r`: a versioned binary file, written and read here.

Layout (all integers little-endian):

    header (128 bytes)
      0   8s   magic b"INT8REF\\0"
      8   u16  format version (3, see "Versions" below)
      10  u16  header size (128)
      12  u8   requantization mode (0 ort, 1 fixed-point)
      13  3x   reserved, zero
      16  3u16 minimum firmware revision (major, minor, patch)
      22  u16  reserved, zero
      24  u64  payload size in bytes (the file is exactly 128 + payload size)
      32  32s  sha256 over header bytes [0, 32) + [64, 128) + payload (every byte but itself)
      64  24s  compiler name, UTF-8, NUL padded
      88  16s  compiler version, UTF-8, NUL padded
      104 24x  reserved, zero
    payload
      tensors   u32 count, then per tensor: u8 dtype, u8 ndim, u16 name length, u64 arena
                offset, u64 byte size, u32 dims[ndim], name
      inputs    u32 count, u32 tensor ids;  outputs: the same
      consts    u32 count, then per constant: u8 dtype, u8 ndim, u16 zero, u64 data offset,
                u64 byte size, u32 dims[ndim]
      ops       u32 count, then per op: u16 kind, u8 inputs, u8 consts, u8 ints, u8 floats,
                u16 name length, u16 op-type length, u16 zero, u32 scratch bytes,
                u32 input ids, u32 output id, u32 const ids, i64 ints, f32 floats, name,
                op type
      memory    u64 arena bytes, u64 scratch bytes
      data      u64 size, then the constants' bytes (each at a 16-byte aligned offset)

Versions. The record layout has not changed since version 1; what an op's parameters and
constants mean has:

    1  tensors are int8, uint8, int32 or float32; Conv and Gemm weights are int16 `w - zp`
       rows (int8-ref 0.1, firmware 1.0.0)
    2  version 1 with int16 tensors (dtype code 3) and int16 kernels (firmware 1.1.0)
    3  Conv and Gemm weights packed for the vector kernels, their bias folded, a fifth
       constant (the input-sum factor) and Conv's path parameters (ops/conv.py, ops/gemm.py,
       kernels/i8r_qgemm.h); int16 tensors as in version 2 (firmware 2.0.0)

This reader (firmware 2.0.0) reads version 3 only. An image of an older version is refused
naming what it is ("format version 2 (... firmware 1.1.0) is no longer read ...: recompile").

The reader never trusts a number: every count, offset, length, dimension and enum is checked
against what remains of the file or against the buffers it indexes, and each op's parameters
are checked against its tensors' sizes (validate.py) before the engine sees them. Anything
wrong raises ArtifactRejected; a newer required firmware raises FirmwareTooOld.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass

import numpy as np

from .exceptions import ArtifactRejected, FirmwareTooOld
from .kernel_abi import MAX_FLOATS, MAX_INTS
from .opset import N_CONSTS, N_INPUTS, PARAMS, Kind

MAGIC = b"INT8REF\0"
FORMAT_VERSION = 3  # the version this module writes and reads
READABLE_VERSIONS = (3,)
# the versions this reader refuses by name: what their images hold
RETIRED_VERSIONS = {
    1: "unpacked int16 Conv/Gemm weights, int8-ref 0.1, firmware 1.0.0",
    2: "unpacked int16 Conv/Gemm weights with int16 tensors, int8-ref 0.1, firmware 1.1.0",
}
HEADER = struct.Struct("<8sHHB3xHHHHQ32s24s16s24x")
assert HEADER.size == 128
DTYPES = {1: "int8", 2: "uint8", 3: "int16", 4: "int32", 5: "float32"}
DTYPE_CODES = {v: k for k, v in DTYPES.items()}
ITEMSIZE = {"int8": 1, "uint8": 1, "int16": 2, "int32": 4, "float32": 4}
MODES = {0: "ort", 1: "fixed-point"}
MAX_DIMS = 8
MAX_DIM = 1 << 31
MAX_MEMORY = 1 << 30  # arena + scratch the simulated firmware will allocate


def parse_revision(text: str) -> tuple[int, int, int]:
    parts = text.split(".")
    if len(parts) != 3 or not all(p.isdigit() for p in parts):
        raise ValueError(f"firmware revision must be MAJOR.MINOR.PATCH, got {text!r}")
    return tuple(int(p) for p in parts)  # type: ignore[return-value]


@dataclass(frozen=True)
class TensorEntry:
    name: str
    dtype: str
    shape: tuple[int, ...]
    offset: int
    nbytes: int


@dataclass(frozen=True)
class ConstEntry:
    dtype: str
    shape: tuple[int, ...]
    offset: int
    nbytes: int


@dataclass(frozen=True)
class OpEntry:
    kind: Kind
    name: str
    op_type: str
    inputs: tuple[int, ...]
    output: int
    consts: tuple[int, ...]
    ints: tuple[int, ...]
    floats: tuple[float, ...]
    scratch: int


@dataclass(frozen=True)
class Image:
    """A parsed, validated firmware image."""

    compiler: str
    compiler_version: str
    requant: str
    min_firmware: str
    digest: str
    tensors: tuple[TensorEntry, ...]
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]
    consts: tuple[ConstEntry, ...]
    ops: tuple[OpEntry, ...]
    arena_bytes: int
    scratch_bytes: int
    data: bytes


# -- writer ------------------------------------------------------------------------------
def write_image(*, compiler: str, compiler_version: str, requant: str, min_firmware: str,
                tensors, offsets, inputs, outputs, consts, ops, arena_bytes: int,
                scratch_bytes: int) -> bytes:
    """Serialise a lowered, planned program. Deterministic: same inputs, same bytes."""
    p = bytearray()
    p += struct.pack("<I", len(tensors))
    for t, off in zip(tensors, offsets):
        name = t.name.encode()
        p += struct.pack("<BBHQQ", DTYPE_CODES[t.dtype], len(t.shape), len(name), off,
                         t.nbytes)
        p += struct.pack(f"<{len(t.shape)}I", *t.shape) + name
    for ids in (inputs, outputs):
        p += struct.pack(f"<I{len(ids)}I", len(ids), *ids)
    data = bytearray()
    p += struct.pack("<I", len(consts))
    for c in consts:
        c = np.ascontiguousarray(c)
        dtype = str(c.dtype)
        off = len(data)
        raw = c.tobytes()
        data += raw + b"\0" * ((-len(raw)) % 16)
        shape = c.shape if c.ndim else (1,)
        p += struct.pack("<BBHQQ", DTYPE_CODES[dtype], len(shape), 0, off, len(raw))
        p += struct.pack(f"<{len(shape)}I", *shape)
    p += struct.pack("<I", len(ops))
    for op in ops:
        layout = PARAMS[op.kind]
        ints = [int(op.ints[k]) for k in layout]
        name, otype = op.node.encode(), op.op_type.encode()
        p += struct.pack("<HBBBBHHHI", int(op.kind), len(op.inputs), len(op.consts), len(ints),
                         len(op.floats), len(name), len(otype), 0, op.scratch)
        p += struct.pack(f"<{len(op.inputs)}II{len(op.consts)}I", *op.inputs, op.output,
                         *op.consts)
        p += struct.pack(f"<{len(ints)}q{len(op.floats)}f", *ints, *op.floats)
        p += name + otype
    p += struct.pack("<QQ", arena_bytes, scratch_bytes)
    p += struct.pack("<Q", len(data)) + data
    payload = bytes(p)
    fw = parse_revision(min_firmware)
    mode = {v: k for k, v in MODES.items()}[requant]
    version = FORMAT_VERSION
    header = bytearray(HEADER.pack(MAGIC, version, HEADER.size, mode, *fw, 0,
                                   len(payload), b"\0" * 32, compiler.encode()[:24],
                                   compiler_version.encode()[:16]))
    header[32:64] = image_digest(bytes(header), payload)
    return bytes(header) + payload


def image_digest(header: bytes, payload: bytes) -> bytes:
    """sha256 of every byte of the image except the digest field itself."""
    h = hashlib.sha256()
    h.update(header[:32])
    h.update(header[64:HEADER.size])
    h.update(payload)
    return h.digest()


# -- reader ------------------------------------------------------------------------------
class _Cursor:
    def __init__(self, buf: bytes, where: str) -> None:
        self.buf, self.pos, self.where = buf, 0, where

    def fail(self, problem: str):
        raise ArtifactRejected(self.where, problem)

    def take(self, fmt: str, what: str):
        size = struct.calcsize(fmt)
        if size > len(self.buf) - self.pos:
            self.fail(f"truncated: {what} needs {size} bytes at payload offset {self.pos}, "
                      f"{len(self.buf) - self.pos} remain")
        vals = struct.unpack_from(fmt, self.buf, self.pos)
        self.pos += size
        return vals

    def count(self, what: str, min_record: int) -> int:
        (n,) = self.take("<I", f"{what} count")
        if n * min_record > len(self.buf) - self.pos:
            self.fail(f"{what} count {n} does not fit in the remaining "
                      f"{len(self.buf) - self.pos} bytes")
        return n

    def text(self, n: int, what: str) -> str:
        (raw,) = self.take(f"<{n}s", what)
        try:
            return raw.decode()
        except UnicodeDecodeError:
            self.fail(f"{what} is not valid UTF-8")


def _shape(c: _Cursor, ndim: int, what: str) -> tuple[int, ...]:
    if ndim < 1 or ndim > MAX_DIMS:
        c.fail(f"{what} has {ndim} dimensions (1..{MAX_DIMS} allowed)")
    dims = c.take(f"<{ndim}I", f"{what} dims")
    if any(d <= 0 or d >= MAX_DIM for d in dims):
        c.fail(f"{what} has an invalid dimension in {dims}")
    return tuple(dims)


def read_image(buf: bytes, where: str = "<memory>", firmware_revision: str | None = None) -> Image:
    """Parse and validate a firmware image for a runtime at `firmware_revision` (default: the
    simulated firmware's, `_kernels.FIRMWARE_REVISION`). Raises ArtifactRejected /
    FirmwareTooOld."""
    if firmware_revision is None:
        from ._kernels import FIRMWARE_REVISION as firmware_revision
    if len(buf) < HEADER.size:
        raise ArtifactRejected(where, f"truncated: {len(buf)} bytes, the header alone is "
                                      f"{HEADER.size}")
    (magic, version, hsize, mode, fa, fb, fc, _r, psize, digest, cname, cver) = \
        HEADER.unpack_from(buf, 0)
    if magic != MAGIC:
        raise ArtifactRejected(where, f"bad magic {magic!r}, expected {MAGIC!r}")
    if version in RETIRED_VERSIONS:
        raise ArtifactRejected(where, f"format version {version} ({RETIRED_VERSIONS[version]}) "
                                      f"is no longer read: firmware {firmware_revision} reads "
                                      f"format {FORMAT_VERSION}, whose Conv and Gemm weights "
                                      "are packed at compile time; recompile the model")
    if version not in READABLE_VERSIONS:
        raise ArtifactRejected(where, f"format version {version} is not supported "
                                      f"(this firmware reads versions {READABLE_VERSIONS})")
    if hsize != HEADER.size:
        raise ArtifactRejected(where, f"header size {hsize}, expected {HEADER.size}")
    if mode not in MODES:
        raise ArtifactRejected(where, f"unknown requantization mode {mode}")
    if psize != len(buf) - HEADER.size:
        what = "truncated" if psize > len(buf) - HEADER.size else "oversized"
        raise ArtifactRejected(where, f"{what}: header says {psize} payload bytes, file has "
                                      f"{len(buf) - HEADER.size}")
    payload = bytes(buf[HEADER.size:])
    actual = image_digest(bytes(buf[:HEADER.size]), payload)
    if actual != digest:
        raise ArtifactRejected(where, f"digest mismatch: header says {digest.hex()[:16]}..., "
                                      f"content hashes to {actual.hex()[:16]}... (corrupted)")
    need = (fa, fb, fc)
    have = parse_revision(firmware_revision)
    if need > have:
        raise FirmwareTooOld(where, f"{fa}.{fb}.{fc}", firmware_revision)
    try:
        compiler = cname.rstrip(b"\0").decode()
        compiler_version = cver.rstrip(b"\0").decode()
    except UnicodeDecodeError:
        raise ArtifactRejected(where, "compiler name or version is not UTF-8") from None

    c = _Cursor(payload, where)
    tensors = []
    for i in range(c.count("tensor", 24)):
        code, ndim, nlen, off, nbytes = c.take("<BBHQQ", f"tensor {i}")
        if code not in DTYPES:
            c.fail(f"tensor {i} has unknown dtype code {code}")
        shape = _shape(c, ndim, f"tensor {i}")
        name = c.text(nlen, f"tensor {i} name")
        dtype = DTYPES[code]
        if int(np.prod(shape, dtype=object)) * ITEMSIZE[dtype] != nbytes:
            c.fail(f"tensor {name!r}: byte size {nbytes} does not match {dtype}{list(shape)}")
        tensors.append(TensorEntry(name, dtype, shape, off, nbytes))
    ios = []
    for what in ("input", "output"):
        n = c.count(what, 4)
        ids = c.take(f"<{n}I", f"{what} ids")
        if any(t >= len(tensors) for t in ids) or len(set(ids)) != len(ids):
            c.fail(f"{what} tensor ids {ids} are invalid")
        ios.append(tuple(ids))
    consts = []
    for i in range(c.count("constant", 24)):
        code, ndim, _z, off, nbytes = c.take("<BBHQQ", f"constant {i}")
        if code not in DTYPES:
            c.fail(f"constant {i} has unknown dtype code {code}")
        shape = _shape(c, ndim, f"constant {i}")
        dtype = DTYPES[code]
        if int(np.prod(shape, dtype=object)) * ITEMSIZE[dtype] != nbytes:
            c.fail(f"constant {i}: byte size {nbytes} does not match {dtype}{list(shape)}")
        consts.append(ConstEntry(dtype, shape, off, nbytes))
    ops = []
    for i in range(c.count("op", 20)):
        kind, nin, ncon, nint, nflt, nlen, tlen, _z, scratch = c.take("<HBBBBHHHI", f"op {i}")
        try:
            kind = Kind(kind)
        except ValueError:
            c.fail(f"op {i} has unknown kind {kind}")
        if nin != N_INPUTS[kind]:
            c.fail(f"op {i} ({kind.name}) has {nin} inputs, expected {N_INPUTS[kind]}")
        lo, hi = N_CONSTS[kind]
        if not lo <= ncon <= hi:
            c.fail(f"op {i} ({kind.name}) has {ncon} constants, expected {lo}..{hi}")
        if nint != len(PARAMS[kind]) or nint > MAX_INTS:
            c.fail(f"op {i} ({kind.name}) has {nint} integer parameters, expected "
                   f"{len(PARAMS[kind])}")
        if nflt > MAX_FLOATS:
            c.fail(f"op {i} has {nflt} float parameters (max {MAX_FLOATS})")
        ins = c.take(f"<{nin}I", f"op {i} inputs")
        (out,) = c.take("<I", f"op {i} output")
        cids = c.take(f"<{ncon}I", f"op {i} constants")
        ints = c.take(f"<{nint}q", f"op {i} ints")
        floats = c.take(f"<{nflt}f", f"op {i} floats")
        name = c.text(nlen, f"op {i} name")
        otype = c.text(tlen, f"op {i} op type")
        if any(t >= len(tensors) for t in ins) or out >= len(tensors):
            c.fail(f"op {i} ({name!r}) refers to a tensor that does not exist")
        if any(k >= len(consts) for k in cids):
            c.fail(f"op {i} ({name!r}) refers to a constant that does not exist")
        ops.append(OpEntry(kind, name, otype, tuple(ins), out, tuple(cids), tuple(ints),
                           tuple(floats), scratch))
    arena_bytes, scratch_bytes = c.take("<QQ", "memory plan")
    (dsize,) = c.take("<Q", "data size")
    if dsize != len(payload) - c.pos:
        c.fail(f"data section says {dsize} bytes, {len(payload) - c.pos} remain")
    data = payload[c.pos:]
    if arena_bytes + scratch_bytes > MAX_MEMORY:
        c.fail(f"memory plan of {arena_bytes} + {scratch_bytes} bytes exceeds the firmware's "
               f"{MAX_MEMORY} bytes")
    need_arena = max((t.offset + t.nbytes for t in tensors), default=0)
    need_scratch = max((op.scratch for op in ops), default=0)
    if arena_bytes > max(16, (need_arena + 15) // 16 * 16) or \
            scratch_bytes > max(16, (need_scratch + 15) // 16 * 16):
        c.fail(f"memory plan ({arena_bytes} + {scratch_bytes} bytes) is larger than its "
               f"tensors ({need_arena}) and scratch ({need_scratch}) need")
    for t in tensors:
        if t.offset + t.nbytes > arena_bytes:
            c.fail(f"tensor {t.name!r} at [{t.offset}, {t.offset + t.nbytes}) lies outside "
                   f"the {arena_bytes}-byte arena")
    for k, ce in enumerate(consts):
        if ce.offset + ce.nbytes > dsize:
            c.fail(f"constant {k} at [{ce.offset}, {ce.offset + ce.nbytes}) lies outside the "
                   f"{dsize}-byte data section")
    for op in ops:
        if op.scratch > scratch_bytes:
            c.fail(f"op {op.name!r} needs {op.scratch} scratch bytes, plan has {scratch_bytes}")
    image = Image(compiler, compiler_version, MODES[mode], f"{fa}.{fb}.{fc}", digest.hex(),
                  tuple(tensors), ios[0], ios[1], tuple(consts), tuple(ops), arena_bytes,
                  scratch_bytes, data)
    from .validate import validate_ops

    validate_ops(image, where)
    return image
