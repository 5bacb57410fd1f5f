"""Dense causal attention in Gluon, scheduled as FlashAttention-3 does, against cuDNN and our kernel.

    PYTHONPATH=experiments python experiments/investigations/gluon_dense.py --out $OUT      # on a Hopper GPU (Triton 3.6's Gluon)

Our Triton launch runs dense causal rows at 0.92x to 0.96x of cuDNN SDPA. Triton cannot express the two
schedules FlashAttention-3 credits for its last 10% to 20% on Hopper: a tile's softmax overlapping the
same warpgroup's matmuls (tried in Gluon on short rows: ``gluon_band.md``), and two warpgroups taking
turns at the tensor cores, one's softmax running while the other's matmuls do ("ping-pong"). This
kernel, dense causal only, writes both, warp-specialised: per program a 128-row query tile in two
64-row halves, one compute warpgroup each (240 registers), and a load warp (24 registers) issuing every
TMA load through mbarriers. The warpgroups share K/V stages and may hand each other the tensor cores
through a pair of mbarriers: each issues its tile's ``Q K^T`` and the previous tile's ``P V``, passes the
turn, then runs its softmax. It became ``sparseattn/kernels/attention/gluon_fwd.py``, the block-sparse kernel's
launch for 128 x 128 layouts on Hopper, which this script times too, in both row orders, beside the
Triton launch.

Checked against cuDNN's output, then timed in rounds taken in turn. Writes ``gluon_dense.json`` and
``gluon_dense.md``.
"""

from __future__ import annotations

import argparse
import math
import statistics
from pathlib import Path

import torch
from harness import (
    HEAD_DIM,
    HEADS,
    KV_HEADS,
    SHAPE,
    cudnn_dense,
    inputs,
    run_line,
    run_meta,
    spread,
    timed_rounds,
    write_json,
)
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import (
    mbarrier,
    tma,
    warpgroup_mma,
    warpgroup_mma_init,
    warpgroup_mma_wait,
)
from triton.experimental.gluon.nvidia.hopper import TensorDescriptor

from sparseattn.kernels.attention.config import KernelConfig, default_config
from sparseattn.kernels.attention.launch import triton_sparse_attention
from sparseattn.lowering import lower
from sparseattn.patterns import Causal

BLOCK = 128  # query rows and key columns per tile
HALF = 64  # query rows per compute warpgroup
LOG2E = 1.4426950408889634
# A barrier over the program's warps, spelled as the installed Gluon spells it (as gluon_fwd.py does).
warps_sync = gl.barrier if hasattr(gl, "barrier") else gl.thread_barrier
# The Triton kernel's launch for dense rows before the warp-specialised one became the default.
TRITON_LAUNCH = KernelConfig(num_warps=8, num_stages=3, tma=True)


@gluon.jit
def _tile_of_program(n_tokens, HEADS: gl.constexpr):
    """The program's query tile (heaviest first: the last tile has the longest causal row) and head."""
    pid = gl.program_id(0)
    return n_tokens // 128 - 1 - pid // HEADS, pid % HEADS


@gluon.jit
def _dense_load(descs, smem, bars, n_tokens, HEADS: gl.constexpr, GROUP: gl.constexpr):
    q_desc, k_desc, v_desc = descs
    q_smem, k_smem, v_smem = smem
    q_ready, k_ready, k_empty, v_ready, v_empty, _ = bars
    STAGES: gl.constexpr = k_smem.type.shape[0]
    BLOCK_N: gl.constexpr = k_desc.block_type.shape[0]
    HALF: gl.constexpr = q_desc.block_type.shape[0]
    tile, head = _tile_of_program(n_tokens, HEADS)
    q_row = head * n_tokens + tile * 2 * HALF
    kv_row = head // GROUP * n_tokens
    mbarrier.expect(q_ready, 2 * q_desc.block_type.nbytes)
    tma.async_copy_global_to_shared(q_desc, [q_row, 0], q_ready, q_smem.index(0))
    tma.async_copy_global_to_shared(q_desc, [q_row + HALF, 0], q_ready, q_smem.index(1))
    for j in range(tile + 1):
        stage = j % STAGES
        phase = (j // STAGES & 1) ^ 1  # a fresh barrier passes phase 1: the first round finds stages free
        mbarrier.wait(k_empty.index(stage), phase)
        mbarrier.expect(k_ready.index(stage), k_desc.block_type.nbytes)
        tma.async_copy_global_to_shared(k_desc, [kv_row + j * BLOCK_N, 0], k_ready.index(stage), k_smem.index(stage))
        mbarrier.wait(v_empty.index(stage), phase)
        mbarrier.expect(v_ready.index(stage), v_desc.block_type.nbytes)
        tma.async_copy_global_to_shared(v_desc, [kv_row + j * BLOCK_N, 0], v_ready.index(stage), v_smem.index(stage))


@gluon.jit
def _softmax_step(s, m_i, l_i, qk_scale, rows, cols, DIAGONAL):
    """Online softmax of one score tile [HALF, BLOCK_N]: its probabilities, the factor that moves the
    running sums to the new maxima, and those sums and maxima. ``DIAGONAL`` masks keys after the query."""
    if DIAGONAL:
        s = gl.where(gl.expand_dims(cols, 0) <= gl.expand_dims(rows, 1), s, float("-inf"))
    m_new = gl.maximum(m_i, gl.max(s, 1) * qk_scale)
    alpha = gl.exp2(m_i - m_new)
    p = gl.exp2(s * qk_scale - gl.expand_dims(m_new, 1))
    return p, alpha, l_i * alpha + gl.sum(p, 1), m_new


@gluon.jit
def _dense_compute(smem, bars, Out, n_tokens, qk_scale, HEADS: gl.constexpr, half: gl.constexpr,
                   PING_PONG: gl.constexpr):  # fmt: skip
    q_smem, k_smem, v_smem = smem
    q_ready, k_ready, k_empty, v_ready, v_empty, turn = bars
    STAGES: gl.constexpr = k_smem.type.shape[0]
    BLOCK_N: gl.constexpr = k_smem.type.shape[1]
    HEAD_DIM: gl.constexpr = k_smem.type.shape[2]
    HALF: gl.constexpr = q_smem.type.shape[1]
    layout: gl.constexpr = gl.NVMMADistributedLayout(
        version=[3, 0], warps_per_cta=[4, 1], instr_shape=[16, BLOCK_N, 16]
    )  # scores and output alike: BLOCK_N == HEAD_DIM
    operand: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=layout, k_width=2)
    row_layout: gl.constexpr = gl.SliceLayout(1, layout)
    col_layout: gl.constexpr = gl.SliceLayout(0, layout)

    tile, head = _tile_of_program(n_tokens, HEADS)
    n = tile + 1
    rows = tile * 2 * HALF + half * HALF + gl.arange(0, HALF, row_layout)
    cols = gl.arange(0, BLOCK_N, col_layout)
    zeros = gl.zeros([HALF, BLOCK_N], gl.float32, layout)
    mine = turn.index(half)
    other = turn.index(1 - half)

    mbarrier.wait(q_ready, 0)
    q = q_smem.index(half).load(operand)
    # The first turn: warpgroup 0 passes its fresh barrier at phase 1, warpgroup 1 waits for phase 0.
    mbarrier.wait(k_ready.index(0), 0)
    if PING_PONG:
        mbarrier.wait(mine, 1 - half)
    s = warpgroup_mma(q, k_smem.index(0).permute((1, 0)), zeros, use_acc=False, is_async=True)
    if PING_PONG:
        mbarrier.arrive(other)
    s = warpgroup_mma_wait(num_outstanding=0, deps=(s,))
    warps_sync()
    mbarrier.arrive(k_empty.index(0))
    m_i = gl.full([HALF], float("-inf"), gl.float32, row_layout)
    l_i = gl.zeros([HALF], gl.float32, row_layout)
    p, alpha, l_i, m_i = _softmax_step(s, m_i, l_i, qk_scale, rows, cols, n == 1)
    p = p.to(gl.bfloat16)
    acc = warpgroup_mma_init(gl.zeros([HALF, HEAD_DIM], gl.float32, layout))
    for j in range(1, n):
        stage = j % STAGES
        prev = (j - 1) % STAGES
        mbarrier.wait(k_ready.index(stage), j // STAGES & 1)
        if PING_PONG:
            mbarrier.wait(mine, (j & 1) ^ (1 - half))
        s = warpgroup_mma(q, k_smem.index(stage).permute((1, 0)), zeros, use_acc=False, is_async=True)
        mbarrier.wait(v_ready.index(prev), (j - 1) // STAGES & 1)
        acc = warpgroup_mma(gl.convert_layout(p, operand), v_smem.index(prev), acc, is_async=True)
        if PING_PONG:
            mbarrier.arrive(other)
        s = warpgroup_mma_wait(num_outstanding=1, deps=(s,))  # this tile's scores; the older P V runs on
        warps_sync()
        mbarrier.arrive(k_empty.index(stage))
        p_next, alpha, l_i, m_i = _softmax_step(s, m_i, l_i, qk_scale, rows, j * BLOCK_N + cols, j == n - 1)
        acc = warpgroup_mma_wait(num_outstanding=0, deps=(acc,))
        warps_sync()
        mbarrier.arrive(v_empty.index(prev))
        acc = warpgroup_mma_init(acc * gl.expand_dims(alpha, 1))
        p = p_next.to(gl.bfloat16)
    last = (n - 1) % STAGES
    mbarrier.wait(v_ready.index(last), (n - 1) // STAGES & 1)
    acc = warpgroup_mma(gl.convert_layout(p, operand), v_smem.index(last), acc, is_async=True)
    acc = warpgroup_mma_wait(num_outstanding=0, deps=(acc,))
    out = acc / gl.expand_dims(l_i, 1)
    d = gl.arange(0, HEAD_DIM, col_layout)
    ptrs = Out + (head * n_tokens + gl.expand_dims(rows, 1)).to(gl.int64) * HEAD_DIM + gl.expand_dims(d, 0)
    gl.store(ptrs, out.to(gl.bfloat16))


@gluon.jit
def _gluon_dense_kernel(q_desc, k_desc, v_desc, Out, n_tokens, qk_scale, HEADS: gl.constexpr,
                        GROUP: gl.constexpr, STAGES: gl.constexpr, PING_PONG: gl.constexpr):  # fmt: skip
    HALF: gl.constexpr = q_desc.block_type.shape[0]
    HEAD_DIM: gl.constexpr = q_desc.block_type.shape[1]
    BLOCK_N: gl.constexpr = k_desc.block_type.shape[0]
    q_smem = gl.allocate_shared_memory(q_desc.dtype, [2, HALF, HEAD_DIM], q_desc.layout)
    k_smem = gl.allocate_shared_memory(k_desc.dtype, [STAGES, BLOCK_N, HEAD_DIM], k_desc.layout)
    v_smem = gl.allocate_shared_memory(v_desc.dtype, [STAGES, BLOCK_N, HEAD_DIM], v_desc.layout)
    q_ready = gl.allocate_shared_memory(gl.int64, [1, 1], mbarrier.MBarrierLayout()).index(0)
    k_ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    k_empty = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    v_ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    v_empty = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    turn = gl.allocate_shared_memory(gl.int64, [2, 1], mbarrier.MBarrierLayout())
    mbarrier.init(q_ready, count=1)
    for i in gl.static_range(STAGES):
        mbarrier.init(k_ready.index(i), count=1)
        mbarrier.init(v_ready.index(i), count=1)
        mbarrier.init(k_empty.index(i), count=2)  # both warpgroups read every stage
        mbarrier.init(v_empty.index(i), count=2)
    for i in gl.static_range(2):
        mbarrier.init(turn.index(i), count=1)
    smem = (q_smem, k_smem, v_smem)
    bars = (q_ready, k_ready, k_empty, v_ready, v_empty, turn)
    gl.warp_specialize(
        [
            (_dense_compute, (smem, bars, Out, n_tokens, qk_scale, HEADS, 0, PING_PONG)),
            (_dense_compute, (smem, bars, Out, n_tokens, qk_scale, HEADS, 1, PING_PONG)),
            (_dense_load, ((q_desc, k_desc, v_desc), smem, bars, n_tokens, HEADS, GROUP)),
        ],
        [4, 1],
        [240, 24],
    )


def gluon_dense(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, stages: int, ping_pong: bool) -> torch.Tensor:
    """Causal attention of ``q`` [1, H, n, D] over ``k, v`` [1, Hkv, n, D], n a multiple of 128."""
    _, h, n, d = q.shape
    if n % BLOCK or d != BLOCK or q.shape[0] != 1:
        raise ValueError(f"q: expected [1, H, n, 128] with n a multiple of {BLOCK}, got {tuple(q.shape)}")
    out = torch.empty_like(q)
    rows = gl.NVMMASharedLayout.get_default_for([HALF, d], gl.bfloat16)
    tile = gl.NVMMASharedLayout.get_default_for([BLOCK, d], gl.bfloat16)
    q_desc = TensorDescriptor.from_tensor(q.view(-1, d), [HALF, d], rows)
    k_desc = TensorDescriptor.from_tensor(k.view(-1, d), [BLOCK, d], tile)
    v_desc = TensorDescriptor.from_tensor(v.view(-1, d), [BLOCK, d], tile)
    _gluon_dense_kernel[(n // BLOCK * h,)](
        q_desc, k_desc, v_desc, out, n, LOG2E / math.sqrt(d), HEADS=h, GROUP=h // k.shape[1], STAGES=stages,
        PING_PONG=ping_pong, num_warps=4, maxnreg=168,
    )  # fmt: skip
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("experiments/results"))
    parser.add_argument("--lengths", type=int, nargs="*", default=[32768])
    parser.add_argument("--rounds", type=int, default=5, help="timings per variant, taken in turn")
    args = parser.parse_args()
    rows = []
    for n in args.lengths:
        q, k, v = inputs(n)
        layout = lower(Causal(), n, block_size=(128, 128), device="cuda")
        warp_specialized = default_config(layout, HEAD_DIM, group=HEADS // KV_HEADS)
        variants = {
            "cuDNN SDPA": lambda q=q, k=k, v=v: cudnn_dense(q, k, v),
            "our kernel, Triton (128 x 128 tiles, 8 warps, 3 stages)": lambda q=q, k=k, v=v, layout=layout: (
                triton_sparse_attention(q, k, v, layout, config=TRITON_LAUNCH)[0]
            ),
            f"our kernel, warp-specialised (gluon_fwd, {warp_specialized.num_stages} stages), heaviest rows first": (
                lambda q=q, k=k, v=v, layout=layout, c=warp_specialized: triton_sparse_attention(
                    q, k, v, layout, config=c
                )[0]
            ),
            "our kernel, warp-specialised, grid order": (
                lambda q=q, k=k, v=v, layout=layout, c=warp_specialized: triton_sparse_attention(
                    q, k, v, layout, config=c, heavy_first=False, max_chunk=0
                )[0]
            ),
        }
        for stages in (2, 3):
            for ping_pong in (False, True):
                name = f"this script's kernel, FlashAttention-3's overlap{', ping-pong' if ping_pong else ''}, {stages} stages"
                variants[name] = lambda q=q, k=k, v=v, s=stages, pp=ping_pong: gluon_dense(q, k, v, s, pp)
        truth = cudnn_dense(q, k, v).float()
        for name, fn in variants.items():
            err = float((fn().float() - truth).abs().max())
            if not err < 0.02:
                raise RuntimeError(f"{name} at {n}: max error {err} against cuDNN")
            print(f"checked: {name} at {n} ({err:.1e})", flush=True)
            rows.append({"tokens": n, "variant": name, "max_err_vs_cudnn": err})
        for row, ms_rounds in zip(
            rows[-len(variants) :], timed_rounds(list(variants.values()), args.rounds), strict=True
        ):
            row["ms_rounds"] = ms_rounds
            row["ms"] = statistics.median(ms_rounds)
            row["tflops"] = 4 * HEAD_DIM * HEADS * n * (n + 1) / 2 / (row["ms"] * 1e-3) / 1e12
    meta = run_meta(__file__, args.out)
    write_json(args.out, "gluon_dense", meta, rows)
    cudnn = {r["tokens"]: r["ms"] for r in rows if r["variant"] == "cuDNN SDPA"}
    lines = [
        "# Dense causal in Gluon with FlashAttention-3's schedule, against cuDNN and our kernel",
        "",
        run_line(meta),
        f"{SHAPE}; do_bench medians, {args.rounds} rounds in turn (`ms`: median round; `range`: fastest and "
        "slowest); TFLOP/s count 4·D flops per causal pair; `max err` against cuDNN's output.",
        "",
        "| tokens | variant | ms | range | TFLOP/s | vs cuDNN | max err |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        n = r["tokens"]
        lines.append(
            f"| {n} | {r['variant']} | {r['ms']:.3f} | {spread(r['ms_rounds'])} | {r['tflops']:.0f} | "
            f"{cudnn[n] / r['ms']:.3f}x | {r['max_err_vs_cudnn']:.1e} |"
        )
    (args.out / "gluon_dense.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
