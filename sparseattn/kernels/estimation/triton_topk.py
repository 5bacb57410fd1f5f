"""Per-row top-k selection with the deterministic tie rule, one program per row, for block top-k estimation.

Same contract as the torch oracle `sparseattn.estimation.topk.select_top`: keep the ``k`` highest
scores of each row; among scores equal to the k-th one, the lowest indices. ``torch.topk`` plus the tie
rule costs ~7 ms on the [32, 2048, 2048] score grid of a 128K prompt (many passes over the grid); here a
program holds its row in registers and finds the k-th largest value by a bisection (at most 32 steps,
stopping once exactly k keys clear the threshold) on an order-preserving integer key of the fp32 bits,
then settles ties with a prefix count: one read of the scores, one write of the mask.

The bisection is issue-bound: on that grid (rows launched by width class, all 32 steps) two warps per row
measured fastest, ahead of one, four and eight (experiments/investigations/tune_row_kernels.py).

`triton_block_topk_keep` also applies block top-k's causal rules in the same pass, from the block
geometry alone: key blocks out of causal reach never count, the sink block and the blocks holding the
query block's own positions always do (the torch form writes +-inf into the grid twice first); rows
are launched by width class, so a row reads only the key blocks it reaches. `triton_block_topk` writes
the layout's lists from the same registers as well.
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl
from torch import Tensor

from sparseattn.kernels.lowering.triton_tile_lists import store_row_tiles

# Rows longer than this would not fit one program's registers (a 1M-token prompt has 16384 key blocks).
MAX_ROW = 16384


@triton.jit
def _select_top_kernel(
    SCORES,
    K,
    KEEP,
    n,
    stride_row,
    q_blocks,
    g0,
    rows_per_head,
    q_len,
    kv_len,
    block,
    KIND_IDS,
    F_NUM,
    F_IDX,
    P_NUM,
    P_IDX,
    P_MID,
    f_bound,
    BLOCK: tl.constexpr,
    CAUSAL_BLOCKS: tl.constexpr,
    LISTS: tl.constexpr,
):
    # Rows (head, query block g) with g in [g0, g0 + rows_per_head): one launch per row width class.
    pid = tl.program_id(0).to(tl.int64)
    row = (pid // rows_per_head) * q_blocks + g0 + pid % rows_per_head
    offs = tl.arange(0, BLOCK)  # [BLOCK] entries past BLOCK are out of this row's reach
    inside = offs < n
    x = tl.load(SCORES + row * stride_row + offs, mask=inside, other=float("-inf"))  # [BLOCK] fp32
    k = tl.load(K + row)
    if CAUSAL_BLOCKS:
        # Row = (head, query block g); entry = key block. Bottom-right aligned positions, as the kernel.
        # Positions fit int32 (lengths < 2**31); int64 vector math would cost two instructions per op.
        g = (row % q_blocks).to(tl.int32)
        first = g * block + (kv_len - q_len)
        last = tl.minimum((g + 1) * block, q_len) - 1 + (kv_len - q_len)
        k_lo = offs * block
        k_hi = tl.minimum((offs + 1) * block, kv_len) - 1
        reach = k_lo <= last  # [BLOCK] some pair of the tile is causal
        forced = inside & ((offs == 0) | (reach & (k_hi >= first)))  # [BLOCK]
        x = tl.where(forced, float("inf"), tl.where(reach, x, float("-inf")))
    x = x + 0.0  # -0.0 becomes +0.0: the two compare equal as floats and must share one key
    bits = x.to(tl.int32, bitcast=True)
    # Negative floats order backwards as integers: flipping their magnitude bits makes signed int32
    # order match float order (-inf lowest, +inf highest).
    key = bits ^ ((bits >> 31) & 0x7FFFFFFF)  # [BLOCK]
    sign = tl.full([], -(2**31), tl.int32)
    # Padding takes the lowest key; only a NaN shares it, and scores are NaN-free.
    key = tl.where(inside, key, sign)
    # The k-th largest key, built one bit at a time from the top in unsigned space: ``u ^ sign`` maps an
    # unsigned bit pattern to the signed key of the same rank, so no comparison can wrap.
    # Invariant: at least k keys are >= t. Once exactly k are, they are the top k and no tie straddles
    # the boundary, so the search stops there (~log2(n) steps on distinct scores, not 32).
    t = tl.full([], 0, tl.int32)
    above_t = tl.full([], BLOCK, tl.int32)  # every key, padding included, is >= t = 0
    bit = tl.full([], 31, tl.int32)
    while (bit >= 0) & (above_t != k):
        cand = t | (tl.full([], 1, tl.int32) << bit)
        count = tl.sum((key >= (cand ^ sign)).to(tl.int32), 0)
        t = tl.where(count >= k, cand, t)
        above_t = tl.where(count >= k, count, above_t)
        bit -= 1
    threshold = t ^ sign
    above = key > threshold
    at = key == threshold
    need = k - tl.sum(above.to(tl.int32), 0)
    keep = above | (at & (tl.cumsum(at.to(tl.int32), 0) <= need))
    if CAUSAL_BLOCKS:
        keep = (keep & reach) | forced
    tl.store(KEEP + row * n + offs, keep.to(tl.int8), mask=inside)
    if LISTS:
        # The layout's lists straight from the registers: fixed slots per row, no second read of the grid.
        zero = tl.zeros([], tl.int32)
        p_out = row * 2
        n_full, n_part = store_row_tiles(
            keep,
            offs,
            g,
            q_len,
            kv_len,
            block,
            KIND_IDS,
            F_IDX + row * f_bound,
            P_IDX + p_out,
            P_MID + p_out,
            zero,
            zero,
            f_bound,
            True,
        )
        tl.store(F_NUM + row, n_full)
        tl.store(P_NUM + row, n_part)


def _warps(width: int) -> int:
    """Warps per row of ``width`` entries, the fastest measured (experiments/investigations/tune_row_kernels.py)."""
    return max(1, min(4, width // 512))


def _launch(
    scores: Tensor,
    k: Tensor,
    geometry: tuple[int, int, int] | None,
    num_warps: int | None = None,
    lists: tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, int] | None = None,
) -> Tensor:
    if scores.dtype != torch.float32:
        raise ValueError(f"scores: expected float32, got {scores.dtype}")
    n = scores.shape[-1]
    if not 1 <= n <= MAX_ROW:
        raise ValueError(f"scores: rows of 1..{MAX_ROW} entries expected, got {n}")
    rows = scores.reshape(-1, n)
    if rows.stride(-1) != 1:
        rows = rows.contiguous()
    counts = k.expand(scores.shape[:-1]).reshape(-1).to(device=scores.device, dtype=torch.int32).contiguous()
    if geometry is None:
        keep = torch.empty(rows.shape, dtype=torch.int8, device=scores.device)
        # (rows, 1 head of rows, every row in one class, no geometry)
        classes: tuple[tuple[int, int, int], ...] = ((0, rows.shape[0], max(triton.next_power_of_2(n), 32)),)
        heads, q_blocks, q_len, kv_len, tile = 1, rows.shape[0], 1, 1, 1
    else:
        # Entries past a row's causal reach are never kept: a row only loads the power of two that
        # holds its reach, and the rest of the mask stays zero (~1/3 less work on a square grid).
        keep = torch.zeros(rows.shape, dtype=torch.int8, device=scores.device)
        q_len, kv_len, tile = geometry
        q_blocks = scores.shape[-2]
        heads = rows.shape[0] // q_blocks
        classes = _width_classes(q_blocks, n, q_len, kv_len, tile)
    # (kind ids, full counts, full indices, partial counts, partial indices, mask ids, full slots per row)
    kind_ids, f_num, f_idx, p_num, p_idx, p_mid, f_bound = lists or (counts, counts, counts, counts, counts, counts, 0)
    for g0, count, width in classes:
        if heads * count:
            _select_top_kernel[(heads * count,)](
                rows,
                counts,
                keep,
                n,
                rows.stride(0),
                q_blocks,
                g0,
                count,
                q_len,
                kv_len,
                tile,
                kind_ids,
                f_num,
                f_idx,
                p_num,
                p_idx,
                p_mid,
                f_bound,
                BLOCK=width,
                CAUSAL_BLOCKS=geometry is not None,
                LISTS=lists is not None,
                num_warps=num_warps or _warps(width),
            )
    return keep.view(torch.bool).view(scores.shape)


@functools.lru_cache(maxsize=64)
def _width_classes(
    q_blocks: int, k_blocks: int, q_len: int, kv_len: int, block: int
) -> tuple[tuple[int, int, int], ...]:
    """(first query block, number of query blocks, row width) runs: the reach of query block ``g`` (key
    blocks with some causal pair) grows with ``g``, so each power-of-two width is one run of blocks."""
    runs: list[tuple[int, int, int]] = []  # cached: one pass over the query blocks per shape
    for g in range(q_blocks):
        last = min((g + 1) * block, q_len) - 1 + (kv_len - q_len)
        width = max(triton.next_power_of_2(min(last // block + 1, k_blocks)), 32)
        if runs and runs[-1][2] == width:
            runs[-1] = (runs[-1][0], runs[-1][1] + 1, width)
        else:
            runs.append((g, 1, width))
    return tuple(runs)


def triton_select_top(scores: Tensor, k: Tensor) -> Tensor:
    """bool mask of the ``k[..., None]`` best entries of each row of fp32 ``scores`` (last dim), ties to
    the lowest index; ``k`` broadcasts against ``scores.shape[:-1]`` with ``1 <= k <= scores.shape[-1]``.

    No host synchronisation. Scores must be free of NaN.
    """
    return _launch(scores, k, None)


def triton_block_topk_keep(
    scores: Tensor, k: Tensor, q_len: int, kv_len: int, block: int, *, num_warps: int | None = None
) -> Tensor:
    """Block top-k's kept tiles ``[H, QB, KB]`` from raw pooled scores ``[H, QB, KB]`` (fp32, NaN-free).

    Equal to: scores ``-inf`` where key block ``b`` is out of causal reach of query block ``g`` and ``+inf``
    where forced (``b == 0`` or ``b`` holds one of ``g``'s own positions), `triton_select_top` with
    ``k [H, 1]``, then ``(top & reach) | forced``. Positions are bottom-right aligned (``q_len <= kv_len``).
    ``num_warps`` overrides the warps per row (for tuning).
    """
    _check_grid(scores, q_len, kv_len, block)
    return _launch(scores, k, (q_len, kv_len, block), num_warps)


def triton_block_topk(
    scores: Tensor, k: Tensor, q_len: int, kv_len: int, block: int, *, row_bound: int, kind_ids: Tensor
) -> tuple[Tensor, tuple[Tensor, ...]]:
    """`triton_block_topk_keep` and, from the same pass, the layout lists of the kept tiles.

    The lists are those of `sparseattn.kernels.lowering.triton_tile_lists.triton_tile_lists` with ``row_bound``
    FULL slots per row (``(full counts, starts, indices, partial counts, starts, indices, bitmap ids)``);
    ``kind_ids [8]`` maps each diagonal-tile kind to its bitmap (``tile_grid.causal_bitmaps``).
    """
    heads, q_blocks, k_blocks = scores.shape
    _check_grid(scores, q_len, kv_len, block)
    dev = scores.device
    rows = heads * q_blocks
    per_row = min(row_bound, k_blocks)
    f_num = torch.empty(1, heads, q_blocks, dtype=torch.int32, device=dev)
    p_num = torch.empty_like(f_num)
    f_idx = torch.empty(max(rows * per_row, 1), dtype=torch.int32, device=dev)
    p_idx = torch.empty(max(rows * 2, 1), dtype=torch.int32, device=dev)
    p_mid = torch.empty_like(p_idx)
    # (the host copy is asynchronous: with pageable memory a synchronous one would wait for the device)
    kind_ids = kind_ids.to(dev, non_blocking=True).to(torch.int32)
    keep = _launch(scores, k, (q_len, kv_len, block), None, (kind_ids, f_num, f_idx, p_num, p_idx, p_mid, per_row))
    f_start = (torch.arange(rows, device=dev) * per_row).view(f_num.shape)
    p_start = (torch.arange(rows, device=dev) * 2).view(f_num.shape)
    return keep, (f_num, f_start, f_idx, p_num, p_start, p_idx, p_mid)


def _check_grid(scores: Tensor, q_len: int, kv_len: int, block: int) -> None:
    q_blocks, k_blocks = -(-q_len // block), -(-kv_len // block)
    if scores.dim() != 3 or tuple(scores.shape[1:]) != (q_blocks, k_blocks):
        raise ValueError(
            f"scores: expected [H, {q_blocks}, {k_blocks}] for q_len={q_len}, kv_len={kv_len}, block={block}, "
            f"got {tuple(scores.shape)}"
        )
