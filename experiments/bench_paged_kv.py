"""Paged KV cache against contiguous K/V: the same forward kernel, the same layout, the same launch config.

For dense causal and Triangle() at 8K and 32K keys (bf16, one sequence, 32 query heads over 8 kv heads,
head dim 128, 64-row tiles of 64 keys, pages of 64 and 256 keys in a shuffled pool), checks that the paged
output equals the contiguous one bit for bit, then times both with ``triton.testing.do_bench`` (median)
in the same run. Both take the pointer-load launch (`paged_config`): the contiguous default on Hopper,
TMA or the Gluon kernel, is timed alongside as ``contiguous_default`` for reference. Writes
``paged_kv.json`` and ``paged_kv.md`` under ``--out`` (default outputs/bench_paged_kv/<time>).

    python experiments/bench_paged_kv.py --out experiments/results
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
from pathlib import Path

import torch
import triton

from sparseattn.kernels.attention.launch import triton_sparse_attention
from sparseattn.kernels.attention.paged import paged_config, paged_sparse_attention
from sparseattn.lowering import lower
from sparseattn.patterns import Causal, Triangle

PATTERNS = {"causal": Causal(), "triangle": Triangle()}


def paged_copy(k: torch.Tensor, page_size: int, order: torch.Tensor) -> torch.Tensor:
    """``k`` [1, Hkv, S, D] as pages [num_pages, page_size, Hkv, D], logical page i at physical order[0, i]."""
    _, kv_heads, kv_len, dim = k.shape
    pages = order.shape[1]
    padded = torch.nn.functional.pad(k, (0, 0, 0, pages * page_size - kv_len))
    pool = torch.zeros(2 * pages, page_size, kv_heads, dim, dtype=k.dtype, device=k.device)
    pool[order.view(-1).long()] = padded.view(kv_heads, pages, page_size, dim).permute(1, 2, 0, 3)
    return pool


def measure(name: str, kv_len: int, page_size: int, block: tuple[int, int]) -> dict[str, object]:
    heads, kv_heads, dim, dtype = 32, 8, 128, torch.bfloat16
    gen = torch.Generator(device="cuda").manual_seed(0)
    q, k, v = (
        torch.randn(1, h, kv_len, dim, device="cuda", dtype=dtype, generator=gen) for h in (heads, kv_heads, kv_heads)
    )
    pages = -(-kv_len // page_size)
    order = torch.randperm(2 * pages, device="cuda", generator=gen)[:pages].view(1, pages).to(torch.int32)
    k_pages, v_pages = paged_copy(k, page_size, order), paged_copy(v, page_size, order)
    layout = lower(PATTERNS[name], kv_len, kv_len, block_size=block, device="cuda")
    config = paged_config(layout, dim)
    paged = lambda: paged_sparse_attention(q, k_pages, v_pages, order, layout, config=config, check_pages=False)
    contiguous = lambda: triton_sparse_attention(q, k, v, layout, config=config)
    default = lambda: triton_sparse_attention(q, k, v, layout)
    out, lse = paged()
    ref_out, ref_lse = contiguous()
    if not (torch.equal(out, ref_out) and torch.equal(lse, ref_lse)):
        raise SystemExit(f"{name} at {kv_len}, pages of {page_size}: paged output differs from contiguous")
    times = {label: triton.testing.do_bench(fn, return_mode="median") for label, fn in
             (("paged_ms", paged), ("contiguous_ms", contiguous), ("contiguous_default_ms", default))}  # fmt: skip
    return {"pattern": name, "kv_len": kv_len, "page_size": page_size, "block": list(block), **times,
            "paged_over_contiguous": times["paged_ms"] / times["contiguous_ms"]}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--lengths", type=int, nargs="+", default=[8192, 32768])
    parser.add_argument("--page-sizes", type=int, nargs="+", default=[64, 256])
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("needs a CUDA GPU")
    out = args.out or Path("outputs/bench_paged_kv") / datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    out.mkdir(parents=True, exist_ok=True)
    rows = [
        measure(name, kv_len, page_size, (64, 64))
        for name in PATTERNS
        for kv_len in args.lengths
        for page_size in args.page_sizes
    ]
    meta = {
        "command": " ".join(["python", *sys.argv]),
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "gpu": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "triton": triton.__version__,
    }
    (out / "paged_kv.json").write_text(json.dumps({**meta, "rows": rows}, indent=2) + "\n")
    lines = [
        "# Paged KV cache vs contiguous K/V (same kernel, layout and launch config)",
        "",
        *(f"- {key}: `{value}`" if key == "command" else f"- {key}: {value}" for key, value in meta.items()),
        "- bf16, batch 1, 32 query heads / 8 kv heads, head dim 128, 64 x 64 tiles; do_bench medians",
        "",
        "| pattern | keys | page | paged ms | contiguous ms | paged / contiguous | contiguous default ms |",
        "|---|---:|---:|---:|---:|---:|---:|",
        *(
            f"| {r['pattern']} | {r['kv_len']} | {r['page_size']} | {r['paged_ms']:.3f} | {r['contiguous_ms']:.3f} "
            f"| {r['paged_over_contiguous']:.3f} | {r['contiguous_default_ms']:.3f} |"
            for r in rows
        ),
    ]
    (out / "paged_kv.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"wrote {out}/paged_kv.json and .md")


if __name__ == "__main__":
    main()
