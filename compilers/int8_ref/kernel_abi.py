"""What the compiler and the firmware agree on, besides each op's own parameter layout.

An op record in `model.i8r` (docs/int8-ref.md, "The firmware image") carries a kind, up to
MAX_INTS int64 parameters, up to MAX_FLOATS float32 parameters, up to MAX_INPUTS arena inputs,
one output and up to MAX_CONSTS constants. Each op kind registers its layout and its
load-time rules with a `KernelSpec` (the registration of TFLite Micro's kernels:
`RegisterOp(Init, Prepare, Eval)` in tensorflow/lite/micro/kernels/*.cc), and the ONNX ops
it lowers with `OnnxOp`; `opset.py` collects them, `codegen.py` writes the firmware's named
fields from them. Nothing here imports an op module, so every op module may import this one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # only for annotations: both import the op modules
    from .lowering import Lowering
    from .validate import OpCheck

MAX_INPUTS = 2
MAX_CONSTS = 5
MAX_FLOATS = 4
MAX_INTS = 40

# Requantization / output mode of an op (its "mode" parameter).
MODE_ORT = 0  # float32 multiplier, round half to even (MlasRequantizeOutput)
MODE_FIXED = 1  # int32 multiplier + shift (TFLite MultiplyByQuantizedMultiplier)
MODE_INT32 = 2  # no requantization: int32 accumulator out (ConvInteger / MatMulInteger)
REQUANT_MODES = {"ort": MODE_ORT, "fixed-point": MODE_FIXED}

# Quantized element type codes ("sg_in" / "sg_out"): the int8 images' booleans plus int16.
SG_UINT8, SG_INT8, SG_INT16 = 0, 1, 2
SG_DTYPE = {SG_UINT8: "uint8", SG_INT8: "int8", SG_INT16: "int16"}
SG_ITEMSIZE = {SG_UINT8: 1, SG_INT8: 1, SG_INT16: 2}

# Largest reduction an int32 accumulator is proven to hold (kernels/common.pxi: |x - zp| and
# |w - zp| <= 255, so 2^15 products and a bias fit). Conv and Gemm over int16 inputs
# accumulate in int64 and keep the same limit (2^15 * 65535 * 255 + 2^31 < 2^40).
MAX_REDUCTION = 32768

# Loader bounds. Every integer parameter lies in (-PARAM_LIMIT, PARAM_LIMIT). Every kernel
# states its `work`: the iterations of its loops (the sum, over its loop nests, of the product
# of their extents), a function of its parameters only. Every extent is at least 1, so a
# bounded sum bounds every extent; the loader refuses an op over MAX_OP_WORK and an image
# over MAX_IMAGE_WORK, so a forged image cannot keep the runtime (which runs without the GIL
# and does not see SIGINT) busy for longer than that. The largest op of the networks int8-ref
# targets is about 2^29 (a ViT-B/16 MLP MatMul at batch 1); docs/int8-ref.md gives the
# measured time these bounds allow.
PARAM_LIMIT = 1 << 31
MAX_OP_WORK = 1 << 36
MAX_IMAGE_WORK = 1 << 40
# A pooling window visits kh*kw values for every output: bounded on its own (besides the
# work) so that a forged window is refused with the name of the field at fault.
MAX_WINDOW = 1 << 20


def align16(n: int) -> int:
    return (n + 15) // 16 * 16


def _no_cost(p: Mapping[str, int]) -> tuple[int, int]:
    return 0, 0


@dataclass(frozen=True)
class KernelSpec:
    """One firmware op kind: its place in the image (the ABI) and its load-time rules.

    kind      the u16 kind of the op record; never reused for another meaning
    name      the kind's name (CONV), shown in reports and errors
    params    names of the int64 parameters, in image order: the ABI within a format
              version. codegen.py turns them into the fields of the kernel's params struct.
    consts    names of the constant slots, in order; `min_consts` of them are required
    floats    names of the float32 slots, in order (an op may write fewer)
    inputs    arena inputs the kernel reads
    int16     the kernel accepts type code 2 (int16) in "sg_in" / "sg_out"
    firmware  the first firmware revision that runs this kind: an image using it records at
              least this revision, and a target on older firmware is refused at compile time
    validate  load time: checks the parameters against the tensors and constants they index,
              through an OpCheck; must fail for anything the kernel could read out of bounds
    work      load time: the iterations of the kernel's loops for these parameters
    cost      compile time: (multiply-accumulates, weight bytes read) of one run (cost.py)
    """

    kind: int
    name: str
    params: tuple[str, ...]
    validate: Callable[[OpCheck], None]
    work: Callable[[Mapping[str, int]], int]
    consts: tuple[str, ...] = ()
    min_consts: int | None = None
    floats: tuple[str, ...] = ()
    inputs: int = 1
    int16: bool = False
    firmware: str = "2.0.0"
    cost: Callable[[Mapping[str, int]], tuple[int, int]] = _no_cost

    @property
    def const_range(self) -> tuple[int, int]:
        lo = len(self.consts) if self.min_consts is None else self.min_consts
        return lo, len(self.consts)


def _no_rules(node: Any) -> Iterable[tuple[str, str]]:
    return ()


@dataclass(frozen=True)
class OnnxOp:
    """How one ONNX op type is compiled.

    lower              compile time: `lower(low, node)` reads the node through the Lowering
                       context, computes every number its kernel needs ("prepare") and emits
                       the op(s); it raises LoweringError (via `low.fail`) for what it refuses
    rules              attribute rules that need no shapes: `rules(node)` yields (attribute,
                       reason) for each violation; the compatibility report lists them all
                       before any lowering, and the driver refuses the first of them before
                       calling `lower`
    domain             "" or "com.microsoft" (how capabilities() names it)
    int16              takes and produces int16 activations
    reads_dequantized  reads a DequantizeLinear output as the integers behind it (no float
                       tensor is materialised for such a consumer)
    """

    lower: Callable[[Lowering, Any], None]
    rules: Callable[[Any], Iterable[tuple[str, str]]] = field(default=_no_rules)
    domain: str = ""
    int16: bool = False
    reads_dequantized: bool = False
