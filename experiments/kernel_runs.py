"""What the kernel experiments share: the benchmark shape's inputs, the layout the default launch runs,
the cuDNN baseline, a correctness check against the fp32 reference, TFLOP/s over computed tiles, timing
in rounds, and the record of a run (date, GPU, versions, command line).

Shape of Llama-3.1-8B: B=1, 32 query heads, 8 kv heads, head dim 128, bf16.
"""

from __future__ import annotations

import functools
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

import torch
import triton
from torch.nn.attention import SDPBackend, sdpa_kernel
from tqdm import tqdm

from sparseattn.attention import default_block_size
from sparseattn.kernels.attention.config import KernelConfig
from sparseattn.kernels.attention.launch import triton_sparse_attention
from sparseattn.kernels.reference import reference_attention
from sparseattn.layout import BlockLayout
from sparseattn.lowering import lower
from sparseattn.patterns import Pattern

HEADS, KV_HEADS, HEAD_DIM = 32, 8, 128
# The shape as the result tables state it.
SHAPE = f"B=1, {HEADS} query heads, {KV_HEADS} kv heads, head dim {HEAD_DIM}, bf16"


@functools.lru_cache(maxsize=4)
def inputs(n: int, device: str = "cuda") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """q, k, v of the benchmark shape at ``n`` tokens (seeded, kept for reuse)."""
    torch.manual_seed(0)
    q = torch.randn(1, HEADS, n, HEAD_DIM, device=device, dtype=torch.bfloat16)
    k = torch.randn(1, KV_HEADS, n, HEAD_DIM, device=device, dtype=torch.bfloat16)
    v = torch.randn(1, KV_HEADS, n, HEAD_DIM, device=device, dtype=torch.bfloat16)
    return q, k, v


def default_layout(pattern: Pattern, n: int) -> BlockLayout:
    """``pattern`` at ``n`` tokens on the tiles `sparse_attention` picks for the benchmark shape."""
    block = default_block_size(
        "triton", HEAD_DIM, torch.bfloat16, pattern, n, n, group=HEADS // KV_HEADS, device="cuda"
    )
    return lower(pattern, n, block_size=block, num_heads=pattern.num_heads, device="cuda")


def computed_tflops(layout: BlockLayout, ms: float) -> float:
    """TFLOP/s of a call of ``ms`` on the benchmark shape: 4·D flops per query-key pair of the computed
    tiles, over every query head (a layout shared by the heads counts once per head)."""
    pairs = layout.computed_pairs() * HEADS // (layout.batch_size * layout.num_heads)
    return 4 * HEAD_DIM * pairs / ms / 1e9


def timed_rounds(launches: list[Callable[[], object]], rounds: int) -> list[list[float]]:
    """``rounds`` do_bench medians (ms) per launch, one each per round, rounds in turn: runs differ by up
    to a tenth on the H200 (clocks under its power limit), so variants compared in a table share rounds."""
    times: list[list[float]] = [[] for _ in launches]
    for _ in tqdm(range(rounds), desc="rounds"):
        for slot, launch in zip(times, launches, strict=True):
            slot.append(triton.testing.do_bench(launch, return_mode="median"))
    return times


def enqueue_us(fn: Callable[[], object], calls: int = 300, batch: int = 10) -> float:
    """Median host time (µs) of one call, in batches of ``batch`` calls between synchronisations, so that
    a device slower than the host never fills its queue and makes the host wait."""
    fn()
    times = []
    for _ in range(calls // batch):
        torch.cuda.synchronize()
        for _ in range(batch):
            start = time.perf_counter()
            fn()
            times.append((time.perf_counter() - start) * 1e6)
    torch.cuda.synchronize()
    return sorted(times)[len(times) // 2]


def spread(ms_rounds: list[float]) -> str:
    """A variant's fastest and slowest round, as a table's ``range`` cell."""
    return f"{min(ms_rounds):.3f}–{max(ms_rounds):.3f}"


# A variant of the band experiments: its name, launch, registers (cap or used) and max difference from
# the shared kernel's output (None where it is not compared).
Variant = tuple[str, Callable[[], object], int | None, float | None]


def variant_rows(variants: list[Variant], times: list[list[float]], layout: BlockLayout) -> list[dict]:
    """One result row per variant, from its rounds (`timed_rounds`): median ms and the TFLOP/s of that
    median over ``layout``'s computed tiles."""
    rows = []
    for (name, _, registers, diff), ms_rounds in zip(variants, times, strict=True):
        ms = statistics.median(ms_rounds)
        rows.append(
            {"variant": name, "registers": registers, "max_diff": diff, "ms_rounds": ms_rounds, "ms": ms,
             "tflops": computed_tflops(layout, ms)}
        )  # fmt: skip
    return rows


def variant_table(rows: list[dict], registers: str = "registers") -> list[str]:
    """`variant_rows` as Markdown table lines, the registers column headed ``registers``."""
    lines = [f"| variant | {registers} | ms | range | TFLOP/s | max diff |", "|---|---|---|---|---|---|"]
    for r in rows:
        diff = "—" if r["max_diff"] is None else f"{r['max_diff']:.1e}"
        lines.append(
            f"| {r['variant']} | {r['registers'] or '—'} | {r['ms']:.3f} | {spread(r['ms_rounds'])} "
            f"| {r['tflops']:.0f} | {diff} |"
        )
    return lines


def report_variants(
    out: Path, script: str, title: str, caption: str, variants: list[Variant], layout: BlockLayout, rounds: int,
    registers: str = "registers",
) -> None:  # fmt: skip
    """Time ``variants`` in turn (`timed_rounds`) and write ``out/<stem>.json`` and ``.md`` for
    ``script`` (``<stem>.py``): ``title``, how it was run, ``caption``, then the `variant_table`; print the
    Markdown."""
    rows = variant_rows(variants, timed_rounds([launch for _, launch, _, _ in variants], rounds), layout)
    meta = run_meta(script, out)
    stem = Path(script).stem
    write_json(out, stem, meta, rows)
    lines = [f"# {title}", "", run_line(meta), caption, "", *variant_table(rows, registers)]
    (out / f"{stem}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def cudnn_dense(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """cuDNN SDPA dense causal attention with native GQA."""
    with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
        return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)


def cudnn_ms(n: int) -> float:
    """cuDNN SDPA dense causal on the benchmark shape at ``n`` tokens: do_bench median in ms."""
    q, k, v = inputs(n)
    return float(triton.testing.do_bench(lambda: cudnn_dense(q, k, v), return_mode="median"))


def correct(pattern: Pattern, block: tuple[int, int], config: KernelConfig) -> float:
    """Max error against the fp32 reference on a 2K-token prompt (with 8 query heads, or the pattern's
    own number of heads for a per-head pattern)."""
    heads = pattern.num_heads or 8
    q, k, v = inputs(2048)
    q = q[:, :heads]
    k, v = k[:, : heads // 4], v[:, : heads // 4]
    layout = lower(pattern, 2048, block_size=block, num_heads=pattern.num_heads, device="cuda")
    out, _ = triton_sparse_attention(q, k, v, layout, config=config)
    dense = pattern.to_dense(2048, num_heads=pattern.num_heads)
    ref, _ = reference_attention(q, k, v, dense.unsqueeze(0).cuda())
    return float((out.float() - ref.float()).abs().max())


def run_meta(script: str, out: Path) -> dict:
    """Date, GPU, versions and the command line of a run (its output folder written as $OUT)."""
    return {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "gpu": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "triton": triton.__version__,
        "host": platform.node(),
        "command": f"PYTHONPATH=. python experiments/{script} "
        + " ".join("$OUT" if a == str(out) else a for a in sys.argv[1:]),
    }


def run_line(meta: dict) -> str:
    """The Markdown line that says how and where a result was measured."""
    return f"`{meta['command']}` — {meta['date']}, {meta['gpu']}, torch {meta['torch']}, triton {meta['triton']}."


def write_json(out: Path, stem: str, meta: dict, rows: list[dict]) -> None:
    """``out/stem.json`` with the run's record and its rows."""
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
