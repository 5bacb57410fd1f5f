"""Dynamic patterns on the GPU at 128K: estimation + lowering overhead against the attention they drive.

One run: correctness checks first (fast estimator == slow reference, Triton/Flex on the estimated layout ==
oracle, no host synchronisation from estimate to attention output), then timings (``triton.testing.do_bench`` medians):
estimate + lower, the shared Triton kernel on the layout, FlexAttention compiled on the identical layout,
and dense cuDNN SDPA. Writes ``dynamic_bench.json`` and ``.md`` to ``--out``.

Inputs are synthetic but structured like a long-context LLM (random q/k alone give near-uniform attention,
hence a near-dense vertical-slash estimate): keys and queries share one direction per kv head, rotated by
position like RoPE, so scores depend on relative position (slashes), plus a few heavy sink keys (verticals).

    PYTHONPATH=$PWD python experiments/bench_dynamic.py --out experiments/results
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import time
import traceback
from pathlib import Path

import torch

from sparseattn.lowering import lower

# Our dynamic layouts use 64 x 64 tiles; compiled Flex must be told to tile the same way.
FLEX_64 = {"BLOCK_M": 64, "BLOCK_N": 64}


def structured_qkv(heads, kv_heads, length, dim, seed=0, device="cuda", dtype=torch.bfloat16):
    gen = torch.Generator(device=device).manual_seed(seed)
    pos = torch.arange(length, device=device, dtype=torch.float32)
    freqs = 500000.0 ** (-torch.arange(0, dim, 2, device=device, dtype=torch.float32) / dim)
    angle = pos[:, None] * freqs[None, :]  # [S, D/2]
    cos, sin = angle.cos(), angle.sin()

    def rope(x):
        a, b = x[..., 0::2], x[..., 1::2]
        return torch.stack([a * cos - b * sin, a * sin + b * cos], -1).flatten(-2)

    u = torch.randn(1, kv_heads, 1, dim, device=device, generator=gen)
    k = rope(u + 0.7 * torch.randn(1, kv_heads, length, dim, device=device, generator=gen))
    k[:, :, :4] *= 4.0  # attention sinks
    group = heads // kv_heads
    q = rope(0.8 * u.repeat_interleave(group, 1) + torch.randn(1, heads, length, dim, device=device, generator=gen))
    v = torch.randn(1, kv_heads, length, dim, device=device, generator=gen)
    return q.to(dtype), k.to(dtype), v.to(dtype)


def portable(command: str) -> str:
    """``command`` with the output folder written as ``$OUT`` when it came from that variable."""
    out = os.environ.get("OUT")
    return command.replace(out, "$OUT") if out else command


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--length", type=int, default=131072)
    parser.add_argument("--out", default="experiments/results")
    parser.add_argument("--skip-flex", action="store_true")
    args = parser.parse_args()
    command = portable(" ".join(["python", "experiments/bench_dynamic.py", *sys.argv[1:]]))
    measure(args.length, Path(os.environ.get("OUT") or args.out), skip_flex=args.skip_flex, command=command)


def measure(length: int, out: Path, *, skip_flex: bool, command: str) -> dict:
    """Run the checks and timings at ``length`` tokens, write ``dynamic_bench.json`` and ``.md`` to ``out``."""
    import triton
    from triton.testing import do_bench

    from sparseattn.attention import sparse_attention
    from sparseattn.estimation import BlockTopK, VerticalSlash
    from sparseattn.kernels.attention.launch import triton_sparse_attention
    from sparseattn.kernels.flex import flex_sparse_attention
    from sparseattn.testing.dynamic_reference import reference_vertical_slash
    from sparseattn.testing.tolerance import assert_close_to_oracle

    heads, kv_heads, dim, n = 32, 8, 128, length
    result = {
        "command": command,
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "gpu": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "triton": triton.__version__,
        "shape": {"batch": 1, "heads": heads, "kv_heads": kv_heads, "seq_len": n, "head_dim": dim, "dtype": "bfloat16"},
        "checks": {},
        "timings_ms": {},
        "layouts": {},
    }
    vs = VerticalSlash(vertical=512, slash=2048)
    bt = BlockTopK(topk=64)

    def check(name, fn):
        try:
            fn()
            result["checks"][name] = "pass"
        except Exception as exc:  # recorded, the run goes on
            result["checks"][name] = f"FAIL: {type(exc).__name__}: {str(exc)[:300]}"
            traceback.print_exc()
        print(f"check {name}: {result['checks'][name]}", flush=True)

    # ---------------------------------------------------------------- correctness
    def estimator_matches_reference():
        q, k, _ = structured_qkv(4, 2, 1024, 64, seed=1, dtype=torch.float32)
        est = VerticalSlash((40, 60, 35, 50), (120, 200, 101, 150)).estimate(q, k)
        ref_v, ref_s = reference_vertical_slash(q.cpu(), k.cpu(), (40, 60, 35, 50), (120, 200, 101, 150))
        rows = lambda t: [[x for x in r if x < 1 << 62] for r in t.tolist()]
        assert rows(est.vertical) == ref_v and rows(est.slash) == ref_s, "indices differ from the slow reference"

    def kernels_match_oracle():
        q, k, v = structured_qkv(heads, kv_heads, 4096, dim, seed=2)
        for pattern in (vs, bt):
            concrete = pattern.estimate(q, k)
            layout = lower(concrete, 4096, 4096)
            mask = concrete.to_dense(4096, 4096).unsqueeze(0)
            out, lse = sparse_attention(q, k, v, layout, impl="triton", return_lse=True)
            assert_close_to_oracle(out, lse, q, k, v, mask)
            out, lse = flex_sparse_attention(q, k, v, layout, kernel_options=FLEX_64)
            assert_close_to_oracle(out, lse, q, k, v, mask)

    def no_host_sync():
        q, k, v = structured_qkv(heads, kv_heads, 8192, dim, seed=3)
        for pattern in (vs, bt):
            attend = lambda pattern=pattern: triton_sparse_attention(q, k, v, lower(pattern.estimate(q, k), 8192, 8192))
            attend()  # warm caches and allocator
            torch.cuda.synchronize()
            torch.cuda.set_sync_debug_mode("error")
            try:
                attend()
            finally:
                torch.cuda.set_sync_debug_mode("default")

    check("estimator_equals_slow_reference", estimator_matches_reference)
    check("triton_and_flex_equal_oracle_4k", kernels_match_oracle)
    check("no_host_sync_in_estimate_lower_and_attention", no_host_sync)

    # ---------------------------------------------------------------- timings at full size
    q, k, v = structured_qkv(heads, kv_heads, n, dim, seed=0)
    times = result["timings_ms"]

    def timed(name, fn, **kw):
        try:
            times[name] = do_bench(fn, warmup=kw.get("warmup", 5), rep=kw.get("rep", 50), return_mode="median")
        except Exception as exc:
            times[name] = None
            result["checks"][f"timing_{name}"] = f"FAIL: {type(exc).__name__}: {str(exc)[:300]}"
            traceback.print_exc()
        print(f"{name}: {times[name]}", flush=True)

    for tag, pattern in (("vertical_slash", vs), ("block_topk", bt)):
        concrete = pattern.estimate(q, k)
        layout = lower(concrete, n, n)
        full, partial = layout.num_tiles()
        result["layouts"][tag] = {
            "pattern": repr(pattern),
            "density_of_plane": layout.density(),
            "fraction_of_causal": layout.density() * 2 * n / (n + 1),
            "full_tiles": full,
            "partial_tiles": partial,
            "gathered_columns": int(layout.col_num.sum()) if layout.col_num is not None else 0,
        }
        print(tag, result["layouts"][tag], flush=True)
        timed(f"{tag}_estimate", lambda pattern=pattern: pattern.estimate(q, k))
        if tag == "block_topk":  # where estimation goes: pooled scores, then the top-k selection
            timed("block_topk_pooled_scores", lambda: bt.pooled_scores(q, k))
        timed(f"{tag}_lower", lambda concrete=concrete: lower(concrete, n, n))
        timed(f"{tag}_estimate_and_lower", lambda pattern=pattern: lower(pattern.estimate(q, k), n, n))
        timed(f"{tag}_triton", lambda layout=layout: triton_sparse_attention(q, k, v, layout))
        # What a prefill layer pays: estimate, lower and attend on a fresh layout every call.
        timed(
            f"{tag}_end_to_end",
            lambda pattern=pattern: triton_sparse_attention(q, k, v, lower(pattern.estimate(q, k), n, n)),
        )
        if not skip_flex:
            try:
                t0 = time.perf_counter()
                block_mask = layout.to_flex()
                torch.cuda.synchronize()
                result["timings_ms"][f"{tag}_flex_blockmask_build"] = 1e3 * (time.perf_counter() - t0)
                timed(
                    f"{tag}_flex",
                    lambda mask=block_mask: flex_sparse_attention(q, k, v, mask, kernel_options=FLEX_64),
                    warmup=2,
                    rep=20,
                )
                del block_mask
            except Exception as exc:
                result["checks"][f"flex_{tag}"] = f"FAIL: {type(exc).__name__}: {str(exc)[:300]}"
                traceback.print_exc()
        if times.get(f"{tag}_triton") and times.get(f"{tag}_estimate_and_lower"):
            result[f"{tag}_overhead_fraction"] = times[f"{tag}_estimate_and_lower"] / times[f"{tag}_triton"]
        if times.get(f"{tag}_triton") and times.get(f"{tag}_end_to_end"):
            result[f"{tag}_end_to_end_overhead_fraction"] = times[f"{tag}_end_to_end"] / times[f"{tag}_triton"] - 1
        del layout, concrete
        torch.cuda.empty_cache()

    from torch.nn.attention import SDPBackend, sdpa_kernel

    with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
        timed(
            "dense_cudnn_sdpa_causal",
            lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True),
            rep=20,
        )

    out.mkdir(parents=True, exist_ok=True)
    (out / "dynamic_bench.json").write_text(json.dumps(result, indent=2))
    lines = [
        f"# Dynamic patterns at {n} tokens",
        "",
        f"- command: `{result['command']}`",
        f"- date: {result['date']}",
        f"- GPU: {result['gpu']}; torch {result['torch']}; triton {result['triton']}",
        f"- shape: B=1, {heads} q heads, {kv_heads} kv heads, head dim {dim}, bf16; structured synthetic q/k (see script)",
        "",
        "## Checks",
        "",
    ] + [f"- {k}: {v}" for k, v in result["checks"].items()]
    lines += ["", "## Layouts", ""] + [f"- {k}: {json.dumps(v)}" for k, v in result["layouts"].items()]
    lines += ["", "## Timings (median ms)", "", "| what | ms |", "|---|---|"]
    lines += [f"| {k} | {v:.3f} |" if v is not None else f"| {k} | failed |" for k, v in times.items()]
    for tag in ("vertical_slash", "block_topk"):
        if f"{tag}_overhead_fraction" in result:
            lines.append(
                f"\n{tag}: estimate + lower = {100 * result[f'{tag}_overhead_fraction']:.1f}% of the Triton attention time"
            )
        if f"{tag}_end_to_end_overhead_fraction" in result:
            lines.append(
                f"\n{tag}: end to end (estimate, lower, attend on a fresh layout) = attention time "
                f"+ {100 * result[f'{tag}_end_to_end_overhead_fraction']:.1f}%"
            )
    (out / "dynamic_bench.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines[-(len(times) + 6) :]))
    return result


if __name__ == "__main__":
    main()
