"""The short-row loop warp-specialised and persistent, in Gluon: a load warp feeds a compute warpgroup.

    PYTHONPATH=. python experiments/gluon_band_ws.py --out $OUT      # on a Hopper GPU (Triton 3.6's Gluon)

A seventh of Triangle()'s time at 32K is once-per-program cost (``row_length_cost.md``): each window
row is a short program whose query load, first K/V loads and output store are not overlapped with
matmuls. Triton cannot overlap them: a persistent program that reads the next row ahead runs out of
registers, and a loop that streams rows stalls its pipeline at each row's end (``row_stream.md``).
Warp specialisation separates the two jobs: one warp of each program issues every TMA load (the next
row's query block and K/V tiles while the warpgroup still works on this row) and the warpgroup only
computes, waiting on mbarriers. Programs are persistent, taking the work list's items by stride.

The rows are those of ``gluon_band.py`` and ``band_loop_gap.py`` (32K tokens, 18 FULL 32 x 32 tiles per
query block, two heads of one kv head per item: 64 query rows). Timed in turn against the Gluon loop
without specialisation and Triton's bare loop on the same inputs, outputs checked against fp32 on
sampled items. Writes ``gluon_band_ws.json`` and ``gluon_band_ws.md``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from gluon_band import (
    BAND,
    ROWS,
    TOKENS,
    _gluon_band_kernel,
    _softmax,
    band_rows,
    check_time_and_report,
    triton_bare_loop,
)
from kernel_runs import HEAD_DIM, HEADS
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import (
    mbarrier,
    tma,
    warpgroup_mma,
    warpgroup_mma_init,
    warpgroup_mma_wait,
)

from sparseattn.kernels.attention.gluon_fwd import _warps_sync

PAIRS = HEADS // 2  # items per query block: two query heads of one kv head each


@gluon.jit
def _item_span(item, BAND: gl.constexpr):
    """An item's first band tile and tile count."""
    qb = item // 16
    lo = gl.maximum(qb - BAND, 0)
    return lo, qb - lo + 1


@gluon.jit
def _stream(lane, LANES: gl.constexpr):
    """A compute warpgroup's place among all of them, and how many there are: it takes every
    ``streams``-th item of the work list from its ``stream``."""
    return gl.program_id(0) * LANES + lane, gl.num_programs(0) * LANES


@gluon.jit
def _load_partition(descs, smem, bars, n_items, kv_len, BAND: gl.constexpr,
                    lane: gl.constexpr, LANES: gl.constexpr):  # fmt: skip
    q_desc, k_desc, v_desc = descs
    q_smem, k_smem, v_smem = smem
    q_ready, q_empty, kv_ready, kv_empty = bars
    STAGES: gl.constexpr = k_smem.type.shape[0] // LANES
    BLOCK_N: gl.constexpr = k_desc.block_type.shape[0]
    ROWS: gl.constexpr = q_desc.block_type.shape[0]
    stream, streams = _stream(lane, LANES)
    tile = 0  # K/V tiles issued so far: its stage and the phase of that stage's barriers
    for local in range(gl.cdiv(n_items - stream, streams)):
        item = stream + local * streams
        lo, n = _item_span(item, BAND)
        # The warpgroup moves its query block to registers first thing, so one buffer already lets the
        # next item's block arrive while this item's tiles are computed. A fresh barrier passes phase 1.
        mbarrier.wait(q_empty.index(lane), (local & 1) ^ 1)
        mbarrier.expect(q_ready.index(lane), q_desc.block_type.nbytes)
        tma.async_copy_global_to_shared(q_desc, [item * ROWS, 0], q_ready.index(lane), q_smem.index(lane))
        row0 = (item % 16 // 2) * kv_len + lo * BLOCK_N
        for j in range(n):
            stage = lane * STAGES + tile % STAGES
            mbarrier.wait(kv_empty.index(stage), (tile // STAGES & 1) ^ 1)
            bar = kv_ready.index(stage)
            mbarrier.expect(bar, 2 * k_desc.block_type.nbytes)
            tma.async_copy_global_to_shared(k_desc, [row0 + j * BLOCK_N, 0], bar, k_smem.index(stage))
            tma.async_copy_global_to_shared(v_desc, [row0 + j * BLOCK_N, 0], bar, v_smem.index(stage))
            tile += 1


@gluon.jit
def _compute_partition(smem, bars, Out, n_items, qk_scale, BAND: gl.constexpr,
                       lane: gl.constexpr, LANES: gl.constexpr):  # fmt: skip
    q_smem, k_smem, v_smem = smem
    q_ready, q_empty, kv_ready, kv_empty = bars
    STAGES: gl.constexpr = k_smem.type.shape[0] // LANES
    BLOCK_N: gl.constexpr = k_smem.type.shape[1]
    HEAD_DIM: gl.constexpr = k_smem.type.shape[2]
    ROWS: gl.constexpr = q_smem.type.shape[1]
    s_layout: gl.constexpr = gl.NVMMADistributedLayout(
        version=[3, 0], warps_per_cta=[4, 1], instr_shape=[16, BLOCK_N, 16]
    )
    o_layout: gl.constexpr = gl.NVMMADistributedLayout(
        version=[3, 0], warps_per_cta=[4, 1], instr_shape=[16, HEAD_DIM, 16]
    )
    q_operand: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=s_layout, k_width=2)
    p_operand: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=o_layout, k_width=2)
    s_rows: gl.constexpr = gl.SliceLayout(1, s_layout)
    o_rows: gl.constexpr = gl.SliceLayout(1, o_layout)
    r = gl.arange(0, ROWS, o_rows)
    d = gl.arange(0, HEAD_DIM, gl.SliceLayout(0, o_layout))
    zeros_s = gl.zeros([ROWS, BLOCK_N], gl.float32, s_layout)

    stream, streams = _stream(lane, LANES)
    tile = 0
    for local in range(gl.cdiv(n_items - stream, streams)):
        item = stream + local * streams
        _, n = _item_span(item, BAND)
        mbarrier.wait(q_ready.index(lane), local & 1)
        q = q_smem.index(lane).load(q_operand)
        _warps_sync()  # every warp holds its rows before the load warp may overwrite the buffer
        mbarrier.arrive(q_empty.index(lane))
        m_i = gl.full([ROWS], float("-inf"), gl.float32, s_rows)
        l_i = gl.zeros([ROWS], gl.float32, s_rows)
        acc = warpgroup_mma_init(gl.zeros([ROWS, HEAD_DIM], gl.float32, o_layout))
        for j in range(n):
            stage = lane * STAGES + tile % STAGES
            mbarrier.wait(kv_ready.index(stage), tile // STAGES & 1)
            s = warpgroup_mma(q, k_smem.index(stage).permute((1, 0)), zeros_s, use_acc=False, is_async=True)
            s, acc = warpgroup_mma_wait(num_outstanding=0, deps=(s, acc))  # and the previous tile's P V
            if j > 0:  # the previous tile's K and V are read: the load warp may refill its stage
                _warps_sync()
                mbarrier.arrive(kv_empty.index(lane * STAGES + (tile - 1) % STAGES))
            p, alpha, l_i, m_i = _softmax(s, l_i, m_i, qk_scale, o_rows)
            acc = acc * gl.expand_dims(alpha, 1)
            p16 = gl.convert_layout(p.to(gl.bfloat16), p_operand)
            acc = warpgroup_mma(p16, v_smem.index(stage), acc, is_async=True)
            tile += 1
        acc = warpgroup_mma_wait(num_outstanding=0, deps=(acc,))
        _warps_sync()
        mbarrier.arrive(kv_empty.index(lane * STAGES + (tile - 1) % STAGES))
        out = acc / gl.expand_dims(gl.convert_layout(l_i, o_rows), 1)
        ptrs = Out + (item * ROWS + gl.expand_dims(r, 1)).to(gl.int64) * HEAD_DIM + gl.expand_dims(d, 0)
        gl.store(ptrs, out.to(gl.bfloat16))


@gluon.jit
def _ws_band_kernel(q_desc, k_desc, v_desc, Out, n_items, kv_len, qk_scale, BAND: gl.constexpr,
                    STAGES: gl.constexpr, LANES: gl.constexpr, COMPUTE_REGS: gl.constexpr):  # fmt: skip
    """``LANES`` compute warpgroups per program, each with its own query buffer, K/V stages and load
    warp; the first runs in the default partition's 4 warps, which get the registers the others leave."""
    ROWS: gl.constexpr = q_desc.block_type.shape[0]
    HEAD_DIM: gl.constexpr = q_desc.block_type.shape[1]
    BLOCK_N: gl.constexpr = k_desc.block_type.shape[0]
    q_smem = gl.allocate_shared_memory(q_desc.dtype, [LANES, ROWS, HEAD_DIM], q_desc.layout)
    k_smem = gl.allocate_shared_memory(k_desc.dtype, [LANES * STAGES, BLOCK_N, HEAD_DIM], k_desc.layout)
    v_smem = gl.allocate_shared_memory(v_desc.dtype, [LANES * STAGES, BLOCK_N, HEAD_DIM], v_desc.layout)
    q_ready = gl.allocate_shared_memory(gl.int64, [LANES, 1], mbarrier.MBarrierLayout())
    q_empty = gl.allocate_shared_memory(gl.int64, [LANES, 1], mbarrier.MBarrierLayout())
    kv_ready = gl.allocate_shared_memory(gl.int64, [LANES * STAGES, 1], mbarrier.MBarrierLayout())
    kv_empty = gl.allocate_shared_memory(gl.int64, [LANES * STAGES, 1], mbarrier.MBarrierLayout())
    for i in gl.static_range(LANES):
        mbarrier.init(q_ready.index(i), count=1)
        mbarrier.init(q_empty.index(i), count=1)
    for i in gl.static_range(LANES * STAGES):
        mbarrier.init(kv_ready.index(i), count=1)
        mbarrier.init(kv_empty.index(i), count=1)
    bars = (q_ready, q_empty, kv_ready, kv_empty)
    smem = (q_smem, k_smem, v_smem)
    descs = (q_desc, k_desc, v_desc)
    if LANES == 1:
        gl.warp_specialize(
            [
                (_compute_partition, (smem, bars, Out, n_items, qk_scale, BAND, 0, LANES)),
                (_load_partition, (descs, smem, bars, n_items, kv_len, BAND, 0, LANES)),
            ],
            [1],
            [24],
        )
    elif LANES == 2:
        gl.warp_specialize(
            [
                (_compute_partition, (smem, bars, Out, n_items, qk_scale, BAND, 0, LANES)),
                (_compute_partition, (smem, bars, Out, n_items, qk_scale, BAND, 1, LANES)),
                (_load_partition, (descs, smem, bars, n_items, kv_len, BAND, 0, LANES)),
                (_load_partition, (descs, smem, bars, n_items, kv_len, BAND, 1, LANES)),
            ],
            [4, 1, 1],
            [COMPUTE_REGS, 24, 24],
        )
    else:
        gl.warp_specialize(
            [
                (_compute_partition, (smem, bars, Out, n_items, qk_scale, BAND, 0, LANES)),
                (_compute_partition, (smem, bars, Out, n_items, qk_scale, BAND, 1, LANES)),
                (_compute_partition, (smem, bars, Out, n_items, qk_scale, BAND, 2, LANES)),
                (_load_partition, (descs, smem, bars, n_items, kv_len, BAND, 0, LANES)),
                (_load_partition, (descs, smem, bars, n_items, kv_len, BAND, 1, LANES)),
                (_load_partition, (descs, smem, bars, n_items, kv_len, BAND, 2, LANES)),
            ],
            [4, 4, 1, 1, 1],
            [COMPUTE_REGS, COMPUTE_REGS, 24, 24, 24],
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("experiments/results"))
    parser.add_argument("--rounds", type=int, default=5, help="timings per variant, taken in turn")
    args = parser.parse_args()
    band = band_rows()
    items = TOKENS // 32 * PAIRS
    sms = torch.cuda.get_device_properties(0).multi_processor_count

    variants = []
    # (programs per multiprocessor, compute warpgroups per program, K/V stages, register cap per thread,
    # registers of the second and third warpgroups): a program's warps are counted in whole warpgroups
    # (one warpgroup and one load warp take 8 warps, three and three take 16), and the cap times its
    # threads decides how many programs fit in the 64K registers of a multiprocessor.
    for per_sm, lanes, stages, maxnreg, regs in (
        (2, 1, 3, 128, 0),
        (1, 2, 3, 168, 240),
        (1, 3, 3, 128, 160),
        (1, 3, 2, 128, 160),
    ):
        out = torch.full((items * ROWS, HEAD_DIM), float("nan"), device="cuda", dtype=torch.bfloat16)

        def launch(out=out, per_sm=per_sm, lanes=lanes, stages=stages, maxnreg=maxnreg, regs=regs):
            _ws_band_kernel[(sms * per_sm,)](
                band.q_desc, band.k_desc, band.v_desc, out, items, TOKENS, band.qk_scale, BAND=BAND,
                STAGES=stages, LANES=lanes, COMPUTE_REGS=regs, num_warps=4, maxnreg=maxnreg,
            )  # fmt: skip

        name = f"Gluon, specialised: {per_sm * lanes} warpgroups per SM ({per_sm} x {lanes}), {stages} stages"
        variants.append((name, launch, lambda out=out: out))

    plain_out = torch.full((items * ROWS, HEAD_DIM), float("nan"), device="cuda", dtype=torch.bfloat16)

    def plain() -> None:
        _gluon_band_kernel[(items,)](
            band.q_desc, band.k_desc, band.v_desc, plain_out, TOKENS, band.qk_scale, BAND=BAND, STAGES=3,
            AHEAD=False, num_warps=4,
        )  # fmt: skip

    variants.append(("Gluon, one program per item (gluon_band.py's loop, 3 stages)", plain, lambda: plain_out))

    bare, bare_rows = triton_bare_loop(band.q, band.k_rows, band.v_rows, band.qk_scale)
    variants.append(("Triton, one program per item (band_loop_gap.py's bare loop)", bare, bare_rows))
    check_time_and_report(
        variants, band.expected, args, "gluon_band_ws", "The short-row loop warp-specialised and persistent, in Gluon"
    )


if __name__ == "__main__":
    main()
