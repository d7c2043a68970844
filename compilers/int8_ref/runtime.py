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


class Int8Runner:
    """A loaded artifact. `run(dict[str, ndarray]) -> dict[str, ndarray]`.

    `threads`: worker threads the Conv and Gemm kernels split output channels over (the
    results are the same bytes for any count). `isa`: the instruction-set path of the vector
    kernels, one of `_kernels.supported_isas()`; None takes the best this CPU runs (capped by
    TAPEOUT_INT8REF_ISA). Every path gives the same bytes too; tests force each one.

    Raises:
        ValueError: an instruction set this build or CPU does not run, or threads < 1.
    """

    def __init__(self, image: Image, threads: int = 1, isa: str | None = None) -> None:
        self.image = image
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
        self._arena = np.zeros(image.arena_bytes + 64, np.uint8)
        consts = np.zeros(max(len(image.data), 16), np.uint8)
        consts[:len(image.data)] = np.frombuffer(image.data, np.uint8)
        self._consts = consts
        self._scratch = np.zeros(image.scratch_bytes + 64, np.uint8)
        self._engine = _kernels.Engine(self._arena, consts, self._scratch, kinds, ints,
                                       floats, inp, out, cofs, isa, threads)

        def view(tid):
            t = image.tensors[tid]
            return np.frombuffer(self._arena.data, dtype=t.dtype,
                                 count=t.nbytes // np.dtype(t.dtype).itemsize,
                                 offset=t.offset).reshape(t.shape)

        self._in = {image.tensors[t].name: view(t) for t in image.inputs}
        self._out = {image.tensors[t].name: view(t) for t in image.outputs}
        # one arena per loaded artifact: concurrent run() calls take turns
        self._lock = threading.Lock()

    @property
    def isa(self) -> str:
        """The instruction-set path this runner's vector kernels take."""
        return self._engine.isa

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
            self._load_inputs(inputs)
            self._engine.run()
            return {name: v.copy() for name, v in self._out.items()}

    def _load_inputs(self, inputs: Mapping[str, np.ndarray]) -> None:
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
            dst[...] = src
