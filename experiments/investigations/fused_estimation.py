"""The fused estimation kernels against the torch operations they replace, same run, same inputs.

    PYTHONPATH=experiments python experiments/investigations/fused_estimation.py --out $OUT   # on a CUDA machine

Two stages of the dynamic estimates, each checked and then timed both ways on the GPU:

- vertical-slash line sums: ``triton_line_sums(logits, logsumexp(logits))`` against
  ``column_sums(softmax(logits))`` and ``diagonal_sums(softmax(logits))`` (softmax, padded copy, two
  reductions, flip), from the same last-query logits;
- `BlockMass`'s sampled shares: ``triton_sampled_shares`` against ``torch_sampled_shares`` (the sampled rows'
  fp32 softmax over every key, written in chunks, summed per key block). The torch side's memory traffic
  grows with the square of the length, so it runs up to ``--sampled-max`` tokens.

Shapes: Qwen2.5-0.5B's layer (14 query / 2 kv heads, head dim 64) and Llama-3.1-8B's (32 / 8, 128), bf16
structured q/k (`harness.structured_qkv`). do_bench medians; rows are appended to ``fused_estimation.jsonl``
as they finish, ``fused_estimation.md`` is written at the end and the table printed last.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import torch
from harness import run_line, run_meta, structured_qkv
from tqdm import tqdm
from triton.testing import do_bench

from sparseattn.estimation.block_mass import sampled_rows, torch_sampled_shares
from sparseattn.estimation.vs_scores import column_sums, diagonal_sums
from sparseattn.kernels.estimation.triton_line_sums import triton_line_sums
from sparseattn.kernels.estimation.triton_sampled_shares import triton_sampled_shares
from sparseattn.kernels.estimation.triton_vs_logits import triton_last_query_logits


def line_sums_row(q: torch.Tensor, k: torch.Tensor) -> dict:
    logits = triton_last_query_logits(q, k, min(64, q.shape[2]), 1.0 / math.sqrt(q.shape[-1]))

    def torch_sums():
        probs = torch.softmax(logits, dim=-1)
        return column_sums(probs), diagonal_sums(probs)

    def fused_sums():
        return triton_line_sums(logits, torch.logsumexp(logits, dim=-1))

    # From the same logits the two differ by fp32 summation order only.
    return timed("line sums", fused_sums, torch_sums, rtol=1e-4)


def sampled_row(q: torch.Tensor, k: torch.Tensor, block: int, samples: int) -> dict:
    rows = sampled_rows(q.shape[2], block, samples, q.device)
    return timed(
        f"sampled shares ({samples} rows / {block}-key block)",
        lambda: (triton_sampled_shares(q, k, rows, block),),
        lambda: (torch_sampled_shares(q, k, rows, block),),
        rtol=1e-3,
    )


def timed(stage: str, fused, reference, rtol: float) -> dict:
    """Check ``fused`` against ``reference`` (tuples of tensors), then time both."""
    pairs = list(zip(fused(), reference(), strict=True))
    err = max(float(((got - want).abs() / want.abs().clamp(min=1e-3)).max()) for got, want in pairs)
    return {
        "stage": stage,
        "max_rel_err": err,
        "ok": all(torch.allclose(got, want, rtol=rtol, atol=1e-6) for got, want in pairs),
        "torch_ms": do_bench(reference),
        "fused_ms": do_bench(fused),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("outputs/fused_estimation"))
    parser.add_argument("--lengths", type=int, nargs="+", default=[32768, 131072])
    parser.add_argument("--shapes", nargs="+", default=["14/2/64", "32/8/128"], help="heads/kv_heads/head_dim")
    parser.add_argument("--sampled-max", type=int, default=32768, help="longest length for the sampled shares")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    meta = run_meta(__file__, args.out)
    records = args.out / "fused_estimation.jsonl"
    rows = []
    jobs = [(n, shape) for n in args.lengths for shape in args.shapes]
    for n, shape in tqdm(jobs, desc="shapes"):
        heads, kv_heads, dim = (int(x) for x in shape.split("/"))
        q, k, _ = structured_qkv(heads, kv_heads, n, dim)
        measured = [line_sums_row(q, k)]
        if n <= args.sampled_max:
            measured.append(sampled_row(q, k, 64, 4))
        for result in measured:
            row = {"length": n, "shape": shape, **result}
            row["speedup"] = row["torch_ms"] / row["fused_ms"]
            rows.append(row)
            with records.open("a") as f:
                f.write(json.dumps(row) + "\n")
        del q, k
        torch.cuda.empty_cache()
    lines = [
        "# Fused estimation kernels against the torch operations they replace",
        "",
        run_line(meta),
        "",
        "Same inputs, same run; each fused result is checked against the torch path first (`ok`: within "
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
