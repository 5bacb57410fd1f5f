"""Benchmark the block-sparse Triton kernel (Hydra app; config: conf/bench_kernel.yaml).

For each pattern and length: lower the pattern on the GPU (timed), check the kernel against an fp32
reference on two blocks of query rows, then time with ``triton.testing.do_bench`` (median) the kernel
with and without load balancing, FlexAttention compiled two ways (its mask build timed separately): as
its users write it (`harness.flex_as_written`: ``create_block_mask`` on the pattern's own
``to_mask_mod()``, default tiles) and on the identical layout (``layout.to_flex()``), the authors' kernel
where ``.peers/`` holds one for the pattern (MInference's ``tri_shape_kernel`` for `Triangle`,
``streaming_forward`` for `Streaming`; ``experiments/stage_peers.sh``), and, once per length, cuDNN SDPA
and the SDPA flash backend on dense causal attention. At the smallest length each peer's output is
compared with ours (max difference).

    python experiments/bench_kernel.py                       # everything, into outputs/bench_kernel/<time>
    python experiments/bench_kernel.py out_dir=experiments/results   # the same, updating the committed results
    python experiments/bench_kernel.py lengths=[8192] long_lengths=[] 'sweep.configs=[[8,2],[8,3]]'
    python experiments/bench_kernel.py out_dir=experiments/results render_only=true   # re-render the committed table
"""

from __future__ import annotations

import datetime
import gc
import json
import math
import os
import sys
import time
from pathlib import Path

import hydra
import torch
from harness import LAYOUT_PATH, flex_as_written, flex_attend, measure_dynamic, peer_module
from hydra.utils import instantiate, to_absolute_path
from omegaconf import DictConfig

from sparseattn.eval.provenance import output_dir, portable
from sparseattn.lowering import lower
from sparseattn.patterns import Pattern, PerHead, Streaming, Triangle


def log(msg: str) -> None:
    print(msg, flush=True)


def build_patterns(cfg: DictConfig) -> dict:
    pats = {name: instantiate(spec) for name, spec in cfg.patterns.items()}
    if cfg.mixture:
        members = [pats[name] for name in cfg.mixture]
        pats["mixture"] = PerHead(tuple(members[h % len(members)] for h in range(cfg.heads)))
    unknown = sorted(set(cfg.get("only") or ()) - set(pats))
    if unknown:
        raise ValueError(f"only: expected names from {sorted(pats)}, got {unknown}")
    return pats


def inputs(cfg: DictConfig, length: int):
    dtype = getattr(torch, cfg.dtype)
    gen = torch.Generator(device="cuda").manual_seed(length)
    q = torch.randn(cfg.batch, cfg.heads, length, cfg.head_dim, device="cuda", dtype=dtype, generator=gen)
    k = torch.randn(cfg.batch, cfg.kv_heads, length, cfg.head_dim, device="cuda", dtype=dtype, generator=gen)
    v = torch.randn(cfg.batch, cfg.kv_heads, length, cfg.head_dim, device="cuda", dtype=dtype, generator=gen)
    return q, k, v


def bench(fn) -> float:
    from triton.testing import do_bench

    return float(do_bench(fn, return_mode="median"))


def bench_device(fn) -> float:
    """Median ms of ``fn`` replayed back to back from a CUDA graph (``do_bench_cudagraph``): device time,
    without the host's time to enqueue the call and without do_bench's L2 flush between calls. At 8K
    keys a sparse call is ~0.2 ms of device work, the order of the host's time to enqueue it, and
    do_bench then times the host whenever it falls behind (experiments/results/short_prompt_launch.md)."""
    from triton.testing import do_bench_cudagraph

    return float(do_bench_cudagraph(fn, return_mode="median"))


def timed(fn, repeats: int = 3) -> tuple[float, object]:
    """Median wall time in ms of a host+device step (lowering, mask build), with its last result.

    Python's garbage is collected before each call, outside the timed region, so that a collection of
    what earlier steps left (Flex's compiled graphs, earlier lengths' tensors) is not charged to it.
    """
    times, result = [], None
    for _ in range(repeats):
        gc.collect()
        torch.cuda.synchronize()
        start = time.perf_counter()
        result = fn()
        torch.cuda.synchronize()
        times.append((time.perf_counter() - start) * 1e3)
    return sorted(times)[len(times) // 2], result


def check_rows(cfg, pattern, q, k, v, out) -> float:
    """Max |out - fp32 reference| over one block of rows from the middle and the last block."""
    from sparseattn.patterns import MaskContext

    length, rows = q.shape[2], cfg.check_rows
    group = cfg.heads // cfg.kv_heads
    ctx = MaskContext(length, length, cfg.heads, device=q.device)
    heads = torch.arange(cfg.heads, device=q.device).view(-1, 1, 1)
    keys = torch.arange(length, device=q.device).view(1, 1, -1)
    kf, vf = k.float(), v.float()
    worst = 0.0
    for start in (length // 2 - rows // 2, length - rows):
        idx = torch.arange(start, start + rows, device=q.device)
        mask = pattern.mask(heads, idx.view(1, -1, 1), keys, ctx)  # [H|1, rows, L]
        scores = torch.einsum(
            "bhgrd,bhkd->bhgrk", q[:, :, start : start + rows].float().unflatten(1, (cfg.kv_heads, group)), kf
        )
        scores = scores.flatten(1, 2) / math.sqrt(q.shape[-1])
        scores = scores.masked_fill(~mask.unsqueeze(0), -math.inf)
        probs = torch.softmax(scores, dim=-1).nan_to_num(0.0)
        ref = torch.einsum("bhgrk,bhkd->bhgrd", probs.unflatten(1, (cfg.kv_heads, group)), vf).flatten(1, 2)
        worst = max(worst, float((out[:, :, start : start + rows].float() - ref).abs().max()))
        del scores, probs
    return worst


def dense_baselines(q, k, v) -> dict:
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.nn.functional import scaled_dot_product_attention as sdpa

    res = {}
    for name, backend in (("cudnn", SDPBackend.CUDNN_ATTENTION), ("flash", SDPBackend.FLASH_ATTENTION)):
        try:
            with sdpa_kernel(backend):
                sdpa(q, k, v, is_causal=True, enable_gqa=True)
                res[f"{name}_ms"] = bench(lambda: sdpa(q, k, v, is_causal=True, enable_gqa=True))
                if name == "cudnn":
                    res["cudnn_device_ms"] = bench_device(lambda: sdpa(q, k, v, is_causal=True, enable_gqa=True))
            res[f"{name}_gqa"] = "enable_gqa"
        except RuntimeError:
            group = q.shape[1] // k.shape[1]
            kr, vr = k.repeat_interleave(group, 1), v.repeat_interleave(group, 1)
            with sdpa_kernel(backend):
                res[f"{name}_ms"] = bench(lambda kr=kr, vr=vr: sdpa(q, kr, vr, is_causal=True))
            res[f"{name}_gqa"] = "repeated"
            del kr, vr
    return res


def tile_shape(cfg, name, pattern, length, dtype) -> tuple[int, int]:
    """The pattern's tiles: ``cfg.blocks[name]`` when given, else those `sparse_attention` would pick."""
    from sparseattn.attention import default_block_size

    if name in cfg.get("blocks", {}):
        block_m, block_n = cfg.blocks[name]
        return (int(block_m), int(block_n))
    return default_block_size(
        "triton", cfg.head_dim, dtype, pattern, length, length, group=cfg.heads // cfg.kv_heads, device="cuda"
    )


def run_pattern(cfg, name, pattern, length, q, k, v, dense, config=None) -> dict:
    from sparseattn.kernels.attention.config import default_config
    from sparseattn.kernels.attention.launch import triton_sparse_attention
    from sparseattn.kernels.planning.work_list import work_list

    rec: dict = {"pattern": name, "length": length}
    block = tile_shape(cfg, name, pattern, length, q.dtype)
    rec["block"] = list(block)
    rec["lower_ms"], layout = timed(
        lambda: lower(pattern, length, length, block_size=block, num_heads=pattern.num_heads, device="cuda")
    )
    entries = layout.batch_size * layout.num_heads
    pairs = layout.computed_pairs() * (cfg.batch * cfg.heads) // entries
    rec["pairs_fraction_of_causal"] = pairs / (cfg.batch * cfg.heads * length * (length + 1) / 2)
    launch = config or default_config(layout, cfg.head_dim, cfg.heads // cfg.kv_heads)
    rec["schedule_ms"], _ = timed(
        lambda: work_list(layout, cfg.batch, cfg.heads, pack=launch.pack, runs=launch.full_runs), repeats=1
    )

    out, _ = triton_sparse_attention(q, k, v, layout, config=config)
    rec["max_err"] = check_rows(cfg, pattern, q, k, v, out)
    rec["ok"] = rec["max_err"] <= cfg.check_atol
    # The peers' outputs are compared with ours at the smallest length.
    ours = out if length == min(cfg.lengths) else None
    del out
    rec["triton_ms"] = bench(lambda: triton_sparse_attention(q, k, v, layout, config=config))
    rec["triton_plain_ms"] = bench(
        lambda: triton_sparse_attention(q, k, v, layout, max_chunk=0, heavy_first=False, config=config)
    )
    rec["triton_device_ms"] = bench_device(lambda: triton_sparse_attention(q, k, v, layout, config=config))
    rec["tflops"] = 4 * pairs * cfg.head_dim / rec["triton_ms"] / 1e9
    rec["device_tflops"] = 4 * pairs * cfg.head_dim / rec["triton_device_ms"] / 1e9
    for base in ("cudnn", "flash"):
        if f"{base}_ms" in dense:
            rec[f"speedup_vs_{base}_dense"] = dense[f"{base}_ms"] / rec["triton_ms"]
    if "cudnn_device_ms" in dense:
        rec["device_speedup_vs_cudnn_dense"] = dense["cudnn_device_ms"] / rec["triton_device_ms"]
    if length <= cfg.flex_max_len:
        try:
            build = flex_as_written(pattern, length, length, cfg.batch)
        except NotImplementedError:
            rec["flex_written"] = LAYOUT_PATH
        else:
            flex_column(cfg, rec, "flex_written", build, flex_attend, q, k, v, ours)
        flex_column(cfg, rec, "flex", layout.to_flex, flex_on_layout, q, k, v, ours)
    authors_column(cfg, rec, pattern, q, k, v, ours)
    del ours
    torch.cuda.empty_cache()
    return rec


def flex_on_layout(q, k, v, block_mask, kernel_options):
    """FlexAttention compiled on ``layout.to_flex()``: tiles matched to the layout's blocks below 128."""
    from sparseattn.kernels.flex import flex_sparse_attention

    return flex_sparse_attention(q, k, v, block_mask, kernel_options=kernel_options)[0]


def flex_column(cfg, rec, prefix, build, attend, q, k, v, ours) -> None:
    """One FlexAttention column of ``rec``, its keys under ``prefix``: ``{prefix}_mask_ms`` (median of three
    ``build()`` calls after an untimed one, which compiles ``create_block_mask`` on the as-written path),
    ``{prefix}_first_call_s`` (Flex's compilation), ``{prefix}_ms`` (do_bench median of
    ``attend(q, k, v, block_mask, kernel_options)``) and ``speedup_vs_{prefix}``; ``{prefix}_max_err``
    against ``ours`` where given. Flex's default tiles, or ``cfg.flex_fallback_options`` (recorded as
    ``{prefix}_kernel_options``) where they fail to compile. A failure is recorded, never raised."""
    try:
        build()
        rec[f"{prefix}_mask_ms"], block_mask = timed(build)
        options = None
        start = time.perf_counter()
        try:
            res = attend(q, k, v, block_mask, options)
        except Exception:  # Flex's default tiles can exceed shared memory with D=128 (seen on H200)
            options = dict(cfg.flex_fallback_options)
            res = attend(q, k, v, block_mask, options)
            rec[f"{prefix}_kernel_options"] = options
        torch.cuda.synchronize()
        rec[f"{prefix}_first_call_s"] = time.perf_counter() - start
        if ours is not None:
            rec[f"{prefix}_max_err"] = float((res.float() - ours.float()).abs().max())
        del res
        rec[f"{prefix}_ms"] = bench(lambda: attend(q, k, v, block_mask, options))
        rec[f"speedup_vs_{prefix}"] = rec[f"{prefix}_ms"] / rec["triton_ms"]
    except Exception as exc:  # a baseline failing (OOM, compile error) must not end the run
        rec[f"{prefix}_error"] = f"{type(exc).__name__}: {str(exc)[:200]}"


def authors_kernel(pattern: Pattern):
    """The authors' kernel for ``pattern`` as ``(fn(q, k, v) or None, what it is or why it is missing)``,
    with k and v repeated to the query heads as its API requires; None where no peer kernel computes the
    pattern. TriangleMix's ``tri_shape_kernel`` for `Triangle` (n_init = sink, n_local = window,
    n_last = last) and StreamingLLM's ``streaming_forward`` for `Streaming` (n_init = sink, n_local =
    window), both from MInference's ``minference/ops/streaming_kernel.py`` staged in ``.peers/``."""
    if not (isinstance(pattern, Streaming) or (isinstance(pattern, Triangle) and pattern.last > 0)):
        return None
    module, why = peer_module("minference.ops.streaming_kernel")
    if module is None:
        return None, why
    if isinstance(pattern, Triangle):
        config = {"attn_forward_config": {"n_init": pattern.sink, "n_local": pattern.window, "n_last": pattern.last}}
        return (lambda q, k, v: module.tri_shape_kernel(q, k, v, config)), f"tri_shape_kernel, {why}"
    return (
        lambda q, k, v: module.streaming_forward(q, k, v, pattern.sink, pattern.window)
    ), f"streaming_forward, {why}"


def authors_column(cfg, rec, pattern, q, k, v, ours) -> None:
    """The authors' kernel for ``pattern`` (`authors_kernel`) into ``rec``: ``authors`` (what ran, or why
    none did), ``authors_ms`` (do_bench median, k and v repeated to the query heads beforehand, outside
    the timing), ``speedup_vs_authors`` and, where ``ours`` is given, ``authors_max_err``. Its first call
    per length is untimed and unchecked: it autotunes, and the autotuner's reruns of a kernel that
    accumulates in place may leave that call's output wrong.
    A failure (e.g. on this Triton) is recorded as ``authors_error``, never raised."""
    import triton

    peer = authors_kernel(pattern)
    if peer is None:
        return
    fn, rec["authors"] = peer
    if fn is None:
        return
    group = cfg.heads // cfg.kv_heads
    kr, vr = k.repeat_interleave(group, 1), v.repeat_interleave(group, 1)
    try:
        fn(q, kr, vr)
        res = fn(q, kr, vr)
        torch.cuda.synchronize()
        if ours is not None:
            rec["authors_max_err"] = float((res.float() - ours.float()).abs().max())
        del res
        rec["authors_ms"] = bench(lambda: fn(q, kr, vr))
        rec["speedup_vs_authors"] = rec["authors_ms"] / rec["triton_ms"]
    except Exception as exc:  # the authors' code failing (on this Triton, OOM) must not end the run
        rec["authors_error"] = f"fails on triton {triton.__version__}: {type(exc).__name__}: {str(exc)[:200]}"


def run_sweep(cfg, pats) -> list[dict]:
    from sparseattn.kernels.attention.config import KernelConfig
    from sparseattn.kernels.attention.launch import triton_sparse_attention

    rows = []
    length = cfg.sweep.length
    q, k, v = inputs(cfg, length)
    for name in cfg.sweep.patterns:
        block = tile_shape(cfg, name, pats[name], length, q.dtype)
        layout = lower(pats[name], length, length, block_size=block, num_heads=pats[name].num_heads, device="cuda")
        for warps, stages in cfg.sweep.configs:
            config = KernelConfig(num_warps=warps, num_stages=stages)
            try:
                ms = bench(lambda layout=layout, config=config: triton_sparse_attention(q, k, v, layout, config=config))
            except Exception as exc:
                ms = float("nan")
                log(f"sweep {name} {warps}w{stages}s failed: {type(exc).__name__}: {str(exc)[:200]}")
            rows.append({"pattern": name, "length": length, "num_warps": warps, "num_stages": stages, "ms": ms})
            log(f"sweep {name:10s} L={length} warps={warps} stages={stages}: {ms:.3f} ms")
    return rows


def environment(command: str) -> dict:
    import triton

    return {
        "command": command,
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "gpu": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "triton": triton.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version(),
    }


def render(data: dict, out_dir: Path) -> None:
    """Markdown table and plot from the JSON document."""
    env, records, dense = data["env"], data["records"], data["dense"]
    lines = [
        "# Block-sparse Triton kernel benchmark",
        "",
        f"- command: `{env['command']}`",
        f"- date: {env['date']}; GPU: {env['gpu']}; torch {env['torch']}, triton {env['triton']}, "
        f"CUDA {env['cuda']}, cuDNN {env['cudnn']}",
        *([f"- code: {env['code']}"] if env.get("code") else []),
        f"- shape: B={data['shape']['batch']}, {data['shape']['heads']} query heads, {data['shape']['kv_heads']} kv heads, "
        f"head dim {data['shape']['head_dim']}, {data['shape']['dtype']}; times are do_bench medians in ms",
        "- speedups are against cuDNN SDPA dense causal at the same length, same run; TFLOP/s count "
        "4·D flops per computed query-key pair (tiles actually computed); `plain` is the kernel without "
        "load balancing (grid order, no row splitting); `of dense` is the TFLOP/s as a share of our kernel's "
        "on dense causal at the same length; `lower share` is the lowering time as a share of the kernel time",
        "- `device` columns replay the call back to back from a CUDA graph (`do_bench_cudagraph`, median): "
        "device time without the host's time to enqueue the call, which do_bench also times whenever the host "
        "falls behind a short call (short_prompt_launch.md), and without do_bench's L2 flush between calls",
        "- `Flex (as written)`: FlexAttention as its users write it, `torch.compile(flex_attention)` with "
        "`enable_gqa=True` on `create_block_mask(pattern.to_mask_mod(L, L), B, H, L, L)` (H = None for a "
        "head-independent pattern; create_block_mask compiled, Flex's default 128 x 128 blocks and tiles); "
        f"`{LAYOUT_PATH}` for a pattern without an analytic predicate. `Flex (identical layout)`: FlexAttention "
        "compiled on `layout.to_flex()`, our tiles and bitmaps through a table-reading mask_mod (its slow path). "
        "`mask ms`: median of three block-mask builds after an untimed one (which compiles)",
        "- `authors' kernel`: the authors' own code in the same run, from `.peers/` (experiments/stage_peers.sh): "
        "MInference's `tri_shape_kernel` (TriangleMix) for triangle, `streaming_forward` for streaming, k and v "
        "repeated to the query heads outside the timing as their API requires; `—` where no authors' kernel "
        "computes the pattern",
        "",
        "## Dense baselines (causal)",
        "",
        "| length | cuDNN ms | cuDNN TFLOP/s | cuDNN device ms | flash ms |",
        "|---|---|---|---|---|",
    ]
    for length, d in sorted(dense.items(), key=lambda kv: int(kv[0])):
        n = int(length)
        flops = 4 * data["shape"]["batch"] * data["shape"]["heads"] * n * (n + 1) / 2 * data["shape"]["head_dim"]
        lines.append(
            f"| {n} | {d.get('cudnn_ms', float('nan')):.3f} | {flops / d.get('cudnn_ms', float('nan')) / 1e9:.0f} "
            f"| {d.get('cudnn_device_ms', float('nan')):.3f} | {d.get('flash_ms', float('nan')):.3f} |"
        )
    lines += [
        "",
        "## Patterns",
        "",
        "| pattern | length | tiles | pairs/causal | ok (max err) | ours ms | plain ms | balance gain | TFLOP/s "
        "| of dense | vs cuDNN dense | device ms | of dense (device) | vs cuDNN (device) "
        "| Flex (as written) ms | vs Flex (as written) | Flex (as written) mask ms "
        "| Flex (identical layout) ms | vs Flex (identical layout) | Flex (identical layout) mask ms "
        "| authors' kernel ms | vs authors' | lower ms | lower share |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    dense_tflops = {r["length"]: r for r in records if r["pattern"] == "causal"}
    for r in records:

        def f(key, fmt="{:.3f}", r=r):
            return fmt.format(r[key]) if key in r else "—"

        def peer(key, prefix, fmt="{:.3f}", why=False, r=r):
            """A peer's cell: its figure, else "failed", else (``why``) the reason it has none: n/a, absent."""
            if key in r:
                return fmt.format(r[key])
            if f"{prefix}_error" in r:
                return "failed"
            return r.get(prefix, "—") if why else "—"

        def share(key, r=r):
            dense_rec = dense_tflops.get(r["length"], {})
            return f"{r[key] / dense_rec[key]:.0%}" if key in r and key in dense_rec else "—"

        lines.append(
            f"| {r['pattern']} | {r['length']} | {'x'.join(map(str, r.get('block', ['?'])))} | {r['pairs_fraction_of_causal']:.4f} | {'yes' if r['ok'] else 'NO'} "
            f"({r['max_err']:.1e}) | {r['triton_ms']:.3f} | {r['triton_plain_ms']:.3f} | "
            f"{r['triton_plain_ms'] / r['triton_ms']:.2f}x | {r['tflops']:.0f} | {share('tflops')} | "
            f"{f('speedup_vs_cudnn_dense', '{:.2f}x')} | {f('triton_device_ms')} | {share('device_tflops')} | "
            f"{f('device_speedup_vs_cudnn_dense', '{:.2f}x')} | {peer('flex_written_ms', 'flex_written', why=True)} "
            f"| {peer('speedup_vs_flex_written', 'flex_written', '{:.2f}x')} "
            f"| {peer('flex_written_mask_ms', 'flex_written', '{:.1f}')} | {peer('flex_ms', 'flex')} "
            f"| {peer('speedup_vs_flex', 'flex', '{:.2f}x')} | {peer('flex_mask_ms', 'flex', '{:.1f}')} "
            f"| {peer('authors_ms', 'authors', why=True)} | {peer('speedup_vs_authors', 'authors', '{:.2f}x')} "
            f"| {r['lower_ms']:.1f} | {r['lower_ms'] / r['triton_ms']:.1%} |"
        )
    lines += peer_notes(records)
    if data.get("sweep"):
        lines += [
            "",
            "## Launch-config sweep",
            "",
            "| pattern | length | num_warps | num_stages | ms |",
            "|---|---|---|---|---|",
        ]
        lines += [
            f"| {s['pattern']} | {s['length']} | {s['num_warps']} | {s['num_stages']} | {s['ms']:.3f} |"
            for s in data["sweep"]
        ]
    if "dynamic" in data:
        lines += dynamic_section(data["dynamic"])
    (out_dir / "kernel_bench.md").write_text("\n".join(lines) + "\n")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    for name in dict.fromkeys(r["pattern"] for r in records):
        rs = [r for r in records if r["pattern"] == name and "speedup_vs_cudnn_dense" in r]
        ax1.plot([r["length"] for r in rs], [r["speedup_vs_cudnn_dense"] for r in rs], marker="o", label=name)
        rs = [r for r in records if r["pattern"] == name]
        ax2.plot([r["length"] for r in rs], [r["tflops"] for r in rs], marker="o", label=name)
    ax1.set(
        xscale="log",
        yscale="log",
        xlabel="sequence length",
        ylabel="speedup vs cuDNN dense causal",
        title="Triton block-sparse kernel",
    )
    ax2.set(xscale="log", xlabel="sequence length", ylabel="TFLOP/s on computed tiles", title="Effective throughput")
    for ax in (ax1, ax2):
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    fig.suptitle(f"{env['gpu']}, B=1, 32q/8kv heads, D=128, bf16", fontsize=10)
    fig.tight_layout()
    fig.savefig(out_dir / "kernel_bench.png", dpi=120)


def peer_notes(records: list[dict]) -> list[str]:
    """The peers' agreement with our output (max |difference|, at the smallest length), the authors'
    kernels (source, or why absent), the Flex tiles used where Flex's defaults failed, and failures."""
    lines = []
    checked = [r for r in records if any(key.endswith("max_err") and key != "max_err" for key in r)]
    if checked:
        lines += [
            "",
            f"## Peers against ours at {checked[0]['length']} tokens (max |difference| of the outputs, bf16)",
            "",
            "| pattern | ours vs fp32 reference | Flex (as written) | Flex (identical layout) | authors' kernel |",
            "|---|---|---|---|---|",
        ]
        for r in checked:
            err = lambda key, r=r: f"{r[key]:.1e}" if key in r else "—"
            lines.append(
                f"| {r['pattern']} | {r['max_err']:.1e} | {err('flex_written_max_err')} | {err('flex_max_err')} "
                f"| {err('authors_max_err')} |"
            )
    notes = {}
    for r in records:
        if "authors" in r:
            notes.setdefault(f"{r['pattern']}: authors' kernel {r['authors']}", None)
        for prefix, column in (("flex_written", "Flex (as written)"), ("flex", "Flex (identical layout)")):
            if f"{prefix}_kernel_options" in r:
                notes.setdefault(
                    f"{r['pattern']} L={r['length']}: {column} failed on Flex's default tiles, "
                    f"ran with kernel_options={r[f'{prefix}_kernel_options']}",
                    None,
                )
        for prefix, column in (("flex_written", "Flex (as written)"), ("flex", "Flex (identical layout)"), ("authors", "authors' kernel")):  # fmt: skip
            if f"{prefix}_error" in r:
                notes.setdefault(f"{r['pattern']} L={r['length']}: {column} failed: {r[f'{prefix}_error']}", None)
    if notes:
        lines += ["", "Notes:", ""] + [f"- {note}" for note in notes]
    return lines


def dynamic_section(dyn: dict) -> list[str]:
    """Markdown rows for the dynamic patterns (their full report is dynamic_bench.md)."""
    t, n = dyn["timings_ms"], dyn["shape"]["seq_len"]
    dense = t.get("dense_cudnn_sdpa_causal") or float("nan")

    def as_written(tag):
        """The Flex (as written) cell: why there is none (an estimated pattern has no mask_mod), else its ms."""
        what = dyn.get("flex_as_written", {}).get(tag, "—")
        if what not in t:
            return what
        return "failed" if t[what] is None else f"{t[what]:.2f}"

    lines = [
        "",
        f"## Dynamic patterns at {n} tokens (estimated per call, structured synthetic q/k; detail: dynamic_bench.md)",
        "",
        "| pattern | estimate + lower ms | attention ms | end to end ms | overhead | Flex (as written) "
        "| Flex (identical layout) ms | vs Flex (identical layout) | Flex (identical layout) mask ms "
        "| authors' kernel | cuDNN dense ms | end to end vs cuDNN dense |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for tag in ("vertical_slash", "block_topk"):
        get = lambda key, tag=tag: t.get(f"{tag}_{key}") or float("nan")
        lines.append(
            f"| {tag} | {get('estimate_and_lower'):.2f} | {get('triton'):.2f} | {get('end_to_end'):.2f} "
            f"| {100 * (get('end_to_end') / get('triton') - 1):.1f}% "
            f"| {as_written(tag)} | {get('flex'):.2f} "
            f"| {get('flex') / get('triton'):.2f}x | {get('flex_blockmask_build'):.1f} "
            f"| {dyn.get('authors', {}).get(tag, '—')} | {dense:.1f} | {dense / get('end_to_end'):.1f}x |"
        )
    lines += ["", "Checks: " + ", ".join(f"{k} {v}" for k, v in dyn["checks"].items())]
    return lines


@hydra.main(version_base=None, config_path="../conf", config_name="bench_kernel")
def main(cfg: DictConfig) -> None:
    out_dir = output_dir(cfg.out_dir and to_absolute_path(cfg.out_dir))
    out_dir.mkdir(parents=True, exist_ok=True)
    if cfg.render_only:
        render(json.loads((out_dir / "kernel_bench.json").read_text()), out_dir)
        return
    command = portable("python experiments/bench_kernel.py " + " ".join(sys.argv[1:]))
    shape = {key: cfg[key] for key in ("batch", "heads", "kv_heads", "head_dim", "dtype")}
    data = {"env": environment(command.strip()), "shape": shape, "records": [], "dense": {}}
    pats = build_patterns(cfg)
    log(f"authors' kernels (TriangleMix, StreamingLLM): {peer_module('minference.ops.streaming_kernel')[1]}")
    # Flex recompiles per length and per block-mask shape; the default limit (8) would drop it to eager.
    torch._dynamo.config.recompile_limit = 64

    def save() -> None:
        (out_dir / "kernel_bench.json").write_text(json.dumps(data, indent=1))

    config = None
    if cfg.sweep.configs:
        from sparseattn.kernels.attention.config import KernelConfig

        data["sweep"] = run_sweep(cfg, pats)
        # The rest of the run uses the config fastest on the sweep's first pattern.
        first = [s for s in data["sweep"] if s["pattern"] == cfg.sweep.patterns[0] and s["ms"] == s["ms"]]
        best = min(first, key=lambda s: s["ms"])
        config = KernelConfig(num_warps=best["num_warps"], num_stages=best["num_stages"])
        data["config"] = {"num_warps": config.num_warps, "num_stages": config.num_stages}
        save()
    for length in list(cfg.lengths) + list(cfg.long_lengths):
        q, k, v = inputs(cfg, length)
        dense = {}
        if length in cfg.lengths:
            dense = dense_baselines(q, k, v)
            data["dense"][str(length)] = dense
            log(f"L={length}: cuDNN {dense['cudnn_ms']:.3f} ms, flash {dense['flash_ms']:.3f} ms")
        for name, pattern in pats.items():
            if (name == "causal" and length not in cfg.lengths) or (cfg.only and name not in cfg.only):
                continue
            try:
                rec = run_pattern(cfg, name, pattern, length, q, k, v, dense, config)
            except torch.OutOfMemoryError as exc:
                log(f"{name} L={length}: out of memory ({str(exc)[:120]})")
                torch.cuda.empty_cache()
                continue
            data["records"].append(rec)
            save()
            log(
                f"{name:10s} L={length:7d} ok={rec['ok']} err={rec['max_err']:.1e} ours={rec['triton_ms']:.3f} "
                f"plain={rec['triton_plain_ms']:.3f} tflops={rec['tflops']:.0f} "
                f"x_cudnn={rec.get('speedup_vs_cudnn_dense', float('nan')):.2f} flex={rec.get('flex_ms', float('nan')):.3f} "
                f"x_flex={rec.get('speedup_vs_flex', float('nan')):.2f} lower={rec['lower_ms']:.1f}ms "
                f"flexmask={rec.get('flex_mask_ms', float('nan')):.1f}ms {rec.get('flex_error', '')} "
                f"flex_as_written={rec.get('flex_written_ms', rec.get('flex_written', float('nan')))} "
                f"x_flex_as_written={rec.get('speedup_vs_flex_written', float('nan')):.2f} "
                f"mask={rec.get('flex_written_mask_ms', float('nan')):.1f}ms {rec.get('flex_written_error', '')} "
                f"authors={rec.get('authors_ms', rec.get('authors', '—'))} "
                f"x_authors={rec.get('speedup_vs_authors', float('nan')):.2f} {rec.get('authors_error', '')}"
            )
            for key in ("flex_written_max_err", "flex_max_err", "authors_max_err"):
                if key in rec:
                    log(f"{name:10s} L={length:7d} {key.removesuffix('_max_err')} vs ours: max err {rec[key]:.1e}")
        del q, k, v
        torch.cuda.empty_cache()
    if cfg.dynamic_length:
        # Dynamic patterns are estimated from q and k on every call: estimate + lower + attention.
        data["dynamic"] = measure_dynamic(cfg.dynamic_length, out_dir, skip_flex=False, command=command)
        save()
    render(data, out_dir)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
