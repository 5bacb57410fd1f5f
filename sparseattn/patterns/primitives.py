"""Token-exact primitive patterns whose tile classes follow analytically from their parameters.

Every primitive here depends on at most one of ``q_pos``, ``k``, ``q_pos - k`` (or block-index
differences), each of which takes every integer value in a range over a rectangular tile; so
`interval_class` gives the exact class of every tile and the keys below identify equal bitmaps.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from sparseattn.patterns.base import MaskMod, Pattern
from sparseattn.patterns.tiles import PARTIAL, MaskContext, Tiles, interval_class

# Keys of tiles on which a pattern is FULL or EMPTY: the bitmap is constant there, whatever the tile.
_CONSTANT_KEY = -(1 << 40)


def partial_key(cls: Tensor, *values: Tensor) -> Tensor:
    """``[n, len(values)]`` key: the values on PARTIAL tiles, a per-class constant elsewhere."""
    constant = (_CONSTANT_KEY + cls.long()).unsqueeze(1)
    stacked = torch.stack([v.long() for v in values], dim=1)
    return torch.where((cls == PARTIAL).unsqueeze(1), stacked, constant)


def clamped_key(value: Tensor, low: int, high: int) -> Tensor:
    """``[n, 1]`` key: ``value`` clamped to ``[low, high]``, for a term whose class is constant (FULL or
    EMPTY, whatever the tile's extents) wherever ``value`` is at or beyond either bound. Cheaper than
    `partial_key`, which needs the class."""
    return value.clamp(low, high).unsqueeze(1)


def diagonal_breaks(ctx: MaskContext, cuts: Tensor) -> Tensor:
    """Row breaks of a predicate on ``q_pos - k`` that changes only at the values ``cuts`` [H|1, T].

    The class of such a predicate over a tile depends on which cuts its smallest and largest
    ``q_pos - k`` have reached (`interval_class`). The smallest, ``q_start - k_stop + 1``, reaches
    ``c`` for kv blocks below ``(q_start + 1 - c) // block_n``, the largest, ``q_last - k_start``, for
    kv blocks below ``(q_last - c) // block_n + 1``. Returns ``[H|1, QB, 2T]``.
    """
    after_first, last = ctx.row_ends
    c = cuts.view(cuts.shape[0], 1, -1)
    smallest = torch.div(after_first - c, ctx.block_n, rounding_mode="floor")
    largest = torch.div(last - c, ctx.block_n, rounding_mode="floor") + 1
    return torch.cat([smallest, largest], dim=-1)


def key_breaks(ctx: MaskContext, cuts: Tensor) -> Tensor:
    """Row breaks of a predicate on ``k`` that changes only at the values ``cuts``: [H|1, T] for every
    row, or [H|1, QB, T] per row.

    A tile's first key reaches ``c`` from kv block ``ceil(c / block_n)``, its last key from
    ``floor(c / block_n)``. Returns ``[H|1, QB, 2T]``.
    """
    c = cuts if cuts.dim() == 3 else cuts.view(cuts.shape[0], 1, -1)
    floor = torch.div(c, ctx.block_n, rounding_mode="floor")
    ceil = -torch.div(-c, ctx.block_n, rounding_mode="floor")
    return torch.cat([floor, ceil], dim=-1).expand(-1, ctx.num_q_blocks, -1)


def block_diagonal_breaks(ctx: MaskContext, block_size: int, cuts: Tensor) -> Tensor:
    """Row breaks of a predicate on ``q_pos // block_size - k // block_size`` that changes only at the
    values ``cuts`` [1, T]: `diagonal_breaks` on block differences. Returns ``[1, QB, 2T]``.

    The smallest difference over a tile, ``first // bs - (k_stop - 1) // bs``, reaches ``c`` below kv
    block ``(first // bs - c + 1) * bs // block_n``; the largest, ``last // bs - k_start // bs``, below
    ``((last // bs - c + 1) * bs - 1) // block_n + 1``.
    """
    first, last = ctx.q_block_span
    bs, bn = block_size, ctx.block_n
    c = cuts.view(1, 1, -1)
    smallest = (first.view(1, -1, 1) // bs - c + 1) * bs // bn
    largest = ((last.view(1, -1, 1) // bs - c + 1) * bs - 1) // bn + 1
    return torch.cat([smallest, largest], dim=-1)


def no_breaks(ctx: MaskContext) -> Tensor:
    """Row breaks of a pattern whose class is constant along every row."""
    return torch.zeros(1, ctx.num_q_blocks, 0, dtype=torch.long, device=ctx.device)


def _cuts(ctx: MaskContext, *values: int) -> Tensor:
    return torch.tensor([values], dtype=torch.long, device=ctx.device)


def _check_int(name: str, value: object, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name}: expected an int >= {minimum}, got {value!r}")


def _all_q_blocks(ctx: MaskContext, lo: Tensor, hi: Tensor) -> Tiles:
    return Tiles.from_ranges(ctx, lo.clamp(0, ctx.num_kv_blocks), hi.clamp(0, ctx.num_kv_blocks))


@dataclass(frozen=True)
class Full(Pattern):
    """Every pair: ``True``.

    >>> print(Full().render(4))
    ####
    ####
    ####
    ####
    """

    def mask(self, h: Tensor, q_idx: Tensor, kv_idx: Tensor, ctx: MaskContext) -> Tensor:
        return torch.ones(
            torch.broadcast_shapes(h.shape, q_idx.shape, kv_idx.shape), dtype=torch.bool, device=q_idx.device
        )

    def mask_mod(self, ctx: MaskContext) -> MaskMod:
        def mask_mod(b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor) -> Tensor:
            return (q_idx >= 0) & (kv_idx >= 0)

        return mask_mod

    def classify(self, tiles: Tiles) -> Tensor:
        return torch.full((len(tiles),), 2, dtype=torch.int8, device=tiles.head.device)

    def row_breaks(self, ctx: MaskContext) -> Tensor:
        return no_breaks(ctx)

    def tile_key(self, tiles: Tiles) -> Tensor:
        return torch.zeros(len(tiles), 1, dtype=torch.long, device=tiles.head.device)


@dataclass(frozen=True)
class Causal(Pattern):
    """Keys at or before the query: ``k <= q_pos``.

    >>> print(Causal().render(8))
    #-------
    ##------
    ###-----
    ####----
    #####---
    ######--
    #######-
    ########
    """

    def mask(self, h: Tensor, q_idx: Tensor, kv_idx: Tensor, ctx: MaskContext) -> Tensor:
        return kv_idx <= q_idx + ctx.offset

    def mask_mod(self, ctx: MaskContext) -> MaskMod:
        offset = ctx.offset

        def mask_mod(b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor) -> Tensor:
            return kv_idx <= q_idx + offset

        return mask_mod

    def classify(self, tiles: Tiles) -> Tensor:
        lo, hi = tiles.diagonal_span
        return interval_class(lo, hi, 0, None)

    def support(self, ctx: MaskContext) -> Tiles:
        _, last = ctx.q_block_span
        return _all_q_blocks(ctx, torch.zeros_like(last), last // ctx.block_n + 1)

    def support_size(self, ctx: MaskContext) -> int:
        _, last = ctx.q_block_span
        return int((last // ctx.block_n + 1).clamp(max=ctx.num_kv_blocks).sum())

    def row_breaks(self, ctx: MaskContext) -> Tensor:
        return diagonal_breaks(ctx, _cuts(ctx, 0))

    def tile_key(self, tiles: Tiles) -> Tensor:
        # q_start - k_start >= block_n - 1: FULL; <= -block_m: EMPTY (any extents).
        ctx = tiles.ctx
        return clamped_key(tiles.corner_offset, -ctx.block_m, ctx.block_n - 1)


@dataclass(frozen=True)
class Sink(Pattern):
    """The first ``size`` keys (attention sinks): ``k < size``.

    >>> print(Sink(2).render(4))
    ##--
    ##--
    ##--
    ##--
    """

    size: int

    def __post_init__(self) -> None:
        _check_int("size", self.size, 0)

    def mask(self, h: Tensor, q_idx: Tensor, kv_idx: Tensor, ctx: MaskContext) -> Tensor:
        return (kv_idx < self.size) & (q_idx >= 0)

    def mask_mod(self, ctx: MaskContext) -> MaskMod:
        size = self.size

        def mask_mod(b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor) -> Tensor:
            return (kv_idx < size) & (q_idx >= 0)

        return mask_mod

    def classify(self, tiles: Tiles) -> Tensor:
        return interval_class(tiles.k_start, tiles.k_last, 0, self.size)

    def support(self, ctx: MaskContext) -> Tiles:
        lo = torch.zeros(ctx.num_q_blocks, dtype=torch.long, device=ctx.device)
        return _all_q_blocks(ctx, lo, lo + -(-self.size // ctx.block_n))

    def support_size(self, ctx: MaskContext) -> int:
        return ctx.num_q_blocks * min(-(-self.size // ctx.block_n), ctx.num_kv_blocks)

    def row_breaks(self, ctx: MaskContext) -> Tensor:
        return key_breaks(ctx, _cuts(ctx, self.size))

    def tile_key(self, tiles: Tiles) -> Tensor:
        # size - k_start >= block_n: FULL; <= 0: EMPTY.
        return clamped_key(self.size - tiles.k_start, 0, tiles.ctx.block_n)


@dataclass(frozen=True)
class Window(Pattern):
    """A causal sliding window of ``size`` keys, the query itself included: ``0 <= q_pos - k < size``.

    >>> print(Window(3).render(6))
    #-----
    ##----
    ###---
    -###--
    --###-
    ---###
    """

    size: int

    def __post_init__(self) -> None:
        _check_int("size", self.size, 1)

    def mask(self, h: Tensor, q_idx: Tensor, kv_idx: Tensor, ctx: MaskContext) -> Tensor:
        d = q_idx + ctx.offset - kv_idx
        return (d >= 0) & (d < self.size)

    def mask_mod(self, ctx: MaskContext) -> MaskMod:
        offset, size = ctx.offset, self.size

        def mask_mod(b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor) -> Tensor:
            d = q_idx + offset - kv_idx
            return (d >= 0) & (d < size)

        return mask_mod

    def classify(self, tiles: Tiles) -> Tensor:
        lo, hi = tiles.diagonal_span
        return interval_class(lo, hi, 0, self.size)

    def support(self, ctx: MaskContext) -> Tiles:
        first, last = ctx.q_block_span
        lo = (first - self.size + 1).clamp(min=0) // ctx.block_n
        return _all_q_blocks(ctx, lo, last // ctx.block_n + 1)

    def support_size(self, ctx: MaskContext) -> int:
        return ctx.num_q_blocks * min(ctx.num_kv_blocks, -(-(self.size + ctx.block_m) // ctx.block_n) + 1)

    def row_breaks(self, ctx: MaskContext) -> Tensor:
        return diagonal_breaks(ctx, _cuts(ctx, 0, self.size))

    def tile_key(self, tiles: Tiles) -> Tensor:
        # With o = q_start - k_start: EMPTY for o <= -block_m or o >= size + block_n - 1, FULL for
        # block_n - 1 <= o <= size - block_m (any extents), so that whole range shares one key.
        bm, bn = tiles.ctx.block_m, tiles.ctx.block_n
        key = clamped_key(tiles.corner_offset, -bm, self.size + bn - 1)
        if bn - 1 <= self.size - bm:
            key = torch.where((key >= bn - 1) & (key <= self.size - bm), bn - 1, key)
        return key


@dataclass(frozen=True)
class LastQueries(Pattern):
    """The last ``n`` query positions of the whole prompt see every key: ``q_pos >= prompt_end - n``.

    ``prompt_end`` is ``kv_len`` unless the context carries the prompt's total length (`MaskContext.prompt_len`,
    chunked prefill): a chunk that the prompt continues past then has last rows only where they fall within
    the prompt's last ``n`` positions. Without it, a chunk's own final rows count as the last ones.

    >>> print(LastQueries(2).render(4))
    ----
    ----
    ####
    ####
    """

    n: int

    def __post_init__(self) -> None:
        _check_int("n", self.n, 0)

    def mask_mod(self, ctx: MaskContext) -> MaskMod:
        # q_pos >= kv_len - n, with q_pos = q_idx + offset: the rows from q_len - n on.
        first = ctx.kv_len - self.n - ctx.offset

        def mask_mod(b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor) -> Tensor:
            return (q_idx >= first) & (kv_idx >= 0)

        return mask_mod

    def mask(self, h: Tensor, q_idx: Tensor, kv_idx: Tensor, ctx: MaskContext) -> Tensor:
        return (q_idx + ctx.offset >= ctx.prompt_end - self.n) & (kv_idx >= 0)

    def classify(self, tiles: Tiles) -> Tensor:
        return interval_class(tiles.q_start, tiles.q_last, tiles.ctx.prompt_end - self.n, None)

    def support(self, ctx: MaskContext) -> Tiles:
        _, last = ctx.q_block_span
        hit = last >= ctx.prompt_end - self.n
        return _all_q_blocks(ctx, torch.zeros_like(last), torch.where(hit, ctx.num_kv_blocks, 0))

    def support_size(self, ctx: MaskContext) -> int:
        rows = min(ctx.q_len, max(self.n - (ctx.prompt_end - ctx.kv_len), 0))
        return (-(-rows // ctx.block_m) + 1) * ctx.num_kv_blocks if rows else 0

    def row_breaks(self, ctx: MaskContext) -> Tensor:
        return no_breaks(ctx)

    def tile_key(self, tiles: Tiles) -> Tensor:
        # q_start - (prompt_end - n) >= 0: FULL; <= -block_m: EMPTY.
        ctx = tiles.ctx
        return clamped_key(tiles.q_start - (ctx.prompt_end - self.n), -ctx.block_m, 0)


@dataclass(frozen=True)
class BlockBand(Pattern):
    """A band of whole key blocks: ``0 <= q_pos // block_size - k // block_size < blocks``.

    Block-granular local attention, as MInference's A-shape heads use: the query's own key block and
    the ``blocks - 1`` before it (not causal inside the query's block; combine with `Causal`).

    >>> print(BlockBand(2, block_size=2).render(8))
    ##------
    ##------
    ####----
    ####----
    --####--
    --####--
    ----####
    ----####
    """

    blocks: int
    block_size: int = 64

    def __post_init__(self) -> None:
        _check_int("blocks", self.blocks, 1)
        _check_int("block_size", self.block_size, 1)

    def mask(self, h: Tensor, q_idx: Tensor, kv_idx: Tensor, ctx: MaskContext) -> Tensor:
        d = (q_idx + ctx.offset) // self.block_size - kv_idx // self.block_size
        return (d >= 0) & (d < self.blocks)

    def mask_mod(self, ctx: MaskContext) -> MaskMod:
        offset, blocks, bs = ctx.offset, self.blocks, self.block_size

        def mask_mod(b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor) -> Tensor:
            d = (q_idx + offset) // bs - kv_idx // bs
            return (d >= 0) & (d < blocks)

        return mask_mod

    def classify(self, tiles: Tiles) -> Tensor:
        bs = self.block_size
        lo = tiles.q_start // bs - tiles.k_last // bs
        hi = tiles.q_last // bs - tiles.k_start // bs
        return interval_class(lo, hi, 0, self.blocks)

    def support(self, ctx: MaskContext) -> Tiles:
        first, last = ctx.q_block_span
        bs = self.block_size
        lo = ((first // bs - self.blocks + 1) * bs).clamp(min=0) // ctx.block_n
        hi = ((last // bs + 1) * bs - 1) // ctx.block_n + 1
        return _all_q_blocks(ctx, lo, hi)

    def support_size(self, ctx: MaskContext) -> int:
        span = self.blocks * self.block_size + ctx.block_m + self.block_size
        return ctx.num_q_blocks * min(ctx.num_kv_blocks, -(-span // ctx.block_n) + 1)

    def row_breaks(self, ctx: MaskContext) -> Tensor:
        return block_diagonal_breaks(ctx, self.block_size, _cuts(ctx, 0, self.blocks))

    def tile_key(self, tiles: Tiles) -> Tensor:
        cls = self.classify(tiles)
        return partial_key(cls, tiles.corner_offset, tiles.q_start % self.block_size)
