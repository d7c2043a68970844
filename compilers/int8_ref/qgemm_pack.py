"""Compile-time packing of Conv and Gemm weights into the layout the firmware's kernels read.

kernels/i8r_qgemm.h explains the kernels; this is their prepare step (the same split as
ONNX Runtime's MlasGemmPackB / MLAS's packed B with column sums, XNNPACK's packed weights with
the bias and zero-point terms folded in). Layout, for every path:

    packed [blocks of 16 output channels][k groups][16 channels][4 bytes]

four consecutive packed k of one channel in one dword (the operand of one VPDPBUSD lane),
zero past the last channel or k. Conv's packed k order is (c // 4, ky, kx, c % 4): channels
in fours, so that the kernel reads four channels of one input pixel as one dword of the
repacked input; channels past the group's are zero weights.

The dot product is expanded (kernels/i8r_qgemm.h) and its constant terms folded here, in
int32 arithmetic with wrap-around (the kernels wrap the same way, so the total is the exact
accumulator whenever that fits in int32, which the compiler's reduction limit guarantees):

    bias' = bias - xzp * sum_k w + K * xzp * wzp        zb = wzp (+ 128, see below)

with weights and zero points in the signed domain (uint8 weights minus 128) and the input zero
point in the domain the kernel sees (Conv: int8 inputs plus 128, as the kernel flips them to
uint8 when it repacks them; Gemm reads int8 inputs as they are and stores the weights plus 128
as uint8 instead, so its zb gains 128).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

LANES = 16  # output channels per block
GROUP = 4  # packed k per dword


@dataclass(frozen=True)
class PackedWeights:
    """What a Conv or Gemm kernel reads besides its requantization arrays."""

    weights: np.ndarray  # int8 / uint8 packed blocks, or int16 [M, taps] for depthwise
    bias: np.ndarray  # int32 [channels (padded)], the folded bias
    zb: np.ndarray  # int32 [channels (padded)], the multiplier of the run-time sum


def _wrap32(v: np.ndarray) -> np.ndarray:
    return ((np.asarray(v, np.int64) + (1 << 31)) % (1 << 32) - (1 << 31)).astype(np.int32)


def _signed(w: np.ndarray, wzp: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Weights and zero points as int32 in the int8 domain (uint8 minus 128)."""
    shift = 128 if w.dtype == np.uint8 else 0
    return w.astype(np.int32) - shift, np.asarray(wzp, np.int32) - shift


def _blocks(w_s: np.ndarray) -> np.ndarray:
    """[M, Kp] (Kp a multiple of 4) -> [ceil(M/16), Kp/4, 16, 4]."""
    M, Kp = w_s.shape
    Mb = -(-M // LANES)
    full = np.zeros((Mb * LANES, Kp), np.int32)
    full[:M] = w_s
    return full.reshape(Mb, LANES, Kp // GROUP, GROUP).transpose(0, 2, 1, 3)


def _fold(bias, w_s, wzp_s, xzp: int, K: int) -> np.ndarray:
    sum_w = w_s.astype(np.int64).sum(axis=1)
    return _wrap32(np.asarray(bias, np.int64) - xzp * sum_w + K * xzp * wzp_s.astype(np.int64))


def depthwise(w: np.ndarray, wzp: np.ndarray, bias: np.ndarray) -> PackedWeights:
    """Conv with one input channel per group: int16 [M, kh*kw] of w - wzp (each product with
    an int16 x - xzp is exact, nothing to expand) and the plain bias."""
    M = w.shape[0]
    taps = (w.astype(np.int32).reshape(M, -1) - np.asarray(wzp, np.int32).reshape(M, 1))
    return PackedWeights(taps.astype(np.int16), np.asarray(bias, np.int32).reshape(M),
                         np.zeros(M, np.int32))


def conv(w: np.ndarray, wzp: np.ndarray, bias: np.ndarray, groups: int, xzp: int,
         x_signed: bool) -> PackedWeights:
    """w [M, C/groups, kh, kw] int8 or uint8, wzp and bias [M] -> packed s8
    [groups][Mb][Cq*kh*kw][16][4], folded bias and zb [M]."""
    M, Cg, kh, kw = w.shape
    Mg, Cq = M // groups, -(-Cg // GROUP)
    w_s, wzp_s = _signed(w, np.broadcast_to(wzp, (M,)))
    padded = np.zeros((M, Cq * GROUP, kh, kw), np.int32)
    padded[:, :Cg] = w_s
    # (c // 4, c % 4, ky, kx) -> (c // 4, ky, kx, c % 4)
    ordered = padded.reshape(M, Cq, GROUP, kh, kw).transpose(0, 1, 3, 4, 2).reshape(M, -1)
    blocks = np.concatenate([_blocks(ordered[g * Mg:(g + 1) * Mg]) for g in range(groups)])
    xzp_u = xzp + 128 if x_signed else xzp
    flat = w_s.reshape(M, -1)
    return PackedWeights(blocks.astype(np.int8), _fold(bias, flat, wzp_s, xzp_u, flat.shape[1]),
                         wzp_s.astype(np.int32))


def gemm(w: np.ndarray, wzp: np.ndarray, bias: np.ndarray, xzp: int,
         x_signed: bool) -> PackedWeights:
    """w [N, K] int8 or uint8 (output channel first), wzp and bias [N] -> packed
    [Nb][ceil(K/4)][16][4] (s8, or u8 = w + 128 when x is int8), bias and zb padded to
    Nb*16 channels (the kernel reads whole blocks of per-channel values)."""
    N, K = w.shape
    w_s, wzp_s = _signed(w, np.broadcast_to(wzp, (N,)))
    Kp = -(-K // GROUP) * GROUP
    stored = np.zeros((N, Kp), np.int32)
    stored[:, :K] = w_s + (128 if x_signed else 0)  # past K stays 0: the kernel reads it
    blocks = _blocks(stored)
    dtype = np.uint8 if x_signed else np.int8
    bias_f = pad_channels(_fold(bias, w_s, wzp_s, xzp, K))
    zb = pad_channels((wzp_s + (128 if x_signed else 0)).astype(np.int32))
    return PackedWeights(blocks.astype(dtype), bias_f, zb)


def pad_channels(v: np.ndarray) -> np.ndarray:
    """A per-channel array padded with zeros to whole blocks of 16 channels."""
    v = np.asarray(v).reshape(-1)
    out = np.zeros(-(-len(v) // LANES) * LANES, v.dtype)
    out[:len(v)] = v
    return out
