"""The block-sparse attention backward kernels, driven by the same `BlockLayout` as the forward.

With ``P = softmax(scale * Q K^T)`` restricted to the layout's pairs, ``dO`` the output's gradient,
``lse`` the forward's natural-log row sums and ``Delta = rowsum(dO * O)``:

``dV = P^T dO``, ``dP = dO V^T``, ``dS = P * (dP - Delta)``, ``dQ = scale * dS K``, ``dK = scale * dS^T Q``.

Three kernels:

1. `_bwd_delta_kernel`: ``Delta`` [B, Hq, q_len] fp32 from O and dO.
2. `_bwd_dq_kernel`: one program per (batch, query head, query block), query-major like the forward: the
   row's FULL tiles unmasked, PARTIAL tiles through their bitmaps, then its gathered key columns (K/V rows
   gathered by position, kept where ``k <= q_pos``). The key tiles are walked ``SUB_N`` columns at a time.
3. `_bwd_dkdv_kernel`: one program per work item (``planning/dkdv_work.py``) and ``KEYS``-wide slice of
   its key block (so that a 128-wide key block at head dim 128 need not hold two 128 x 128 fp32
   accumulators), kv-major: for each query head of the item in turn, the query blocks that hold the key
   block as FULL, PARTIAL, or through gathered columns inside it (``planning/kv_major.py``), ``SUB_M``
   query rows at a time. An item is a whole (batch, kv head, key block): dK and dV summed over the GQA
   group in one program, in a fixed order, and written; or, for a program too long to leave whole (a
   sink key block read by every query block), one query head and a slice of its FULL list, whose fp32
   share goes to a scratch slot that `_bwd_dkdv_merge_kernel` sums in slot order. Deterministic, no
   atomics. Gathered columns reach dK/dV the same way: a (query block, key block) pair whose row gathers
   columns in the key block is one more tile, masked to those columns (and ``k <= q_pos``). Three launch
   flags (`BackwardConfig`): ``KEY_MAJOR`` forms the scores key-major, ``K Q^T``, so P^T and dS^T need
   no register transposition; ``DQ_ATOMIC`` adds each step's dQ share into an fp32 buffer with atomics,
   and kernel 2 is not launched; ``FLAT_STEPS`` walks the FULL and PARTIAL tiles as one pipelined loop
   over (tile, row step) instead of unrolling the row steps inside a loop over tiles (kernel 2 likewise
   over (tile, column step)).

P is recomputed as ``exp2(scale * log2(e) * (q . k) - lse * log2(e))``. A row with nothing to attend has
``lse = -inf``; it is replaced by ``+inf`` so that its P is exactly 0 (never ``exp2(-inf + inf)`` = NaN),
and rows past ``q_len`` read ``+inf`` too. Masked entries are zeroed with ``where`` after the exponential,
so an overflow there never reaches a product. Addresses are computed in int64.
"""

from __future__ import annotations

import triton
import triton.language as tl

LOG2E_BWD = tl.constexpr(1.4426950408889634)  # a constexpr: kernels may read it


@triton.jit
def _bwd_delta_kernel(
    OUT, DO, DELTA,
    stride_ob, stride_oh, stride_os, stride_dob, stride_doh, stride_dos, stride_db, stride_dh,
    heads, q_len,
    BLOCK: tl.constexpr, HEAD_DIM: tl.constexpr,
):  # fmt: skip
    """Delta[b, h, i] = sum_d O[b, h, i, d] * dO[b, h, i, d] in fp32; grid (row blocks, B * Hq)."""
    bh = tl.program_id(1).to(tl.int64)
    b = bh // heads
    h = bh % heads
    rows = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)  # [BLOCK]
    offs_d = tl.arange(0, HEAD_DIM)  # [HEAD_DIM]
    in_q = rows < q_len
    o = tl.load(
        OUT + b * stride_ob + h * stride_oh + rows[:, None] * stride_os + offs_d[None, :], mask=in_q[:, None], other=0.0
    )  # [BLOCK, HEAD_DIM]
    do = tl.load(
        DO + b * stride_dob + h * stride_doh + rows[:, None] * stride_dos + offs_d[None, :],
        mask=in_q[:, None],
        other=0.0,
    )  # [BLOCK, HEAD_DIM]
    delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), 1)  # [BLOCK]
    tl.store(DELTA + b * stride_db + h * stride_dh + rows, delta, mask=in_q)


@triton.jit
def _load_query_rows(q_base, do_base, lse_base, delta_base, rows, offs_d, stride_qs, stride_dos, q_len):
    """Q and dO rows ``rows`` [R] -> ([R, HEAD_DIM] x 2, lse * log2(e) [R] with +inf for empty or
    out-of-range rows, Delta [R]); zeros past q_len."""
    in_q = rows < q_len
    q = tl.load(q_base + rows[:, None] * stride_qs + offs_d[None, :], mask=in_q[:, None], other=0.0)
    do = tl.load(do_base + rows[:, None] * stride_dos + offs_d[None, :], mask=in_q[:, None], other=0.0)
    lse = tl.load(lse_base + rows, mask=in_q, other=float("-inf"))  # [R]
    lse2 = tl.where(lse == float("-inf"), float("inf"), lse * LOG2E_BWD)
    delta = tl.load(delta_base + rows, mask=in_q, other=0.0)  # [R]
    return q, do, lse2, delta


@triton.jit
def _load_key_rows(k_base, v_base, keys, offs_d, stride_ks, stride_vs, kv_len, BOUNDED: tl.constexpr):
    """K and V rows at positions ``keys`` [C] -> two [C, HEAD_DIM] tiles (zeros past kv_len when BOUNDED)."""
    k_ptrs = k_base + keys[:, None].to(tl.int64) * stride_ks + offs_d[None, :]
    v_ptrs = v_base + keys[:, None].to(tl.int64) * stride_vs + offs_d[None, :]
    if BOUNDED:
        inside = keys[:, None] < kv_len
        k = tl.load(k_ptrs, mask=inside, other=0.0)
        v = tl.load(v_ptrs, mask=inside, other=0.0)
    else:
        k = tl.load(k_ptrs)
        v = tl.load(v_ptrs)
    return k, v


@triton.jit
def _query_rows(q_base, do_base, Q_DESC, DO_DESC, desc_row, lse_base, delta_base, rows, offs_d, stride_qs, stride_dos,
                q_len, USE_TMA: tl.constexpr):  # fmt: skip
    """`_load_query_rows`, with Q and dO through tensor descriptors when USE_TMA: ``desc_row`` is the row of
    ``rows[0]`` in their [B * Hq * q_len, HEAD_DIM] views, where rows past q_len belong to the next head
    (or lie past the end and read as zeros): they are zeroed here, so no value of another head reaches a
    product."""
    if USE_TMA:
        in_q = rows < q_len
        q = tl.where(in_q[:, None], Q_DESC.load([desc_row, 0]), 0.0)  # [R, HEAD_DIM]
        do = tl.where(in_q[:, None], DO_DESC.load([desc_row, 0]), 0.0)  # [R, HEAD_DIM]
        lse = tl.load(lse_base + rows, mask=in_q, other=float("-inf"))  # [R]
        lse2 = tl.where(lse == float("-inf"), float("inf"), lse * LOG2E_BWD)
        delta = tl.load(delta_base + rows, mask=in_q, other=0.0)  # [R]
        return q, do, lse2, delta
    else:
        return _load_query_rows(q_base, do_base, lse_base, delta_base, rows, offs_d, stride_qs, stride_dos, q_len)


@triton.jit
def _key_rows(k_base, v_base, K_DESC, V_DESC, desc_row, keys, offs_d, stride_ks, stride_vs, kv_len,
              BOUNDED: tl.constexpr, USE_TMA: tl.constexpr):  # fmt: skip
    """`_load_key_rows` for consecutive keys, through tensor descriptors when USE_TMA (``desc_row``: the
    row of ``keys[0]`` in the [B * Hkv * kv_len, HEAD_DIM] views; keys past kv_len zeroed when BOUNDED)."""
    if USE_TMA:
        k = K_DESC.load([desc_row, 0])  # [C, HEAD_DIM]
        v = V_DESC.load([desc_row, 0])  # [C, HEAD_DIM]
        if BOUNDED:
            inside = keys[:, None] < kv_len
            k = tl.where(inside, k, 0.0)
            v = tl.where(inside, v, 0.0)
        return k, v
    else:
        return _load_key_rows(k_base, v_base, keys, offs_d, stride_ks, stride_vs, kv_len, BOUNDED)


@triton.jit
def _bitmap_bits(TILE_MASKS, mask_id, tile_rows, word0, shifts, BLOCK_M: tl.constexpr, WORDS: tl.constexpr,
                 R: tl.constexpr, C: tl.constexpr):  # fmt: skip
    """Bits of bitmap ``mask_id`` for tile rows ``tile_rows`` [R] and the C columns from word ``word0``:
    [R, C] bool (bit b of word w is column 32 * w + b)."""
    CW: tl.constexpr = C // 32
    words = tl.load(
        TILE_MASKS
        + mask_id.to(tl.int64) * (BLOCK_M * WORDS)
        + tile_rows[:, None] * WORDS
        + word0
        + tl.arange(0, CW)[None, :]
    )  # [R, CW]
    bits = tl.reshape(tl.broadcast_to(words[:, :, None], [R, CW, 32]), [R, C])
    return ((bits >> shifts[None, :]) & 1) != 0  # [R, C]


@triton.jit
def _dq_step(dq, q, do, lse2, delta, k, v, keep, qk_scale, MASKED: tl.constexpr):
    """dq [R, HEAD_DIM] += dS K over one key tile k, v [C, HEAD_DIM]; ``keep`` [R, C] when MASKED."""
    qk = tl.dot(q, tl.trans(k))  # [R, C]
    p = tl.math.exp2(qk * qk_scale - lse2[:, None])  # [R, C]
    if MASKED:
        p = tl.where(keep, p, 0.0)
    dp = tl.dot(do, tl.trans(v))  # [R, C]
    ds = p * (dp - delta[:, None])  # [R, C]
    return tl.dot(ds.to(k.dtype), k, dq)  # [R, HEAD_DIM]


@triton.jit
def _dq_columns(dq, q, do, lse2, delta, k_base, v_base, K_DESC, V_DESC, kv_row0, first, offs_sn, offs_d, stride_ks,
                stride_vs, kv_len, qk_scale, TILE_MASKS, mask_id, rm, word0, shifts, BLOCK_M: tl.constexpr,
                SUB_N: tl.constexpr, WORDS: tl.constexpr, EVEN_KV: tl.constexpr, PARTIAL: tl.constexpr,
                USE_TMA: tl.constexpr):  # fmt: skip
    """`_dq_step` over the ``SUB_N`` consecutive keys from ``first``: kept where bitmap ``mask_id`` says
    (its columns from word ``word0``) for a PARTIAL tile, else all of them (those before kv_len)."""
    keys = first + offs_sn  # [SUB_N]
    k, v = _key_rows(
        k_base, v_base, K_DESC, V_DESC, (kv_row0 + first).to(tl.int32), keys, offs_d, stride_ks, stride_vs, kv_len,
        not EVEN_KV, USE_TMA,
    )  # fmt: skip
    if PARTIAL:
        keep = _bitmap_bits(TILE_MASKS, mask_id, rm, word0, shifts, BLOCK_M, WORDS, BLOCK_M, SUB_N)
        return _dq_step(dq, q, do, lse2, delta, k, v, keep, qk_scale, True)
    else:
        return _dq_step(dq, q, do, lse2, delta, k, v, keys[None, :] < kv_len, qk_scale, not EVEN_KV)


@triton.jit
def _bitmap_bits_key_major(TILE_MASKS, mask_id, tile_rows, cols, BLOCK_M: tl.constexpr, WORDS: tl.constexpr):
    """Bits of bitmap ``mask_id`` at tile rows ``tile_rows`` [R] and tile columns ``cols`` [C], key-major:
    [C, R] bool (each word is gathered once per column it holds; partial tiles only)."""
    words = tl.load(
        TILE_MASKS + mask_id.to(tl.int64) * (BLOCK_M * WORDS) + tile_rows[None, :] * WORDS + (cols // 32)[:, None]
    )  # [C, R]
    return ((words >> (cols % 32)[:, None]) & 1) != 0  # [C, R]


@triton.jit
def _dkdv_step(dk, dv, k, v, q, do, lse2, delta, keep, qk_scale, dq_ptrs, row_ok, sm_scale,
               MASKED: tl.constexpr, KEY_MAJOR: tl.constexpr, DQ_ATOMIC: tl.constexpr):  # fmt: skip
    """dk, dv [C, HEAD_DIM] += dS^T Q, P^T dO over query rows q, do [R, HEAD_DIM]; ``keep`` is [R, C], or
    [C, R] when KEY_MAJOR. With DQ_ATOMIC, the rows' dQ share, scale * dS K, is added at ``dq_ptrs``.

    KEY_MAJOR forms the scores as K Q^T: P^T and dS^T then come out of their products in the layout the
    dV and dK products take as their first operand, where the query-major form transposes two register
    tiles per step (through shared memory on the GPU); its dQ share needs one transposition instead.
    """
    if KEY_MAJOR:
        qk = tl.dot(k, tl.trans(q))  # [C, R]
        p = tl.math.exp2(qk * qk_scale - lse2[None, :])  # [C, R]
        if MASKED:
            p = tl.where(keep, p, 0.0)
        dv = tl.dot(p.to(do.dtype), do, dv)  # [C, HEAD_DIM]
        dp = tl.dot(v, tl.trans(do))  # [C, R]
        ds = p * (dp - delta[None, :])  # [C, R]
        dk = tl.dot(ds.to(q.dtype), q, dk)  # [C, HEAD_DIM]
        if DQ_ATOMIC:
            dq = tl.dot(tl.trans(ds.to(k.dtype)), k)  # [R, HEAD_DIM]
            tl.atomic_add(dq_ptrs, dq * sm_scale, mask=row_ok[:, None], sem="relaxed")
    else:
        qk = tl.dot(q, tl.trans(k))  # [R, C]
        p = tl.math.exp2(qk * qk_scale - lse2[:, None])  # [R, C]
        if MASKED:
            p = tl.where(keep, p, 0.0)
        dv = tl.dot(tl.trans(p.to(do.dtype)), do, dv)  # [C, HEAD_DIM]
        dp = tl.dot(do, tl.trans(v))  # [R, C]
        ds = p * (dp - delta[:, None])  # [R, C]
        dk = tl.dot(tl.trans(ds.to(q.dtype)), q, dk)  # [C, HEAD_DIM]
        if DQ_ATOMIC:
            dq = tl.dot(ds.to(k.dtype), k)  # [R, HEAD_DIM]
            tl.atomic_add(dq_ptrs, dq * sm_scale, mask=row_ok[:, None], sem="relaxed")
    return dk, dv


@triton.jit
def _dkdv_rows(dk, dv, k, v, keep, qb, s, q_base, do_base, Q_DESC, DO_DESC, q_row0, lse_base, delta_base, dq_base,
               offs_sm, offs_d, stride_qs, stride_dos, stride_dqs, q_len, qk_scale, sm_scale, BLOCK_M: tl.constexpr,
               SUB_M: tl.constexpr, MASKED: tl.constexpr, KEY_MAJOR: tl.constexpr, DQ_ATOMIC: tl.constexpr,
               USE_TMA: tl.constexpr):  # fmt: skip
    """`_dkdv_step` over rows ``s * SUB_M`` to ``(s + 1) * SUB_M`` of query block ``qb``: their Q, dO, lse
    and Delta loaded (through the descriptors when USE_TMA, ``q_row0`` the head's first row there)."""
    rows = qb * BLOCK_M + s * SUB_M + offs_sm  # [SUB_M]
    q, do, lse2, delta = _query_rows(
        q_base, do_base, Q_DESC, DO_DESC, (q_row0 + qb * BLOCK_M + s * SUB_M).to(tl.int32), lse_base, delta_base,
        rows, offs_d, stride_qs, stride_dos, q_len, USE_TMA,
    )  # fmt: skip
    dq_ptrs = dq_base + rows[:, None] * stride_dqs + offs_d[None, :]  # [SUB_M, HEAD_DIM]
    return _dkdv_step(
        dk, dv, k, v, q, do, lse2, delta, keep, qk_scale, dq_ptrs, rows < q_len, sm_scale, MASKED, KEY_MAJOR, DQ_ATOMIC
    )


@triton.jit
def _dkdv_partial_rows(dk, dv, k, v, TILE_MASKS, mask_id, qb, s, part, offs_n, shifts, q_base, do_base, Q_DESC, DO_DESC,
                       q_row0, lse_base, delta_base, dq_base, offs_sm, offs_d, stride_qs, stride_dos, stride_dqs, q_len,
                       qk_scale, sm_scale, BLOCK_M: tl.constexpr, SUB_M: tl.constexpr, KEYS: tl.constexpr,
                       WORDS: tl.constexpr, KEY_MAJOR: tl.constexpr, DQ_ATOMIC: tl.constexpr,
                       USE_TMA: tl.constexpr):  # fmt: skip
    """`_dkdv_rows` over row step ``s`` of a PARTIAL tile, kept where bitmap ``mask_id`` says: the program's
    ``KEYS`` columns of the tile (slice ``part`` of its key block)."""
    if KEY_MAJOR:
        keep = _bitmap_bits_key_major(
            TILE_MASKS, mask_id, s * SUB_M + offs_sm, part * KEYS + offs_n, BLOCK_M, WORDS
        )  # [KEYS, SUB_M]
    else:
        keep = _bitmap_bits(
            TILE_MASKS, mask_id, s * SUB_M + offs_sm, part * (KEYS // 32), shifts, BLOCK_M, WORDS, SUB_M, KEYS
        )  # [SUB_M, KEYS]
    return _dkdv_rows(
        dk, dv, k, v, keep, qb, s, q_base, do_base, Q_DESC, DO_DESC, q_row0, lse_base, delta_base, dq_base, offs_sm,
        offs_d, stride_qs, stride_dos, stride_dqs, q_len, qk_scale, sm_scale, BLOCK_M, SUB_M, True, KEY_MAJOR,
        DQ_ATOMIC, USE_TMA,
    )  # fmt: skip


@triton.jit
def _bwd_dq_kernel(
    Q, K, V, DO, LSE, DELTA, DQ, ORDER, K_DESC, V_DESC,
    FULL_NUM, FULL_START, FULL_IDX, PART_NUM, PART_START, PART_IDX, PART_MID, TILE_MASKS,
    COL_NUM, COL_START, COL_IDX,
    stride_qb, stride_qh, stride_qs, stride_kb, stride_kh, stride_ks, stride_vb, stride_vh, stride_vs,
    stride_dob, stride_doh, stride_dos, stride_dqb, stride_dqh, stride_dqs, stride_lb, stride_lh,
    q_len, kv_len, heads, group, lead_b, lead_h, num_q_blocks, qk_scale, sm_scale,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, SUB_N: tl.constexpr, HEAD_DIM: tl.constexpr,
    EVEN_KV: tl.constexpr, HAS_COLS: tl.constexpr, NUM_STAGES: tl.constexpr, USE_TMA: tl.constexpr,
    FLAT_STEPS: tl.constexpr,
):  # fmt: skip
    WORDS: tl.constexpr = BLOCK_N // 32
    STEPS: tl.constexpr = BLOCK_N // SUB_N  # column steps per key tile
    row = tl.load(ORDER + tl.program_id(0)).to(tl.int64)  # flat (batch, head, query block)
    qb = row % num_q_blocks
    b = row // num_q_blocks // heads
    h = row // num_q_blocks % heads
    lrow = ((b % lead_b) * lead_h + h % lead_h) * num_q_blocks + qb  # the layout row it broadcasts from
    kv_head = h // group

    rm = tl.arange(0, BLOCK_M)  # [BLOCK_M] row within the tile
    offs_m = qb * BLOCK_M + rm  # [BLOCK_M] query index
    offs_sn = tl.arange(0, SUB_N)  # [SUB_N]
    offs_d = tl.arange(0, HEAD_DIM)  # [HEAD_DIM]
    shifts = offs_sn % 32  # [SUB_N]
    q, do, lse2, delta = _load_query_rows(
        Q + b * stride_qb + h * stride_qh, DO + b * stride_dob + h * stride_doh, LSE + b * stride_lb + h * stride_lh,
        DELTA + b * stride_lb + h * stride_lh, offs_m, offs_d, stride_qs, stride_dos, q_len,
    )  # fmt: skip
    k_base = K + b * stride_kb + kv_head * stride_kh
    v_base = V + b * stride_vb + kv_head * stride_vh
    kv_row0 = (b * (heads // group) + kv_head) * kv_len  # the kv head's first row in the descriptors' views
    dq = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)

    # FULL tiles: no mask beyond the bounds of a ragged last key block. Loops are skipped when empty:
    # a pipelined loop's prologue costs even with no iteration.
    n_full = tl.load(FULL_NUM + lrow)
    full_row = FULL_IDX + tl.load(FULL_START + lrow)
    if n_full > 0:
        if FLAT_STEPS:  # one loop over (tile, column step), as the dK/dV kernel's FLAT_STEPS
            for it in tl.range(0, n_full * STEPS, num_stages=NUM_STAGES):
                first = tl.load(full_row + it // STEPS).to(tl.int64) * BLOCK_N + (it % STEPS) * SUB_N
                dq = _dq_columns(
                    dq, q, do, lse2, delta, k_base, v_base, K_DESC, V_DESC, kv_row0, first, offs_sn, offs_d, stride_ks,
                    stride_vs, kv_len, qk_scale, TILE_MASKS, 0, rm, 0, shifts, BLOCK_M, SUB_N, WORDS, EVEN_KV, False,
                    USE_TMA,
                )  # fmt: skip
        else:
            for i in tl.range(0, n_full, num_stages=NUM_STAGES):
                start = tl.load(full_row + i).to(tl.int64) * BLOCK_N
                for s in tl.static_range(STEPS):
                    dq = _dq_columns(
                        dq, q, do, lse2, delta, k_base, v_base, K_DESC, V_DESC, kv_row0, start + s * SUB_N, offs_sn,
                        offs_d, stride_ks, stride_vs, kv_len, qk_scale, TILE_MASKS, 0, rm, 0, shifts, BLOCK_M, SUB_N,
                        WORDS, EVEN_KV, False, USE_TMA,
                    )  # fmt: skip

    # PARTIAL tiles: the tile's bitmap (its bits past kv_len or q_len are zero).
    n_part = tl.load(PART_NUM + lrow)
    part_start = tl.load(PART_START + lrow)
    if n_part > 0:
        if FLAT_STEPS:
            for it in tl.range(0, n_part * STEPS, num_stages=NUM_STAGES):
                s = it % STEPS
                first = tl.load(PART_IDX + part_start + it // STEPS).to(tl.int64) * BLOCK_N + s * SUB_N
                mask_id = tl.load(PART_MID + part_start + it // STEPS)
                dq = _dq_columns(
                    dq, q, do, lse2, delta, k_base, v_base, K_DESC, V_DESC, kv_row0, first, offs_sn, offs_d, stride_ks,
                    stride_vs, kv_len, qk_scale, TILE_MASKS, mask_id, rm, s * (SUB_N // 32), shifts, BLOCK_M, SUB_N,
                    WORDS, EVEN_KV, True, USE_TMA,
                )  # fmt: skip
        else:
            for j in tl.range(0, n_part, num_stages=NUM_STAGES):
                start = tl.load(PART_IDX + part_start + j).to(tl.int64) * BLOCK_N
                mask_id = tl.load(PART_MID + part_start + j)
                for s in tl.static_range(STEPS):
                    dq = _dq_columns(
                        dq, q, do, lse2, delta, k_base, v_base, K_DESC, V_DESC, kv_row0, start + s * SUB_N, offs_sn,
                        offs_d, stride_ks, stride_vs, kv_len, qk_scale, TILE_MASKS, mask_id, rm, s * (SUB_N // 32),
                        shifts, BLOCK_M, SUB_N, WORDS, EVEN_KV, True, USE_TMA,
                    )  # fmt: skip

    # Gathered columns, SUB_N at a time; the constexpr test compiles them out of layouts without any.
    if HAS_COLS:
        n_cols = tl.load(COL_NUM + lrow)
        col_row = COL_IDX + tl.load(COL_START + lrow)
        q_pos = offs_m + (kv_len - q_len)  # [BLOCK_M] bottom-right aligned positions
        for c0 in range(0, n_cols, SUB_N):
            slots = c0 + offs_sn  # [SUB_N]
            valid = slots < n_cols
            cols = tl.load(col_row + slots, mask=valid, other=0)  # [SUB_N]
            keep = valid[None, :] & (cols[None, :] <= q_pos[:, None])  # [BLOCK_M, SUB_N]
            cols = tl.where(valid, cols, kv_len)  # padding reads nothing
            k, v = _load_key_rows(k_base, v_base, cols, offs_d, stride_ks, stride_vs, kv_len, True)
            dq = _dq_step(dq, q, do, lse2, delta, k, v, keep, qk_scale, True)

    dq_ptrs = DQ + b * stride_dqb + h * stride_dqh + offs_m[:, None] * stride_dqs + offs_d[None, :]
    tl.store(dq_ptrs, (dq * sm_scale).to(DQ.dtype.element_ty), mask=(offs_m < q_len)[:, None])


@triton.jit
def _bwd_dkdv_kernel(
    Q, K, V, DO, LSE, DELTA, DK, DV, DQ, WORK, DK_PART, DV_PART, Q_DESC, DO_DESC,
    FQ_NUM, FQ_START, FQ_IDX, PQ_NUM, PQ_START, PQ_IDX, PQ_MID, TILE_MASKS,
    CQ_NUM, CQ_START, CQ_IDX, CQ_SLOT, CQ_COUNT, COL_IDX,
    stride_qb, stride_qh, stride_qs, stride_kb, stride_kh, stride_ks, stride_vb, stride_vh, stride_vs,
    stride_dob, stride_doh, stride_dos, stride_dkb, stride_dkh, stride_dks, stride_dvb, stride_dvh, stride_dvs,
    stride_lb, stride_lh, stride_dqb, stride_dqh, stride_dqs,
    q_len, kv_len, kv_heads, group, lead_b, lead_h, num_kv_blocks, qk_scale, sm_scale,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, SUB_M: tl.constexpr, KEYS: tl.constexpr, HEAD_DIM: tl.constexpr,
    EVEN_KV: tl.constexpr, HAS_COLS: tl.constexpr, NUM_STAGES: tl.constexpr, KEY_MAJOR: tl.constexpr,
    DQ_ATOMIC: tl.constexpr, USE_TMA: tl.constexpr, FLAT_STEPS: tl.constexpr,
):  # fmt: skip
    WORDS: tl.constexpr = BLOCK_N // 32
    PARTS: tl.constexpr = BLOCK_N // KEYS  # programs per key block, KEYS keys each
    STEPS: tl.constexpr = BLOCK_M // SUB_M  # row steps per query tile
    item = WORK + (tl.program_id(0) // PARTS).to(tl.int64) * 6  # see planning/dkdv_work.py
    prog = tl.load(item).to(tl.int64)  # flat (batch, kv head, key block)
    g_lo = tl.load(item + 1)
    g_hi = tl.load(item + 2)
    f_lo = tl.load(item + 3)  # the item's slice of each head's FULL list; the first slice takes the rest
    f_hi = tl.load(item + 4)
    out_slot = tl.load(item + 5).to(tl.int64)  # -1: the whole program, dK/dV written here; else a scratch slot
    part = tl.program_id(0) % PARTS
    kb = prog % num_kv_blocks
    b = prog // num_kv_blocks // kv_heads
    kv_head = prog // num_kv_blocks % kv_heads

    offs_n = tl.arange(0, KEYS)  # [KEYS] key within the program's slice of the key block
    offs_sm = tl.arange(0, SUB_M)  # [SUB_M]
    offs_d = tl.arange(0, HEAD_DIM)  # [HEAD_DIM]
    shifts = offs_n % 32  # [KEYS]
    keys = kb * BLOCK_N + part * KEYS + offs_n  # [KEYS]
    in_k = keys < kv_len
    if KEY_MAJOR:
        keep_keys = in_k[:, None]  # [KEYS, 1]
    else:
        keep_keys = in_k[None, :]  # [1, KEYS]
    k, v = _load_key_rows(
        K + b * stride_kb + kv_head * stride_kh, V + b * stride_vb + kv_head * stride_vh, keys, offs_d, stride_ks,
        stride_vs, kv_len, not EVEN_KV,
    )  # fmt: skip
    dk = tl.zeros([KEYS, HEAD_DIM], tl.float32)
    dv = tl.zeros([KEYS, HEAD_DIM], tl.float32)

    # The item's query heads one after another, in a fixed order: their sum is deterministic.
    for g in range(g_lo, g_hi):
        h = kv_head * group + g
        vrow = ((b % lead_b) * lead_h + h % lead_h) * num_kv_blocks + kb  # kv-major row it broadcasts from
        q_base = Q + b * stride_qb + h * stride_qh
        do_base = DO + b * stride_dob + h * stride_doh
        lse_base = LSE + b * stride_lb + h * stride_lh
        delta_base = DELTA + b * stride_lb + h * stride_lh
        dq_base = DQ + b * stride_dqb + h * stride_dqh  # read only with DQ_ATOMIC
        q_row0 = (b * kv_heads * group + h) * q_len  # the head's first row in the descriptors' views

        n_full = tl.minimum(tl.load(FQ_NUM + vrow), f_hi)
        full_col = FQ_IDX + tl.load(FQ_START + vrow)
        if n_full > f_lo:
            if FLAT_STEPS:
                # One pipelined loop over (tile, row step): each load has one set of stage buffers, where
                # the unrolled steps below give every step's Q and dO their own (STEPS times the shared memory).
                for it in tl.range(f_lo * STEPS, n_full * STEPS, num_stages=NUM_STAGES):
                    qb = tl.load(full_col + it // STEPS).to(tl.int64)
                    dk, dv = _dkdv_rows(
                        dk, dv, k, v, keep_keys, qb, it % STEPS, q_base, do_base, Q_DESC, DO_DESC, q_row0, lse_base,
                        delta_base, dq_base, offs_sm, offs_d, stride_qs, stride_dos, stride_dqs, q_len, qk_scale,
                        sm_scale, BLOCK_M, SUB_M, not EVEN_KV, KEY_MAJOR, DQ_ATOMIC, USE_TMA,
                    )  # fmt: skip
            else:
                for i in tl.range(f_lo, n_full, num_stages=NUM_STAGES):
                    qb = tl.load(full_col + i).to(tl.int64)
                    for s in tl.static_range(STEPS):
                        dk, dv = _dkdv_rows(
                            dk, dv, k, v, keep_keys, qb, s, q_base, do_base, Q_DESC, DO_DESC, q_row0, lse_base,
                            delta_base, dq_base, offs_sm, offs_d, stride_qs, stride_dos, stride_dqs, q_len, qk_scale,
                            sm_scale, BLOCK_M, SUB_M, not EVEN_KV, KEY_MAJOR, DQ_ATOMIC, USE_TMA,
                        )  # fmt: skip

        n_part = tl.where(f_lo == 0, tl.load(PQ_NUM + vrow), 0)  # PARTIAL tiles and columns: first slice
        part_start = tl.load(PQ_START + vrow)
        if n_part > 0:
            if FLAT_STEPS:
                for it in tl.range(0, n_part * STEPS, num_stages=NUM_STAGES):
                    qb = tl.load(PQ_IDX + part_start + it // STEPS).to(tl.int64)
                    mask_id = tl.load(PQ_MID + part_start + it // STEPS)
                    dk, dv = _dkdv_partial_rows(
                        dk, dv, k, v, TILE_MASKS, mask_id, qb, it % STEPS, part, offs_n, shifts, q_base, do_base, Q_DESC,
                        DO_DESC, q_row0, lse_base, delta_base, dq_base, offs_sm, offs_d, stride_qs, stride_dos,
                        stride_dqs, q_len, qk_scale, sm_scale, BLOCK_M, SUB_M, KEYS, WORDS, KEY_MAJOR, DQ_ATOMIC,
                        USE_TMA,
                    )  # fmt: skip
            else:
                for j in tl.range(0, n_part, num_stages=NUM_STAGES):
                    qb = tl.load(PQ_IDX + part_start + j).to(tl.int64)
                    mask_id = tl.load(PQ_MID + part_start + j)
                    for s in tl.static_range(STEPS):
                        dk, dv = _dkdv_partial_rows(
                            dk, dv, k, v, TILE_MASKS, mask_id, qb, s, part, offs_n, shifts, q_base, do_base, Q_DESC,
                            DO_DESC, q_row0, lse_base, delta_base, dq_base, offs_sm, offs_d, stride_qs, stride_dos,
                            stride_dqs, q_len, qk_scale, sm_scale, BLOCK_M, SUB_M, KEYS, WORDS, KEY_MAJOR, DQ_ATOMIC,
                            USE_TMA,
                        )  # fmt: skip

        if HAS_COLS:
            # Query blocks whose rows gather columns inside this key block: the columns (at most
            # BLOCK_N, distinct) become a key mask, and each row keeps them where k <= q_pos.
            n_groups = tl.where(f_lo == 0, tl.load(CQ_NUM + vrow), 0)
            col_start = tl.load(CQ_START + vrow)
            for c in range(n_groups):
                qb = tl.load(CQ_IDX + col_start + c).to(tl.int64)
                slot = tl.load(CQ_SLOT + col_start + c)
                count = tl.load(CQ_COUNT + col_start + c)
                offs_c = tl.arange(0, BLOCK_N)  # [BLOCK_N] a key block holds at most BLOCK_N of a row's columns
                cols = tl.load(COL_IDX + slot + offs_c, mask=offs_c < count, other=-1)  # [BLOCK_N]
                hit = tl.max((cols[:, None] == keys[None, :]).to(tl.int32), 0) > 0  # [KEYS] gathered keys
                for s in tl.static_range(BLOCK_M // SUB_M):
                    rows = qb * BLOCK_M + s * SUB_M + offs_sm  # [SUB_M]
                    q_pos = rows + (kv_len - q_len)  # [SUB_M]
                    if KEY_MAJOR:
                        keep = hit[:, None] & (keys[:, None] <= q_pos[None, :])  # [KEYS, SUB_M]
                    else:
                        keep = hit[None, :] & (keys[None, :] <= q_pos[:, None])  # [SUB_M, KEYS]
                    dk, dv = _dkdv_rows(
                        dk, dv, k, v, keep, qb, s, q_base, do_base, Q_DESC, DO_DESC, q_row0, lse_base, delta_base,
                        dq_base, offs_sm, offs_d, stride_qs, stride_dos, stride_dqs, q_len, qk_scale, sm_scale, BLOCK_M,
                        SUB_M, True, KEY_MAJOR, DQ_ATOMIC, USE_TMA,
                    )  # fmt: skip

    if out_slot < 0:
        dk_ptrs = DK + b * stride_dkb + kv_head * stride_dkh + keys[:, None] * stride_dks + offs_d[None, :]
        dv_ptrs = DV + b * stride_dvb + kv_head * stride_dvh + keys[:, None] * stride_dvs + offs_d[None, :]
        tl.store(dk_ptrs, (dk * sm_scale).to(DK.dtype.element_ty), mask=in_k[:, None])
        tl.store(dv_ptrs, dv.to(DV.dtype.element_ty), mask=in_k[:, None])
    else:
        # A split program's share, in fp32 at its slot ([slots, BLOCK_N, HEAD_DIM]); _bwd_dkdv_merge_kernel sums.
        offs = out_slot * (BLOCK_N * HEAD_DIM) + (part * KEYS + offs_n)[:, None] * HEAD_DIM + offs_d[None, :]
        tl.store(DK_PART + offs, dk)
        tl.store(DV_PART + offs, dv)


@triton.jit
def _bwd_dkdv_merge_kernel(
    DK, DV, DK_PART, DV_PART, MERGES,
    stride_dkb, stride_dkh, stride_dks, stride_dvb, stride_dvh, stride_dvs,
    kv_len, kv_heads, num_kv_blocks, sm_scale,
    BLOCK_N: tl.constexpr, KEYS: tl.constexpr, HEAD_DIM: tl.constexpr,
):  # fmt: skip
    """dK, dV of a split program: its slots' fp32 shares summed in slot order (deterministic); grid
    (split programs, BLOCK_N // KEYS), ``KEYS`` rows of the key block per program (32: two fp32
    [KEYS, HEAD_DIM] sums stay in registers at head dim 128)."""
    row = MERGES + tl.program_id(0).to(tl.int64) * 3
    prog = tl.load(row).to(tl.int64)
    first = tl.load(row + 1).to(tl.int64)
    count = tl.load(row + 2)
    kb = prog % num_kv_blocks
    b = prog // num_kv_blocks // kv_heads
    kv_head = prog // num_kv_blocks % kv_heads
    offs_n = tl.program_id(1) * KEYS + tl.arange(0, KEYS)  # [KEYS] within the key block
    offs_d = tl.arange(0, HEAD_DIM)  # [HEAD_DIM]
    tile = offs_n[:, None] * HEAD_DIM + offs_d[None, :]  # [KEYS, HEAD_DIM]
    dk = tl.zeros([KEYS, HEAD_DIM], tl.float32)
    dv = tl.zeros([KEYS, HEAD_DIM], tl.float32)
    for i in range(count):
        base = (first + i) * (BLOCK_N * HEAD_DIM)
        dk += tl.load(DK_PART + base + tile)
        dv += tl.load(DV_PART + base + tile)
    keys = kb * BLOCK_N + offs_n  # [KEYS]
    in_k = keys < kv_len
    dk_ptrs = DK + b * stride_dkb + kv_head * stride_dkh + keys[:, None] * stride_dks + offs_d[None, :]
    dv_ptrs = DV + b * stride_dvb + kv_head * stride_dvh + keys[:, None] * stride_dvs + offs_d[None, :]
    tl.store(dk_ptrs, (dk * sm_scale).to(DK.dtype.element_ty), mask=in_k[:, None])
    tl.store(dv_ptrs, dv.to(DV.dtype.element_ty), mask=in_k[:, None])
