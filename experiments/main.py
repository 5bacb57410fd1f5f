"""The README's main job: show the patterns, lower them, check every backend against the oracle, then
prefill a model through a layer schedule (the TTFT experiment's own code path, experiments/ttft.py).

    ./run.sh                 # sets up .venv, then runs this file

On a CPU-only machine everything runs on the CPU (the Triton kernel through Triton's interpreter, at a
small size; the prefill on a tiny random Llama); on a CUDA machine the checks run on the GPU at a larger
size and the prefill compares TTFT of a Llama-3.1-8B-shaped model at 32K tokens under three schedules.
"""

from __future__ import annotations

import os
import statistics
import time

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from sparseattn import AShape, Causal, Columns, PerHead, Streaming, Triangle, Window, sparse_attention
from sparseattn.attention import default_block_size
from sparseattn.lowering import lower
from sparseattn.patterns import Pattern
from sparseattn.testing import oracle_and_tolerance


def show_patterns() -> None:
    examples: list[tuple[str, Pattern]] = [
        ("Triangle(sink=2, window=4, last=3)", Triangle(sink=2, window=4, last=3)),
        ("Streaming(sink=2, window=4)", Streaming(sink=2, window=4)),
        ("AShape(sink_blocks=1, local_blocks=2, block_size=4)", AShape(1, 2, 4)),
        ("Causal() & (Columns((5, 9)) | Window(3))", Causal() & (Columns((5, 9)) | Window(3))),
    ]
    for name, pattern in examples:
        print(f"\n{name}\n{pattern.render(16)}")


def show_lowering(repeats: int = 9) -> None:
    """Lowering times measured as the README's table is: one thread, median of ``repeats`` wall times."""
    print(f"\nLowering (analytic, O(non-empty tiles); one thread, median of {repeats} runs, as the README's table):")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for pattern, n in ((Triangle(), 1 << 20), (Streaming(sink=128, window=4096), 1 << 17), (Causal(), 1 << 15)):
            times = []
            for _ in range(repeats):
                start = time.perf_counter()
                layout = lower(pattern, n, block_size=(64, 64))
                times.append(1e3 * (time.perf_counter() - start))
            print(f"  {pattern!r} at {n:,} tokens: {statistics.median(times):.1f} ms")
            print("   " + layout.summary().replace("\n", "\n   "))
    finally:
        torch.set_num_threads(threads)


def check_backends() -> bool:
    """True when every backend matches the oracle on every pattern."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    n, heads, kv_heads, dim = (4096, 8, 2, 128) if device == "cuda" else (256, 4, 2, 64)
    dtype = torch.bfloat16 if device == "cuda" else torch.float16
    torch.manual_seed(0)
    q = torch.randn(1, heads, n, dim, device=device, dtype=dtype)
    k = torch.randn(1, kv_heads, n, dim, device=device, dtype=dtype)
    v = torch.randn(1, kv_heads, n, dim, device=device, dtype=dtype)
    small = n // 16
    patterns: list[Pattern] = [
        Causal(),
        Triangle(sink=8, window=small, last=small // 2),
        Streaming(sink=4, window=small),
        PerHead(
            tuple([Causal(), Triangle(window=small, last=8), Streaming(4, small), AShape(1, 2, 32)] * (heads // 4))
        ),
    ]
    impls = ["reference", "flex", "triton"]
    all_ok = True
    print(f"\nBackends against the fp64 oracle ({device}, {dtype}, {n} tokens, {heads} q / {kv_heads} kv heads):")
    for pattern in patterns:
        mask = pattern.to_dense(n, num_heads=pattern.num_heads).unsqueeze(0).to(device)
        oracle = oracle_and_tolerance(q, k, v, mask)
        cells = []
        for impl in impls:
            block = default_block_size(impl, dim, dtype, pattern, n, n, group=heads // kv_heads, device=device)
            layout = lower(pattern, n, block_size=block, device=device)
            out = sparse_attention(q, k, v, layout, impl=impl)  # type: ignore[arg-type]
            err = float((out.double() - oracle.out).abs().max())
            ok = "ok" if err <= oracle.tolerance.out_atol else "FAIL"
            all_ok &= ok == "ok"
            cells.append(f"{impl} {err:.1e} {ok}")
        name = repr(pattern) if len(repr(pattern)) < 50 else f"PerHead({heads} heads)"
        print(f"  {name:50s} " + " | ".join(cells) + f"  (tolerance {oracle.tolerance.out_atol:.1e})")
    return all_ok


def prefill_comparison() -> bool:
    """TTFT under the dense, TriangleMix and pure-triangle schedules; True when every run gave finite logits."""
    from pathlib import Path

    from hydra import compose, initialize_config_dir
    from ttft import run_ttft

    gpu = torch.cuda.is_available()
    if gpu:
        model, length, settings = "llama31_8b", 32768, ["impl=triton"]
    else:
        # The CPU has no fast sparse kernel: the reference backend shows the path, not the speed.
        model, length, settings = "tiny_llama", 512, ["impl=reference", "sdpa_backend=null", "warmup_length=64"]
    print(f"\nPrefill through the Hugging Face integration ({model}, {length} tokens, {settings[0]}):")
    if not torch.cuda.is_available():
        print("  (CPU: the sparse layers run the dense masked reference, so this checks the code path, not speed)")
    records = []
    for schedule in ("dense", "trianglemix", "triangle"):
        with initialize_config_dir(config_dir=str(Path(__file__).resolve().parents[1] / "conf"), version_base=None):
            cfg = compose(
                "ttft",
                overrides=[
                    f"model={model}",
                    f"length={length}",
                    f"schedule={schedule}",
                    f"+label={schedule}",
                    *settings,
                ],
            )
        records.append(run_ttft(cfg, progress=True))
    dense = records[0]["ttft_ms"]
    for r in records:
        print(
            f"  {r['label']:12s} TTFT {r['ttft_ms']:9.1f} ms ({100 * (r['ttft_ms'] / dense - 1):+4.0f}% vs dense), "
            f"attention {r['attention_ms']:8.1f} ms, paths {r['paths']}"
        )
    return all(r["logits_finite"] for r in records)


def main() -> int:
    show_patterns()
    show_lowering()
    backends_ok = check_backends()
    prefill_ok = prefill_comparison()
    return 0 if backends_ok and prefill_ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
