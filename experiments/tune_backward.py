"""Sweep the backward kernels' launch knobs (`BackwardConfig`), with cuDNN's backward timed in the same run.

    python experiments/tune_backward.py --out $OUT --length 32768 --budget-s 240   # on a CUDA machine

Passes, each around the best configuration before it: the dK/dV tiles and row steps walked as one loop
(which lets key-major fit two and three stages), then key-major dK/dV's tile shapes (all four products on
Hopper's warp-group MMA, where the default's query-major steps keep two on mma.sync); the flags (key-major dK/dV scores; dQ summed by
atomics inside the dK/dV kernel instead of by its own kernel; TMA loads), the split of long dK/dV programs
(``max_chunk``), then the dK/dV kernel's knobs (keys per program, query rows per step, warps, stages),
then the dQ kernel's (key columns per step, warps, stages; skipped when dQ is atomic). Each configuration is first checked against fp64 autograd
through the oracle at ``--check-len`` tokens with the derived tolerance (a miscompiled configuration
must not win), then its backward alone (the forward's output and lse given) is timed with
``triton.testing.do_bench`` (median). Rows are appended to ``backward_tuning.jsonl`` as they finish, so a
run cut by its time box keeps what it measured; ``backward_tuning.md`` is written at the end.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import time
from pathlib import Path

import torch
import triton
from harness import run_line, run_meta
from tqdm import tqdm

from sparseattn.kernels.attention.backward import (
    BackwardConfig,
    default_backward_config,
    triton_sparse_attention_backward,
)
from sparseattn.kernels.attention.config import default_block_size
from sparseattn.kernels.attention.launch import triton_sparse_attention
from sparseattn.lowering import lower
from sparseattn.patterns import Causal, Pattern, Triangle
from sparseattn.testing.gradients import grad_oracle_and_tolerance

PATTERNS: dict[str, Pattern] = {"causal": Causal(), "triangle": Triangle(sink=8, window=512, last=128)}
# Passes in order, most promising values first (the time box may cut a pass): the flags (key-major dK/dV
# scores; dQ summed by atomics inside the dK/dV kernel, no dQ kernel; rows through tensor descriptors),
# the split of long dK/dV programs (the planner's own rule, the default, or never, or past a fixed tile count),
# then the dK/dV kernel's tiles, warps and stages, then the dQ kernel's.
PASSES = [
    # The default's query-major steps of 32 rows run the scores and dP products on mma.sync, key-major
    # ones run all four on wgmma (backward_resources_offline.md); key-major was timed only with TMA at two
    # stages (slower), since its unrolled row steps do not fit two stages without TMA. Walked as one loop
    # (flat_steps) it fits at two and three stages without spilling, offline: tried first, then key-major's
    # tile shapes around the best.
    ("loop", {"flat_steps": (True,), "key_major": (True, False), "dkdv_stages": (2, 3)}),
    ("key_major", {"key_major": (True,), "dkdv_stages": (1, 2), "sub_m": (32, 64), "keys": (128, 64)}),
    ("flags", {"key_major": (True, False), "dq_atomic": (True, False), "tma": (True, False)}),
    ("split", {"max_chunk": (None, 0, 64, 256)}),
    # Offline sm_90 compiles (backward_resources_offline.md): query-major 64-key programs at one stage spill
    # 56 to 104 bytes against the default's 648 and leave room for 3 or 4 programs per SM, so they go first.
    ("dkdv", {"keys": (64, 128), "sub_m": (16, 32, 64), "dkdv_warps": (8, 4), "dkdv_stages": (1, 2)}),
    ("dq", {"sub_n": (32, 64), "dq_warps": (4, 8), "dq_stages": (2, 3)}),
]


def fits(config: BackwardConfig, block: tuple[int, int]) -> bool:
    return block[1] % config.keys == 0 and block[0] % config.sub_m == 0 and block[1] % config.sub_n == 0


def qkv(args, n: int):
    gen = torch.Generator(device="cuda").manual_seed(n)
    shape = (1, args.heads, n, args.head_dim)
    kv_shape = (1, args.kv_heads, n, args.head_dim)
    q = torch.randn(shape, device="cuda", dtype=torch.bfloat16, generator=gen)
    k = torch.randn(kv_shape, device="cuda", dtype=torch.bfloat16, generator=gen)
    v = torch.randn(kv_shape, device="cuda", dtype=torch.bfloat16, generator=gen)
    return q, k, v, torch.randn(shape, device="cuda", dtype=torch.bfloat16, generator=gen)


def layout_for(pattern: Pattern, n: int, args):
    block = default_block_size(
        "triton", args.head_dim, torch.bfloat16, pattern, n, n, group=args.heads // args.kv_heads, device="cuda"
    )
    return lower(pattern, n, block_size=block, device="cuda")


def grad_error(pattern: Pattern, block: tuple[int, int], config: BackwardConfig, args) -> tuple[bool, list[float]]:
    """Whether ``config``'s gradients at ``args.check_len`` on ``block`` tiles (the timed layout's, so that
    the same kernels are checked) are within the oracle's derived tolerance."""
    q, k, v, dout = qkv(args, args.check_len)
    layout = lower(pattern, args.check_len, block_size=block, device="cuda")
    oracle = grad_oracle_and_tolerance(q, k, v, layout.to_dense(), dout)
    out, lse = triton_sparse_attention(q, k, v, layout)
    if config.max_chunk != 0:  # programs of the short check prompt are split only when forced to be
        config = dataclasses.replace(config, max_chunk=1)
    grads = triton_sparse_attention_backward(dout, q, k, v, out, lse, layout, config=config)
    errs = [float((g.double() - e).abs().max()) for g, e in zip(grads, oracle.grads, strict=True)]
    ok = all(e <= t for e, t in zip(errs, oracle.atol, strict=True))
    return ok, errs


def cudnn_backward_ms(q, k, v, dout) -> float:
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.nn.functional import scaled_dot_product_attention as sdpa

    leaves = [t.detach().requires_grad_() for t in (q, k, v)]
    with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
        out = sdpa(*leaves, is_causal=True, enable_gqa=True)
        return float(
            triton.testing.do_bench(
                lambda: out.backward(dout, retain_graph=True), grad_to_none=leaves, return_mode="median"
            )
        )


def sweep(name: str, pattern: Pattern, args, out: Path, budget_s: float, meta: dict) -> list[dict]:
    """Every pass for one pattern, inside ``budget_s`` seconds."""
    start = time.monotonic()
    n = args.length
    q, k, v, dout = qkv(args, n)
    layout = layout_for(pattern, n, args)
    fwd_out, lse = triton_sparse_attention(q, k, v, layout)
    pairs = layout.computed_pairs()
    cudnn = cudnn_backward_ms(q, k, v, dout) if name == "causal" else None
    default = default_backward_config(layout, args.head_dim)
    rows: list[dict] = []

    def measure(config: BackwardConfig, stage: str) -> dict:
        row = {"pattern": name, "tokens": n, "block": list(layout.block_size), "pass": stage}
        row.update(dataclasses.asdict(config))
        row["is_default"] = config == default
        try:
            row["grad_ok"], row["grad_err"] = grad_error(pattern, layout.block_size, config, args)
            if row["grad_ok"]:
                row["ms"] = float(
                    triton.testing.do_bench(
                        lambda: triton_sparse_attention_backward(dout, q, k, v, fwd_out, lse, layout, config=config),
                        return_mode="median",
                    )
                )
                if cudnn is not None:
                    row["vs_cudnn"] = cudnn / row["ms"]
        except Exception as exc:  # a configuration that does not compile (shared memory) is recorded, not fatal
            row["error"] = f"{type(exc).__name__}: {str(exc)[:160]}"
        row["cudnn_bwd_ms"] = cudnn
        row["pairs"] = pairs
        with (out / "backward_tuning.jsonl").open("a") as fh:
            fh.write(json.dumps({**row, "command": meta["command"], "date": meta["date"], "gpu": meta["gpu"]}) + "\n")
        rows.append(row)
        return row

    def best(candidates: list[dict]) -> dict | None:
        timed = [r for r in candidates if "ms" in r]
        return min(timed, key=lambda r: r["ms"]) if timed else None

    done = [measure(default, "default")]
    base = default
    # Each pass varies its knobs around the best configuration so far; the time box cuts the last passes.
    for stage, knobs in PASSES:
        if stage == "dq" and base.dq_atomic:
            continue  # no dQ kernel to tune: dQ is summed inside the dK/dV kernel
        candidates = [
            dataclasses.replace(base, **dict(zip(knobs, values, strict=True)))
            for values in itertools.product(*knobs.values())
        ]
        candidates = [c for c in candidates if c != base and fits(c, layout.block_size)]
        for config in tqdm(candidates, desc=f"{name} {stage}"):
            if time.monotonic() > start + budget_s:
                break
            done.append(measure(config, stage))
        top = best(done)
        if top is not None:
            base = BackwardConfig(**{f.name: top[f.name] for f in dataclasses.fields(default)})
    return rows


def render(meta: dict, rows: list[dict], path: Path) -> None:
    knobs = [f.name for f in dataclasses.fields(BackwardConfig)]
    lines = [
        "# Backward kernel tuning",
        "",
        f"- {run_line(meta)}",
        f"- shape: B=1, {meta['heads']} query heads, {meta['kv_heads']} kv heads, head dim {meta['head_dim']}, "
        "bf16; backward alone (forward's output and lse given), do_bench median ms; each configuration "
        f"checked against fp64 autograd through the oracle at {meta['check_len']} tokens first",
        "- passes in order, each around the best configuration before it: `flags` (key-major dK/dV scores, "
        "dQ by atomics inside the dK/dV kernel, TMA loads), `split` (long dK/dV programs split past `max_chunk` "
        "tiles; None: the planner's rule, 0: never), `dkdv` (its tiles, warps, stages), `dq` (the dQ kernel's)",
        "",
        "| pattern | tokens | tiles | pass | " + " | ".join(knobs) + " | grad ok | ms | vs cuDNN bwd |",
        "|---|---|---|---|" + "---|" * len(knobs) + "---|---|---|",
    ]
    for r in sorted(rows, key=lambda r: (r["pattern"], r.get("ms", float("inf")))):
        ms = f"{r['ms']:.3f}" if "ms" in r else r.get("error", "—")
        ratio = f"{r['vs_cudnn']:.2f}x" if r.get("vs_cudnn") else "—"
        tag = r["pass"] + (" (the default)" if r["is_default"] and r["pass"] != "default" else "")
        lines.append(
            f"| {r['pattern']} | {r['tokens']} | {r['block'][0]}x{r['block'][1]} | {tag} | "
            + " | ".join(str(r[k]) for k in knobs)
            + f" | {'yes' if r.get('grad_ok') else 'no'} | {ms} | {ratio} |"
        )
    path.write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("outputs/tune_backward"))
    parser.add_argument("--length", type=int, default=32768)
    parser.add_argument("--check-len", type=int, default=1024)
    parser.add_argument("--patterns", nargs="+", default=["causal"], choices=sorted(PATTERNS))
    parser.add_argument("--heads", type=int, default=32)
    parser.add_argument("--kv-heads", type=int, default=8)
    parser.add_argument("--head-dim", type=int, default=128)
    parser.add_argument("--budget-s", type=float, default=float("inf"), help="time box of the whole sweep, in seconds")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        parser.error("the sweep times the kernels on a CUDA GPU; none is visible")
    args.out.mkdir(parents=True, exist_ok=True)
    meta = {**run_meta(__file__, args.out), **{k: getattr(args, k) for k in ("heads", "kv_heads", "head_dim")}}
    meta["check_len"] = args.check_len
    rows = []
    for name in args.patterns:
        rows += sweep(name, PATTERNS[name], args, args.out, args.budget_s / len(args.patterns), meta)
        render(meta, rows, args.out / "backward_tuning.md")
    (args.out / "backward_tuning.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    for r in sorted(rows, key=lambda r: r.get("ms", float("inf")))[:8]:
        print(r["pattern"], r["pass"], {k: r[k] for k in ("keys", "sub_m", "sub_n", "dkdv_warps", "dq_warps")},
              r.get("ms"), r.get("vs_cudnn"))  # fmt: skip


if __name__ == "__main__":
    main()
