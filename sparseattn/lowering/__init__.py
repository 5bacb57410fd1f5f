"""Analytic lowering of a `Pattern` to a `BlockLayout`, never through the q x kv mask.

1. Vertical lines written as ``Causal() & Columns(...)`` inside a top-level union are split off and
   gathered column by column where no computed tile covers them (``gathered.py``).
2. An expression over the interval primitives is compiled so that each question is answered for all
   its terms at once (``intervals.py``): far fewer device operations, the same layout.
3. On CUDA a compiled program is lowered by row segments in three Triton kernels that run its
   expression as straight-line code (``by_program.py``): a few dozen launches in all.
4. The rest is lowered by row segments (``by_segments.py``) when the pattern gives its `row_breaks`:
   one classification per run of equal tiles on the host, FULL runs expanded on the device. Otherwise
   tile by tile (``by_tiles.py``): candidate tiles from ``pattern.support`` (a superset of the
   non-empty tiles), sorted by ``pattern.classify`` into EMPTY / PARTIAL / FULL.
5. Either way, PARTIAL tiles are grouped by ``pattern.tile_key`` and one bitmap is evaluated per group
   from the token truth, then bitmaps are deduplicated by content.

All paths give the same layout; the per-tile path is the segment path's oracle in the tests, and the
segment path on the same program the Triton path's.
"""

from __future__ import annotations

import warnings

import torch

from sparseattn.kernels.interpreter import check_kernel_device
from sparseattn.layout import BlockLayout, block_shape
from sparseattn.lowering.by_segments import lower_by_segments
from sparseattn.lowering.by_tiles import lower_by_tiles
from sparseattn.lowering.gathered import split_gathered
from sparseattn.lowering.intervals import compile_intervals
from sparseattn.patterns.base import Pattern
from sparseattn.patterns.per_head import PerHead
from sparseattn.patterns.tiles import MaskContext

__all__ = ["lower", "split_gathered"]


def lower(
    pattern: Pattern,
    q_len: int,
    kv_len: int | None = None,
    *,
    block_size: int | tuple[int, int] | None = None,
    num_heads: int | None = None,
    device: torch.device | str | None = None,
    gather_columns: bool = True,
    by_segments: bool = True,
    intervals: bool | None = None,
    triton: bool | None = None,
    prompt_len: int | None = None,
) -> BlockLayout:
    """Lower ``pattern`` for ``q_len`` queries against ``kv_len`` keys (default ``q_len``).

    ``prompt_len`` is the whole prompt's length when the queries are a chunk that the prompt continues
    past (chunked prefill; `MaskContext.prompt_len`): `LastQueries` then counts from the prompt's end.

    ``block_size`` (an int means a square tile) defaults to the pattern's `Pattern.native_block_size` (an
    estimate's tiles) or 64 x 64;
    a pattern defined on its own tiles refuses others. A pattern that builds its own layout
    (`Pattern.own_layout`) is asked first, unless ``by_segments=False``.

    The layout broadcasts over heads (head dimension 1) unless the pattern depends on the head, in
    which case it has one entry per head (``num_heads`` is checked against the pattern's own count).
    ``by_segments=False`` forces the per-tile path from the token truth (the oracle of the default one
    and of a pattern's own layout, which it skips). ``intervals`` picks,
    for the segment path, between the compiled program (True) and the patterns' own methods (False);
    the default takes the program on GPUs only. It trades work for operations: a GPU pays host time
    per operation and little per element, while on the CPU the same lowerings ran slower through the
    program than through the patterns (measured: the README's lowering section). ``triton``
    evaluates the program in Triton kernels (``by_program.py``) instead of torch operations; the
    default takes them on CUDA, and elsewhere they need ``TRITON_INTERPRET=1`` (tests).
    """
    if not isinstance(pattern, Pattern):
        raise ValueError(f"pattern: expected a Pattern, got {type(pattern).__name__}")
    kv_len = q_len if kv_len is None else kv_len
    if prompt_len is not None and prompt_len < kv_len:
        raise ValueError(f"prompt_len: expected None or at least kv_len={kv_len}, got {prompt_len}")
    native = pattern.native_block_size
    if block_size is None:
        block_size = native or (64, 64)
    block_size = block_shape(block_size)
    if native is not None and block_size != native:
        raise ValueError(
            f"block_size: {type(pattern).__name__} is defined on {native} tiles, got {block_size}; "
            f"lower with block_size={native} or None"
        )
    bm, bn = block_size
    if bm < 1 or bn < 32 or bn % 32:
        raise ValueError(f"block_size: expected (block_m >= 1, block_n a positive multiple of 32), got {block_size}")
    pattern._resolve_heads(num_heads)
    own = (
        pattern.own_layout(q_len, kv_len, block_size, None if device is None else torch.device(device))
        if by_segments
        else None
    )
    if own is not None:
        return own
    device = torch.device(device or "cpu")
    intervals = device.type != "cpu" if intervals is None else intervals
    triton = device.type == "cuda" if triton is None else triton
    if triton:
        check_kernel_device("triton", device, needs="the lowering kernels need a CUDA device")
    options = (gather_columns, by_segments, intervals, triton, prompt_len)
    heads = pattern.num_heads
    if isinstance(pattern, PerHead) and all(p.num_heads is None for p in pattern.patterns):
        # Heads with equal patterns share rows: lower one head per distinct pattern, then point
        # every head at its pattern's rows.
        distinct: dict[Pattern, int] = {}
        group = [distinct.setdefault(p, len(distinct)) for p in pattern.patterns]
        pattern, heads = PerHead(tuple(distinct)), len(distinct)
        core = _lower(pattern, heads, q_len, kv_len, block_size, device, *options)
        return core.select_heads(group)
    return _lower(pattern, heads, q_len, kv_len, block_size, device, *options)


def _lower(
    pattern: Pattern,
    heads: int | None,
    q_len: int,
    kv_len: int,
    block_size: tuple[int, int],
    device: torch.device,
    gather_columns: bool,
    by_segments: bool,
    intervals: bool,
    triton: bool,
    prompt_len: int | None,
) -> BlockLayout:
    ctx = MaskContext(q_len, kv_len, heads or 1, *block_size, device, prompt_len)
    tiled, columns = split_gathered(pattern) if gather_columns else (pattern, [])
    if by_segments and tiled is not None:
        program = compile_intervals(tiled, ctx) if intervals else None
        if program is not None and triton and not columns:
            from sparseattn.lowering.by_program import lower_by_program

            return lower_by_program(program, ctx, heads)
        # The whole pattern's bits come from the program too, unless gathered columns join it.
        whole = program if program is not None and not columns else pattern
        layout = lower_by_segments(whole, program or tiled, columns, ctx, heads)
        if layout is not None:
            return layout
    if by_segments and tiled is not None:
        _warn_if_slow(tiled, ctx, heads)
    return lower_by_tiles(pattern, tiled, columns, ctx, heads)


# Above these sizes the tile-by-tile path of a mask-only pattern takes seconds on a CPU (0.5 s at 2K tokens,
# 3.4 s at 8K, 11 s at 16K for a plain `mask`): more than 4K x 4K token pairs evaluated by the default
# `classify`, or more than 2**20 candidate tiles.
SLOW_TOKEN_PAIRS = 2**24
SLOW_TILES = 2**20
_WARNED: set[type] = set()


def _without_breaks(pattern: Pattern) -> Pattern | None:
    """The first node of ``pattern``'s expression that neither gives `row_breaks` nor combines terms that do."""
    if type(pattern).row_breaks is Pattern.row_breaks:
        return pattern
    children = [getattr(pattern, name) for name in ("terms", "patterns", "term") if hasattr(pattern, name)]
    for child in children:
        for term in child if isinstance(child, tuple) else (child,):
            found = _without_breaks(term) if isinstance(term, Pattern) else None
            if found is not None:
                return found
    return None


def _warn_if_slow(tiled: Pattern, ctx: MaskContext, heads: int | None) -> None:
    """Warn once per pattern type when a mask-only pattern (default `classify`, no `row_breaks`) is
    lowered tile by tile at a size where that is slow."""
    culprit = _without_breaks(tiled)
    if culprit is None or type(culprit) in _WARNED or type(culprit).classify is not Pattern.classify:
        return
    size = tiled.support_size(ctx)
    tiles = size if size is not None else ctx.num_q_blocks * ctx.num_kv_blocks * (heads or 1)
    if tiles <= SLOW_TILES and tiles * ctx.block_m * ctx.block_n <= SLOW_TOKEN_PAIRS:
        return
    _WARNED.add(type(culprit))
    warnings.warn(
        f"{type(culprit).__name__} defines only `mask`: lowering evaluates it tile by tile over {tiles:,} "
        f"candidate {ctx.block_m}x{ctx.block_n} tiles, which is slow (quadratic in the length). Implement "
        "`classify` (tile classes from the parameters) and `row_breaks` (where a row's class may change) "
        "to lower by row segments; see README 'Adding a pattern'",
        stacklevel=4,
    )
