"""The fused sampled-shares kernel against the torch operations it replaces, same run, same inputs.

    PYTHONPATH=experiments python experiments/investigations/fused_estimation.py --out $OUT   # on a CUDA machine

`BlockMass`'s sampled shares, checked and then timed both ways on the GPU: ``triton_sampled_shares``
against ``torch_sampled_shares`` (the sampled rows' fp32 softmax over every key, written in chunks, summed
per key block). The torch side's memory traffic grows with the square of the length.

The first run (`experiments/results/fused_estimation.md`) also timed a fused kernel for vertical-slash's
column and diagonal sums; it was 8-15% slower than the torch operations and was removed.

Shapes: Qwen2.5-0.5B's layer (14 query / 2 kv heads, head dim 64) and Llama-3.1-8B's (32 / 8, 128), bf16
structured q/k (`harness.structured_qkv`). do_bench medians; rows are appended to ``fused_estimation.jsonl``
as they finish, ``fused_estimation.md`` is written at the end and the table printed last.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from harness import run_line, run_meta, structured_qkv
from tqdm import tqdm
from triton.testing import do_bench

from sparseattn.estimation.block_mass import sampled_rows, torch_sampled_shares
from sparseattn.kernels.estimation.triton_sampled_shares import triton_sampled_shares


def sampled_row(q: torch.Tensor, k: torch.Tensor, block: int, samples: int) -> dict:
    """Check the kernel against the torch path (fp32 summation order apart), then time both."""
    rows = sampled_rows(q.shape[2], block, samples, q.device)
    fused = triton_sampled_shares(q, k, rows, block)
    reference = torch_sampled_shares(q, k, rows, block)
    return {
        "stage": f"sampled shares ({samples} rows / {block}-key block)",
        "max_rel_err": float(((fused - reference).abs() / reference.abs().clamp(min=1e-3)).max()),
        "ok": torch.allclose(fused, reference, rtol=1e-3, atol=1e-6),
        "torch_ms": do_bench(lambda: torch_sampled_shares(q, k, rows, block)),
        "fused_ms": do_bench(lambda: triton_sampled_shares(q, k, rows, block)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("outputs/fused_estimation"))
    parser.add_argument("--lengths", type=int, nargs="+", default=[32768])
    parser.add_argument("--shapes", nargs="+", default=["14/2/64", "32/8/128"], help="heads/kv_heads/head_dim")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    meta = run_meta(__file__, args.out)
    records = args.out / "fused_estimation.jsonl"
    rows = []
    jobs = [(n, shape) for n in args.lengths for shape in args.shapes]
    for n, shape in tqdm(jobs, desc="shapes"):
        heads, kv_heads, dim = (int(x) for x in shape.split("/"))
        q, k, _ = structured_qkv(heads, kv_heads, n, dim)
        row = {"length": n, "shape": shape, **sampled_row(q, k, 64, 4)}
        row["speedup"] = row["torch_ms"] / row["fused_ms"]
        rows.append(row)
        with records.open("a") as f:
            f.write(json.dumps(row) + "\n")
        del q, k
        torch.cuda.empty_cache()
    lines = [
        "# The fused sampled-shares kernel against the torch operations it replaces",
        "",
        run_line(meta),
        "",
        "Same inputs, same run; the fused result is checked against the torch path first (`ok`: within "
        "fp32 summation error; the largest relative difference, on entries above 1e-3, beside it).",
        "",
        "| length | Hq/Hkv/D | stage | ok | max rel err | torch ms | fused ms | speed-up |",
        "|---|---|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['length']} | {r['shape']} | {r['stage']} | {'yes' if r['ok'] else 'NO'} | {r['max_rel_err']:.1e} | "
        f"{r['torch_ms']:.3f} | {r['fused_ms']:.3f} | {r['speedup']:.2f}x |"
        for r in rows
    ]
    (args.out / "fused_estimation.md").write_text("\n".join(lines) + "\n")
    (args.out / "fused_estimation.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
