"""`triton_sparse_attention_backward`: validates, plans (the layout's kv-major view, the dQ kernel's launch
order and the dK/dV kernel's work list, memoised on the layout) and launches the backward kernels of
`triton_bwd.py`.

`BackwardConfig` holds the launch knobs, apart from the kernel bodies as `KernelConfig` is for the
forward.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from triton.tools.tensor_descriptor import TensorDescriptor

from sparseattn.kernels.attention.config import LOG2E
from sparseattn.kernels.attention.launch import _check, _placeholder
from sparseattn.kernels.attention.triton_bwd import (
    _bwd_delta_kernel,
    _bwd_dkdv_kernel,
    _bwd_dkdv_merge_kernel,
    _bwd_dq_kernel,
)
from sparseattn.kernels.planning.dkdv_work import dkdv_work
from sparseattn.kernels.planning.kv_major import dq_order, kv_major
from sparseattn.layout import BlockLayout

_DELTA_ROWS = 64
# Key rows per merge program: compiled for sm_90 (`resources.backward_resources`), 128 rows at head dim 128
# spilled 5 KB per thread; 32 rows (every block_n is a multiple) hold both sums in registers.
_MERGE_ROWS = 32


@dataclass(frozen=True)
class BackwardConfig:
    """Launch knobs of the backward kernels.

    ``sub_m``: query rows the dK/dV kernel takes per step of a tile (divides the layout's ``block_m``);
    ``sub_n``: key columns the dQ kernel takes per step (a multiple of 32 dividing ``block_n``), so a
    128 x 128 layout does not hold a whole tile's scores, both of its operands and a 128-row accumulator
    in registers at once; ``keys``: key columns per dK/dV program (a multiple of 32 dividing ``block_n``:
    a wider key block is split over programs, each holding dK and dV of its slice only). Warps and
    software-pipelining stages per kernel.

    ``key_major``: the dK/dV kernel forms its scores as ``K Q^T`` ([keys, rows]), so that P^T and dS^T
    feed the dV and dK products without transposing a register tile. ``dq_atomic``: dQ is accumulated
    inside the dK/dV kernel (fp32 atomic adds into a zeroed buffer) instead of by its own kernel, which
    saves the dQ kernel's recomputation of the scores and dP (two of its three products) at the price of
    determinism: the adds land in any order, so dQ may differ in its last bits between runs (dK and dV
    stay deterministic). ``tma``: the rows each step walks (Q and dO in the dK/dV kernel, K and V of FULL and
    PARTIAL tiles in the dQ kernel) come through tensor descriptors (Hopper's TMA engine) instead of
    pointer arithmetic; the inputs are then made contiguous. ``flat_steps``: the dK/dV kernel walks its
    FULL and PARTIAL tiles as one pipelined loop over (tile, row step) instead of a loop over tiles with
    the ``block_m // sub_m`` row steps unrolled inside, where every unrolled step's Q and dO get their own
    stage buffers (the dQ kernel likewise over (tile, column step), for K and V): shared memory for those loads drops by that factor (key-major at two stages needs
    257 KiB unrolled, `backward_resources_offline.md`), and the pipeline's prefetch distance becomes one
    row step instead of one tile. ``max_chunk``: dK/dV programs longer than this
    many tiles are split by query head and FULL-list slices, summed by a merge kernel
    (`planning/dkdv_work.py`; None: only when programs are unequal, 0: never).
    """

    sub_m: int = 64
    sub_n: int = 64
    keys: int = 64
    dq_warps: int = 4
    dq_stages: int = 2
    dkdv_warps: int = 4
    dkdv_stages: int = 2
    key_major: bool = False
    dq_atomic: bool = False
    tma: bool = False
    flat_steps: bool = False
    max_chunk: int | None = None

    def __post_init__(self) -> None:
        if self.sub_m not in (16, 32, 64, 128):
            raise ValueError(f"sub_m: expected 16, 32, 64 or 128 query rows, got {self.sub_m}")
        if self.sub_n not in (32, 64, 128):
            raise ValueError(f"sub_n: expected 32, 64 or 128 key columns, got {self.sub_n}")
        if self.keys not in (32, 64, 128):
            raise ValueError(f"keys: expected 32, 64 or 128 key columns per program, got {self.keys}")
        for name in ("dq_warps", "dkdv_warps"):
            if getattr(self, name) not in (1, 2, 4, 8, 16):
                raise ValueError(f"{name}: expected a power of two from 1 to 16, got {getattr(self, name)}")
        for name in ("dq_stages", "dkdv_stages"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: expected at least 1, got {getattr(self, name)}")
        if self.max_chunk is not None and (not isinstance(self.max_chunk, int) or self.max_chunk < 0):
            raise ValueError(f"max_chunk: expected None, 0 or a positive number of tiles, got {self.max_chunk!r}")
        for name in ("key_major", "dq_atomic", "tma", "flat_steps"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name}: expected a bool, got {getattr(self, name)!r}")


def default_backward_config(layout: BlockLayout, head_dim: int) -> BackwardConfig:
    """At head dim 128: a dK/dV program holds a whole key block (128 keys), forms its scores key-major and
    walks its tiles as one loop of 64-row steps (``key_major``, ``flat_steps``, ``sub_m=64``); dQ takes 64
    key columns per step; 8 warps each. Measured on an H100 at 32K causal, backward alone
    (`experiments/tune_backward.py`, `experiments/results/backward_tuning_h100_flat.md`): 64.8 ms against
    83.9 ms for the query-major unrolled 32-row steps chosen before, in the same run. Adding dQ by atomics
    inside the dK/dV kernel (``dq_atomic``) gave 61.4 ms, 5% more, at the price of a dQ that differs in its
    last bits between runs: it stays opt-in, so that the default backward is deterministic. TMA loads lost
    (98.1 ms). Head dims up to 64 keep 64-key programs, 32-row steps and 32-column steps, not yet timed.

    Long dK/dV programs are split by the planner's rule (``max_chunk=None``): `Triangle()`'s backward at
    128K went from 42.3 to 22.8 ms on an H100 (its sink key block's program no longer outlasts the rest);
    causal at 32K is never unequal enough to split (never splitting, ``max_chunk=0``, measured the same)."""
    wide = head_dim > 64
    return BackwardConfig(
        sub_m=64 if wide and layout.block_m % 64 == 0 else 32,
        sub_n=64 if wide and layout.block_n % 64 == 0 else 32,
        keys=layout.block_n if wide else min(layout.block_n, 64),
        dq_warps=8,
        dkdv_warps=8,
        key_major=wide,
        flat_steps=wide,
        max_chunk=None,
    )


def _new_grads(q: Tensor, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Uninitialised dq, dk, dv and Delta (tests replace this to poison them with NaN)."""
    return (
        torch.empty_like(q, memory_format=torch.contiguous_format),
        torch.empty_like(k, memory_format=torch.contiguous_format),
        torch.empty_like(v, memory_format=torch.contiguous_format),
        torch.empty(q.shape[:3], dtype=torch.float32, device=q.device),
    )


def triton_sparse_attention_backward(
    dout: Tensor,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    out: Tensor,
    lse: Tensor,
    layout: BlockLayout,
    *,
    scale: float | None = None,
    config: BackwardConfig | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Gradients of block-sparse attention on ``layout`` with respect to q, k and v.

    ``q`` [B, Hq, q_len, D], ``k, v`` [B, Hkv, kv_len, D] (GQA when Hkv divides Hq), ``out`` and ``dout``
    [B, Hq, q_len, D] (the forward's output and its gradient), ``lse`` [B, Hq, q_len] (the forward's
    natural-log row sums, ``-inf`` on rows with nothing to attend). Returns ``(dq, dk, dv)`` in the inputs'
    dtype and shapes; rows and keys the layout never pairs get exact zeros. Deterministic unless
    ``config.dq_atomic``: dK and dV of a kv head are summed over its query heads in a fixed order, no
    atomics.
    """
    _check(q, k, v, layout)
    plan = backward_launches(dout, q, k, v, out, lse, layout, scale=scale, config=config)
    for launch in plan.launches:
        launch.kernel[launch.grid](*launch.args, **launch.options)
    if plan.dq_sink is not plan.dq:
        plan.dq.copy_(plan.dq_sink)
    return plan.dq, plan.dk, plan.dv


@dataclass(frozen=True)
class Launch:
    """One kernel launch: ``kernel[grid](*args, **options)`` (options: its constexprs and ``num_warps``)."""

    kernel: Any
    grid: tuple[int, ...]
    args: tuple[Any, ...]
    options: dict[str, Any]


@dataclass(frozen=True)
class BackwardPlan:
    """The gradient buffers and the launches that fill them, in order; with ``dq_atomic`` dQ is summed into
    ``dq_sink`` (fp32), which is then copied into ``dq``."""

    dq: Tensor
    dk: Tensor
    dv: Tensor
    dq_sink: Tensor
    launches: tuple[Launch, ...]


def backward_launches(
    dout: Tensor,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    out: Tensor,
    lse: Tensor,
    layout: BlockLayout,
    *,
    scale: float | None = None,
    config: BackwardConfig | None = None,
) -> BackwardPlan:
    """What `triton_sparse_attention_backward` launches, planned but not run: the arguments of every
    kernel, so that they can also be compiled for a GPU on a machine without one
    (`resources.backward_resources`). The caller has checked q, k, v and the layout (`_check`: devices,
    shapes, dtypes, tiles); the gradient's shapes and the config are checked here."""
    batch, heads, q_len, dim = q.shape
    kv_heads = k.shape[1]
    for name, t in (("out", out), ("dout", dout)):
        if t.shape != q.shape:
            raise ValueError(f"{name}: expected the shape of q {tuple(q.shape)}, got {tuple(t.shape)}")
        if t.device != q.device:
            raise ValueError(f"{name}: expected it on {q.device}, got {t.device}")
    if lse.shape != q.shape[:3]:
        raise ValueError(f"lse: expected shape {tuple(q.shape[:3])}, got {tuple(lse.shape)}")
    scale = 1.0 / math.sqrt(dim) if scale is None else float(scale)
    if not scale > 0:
        raise ValueError(f"scale: expected a positive float, got {scale}")
    config = config or default_backward_config(layout, dim)
    if layout.block_m % config.sub_m or layout.block_n % config.sub_n or layout.block_n % config.keys:
        raise ValueError(
            f"config: sub_m={config.sub_m}, sub_n={config.sub_n} and keys={config.keys} must divide "
            f"the layout's tiles {layout.block_size}"
        )
    # Row strides are free, but each row's head_dim must be contiguous (autograd may hand an expanded dout).
    q, k, v, out, dout = (t if t.stride(-1) == 1 else t.contiguous() for t in (q, k, v, out, dout))
    dout = dout.to(q.dtype)
    if config.tma:
        # Descriptors view [B, H, S, D] as [B * H * S, D]: contiguous rows and a 16-byte aligned base.
        q, k, v, dout = (
            t.contiguous() if t.data_ptr() % 16 == 0 else t.clone(memory_format=torch.contiguous_format)
            for t in (q, k, v, dout)
        )
        for name, t in (("q", q), ("k", k)):
            if t.numel() // dim >= 2**31:
                raise ValueError(
                    f"{name}: {tuple(t.shape)} has over 2**31 rows, beyond a tensor descriptor; use tma=False"
                )
        q_desc, do_desc = (TensorDescriptor.from_tensor(t.view(-1, dim), [config.sub_m, dim]) for t in (q, dout))
        k_desc, v_desc = (TensorDescriptor.from_tensor(t.view(-1, dim), [config.sub_n, dim]) for t in (k, v))
    else:
        q_desc, do_desc, k_desc, v_desc = q, dout, k, v  # unread: the pointer path is compiled
    lse = lse.to(torch.float32).contiguous()

    view = kv_major(layout)
    rows = dq_order(layout, batch, heads)
    work = dkdv_work(layout, batch, heads, kv_heads, config.max_chunk)
    dq, dk, dv, delta = _new_grads(q, k, v)
    unused = _placeholder(q.device)

    def arg(t: Tensor | None) -> Tensor:
        return unused if t is None or t.numel() == 0 else t.contiguous()

    launches = [
        Launch(
            _bwd_delta_kernel,
            (-(-q_len // _DELTA_ROWS), batch * heads),
            (
                out, dout, delta,
                out.stride(0), out.stride(1), out.stride(2), dout.stride(0), dout.stride(1), dout.stride(2),
                delta.stride(0), delta.stride(1),
                heads, q_len,
            ),
            dict(BLOCK=_DELTA_ROWS, HEAD_DIM=dim),
        )
    ]  # fmt: skip

    has_cols = layout.col_num is not None
    even_kv = k.shape[2] % layout.block_n == 0
    lead_b, lead_h = layout.batch_size, layout.num_heads
    qkv_strides = (*q.stride()[:3], *k.stride()[:3], *v.stride()[:3], *dout.stride()[:3])
    # With dq_atomic the dK/dV kernel adds each row's share into a zeroed fp32 buffer and dq is its copy.
    dq_sink = torch.zeros(q.shape, dtype=torch.float32, device=q.device) if config.dq_atomic else dq
    if not config.dq_atomic:
        launches.append(Launch(
            _bwd_dq_kernel,
            (rows.numel(),),
            (
                q, k, v, dout, lse, delta, dq, rows, k_desc, v_desc,
                layout.full_kv_num_blocks, layout.full_kv_start, arg(layout.full_kv_indices),
                layout.kv_num_blocks, layout.kv_start, arg(layout.kv_indices), arg(layout.kv_mask_ids),
                arg(layout.tile_masks), arg(layout.col_num), arg(layout.col_start), arg(layout.col_indices),
                *qkv_strides, *dq.stride()[:3], lse.stride(0), lse.stride(1),
                q_len, k.shape[2], heads, heads // kv_heads, lead_b, lead_h, layout.num_q_blocks, scale * LOG2E,
                scale,
            ),
            dict(
                BLOCK_M=layout.block_m, BLOCK_N=layout.block_n, SUB_N=config.sub_n, HEAD_DIM=dim, EVEN_KV=even_kv,
                HAS_COLS=has_cols, NUM_STAGES=config.dq_stages, USE_TMA=config.tma, FLAT_STEPS=config.flat_steps,
                num_warps=config.dq_warps,
            ),
        ))  # fmt: skip
    parts = layout.block_n // config.keys
    # Split programs' fp32 shares, [slots, block_n, dim] each for dK and dV.
    dk_part, dv_part = (
        (torch.empty(work.num_slots, layout.block_n, dim, dtype=torch.float32, device=q.device) for _ in range(2))
        if work.num_slots
        else (unused, unused)
    )
    launches.append(Launch(
        _bwd_dkdv_kernel,
        (work.items.shape[0] * parts,),
        (
            q, k, v, dout, lse, delta, dk, dv, dq_sink, work.items, dk_part, dv_part, q_desc, do_desc,
            view.full_q_num, view.full_q_start, arg(view.full_q_indices),
            view.part_q_num, view.part_q_start, arg(view.part_q_indices), arg(view.part_mask_ids),
            arg(layout.tile_masks), view.col_q_num, view.col_q_start, arg(view.col_q_indices), arg(view.col_slot),
            arg(view.col_count), arg(layout.col_indices),
            *qkv_strides, *dk.stride()[:3], *dv.stride()[:3], lse.stride(0), lse.stride(1), *dq_sink.stride()[:3],
            q_len, k.shape[2], kv_heads, heads // kv_heads, lead_b, lead_h, layout.num_kv_blocks, scale * LOG2E,
            scale,
        ),
        dict(
            BLOCK_M=layout.block_m, BLOCK_N=layout.block_n, SUB_M=config.sub_m, KEYS=config.keys, HEAD_DIM=dim,
            EVEN_KV=even_kv, HAS_COLS=has_cols, NUM_STAGES=config.dkdv_stages, KEY_MAJOR=config.key_major,
            DQ_ATOMIC=config.dq_atomic, USE_TMA=config.tma, FLAT_STEPS=config.flat_steps, num_warps=config.dkdv_warps,
        ),
    ))  # fmt: skip
    if work.merges.shape[0]:
        launches.append(Launch(
            _bwd_dkdv_merge_kernel,
            (work.merges.shape[0], layout.block_n // _MERGE_ROWS),
            (
                dk, dv, dk_part, dv_part, work.merges,
                *dk.stride()[:3], *dv.stride()[:3],
                k.shape[2], kv_heads, layout.num_kv_blocks, scale,
            ),
            dict(BLOCK_N=layout.block_n, KEYS=_MERGE_ROWS, HEAD_DIM=dim, num_warps=4),
        ))  # fmt: skip
    return BackwardPlan(dq, dk, dv, dq_sink, tuple(launches))
