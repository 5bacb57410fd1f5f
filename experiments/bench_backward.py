"""Benchmark the block-sparse backward kernels against cuDNN SDPA, the SDPA flash backend and FlexAttention.

Shape of bench_kernel.py (Llama-3.1-8B attention: B=1, 32 query heads, 8 kv heads, head dim 128, bf16).
For each length and pattern (dense causal, Triangle(), streaming, A-shape, the per-head mixture and
MInference vertical-slash, estimated once from structured q/k and then a constant for the gradient):

1. correctness first, at ``--check-len`` tokens: our dq, dk, dv against fp64 autograd through the oracle,
   within the tolerance derived from bf16 autograd (`sparseattn.testing.gradients`); FlexAttention's
   gradients, as written and on the identical layout, are checked the same way;
2. timings (``triton.testing.do_bench`` medians, gradients reset between calls): backward alone and
   forward + backward, ours on the pattern's layout (tiles as `sparse_attention` picks them), cuDNN SDPA
   and the SDPA flash backend on dense causal attention, FlexAttention compiled with `create_block_mask`
   on the pattern's own `to_mask_mod()` (as its users write the mask, `harness.flex_as_written`; build
   timed apart) and on the identical layout
   (``layout.to_flex()``);
3. peak memory of one forward + backward per case (``torch.cuda.max_memory_allocated`` above what the
   inputs already hold), beside the size of q, k, v, o and their gradients.

Records are written to ``backward_bench.json`` (and the Markdown table ``backward_bench.md``) under
``--out`` after every case, so an interrupted run keeps what it measured. Plain argparse, no Hydra, like
bench_dynamic.py:

    PYTHONPATH=$PWD python experiments/bench_backward.py --out $OUT --lengths 8192 32768
    PYTHONPATH=$PWD python experiments/bench_backward.py --out $OUT --lengths 131072 --tag 128k
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import math
import os
import sys
import time
import traceback
from pathlib import Path

import torch
from harness import flex_as_written, structured_qkv

from sparseattn.attention import default_block_size
from sparseattn.lowering import lower
from sparseattn.patterns import AShape, Causal, PerHead, Streaming, Triangle

# The named shapes' parameters are bench_kernel.yaml's.
SHAPES = {
    "causal": Causal(),
    "triangle": Triangle(sink=8, window=512, last=128),
    "streaming": Streaming(sink=128, window=4096),
    "ashape": AShape(sink_blocks=1, local_blocks=32, block_size=128),
}
PATTERN_NAMES = ("causal", "triangle", "streaming", "ashape", "mixture", "vertical_slash")
FLEX_FALLBACK = {"num_stages": 2, "num_warps": 4} | {f"BLOCK_{a}": 64 for a in ("M", "N", "M1", "N1", "M2", "N2")}


def log(msg: str) -> None:
    print(msg, flush=True)


def bench(fn, grads=()) -> float:
    from triton.testing import do_bench

    return float(do_bench(fn, grad_to_none=list(grads), return_mode="median"))


def peak_mib(fn, baseline_tensors=()) -> float:
    """Peak memory of one call of ``fn`` above what is allocated before it, in MiB."""
    gc.collect()
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    for t in baseline_tensors:
        t.grad = None
    return (torch.cuda.max_memory_allocated() - before) / 2**20


def mixture(heads: int):
    members = [SHAPES[name] for name in ("causal", "streaming", "ashape", "triangle")]
    return PerHead(tuple(members[h % len(members)] for h in range(heads)))


def inputs(args, length: int, name: str):
    dtype = getattr(torch, args.dtype)
    if name == "vertical_slash":
        q, k, v = structured_qkv(args.heads, args.kv_heads, length, args.head_dim, seed=length, dtype=dtype)
    else:
        gen = torch.Generator(device="cuda").manual_seed(length)
        q = torch.randn(1, args.heads, length, args.head_dim, device="cuda", dtype=dtype, generator=gen)
        k = torch.randn(1, args.kv_heads, length, args.head_dim, device="cuda", dtype=dtype, generator=gen)
        v = torch.randn(1, args.kv_heads, length, args.head_dim, device="cuda", dtype=dtype, generator=gen)
    dout = torch.randn_like(q)
    return q, k, v, dout


def layout_of(args, name: str, length: int, q, k, tiles_of: int | None = None):
    """The layout `sparse_attention` would run for the pattern (vertical-slash: estimated from q, k once), on
    the tiles it would choose at ``tiles_of`` tokens (default: ``length``)."""
    if name == "vertical_slash":
        from sparseattn.estimation import VerticalSlash

        concrete = VerticalSlash(vertical=512, slash=2048).estimate(q, k)
        return lower(concrete, length, length, device="cuda"), None
    pattern = mixture(args.heads) if name == "mixture" else SHAPES[name]
    block = default_block_size(
        "triton",
        args.head_dim,
        q.dtype,
        pattern,
        tiles_of or length,
        tiles_of or length,
        group=args.heads // args.kv_heads,
        device="cuda",
    )
    return lower(pattern, length, length, block_size=block, num_heads=pattern.num_heads, device="cuda"), pattern


_FLEX = None


def flex():
    global _FLEX
    if _FLEX is None:
        import torch._functorch.config as functorch_config
        from torch.nn.attention.flex_attention import flex_attention

        # The backward-only timing replays one graph (retain_graph=True), which compiled backwards with
        # donated buffers refuse; Flex's kernels are the same either way.
        functorch_config.donated_buffer = False
        _FLEX = torch.compile(flex_attention, dynamic=False)
    return _FLEX


def flex_call(block_mask, options):
    def call(q, k, v):
        return flex()(q, k, v, block_mask=block_mask, enable_gqa=True, kernel_options=options)

    return call


def flex_options(block_mask, q, k, v, dout):
    """Flex's default tiles, or the fallback when they fail to compile for this mask (shared memory)."""
    bm, bn = block_mask.BLOCK_SIZE
    # Flex's tiles must divide the mask's blocks in the forward and in both backward loops (BLOCK_M1/N1
    # for dK/dV, BLOCK_M2/N2 for dQ), whose defaults are 64 to 128 wide.
    tiles = {"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_M1": bm, "BLOCK_N1": bn, "BLOCK_M2": bm, "BLOCK_N2": bn}
    options = None if min(bm, bn) >= 128 else tiles
    for attempt in (options, FLEX_FALLBACK):
        try:
            leaves = [t.detach().requires_grad_() for t in (q, k, v)]
            flex_call(block_mask, attempt)(*leaves).backward(dout)
            return attempt
        except Exception:
            if attempt is FLEX_FALLBACK:
                raise
    return FLEX_FALLBACK


def check_gradients(args, name: str) -> dict:
    """Ours, Flex on the identical layout and Flex as written against fp64 autograd through the oracle at
    ``args.check_len``."""
    from sparseattn.kernels.attention.backward import triton_sparse_attention_backward
    from sparseattn.kernels.attention.launch import triton_sparse_attention
    from sparseattn.testing.gradients import grad_oracle_and_tolerance

    n = args.check_len
    q, k, v, dout = inputs(args, n, name)
    # The tiles the timed lengths run on: at check_len alone the default would be 32 x 32, which neither
    # the timed kernels use nor Flex's backward compiles for.
    layout, pattern = layout_of(args, name, n, q, k, tiles_of=max(args.lengths))
    mask = layout.to_dense()
    oracle = grad_oracle_and_tolerance(q, k, v, mask, dout)
    out, lse = triton_sparse_attention(q, k, v, layout)
    ours = triton_sparse_attention_backward(dout, q, k, v, out, lse, layout)
    rec: dict = {"check_len": n}

    def verdict(tag, grads):
        errs = [float((g.double() - e).abs().max()) for g, e in zip(grads, oracle.grads, strict=True)]
        rec[f"{tag}_grad_err"] = errs
        rec[f"{tag}_grad_ok"] = all(e <= t for e, t in zip(errs, oracle.atol, strict=True)) and not any(
            bool(g.isnan().any()) for g in grads
        )

    verdict("ours", ours)
    rec["grad_atol"] = list(oracle.atol)
    del ours
    builds = {"flex": layout.to_flex}
    if pattern is not None:
        builds["flex_predicate"] = flex_as_written(pattern, n, n, 1)
    for tag, build in builds.items():
        try:
            block_mask = build()
            options = flex_options(block_mask, q, k, v, dout)
            leaves = [t.detach().requires_grad_() for t in (q, k, v)]
            flex_call(block_mask, options)(*leaves).backward(dout)
            verdict(tag, [t.grad for t in leaves])
        except Exception as exc:
            rec[f"{tag}_check_error"] = f"{type(exc).__name__}: {str(exc)[:200]}"
    torch.cuda.empty_cache()
    return rec


def run_ours(rec: dict, layout, q, k, v, dout) -> None:
    from sparseattn.kernels.attention.backward import triton_sparse_attention_backward
    from sparseattn.kernels.attention.launch import triton_sparse_attention

    def backward_only() -> float:
        out, lse = triton_sparse_attention(q, k, v, layout)
        triton_sparse_attention_backward(dout, q, k, v, out, lse, layout)  # compiles, plans the kv-major view
        return bench(lambda: triton_sparse_attention_backward(dout, q, k, v, out, lse, layout))

    def forward_backward() -> None:
        triton_sparse_attention_backward(dout, q, k, v, *triton_sparse_attention(q, k, v, layout), layout)

    rec["ours_bwd_ms"] = backward_only()
    rec["ours_fwd_ms"] = bench(lambda: triton_sparse_attention(q, k, v, layout))
    rec["ours_fwd_bwd_ms"] = bench(forward_backward)
    rec["ours_peak_mib"] = peak_mib(forward_backward)


def run_autograd(rec: dict, tag: str, fn, q, k, v, dout) -> None:
    """Backward and forward + backward of ``fn(q, k, v)`` through autograd, and its peak memory."""
    leaves = [t.detach().requires_grad_() for t in (q, k, v)]

    def backward_only() -> float:
        out = fn(*leaves)
        out.backward(dout, retain_graph=True)
        return bench(lambda: out.backward(dout, retain_graph=True), leaves)

    rec[f"{tag}_bwd_ms"] = backward_only()  # the graph it kept is freed on return
    rec[f"{tag}_fwd_bwd_ms"] = bench(lambda: fn(*leaves).backward(dout), leaves)
    rec[f"{tag}_peak_mib"] = peak_mib(lambda: fn(*leaves).backward(dout), leaves)


def dense_baselines(args, length: int) -> dict:
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.nn.functional import scaled_dot_product_attention as sdpa

    q, k, v, dout = inputs(args, length, "causal")
    res: dict = {}
    for name, backend in (("cudnn", SDPBackend.CUDNN_ATTENTION), ("flash", SDPBackend.FLASH_ATTENTION)):
        try:
            with sdpa_kernel(backend):
                run_autograd(res, name, lambda a, b, c: sdpa(a, b, c, is_causal=True, enable_gqa=True), q, k, v, dout)
            res[f"{name}_gqa"] = "enable_gqa"
        except RuntimeError:
            # The backend refuses GQA: K/V repeated outside the timed region, as bench_kernel does.
            group = q.shape[1] // k.shape[1]
            kr, vr = k.repeat_interleave(group, 1), v.repeat_interleave(group, 1)
            try:
                with sdpa_kernel(backend):
                    run_autograd(res, name, lambda a, b, c: sdpa(a, b, c, is_causal=True), q, kr, vr, dout)
                res[f"{name}_gqa"] = "repeated"
            except RuntimeError as exc:
                res[f"{name}_error"] = f"{type(exc).__name__}: {str(exc)[:200]}"
            del kr, vr
        log(
            f"L={length} {name}: bwd {res.get(f'{name}_bwd_ms', float('nan')):.3f} ms, "
            f"fwd+bwd {res.get(f'{name}_fwd_bwd_ms', float('nan')):.3f} ms, peak {res.get(f'{name}_peak_mib', float('nan')):.0f} MiB"
        )
    del q, k, v, dout
    torch.cuda.empty_cache()
    return res


def run_case(args, name: str, length: int, dense: dict) -> dict:
    q, k, v, dout = inputs(args, length, name)
    rec: dict = {"pattern": name, "length": length}
    layout, pattern = layout_of(args, name, length, q, k)
    rec["block"] = list(layout.block_size)
    entries = layout.batch_size * layout.num_heads
    pairs = layout.computed_pairs() * args.heads // entries
    rec["pairs_fraction_of_causal"] = pairs / (args.heads * length * (length + 1) / 2)
    # q, k, v, o and their gradients: what a forward + backward cannot do without.
    rec["io_mib"] = 2 * sum(t.numel() * t.element_size() for t in (q, k, v, dout)) / 2**20
    run_ours(rec, layout, q, k, v, dout)
    # 2.5 flops per pair for the backward's five matmuls against the forward's two: 10 * D per pair.
    rec["ours_bwd_tflops"] = 10 * pairs * args.head_dim / rec["ours_bwd_ms"] / 1e9
    for base in ("cudnn", "flash"):
        if f"{base}_bwd_ms" in dense:
            rec[f"bwd_vs_{base}_dense"] = dense[f"{base}_bwd_ms"] / rec["ours_bwd_ms"]
            rec[f"fwd_bwd_vs_{base}_dense"] = dense[f"{base}_fwd_bwd_ms"] / rec["ours_fwd_bwd_ms"]
    if length <= args.flex_max_len and not args.skip_flex:
        masks = [("flex_layout", layout.to_flex)]
        if pattern is not None:  # an estimate has no analytic predicate: only the identical layout
            masks.insert(0, ("flex_predicate", flex_as_written(pattern, length, length, 1)))
        for tag, build in masks:
            try:
                start = time.perf_counter()
                block_mask = build()
                torch.cuda.synchronize()
                rec[f"{tag}_mask_ms"] = (time.perf_counter() - start) * 1e3
                options = flex_options(block_mask, q, k, v, dout)
                if options is not None:
                    rec[f"{tag}_kernel_options"] = options
                run_autograd(rec, tag, flex_call(block_mask, options), q, k, v, dout)
                rec[f"bwd_vs_{tag}"] = rec[f"{tag}_bwd_ms"] / rec["ours_bwd_ms"]
                rec[f"fwd_bwd_vs_{tag}"] = rec[f"{tag}_fwd_bwd_ms"] / rec["ours_fwd_bwd_ms"]
                del block_mask
            except Exception as exc:  # a baseline failing (OOM, compile error) must not end the run
                rec[f"{tag}_error"] = f"{type(exc).__name__}: {str(exc)[:200]}"
            torch.cuda.empty_cache()
    del q, k, v, dout, layout
    torch.cuda.empty_cache()
    return rec


def environment(command: str) -> dict:
    import subprocess

    import triton

    try:
        code = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True)
        commit = code.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = ""
    return {
        "command": command,
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "gpu": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "triton": triton.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version(),
        "code": commit,
    }


def render(data: dict, path: Path) -> None:
    env, shape = data["env"], data["shape"]
    lines = [
        "# Block-sparse backward benchmark",
        "",
        f"- command: `{env['command']}`",
        f"- date: {env['date']}; GPU: {env['gpu']}; torch {env['torch']}, triton {env['triton']}, "
        f"CUDA {env['cuda']}, cuDNN {env['cudnn']}" + (f"; code {env['code']}" if env.get("code") else ""),
        f"- shape: B=1, {shape['heads']} query heads, {shape['kv_heads']} kv heads, head dim {shape['head_dim']}, "
        f"{shape['dtype']}; times are do_bench medians in ms (gradients reset between calls)",
        "- `bwd` is the backward alone (the forward's output and lse given), `fwd+bwd` both; speedups are the "
        "baseline's time over ours, same run; dense baselines run causal attention; Flex `pred` builds its "
        "block mask as its users write it (`create_block_mask(pattern.to_mask_mod(L, L), ..., _compile=True)`, "
        "`harness.flex_as_written`, default tiles), Flex `layout` is "
        "`layout.to_flex()`, the identical mask; `peak` is the peak memory of one forward + backward above the "
        "inputs, `io` the size of q, k, v, o and their gradients",
        "- vertical_slash is estimated once from structured q/k (harness.structured_qkv) and is a "
        "constant for the gradient; its estimation is not timed here",
        "",
        "## Correctness (gradients vs fp64 autograd through the oracle, derived tolerance)",
        "",
        "| pattern | length | ours ok | ours max err dq/dk/dv | tolerance | Flex (layout) ok | Flex (as written) ok |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, c in data["checks"].items():
        errs = "/".join(f"{e:.1e}" for e in c.get("ours_grad_err", []))
        tol = "/".join(f"{e:.1e}" for e in c.get("grad_atol", []))
        flex_ok, written_ok = (
            {True: "yes", False: "NO"}.get(c.get(f"{tag}_grad_ok"), c.get(f"{tag}_check_error", "—"))
            for tag in ("flex", "flex_predicate")
        )
        lines.append(
            f"| {name} | {c['check_len']} | {'yes' if c['ours_grad_ok'] else 'NO'} | {errs} | {tol} | {flex_ok} "
            f"| {written_ok} |"
        )
    lines += [
        "",
        "## Dense baselines (causal)",
        "",
        "| length | cuDNN bwd | cuDNN fwd+bwd | cuDNN peak MiB | flash bwd | flash fwd+bwd | flash peak MiB |",
        "|---|---|---|---|---|---|---|",
    ]
    nan = float("nan")
    for length, d in sorted(data["dense"].items(), key=lambda kv: int(kv[0])):
        lines.append(
            f"| {length} | {d.get('cudnn_bwd_ms', nan):.3f} | {d.get('cudnn_fwd_bwd_ms', nan):.3f} | "
            f"{d.get('cudnn_peak_mib', nan):.0f} | {d.get('flash_bwd_ms', nan):.3f} | "
            f"{d.get('flash_fwd_bwd_ms', nan):.3f} | {d.get('flash_peak_mib', nan):.0f} |"
        )
    lines += [
        "",
        "## Patterns",
        "",
        "| pattern | length | tiles | pairs/causal | ours fwd | ours bwd | ours fwd+bwd | bwd TFLOP/s | bwd vs cuDNN "
        "| fwd+bwd vs cuDNN | Flex pred bwd | vs Flex pred | Flex layout bwd | vs Flex layout | fwd+bwd vs Flex layout "
        "| ours peak MiB | io MiB | Flex layout peak MiB |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in data["records"]:

        def f(key, fmt="{:.3f}", r=r):
            return fmt.format(r[key]) if key in r else "—"

        lines.append(
            f"| {r['pattern']} | {r['length']} | {'x'.join(map(str, r['block']))} | {r['pairs_fraction_of_causal']:.4f} "
            f"| {r['ours_fwd_ms']:.3f} | {r['ours_bwd_ms']:.3f} | {r['ours_fwd_bwd_ms']:.3f} | {r['ours_bwd_tflops']:.0f} "
            f"| {f('bwd_vs_cudnn_dense', '{:.2f}x')} | {f('fwd_bwd_vs_cudnn_dense', '{:.2f}x')} "
            f"| {f('flex_predicate_bwd_ms')} | {f('bwd_vs_flex_predicate', '{:.2f}x')} "
            f"| {f('flex_layout_bwd_ms')} | {f('bwd_vs_flex_layout', '{:.2f}x')} | {f('fwd_bwd_vs_flex_layout', '{:.2f}x')} "
            f"| {r['ours_peak_mib']:.0f} | {r['io_mib']:.0f} | {f('flex_layout_peak_mib', '{:.0f}')} |"
        )
    errors = [
        (r["pattern"], r["length"], key, val)
        for r in data["records"]
        for key, val in r.items()
        if key.endswith("_error")
    ]
    if errors:
        lines += ["", "## Baseline errors", ""] + [f"- {p} {n} {key}: {val}" for p, n, key, val in errors]
    path.write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    stamp = f"{datetime.datetime.now():%Y-%m-%d_%H-%M-%S}"
    # A fresh folder by default; --out experiments/results (or $OUT) updates committed results explicitly.
    parser.add_argument("--out", default=os.environ.get("OUT") or f"outputs/bench_backward/{stamp}")
    parser.add_argument("--tag", default="", help="suffix of the output files (backward_bench<_tag>.json)")
    parser.add_argument("--lengths", type=int, nargs="+", default=[8192, 32768, 131072])
    parser.add_argument("--patterns", nargs="+", default=list(PATTERN_NAMES), choices=PATTERN_NAMES)
    parser.add_argument("--heads", type=int, default=32)
    parser.add_argument("--kv-heads", type=int, default=8)
    parser.add_argument("--head-dim", type=int, default=128)
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--check-len", type=int, default=2048, help="length of the gradient check (0: skip)")
    parser.add_argument("--flex-max-len", type=int, default=131072)
    parser.add_argument("--skip-flex", action="store_true")
    args = parser.parse_args()

    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = "backward_bench" + (f"_{args.tag}" if args.tag else "")
    from sparseattn.eval.provenance import portable

    command = portable(" ".join(["python", "experiments/bench_backward.py", *sys.argv[1:]]))
    shape = {"heads": args.heads, "kv_heads": args.kv_heads, "head_dim": args.head_dim, "dtype": args.dtype}
    data: dict = {"env": environment(command), "shape": shape, "checks": {}, "dense": {}, "records": []}
    # Flex recompiles per length and per block-mask shape; the default limit (8) would drop it to eager.
    torch._dynamo.config.recompile_limit = 64

    def save() -> None:
        (out_dir / f"{stem}.json").write_text(json.dumps(data, indent=1))
        render(data, out_dir / f"{stem}.md")

    if args.check_len:
        for name in args.patterns:
            try:
                data["checks"][name] = check = check_gradients(args, name)
                log(
                    f"check {name:15s} ours ok={check['ours_grad_ok']} err={check['ours_grad_err']} "
                    f"flex ok={check.get('flex_grad_ok', check.get('flex_check_error'))}"
                )
            except Exception:
                log(f"check {name} failed:\n{traceback.format_exc()}")
            save()
    for length in args.lengths:
        data["dense"][str(length)] = dense = dense_baselines(args, length)
        save()
        for name in args.patterns:
            try:
                rec = run_case(args, name, length, dense)
            except torch.OutOfMemoryError as exc:
                log(f"{name} L={length}: out of memory ({str(exc)[:120]})")
                torch.cuda.empty_cache()
                continue
            data["records"].append(rec)
            save()
            nan = math.nan
            log(
                f"{name:15s} L={length:7d} ours fwd={rec['ours_fwd_ms']:.3f} bwd={rec['ours_bwd_ms']:.3f} "
                f"fwd+bwd={rec['ours_fwd_bwd_ms']:.3f} x_cudnn_bwd={rec.get('bwd_vs_cudnn_dense', nan):.2f} "
                f"flex_pred_bwd={rec.get('flex_predicate_bwd_ms', nan):.3f} flex_layout_bwd={rec.get('flex_layout_bwd_ms', nan):.3f} "
                f"peak={rec['ours_peak_mib']:.0f}MiB io={rec['io_mib']:.0f}MiB"
            )
    save()


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
