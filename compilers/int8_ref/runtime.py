"""The Runner: loads a firmware image into the Cython engine and runs it.

Inputs are copied into their arena slots (float32 graph inputs are quantized by the first
ops, as the graph's QuantizeLinear says), the engine runs the whole op list without the GIL,
and outputs are copied out. Arrays are keyed by the graph's tensor names, like the fp32 model.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from ..errors import InvalidInput
from . import _kernels
from .artifact_format import Image, read_image
from .batch_chunks import chunk_program
from .exceptions import ArtifactRejected
from .kernel_abi import MAX_CONSTS, MAX_FLOATS, MAX_INPUTS, MAX_INTS

FIRMWARE_REVISION = _kernels.FIRMWARE_REVISION


def load_image(path: Path) -> Image:
    """Read and validate the image at `path` (ArtifactRejected / FirmwareTooOld on failure)."""
    try:
        buf = Path(path).read_bytes()
    except OSError as exc:
        raise ArtifactRejected(str(path), f"cannot be read: {exc}") from exc
    return read_image(buf, str(path), FIRMWARE_REVISION)


def _engine(image: Image, arena: np.ndarray, consts: np.ndarray, scratch: np.ndarray,
            isa: str | None, threads: int):
    """The Cython engine running `image`'s ops on these buffers."""
    n = len(image.ops)
    kinds = np.zeros(n, np.int32)
    ints = np.zeros((n, MAX_INTS), np.int64)
    floats = np.zeros((n, MAX_FLOATS), np.float32)
    inp = np.zeros((n, MAX_INPUTS), np.int64)
    out = np.zeros(n, np.int64)
    cofs = np.zeros((n, MAX_CONSTS), np.int64)
    for i, op in enumerate(image.ops):
        kinds[i] = int(op.kind)
        ints[i, :len(op.ints)] = op.ints
        floats[i, :len(op.floats)] = op.floats
        for j, t in enumerate(op.inputs):
            inp[i, j] = image.tensors[t].offset
        out[i] = image.tensors[op.output].offset
        for j, k in enumerate(op.consts):
            cofs[i, j] = image.consts[k].offset
    return _kernels.Engine(arena, consts, scratch, kinds, ints, floats, inp, out, cofs, isa,
                           threads)


def _views(image: Image, arena: np.ndarray, tids) -> dict[str, np.ndarray]:
    """The tensors `tids` of `image` as arrays over `arena`, by name."""
    views = {}
    for tid in tids:
        t = image.tensors[tid]
        views[t.name] = np.frombuffer(arena.data, dtype=t.dtype,
                                      count=t.nbytes // np.dtype(t.dtype).itemsize,
                                      offset=t.offset).reshape(t.shape)
    return views


class Int8Runner:
    """A loaded artifact. `run(dict[str, ndarray]) -> dict[str, ndarray]`.

    `threads`: worker threads the Conv and Gemm kernels split output channels over (the
    results are the same bytes for any count). `isa`: the instruction-set path of the vector
    kernels, one of `_kernels.supported_isas()`; None takes the best this CPU runs (capped by
    TAPEOUT_INT8REF_ISA). Every path gives the same bytes too; tests force each one.
    `chunks`: run a batch a few images at a time where the program allows it
    (batch_chunks.py; the same bytes as the whole batch at once, which False forces).

    Raises:
        ValueError: an instruction set this build or CPU does not run, or threads < 1.
    """

    def __init__(self, image: Image, threads: int = 1, isa: str | None = None,
                 chunks: bool = True) -> None:
        self.image = image
        self._arena = np.zeros(image.arena_bytes + 64, np.uint8)
        consts = np.zeros(max(len(image.data), 16), np.uint8)
        consts[:len(image.data)] = np.frombuffer(image.data, np.uint8)
        self._consts = consts
        self._scratch = np.zeros(image.scratch_bytes + 64, np.uint8)
        self._engine = _engine(image, self._arena, consts, self._scratch, isa, threads)
        self._in = _views(image, self._arena, image.inputs)
        self._out = _views(image, self._arena, image.outputs)
        # the chunk program, on its own (smaller) arena; the same constants and scratch
        self._chunk = chunk_program(image, "<loaded image>") if chunks else None
        if self._chunk is not None:
            cimg = self._chunk.image
            self._chunk_arena = np.zeros(cimg.arena_bytes + 64, np.uint8)
            self._chunk_engine = _engine(cimg, self._chunk_arena, consts, self._scratch, isa,
                                         threads)
            self._chunk_in = _views(cimg, self._chunk_arena, cimg.inputs)
            self._chunk_out = _views(cimg, self._chunk_arena, cimg.outputs)
        # one arena per loaded artifact: concurrent run() calls take turns
        self._lock = threading.Lock()

    @property
    def isa(self) -> str:
        """The instruction-set path this runner's vector kernels take."""
        return self._engine.isa

    @property
    def images_per_chunk(self) -> int | None:
        """How many images of a batch run() takes through the program at a time, or None
        when it runs the batch whole (batch_chunks.py)."""
        return self._chunk.images if self._chunk is not None else None

    @property
    def input_names(self) -> list[str]:
        return list(self._in)

    @property
    def output_names(self) -> list[str]:
        return list(self._out)

    def trace(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run op by op and return every op's output tensor, keyed by tensor name.

        For debugging and per-layer comparison (`tapeout explain` / `diff`); slower than run().
        """
        out = {}
        img = self.image
        with self._lock:
            self._load_inputs(inputs)
            for i, op in enumerate(img.ops):
                self._engine.run_range(i, i + 1)
                t = img.tensors[op.output]
                out[t.name] = np.frombuffer(self._arena.data, dtype=t.dtype,
                                            count=t.nbytes // np.dtype(t.dtype).itemsize,
                                            offset=t.offset).reshape(t.shape).copy()
        return out

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Float32 (or integer, for integer graph inputs) arrays by input name -> outputs.

        Raises InvalidInput for a missing/extra input or a wrong shape or dtype.
        """
        with self._lock:
            if self._chunk is None:
                self._load_inputs(inputs)
                self._engine.run()
                return {name: v.copy() for name, v in self._out.items()}
            self._check_inputs(inputs)
            out = {name: np.empty_like(v) for name, v in self._out.items()}
            c = self._chunk.images
            for i in range(0, self._chunk.batch, c):
                for name, dst in self._chunk_in.items():
                    dst[...] = np.asarray(inputs[name])[i:i + c]
                self._chunk_engine.run()
                for name, src in self._chunk_out.items():
                    out[name][i:i + c] = src
            return out

    def _load_inputs(self, inputs: Mapping[str, np.ndarray]) -> None:
        self._check_inputs(inputs)
        for name, dst in self._in.items():
            dst[...] = np.asarray(inputs[name])

    def _check_inputs(self, inputs: Mapping[str, np.ndarray]) -> None:
        missing = set(self._in) - set(inputs)
        extra = set(inputs) - set(self._in)
        if missing or extra:
            raise InvalidInput(f"inputs: expected {sorted(self._in)}, got {sorted(inputs)}")
        for name, dst in self._in.items():
            src = np.asarray(inputs[name])
            if src.shape != dst.shape:
                raise InvalidInput(f"input {name!r}: expected shape {dst.shape}, got "
                                   f"{src.shape}")
            if src.dtype != dst.dtype and not np.can_cast(src.dtype, dst.dtype, "same_kind"):
                raise InvalidInput(f"input {name!r}: expected {dst.dtype}, got {src.dtype}")
