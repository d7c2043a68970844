"""What Conv and the pools share: the 2-D window rules the compatibility report checks
without shapes, and the window geometry (pads from `auto_pad`, output size)."""

from __future__ import annotations

from ..program import attr

AUTO_PADS = ("NOTSET", "VALID", "SAME_UPPER", "SAME_LOWER", "")


def window_rules(node):
    """kernel_shape 2-D, auto_pad one ONNX defines."""
    ks = attr(node, "kernel_shape")
    if ks is not None and len(ks) != 2:
        yield "kernel_shape", f"{len(ks)}-D kernels are not supported (2-D only)"
    ap = attr(node, "auto_pad", "NOTSET")
    if ap not in AUTO_PADS:
        yield "auto_pad", f"auto_pad {ap} is not supported"


def pads(low, node, H, W, kh, kw, sh, sw, dh, dw, explicit):
    """(pt, pl, pb, pr, effective kh, effective kw) after `auto_pad` (ONNX Conv: SAME_UPPER
    puts the odd pad at the end, SAME_LOWER at the start)."""
    auto_pad = attr(node, "auto_pad", "NOTSET")
    ekh, ekw = (kh - 1) * dh + 1, (kw - 1) * dw + 1
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        both = []
        for size, s, ek in ((H, sh, ekh), (W, sw, ekw)):
            out = -(-size // s)
            total = max(0, (out - 1) * s + ek - size)
            small = total // 2
            both.append((total - small, small) if auto_pad == "SAME_LOWER"
                        else (small, total - small))
        pt, pb = both[0]
        pl, pr = both[1]
    elif auto_pad == "VALID":
        pt = pl = pb = pr = 0
    elif auto_pad in ("NOTSET", ""):
        pt, pl, pb, pr = explicit
    else:
        low.fail(node, f"auto_pad {auto_pad} is not supported", "auto_pad")
    return pt, pl, pb, pr, ekh, ekw


def pool_geometry(low, node, shape):
    """(N, C, H, W, kh, kw, sh, sw, pt, pl, pb, pr, dh, dw, OH, OW) of a 2-D pool, with
    ONNX's ceil_mode (a last window that starts in the right padding is dropped)."""
    if len(shape) != 4:
        low.fail(node, "only 2-D pooling (4-D tensors) is supported", "kernel_shape")
    N, C, H, W = shape
    ks = attr(node, "kernel_shape")
    if ks is None or len(ks) != 2:
        low.fail(node, "kernel_shape must give two dimensions", "kernel_shape")
    kh, kw = ks
    sh, sw = attr(node, "strides", [1, 1])
    dh, dw = attr(node, "dilations", [1, 1])
    explicit = attr(node, "pads", [0, 0, 0, 0])
    pt, pl, pb, pr, ekh, ekw = pads(low, node, H, W, kh, kw, sh, sw, dh, dw,
                                    (explicit[0], explicit[1], explicit[2], explicit[3]))
    if attr(node, "ceil_mode", 0):
        OH = -(-(H + pt + pb - ekh) // sh) + 1
        OW = -(-(W + pl + pr - ekw) // sw) + 1
        if (OH - 1) * sh >= H + pt:
            OH -= 1
        if (OW - 1) * sw >= W + pl:
            OW -= 1
    else:
        OH = (H + pt + pb - ekh) // sh + 1
        OW = (W + pl + pr - ekw) // sw + 1
    return N, C, H, W, kh, kw, sh, sw, pt, pl, pb, pr, dh, dw, OH, OW
