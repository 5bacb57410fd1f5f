"""The block-sparse forward kernel on Hopper, warp-specialised, in Gluon.

The same computation as ``triton_fwd.py``'s kernel on the same work list (``planning/work_list.py``): a
program takes one work item, a (batch, query head, 128-row query block) row and a chunk of its tiles,
FULL tiles first (the chunk's two planned runs, then by index), then PARTIAL tiles through their
bitmaps, and writes the output and the natural-log lse, or a split row's fp32 partials. What differs
is the schedule, which Triton cannot express and which brings dense causal from below cuDNN's rate to
above it on the H200 (``experiments/results/kernel_notes.md``), the way FlashAttention-3 does it:

- a load warp (24 registers) issues every TMA load, the query block and each tile's K and V, into
  stages guarded by mbarriers, so the compute warps never wait on an address or a copy;
- two compute warpgroups (240 registers each) take 64 query rows each and share the K/V stages;
- each issues tile j+1's ``Q K^T`` and tile j's ``P V`` together and runs tile j+1's softmax while
  ``P V`` is still on the tensor cores;
- each warpgroup's output leaves through shared memory and one TMA store;
- optionally (``PING_PONG``), the warpgroups pass each other the tensor cores through a pair of
  mbarriers, one issuing its matmuls while the other runs its softmax.

Launched persistent (``KernelConfig(persistent=True)``, one program per multiprocessor taking items by
a fixed stride), the load warp brings the next item's query block and first tiles while the warpgroups
finish the current one, which hides short rows' starts and ends, such as Triangle()'s.

Scope: 128 x 128 tiles, two K/V stages, head dim 64 or 128, fp16 or bf16, no gathered key columns, one
query head per program; ``triton_fwd.default_config`` picks this kernel only there, and ``triton_sparse_attention``
refuses it elsewhere. Gluon has no interpreter, so it runs on a Hopper
GPU only: CI compiles it for sm_90 without a GPU, and ``tests/gpu`` compares it with the oracle.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

import torch
from torch import Tensor
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import (
    fence_async_shared,
    mbarrier,
    tma,
    warpgroup_mma,
    warpgroup_mma_init,
    warpgroup_mma_wait,
)
from triton.experimental.gluon.nvidia.hopper import TensorDescriptor

if TYPE_CHECKING:
    from sparseattn.kernels.attention.config import KernelConfig
    from sparseattn.kernels.planning.work_list import WorkList

LN2 = gl.constexpr(0.6931471805599453)
HALF_ROWS = 64  # query rows per compute warpgroup: wgmma's M
# Registers per thread: the kernel's cap (a program's 12 warps fill the 64K register file), and the
# split that setmaxnreg makes of it between the compute warpgroups and the load warp.
MAX_REGISTERS = 168
COMPUTE_REGISTERS = gl.constexpr(240)
LOAD_REGISTERS = gl.constexpr(24)

# Triton 3.6 names the barrier among a partition's warps `thread_barrier`; 3.7 renamed it `barrier`.
_warps_sync = gl.barrier if hasattr(gl, "barrier") else gl.thread_barrier


@gluon.jit
def _item(WORK, stride_work, item, field: gl.constexpr):
    """Field ``field`` of work item ``item`` (``triton_schedule.WORK_FIELDS``)."""
    return gl.load(WORK + item.to(gl.int64) * stride_work + field)


@gluon.jit
def _runs(WORK, stride_work, item):
    """Work item ``item``'s two planned FULL runs: each run's end and base (`_tile_block`)."""
    return (
        _item(WORK, stride_work, item, 12),
        _item(WORK, stride_work, item, 13),
        _item(WORK, stride_work, item, 14),
        _item(WORK, stride_work, item, 15),
    )


@gluon.jit
def _tile_block(t, n_full, runs, FULL_IDX, full_start, PART_IDX, part_start):
    """Key block of the chunk's tile ``t``: FULL tiles in the two planned runs (``runs``: each run's end
    and base) need no load; the others are read from the row's lists, which start at ``full_start`` and
    ``part_start`` (int32 offsets: they hold fewer registers in the load warp than pointers)."""
    a_end, a_base, b_end, b_base = runs
    if t < n_full:
        if t < a_end:
            block = a_base + t
        elif t < b_end:
            block = b_base + t
        else:
            block = gl.load(FULL_IDX + (full_start + t).to(gl.int64))
    else:
        block = gl.load(PART_IDX + (part_start + t - n_full).to(gl.int64))
    return block


@gluon.jit
def _load_partition(descs, smem, bars, tiles, dims):
    q_desc, k_desc, v_desc = descs
    WORK, stride_work, n_items, FULL_IDX, PART_IDX = tiles
    q_len, _, heads, group, kv_heads = dims
    q_smem, k_smem, v_smem = smem
    q_ready, q_empty, k_ready, k_empty, v_ready, v_empty, _ = bars
    STAGES: gl.constexpr = k_smem.type.shape[0]
    BLOCK_N: gl.constexpr = k_desc.block_type.shape[1]
    HALF: gl.constexpr = q_desc.block_type.shape[0]
    loaded = 0  # K/V tiles this program has loaded so far: their count gives each stage's phase
    for item in range(gl.program_id(0), n_items, gl.num_programs(0)):
        done = item // gl.num_programs(0)  # items this program loaded before this one
        b = _item(WORK, stride_work, item, 0)
        h = _item(WORK, stride_work, item, 1)
        qb = _item(WORK, stride_work, item, 2)
        t0 = _item(WORK, stride_work, item, 4)
        t1 = _item(WORK, stride_work, item, 5)
        n_full = _item(WORK, stride_work, item, 8)
        full_start = _item(WORK, stride_work, item, 10)
        part_start = _item(WORK, stride_work, item, 11)
        runs = _runs(WORK, stride_work, item)

        # The compute warpgroups free the query block as soon as it is in their registers, so the next
        # item's block loads while they still work on this one. A fresh barrier passes phase 1.
        mbarrier.wait(q_empty, (done & 1) ^ 1)
        # Rows past q_len read the next head's (or TMA's zero fill): never stored.
        q_row = (b * heads + h) * q_len + qb * (2 * HALF)
        mbarrier.expect(q_ready, 2 * q_desc.block_type.nbytes)
        tma.async_copy_global_to_shared(q_desc, [q_row, 0], q_ready, q_smem.index(0))
        tma.async_copy_global_to_shared(q_desc, [q_row + HALF, 0], q_ready, q_smem.index(1))
        kv_head = b * kv_heads + h // group
        for t in range(t0, t1):
            g = loaded + t - t0
            stage = g % STAGES
            phase = (g // STAGES & 1) ^ 1  # the first round finds every stage free
            # K/V are [B * Hkv, kv_len, D] boxes of one head: TMA fills rows past kv_len with zeros, so a
            # ragged last block never reads another head's keys, whatever they hold.
            start = _tile_block(t, n_full, runs, FULL_IDX, full_start, PART_IDX, part_start) * BLOCK_N
            mbarrier.wait(k_empty.index(stage), phase)
            mbarrier.expect(k_ready.index(stage), k_desc.block_type.nbytes)
            tma.async_copy_global_to_shared(k_desc, [kv_head, start, 0], k_ready.index(stage), k_smem.index(stage))
            mbarrier.wait(v_empty.index(stage), phase)
            mbarrier.expect(v_ready.index(stage), v_desc.block_type.nbytes)
            tma.async_copy_global_to_shared(v_desc, [kv_head, start, 0], v_ready.index(stage), v_smem.index(stage))
        loaded += t1 - t0


@gluon.jit
def _tile(buffers, i):
    """Stage ``i`` of the K or V buffers as [BLOCK_N, HEAD_DIM] (a TMA box carries the head as a leading 1)."""
    return buffers.index(i).reshape([buffers.type.shape[2], buffers.type.shape[3]])


@gluon.jit
def _bitmap_words(t, n_full, mid_row, TILE_MASKS, rows, BLOCK_M: gl.constexpr):
    """The four words (128 columns) of tile ``t``'s packed bitmap for this warpgroup's ``rows`` when the
    tile is PARTIAL: issued before its scores are awaited, so that the two dependent loads run under the
    matmul rather than after it. Four [HALF] vectors hold 8 registers where one word per score would
    hold 64."""
    partial = t >= n_full
    mask_id = gl.load(mid_row + (t - n_full), mask=partial, other=0).to(gl.int64)
    row_words = TILE_MASKS + mask_id * (BLOCK_M * 4) + rows * 4  # [HALF]
    return (
        gl.load(row_words, mask=partial, other=-1),
        gl.load(row_words + 1, mask=partial, other=-1),
        gl.load(row_words + 2, mask=partial, other=-1),
        gl.load(row_words + 3, mask=partial, other=-1),
    )


@gluon.jit
def _scores(s, t, n_full, words, cols, keys):
    """Scores of tile ``t`` [HALF, BLOCK_N] with dropped pairs at -inf: a PARTIAL tile's by its bitmap
    ``words`` (`_bitmap_words`; bit (row, col)), a FULL tile's past ``keys``, the keys it holds (fewer
    than BLOCK_N only in a ragged last block)."""
    if keys < cols.shape[0]:
        s = gl.where(gl.expand_dims(cols < keys, 0), s, float("-inf"))
    if t >= n_full:
        w0, w1, w2, w3 = words
        word_of = gl.expand_dims(cols // 32, 0)  # [1, BLOCK_N]
        word = gl.where(
            word_of == 0,
            gl.expand_dims(w0, 1),
            gl.where(
                word_of == 1,
                gl.expand_dims(w1, 1),
                gl.where(word_of == 2, gl.expand_dims(w2, 1), gl.expand_dims(w3, 1)),
            ),
        )  # [HALF, BLOCK_N]
        keep = ((word >> gl.expand_dims(cols % 32, 0)) & 1) != 0
        s = gl.where(keep, s, float("-inf"))
    return s


@gluon.jit
def _softmax(s, m_i, l_i, qk_scale, O_ROWS: gl.constexpr):
    """One online-softmax step on raw scores ``s``: probabilities, the factor that moves the running
    output to the new maxima (in the output's row layout), and the new row sums and maxima. A row whose
    scores are all -inf so far keeps 0 (its reference max is taken as 0, not -inf: no NaN)."""
    m_new = gl.maximum(m_i, gl.max(s, 1) * qk_scale)
    m_ref = gl.where(m_new == float("-inf"), 0.0, m_new)
    alpha = gl.exp2(m_i - m_ref)
    p = gl.exp2(s * qk_scale - gl.expand_dims(m_ref, 1))
    return p, gl.convert_layout(alpha, O_ROWS), l_i * alpha + gl.sum(p, 1), m_new


@gluon.jit
def _compute_partition(smem, bars, tiles, outs, out_strides, q_len, kv_len, qk_scale, half: gl.constexpr,
                       PING_PONG: gl.constexpr, EVEN_KV: gl.constexpr):  # fmt: skip
    WORK, stride_work, n_items, FULL_IDX, PART_MID, TILE_MASKS = tiles
    q_smem, k_smem = smem[0], smem[1]
    q_ready, q_empty = bars[0], bars[1]
    BLOCK_N: gl.constexpr = k_smem.type.shape[2]
    s_layout: gl.constexpr = gl.NVMMADistributedLayout(
        version=[3, 0], warps_per_cta=[4, 1], instr_shape=[16, BLOCK_N, 16]
    )
    q_operand: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=s_layout, k_width=2)

    computed = 0  # K/V tiles this program has computed so far: their count gives each stage's phase
    for item in range(gl.program_id(0), n_items, gl.num_programs(0)):
        done = item // gl.num_programs(0)  # items this program computed before this one
        t0 = _item(WORK, stride_work, item, 4)
        t1 = _item(WORK, stride_work, item, 5)
        n_full = _item(WORK, stride_work, item, 8)
        # Where the row goes, read with the fields above: one load latency per item, not a second one
        # after the row.
        place = (
            _item(WORK, stride_work, item, 0).to(gl.int64),
            _item(WORK, stride_work, item, 1).to(gl.int64),
            _item(WORK, stride_work, item, 2),
            _item(WORK, stride_work, item, 6).to(gl.int64),
        )
        # Keys in the row's last FULL tile: FULL blocks ascend along a row, so only that tile can be a
        # ragged last block (PARTIAL tiles' bitmaps already drop keys past kv_len).
        last_keys = BLOCK_N
        if not EVEN_KV:  # noqa: SIM102 (the constexpr test apart: even lengths compile without this code)
            if (t0 < n_full) & (n_full <= t1):  # this chunk holds the row's last FULL tile
                runs = _runs(WORK, stride_work, item)
                last_block = _tile_block(n_full - 1, n_full, runs, FULL_IDX, _item(WORK, stride_work, item, 10),
                                         FULL_IDX, 0)  # fmt: skip
                last_keys = gl.minimum(kv_len - last_block * BLOCK_N, BLOCK_N)
        mid_row = PART_MID + _item(WORK, stride_work, item, 11).to(gl.int64)

        mbarrier.wait(q_ready, done & 1)
        q = q_smem.index(half).load(q_operand)  # [HALF, HEAD_DIM], the first matmul's operand in registers
        # The block was read through the generic proxy and TMA (the async proxy) overwrites it next, an order
        # that only this fence gives. Without it identical calls gave differing outputs on the H200 (three
        # K/V stages, several items per program; tests/gpu checks that repeated calls agree bit for bit).
        fence_async_shared()
        _warps_sync()  # every warp holds its rows before the load warp may bring the next item's block
        mbarrier.arrive(q_empty)
        n = t1 - t0
        acc, l_i, m_i = _row(q, smem, bars, (t0, n_full, mid_row, last_keys, computed), n, TILE_MASKS, qk_scale,
                             half, PING_PONG)  # fmt: skip
        _store_row(acc, l_i, m_i, place, outs, out_strides, q_len, half)
        computed += n
    tma.store_wait(0)  # the last output store reads shared memory, which lives as long as the program


@gluon.jit
def _row(q, smem, bars, chunk, n, TILE_MASKS, qk_scale, half: gl.constexpr, PING_PONG: gl.constexpr):
    """The online softmax over a chunk's ``n`` tiles from the K/V stages: the unnormalised output
    [HALF, HEAD_DIM], row sums and maxima (log2 units) of this warpgroup's rows. ``chunk`` holds the
    chunk's first tile, the row's FULL count, its bitmap ids, the keys in its last FULL tile and the
    tiles this program computed before it (their count gives the stages and phases)."""
    t0, n_full, mid_row, last_keys, computed = chunk
    q_smem, k_smem, v_smem = smem
    k_ready, k_empty, v_ready, v_empty, turn = bars[2], bars[3], bars[4], bars[5], bars[6]
    STAGES: gl.constexpr = k_smem.type.shape[0]
    BLOCK_N: gl.constexpr = k_smem.type.shape[2]
    HEAD_DIM: gl.constexpr = k_smem.type.shape[3]
    HALF: gl.constexpr = q_smem.type.shape[1]
    BLOCK_M: gl.constexpr = 2 * HALF
    gl.static_assert(BLOCK_N == 128, "PARTIAL bitmaps are read as four 32-column words")
    s_layout: gl.constexpr = gl.NVMMADistributedLayout(
        version=[3, 0], warps_per_cta=[4, 1], instr_shape=[16, BLOCK_N, 16]
    )
    o_layout: gl.constexpr = gl.NVMMADistributedLayout(
        version=[3, 0], warps_per_cta=[4, 1], instr_shape=[16, HEAD_DIM, 16]
    )
    p_operand: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=o_layout, k_width=2)
    s_rows: gl.constexpr = gl.SliceLayout(1, s_layout)
    o_rows: gl.constexpr = gl.SliceLayout(1, o_layout)
    rows = half * HALF + gl.arange(0, HALF, s_rows)  # [HALF] rows within the tile
    cols = gl.arange(0, BLOCK_N, gl.SliceLayout(0, s_layout))  # [BLOCK_N]
    zeros = gl.zeros([HALF, BLOCK_N], gl.float32, s_layout)
    mine = turn.index(half)
    other = turn.index(1 - half)

    m_i = gl.full([HALF], float("-inf"), gl.float32, s_rows)
    l_i = gl.zeros([HALF], gl.float32, s_rows)
    acc = gl.zeros([HALF, HEAD_DIM], gl.float32, o_layout)
    if n > 0:
        # Tile 0's scores and softmax. Turns, counted over the program's tiles: warpgroup 0 passes its
        # fresh barrier at phase 1, warpgroup 1 waits for phase 0, the first arrival of warpgroup 0; then
        # they alternate.
        g = computed
        stage = g % STAGES
        mbarrier.wait(k_ready.index(stage), g // STAGES & 1)
        if PING_PONG:
            mbarrier.wait(mine, (g & 1) ^ (1 - half))
        s = warpgroup_mma(q, _tile(k_smem, stage).permute((1, 0)), zeros, use_acc=False, is_async=True)
        if PING_PONG:
            mbarrier.arrive(other)
        words = _bitmap_words(t0, n_full, mid_row, TILE_MASKS, rows, BLOCK_M)
        s = warpgroup_mma_wait(num_outstanding=0, deps=(s,))
        _warps_sync()  # every warp's matmul has read the stage before the load warp may refill it
        mbarrier.arrive(k_empty.index(stage))
        keys = gl.where(t0 == n_full - 1, last_keys, BLOCK_N)
        s = _scores(s, t0, n_full, words, cols, keys)
        p, alpha, l_i, m_i = _softmax(s, m_i, l_i, qk_scale, o_rows)
        p = gl.convert_layout(p.to(q_smem.dtype), p_operand)
        acc = warpgroup_mma_init(acc)
        for j in range(1, n):
            g = computed + j
            stage = g % STAGES
            prev = (g - 1) % STAGES
            mbarrier.wait(k_ready.index(stage), g // STAGES & 1)
            if PING_PONG:
                mbarrier.wait(mine, (g & 1) ^ (1 - half))
            s = warpgroup_mma(q, _tile(k_smem, stage).permute((1, 0)), zeros, use_acc=False, is_async=True)
            mbarrier.wait(v_ready.index(prev), (g - 1) // STAGES & 1)
            acc = warpgroup_mma(p, _tile(v_smem, prev), acc, is_async=True)
            if PING_PONG:
                mbarrier.arrive(other)
            words = _bitmap_words(t0 + j, n_full, mid_row, TILE_MASKS, rows, BLOCK_M)
            s = warpgroup_mma_wait(num_outstanding=1, deps=(s,))  # tile j's scores; tile j-1's P V runs on
            _warps_sync()
            mbarrier.arrive(k_empty.index(stage))
            keys = gl.where(t0 + j == n_full - 1, last_keys, BLOCK_N)
            s = _scores(s, t0 + j, n_full, words, cols, keys)
            p_next, alpha, l_i, m_i = _softmax(s, m_i, l_i, qk_scale, o_rows)
            acc, p = warpgroup_mma_wait(num_outstanding=0, deps=(acc, p))
            _warps_sync()
            mbarrier.arrive(v_empty.index(prev))
            acc = warpgroup_mma_init(acc * gl.expand_dims(alpha, 1))
            p = gl.convert_layout(p_next.to(q_smem.dtype), p_operand)
        g = computed + n - 1
        last = g % STAGES
        mbarrier.wait(v_ready.index(last), g // STAGES & 1)
        acc = warpgroup_mma(p, _tile(v_smem, last), acc, is_async=True)
        acc = warpgroup_mma_wait(num_outstanding=0, deps=(acc,))
        _warps_sync()
        mbarrier.arrive(v_empty.index(last))
    return acc, l_i, m_i


@gluon.jit
def _store_row(acc, l_i, m_i, place, outs, out_strides, q_len, half: gl.constexpr):
    """Normalise this warpgroup's rows and store them with their lse, or a split row's fp32 partials
    (``place``: the item's batch, head, query block and partial slot). A row with nothing to attend
    gets 0 and lse -inf."""
    b, h, qb, slot = place
    o_desc, o_smem, LSE, O_PART, LSE_PART = outs
    stride_lb, stride_lh = out_strides
    HALF: gl.constexpr = acc.type.shape[0]
    HEAD_DIM: gl.constexpr = acc.type.shape[1]
    BLOCK_M: gl.constexpr = 2 * HALF
    o_layout: gl.constexpr = acc.type.layout
    o_rows: gl.constexpr = gl.SliceLayout(1, o_layout)
    nonempty = l_i > 0
    l_safe = gl.where(nonempty, l_i, 1.0)
    out = acc / gl.expand_dims(gl.convert_layout(l_safe, o_rows), 1)  # [HALF, HEAD_DIM]
    lse = gl.where(nonempty, (m_i + gl.log2(l_safe)) * LN2, float("-inf"))  # [HALF]
    rows = half * HALF + gl.arange(0, HALF, l_i.type.layout)
    if slot < 0:
        # Through shared memory and one TMA store, which drops rows past q_len: per-element pointers
        # would hold 128 registers here. The previous item's store must have read the buffer first.
        buffer = o_smem.index(half).reshape([HALF, HEAD_DIM])
        tma.store_wait(0)
        _warps_sync()
        buffer.store(out.to(o_smem.dtype))
        fence_async_shared()
        _warps_sync()
        tma.async_copy_shared_to_global(
            o_desc, [b.to(gl.int32), h.to(gl.int32), qb * BLOCK_M + half * HALF, 0], o_smem.index(half)
        )
        q_idx_s = qb * BLOCK_M + rows
        gl.store(LSE + b * stride_lb + h * stride_lh + q_idx_s, lse, mask=q_idx_s < q_len)
    else:
        rows_o = half * HALF + gl.arange(0, HALF, o_rows)
        d = gl.arange(0, HEAD_DIM, gl.SliceLayout(0, o_layout))
        part = O_PART + slot * (BLOCK_M * HEAD_DIM) + gl.expand_dims(rows_o * HEAD_DIM, 1) + gl.expand_dims(d, 0)
        gl.store(part, out)
        gl.store(LSE_PART + slot * BLOCK_M + rows, lse)


@gluon.jit
def _gluon_fwd_kernel(q_desc, k_desc, v_desc, o_desc, LSE, O_PART, LSE_PART, WORK, stride_work, n_items, FULL_IDX,
                      PART_IDX, PART_MID, TILE_MASKS, stride_lb, stride_lh, q_len,
                      kv_len, heads, group, kv_heads, qk_scale, STAGES: gl.constexpr, PING_PONG: gl.constexpr,
                      EVEN_KV: gl.constexpr):  # fmt: skip
    HALF: gl.constexpr = q_desc.block_type.shape[0]
    HEAD_DIM: gl.constexpr = q_desc.block_type.shape[1]
    BLOCK_N: gl.constexpr = k_desc.block_type.shape[1]
    q_smem = gl.allocate_shared_memory(q_desc.dtype, [2, HALF, HEAD_DIM], q_desc.layout)
    o_smem = gl.allocate_shared_memory(o_desc.dtype, [2, 1, 1, HALF, HEAD_DIM], o_desc.layout)
    k_smem = gl.allocate_shared_memory(k_desc.dtype, [STAGES, 1, BLOCK_N, HEAD_DIM], k_desc.layout)
    v_smem = gl.allocate_shared_memory(v_desc.dtype, [STAGES, 1, BLOCK_N, HEAD_DIM], v_desc.layout)
    q_ready = gl.allocate_shared_memory(gl.int64, [1, 1], mbarrier.MBarrierLayout()).index(0)
    q_empty = gl.allocate_shared_memory(gl.int64, [1, 1], mbarrier.MBarrierLayout()).index(0)
    k_ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    k_empty = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    v_ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    v_empty = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    turn = gl.allocate_shared_memory(gl.int64, [2, 1], mbarrier.MBarrierLayout())
    mbarrier.init(q_ready, count=1)
    mbarrier.init(q_empty, count=2)  # both warpgroups read the query block
    for i in gl.static_range(STAGES):
        mbarrier.init(k_ready.index(i), count=1)
        mbarrier.init(v_ready.index(i), count=1)
        mbarrier.init(k_empty.index(i), count=2)  # both warpgroups read every stage
        mbarrier.init(v_empty.index(i), count=2)
    for i in gl.static_range(2):
        mbarrier.init(turn.index(i), count=1)
    smem = (q_smem, k_smem, v_smem)
    bars = (q_ready, q_empty, k_ready, k_empty, v_ready, v_empty, turn)
    outs = (o_desc, o_smem, LSE, O_PART, LSE_PART)
    out_strides = (stride_lb, stride_lh)
    tiles = (WORK, stride_work, n_items, FULL_IDX, PART_MID, TILE_MASKS)
    descs = (q_desc, k_desc, v_desc)
    dims = (q_len, kv_len, heads, group, kv_heads)
    gl.warp_specialize(
        [
            (
                _compute_partition,
                (smem, bars, tiles, outs, out_strides, q_len, kv_len, qk_scale, 0, PING_PONG, EVEN_KV),
            ),
            (
                _compute_partition,
                (smem, bars, tiles, outs, out_strides, q_len, kv_len, qk_scale, 1, PING_PONG, EVEN_KV),
            ),
            (_load_partition, (descs, smem, bars, (WORK, stride_work, n_items, FULL_IDX, PART_IDX), dims)),
        ],
        [4, 1],
        [COMPUTE_REGISTERS, LOAD_REGISTERS],
    )


@functools.cache
def resident_programs(device: torch.device) -> int:
    """Programs of a persistent launch: one per multiprocessor, which one program fills."""
    return torch.cuda.get_device_properties(device).multi_processor_count


_GL_DTYPES = {torch.float16: gl.float16, torch.bfloat16: gl.bfloat16}


@functools.cache
def _box_layout(box: tuple[int, ...], dtype: torch.dtype) -> gl.NVMMASharedLayout:
    # Built once per box: on short prompts a call's device work is as short as the host's time to
    # enqueue it, which then showed in do_bench's timings.
    return gl.NVMMASharedLayout.get_default_for(list(box), _GL_DTYPES[dtype])


def _descriptor(t: Tensor, box: list[int]) -> TensorDescriptor:
    """``t`` (contiguous) in boxes of shape ``box``, in the shared-memory layout wgmma reads."""
    return TensorDescriptor.from_tensor(t, box, _box_layout(tuple(box), t.dtype))


def gluon_sparse_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    block_n: int,
    work: WorkList,
    tile_lists: tuple[Tensor, Tensor, Tensor, Tensor],
    outputs: tuple[Tensor, Tensor, Tensor, Tensor],
    qk_scale: float,
    config: KernelConfig,
) -> None:
    """Run the warp-specialised kernel over ``work`` into ``outputs`` (out, lse, split-row partials), as
    ``triton_fwd.triton_sparse_attention`` does with ``KernelConfig(warp_specialized=True)``; it has checked
    the inputs (`triton_fwd.warp_specialized_unsupported`) and passes the layout's FULL list, PARTIAL list,
    bitmap ids and bitmaps (``tile_lists``, a placeholder for an empty one). ``qk_scale`` includes log2(e)."""
    out, lse, out_part, lse_part = outputs
    heads, q_len, dim = q.shape[1:]
    kv_len = k.shape[2]
    # Descriptors view the tensors as rows and need a 16-byte aligned base.
    q, k, v = (
        t.contiguous() if t.data_ptr() % 16 == 0 else t.clone(memory_format=torch.contiguous_format) for t in (q, k, v)
    )
    n_items = work.items.shape[0]
    programs = min(n_items, resident_programs(q.device)) if config.persistent else n_items
    _gluon_fwd_kernel[(max(programs, 1),)](
        # Queries as rows of D; K and V as [B * Hkv, kv_len, D], one head's keys per box.
        _descriptor(q.view(-1, dim), [HALF_ROWS, dim]),
        _descriptor(k.view(-1, kv_len, dim), [1, block_n, dim]),
        _descriptor(v.view(-1, kv_len, dim), [1, block_n, dim]),
        # The output in boxes of one head's 64 rows, whatever its strides: TMA drops rows past q_len.
        _descriptor(out, [1, 1, HALF_ROWS, dim]),
        lse, out_part, lse_part, work.items, work.items.stride(0), n_items, *tile_lists, lse.stride(0), lse.stride(1),
        q_len, kv_len, heads, heads // k.shape[1], k.shape[1], qk_scale,
        STAGES=config.num_stages, PING_PONG=config.ping_pong, EVEN_KV=kv_len % block_n == 0, num_warps=4,
        maxnreg=MAX_REGISTERS,
    )  # fmt: skip
