"""Lowering an `IntervalProgram` in three Triton kernels instead of some 200 small torch operations.

On a GPU the segment lowering is bound by host time per operation, not by work (each operation is a
kernel launch, and the torch program takes a couple of hundred for the benchmark's mixture; figures in
the README). Its two expensive stages become one kernel each, and the list expansion a
third; the program's expression runs in them as straight-line code (the instruction set below) over a
small register file of node values, so one compiled kernel serves every expression:

1. `classify_rows`: each row's breaks (where some atom's class may change: found by binary search,
   as each is monotone along the row), sorted into runs, and each run's class from its first tile:
   the run grid with its FULL and PARTIAL tile counts;
2. `expand_lists`: each row writes its FULL key blocks and its PARTIAL tiles at its offsets;
3. `partial_bits`: every PARTIAL tile's packed bitmap, and its true class from the bits.

The torch implementations in `intervals.py` / `by_segments.py` are the oracle (tests compare layouts).
Tile classes follow Kleene logic on ``EMPTY < PARTIAL < FULL`` = 0, 1, 2 (``min``, ``max``, ``2 - x``);
bits follow boolean logic on packed int32 words, bit ``b`` of word ``w`` being column ``32 w + b``.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

# Rows classified per program, rows of a tile per bitmap step, entries written per store. The node
# register files ([nodes, rows, slots] and [nodes, rows, words]) are capped at REGISTER_FILE entries by
# taking fewer rows per step, so that long expressions stay out of local memory as far as possible.
ROWS_PER_PROGRAM = 8
BITMAP_ROWS = 128
LIST_CHUNK = 256
REGISTER_FILE = 8192

# The instruction set. A program is int64 lines ``(op, quantity, bs, lo, hi, a, b)``, one block of lines
# per member (head pattern) in evaluation order, each ending with the member's result: ``op`` ATOM is
# the class (or bits) of ``lo <= quantity < hi``, with ``bs`` the block size of the BLOCKS quantity
# (``q_pos // bs - k // bs``; else 1); NOT, AND, OR combine lines ``a`` and ``b`` of the same block.
# Quantities: DIAGONAL ``q_pos - k``, KEY ``k``, QUERY ``q_pos``. `sparseattn.lowering.by_program`
# encodes an `IntervalProgram` into it.
ATOM, NOT, AND, OR = 0, 1, 2, 3
DIAGONAL, KEY, QUERY, BLOCKS = 0, 1, 2, 3
_ATOM = tl.constexpr(ATOM)
_NOT = tl.constexpr(NOT)
_AND = tl.constexpr(AND)
_DIAGONAL = tl.constexpr(DIAGONAL)
_KEY = tl.constexpr(KEY)
_QUERY = tl.constexpr(QUERY)


@triton.jit
def _quantity(kind, bs, q_first, q_last, k_first, k_last):
    """Smallest and largest value of an atom's quantity over a rectangle of positions."""
    lo = tl.where(
        kind == _DIAGONAL,
        q_first - k_last,
        tl.where(kind == _KEY, k_first, tl.where(kind == _QUERY, q_first, q_first // bs - k_last // bs)),
    )
    hi = tl.where(
        kind == _DIAGONAL,
        q_last - k_first,
        tl.where(kind == _KEY, k_last, tl.where(kind == _QUERY, q_last, q_last // bs - k_first // bs)),
    )
    return lo, hi


@triton.jit
def _comparison(which, kind, bs, keep_lo, keep_hi, q_first, q_last, kv_block, block_n, kv_len):
    """One of the four comparisons an atom's tile class is made of, on tile ``kv_block`` of a row:
    ``which`` 0 / 1: the span's smallest / largest value ``>= lo``; 2 / 3: the same ``< hi``."""
    k_first = kv_block * block_n
    k_last = tl.minimum(k_first + block_n - 1, kv_len - 1)
    span_lo, span_hi = _quantity(kind, bs, q_first, q_last, k_first, k_last)
    end = tl.where(which % 2 == 0, span_lo, span_hi)
    return tl.where(which < 2, end >= keep_lo, end < keep_hi)


@triton.jit
def _operand(vals, node, index):
    """``vals[index]`` along the node axis (a one-hot sum: register files have no dynamic indexing)."""
    return tl.sum(tl.where(node == index, vals, 0), 0)


@triton.jit
def _classify_rows_kernel(
    PROGRAM,
    SPANS,
    LO,
    COUNTS,
    NUMS,
    rows,
    q_blocks,
    k_blocks,
    q_len,
    kv_len,
    block_m,
    block_n,
    steps,
    ROWS: tl.constexpr,
    SLOTS: tl.constexpr,
    NODES: tl.constexpr,
):
    # A program's rows are query blocks of one member, which runs its own block of the program.
    member = tl.program_id(1).to(tl.int64)
    PROGRAM += tl.load(SPANS + 2 * member) * 7
    n_nodes = tl.load(SPANS + 2 * member + 1)
    q_block = tl.program_id(0).to(tl.int64) * ROWS + tl.arange(0, ROWS)[:, None]  # [ROWS, 1]
    row_ok = q_block < q_blocks
    row = member * q_blocks + q_block
    offset = kv_len - q_len
    q_first = q_block * block_m + offset
    q_last = tl.minimum(q_first + block_m - 1, q_len - 1 + offset)

    # Breaks. Each of an atom's four comparisons is monotone along a row (every span end moves one
    # way with the key block), so it flips at most once, and a binary search finds where. Slot
    # 4 n + c holds node n's comparison c; the last slot is the row's start, the others its end.
    slot = tl.arange(0, SLOTS)[None, :]  # [1, SLOTS]
    at = PROGRAM + tl.minimum(slot // 4, n_nodes - 1) * 7
    is_atom = (slot // 4 < n_nodes) & (tl.load(at) == _ATOM)
    kind = tl.load(at + 1)
    bs = tl.load(at + 2)
    keep_lo = tl.load(at + 3)
    keep_hi = tl.load(at + 4)
    which = slot % 4
    lo_j = tl.zeros([ROWS, SLOTS], dtype=tl.int64)  # a block where the comparison is as at block 0
    hi_j = lo_j + k_blocks  # a block where it has flipped, or the row's end
    start = _comparison(which, kind, bs, keep_lo, keep_hi, q_first, q_last, lo_j, block_n, kv_len)
    for _ in range(steps):
        mid = (lo_j + hi_j) // 2
        flipped = _comparison(which, kind, bs, keep_lo, keep_hi, q_first, q_last, mid, block_n, kv_len) != start
        hi_j = tl.where(flipped, mid, hi_j)
        lo_j = tl.where(flipped, lo_j, mid)
    edge = tl.where(is_atom, hi_j, k_blocks)  # [ROWS, SLOTS]
    is_start = slot == SLOTS - 1
    # Run j is [lo[j], lo[j + 1]): sorting again with the start (the one smallest edge) swapped for
    # something past the end shifts the sorted edges by one.
    lo = tl.sort(tl.where(is_start, 0, edge))
    hi = tl.sort(tl.where(is_start, k_blocks + 1, edge))

    # Classes: the run's first tile stands for all of it, as no comparison flips inside a run.
    k_first = tl.minimum(lo, k_blocks - 1) * block_n
    k_last = tl.minimum(k_first + block_n - 1, kv_len - 1)
    node = tl.arange(0, NODES)[:, None, None]  # [NODES, 1, 1]
    vals = tl.zeros([NODES, ROWS, SLOTS], dtype=tl.int32)
    for i in range(n_nodes):
        code = PROGRAM + i * 7
        op = tl.load(code)
        if op == _ATOM:
            span_lo, span_hi = _quantity(tl.load(code + 1), tl.load(code + 2), q_first, q_last, k_first, k_last)
            atom_lo = tl.load(code + 3)
            atom_hi = tl.load(code + 4)
            # Ends of the span at or past lo, and ends before hi (0, 1 or 2 each): the class is the smaller.
            reached = (span_lo >= atom_lo).to(tl.int32) + (span_hi >= atom_lo).to(tl.int32)
            before = (span_lo < atom_hi).to(tl.int32) + (span_hi < atom_hi).to(tl.int32)
            value = tl.minimum(reached, before)
        else:
            left = _operand(vals, node, tl.load(code + 5))
            right = _operand(vals, node, tl.load(code + 6))
            value = tl.where(
                op == _NOT, 2 - left, tl.where(op == _AND, tl.minimum(left, right), tl.maximum(left, right))
            )
        vals = tl.where(node == i, value[None, :, :], vals)
    cls = _operand(vals, node, n_nodes - 1)  # [ROWS, SLOTS]: the member's result, its last line
    length = tl.where(is_start, 0, hi - lo)
    full = tl.where(cls == 2, length, 0)
    part = tl.where(cls == 1, length, 0)
    width = SLOTS - 1
    out = row * width + slot
    keep = row_ok & ~is_start
    tl.store(LO + out, lo, mask=keep)
    tl.store(COUNTS + out, full, mask=keep)
    tl.store(COUNTS + rows * width + out, part, mask=keep)
    tl.store(NUMS + row, tl.sum(full, 1, keep_dims=True), mask=row_ok)
    tl.store(NUMS + rows + row, tl.sum(part, 1, keep_dims=True), mask=row_ok)


@triton.jit
def _expand_lists_kernel(
    LO,
    COUNTS,
    STARTS,
    F_IDX,
    P_IDX,
    P_ROW,
    rows,
    width,
    WIDTH: tl.constexpr,
    CHUNK: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    j = tl.arange(0, WIDTH)[None, :]  # [1, WIDTH] run of the row
    ok = j < width
    lo = tl.load(LO + row * width + j, mask=ok, other=0)
    step = tl.arange(0, CHUNK)[:, None]  # [CHUNK, 1] entry of the list
    for part in tl.static_range(2):  # the FULL list, then the PARTIAL one
        count = tl.load(COUNTS + (part * rows + row) * width + j, mask=ok, other=0)
        end = tl.cumsum(count, 1)
        shift = lo - (end - count)  # an entry's key block is its place in the row's list plus its run's shift
        total = tl.sum(count)
        out = tl.load(STARTS + part * rows + row)
        for c in range(0, total, CHUNK):
            at = c + step
            run = tl.sum((end <= at).to(tl.int32), 1, keep_dims=True)  # [CHUNK, 1]: the first run ending past it
            value = (at + tl.sum(tl.where(j == run, shift, 0), 1, keep_dims=True)).to(tl.int32)
            if part == 0:
                tl.store(F_IDX + out + at, value, mask=at < total)
            else:
                tl.store(P_IDX + out + at, value, mask=at < total)
                tl.store(P_ROW + out + at, row + 0 * at, mask=at < total)


@triton.jit
def _low_bits(n):
    """int64 word with its lowest ``n`` bits set, ``0 <= n <= 32``."""
    return (tl.full([], 1, tl.int64) << n) - 1


@triton.jit
def _word_bits(first, stop, k0):
    """int32 bits of the keys ``[first, stop)`` among the 32 keys ``k0 ...`` of a word."""
    lo = tl.minimum(tl.maximum(first - k0, 0), 32)
    hi = tl.minimum(tl.maximum(stop - k0, lo), 32)
    return (_low_bits(hi) & ~_low_bits(lo)).to(tl.int32)


@triton.jit
def _partial_bits_kernel(
    PROGRAM,
    SPANS,
    P_ROW,
    P_IDX,
    WORDS,
    CLASS,
    q_blocks,
    q_len,
    kv_len,
    block_m,
    block_n,
    ROWS: tl.constexpr,
    WORDS_PER_ROW: tl.constexpr,
    NODES: tl.constexpr,
):
    tile = tl.program_id(0).to(tl.int64)
    row = tl.load(P_ROW + tile)
    kv_block = tl.load(P_IDX + tile).to(tl.int64)
    member = row // q_blocks
    PROGRAM += tl.load(SPANS + 2 * member) * 7
    n_nodes = tl.load(SPANS + 2 * member + 1)
    q_block = row % q_blocks
    words = block_n // 32
    w = tl.arange(0, WORDS_PER_ROW)[None, :]  # [1, W]
    k0 = kv_block * block_n + 32 * w  # first key of each word
    word_ok = w < words
    node = tl.arange(0, NODES)[:, None, None]  # [NODES, 1, 1]
    bit = tl.arange(0, 32)[None, None, :]  # [1, 1, 32]
    # The whole program in registers, read once: [NODES] per field.
    line = tl.arange(0, NODES)
    at = PROGRAM + line * 7
    in_program = line < n_nodes
    ops = tl.load(at, mask=in_program, other=-1)
    kinds = tl.load(at + 1, mask=in_program, other=0)
    sizes = tl.load(at + 2, mask=in_program, other=1)
    # Bounds past any position change nothing; clamped, the products below cannot overflow.
    lows = tl.minimum(tl.maximum(tl.load(at + 3, mask=in_program, other=0), -(1 << 40)), 1 << 40)
    highs = tl.minimum(tl.maximum(tl.load(at + 4, mask=in_program, other=0), -(1 << 40)), 1 << 40)
    lefts = tl.load(at + 5, mask=in_program, other=0)
    rights = tl.load(at + 6, mask=in_program, other=0)
    kept = tl.zeros([], dtype=tl.int32)
    for r0 in range(0, block_m, ROWS):
        r = r0 + tl.arange(0, ROWS)[:, None]  # [ROWS, 1] row of the tile
        q_idx = q_block * block_m + r
        q_pos = q_idx + (kv_len - q_len)
        row_ok = (r < block_m) & (q_idx < q_len)
        vals = tl.zeros([NODES, ROWS, WORDS_PER_ROW], dtype=tl.int32)
        for n in range(n_nodes):
            op = _operand(ops, line, n)
            if op == _ATOM:
                kind = _operand(kinds, line, n)
                bs = _operand(sizes, line, n)
                keep_lo = _operand(lows, line, n)
                keep_hi = _operand(highs, line, n)
                # For one query, each quantity's interval is an interval of keys [first, stop).
                q_in = (q_pos >= keep_lo) & (q_pos < keep_hi)  # [ROWS, 1]
                first = tl.where(
                    kind == _DIAGONAL,
                    q_pos - keep_hi + 1,
                    tl.where(
                        kind == _KEY,
                        keep_lo + 0 * q_pos,
                        tl.where(kind == _QUERY, tl.where(q_in, 0, kv_len), (q_pos // bs - keep_hi + 1) * bs),
                    ),
                )
                stop = tl.where(
                    kind == _DIAGONAL,
                    q_pos - keep_lo + 1,
                    tl.where(
                        kind == _KEY,
                        keep_hi + 0 * q_pos,
                        tl.where(kind == _QUERY, tl.where(q_in, kv_len, 0), (q_pos // bs - keep_lo + 1) * bs),
                    ),
                )
                value = _word_bits(first, stop, k0)  # [ROWS, W]
            else:
                left = _operand(vals, node, _operand(lefts, line, n))
                right = _operand(vals, node, _operand(rights, line, n))
                value = tl.where(op == _NOT, ~left, tl.where(op == _AND, left & right, left | right))
            vals = tl.where(node == n, value[None, :, :], vals)
        inside = tl.where(row_ok & word_ok, _word_bits(0, kv_len, k0), 0)  # [ROWS, W]
        packed = _operand(vals, node, n_nodes - 1) & inside  # the member's result, its last line
        tl.store(WORDS + (tile * block_m + r) * words + w, packed, mask=(r < block_m) & word_ok)
        kept += tl.sum(tl.sum(tl.sum((packed[:, :, None] >> bit) & 1, 2), 1), 0)
    rows_in = tl.minimum(block_m, q_len - q_block * block_m)
    cols_in = tl.minimum(block_n, kv_len - kv_block * block_n)
    full = (kept == rows_in * cols_in).to(tl.int32)
    tl.store(CLASS + tile, ((kept > 0).to(tl.int32) + full).to(tl.int8))


def _register_file(lines: int) -> int:
    return max(2, triton.next_power_of_2(lines))


def _rows(most: int, per_row: int) -> int:
    """Rows per step: at most ``most``, fewer when the register file would pass REGISTER_FILE."""
    return max(1, min(most, triton.next_power_of_2(max(1, REGISTER_FILE // per_row) + 1) // 2))


def classify_rows(
    program: Tensor, spans: Tensor, *, q_len: int, kv_len: int, block_size: tuple[int, int], lines: int
) -> tuple[Tensor, Tensor, Tensor]:
    """The run grid of every row (``member * QB + q_block``) under the program ``(program, spans)``:
    ``(lo [rows, W], counts [2, rows, W], nums [2, rows])``, int64. Run ``j`` of a row starts at
    key block ``lo[:, j]`` and ends where the next begins (the last at the row's end); ``counts``
    are its FULL and PARTIAL tiles (the rest are EMPTY), ``nums`` the row's totals. Runs ascend
    along a row; empty ones are kept, so ``W`` is fixed by ``lines``, the longest member block's length."""
    bm, bn = block_size
    members = spans.shape[0]
    q_blocks, k_blocks = -(-q_len // bm), -(-kv_len // bn)
    rows = members * q_blocks
    slots = triton.next_power_of_2(4 * lines + 2)  # every comparison, the row's start and its end
    lo = torch.empty(rows, slots - 1, dtype=torch.long, device=program.device)
    counts = torch.empty(2, rows, slots - 1, dtype=torch.long, device=program.device)
    nums = torch.empty(2, rows, dtype=torch.long, device=program.device)
    rows_per_program = _rows(ROWS_PER_PROGRAM, _register_file(lines) * slots)
    _classify_rows_kernel[(triton.cdiv(q_blocks, rows_per_program), members)](
        program,
        spans,
        lo,
        counts,
        nums,
        rows,
        q_blocks,
        k_blocks,
        q_len,
        kv_len,
        bm,
        bn,
        k_blocks.bit_length(),
        ROWS=rows_per_program,
        SLOTS=slots,
        NODES=_register_file(lines),
    )
    return lo, counts, nums


def expand_lists(lo: Tensor, counts: Tensor, starts: Tensor, n_full: int, n_part: int) -> tuple[Tensor, Tensor, Tensor]:
    """(FULL key blocks int32 [n_full], PARTIAL key blocks int32 [n_part], their rows int64 [n_part]):
    each row's runs ``(lo, counts)`` of `classify_rows` expanded in order at the row's ``starts``
    ``[2, rows]`` (FULL, PARTIAL)."""
    rows, width = lo.shape
    device = lo.device
    f_idx = torch.empty(n_full, dtype=torch.int32, device=device)
    p_idx = torch.empty(n_part, dtype=torch.int32, device=device)
    p_row = torch.empty(n_part, dtype=torch.long, device=device)
    if rows and (n_full or n_part):
        _expand_lists_kernel[(rows,)](
            lo.contiguous(),
            counts.contiguous(),
            starts.contiguous(),
            f_idx,
            p_idx,
            p_row,
            rows,
            width,
            WIDTH=triton.next_power_of_2(width),
            CHUNK=LIST_CHUNK,
        )
    return f_idx, p_idx, p_row


def partial_bits(
    program: Tensor,
    spans: Tensor,
    p_row: Tensor,
    p_idx: Tensor,
    *,
    q_len: int,
    kv_len: int,
    block_size: tuple[int, int],
    lines: int,
) -> tuple[Tensor, Tensor]:
    """(packed bitmaps int32 [n, bm, bn / 32], true class int8 [n]) of the tiles ``(p_row, p_idx)``."""
    bm, bn = block_size
    n = p_row.numel()
    words = torch.empty(n, bm, bn // 32, dtype=torch.int32, device=p_row.device)
    words_per_row = triton.next_power_of_2(bn // 32)
    cls = torch.empty(n, dtype=torch.int8, device=p_row.device)
    if n:
        _partial_bits_kernel[(n,)](
            program,
            spans,
            p_row.contiguous(),
            p_idx.contiguous(),
            words,
            cls,
            -(-q_len // bm),
            q_len,
            kv_len,
            bm,
            bn,
            ROWS=_rows(min(BITMAP_ROWS, triton.next_power_of_2(bm)), _register_file(lines) * words_per_row),
            WORDS_PER_ROW=words_per_row,
            NODES=_register_file(lines),
        )
    return words, cls
