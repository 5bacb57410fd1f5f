"""The short-row loop written in Gluon, with and without FlashAttention-3's in-warpgroup overlap.

    PYTHONPATH=. python experiments/gluon_band.py --out $OUT      # on a Hopper GPU (Triton 3.6's Gluon)

Triton's `tl.dot` waits for every outstanding matmul when it waits at all, which is why the overlap of
a tile's softmax with matmuls is slower written in Triton (``scores_ahead.md``). Gluon exposes
``warpgroup_mma_wait(num_outstanding=1)``: wait for the older of two matmuls and leave the newer
running. This script runs the band rows of ``band_loop_gap.py`` (18 FULL 32 x 32 tiles per query
block, 32K tokens, two heads of one kv head per program: 64 query rows, 4 warps, K/V in TMA stages,
the query block in registers) in Gluon, as the shared kernel's loop and in FlashAttention-3's order
(tile j+1's ``Q K^T`` and tile j's ``P V`` issued together, tile j+1's softmax while ``P V`` runs),
next to the bare Triton loop of ``band_loop_gap.py`` on the same inputs. Outputs are checked against the fp32 reference on sampled
rows and against each other. Five rounds in turn; writes ``gluon_band.json`` and ``gluon_band.md``.
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from band_loop_gap import _bare_band_kernel
from kernel_runs import HEAD_DIM, HEADS, KV_HEADS, run_line, run_meta, spread, timed_rounds, write_json
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
from triton.tools.tensor_descriptor import TensorDescriptor as TritonDescriptor

TOKENS = 32768
BAND = 17  # tiles before the diagonal one
ROWS, BLOCK_N, STAGES = 64, 32, 3
LOG2E = 1.4426950408889634


@gluon.jit
def _kv_load(k_desc, v_desc, k_smem, v_smem, bars, tile, row0, BLOCK_N: gl.constexpr, STAGES: gl.constexpr):
    stage = tile % STAGES
    bar = bars.index(stage)
    mbarrier.expect(bar, 2 * k_desc.block_type.nbytes)
    tma.async_copy_global_to_shared(k_desc, [row0 + tile * BLOCK_N, 0], bar, k_smem.index(stage))
    tma.async_copy_global_to_shared(v_desc, [row0 + tile * BLOCK_N, 0], bar, v_smem.index(stage))


@gluon.jit
def _softmax(s, l_i, m_i, qk_scale, O_ROWS: gl.constexpr):
    m_new = gl.maximum(m_i, gl.max(s, 1) * qk_scale)
    alpha = gl.exp2(m_i - m_new)
    p = gl.exp2(s * qk_scale - gl.expand_dims(m_new, 1))
    l_i = l_i * alpha + gl.sum(p, 1)
    return p, gl.convert_layout(alpha, O_ROWS), l_i, m_new


@gluon.jit
def _gluon_band_kernel(
    q_desc, k_desc, v_desc, Out, kv_len, qk_scale,
    BAND: gl.constexpr, STAGES: gl.constexpr, AHEAD: gl.constexpr,
):  # fmt: skip
    ROWS: gl.constexpr = q_desc.block_type.shape[0]
    HEAD_DIM: gl.constexpr = q_desc.block_type.shape[1]
    BLOCK_N: gl.constexpr = k_desc.block_type.shape[0]
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

    pid = gl.program_id(0)
    qb = pid // 16  # the work list's order: query block, then the 16 two-head programs
    row0 = (pid % 16 // 2) * kv_len  # this kv head's first row in the flattened K/V
    lo = gl.maximum(qb - BAND, 0)
    n = qb - lo + 1

    q_smem = gl.allocate_shared_memory(q_desc.dtype, [ROWS, HEAD_DIM], q_desc.layout)
    k_smem = gl.allocate_shared_memory(k_desc.dtype, [STAGES, BLOCK_N, HEAD_DIM], k_desc.layout)
    v_smem = gl.allocate_shared_memory(v_desc.dtype, [STAGES, BLOCK_N, HEAD_DIM], v_desc.layout)
    bars = gl.allocate_shared_memory(gl.int64, [STAGES + 1, 1], mbarrier.MBarrierLayout())
    for i in gl.static_range(STAGES + 1):
        mbarrier.init(bars.index(i), count=1)
    q_bar = bars.index(STAGES)
    mbarrier.expect(q_bar, q_desc.block_type.nbytes)
    tma.async_copy_global_to_shared(q_desc, [pid * ROWS, 0], q_bar, q_smem)
    for i in gl.static_range(STAGES):
        if i < n:
            _kv_load(k_desc, v_desc, k_smem, v_smem, bars, i, row0 + lo * BLOCK_N, BLOCK_N, STAGES)
    mbarrier.wait(q_bar, 0)
    q = q_smem.load(q_operand)

    base = row0 + lo * BLOCK_N
    zeros_s = gl.zeros([ROWS, BLOCK_N], gl.float32, s_layout)
    m_i = gl.full([ROWS], float("-inf"), gl.float32, s_rows)
    l_i = gl.zeros([ROWS], gl.float32, s_rows)
    acc = warpgroup_mma_init(gl.zeros([ROWS, HEAD_DIM], gl.float32, o_layout))  # a matmul result from here on
    if not AHEAD:
        for j in range(n):
            stage = j % STAGES
            mbarrier.wait(bars.index(stage), (j // STAGES) & 1)
            s = warpgroup_mma(q, k_smem.index(stage).permute((1, 0)), zeros_s, use_acc=False, is_async=True)
            s, acc = warpgroup_mma_wait(num_outstanding=0, deps=(s, acc))  # and the previous tile's P V
            if j >= 1 and j - 1 + STAGES < n:  # tile j-1's buffers are free: refill them
                _kv_load(k_desc, v_desc, k_smem, v_smem, bars, j - 1 + STAGES, base, BLOCK_N, STAGES)
            p, alpha, l_i, m_i = _softmax(s, l_i, m_i, qk_scale, o_rows)
            acc = acc * gl.expand_dims(alpha, 1)
            p16 = gl.convert_layout(p.to(gl.bfloat16), p_operand)
            acc = warpgroup_mma(p16, v_smem.index(stage), acc, is_async=True)
    else:
        # FlashAttention-3's order: tile j+1's Q K^T and tile j's P V are issued together, tile j+1's
        # softmax runs while P V is on the tensor cores, and the accumulator is rescaled once both
        # are done, so no instruction touches registers a matmul in flight may write.
        mbarrier.wait(bars.index(0), 0)
        s = warpgroup_mma(q, k_smem.index(0).permute((1, 0)), zeros_s, use_acc=False, is_async=True)
        s = warpgroup_mma_wait(num_outstanding=0, deps=(s,))
        p, alpha, l_i, m_i = _softmax(s, l_i, m_i, qk_scale, o_rows)
        for j in range(n - 1):
            nxt = (j + 1) % STAGES
            mbarrier.wait(bars.index(nxt), ((j + 1) // STAGES) & 1)
            s = warpgroup_mma(q, k_smem.index(nxt).permute((1, 0)), zeros_s, use_acc=False, is_async=True)
            p16 = gl.convert_layout(p.to(gl.bfloat16), p_operand)
            acc = warpgroup_mma(p16, v_smem.index(j % STAGES), acc, is_async=True)
            s = warpgroup_mma_wait(num_outstanding=1, deps=(s,))  # tile j+1's scores; P V runs on
            p, alpha, l_i, m_i = _softmax(s, l_i, m_i, qk_scale, o_rows)
            acc, p16 = warpgroup_mma_wait(num_outstanding=0, deps=(acc, p16))
            if j + STAGES < n:  # tile j's buffers are free: refill them
                _kv_load(k_desc, v_desc, k_smem, v_smem, bars, j + STAGES, base, BLOCK_N, STAGES)
            acc = warpgroup_mma_init(acc * gl.expand_dims(alpha, 1))
        p16 = gl.convert_layout(p.to(gl.bfloat16), p_operand)
        acc = warpgroup_mma(p16, v_smem.index((n - 1) % STAGES), acc, is_async=True)
    acc = warpgroup_mma_wait(num_outstanding=0, deps=(acc,))
    for i in gl.static_range(STAGES + 1):
        mbarrier.invalidate(bars.index(i))
    out = acc / gl.expand_dims(gl.convert_layout(l_i, o_rows), 1)
    r = gl.arange(0, ROWS, o_rows)
    d = gl.arange(0, HEAD_DIM, gl.SliceLayout(0, o_layout))
    ptrs = Out + (pid * ROWS + gl.expand_dims(r, 1)).to(gl.int64) * HEAD_DIM + gl.expand_dims(d, 0)
    gl.store(ptrs, out.to(gl.bfloat16))


def reference_rows(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, programs: list[int]) -> dict[int, torch.Tensor]:
    """fp32 outputs of sampled programs: every key of the band attended, no mask (the band is FULL)."""
    scale = HEAD_DIM**-0.5
    found = {}
    for pid in programs:
        qb, pair = divmod(pid, 16)
        lo = max(qb - BAND, 0)
        keys = slice(lo * BLOCK_N, (qb + 1) * BLOCK_N)
        rows = q[0, 2 * pair : 2 * pair + 2, qb * 32 : qb * 32 + 32].float()  # [2, 32, D]
        kk, vv = k[0, pair // 2, keys].float(), v[0, pair // 2, keys].float()
        found[pid] = torch.softmax(rows @ kk.T * scale, dim=-1) @ vv  # [2, 32, D]
    return found


def triton_bare_loop(
    q: torch.Tensor, k_rows: torch.Tensor, v_rows: torch.Tensor, qk_scale: float
) -> tuple[Callable[[], None], Callable[[], torch.Tensor]]:
    """The band rows through ``band_loop_gap.py``'s bare Triton loop: its launch, and its output as
    ``[programs * 64, D]`` in the work list's order (the Gluon kernels' layout)."""
    out = torch.empty_like(q)
    lse = torch.empty(q.shape[:3], device=q.device, dtype=torch.float32)
    descs = [TritonDescriptor.from_tensor(q, [1, 2, 32, HEAD_DIM]),
             TritonDescriptor.from_tensor(k_rows, [BLOCK_N, HEAD_DIM]),
             TritonDescriptor.from_tensor(v_rows, [BLOCK_N, HEAD_DIM]),
             TritonDescriptor.from_tensor(out, [1, 2, 32, HEAD_DIM])]  # fmt: skip

    def launch() -> None:
        _bare_band_kernel[(TOKENS // 32 * HEADS // 2,)](
            q, 1, q, descs[0], descs[1], descs[2], descs[3], out, lse, TOKENS, TOKENS, qk_scale,
            BLOCK_M=32, BLOCK_N=BLOCK_N, HEAD_DIM=HEAD_DIM, BAND=BAND, HEADS=True, ITEMS=False, EPILOGUE=0,
            PREFETCH=0, EXP=0, PACK=2, num_warps=4,
        )  # fmt: skip

    return launch, lambda: out[0].view(HEADS, -1, 32, HEAD_DIM).transpose(0, 1).reshape(-1, HEAD_DIM)


@dataclass(frozen=True)
class BandRows:
    """The band experiments' inputs: q [1, H, S, D] and K/V as rows of D, their Gluon descriptors (each
    item's 64 query rows, two heads of one query block, contiguous in the work list's order), the scale
    with log2(e), and fp32 outputs of sampled items."""

    q: torch.Tensor
    k_rows: torch.Tensor
    v_rows: torch.Tensor
    q_desc: TensorDescriptor
    k_desc: TensorDescriptor
    v_desc: TensorDescriptor
    qk_scale: float
    expected: dict[int, torch.Tensor]


def band_rows() -> BandRows:
    """Seeded inputs at TOKENS tokens and the references of five sampled items."""
    gen = torch.Generator(device="cuda").manual_seed(0)
    q = torch.randn(1, HEADS, TOKENS, HEAD_DIM, device="cuda", dtype=torch.bfloat16, generator=gen)
    k = torch.randn(1, KV_HEADS, TOKENS, HEAD_DIM, device="cuda", dtype=torch.bfloat16, generator=gen)
    v = torch.randn(1, KV_HEADS, TOKENS, HEAD_DIM, device="cuda", dtype=torch.bfloat16, generator=gen)
    items = TOKENS // 32 * HEADS // 2
    q_rows = q[0].view(HEADS, TOKENS // 32, 32, HEAD_DIM).transpose(0, 1).reshape(-1, HEAD_DIM).contiguous()
    k_rows, v_rows = k.view(-1, HEAD_DIM), v.view(-1, HEAD_DIM)
    tile = gl.NVMMASharedLayout.get_default_for([BLOCK_N, HEAD_DIM], gl.bfloat16)
    q_desc = TensorDescriptor.from_tensor(
        q_rows, [ROWS, HEAD_DIM], gl.NVMMASharedLayout.get_default_for([ROWS, HEAD_DIM], gl.bfloat16)
    )
    sample = [0, 17, 16 * 40 + 3, items // 2 + 5, items - 1]
    return BandRows(
        q, k_rows, v_rows, q_desc, TensorDescriptor.from_tensor(k_rows, [BLOCK_N, HEAD_DIM], tile),
        TensorDescriptor.from_tensor(v_rows, [BLOCK_N, HEAD_DIM], tile), HEAD_DIM**-0.5 * LOG2E,
        reference_rows(q, k, v, sample),
    )  # fmt: skip


def check_time_and_report(
    variants: list[tuple[str, Callable[[], None], Callable[[], torch.Tensor]]],
    expected: dict[int, torch.Tensor],
    args: argparse.Namespace,
    stem: str,
    title: str,
) -> None:
    """Check each variant (name, launch, its output as [items * 64, D]) against the sampled references,
    time them in rounds taken in turn, and write ``stem``.json and .md under ``args.out``."""
    rows = []
    for name, launch, output in variants:
        launch()
        torch.cuda.synchronize()
        got = output()
        if got.isnan().any():
            raise RuntimeError(f"{name}: rows left unwritten")
        err = max(
            (got[i * ROWS : (i + 1) * ROWS].float().view(2, 32, HEAD_DIM) - ref).abs().max().item()
            for i, ref in expected.items()
        )
        if not err < 0.02:
            raise RuntimeError(f"{name}: max error {err} against the fp32 reference")
        rows.append({"variant": name, "max_err": err})
        print(f"checked: {name} ({err:.1e})", flush=True)
    flops = sum(min(qb, BAND) + 1 for qb in range(TOKENS // 32)) * HEADS * 32 * BLOCK_N * 4 * HEAD_DIM
    for row, ms_rounds in zip(rows, timed_rounds([launch for _, launch, _ in variants], args.rounds), strict=True):
        row["ms_rounds"] = ms_rounds
        row["ms"] = statistics.median(ms_rounds)
        row["tflops"] = flops / row["ms"] / 1e9
    meta = run_meta(f"{stem}.py", args.out)
    write_json(args.out, stem, meta, rows)
    lines = [
        f"# {title}",
        "",
        run_line(meta),
        f"{TOKENS} tokens, {HEADS} query heads, {KV_HEADS} kv heads, head dim {HEAD_DIM}, bf16; band rows of "
        f"{BAND + 1} FULL 32 x 32 tiles, two heads per item; do_bench medians, {args.rounds} rounds in turn "
        "(`ms`: median round; `range`: fastest and slowest); `max err` on sampled items against fp32.",
        "",
        "| variant | ms | range | TFLOP/s | max err |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['variant']} | {r['ms']:.3f} | {spread(r['ms_rounds'])} | {r['tflops']:.0f} | {r['max_err']:.1e} |"
        )
    (args.out / f"{stem}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("experiments/results"))
    parser.add_argument("--rounds", type=int, default=5, help="timings per variant, taken in turn")
    args = parser.parse_args()
    band = band_rows()
    programs = TOKENS // 32 * HEADS // 2
    variants = []
    for ahead, stages in ((False, 3), (True, 3), (True, 4)):
        out = torch.full((programs * ROWS, HEAD_DIM), float("nan"), device="cuda", dtype=torch.bfloat16)

        def launch(out=out, ahead=ahead, stages=stages):
            _gluon_band_kernel[(programs,)](
                band.q_desc, band.k_desc, band.v_desc, out, TOKENS, band.qk_scale, BAND=BAND, STAGES=stages,
                AHEAD=ahead, num_warps=4,
            )  # fmt: skip

        order = "FlashAttention-3's overlap" if ahead else "the kernel's loop"
        variants.append((f"Gluon, {order}, {stages} stages", launch, lambda out=out: out))

    bare, bare_rows = triton_bare_loop(band.q, band.k_rows, band.v_rows, band.qk_scale)
    variants.append(("Triton, the kernel's loop (band_loop_gap.py's bare loop)", bare, bare_rows))
    check_time_and_report(
        variants, band.expected, args, "gluon_band", "The short-row loop in Gluon: FlashAttention-3's overlap "
        "against the kernel's loop",
    )  # fmt: skip


if __name__ == "__main__":
    main()
