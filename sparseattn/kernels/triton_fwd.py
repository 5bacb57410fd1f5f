"""THE block-sparse attention forward kernel: one kernel for every pattern, driven by a `BlockLayout`.

Each program takes one work item (``triton_schedule.py``): a (batch, query head, query block) row and a
contiguous chunk of its kv work. It streams, in order,

1. FULL tiles: no mask at all (only a bounds mask on the last key block when ``kv_len`` is ragged);
   with ``KernelConfig(full_runs=True)`` the chunk's first two runs of consecutive blocks, planned in
   the work item, are walked without reading the block list,
2. PARTIAL tiles: the tile's packed bitmap, one int32 word per 32 columns, expanded to bits in registers,
3. gathered key columns (last chunk of a row only): K/V rows gathered by position, kept where k <= q_pos,

(K/V tiles by pointer loads or, with ``KernelConfig(tma=True)``, through tensor descriptors)
through an online softmax in fp32 (exp2, with log2(e) folded into the scale), and writes the output and
the natural-log lse, or, for a chunk of a split row, fp32 partials that ``triton_merge.py`` combines.

GQA is native: query head ``h`` reads kv head ``h // group``; K/V are never repeated. Layouts broadcast
over batch and heads through the work list's layout-row index. Rows that attend to nothing give output 0
and lse -inf. Addresses are computed in int64.
"""

from __future__ import annotations

import functools
import math
import os
import weakref
from dataclasses import dataclass

import torch
import triton
import triton.language as tl
from torch import Tensor
from triton.tools.tensor_descriptor import TensorDescriptor

from sparseattn.kernels.gluon_fwd import gluon_sparse_attention
from sparseattn.kernels.triton_merge import merge_partials
from sparseattn.kernels.triton_schedule import RowStats, WorkList, build_work_list
from sparseattn.layout import BlockLayout

LOG2E = 1.4426950408889634
LN2 = tl.constexpr(0.6931471805599453)  # a constexpr: kernels may read it
SUPPORTED_BLOCKS = (32, 64, 128)
SUPPORTED_HEAD_DIMS = (16, 32, 64, 128, 256)


@triton.jit
def _update(acc, l_i, m_i, qk, v, qk_scale, SAFE: tl.constexpr):
    """One online-softmax step on raw scores ``qk`` [ROWS, BLOCK_N] (masked entries -inf).

    ``qk_scale`` includes log2(e), so exp2 gives exp and the scaling folds into one FMA with the max.
    SAFE handles rows whose every score so far is -inf (exp2(-inf - -inf) would be NaN); FULL tiles
    always hold a finite score per row and skip it. (Skipping the rescale of ``acc`` until the max grows
    by 2**8, and computing half the exponentials by polynomial on the FMA pipe, both measured slower on
    the H200: experiments/results/kernel_options_softmax.md.)
    """
    m_new = tl.maximum(m_i, tl.max(qk, 1) * qk_scale)  # [ROWS]
    if SAFE:
        m_ref = tl.where(m_new == float("-inf"), 0.0, m_new)
    else:
        m_ref = m_new
    alpha = tl.math.exp2(m_i - m_ref)  # [ROWS]
    p = tl.math.exp2(qk * qk_scale - m_ref[:, None])  # [ROWS, BLOCK_N]
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None]
    acc = tl.dot(p.to(v.dtype), v, acc)  # [ROWS, HEAD_DIM]
    return acc, l_i, m_new


@triton.jit
def _load_tile(k_base, v_base, start, k_offs, v_offs, keys, stride_ks, stride_vs, kv_len, BOUNDED: tl.constexpr):
    """K and V of the key block starting at ``start`` -> two [BLOCK_N, HEAD_DIM] tiles (zeros past kv_len).

    Only the block's base is int64; the in-tile offsets ``k_offs, v_offs`` are precomputed int32, which
    keeps the per-tile address math off the critical path.
    """
    k_ptrs = k_base + start.to(tl.int64) * stride_ks + k_offs
    v_ptrs = v_base + start.to(tl.int64) * stride_vs + v_offs
    if BOUNDED:
        inside = keys[:, None] < kv_len
        k = tl.load(k_ptrs, mask=inside, other=0.0)
        v = tl.load(v_ptrs, mask=inside, other=0.0)
    else:
        k = tl.load(k_ptrs)
        v = tl.load(v_ptrs)
    return k, v


@triton.jit
def _load_tile_tma(k_desc, v_desc, row0, start, keys, kv_len, BOUNDED: tl.constexpr):
    """The same two tiles through tensor descriptors (Hopper's TMA engine copies them, no address math).

    The descriptors view K and V as [B * Hkv * kv_len, HEAD_DIM], so a ragged last block reads the next
    head's first rows (zeros past the tensor's end): scores there are masked to -inf by the caller and V
    is zeroed here, so even non-finite values in another head cannot leak in.
    """
    k = k_desc.load([row0 + start, 0])  # [BLOCK_N, HEAD_DIM]
    v = v_desc.load([row0 + start, 0])  # [BLOCK_N, HEAD_DIM]
    if BOUNDED:
        v = tl.where(keys[:, None] < kv_len, v, 0.0)
    return k, v


@triton.jit
def _full_step(
    acc, l_i, m_i, q, start, offs_n, k_base, v_base, k_offs, v_offs, K_DESC, V_DESC, desc_row0,
    stride_ks, stride_vs, kv_len, qk_scale,
    EVEN_KV: tl.constexpr, USE_TMA: tl.constexpr,
):  # fmt: skip
    """One FULL tile at key ``start``: no mask beyond the bounds of a ragged last block."""
    keys = start + offs_n  # [BLOCK_N]
    if USE_TMA:
        k, v = _load_tile_tma(K_DESC, V_DESC, desc_row0, start, keys, kv_len, not EVEN_KV)
    else:
        k, v = _load_tile(k_base, v_base, start, k_offs, v_offs, keys, stride_ks, stride_vs, kv_len, not EVEN_KV)
    qk = tl.dot(q, tl.trans(k))  # [ROWS, BLOCK_N]
    if not EVEN_KV:
        qk = tl.where(keys[None, :] < kv_len, qk, float("-inf"))
    return _update(acc, l_i, m_i, qk, v, qk_scale, False)


@triton.jit
def _partial_step(
    acc, l_i, m_i, q, start, mask_id, TILE_MASKS, words_offs, shifts, offs_n, k_base, v_base, k_offs, v_offs,
    K_DESC, V_DESC, desc_row0, stride_ks, stride_vs, kv_len, qk_scale,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, EVEN_KV: tl.constexpr, USE_TMA: tl.constexpr,
):  # fmt: skip
    """One PARTIAL tile at key ``start``: bit (row, col) of bitmap ``mask_id`` decides (tail bits are zero).

    The bitmap already drops columns past ``kv_len``, so K/V are bounded only where a block can reach
    past it (a ragged ``kv_len``), as for FULL tiles: zeroing V after a TMA load takes it through the
    registers and back to shared memory before the second matmul.
    """
    WORDS: tl.constexpr = BLOCK_N // 32
    ROWS: tl.constexpr = q.shape[0]
    keys = start + offs_n  # [BLOCK_N]
    words = tl.load(TILE_MASKS + mask_id.to(tl.int64) * (BLOCK_M * WORDS) + words_offs)  # [ROWS, WORDS]
    bits = tl.reshape(tl.broadcast_to(words[:, :, None], [ROWS, WORDS, 32]), [ROWS, BLOCK_N])
    keep = ((bits >> shifts[None, :]) & 1) != 0  # [ROWS, BLOCK_N]
    if USE_TMA:
        k, v = _load_tile_tma(K_DESC, V_DESC, desc_row0, start, keys, kv_len, not EVEN_KV)
    else:
        k, v = _load_tile(k_base, v_base, start, k_offs, v_offs, keys, stride_ks, stride_vs, kv_len, not EVEN_KV)
    qk = tl.where(keep, tl.dot(q, tl.trans(k)), float("-inf"))
    return _update(acc, l_i, m_i, qk, v, qk_scale, True)


@triton.jit
def _gather_kv(k_base, v_base, keys, offs_d, stride_ks, stride_vs, kv_len):
    """K and V rows at arbitrary positions ``keys`` [BLOCK_N] (gathered columns), zeros out of range."""
    k_ptrs = k_base + keys[:, None].to(tl.int64) * stride_ks + offs_d[None, :]
    v_ptrs = v_base + keys[:, None].to(tl.int64) * stride_vs + offs_d[None, :]
    inside = keys[:, None] < kv_len
    k = tl.load(k_ptrs, mask=inside, other=0.0)
    v = tl.load(v_ptrs, mask=inside, other=0.0)
    return k, v


@triton.jit
def _sparse_fwd_kernel(
    Q,
    K,
    V,
    Q_DESC,
    K_DESC,
    V_DESC,
    Out,
    LSE,
    O_PART,
    LSE_PART,
    WORK,
    stride_work,
    FULL_IDX,
    PART_IDX,
    PART_MID,
    TILE_MASKS,
    COL_NUM,
    COL_START,
    COL_IDX,
    stride_qb,
    stride_qh,
    stride_qs,
    stride_kb,
    stride_kh,
    stride_ks,
    stride_vb,
    stride_vh,
    stride_vs,
    stride_ob,
    stride_oh,
    stride_os,
    stride_lb,
    stride_lh,
    q_len,
    kv_len,
    group,
    kv_heads,
    qk_scale,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    EVEN_KV: tl.constexpr,
    HAS_COLS: tl.constexpr,
    NUM_STAGES: tl.constexpr,
    USE_TMA: tl.constexpr,
    PACK: tl.constexpr,
    FULL_RUNS: tl.constexpr,
    Q_IN_REGISTERS: tl.constexpr,
):
    WORDS: tl.constexpr = BLOCK_N // 32
    ROWS: tl.constexpr = PACK * BLOCK_M  # query rows of a program: PACK heads x BLOCK_M positions
    item = WORK + tl.program_id(0).to(tl.int64) * stride_work
    b = tl.load(item + 0).to(tl.int64)
    h = tl.load(item + 1).to(tl.int64)
    qb = tl.load(item + 2).to(tl.int64)
    lrow = tl.load(item + 3).to(tl.int64)
    t0 = tl.load(item + 4)
    t1 = tl.load(item + 5)
    slot = tl.load(item + 6).to(tl.int64)
    slot_stride = tl.load(item + 7).to(tl.int64)
    n_full = tl.load(item + 8)
    n_total = tl.load(item + 9)
    full_start = tl.load(item + 10).to(tl.int64)
    part_start = tl.load(item + 11).to(tl.int64)
    a_end = tl.load(item + 12)  # the chunk's first run of FULL blocks: end position, block - position
    a_base = tl.load(item + 13)
    b_end = tl.load(item + 14)  # its second run
    b_base = tl.load(item + 15)

    # With PACK > 1 the program's rows are PACK query heads (one kv head, one layout row) stacked:
    # K/V tiles are read once for all of them, the way one taller query block would, without
    # computing any pair the layout does not list.
    r = tl.arange(0, ROWS)  # [ROWS]; the name must not be reused below (the epilogue reads it)
    rm = r % BLOCK_M  # [ROWS] row within the layout's tile
    head_r = h + r // BLOCK_M  # [ROWS] query head of each row
    offs_m = qb * BLOCK_M + rm  # [ROWS] query index
    offs_n = tl.arange(0, BLOCK_N)  # [BLOCK_N] column within a tile
    offs_d = tl.arange(0, HEAD_DIM)  # [HEAD_DIM]
    in_q = offs_m < q_len

    if Q_IN_REGISTERS:
        # One box of the PACK heads' blocks, rows past q_len zero-filled. Through the reshape the compiler
        # keeps q in registers as the first matmul's operand instead of re-reading it from shared memory
        # for every tile, which 32-column tiles feel most (see KernelConfig.q_in_registers).
        q_box = Q_DESC.load([b.to(tl.int32), h.to(tl.int32), (qb * BLOCK_M).to(tl.int32), 0])
        q = tl.reshape(q_box, [ROWS, HEAD_DIM])  # [1, PACK, BLOCK_M, HEAD_DIM] -> [ROWS, HEAD_DIM]
    else:
        q_ptrs = Q + b * stride_qb + head_r[:, None] * stride_qh + offs_m[:, None] * stride_qs + offs_d[None, :]
        q = tl.load(q_ptrs, mask=in_q[:, None], other=0.0)  # [ROWS, HEAD_DIM]
    kv_head = h // group
    k_base = K + b * stride_kb + kv_head * stride_kh
    v_base = V + b * stride_vb + kv_head * stride_vh

    k_offs = offs_n[:, None] * stride_ks + offs_d[None, :]  # [BLOCK_N, HEAD_DIM] int32, within a block
    v_offs = offs_n[:, None] * stride_vs + offs_d[None, :]
    desc_row0 = ((b * kv_heads + kv_head) * kv_len).to(tl.int32)  # first row of this kv head in the descriptors

    m_i = tl.full([ROWS], float("-inf"), tl.float32)
    l_i = tl.zeros([ROWS], tl.float32)
    acc = tl.zeros([ROWS, HEAD_DIM], tl.float32)

    # Every loop is skipped when empty: a pipelined loop's prologue costs even with no iteration, which
    # short rows (a triangle's handful of tiles) feel.
    # FULL tiles: every in-range pair counts. The chunk's first two runs of consecutive blocks step from
    # each run's first block (planned in the work item), so no load feeds their K/V addresses and the
    # pipeliner issues those loads stages ahead (it does not pipeline a load whose address comes from a
    # load in the loop); FULL tiles past them, if any, are read by index.
    full_row = FULL_IDX + full_start
    f_lo = tl.minimum(t0, n_full)
    f_hi = tl.minimum(t1, n_full)
    idx_lo = f_lo
    if FULL_RUNS:
        # One loop over both runs: a scalar select picks the run's base, so the loop stays load-free
        # (a loop per run measured slower on long rows).
        if f_lo < b_end:
            for i in tl.range(f_lo, b_end, num_stages=NUM_STAGES):
                base = tl.where(i < a_end, a_base, b_base)
                acc, l_i, m_i = _full_step(
                    acc, l_i, m_i, q, (base + i) * BLOCK_N, offs_n, k_base, v_base, k_offs, v_offs, K_DESC,
                    V_DESC, desc_row0, stride_ks, stride_vs, kv_len, qk_scale, EVEN_KV, USE_TMA,
                )  # fmt: skip
        idx_lo = b_end
    if idx_lo < f_hi:
        for i in tl.range(idx_lo, f_hi, num_stages=NUM_STAGES):
            acc, l_i, m_i = _full_step(
                acc, l_i, m_i, q, tl.load(full_row + i) * BLOCK_N, offs_n, k_base, v_base, k_offs, v_offs, K_DESC,
                V_DESC, desc_row0, stride_ks, stride_vs, kv_len, qk_scale, EVEN_KV, USE_TMA,
            )  # fmt: skip

    # PARTIAL tiles, by index. (Reading their ids ahead in one vector load, as FULL runs avoid index
    # loads, gained nothing: experiments/results/kernel_options_unguarded.md.)
    part_row = PART_IDX + part_start
    mid_row = PART_MID + part_start
    words_offs = rm[:, None] * WORDS + tl.arange(0, WORDS)[None, :]  # [ROWS, WORDS]
    shifts = offs_n % 32  # [BLOCK_N]
    p_lo = tl.maximum(t0, n_full) - n_full
    p_hi = t1 - n_full
    if p_lo < p_hi:
        for j in tl.range(p_lo, p_hi, num_stages=NUM_STAGES):
            acc, l_i, m_i = _partial_step(
                acc, l_i, m_i, q, tl.load(part_row + j) * BLOCK_N, tl.load(mid_row + j), TILE_MASKS, words_offs,
                shifts, offs_n, k_base, v_base, k_offs, v_offs, K_DESC, V_DESC, desc_row0, stride_ks, stride_vs,
                kv_len, qk_scale, BLOCK_M, BLOCK_N, EVEN_KV, USE_TMA,
            )  # fmt: skip

    # Gathered columns, done once per row by the chunk that ends it. The constexpr test stays apart
    # from the runtime one so that layouts without columns compile without this code.
    if HAS_COLS:  # noqa: SIM102
        if t1 == n_total:
            n_cols = tl.load(COL_NUM + lrow)
            col_row = COL_IDX + tl.load(COL_START + lrow)
            q_pos = offs_m + (kv_len - q_len)  # [ROWS] bottom-right aligned positions
            for c0 in range(0, n_cols, BLOCK_N):
                slots = c0 + offs_n  # [BLOCK_N]
                valid = slots < n_cols
                cols = tl.load(col_row + slots, mask=valid, other=0)  # [BLOCK_N]
                keep = valid[None, :] & (cols[None, :] <= q_pos[:, None])  # [ROWS, BLOCK_N]
                cols = tl.where(valid, cols, kv_len)  # padding reads nothing
                k, v = _gather_kv(k_base, v_base, cols, offs_d, stride_ks, stride_vs, kv_len)
                qk = tl.where(keep, tl.dot(q, tl.trans(k)), float("-inf"))
                acc, l_i, m_i = _update(acc, l_i, m_i, qk, v, qk_scale, True)

    nonempty = l_i > 0
    l_safe = tl.where(nonempty, l_i, 1.0)
    out = acc / l_safe[:, None]  # [ROWS, HEAD_DIM]
    lse = tl.where(nonempty, (m_i + tl.math.log2(l_safe)) * LN2, float("-inf"))  # [ROWS]
    if slot < 0:
        o_ptrs = Out + b * stride_ob + head_r[:, None] * stride_oh + offs_m[:, None] * stride_os + offs_d[None, :]
        tl.store(o_ptrs, out.to(Out.dtype.element_ty), mask=in_q[:, None])
        tl.store(LSE + b * stride_lb + head_r * stride_lh + offs_m, lse, mask=in_q)
    else:
        slot_r = slot + (r // BLOCK_M) * slot_stride  # [ROWS] each packed head's own scratch slot
        tl.store(O_PART + slot_r[:, None] * (BLOCK_M * HEAD_DIM) + rm[:, None] * HEAD_DIM + offs_d[None, :], out)
        tl.store(LSE_PART + slot_r * BLOCK_M + rm, lse)


@dataclass(frozen=True)
class KernelConfig:
    """Launch knobs: warps per program, software-pipelining depth of the kv loops, and TMA loads.

    ``tma`` loads K/V tiles through tensor descriptors (the TMA copy engine on sm_90+; the interpreter
    emulates them), which needs K and V contiguous: other layouts are copied first. Triton 3.6's warp
    specialisation of the kv loop was measured too and changed nothing on the H200 (kernel_tuning.md as of
    commit 7d1518f).
    ``pack`` query heads of one kv head share a program (and each K/V tile load) when the layout does
    not depend on the head; the program then computes ``pack * block_m`` rows.
    ``full_runs`` walks a chunk's first two runs of consecutive FULL blocks without index loads, which
    keeps loads out of the K/V address chain so that the pipeliner issues the K/V loads ahead
    (experiments/results/kernel_options.md, dense_ceiling.md).
    ``max_registers`` caps the registers per thread (PTX ``.maxnreg``): at 128 with 8 warps two programs
    share a multiprocessor's 64K registers, where the compiler would otherwise take up to 255.
    ``q_in_registers`` loads the query block through a tensor descriptor (needs ``tma``) in a form the
    compiler keeps in registers as the first matmul's operand. Otherwise the matmul reads it from shared
    memory for every K tile: on 32-column tiles that re-read weighs as much as the matmul itself, while
    on dense 128 x 128 rows the registers it takes cost more than it saves (kernel_q_registers.md).
    ``warp_specialized`` runs the same computation as ``gluon_fwd.py``'s kernel, written in Gluon for
    Hopper: a load warp and two compute warpgroups overlapping each tile's softmax with matmuls, which
    Triton cannot express (dense causal 1.0x of cuDNN against 0.92x, gluon_dense.md). It takes 128 x 128
    tiles and ``num_warps=4`` (the first compute warpgroup; the kernel adds the others), ``num_stages``
    two K/V stages (with the query block and the output's staging buffer they fill shared memory), TMA,
    one head per program; ``ping_pong`` makes its warpgroups take turns at the
    tensor cores. ``persistent`` launches it as one program per multiprocessor, each taking work items
    by a fixed stride in the list's order: the load warp then brings the next item's query block and
    first tiles while the warpgroups finish this one, which hides a short row's start and end
    (Triangle() on 128 x 128 tiles 0.907 against 1.034 ms at 32K; dense causal, whose rows are long,
    1.01x cuDNN against 1.06x at 128K: triangle_tiles.md). `default_config` takes it for short rows.
    """

    num_warps: int = 8
    num_stages: int = 3
    tma: bool = False
    pack: int = 1
    full_runs: bool = True
    max_registers: int | None = None
    q_in_registers: bool = False
    warp_specialized: bool = False
    ping_pong: bool = False
    persistent: bool = False

    def __post_init__(self) -> None:
        if self.pack not in (1, 2, 4):
            raise ValueError(f"pack: expected 1, 2 or 4 query heads per program, got {self.pack}")
        if self.max_registers is not None and not 24 <= self.max_registers <= 255:
            raise ValueError(
                f"max_registers: expected None or 24 to 255 registers per thread, got {self.max_registers}"
            )
        if self.q_in_registers and not self.tma:
            raise ValueError("q_in_registers: needs tma=True (the query block is loaded through a tensor descriptor)")
        if self.ping_pong and not self.warp_specialized:
            raise ValueError("ping_pong: needs warp_specialized=True")
        if self.persistent and not self.warp_specialized:
            raise ValueError("persistent: needs warp_specialized=True")
        if self.warp_specialized and not (
            self.tma and self.num_warps == 4 and self.num_stages == 2 and self.pack == 1 and self.full_runs
        ):
            raise ValueError(
                f"warp_specialized: expected tma=True, num_warps=4, num_stages=2, pack=1 and full_runs=True, got {self}"
            )
        if self.warp_specialized and (self.max_registers is not None or self.q_in_registers):
            raise ValueError("warp_specialized: sets its own registers and keeps the query block in registers")


# Rows shorter than this many 128 x 128 tiles on average run faster on 64 x 64 tiles with 4 warps:
# the per-program setup (Q load, pipeline fill, epilogue) is then spread over more, smaller programs
# that keep two per multiprocessor (experiments/results/kernel_tuning.md as of commit 7d1518f:
# Triangle() at 128K, 4.99 ms on 64 x 64 against 5.71 ms on 128 x 128; dense causal the other way round).
SHORT_ROW_TILES = 16

# Keys from which short rows take 128 x 128 tiles and the persistent warp-specialised launch on Hopper
# (`preferred_block_size`). Replayed from CUDA graphs (device time), Triangle() ran there in 0.226 against
# 0.228 ms on 32 x 32 tiles at 8K and 0.452 against 0.478 ms at 16K, but 0.116 against 0.113 ms at 4K and
# 0.060 against 0.056 ms at 2K (short_prompt_launch.md); 0.907 against 0.942 ms at 32K and 3.666 against
# 3.870 ms at 128K (triangle_tiles.md).
WARP_SPECIALIZED_SHORT_ROWS_FROM = 8192


def preferred_block_size(
    head_dim: int, dtype: torch.dtype, row_tiles: float | None = None, pack: int = 1, warp_specialized: bool = False
) -> tuple[int, int]:
    """The (block_m, block_n) to lower patterns with for the Triton path.

    128 x 128 tiles fill Hopper's tensor cores and keep the per-tile bookkeeping (index loads, bitmap
    expansion) small against two 128-deep matmuls, for long rows. ``row_tiles``, the mean number of
    128 x 128 tiles per (head, query block) row when known, picks smaller tiles for short-row (sparse)
    layouts: 32 x 32 when query heads of a kv head share each program (``pack``, see `packable_heads`),
    64 x 64 otherwise, unless the warp-specialised launch runs them (``warp_specialized``: Hopper, head
    dim 64 or 128, fp16 or bf16, see `warp_specialized_available`). Persistent, it runs short rows on
    128 x 128 tiles faster than the small tiles do, though it computes more pairs (Triangle() 0.907
    against 0.942 ms at 32K, 3.666 against 3.870 ms at 128K: triangle_tiles.md). 256-wide heads would
    spill, so they take 64 x 64; fp32 inputs (interpreter tests) too.
    """
    if head_dim not in SUPPORTED_HEAD_DIMS:
        raise ValueError(f"head_dim: expected one of {SUPPORTED_HEAD_DIMS}, got {head_dim}")
    if head_dim > 128 or dtype == torch.float32:
        return (64, 64)
    if row_tiles is not None and row_tiles < SHORT_ROW_TILES and not warp_specialized:
        return (32, 32) if pack >= 2 else (64, 64)
    return (128, 128)


def warp_specialized_available(head_dim: int, dtype: torch.dtype, device: torch.device | str) -> bool:
    """Whether the warp-specialised launch takes ``head_dim`` and ``dtype`` inputs on ``device`` (for
    a 128 x 128 layout without gathered key columns; `warp_specialized_unsupported` says why not)."""
    return head_dim in (64, 128) and dtype in (torch.float16, torch.bfloat16) and _is_hopper(torch.device(device))


def packable_heads(group: int, head_dim: int, per_head: bool, device: torch.device | str) -> int:
    """Query heads of one kv head that the default launch packs into a program, for GQA groups of
    ``group`` on ``device``: 2 on Hopper (TMA) when the layout is the same for every head and the group
    is even, else 1.

    Packing reads each K/V tile once for the packed heads; it measured slower than none without TMA
    (`default_config`). Four heads per program (``KernelConfig(pack=4)``) measured slower than two once
    the query block stays in registers: their 128 rows then take one 8-warp program per multiprocessor.
    """
    if per_head or head_dim < 64 or not _has_tma(torch.device(device)) or group % 2:
        return 1
    return 2


def default_config(
    layout: BlockLayout, head_dim: int, group: int = 1, dtype: torch.dtype = torch.bfloat16
) -> KernelConfig:
    """Fastest launch knobs measured per tile shape (experiments/results/kernel_tuning*.md), for query
    heads in GQA groups of ``group``.

    Long rows on 128 x 128 tiles gain ~4% from TMA loads with a 3-deep pipeline on Hopper (dense causal,
    32K and 128K), and walk FULL tiles run by run (dense causal 16.98 against 18.83 ms at 32K, mixture
    73.9 against 84.4 ms at 128K; kernel_options.md).
    Short rows of a head-independent layout pack two query heads of a kv head into one program with TMA
    loads: on 32 x 32 tiles, 4 warps, FULL runs, the query block in registers (Triangle() 0.85 to 0.92 ms
    at 32K and 3.80 to 3.84 ms at 128K over four runs, against 0.95 to 0.97 and 3.84 to 3.95 ms for the
    former four-head, 8-warp launch in the same calls; kernel_q_registers.md). On 64 x 64 tiles two heads
    with FULL tiles by index (1.14 ms at 32K, where runs measured 1.47 ms: at 3 stages they need 128 KiB
    of shared memory, one program per multiprocessor; kernel_resources_offline.md). Without TMA packing
    measured slower than none, so other devices and per-head layouts keep one head per program with
    pointer loads. On Hopper, 128 x 128 layouts the Gluon kernel takes (`warp_specialized_unsupported`)
    run warp-specialised, with two K/V stages (dense causal 1.02x cuDNN at 32K and 1.04x at 128K
    against 0.92x and 0.96x for the Triton launch: kernel_bench.md, gluon_dense.md), persistent when
    their rows are short (`short_rows`).
    """
    tma = _has_tma(layout.device)
    if warp_specialized_unsupported(layout, head_dim, dtype) is None:
        return KernelConfig(num_warps=4, num_stages=2, tma=True, warp_specialized=True, persistent=short_rows(layout))
    if layout.block_m >= 128 and head_dim >= 64:
        return KernelConfig(num_warps=8, num_stages=3, tma=True) if tma else KernelConfig(num_warps=8, num_stages=2)
    pack = packable_heads(group, head_dim, layout.num_heads > 1, layout.device)
    if pack == 2 and layout.block_m == 32:
        return KernelConfig(num_warps=4, num_stages=3, tma=True, pack=2, q_in_registers=True)
    if pack == 2:
        return KernelConfig(num_warps=4, num_stages=3, tma=True, pack=2, full_runs=False)
    return KernelConfig(num_warps=4, num_stages=2, full_runs=False)


def warp_specialized_unsupported(layout: BlockLayout, head_dim: int, dtype: torch.dtype) -> str | None:
    """Why ``KernelConfig(warp_specialized=True)`` cannot run ``layout`` for these inputs, or None."""
    if not _is_hopper(layout.device):
        return f"needs a Hopper GPU (sm_90) and Triton's Gluon, got device {layout.device}"
    if layout.block_size != (128, 128):
        return f"needs 128 x 128 tiles, got a layout on {layout.block_size}"
    if head_dim not in (64, 128):
        return f"needs head dim 64 or 128, got {head_dim}"
    if dtype not in (torch.float16, torch.bfloat16):
        return f"needs float16 or bfloat16 inputs, got {dtype}"
    if layout.col_num is not None:
        return "does not take gathered key columns"
    return None


@functools.cache
def _is_hopper(device: torch.device) -> bool:
    return device.type == "cuda" and torch.cuda.is_available() and torch.cuda.get_device_capability(device)[0] == 9


@functools.cache
def _has_tma(device: torch.device) -> bool:
    # Planning for a CUDA device on a machine without one (configs, tests) assumes no TMA.
    return device.type == "cuda" and torch.cuda.is_available() and torch.cuda.get_device_capability(device)[0] >= 9


_ROW_STATS: weakref.WeakKeyDictionary[BlockLayout, RowStats] = weakref.WeakKeyDictionary()


def _row_stats(layout: BlockLayout) -> RowStats:
    """``RowStats.of(layout)``, read back once per layout: the launch choice and the work list both ask."""
    if layout not in _ROW_STATS:
        _ROW_STATS[layout] = RowStats.of(layout)
    return _ROW_STATS[layout]


def short_rows(layout: BlockLayout) -> bool:
    """Whether ``layout``'s rows hold fewer than ``SHORT_ROW_TILES`` tiles of 128 x 128 on average: read
    back once per layout (one host sync), and False for a ``device_built`` layout, which must not sync.

    The warp-specialised launch runs such layouts persistent, where the load warp brings the next row's
    query block and first tiles while the warpgroups finish a row (Triangle() 0.907 against 1.034 ms at
    32K on 128 x 128 tiles). Long rows have no start to hide and lose the balance of one program per
    row (dense causal 1.01x cuDNN persistent against 1.06x at 128K): triangle_tiles.md.
    """
    if layout.device_built:
        return False
    return _row_stats(layout).mean * layout.block_m * layout.block_n / (128 * 128) < SHORT_ROW_TILES


_WORK_CACHE: weakref.WeakKeyDictionary[BlockLayout, dict[tuple, WorkList]] = weakref.WeakKeyDictionary()


def _num_sms(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 4


def work_list(
    layout: BlockLayout,
    batch: int,
    heads: int,
    *,
    max_chunk: int | None = None,
    heavy_first: bool | None = None,
    pack: int = 1,
    runs: bool = True,
) -> WorkList:
    """The (cached) work list of ``layout`` for ``batch`` x ``heads`` query heads, ``pack`` heads per
    item; see triton_schedule.

    ``heavy_first=None`` balances (heavy rows first, long rows split) only when the rows are unequal;
    ``runs`` plans the FULL runs that ``KernelConfig(full_runs=True)`` walks.
    """
    # Keyed by the arguments as given: resolving the defaults reads the layout's counts on the host,
    # a device sync that must not recur on every call.
    key = (batch, heads, max_chunk, heavy_first, pack, runs)
    per_layout = _WORK_CACHE.setdefault(layout, {})
    if key not in per_layout:
        if layout.device_built and max_chunk is None and heavy_first is None:
            # Built once per layer and prompt: plan without reading the counts back (no split).
            max_chunk, heavy_first = 0, True
        # One host sync reads what the defaults need, and only when they are needed.
        stats = _row_stats(layout) if heavy_first is None or (max_chunk is None and heavy_first) else None
        balance = stats.unequal if stats is not None and heavy_first is None else bool(heavy_first)
        chunk = max_chunk
        if chunk is None and not balance:
            chunk = 0
        elif chunk is None:
            assert stats is not None
            repeats = (batch // layout.batch_size) * (heads // pack // layout.num_heads)
            chunk = stats.max_chunk(repeats, _num_sms(layout.device))
        per_layout[key] = build_work_list(
            layout, batch, heads, max_chunk=chunk, heavy_first=balance, pack=pack, runs=runs
        )
    return per_layout[key]


def _check(q: Tensor, k: Tensor, v: Tensor, layout: BlockLayout) -> None:
    interpreting = os.environ.get("TRITON_INTERPRET") == "1"
    for name, t in (("q", q), ("k", k), ("v", v)):
        if t.device.type != "cuda" and not interpreting:
            raise ValueError(
                f"{name}: the Triton kernel needs CUDA tensors, got device {t.device} "
                "(set TRITON_INTERPRET=1 to run Triton's interpreter on CPU, for tests)"
            )
        if t.dim() != 4:
            raise ValueError(f"{name}: expected [B, H, S, D], got shape {tuple(t.shape)}")
        if t.dtype not in (torch.float16, torch.bfloat16, torch.float32):
            raise ValueError(f"{name}: expected float16, bfloat16 or float32, got {t.dtype}")
    if not (q.dtype == k.dtype == v.dtype):
        raise ValueError(f"q, k, v: expected one dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if layout.device != q.device:
        raise ValueError(f"layout: expected it on {q.device}, got {layout.device} (use layout.to(device))")
    batch, heads, q_len, dim = q.shape
    if k.shape != v.shape or k.shape[0] != batch or k.shape[3] != dim or heads % k.shape[1]:
        raise ValueError(
            f"k, v: expected [{batch}, Hkv, kv_len, {dim}] with Hkv dividing {heads}, "
            f"got {tuple(k.shape)} and {tuple(v.shape)}"
        )
    if dim not in SUPPORTED_HEAD_DIMS:
        raise ValueError(f"q: head dim expected one of {SUPPORTED_HEAD_DIMS}, got {dim}")
    if layout.block_m not in SUPPORTED_BLOCKS or layout.block_n not in SUPPORTED_BLOCKS:
        raise ValueError(
            f"layout: block_size expected (block_m, block_n) each in {SUPPORTED_BLOCKS}, "
            f"got {layout.block_size}; lower with preferred_block_size({dim}, {q.dtype})"
        )
    if (layout.q_len, layout.kv_len) != (q_len, k.shape[2]):
        raise ValueError(
            f"layout: built for q_len={layout.q_len}, kv_len={layout.kv_len}, "
            f"inputs have q_len={q_len}, kv_len={k.shape[2]}"
        )
    if layout.batch_size not in (1, batch) or layout.num_heads not in (1, heads):
        raise ValueError(
            f"layout: expected batch 1 or {batch} and heads 1 or {heads}, "
            f"got batch {layout.batch_size} and heads {layout.num_heads}"
        )


def _new_outputs(q: Tensor, slots: int, block_m: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Uninitialised out, lse and split-row scratch (tests replace this to poison them with NaN)."""
    batch, heads, q_len, dim = q.shape
    return (
        torch.empty_like(q),
        torch.empty(batch, heads, q_len, dtype=torch.float32, device=q.device),
        torch.empty(slots, block_m, dim, dtype=torch.float32, device=q.device),
        torch.empty(slots, block_m, dtype=torch.float32, device=q.device),
    )


@functools.cache
def _placeholder(device: torch.device) -> Tensor:
    """Stands for an empty or absent list, which the kernel never reads but still wants a pointer for
    (one per device, not allocated on every call)."""
    return torch.zeros(1, dtype=torch.int32, device=device)


def triton_sparse_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    layout: BlockLayout,
    *,
    scale: float | None = None,
    max_chunk: int | None = None,
    heavy_first: bool | None = None,
    config: KernelConfig | None = None,
) -> tuple[Tensor, Tensor]:
    """Block-sparse attention of ``q`` [B, Hq, q_len, D] over ``k, v`` [B, Hkv, kv_len, D] on ``layout``.

    Returns ``(out [B, Hq, q_len, D] in q.dtype, lse [B, Hq, q_len] float32)``, lse in natural log.
    ``max_chunk`` caps the tiles one program runs for a row (``None``: from the work size and the number
    of multiprocessors; ``0``: never split); ``heavy_first=None`` balances only layouts whose rows are
    unequal (a triangle's last rows), ``heavy_first=False`` and ``max_chunk=0`` give the plain,
    unbalanced grid (for measuring the balancing). A ``device_built`` layout with both left ``None``
    runs heaviest rows first without splitting, planned without any host synchronisation (see
    `BlockLayout`). ``config`` overrides warps, stages, TMA and head packing.
    """
    _check(q, k, v, layout)
    batch, heads, q_len, dim = q.shape
    if q.stride(-1) != 1 or k.stride(-1) != 1 or v.stride(-1) != 1:
        q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    scale = 1.0 / math.sqrt(dim) if scale is None else float(scale)
    if not scale > 0:
        raise ValueError(f"scale: expected a positive float (the kernel folds it into the running max), got {scale}")
    config = config or default_config(layout, dim, heads // k.shape[1], q.dtype)
    if config.warp_specialized:
        reason = warp_specialized_unsupported(layout, dim, q.dtype)
        if reason is not None:
            raise ValueError(f"config: warp_specialized {reason}")
    if config.tma and not config.warp_specialized:  # the Gluon launch builds its own descriptors
        # Descriptors need contiguous rows and a 16-byte aligned base (a view may start mid-allocation).
        k, v = (
            t.contiguous() if t.data_ptr() % 16 == 0 else t.clone(memory_format=torch.contiguous_format) for t in (k, v)
        )
        if k.numel() // dim >= 2**31:
            raise ValueError(f"k: {tuple(k.shape)} has over 2**31 rows, beyond a tensor descriptor; use tma=False")
        k_desc = TensorDescriptor.from_tensor(k.view(-1, dim), [layout.block_n, dim])
        v_desc = TensorDescriptor.from_tensor(v.view(-1, dim), [layout.block_n, dim])
    else:
        k_desc, v_desc = k, v  # unread: the pointer path is compiled, or the Gluon launch runs
    q_desc = q  # unread unless q_in_registers
    if config.q_in_registers:
        if q.data_ptr() % 16 or any(s * q.element_size() % 16 for s in q.stride()[:-1]):
            q = q.clone(memory_format=torch.contiguous_format)  # a descriptor's base and strides: 16-byte aligned
        # The packed heads' query blocks as one box of q [B, H, S, D], whatever q's (aligned) strides.
        q_desc = TensorDescriptor.from_tensor(q, [1, config.pack, layout.block_m, dim])
    if config.pack > 1 and (layout.num_heads != 1 or (heads // k.shape[1]) % config.pack):
        raise ValueError(
            f"config: pack={config.pack} needs a layout shared by all heads (got {layout.num_heads} heads) "
            f"and a GQA group divisible by it (got {heads // k.shape[1]})"
        )
    if config.warp_specialized and heavy_first is None and not layout.device_built:
        # One warp-specialised program fills a multiprocessor, so the grid's last wave is long: heaviest
        # rows first even when rows are near-uniform (dense causal), where Triton's launch, two or more
        # programs per multiprocessor, measured faster in grid order (triton_schedule.UNEQUAL_ROWS).
        heavy_first = True
    work = work_list(
        layout, batch, heads, max_chunk=max_chunk, heavy_first=heavy_first, pack=config.pack, runs=config.full_runs
    )

    out, lse, out_part, lse_part = _new_outputs(q, max(work.num_slots, 1), layout.block_m)
    unused = _placeholder(q.device)

    def arg(t: Tensor | None) -> Tensor:
        return unused if t is None or t.numel() == 0 else t.contiguous()

    tile_lists = (arg(layout.full_kv_indices), arg(layout.kv_indices), arg(layout.kv_mask_ids), arg(layout.tile_masks))
    if config.warp_specialized:
        outputs = (out, lse, out_part, lse_part)
        gluon_sparse_attention(q, k, v, layout.block_n, work, tile_lists, outputs, scale * LOG2E, config)
        merge_partials(out, lse, out_part, lse_part, work.merges, layout.block_m)
        return out, lse

    has_cols = layout.col_num is not None

    _sparse_fwd_kernel[(work.items.shape[0],)](
        q,
        k,
        v,
        q_desc,
        k_desc,
        v_desc,
        out,
        lse,
        out_part,
        lse_part,
        work.items,
        work.items.stride(0),
        *tile_lists,
        arg(layout.col_num),
        arg(layout.col_start),
        arg(layout.col_indices),
        q.stride(0),
        q.stride(1),
        q.stride(2),
        k.stride(0),
        k.stride(1),
        k.stride(2),
        v.stride(0),
        v.stride(1),
        v.stride(2),
        out.stride(0),
        out.stride(1),
        out.stride(2),
        lse.stride(0),
        lse.stride(1),
        q_len,
        k.shape[2],
        heads // k.shape[1],
        k.shape[1],
        scale * LOG2E,
        BLOCK_M=layout.block_m,
        BLOCK_N=layout.block_n,
        HEAD_DIM=dim,
        EVEN_KV=k.shape[2] % layout.block_n == 0,
        HAS_COLS=has_cols,
        NUM_STAGES=config.num_stages,
        USE_TMA=config.tma,
        PACK=config.pack,
        FULL_RUNS=config.full_runs,
        Q_IN_REGISTERS=config.q_in_registers,
        num_warps=config.num_warps,
        **({"maxnreg": config.max_registers} if config.max_registers else {}),
    )
    merge_partials(out, lse, out_part, lse_part, work.merges, layout.block_m)
    return out, lse
