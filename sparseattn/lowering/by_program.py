"""Lowering a compiled `IntervalProgram` by row segments in Triton kernels: the default on CUDA.

The same three steps as ``by_segments.py`` (classify each run of the run grid by its first tile,
expand FULL runs into lists, give PARTIAL tiles bitmaps), but each step is one kernel that runs the
program's straight-line code (`sparseattn.kernels.lowering.triton_interval_program`) instead of a few torch
operations per term, so the benchmark's 32-head mixture at 128K lowers in a fraction of the launches
and host waits the torch program takes (figures in the README). ``by_segments.py`` on the same
program is its oracle in the tests.

Kleene logic may call a tile PARTIAL that its bits show EMPTY or FULL (``Causal() & ~Causal()``, or a
block band and the diagonal that miss each other inside a tile); such tiles are dropped or moved to
the FULL lists afterwards, in a few more operations, only when there are any.

The kernels compile on first use for each size of program (its longest member's number of lines sets
their register files) and tile width; Triton caches them on disk across processes.

Every PARTIAL tile gets its bitmap evaluated (a word per 32 keys and row, cheap on a GPU) rather than
one per group of equal tile keys, which saves the key computation and its grouping; the bitmaps are
then deduplicated by content as on the other paths.
"""

from __future__ import annotations

import torch
from torch import Tensor

from sparseattn.kernels.lowering.triton_interval_program import (
    AND,
    ATOM,
    BLOCKS,
    DIAGONAL,
    KEY,
    NOT,
    OR,
    QUERY,
    classify_rows,
    expand_lists,
    partial_bits,
)
from sparseattn.layout import BlockLayout
from sparseattn.lowering.grouping import group_rows
from sparseattn.lowering.intervals import IntervalProgram, Node
from sparseattn.patterns.tiles import FULL, PARTIAL, MaskContext

_QUANTITIES = {"diagonal": DIAGONAL, "key": KEY, "query": QUERY, "blocks": BLOCKS}


def encode(program: IntervalProgram) -> tuple[Tensor, Tensor, int]:
    """``program`` in the lowering kernels' instruction set, on its device: lines int64 ``[N, 7]``, each
    member's ``(first line, number of lines)`` int64 ``[M, 2]``, and the longest member's number of
    lines. Operands count from the start of their member's block; equal subtrees of a member are
    emitted once, so a tile of one member runs only the lines its own expression needs."""
    code: list[list[int]] = []
    spans: list[list[int]] = []
    for member in program.members:
        first = len(code)
        emitted: dict[Node, int] = {}

        def emit(node: Node, first: int = first, emitted: dict[Node, int] = emitted) -> int:
            if node not in emitted:
                if node.op == "atom":
                    quantity, lo, hi = node.arg
                    code.append(
                        [ATOM, _QUANTITIES[quantity[0]], quantity[1] if quantity[0] == "blocks" else 1, lo, hi, 0, 0]
                    )
                elif node.op == "not":
                    code.append([NOT, 0, 1, 0, 0, emit(node.arg), 0])
                else:  # a chain of binary lines
                    acc = emit(node.arg[0])
                    for child in node.arg[1:]:
                        right = emit(child)
                        code.append([AND if node.op == "and" else OR, 0, 1, 0, 0, acc, right])
                        acc = len(code) - 1 - first
                    emitted[node] = acc
                    return acc
                emitted[node] = len(code) - 1 - first
            return emitted[node]

        result = emit(member)
        if result != len(code) - 1 - first:  # the result must be the block's last line: copy it there
            code.append([OR, 0, 1, 0, 0, result, result])
        spans.append([first, len(code) - first])
    flat = torch.tensor([x for line in code + spans for x in line], dtype=torch.long).to(program.ctx.device)
    lines = flat[: 7 * len(code)].view(-1, 7)
    return lines, flat[7 * len(code) :].view(-1, 2), max(count for _, count in spans)  # one copy to the device


def _true_classes(
    nums: Tensor, f_idx: Tensor, p_idx: Tensor, p_row: Tensor, words: Tensor, true_class: Tensor, k_blocks: int
) -> tuple[Tensor, ...]:
    """The lists with PARTIAL tiles that are EMPTY dropped and those that are FULL merged, in key order,
    into the FULL lists: ``(nums [2, rows], f_idx, p_idx, p_row, words)``."""
    rows = nums.shape[1]
    kept, promoted = true_class == PARTIAL, true_class == FULL
    f_row = torch.cat([torch.repeat_interleave(torch.arange(rows, device=nums.device), nums[0]), p_row[promoted]])
    f_idx = torch.cat([f_idx, p_idx[promoted]])
    f_idx = f_idx[torch.argsort(f_row * (k_blocks + 1) + f_idx)]
    p_row = p_row[kept]
    nums = torch.stack([torch.bincount(f_row, minlength=rows), torch.bincount(p_row, minlength=rows)])
    return nums, f_idx, p_idx[kept], p_row, words[kept]


def lower_by_program(program: IntervalProgram, ctx: MaskContext, heads: int | None) -> BlockLayout:
    """Layout of ``program`` (no gathered columns) on ``ctx.device``."""
    code, spans, lines = encode(program)
    if spans.shape[0] != (heads or 1):
        raise ValueError(f"heads: expected {spans.shape[0]} (the program's members), got {heads}")
    q_len, kv_len, block_size = ctx.q_len, ctx.kv_len, (ctx.block_m, ctx.block_n)
    lo, counts, nums = classify_rows(code, spans, q_len=q_len, kv_len=kv_len, block_size=block_size, lines=lines)
    ends = torch.cumsum(nums, 1)
    n_full, n_part = (int(x) for x in ends[:, -1].tolist())
    starts = ends - nums
    f_idx, p_idx, p_row = expand_lists(lo, counts, starts, n_full, n_part)
    words, true_class = partial_bits(
        code, spans, p_row, p_idx, q_len=q_len, kv_len=kv_len, block_size=block_size, lines=lines
    )
    if n_part and bool((true_class != PARTIAL).any()):
        nums, f_idx, p_idx, p_row, words = _true_classes(
            nums, f_idx, p_idx, p_row, words, true_class, ctx.num_kv_blocks
        )
        starts = torch.cumsum(nums, 1) - nums
    mask_id, first = group_rows(words.flatten(1))
    lead = (1, heads or 1, ctx.num_q_blocks)
    f_num, p_num = nums.to(torch.int32)
    return BlockLayout(
        q_len=ctx.q_len,
        kv_len=ctx.kv_len,
        block_m=ctx.block_m,
        block_n=ctx.block_n,
        full_kv_num_blocks=f_num.view(lead),
        full_kv_start=starts[0].view(lead),
        full_kv_indices=f_idx,
        kv_num_blocks=p_num.view(lead),
        kv_start=starts[1].view(lead),
        kv_indices=p_idx,
        kv_mask_ids=mask_id.to(torch.int32),
        tile_masks=words[first],
    )
