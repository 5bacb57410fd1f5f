"""Registers, spills and shared memory of the compiled kernel per launch configuration, with its time.

    PYTHONPATH=. python experiments/kernel_resources.py --out $OUT     # on a CUDA machine

Two programs fit on one multiprocessor only if their shared memory and registers do; spilled registers
go to local memory inside the kv loop. Each configuration is first checked against the fp32 reference
on a ragged short prompt, then timed (``triton.testing.do_bench``, median) at ``--length`` tokens, with
cuDNN dense causal in the same run. Writes ``kernel_resources.json`` and ``kernel_resources.md``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import triton
from kernel_runs import SHAPE, cudnn_ms, inputs, run_line, run_meta, write_json
from tqdm import tqdm

from sparseattn.kernels.attention.config import KernelConfig
from sparseattn.kernels.attention.launch import triton_sparse_attention
from sparseattn.kernels.attention.triton_fwd import _sparse_fwd_kernel
from sparseattn.kernels.reference import reference_attention
from sparseattn.lowering import lower
from sparseattn.patterns import Causal, Pattern, Triangle


def _config(warps: int, stages: int, pack: int = 1) -> KernelConfig:
    return KernelConfig(num_warps=warps, num_stages=stages, tma=True, pack=pack)


CASES: list[tuple[str, Pattern, tuple[int, int], KernelConfig]] = [
    ("triangle", Triangle(), (64, 64), _config(4, 3, pack=2)),
    ("triangle", Triangle(), (64, 64), _config(4, 2, pack=2)),
    ("triangle", Triangle(), (64, 64), _config(4, 3, pack=1)),
    ("causal", Causal(), (128, 128), _config(8, 3)),
    ("causal", Causal(), (128, 64), _config(4, 3)),
    ("causal", Causal(), (64, 128), _config(8, 3, pack=2)),
    ("causal", Causal(), (64, 64), _config(4, 3)),
    ("causal", Causal(), (64, 64), _config(4, 3, pack=2)),
]


def compiled_kernels() -> dict:
    return {key: kern for cache in _sparse_fwd_kernel.device_caches.values() for key, kern in cache[0].items()}


def max_error(pattern: Pattern, block: tuple[int, int], config: KernelConfig) -> float:
    q_len, kv_len = 1000, 1100
    q = torch.randn(2, 8, q_len, 128, device="cuda", dtype=torch.bfloat16)
    k = torch.randn(2, 2, kv_len, 128, device="cuda", dtype=torch.bfloat16)
    v = torch.randn_like(k)
    layout = lower(pattern, q_len, kv_len, block_size=block, device="cuda")
    out, _ = triton_sparse_attention(q, k, v, layout, config=config)
    ref, _ = reference_attention(q, k, v, pattern.to_dense(q_len, kv_len).unsqueeze(0).cuda())
    return float((out.float() - ref.float()).abs().max())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("experiments/results"))
    parser.add_argument("--length", type=int, default=32768)
    args = parser.parse_args()
    n = args.length
    q, k, v = inputs(n)
    cudnn = cudnn_ms(n)
    rows = []
    for name, pattern, block, config in tqdm(CASES, desc="configurations"):
        # Compiled afresh (from Triton's disk cache) so that a configuration whose kernel an earlier one
        # already built still reports its resources.
        for cache in _sparse_fwd_kernel.device_caches.values():
            cache[0].clear()
        try:
            err = max_error(pattern, block, config)
            layout = lower(pattern, n, block_size=block, device="cuda")
            before = set(compiled_kernels())
            ms = triton.testing.do_bench(
                lambda layout=layout, config=config: triton_sparse_attention(q, k, v, layout, config=config),
                return_mode="median",
            )
        except Exception as exc:  # out of shared memory or registers: reported, not fatal
            tqdm.write(f"{name} {block} {config}: {type(exc).__name__}: {str(exc)[:200]}")
            continue
        # The kernel compiled for the timed launch (the check above compiles the ragged-tail variant).
        for kern in [kern for key, kern in compiled_kernels().items() if key not in before]:
            rows.append(
                {
                    "pattern": name,
                    "block": f"{block[0]}x{block[1]}",
                    "warps": config.num_warps,
                    "stages": config.num_stages,
                    "pack": config.pack,
                    "max_err": err,
                    "ms": ms,
                    "vs_cudnn": cudnn / ms,
                    "registers": kern.n_regs,
                    "spills": kern.n_spills,
                    "shared_bytes": kern.metadata.shared,
                }
            )
    meta = {**run_meta("kernel_resources.py", args.out), "tokens": n, "cudnn_ms": cudnn}
    write_json(args.out, "kernel_resources", meta, rows)
    lines = [
        "# Kernel resources per launch configuration",
        "",
        run_line(meta),
        f"{SHAPE}, {n} tokens, TMA loads; cuDNN dense causal {cudnn:.3f} ms.",
        "",
        "| pattern | block | warps | stages | heads/program | max err | ms | vs cuDNN | registers | spills | shared KiB |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['pattern']} | {r['block']} | {r['warps']} | {r['stages']} | {r['pack']} | {r['max_err']:.1e} | "
            f"{r['ms']:.3f} | {r['vs_cudnn']:.2f}x | {r['registers']} | {r['spills']} | {r['shared_bytes'] / 1024:.0f} |"
        )
    (args.out / "kernel_resources.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines[3:]))


if __name__ == "__main__":
    main()
