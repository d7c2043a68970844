"""Static memory plan: one arena, every tensor at a fixed offset chosen from liveness.

A tensor is live from the first op that writes it (op 0 for graph inputs) to the last op
that reads it (the end of the program for graph outputs). Tensors are placed largest first at
the lowest 16-byte-aligned offset that does not overlap any placed tensor whose live range
intersects its own (greedy by size, as TFLite Micro's GreedyMemoryPlanner does). Kernels are
not in-place, so an op's inputs and output never share bytes. Kernel scratch (im2col columns,
accumulators) is one separate buffer sized for the hungriest op.
"""

from __future__ import annotations

from dataclasses import dataclass

from .exceptions import MemoryBudgetExceeded
from .program import Program

ALIGN = 16


@dataclass(frozen=True)
class MemoryPlan:
    offsets: tuple[int, ...]  # per tensor, bytes into the arena
    arena_bytes: int
    scratch_bytes: int
    live_bytes: tuple[int, ...]  # per op: arena high-water of tensors live at that op

    @property
    def peak_bytes(self) -> int:
        """Everything the firmware allocates: the arena plus the scratch buffer."""
        return self.arena_bytes + self.scratch_bytes


def _align(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN


def plan_memory(prog: Program, budget: int | None = None) -> MemoryPlan:
    """Place every tensor; raise MemoryBudgetExceeded naming the first op that overflows."""
    n_ops = len(prog.ops)
    first = [None] * len(prog.tensors)
    last = [None] * len(prog.tensors)
    for t in prog.inputs:
        first[t] = 0
        last[t] = 0
    for i, op in enumerate(prog.ops):
        for t in op.inputs:
            first[t] = i if first[t] is None else first[t]
            last[t] = i
        t = op.output
        first[t] = i if first[t] is None else min(first[t], i)
        last[t] = i if last[t] is None else max(last[t], i)
    for t in prog.outputs:
        last[t] = n_ops
        if first[t] is None:
            first[t] = 0
    for t in range(len(prog.tensors)):
        if first[t] is None:  # never touched: a zero-length life at the start
            first[t] = last[t] = 0
    order = sorted(range(len(prog.tensors)),
                   key=lambda t: (-prog.tensors[t].nbytes, first[t], t))
    offsets = [0] * len(prog.tensors)
    placed: list[int] = []
    for t in order:
        size = _align(prog.tensors[t].nbytes)
        busy = sorted((offsets[u], offsets[u] + _align(prog.tensors[u].nbytes)) for u in placed
                      if first[u] <= last[t] and first[t] <= last[u])
        off = 0
        for lo, hi in busy:
            if off + size <= lo:
                break
            off = max(off, hi)
        offsets[t] = off
        placed.append(t)
    arena = max((offsets[t] + _align(prog.tensors[t].nbytes)
                 for t in range(len(prog.tensors))), default=0)
    scratch = _align(max((op.scratch for op in prog.ops), default=0))
    live = []
    for i in range(n_ops):
        hw = max((offsets[t] + _align(prog.tensors[t].nbytes) for t in range(len(prog.tensors))
                  if first[t] <= i <= last[t]), default=0)
        live.append(hw)
    result = MemoryPlan(tuple(offsets), max(arena, ALIGN), max(scratch, ALIGN), tuple(live))
    if budget is not None and result.peak_bytes > budget:
        for i, op in enumerate(prog.ops):
            if live[i] + result.scratch_bytes > budget:
                raise MemoryBudgetExceeded(op.node, op.op_type, result.peak_bytes, budget)
        worst = max(range(n_ops), key=lambda i: live[i] + prog.ops[i].scratch)
        op = prog.ops[worst]
        raise MemoryBudgetExceeded(op.node, op.op_type, result.peak_bytes, budget)
    return result
