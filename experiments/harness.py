"""What the experiments share, the apps in ``experiments/`` and the scripts in ``experiments/investigations/``.

- The kernel benchmark's shape (Llama-3.1-8B: B=1, 32 query heads, 8 kv heads, head dim 128, bf16): its
  inputs, the layout the default launch runs, the cuDNN baseline, a correctness check against the fp32
  reference, TFLOP/s over computed tiles, timing in rounds, variant tables.
- Dynamic patterns: structured synthetic q/k (`structured_qkv`) and the dynamic benchmark itself
  (`measure_dynamic`, which ``bench_dynamic.py`` runs alone and ``bench_kernel.py`` beside the kernel's).
- The peers: FlexAttention as its users write it (`flex_as_written`, `flex_attend`) and the authors'
  kernels staged into ``.peers/`` by ``experiments/stage_peers.sh`` (`peer_module`).
- Lowering: wall-time medians (`wall_median`) and the row-segment variants timed per device.
- Layouts rebuilt with every tile FULL or every tile PARTIAL (`remasked`).
- The record of a run: date, GPU, versions and the command line (`run_meta`; commands pass through `sparseattn.eval.provenance.portable`).

The apps import it as ``from harness import ...`` (their folder is on ``sys.path``); the investigations
run with ``PYTHONPATH=experiments``.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import importlib
import json
import platform
import statistics
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import torch
import triton
from torch.nn.attention import SDPBackend, sdpa_kernel
from tqdm import tqdm
from triton.testing import do_bench

from sparseattn.attention import default_block_size, sparse_attention
from sparseattn.estimation import BlockTopK, VerticalSlash
from sparseattn.kernels.attention.config import KernelConfig
from sparseattn.kernels.attention.launch import triton_sparse_attention
from sparseattn.kernels.flex import flex_sparse_attention
from sparseattn.kernels.reference import reference_attention
from sparseattn.layout import BlockLayout
from sparseattn.lowering import lower
from sparseattn.patterns import Pattern
from sparseattn.testing.dynamic_reference import reference_vertical_slash
from sparseattn.testing.tolerance import assert_close_to_oracle

EXPERIMENTS = Path(__file__).resolve().parent
RESULTS = EXPERIMENTS / "results"
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
    ``script`` (the ``__file__`` of ``<stem>.py``): ``title``, how it was run, ``caption``, then the `variant_table`; print the
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
    """Date, GPU, versions and the command line of a run of ``script`` (its ``__file__``), its output
    folder written as $OUT."""
    path = Path(script).resolve()
    prefix = "" if path.parent == EXPERIMENTS else "PYTHONPATH=experiments "
    return {
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "gpu": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "triton": triton.__version__,
        "host": platform.node(),
        "command": f"{prefix}python {path.relative_to(EXPERIMENTS.parent)} "
        + " ".join("$OUT" if a == str(out) else a for a in sys.argv[1:]),
    }


def run_line(meta: dict) -> str:
    """The Markdown line that says how and where a result was measured."""
    return f"`{meta['command']}` — {meta['date']}, {meta['gpu']}, torch {meta['torch']}, triton {meta['triton']}."


def write_json(out: Path, stem: str, meta: dict, rows: list[dict]) -> None:
    """``out/stem.json`` with the run's record and its rows."""
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))


def remasked(layout: BlockLayout, as_full: bool) -> BlockLayout:
    """The same tiles, all FULL (``as_full``) or all PARTIAL (FULL tiles on an all-ones bitmap)."""
    parts = []
    b, h, qb, slot = layout.full_entries()
    kv = layout.full_kv_indices[slot].long()
    parts.append((b, h, qb, kv, torch.zeros_like(kv)))
    b, h, qb, slot = layout.partial_entries()
    parts.append((b, h, qb, layout.kv_indices[slot].long(), layout.kv_mask_ids[slot].long() + 1))
    b, h, qb, kv, mask_id = (torch.cat(x) for x in zip(*parts, strict=True))
    ones = torch.full((1, layout.block_m, layout.block_n // 32), -1, dtype=torch.int32, device=layout.device)
    return BlockLayout.from_tiles(
        q_len=layout.q_len,
        kv_len=layout.kv_len,
        block_size=layout.block_size,
        lead_shape=(layout.batch_size, layout.num_heads),
        batch=b,
        head=h,
        q_block=qb,
        kv_block=kv,
        is_full=torch.full_like(b, as_full, dtype=torch.bool),
        mask_id=mask_id,
        tile_masks=torch.cat([ones, layout.tile_masks]),
    )


def sync(device: str) -> None:
    """Wait for ``device``'s queue to drain (nothing to wait for on the CPU)."""
    if device == "cuda":
        torch.cuda.synchronize()


def wall_median(step, device: str, repeats: int) -> tuple[float, object]:
    """Median wall time in ms of ``step()``, the device drained before and after each call."""
    times, result = [], None
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        result = step()
        sync(device)
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times), result


# The row-segment variants timed per device, the device's default first: (column, `lower` options).
LOWERING_VARIANTS = {
    "cuda": [
        ("triton program", {}),
        ("torch program", {"intervals": True, "triton": False}),
        ("own methods", {"intervals": False}),
    ],
    "cpu": [("own methods", {}), ("torch program", {"intervals": True})],
}


# Our dynamic layouts use 64 x 64 tiles; compiled Flex must be told to tile the same way.
FLEX_64 = {"BLOCK_M": 64, "BLOCK_N": 64}
# The Flex (as written) cell of a pattern without an analytic predicate (`Pattern.to_mask_mod`).
LAYOUT_PATH = "n/a (layout path)"


@functools.cache
def _compiled_flex_api() -> tuple[Callable, Callable]:
    """``create_block_mask(..., _compile=True)`` and ``torch.compile(flex_attention)``, once per process.

    flex_attention compiled with ``dynamic=False`` as PyTorch's examples do; create_block_mask through its
    own ``_compile=True``, as PyTorch advises for long sequences: eager, it materialises the whole q x kv
    mask, and wrapped in ``torch.compile`` it still did for a per-head mask_mod (512 GiB asked for the
    32-head mixture at 128K on an H100), which ``_compile=True`` builds (experiments/bench_backward.py)."""
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    return functools.partial(create_block_mask, _compile=True), torch.compile(flex_attention, dynamic=False)


def flex_as_written(pattern: Pattern, q_len: int, kv_len: int, batch: int, device: str = "cuda") -> Callable:
    """How a FlexAttention user builds ``pattern``'s block mask: a builder of
    ``create_block_mask(pattern.to_mask_mod(q_len, kv_len), batch, H, q_len, kv_len, device=device)``
    with ``H = pattern.num_heads`` (None when the pattern is head-independent), Flex's default 128 x 128
    blocks. The mask_mod is built once, so repeated builds reuse one compiled graph. Raises
    `NotImplementedError` for a pattern without an analytic predicate (`LAYOUT_PATH`)."""
    mask_mod = pattern.to_mask_mod(q_len, kv_len)
    create_block_mask = _compiled_flex_api()[0]
    return lambda: create_block_mask(mask_mod, batch, pattern.num_heads, q_len, kv_len, device=device)


def flex_attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, block_mask, kernel_options=None) -> torch.Tensor:
    """Compiled ``flex_attention(q, k, v, block_mask=block_mask, enable_gqa=True)`` as its users call it:
    the output only, Flex's default tiles unless ``kernel_options`` are given."""
    return _compiled_flex_api()[1](q, k, v, block_mask=block_mask, enable_gqa=True, kernel_options=kernel_options)


PEERS = EXPERIMENTS.parent / ".peers"


def peer_module(name: str) -> tuple[ModuleType | None, str]:
    """The authors' module ``name`` (e.g. ``minference.ops.streaming_kernel``) from ``.peers/``, where
    ``experiments/stage_peers.sh`` copies MInference's kernels, with where it came from; or None and why
    not (not staged, MInference's CUDA extension missing, or an import failing on this Triton)."""
    if not (PEERS / "minference").is_dir():
        return None, "absent (.peers/ not staged: experiments/stage_peers.sh)"
    if str(PEERS) not in sys.path:
        sys.path.insert(0, str(PEERS))
    try:
        module = importlib.import_module(name)
    except Exception as exc:
        if getattr(exc, "name", None) == "minference.cuda":
            return None, "absent: needs MInference's CUDA extension (minference.cuda)"
        return None, f"fails to import on triton {triton.__version__}: {type(exc).__name__}: {str(exc)[:200]}"
    source = (PEERS / "SOURCE").read_text().strip() if (PEERS / "SOURCE").exists() else "source unrecorded"
    return module, f"{name} ({source})"


def structured_qkv(heads, kv_heads, length, dim, seed=0, device="cuda", dtype=torch.bfloat16):
    """q, k, v shaped like a long-context LLM's: keys and queries share one direction per kv head, rotated
    by position like RoPE (scores depend on relative position: slashes), plus heavy sink keys (verticals).
    Random q/k alone give near-uniform attention, hence a near-dense vertical-slash estimate."""
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


def authors_vertical_slash(module: ModuleType, vs: VerticalSlash, q, k, v, *, check, timed, checks: dict) -> None:
    """MInference's vertical-slash kernel (``module._triton_mixed_sparse_attention``) on ``vs``'s lines,
    checked against ours on the identical mask (``form="minference"``), then both timed, and the index
    arrays apart (ours standing in for MInference's CUDA builder)."""
    from minference_indexes import convert_vertical_slash_indexes

    n, dim, group = q.shape[2], q.shape[3], q.shape[1] // k.shape[1]
    lines = dataclasses.replace(vs, form="minference").estimate(q, k)
    if bool((lines.vertical >= n).any()) or bool((lines.slash >= n).any()):
        raise ValueError("vs: MInference's kernel takes equal budgets for every head (no padded lines)")
    layout = lower(lines, n, n)
    # MInference's kernel reads one K/V head per query head: its own forward repeats a GQA model's kv heads.
    k_rep, v_rep = k.repeat_interleave(group, 1), v.repeat_interleave(group, 1)
    seqlens = torch.tensor([n], dtype=torch.int32, device=q.device)
    v_idx, s_idx = lines.vertical.int()[None], lines.slash.flip(-1).int()[None]  # ascending, descending

    def arrays():
        return convert_vertical_slash_indexes(seqlens, v_idx, s_idx, n, 64, 64)

    built = arrays()

    def authors():
        return module._triton_mixed_sparse_attention(q, k_rep, v_rep, seqlens, *built, dim**-0.5, 64, 64)

    def equals_ours():
        # MInference's kernel rounds q * scale * log2(e) to q's dtype before its dot products; on these
        # inputs that rounding alone moves a bf16 output by up to 0.036 at 4K (fp32 oracle, dense causal;
        # investigations/authors_q_rounding.py), beyond any accumulation-order tolerance. So ours is given
        # the same rounded q, with the scale that turns its base-2 logits back into natural ones: then the
        # two kernels compute the same pairs from the same operands and differ by accumulation order only.
        log2e = 1.44269504
        rounded = (q * (dim**-0.5 * log2e)).to(q.dtype)
        ours, _ = triton_sparse_attention(rounded, k, v, layout, scale=1.0 / log2e)
        theirs = authors().float()
        err = (theirs - ours.float()).abs().max().item()
        raw = (theirs - triton_sparse_attention(q, k, v, layout)[0].float()).abs().max().item()
        checks["authors_vertical_slash_max_diff_unrounded_q"] = f"{raw:.3g}"
        assert err < 2e-2, f"max |MInference - ours| = {err:.3g} on the identical mask and the same rounded q"

    check("authors_vertical_slash_equals_ours", equals_ours)
    if checks["authors_vertical_slash_equals_ours"] == "pass":
        timed("vertical_slash_authors_index_arrays", arrays)
        timed("vertical_slash_authors_kernel", authors)
        timed("vertical_slash_minference_form_triton", lambda: triton_sparse_attention(q, k, v, layout))


def measure_dynamic(length: int, out: Path, *, skip_flex: bool, command: str) -> dict:
    """Run the checks and timings at ``length`` tokens, write ``dynamic_bench.json`` and ``.md`` to ``out``."""
    heads, kv_heads, dim, n = 32, 8, 128, length
    result = {
        "command": command,
        "date": dt.datetime.now().isoformat(timespec="seconds"),
        "gpu": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "triton": triton.__version__,
        "shape": {"batch": 1, "heads": heads, "kv_heads": kv_heads, "seq_len": n, "head_dim": dim, "dtype": "bfloat16"},
        "checks": {},
        "timings_ms": {},
        "layouts": {},
        # FlexAttention as its users write it (create_block_mask on the pattern's own mask_mod): an estimated
        # pattern has no analytic predicate, so only the identical-layout figure ({tag}_flex) exists.
        "flex_as_written": {},
        "authors": {},
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
            try:
                build = flex_as_written(concrete, n, n, 1)
            except NotImplementedError:
                result["flex_as_written"][tag] = LAYOUT_PATH
            else:
                block_mask = build()
                timed(f"{tag}_flex_as_written", lambda mask=block_mask: flex_attend(q, k, v, mask), warmup=2, rep=20)
                result["flex_as_written"][tag] = f"{tag}_flex_as_written"
                del block_mask
            print(f"{tag} Flex (as written): {result['flex_as_written'][tag]}", flush=True)
        if times.get(f"{tag}_triton") and times.get(f"{tag}_estimate_and_lower"):
            result[f"{tag}_overhead_fraction"] = times[f"{tag}_estimate_and_lower"] / times[f"{tag}_triton"]
        if times.get(f"{tag}_triton") and times.get(f"{tag}_end_to_end"):
            result[f"{tag}_end_to_end_overhead_fraction"] = times[f"{tag}_end_to_end"] / times[f"{tag}_triton"] - 1
        del layout, concrete
        torch.cuda.empty_cache()

    # The authors' vertical-slash kernel: MInference's Triton kernel on MInference's index arrays.
    module, why = peer_module("minference.ops.pit_sparse_flash_attention_v2")
    result["authors"]["vertical_slash"] = why
    if module is not None:
        result["authors"]["vertical_slash"] += (
            "; its CUDA index builder is not built here: the arrays come from experiments/minference_indexes.py"
            " (vertical_slash_authors_index_arrays), its kernel is vertical_slash_authors_kernel, beside ours on"
            " the identical mask (vertical_slash_minference_form_triton)"
        )
        authors_vertical_slash(module, vs, q, k, v, check=check, timed=timed, checks=result["checks"])
    print(f"vertical_slash authors' kernel: {result['authors']['vertical_slash']}", flush=True)

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
    lines += [
        "",
        "## Peers",
        "",
        "- Flex (identical layout): `{tag}_flex` below, FlexAttention compiled on `layout.to_flex()` (the estimated "
        "layout's bitmaps, 64 x 64 tiles), its block mask build `{tag}_flex_blockmask_build`",
        "- Flex (as written), `create_block_mask` on the pattern's own `to_mask_mod()`: "
        + ("; ".join(f"{tag} {v}" for tag, v in result["flex_as_written"].items()) or "skipped (--skip-flex)"),
        "- authors' kernels: " + "; ".join(f"{tag} {v}" for tag, v in result["authors"].items()),
    ]
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
