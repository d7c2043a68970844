"""A batch run a few images at a time: the program of one chunk of the batch, derived from a
loaded image, so that each op finds its input still in the cache the previous op wrote it to.

An image compiled for batch N runs each op over all N images before the next op starts; at
MobileNet v2 sizes every tensor of a batch of 64 is tens of megabytes, so each op reads its
input back from memory. Every op of a convolutional network treats the images of a batch
alike and independently, so the same op list at batch c (a divisor of N) run N / c times, on
slices of the inputs and outputs, gives the same bytes with a working set of one chunk.

`chunk_program` derives that program from the parsed image: the same ops with their batch
parameter scaled (an op kind is split only where its parameters say how: a batch count, an
element count of a contiguous batch-major tensor), the same tensors with c images each, and
a new static memory plan for them. The derived image goes through the loader's per-op
validation (validate.py) like any image, so a rule that got a size wrong is refused there
and the batch simply runs whole. Nothing is written to the artifact: the image format and
its digest are unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from .artifact_format import Image, TensorEntry
from .exceptions import ArtifactRejected
from .memory_plan import plan_memory
from .opset import PARAMS, Kind
from .program import Op, Program, Tensor

# The arena bytes a chunk may plan for: about one core's L2 cache (1-2 MB on current x86),
# or as many as the constants (weights) take where they are larger: every chunk reads all the
# weights again, so a network heavy in weights (ResNet-18: 11.8 MB of them against 1 MB of
# activations per image) keeps more images per chunk to reuse them (measured on this
# machine: ResNet-18 at batch 64 one image at a time 5% slower than the whole batch, eight
# at a time 1% faster; MobileNet v2, 3.8 MB of weights, 10% faster one or two at a time).
CHUNK_ARENA_BYTES = 1 << 20


@dataclass(frozen=True)
class ChunkProgram:
    """The program of `images` images of a batch of `batch`, as a parsed image."""

    image: Image
    images: int
    batch: int


def _batch(image: Image) -> int | None:
    """N when every tensor has a leading batch dimension N > 1, else None."""
    firsts = {t.shape[0] if t.shape else None for t in image.tensors}
    if len(firsts) != 1:
        return None
    (n,) = firsts
    return n if n and n > 1 else None


def _scaled_params(kind: Kind, p: dict[str, int], in_elems: int, n: int,
                   c: int) -> dict[str, int] | None:
    """The op's parameters for c of its n images, or None where the kind's rule does not
    apply. Counts scale by c / n; each must be a whole number of images."""

    def scale(name: str) -> bool:
        if p[name] % n:
            return False
        p[name] = p[name] // n * c
        return True

    p = dict(p)
    if kind in (Kind.CONV, Kind.MAXPOOL, Kind.AVGPOOL):
        if p["N"] != n:
            return None
        p["N"] = c
    elif kind in (Kind.QUANTIZE, Kind.DEQUANTIZE, Kind.CLAMP):
        if not scale("n"):
            return None
    elif kind == Kind.COPY:
        if not scale("nbytes"):
            return None
    elif kind == Kind.GEMM:
        if not scale("M"):
            return None
    elif kind == Kind.GLOBALAVGPOOL:
        if not scale("NC"):
            return None
    elif kind == Kind.ADD:
        # one contiguous span, elementwise on both sides
        if (p["outer"], p["mid"], p["a_si"], p["b_si"]) != (1, 1, 1, 1) or not scale("inner"):
            return None
        for name in ("a_so", "a_sm", "b_so", "b_sm"):
            p[name] = p["inner"]
    elif kind == Kind.REDUCE_MEAN:
        # kept positions along the last kept axis only, which spans the whole input
        if p["k0"] != 1 or p["k1"] != 1 or p["k2"] * p["ks2"] != in_elems or not scale("k2"):
            return None
    else:
        return None
    return p


def chunk_program(image: Image, where: str) -> ChunkProgram | None:
    """The chunk program of `image`, or None when it runs whole: a batch of 1, an op or a
    tensor without a batch rule, a batch small enough for the cache anyway, or a derived
    program the per-op validation refuses."""
    from .validate import validate_ops

    n = _batch(image)
    if n is None:
        return None
    per_image = image.arena_bytes / n
    limit = max(CHUNK_ARENA_BYTES, len(image.data))
    c = max((d for d in range(1, n + 1) if n % d == 0 and d * per_image <= limit), default=1)
    if c == n:
        return None
    tensors = [Tensor(t.name, t.dtype, (c,) + tuple(t.shape[1:])) for t in image.tensors]
    ops, ints = [], []
    for op in image.ops:
        names = PARAMS[op.kind]
        first = image.tensors[op.inputs[0]] if op.inputs else None
        in_elems = first.nbytes // np.dtype(first.dtype).itemsize if first else 0
        p = _scaled_params(op.kind, dict(zip(names, op.ints)), in_elems, n, c)
        if p is None:
            return None
        ints.append(tuple(p[k] for k in names) + tuple(op.ints[len(names):]))
        ops.append(Op(int(op.kind), op.name, op.op_type, op.inputs, op.output, op.consts,
                      scratch=op.scratch))
    plan = plan_memory(Program(image.requant, tensors, [], ops, list(image.inputs),
                               list(image.outputs)))
    entries = tuple(TensorEntry(t.name, t.dtype, t.shape, off, t.nbytes)
                    for t, off in zip(tensors, plan.offsets))
    derived = replace(image, tensors=entries,
                      ops=tuple(replace(op, ints=i) for op, i in zip(image.ops, ints)),
                      arena_bytes=plan.arena_bytes)
    try:
        validate_ops(derived, where)
    except ArtifactRejected:
        return None
    return ChunkProgram(derived, c, n)
