"""Where the shared kernel loses to a bare loop on short FULL rows.

    PYTHONPATH=experiments python experiments/investigations/band_loop_gap.py --out $OUT      # on a Hopper GPU

Every query block of a 32K prompt gets a band of 18 FULL 32 x 32 tiles ending at its diagonal (as in
``row_length_cost.py``; Triangle()'s window rows have as many tiles); B=1, 32 query heads, 8 kv heads,
head dim 128, bf16. The shared kernel runs it with its short-row launch (two heads per program,
4 warps, TMA, the query block in registers), uncapped and under register caps. A bare kernel runs the
same tiles with the same loop body: first every program on one head's queries and K/V, then adding,
one at a time, what the real work and the shared kernel add: each program's own heads in the work
list's order (``heads``), the work item's fields (``items``), the epilogue in steps (the output under
the ``q_len`` mask, the lse, the split-row branch; also the output through a tensor descriptor), and
the query block of an item further down the list pulled into L2 ahead of its program. Then the
softmax's exponentials two per MUFU instruction in fp16, or none at all (a bound on any cheaper
exponential; its output is not attention), and the bare loop with only its queries and output, or
only its K/V, read from each program's own heads (which memory traffic costs); last, the bare loop
with all four query heads of a kv head in one program, so that each K/V tile is read once for them.
Outputs are checked against the shared kernel. Every variant is timed once per round, rounds in turn. Writes
``band_loop_gap.json`` and ``band_loop_gap.md``.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import triton
import triton.language as tl
from harness import Variant, inputs, remasked, report_variants
from triton.tools.tensor_descriptor import TensorDescriptor

from sparseattn.kernels.attention.config import default_config
from sparseattn.kernels.attention.launch import triton_sparse_attention
from sparseattn.kernels.planning.work_list import work_list
from sparseattn.lowering import lower
from sparseattn.patterns import Window

TOKENS = 32768
BAND = 17  # tiles before the diagonal one
PREFETCHES = [132, 264, 396, 792]
EPILOGUES = {0: "output stored unmasked", 1: "output stored under the q_len mask", 2: "+ lse stored",
             3: "+ split-row branch (the shared kernel's)", 4: "the shared kernel's, output by tensor descriptor"}  # fmt: skip
HEAD_READS = {0: "every program on heads 0-1 and kv head 0", 1: "each program's own heads",
              2: "own query and output heads, K/V of kv head 0", 3: "own K/V, queries and output of heads 0-1"}  # fmt: skip
EXPS = {1: "exponentials two per instruction (ex2.approx.f16x2)", 2: "no exponential (a bound: not attention)"}
LOG2E = 1.4426950408889634
LN2 = tl.constexpr(0.6931471805599453)


@dataclass(frozen=True)
class Step:
    """One bare-kernel variant: its constexpr flags (keys of the tables above) and launch shape."""

    name: str
    heads: int = 1  # a key of HEAD_READS
    items: int = 0  # 0: item from the program id; 1: from the work list; 2: read but unused
    epilogue: int = 0  # a key of EPILOGUES
    prefetch: int = 0  # items ahead whose query block is pulled into L2; 0: none
    exp: int = 0  # 0: exp2 in fp32, else a key of EXPS
    pack: int = 2  # query heads per program
    warps: int = 4


@triton.jit
def _bare_band_kernel(
    WORK, n_items, Q, Q_DESC, K_DESC, V_DESC, O_DESC, Out, LSE, q_len, kv_len, qk_scale,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, HEAD_DIM: tl.constexpr, BAND: tl.constexpr,
    HEADS: tl.constexpr, ITEMS: tl.constexpr, EPILOGUE: tl.constexpr,  # HEADS, EPILOGUE: keys of HEAD_READS, EPILOGUES
    PREFETCH: tl.constexpr, EXP: tl.constexpr,  # EXP: a key of EXPS
    PACK: tl.constexpr,  # query heads per program (4: all of a kv head's, each K/V tile read once for them)
):  # fmt: skip
    ROWS: tl.constexpr = PACK * BLOCK_M
    GROUPS: tl.constexpr = 32 // PACK  # programs per query block
    pid = tl.program_id(0)
    if ITEMS == 1:
        item = WORK + pid.to(tl.int64) * 16
        h = tl.load(item + 1)
        qb = tl.load(item + 2)
        lo = tl.load(item + 4)
        slot = tl.load(item + 6)
        a_end = tl.load(item + 12)
        a_base = tl.load(item + 13)
        b_end = tl.load(item + 14)
        b_base = tl.load(item + 15)
    else:
        qb = pid // GROUPS
        h = (pid % GROUPS) * PACK
        lo = 0
        slot = -1
        a_end = tl.minimum(qb, BAND) + 1
        a_base = qb - tl.minimum(qb, BAND)
        b_end = a_end
        b_base = a_base
        if ITEMS == 2:
            # The item's field read and waited on, but not used: what the read's latency alone costs.
            h = tl.where(tl.load(WORK + pid.to(tl.int64) * 16 + 1) >= 0, h, 0)
    h_kv = h // 4
    if HEADS == 0 or HEADS == 3:  # noqa: PLR1714 (Triton compiles no set literals)
        h = 0  # queries and output of heads 0 and 1 for every program
    if HEADS == 0 or HEADS == 2:  # noqa: PLR1714
        h_kv = 0  # K/V of kv head 0 for every program
    if PREFETCH:
        # The query block of the item PREFETCH places ahead, pulled into L2: one 128-byte line per thread.
        ahead = WORK + tl.minimum(pid + PREFETCH, n_items - 1).to(tl.int64) * 16
        LINE_ROW: tl.constexpr = HEAD_DIM * 2 // 128  # 128-byte lines per bf16 query row
        LINE_HEAD: tl.constexpr = BLOCK_M * LINE_ROW
        t = tl.arange(0, 2 * LINE_HEAD)
        head = tl.load(ahead + 1) + t // LINE_HEAD
        pos = tl.load(ahead + 2) * BLOCK_M + (t % LINE_HEAD) // LINE_ROW
        lines = Q + (head.to(tl.int64) * q_len + pos) * HEAD_DIM + (t % LINE_ROW) * 64
        tl.inline_asm_elementwise(
            "mov.u32 $0, 0;\n\tprefetch.global.L2 [$1];", "=r,l", [lines], dtype=tl.int32, is_pure=False, pack=1
        )
    q = tl.reshape(Q_DESC.load([0, h, qb * BLOCK_M, 0]), [ROWS, HEAD_DIM])
    row0 = h_kv * kv_len
    acc = tl.zeros([ROWS, HEAD_DIM], tl.float32)
    l_i = tl.zeros([ROWS], tl.float32)
    m_i = tl.full([ROWS], float("-inf"), tl.float32)
    if lo < b_end:
        for i in tl.range(lo, b_end, num_stages=3):
            start = (tl.where(i < a_end, a_base, b_base) + i) * BLOCK_N
            k = K_DESC.load([row0 + start, 0])
            v = V_DESC.load([row0 + start, 0])
            qk = tl.dot(q, tl.trans(k))  # [ROWS, BLOCK_N]
            m_new = tl.maximum(m_i, tl.max(qk, 1) * qk_scale)
            alpha = tl.math.exp2(m_i - m_new)
            x = qk * qk_scale - m_new[:, None]  # [ROWS, BLOCK_N]
            if EXP == 0:
                p = tl.math.exp2(x)
            elif EXP == 1:
                # Two exponentials per MUFU instruction; x rounded to fp16 costs less than P's own bf16 rounding.
                p = tl.inline_asm_elementwise(
                    "ex2.approx.f16x2 $0, $1;", "=r,r", [x.to(tl.float16)], dtype=tl.float16, is_pure=True, pack=2
                ).to(tl.float32)
            else:
                p = x  # no transcendental at all: a bound on what any cheaper exponential could gain
            l_i = l_i * alpha + tl.sum(p, 1)
            acc = tl.dot(p.to(v.dtype), v, acc * alpha[:, None])
            m_i = m_new
    r = tl.arange(0, ROWS)
    head_r = h + r // BLOCK_M
    offs_m = qb * BLOCK_M + r % BLOCK_M
    offs_d = tl.arange(0, HEAD_DIM)
    o_ptrs = Out + (head_r[:, None] * q_len + offs_m[:, None]).to(tl.int64) * HEAD_DIM + offs_d[None, :]
    if EPILOGUE == 0:
        tl.store(o_ptrs, (acc / l_i[:, None]).to(Out.dtype.element_ty))
    else:
        nonempty = l_i > 0
        l_safe = tl.where(nonempty, l_i, 1.0)
        out = (acc / l_safe[:, None]).to(Out.dtype.element_ty)  # [ROWS, HEAD_DIM]
        lse = tl.where(nonempty, (m_i + tl.math.log2(l_safe)) * LN2, float("-inf"))  # [ROWS]
        in_q = offs_m < q_len
        if EPILOGUE == 1:
            tl.store(o_ptrs, out, mask=in_q[:, None])
        elif EPILOGUE == 2:
            tl.store(o_ptrs, out, mask=in_q[:, None])
            tl.store(LSE + head_r * q_len + offs_m, lse, mask=in_q)
        elif EPILOGUE == 3:
            if slot < 0:
                tl.store(o_ptrs, out, mask=in_q[:, None])
                tl.store(LSE + head_r * q_len + offs_m, lse, mask=in_q)
        else:  # noqa: PLR5501 (a constexpr branch around a runtime one, as in the shared kernel)
            if slot < 0:
                O_DESC.store([0, h, qb * BLOCK_M, 0], tl.reshape(out, [1, 2, BLOCK_M, HEAD_DIM]))
                tl.store(LSE + head_r * q_len + offs_m, lse, mask=in_q)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("experiments/results"))
    parser.add_argument("--rounds", type=int, default=5, help="timings per variant, taken in turn")
    args = parser.parse_args()
    q, k, v = inputs(TOKENS)
    heads, dim = q.shape[1], q.shape[-1]
    layout = remasked(lower(Window(BAND * 32), TOKENS, block_size=(32, 32), device="cuda"), True)
    config = default_config(layout, dim, heads // k.shape[1])
    work = work_list(layout, 1, heads, pack=config.pack, runs=config.full_runs)
    if work.merges.shape[0]:
        raise RuntimeError("the band's rows were split; the bare kernel writes whole rows only")
    expected = triton_sparse_attention(q, k, v, layout)[0]
    variants: list[Variant] = []
    for cap in (None, 168, 144):
        cfg = replace(config, max_registers=cap)
        variants.append(
            (f"shared kernel, register cap {cap or 'none'}",
             lambda cfg=cfg: triton_sparse_attention(q, k, v, layout, config=cfg), cap, None)
        )  # fmt: skip

    q_descs = {pack: TensorDescriptor.from_tensor(q, [1, pack, 32, dim]) for pack in (2, 4)}
    k_desc = TensorDescriptor.from_tensor(k.view(-1, dim), [32, dim])
    v_desc = TensorDescriptor.from_tensor(v.view(-1, dim), [32, dim])
    out = torch.empty_like(q)
    o_desc = TensorDescriptor.from_tensor(out, [1, 2, 32, dim])
    lse = torch.empty(q.shape[:3], device="cuda", dtype=torch.float32)
    items = work.items.contiguous()
    steps = [Step("bare loop", heads=0), Step("+ heads"), Step("+ items", items=1)]
    steps += [Step(f"+ items, {text}", items=1, epilogue=e) for e, text in EPILOGUES.items() if e]
    steps += [
        Step(f"+ items, the shared kernel's epilogue, Q of item pid+{d} prefetched", items=1, epilogue=3, prefetch=d)
        for d in PREFETCHES
    ]
    steps += [Step(f"+ heads, {text}", exp=e) for e, text in EXPS.items()]
    steps += [
        Step(f"+ items, the shared kernel's epilogue, {text}", items=1, epilogue=3, exp=e) for e, text in EXPS.items()
    ]
    steps += [Step(f"bare loop, {HEAD_READS[r]}", heads=r) for r in (2, 3)]
    steps += [Step("+ heads, each program's work item read but its order kept", items=2)]
    steps += [
        Step(f"{name}, four heads per program, {warps} warps", heads=r, pack=4, warps=warps)
        for name, r in (("bare loop", 0), ("+ heads", 1))
        for warps in (8, 4)
    ]
    for step in steps:
        grid = (items.shape[0] if step.items == 1 else TOKENS // 32 * heads // step.pack,)

        def launch(grid=grid, step=step):
            return _bare_band_kernel[grid](
                items, items.shape[0], q, q_descs[step.pack], k_desc, v_desc, o_desc, out, lse, TOKENS, TOKENS,
                dim**-0.5 * LOG2E, BLOCK_M=32, BLOCK_N=32, HEAD_DIM=dim, BAND=BAND, HEADS=step.heads,
                ITEMS=step.items, EPILOGUE=step.epilogue, PREFETCH=step.prefetch, EXP=step.exp, PACK=step.pack,
                num_warps=step.warps,
            )  # fmt: skip

        out.fill_(float("nan"))
        handle = launch()
        diff = (out.float() - expected.float()).abs().max().item() if step.heads == 1 else None
        variants.append((step.name, launch, handle.n_regs, diff))
    caption = (
        f"{TOKENS} tokens, B=1, 32 query heads, 8 kv heads, head dim 128, bf16; two heads per program unless named; "
        f"do_bench medians, {args.rounds} rounds taken in turn: `ms` is the median round, `range` the fastest "
        "and slowest; `max diff` against the shared kernel's output (bare variants that read every head's own K/V)."
    )
    report_variants(
        args.out, __file__, "The shared kernel against a bare loop on band rows of 18 FULL 32 x 32 tiles",
        caption, variants, layout, args.rounds, registers="registers (cap or used)",
    )  # fmt: skip


if __name__ == "__main__":
    main()
