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

With ``PAGED`` (``paged.py``), K and V are a paged KV cache ``[num_pages, PAGE_SIZE, Hkv, HEAD_DIM]`` (by
strides) read through a block table ``[B, pages]`` of int32 physical page ids: a key block (``PAGE_SIZE`` a
multiple of ``BLOCK_N``) lies inside one page, so each tile costs one table load and pointer loads at
``page * stride_page + (start % PAGE_SIZE) * stride_s``; gathered columns look up each key's page. Without
``PAGED`` the paged arguments are unread and the code is the contiguous kernel's.
"""

from __future__ import annotations

import triton
import triton.language as tl

LN2 = tl.constexpr(0.6931471805599453)  # a constexpr: kernels may read it


@triton.jit
def _update(acc, l_i, m_i, qk, v, qk_scale, SAFE: tl.constexpr):
    """One online-softmax step on raw scores ``qk`` [ROWS, BLOCK_N] (masked entries -inf).

    ``qk_scale`` includes log2(e), so exp2 gives exp and the scaling folds into one FMA with the max.
    SAFE handles rows whose every score so far is -inf (exp2(-inf - -inf) would be NaN); FULL tiles
    always hold a finite score per row and skip it. (Skipping the rescale of ``acc`` until the max grows
    by 2**8, and computing half the exponentials by polynomial on the FMA pipe, both measured slower on
    the H200: experiments/results/kernel_notes.md.)
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
def _block_offsets(
    start, table_row, stride_ks, stride_vs, stride_kp, stride_vp, PAGED: tl.constexpr, PAGE_SIZE: tl.constexpr
):
    """int64 offsets of key ``start``'s row from ``k_base`` and ``v_base``: ``start * stride_s`` in contiguous
    K/V; in a paged cache, its page's physical id (one block-table load) times the page stride plus
    the row within the page."""
    if PAGED:
        page = start // PAGE_SIZE
        phys = tl.load(table_row + page).to(tl.int64)
        row = (start - page * PAGE_SIZE).to(tl.int64)
        return phys * stride_kp + row * stride_ks, phys * stride_vp + row * stride_vs
    else:
        return start.to(tl.int64) * stride_ks, start.to(tl.int64) * stride_vs


@triton.jit
def _load_tile(
    k_base, v_base, start, k_offs, v_offs, keys, stride_ks, stride_vs, kv_len, table_row, stride_kp, stride_vp,
    BOUNDED: tl.constexpr, PAGED: tl.constexpr, PAGE_SIZE: tl.constexpr,
):  # fmt: skip
    """K and V of the key block starting at ``start`` -> two [BLOCK_N, HEAD_DIM] tiles (zeros past kv_len).

    Only the block's base is int64; the in-tile offsets ``k_offs, v_offs`` are precomputed int32, which
    keeps the per-tile address math off the critical path (a block lies inside one page when PAGED).
    """
    k_off, v_off = _block_offsets(start, table_row, stride_ks, stride_vs, stride_kp, stride_vp, PAGED, PAGE_SIZE)
    k_ptrs = k_base + k_off + k_offs
    v_ptrs = v_base + v_off + v_offs
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
    stride_ks, stride_vs, kv_len, qk_scale, table_row, stride_kp, stride_vp,
    EVEN_KV: tl.constexpr, USE_TMA: tl.constexpr, PAGED: tl.constexpr, PAGE_SIZE: tl.constexpr,
):  # fmt: skip
    """One FULL tile at key ``start``: no mask beyond the bounds of a ragged last block."""
    keys = start + offs_n  # [BLOCK_N]
    if USE_TMA:
        k, v = _load_tile_tma(K_DESC, V_DESC, desc_row0, start, keys, kv_len, not EVEN_KV)
    else:
        k, v = _load_tile(
            k_base, v_base, start, k_offs, v_offs, keys, stride_ks, stride_vs, kv_len, table_row, stride_kp,
            stride_vp, not EVEN_KV, PAGED, PAGE_SIZE,
        )  # fmt: skip
    qk = tl.dot(q, tl.trans(k))  # [ROWS, BLOCK_N]
    if not EVEN_KV:
        qk = tl.where(keys[None, :] < kv_len, qk, float("-inf"))
    return _update(acc, l_i, m_i, qk, v, qk_scale, False)


@triton.jit
def _partial_step(
    acc, l_i, m_i, q, start, mask_id, TILE_MASKS, words_offs, shifts, offs_n, k_base, v_base, k_offs, v_offs,
    K_DESC, V_DESC, desc_row0, stride_ks, stride_vs, kv_len, qk_scale, table_row, stride_kp, stride_vp,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, EVEN_KV: tl.constexpr, USE_TMA: tl.constexpr,
    PAGED: tl.constexpr, PAGE_SIZE: tl.constexpr,
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
        k, v = _load_tile(
            k_base, v_base, start, k_offs, v_offs, keys, stride_ks, stride_vs, kv_len, table_row, stride_kp,
            stride_vp, not EVEN_KV, PAGED, PAGE_SIZE,
        )  # fmt: skip
    qk = tl.where(keep, tl.dot(q, tl.trans(k)), float("-inf"))
    return _update(acc, l_i, m_i, qk, v, qk_scale, True)


@triton.jit
def _gather_kv(
    k_base, v_base, keys, offs_d, stride_ks, stride_vs, kv_len, table_row, stride_kp, stride_vp,
    PAGED: tl.constexpr, PAGE_SIZE: tl.constexpr,
):  # fmt: skip
    """K and V rows at arbitrary positions ``keys`` [BLOCK_N] (gathered columns), zeros out of range."""
    if PAGED:
        page = keys // PAGE_SIZE  # [BLOCK_N] logical page of each key
        phys = tl.load(table_row + page, mask=keys < kv_len, other=0).to(tl.int64)  # [BLOCK_N]
        row = (keys - page * PAGE_SIZE).to(tl.int64)
        k_ptrs = k_base + (phys * stride_kp + row * stride_ks)[:, None] + offs_d[None, :]
        v_ptrs = v_base + (phys * stride_vp + row * stride_vs)[:, None] + offs_d[None, :]
    else:
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
    BLOCK_TABLE=None,  # [B, pages] int32 physical page of each logical page (PAGED only)
    stride_tb=0,
    stride_kp=0,  # K/V page strides (PAGED only); stride_kb, stride_vb are then unread
    stride_vp=0,
    PAGE_SIZE: tl.constexpr = 0,
    PAGED: tl.constexpr = False,
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
    if PAGED:
        k_base = K + kv_head * stride_kh  # pages hold every sequence: the batch is in the block table
        v_base = V + kv_head * stride_vh
        table_row = BLOCK_TABLE + b * stride_tb
    else:
        k_base = K + b * stride_kb + kv_head * stride_kh
        v_base = V + b * stride_vb + kv_head * stride_vh
        table_row = BLOCK_TABLE  # unread

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
                    V_DESC, desc_row0, stride_ks, stride_vs, kv_len, qk_scale, table_row, stride_kp, stride_vp,
                    EVEN_KV, USE_TMA, PAGED, PAGE_SIZE,
                )  # fmt: skip
        idx_lo = b_end
    if idx_lo < f_hi:
        for i in tl.range(idx_lo, f_hi, num_stages=NUM_STAGES):
            acc, l_i, m_i = _full_step(
                acc, l_i, m_i, q, tl.load(full_row + i) * BLOCK_N, offs_n, k_base, v_base, k_offs, v_offs, K_DESC,
                V_DESC, desc_row0, stride_ks, stride_vs, kv_len, qk_scale, table_row, stride_kp, stride_vp,
                EVEN_KV, USE_TMA, PAGED, PAGE_SIZE,
            )  # fmt: skip

    # PARTIAL tiles, by index. (Reading their ids ahead in one vector load, as FULL runs avoid index
    # loads, gained nothing: experiments/results/kernel_notes.md.)
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
                kv_len, qk_scale, table_row, stride_kp, stride_vp, BLOCK_M, BLOCK_N, EVEN_KV, USE_TMA, PAGED, PAGE_SIZE,
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
                k, v = _gather_kv(
                    k_base, v_base, cols, offs_d, stride_ks, stride_vs, kv_len, table_row, stride_kp, stride_vp,
                    PAGED, PAGE_SIZE,
                )  # fmt: skip
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
