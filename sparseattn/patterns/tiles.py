"""Where patterns are evaluated: the tile classes, `MaskContext` (lengths, tiles, device) and `Tiles`
(a set of tiles with the token ranges they cover), with the interval arithmetic that classifies them."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum
from functools import cached_property
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from sparseattn.memo import attached

if TYPE_CHECKING:
    from sparseattn.patterns.base import Pattern


class TileClass(IntEnum):
    """Tile classes ordered so that Kleene logic is ``min`` / ``max`` / ``2 - x``."""

    EMPTY = 0
    PARTIAL = 1
    FULL = 2


EMPTY, PARTIAL, FULL = TileClass.EMPTY, TileClass.PARTIAL, TileClass.FULL


@dataclass(frozen=True)
class MaskContext:
    """Lengths, heads and tiling a pattern is evaluated under.

    Queries are aligned bottom-right: query row ``i`` sits at key position ``q_pos = i + kv_len - q_len``,
    so a chunk of a prompt attends as its rows would in the whole prompt.

    ``prompt_len`` is the length of the whole prompt when the queries are a chunk of it that the prompt
    continues past (chunked prefill: ``kv_len`` keys cached so far, ``prompt_len >= kv_len``). Only
    patterns that refer to the prompt's end read it, through `prompt_end` (`LastQueries`: ``q_pos >=
    prompt_end - n``); position-relative ones (`Causal`, `Sink`, `Window`, ...) need nothing. ``None``
    means the prompt ends with these queries (``prompt_end == kv_len``).
    """

    q_len: int
    kv_len: int
    num_heads: int = 1
    block_m: int = 64
    block_n: int = 64
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    prompt_len: int | None = None

    def __post_init__(self) -> None:
        if not 0 < self.q_len <= self.kv_len:
            raise ValueError(f"lengths: expected 0 < q_len <= kv_len, got q_len={self.q_len}, kv_len={self.kv_len}")
        if self.prompt_len is not None and self.prompt_len < self.kv_len:
            raise ValueError(
                f"prompt_len: expected None or at least kv_len={self.kv_len} (the prompt holds every cached key), "
                f"got {self.prompt_len}"
            )
        if self.num_heads < 1:
            raise ValueError(f"num_heads: expected >= 1, got {self.num_heads}")
        if self.block_m < 1 or self.block_n < 1:
            raise ValueError(f"block_size: expected positive sizes, got ({self.block_m}, {self.block_n})")

    @property
    def offset(self) -> int:
        """``q_pos - q_idx``."""
        return self.kv_len - self.q_len

    @property
    def prompt_end(self) -> int:
        """Where the whole prompt ends: ``prompt_len``, or ``kv_len`` when the queries end it."""
        return self.kv_len if self.prompt_len is None else self.prompt_len

    @property
    def num_q_blocks(self) -> int:
        return -(-self.q_len // self.block_m)

    @property
    def num_kv_blocks(self) -> int:
        return -(-self.kv_len // self.block_n)

    # Cached on the context, which a lowering builds for itself: every term of a pattern asks for
    # these, and on a GPU each recomputation is a few kernel launches. Callers never write them.
    def breaks_of(self, pattern: Pattern) -> Tensor | None:
        """``pattern.row_breaks(self)``, computed once per equal pattern under this context."""
        return attached(self, ("row_breaks", pattern), lambda: pattern.row_breaks(self))

    @cached_property
    def q_block_span(self) -> tuple[Tensor, Tensor]:
        """(first, last) query position of every query block, ``[QB]`` each."""
        qb = torch.arange(self.num_q_blocks, device=self.device)
        first = qb * self.block_m + self.offset
        last = torch.clamp((qb + 1) * self.block_m, max=self.q_len) - 1 + self.offset
        return first, last

    @cached_property
    def row_ends(self) -> tuple[Tensor, Tensor]:
        """``first + 1`` and ``last`` query positions of every query block, ``[1, QB, 1]`` each."""
        first, last = self.q_block_span
        return (first + 1).view(1, -1, 1), last.view(1, -1, 1)


@dataclass(frozen=True, eq=False)
class Tiles:
    """A flat set of tiles ``(head, q_block, kv_block)`` with the token ranges they cover.

    ``head`` is 0 for every tile when the set does not depend on the head. Ranges are clipped to the
    sequence, so tail tiles are described by their in-bounds tokens only.
    """

    ctx: MaskContext
    head: Tensor
    q_block: Tensor
    kv_block: Tensor

    # Terms recur inside expressions (every member of a per-head mixture has its own ``Causal()``), and
    # on a GPU each evaluation is several launches: equal patterns are evaluated once per tile set.
    def classes_of(self, pattern: Pattern) -> Tensor:
        """``pattern.classify(self)``, computed once per equal pattern."""
        return attached(self, ("classify", pattern), lambda: pattern.classify(self))

    def keys_of(self, pattern: Pattern) -> Tensor:
        """``pattern.tile_key(self)``, computed once per equal pattern."""
        return attached(self, ("tile_key", pattern), lambda: pattern.tile_key(self))

    @cached_property
    def q_start(self) -> Tensor:
        """First query position (``q_pos``) in the tile."""
        return self.q_block * self.ctx.block_m + self.ctx.offset

    @cached_property
    def q_last(self) -> Tensor:
        """Last in-bounds query position in the tile."""
        return torch.clamp(self.q_start + (self.ctx.block_m - 1), max=self.ctx.q_len - 1 + self.ctx.offset)

    @cached_property
    def q_stop(self) -> Tensor:
        """One past the last in-bounds query position."""
        return self.q_last + 1

    @cached_property
    def k_start(self) -> Tensor:
        return self.kv_block * self.ctx.block_n

    @cached_property
    def k_stop(self) -> Tensor:
        """One past the last in-bounds key."""
        return self.k_last + 1

    @cached_property
    def k_last(self) -> Tensor:
        """Last in-bounds key in the tile."""
        return torch.clamp(self.k_start + (self.ctx.block_n - 1), max=self.ctx.kv_len - 1)

    @cached_property
    def corner_offset(self) -> Tensor:
        """``q_pos - k`` at the tile's first row and first column."""
        return self.q_start - self.k_start

    @cached_property
    def diagonal_span(self) -> tuple[Tensor, Tensor]:
        """Smallest and largest ``q_pos - k`` over each tile."""
        return self.q_start - self.k_last, self.q_last - self.k_start

    def __len__(self) -> int:
        return int(self.head.numel())

    def select(self, keep: Tensor | slice) -> Tiles:
        return Tiles(self.ctx, self.head[keep], self.q_block[keep], self.kv_block[keep])

    @staticmethod
    def grid(ctx: MaskContext, heads: int = 1) -> Tiles:
        """Every tile of the plane, for ``heads`` head entries (the fallback when nothing bounds the support)."""
        h, qb, kb = torch.meshgrid(
            torch.arange(heads, device=ctx.device),
            torch.arange(ctx.num_q_blocks, device=ctx.device),
            torch.arange(ctx.num_kv_blocks, device=ctx.device),
            indexing="ij",
        )
        return Tiles(ctx, h.reshape(-1), qb.reshape(-1), kb.reshape(-1))

    @staticmethod
    def from_ranges(ctx: MaskContext, lo: Tensor, hi: Tensor, head: Tensor | None = None) -> Tiles:
        """Tiles ``[lo[i], hi[i])`` of kv blocks for query block ``i`` (of head ``head[i]`` if given).

        ``lo`` and ``hi`` have one entry per (head, q block) row; rows with ``hi <= lo`` contribute nothing.
        """
        row, kv_block = expand_runs(lo, (hi - lo).clamp(min=0))
        q_block = row % ctx.num_q_blocks
        heads = torch.zeros_like(row) if head is None else head[row]
        return Tiles(ctx, heads, q_block, kv_block)

    def union(self, other: Tiles) -> Tiles:
        """Set union; a head-independent side (all heads 0) must be expanded by the caller first."""
        key = torch.cat([self.key(), other.key()]).unique()
        return Tiles.from_key(self.ctx, key)

    def key(self) -> Tensor:
        """One int64 per tile, ordered by (head, q_block, kv_block)."""
        return (self.head * self.ctx.num_q_blocks + self.q_block) * self.ctx.num_kv_blocks + self.kv_block

    @staticmethod
    def from_key(ctx: MaskContext, key: Tensor) -> Tiles:
        kv_block = key % ctx.num_kv_blocks
        rest = key // ctx.num_kv_blocks
        return Tiles(ctx, rest // ctx.num_q_blocks, rest % ctx.num_q_blocks, kv_block)

    def for_heads(self, heads: int) -> Tiles:
        """Repeat a head-independent tile set once per head."""
        n = len(self)
        head = torch.arange(heads, device=self.head.device).repeat_interleave(n)
        return Tiles(self.ctx, head, self.q_block.repeat(heads), self.kv_block.repeat(heads))


def expand_runs(lo: Tensor, count: Tensor, total: int | None = None) -> tuple[Tensor, Tensor]:
    """(run, value) of every value of the runs ``[lo[i], lo[i] + count[i])``, concatenated in order.

    ``total`` (the sum of ``count``, when the caller knows it) spares a device sync.
    """
    run = torch.repeat_interleave(torch.arange(lo.numel(), device=lo.device), count, output_size=total)
    shift = lo - (torch.cumsum(count, 0) - count)  # value = position in the output + the run's shift
    return run, torch.arange(run.numel(), device=lo.device) + shift[run]


def run_values(lo: Tensor, count: Tensor, total: int) -> Tensor:
    """The values of `expand_runs` alone, in fewer operations (no run index)."""
    shift = lo - (torch.cumsum(count, 0) - count)
    return torch.repeat_interleave(shift, count, output_size=total) + torch.arange(total, device=lo.device)


def interval_class(lo: Tensor, hi: Tensor, keep_lo: Tensor | int, keep_hi: Tensor | int | None) -> Tensor:
    """Class of a predicate ``keep_lo <= x < keep_hi`` over a tile whose ``x`` spans every integer in ``[lo, hi]``.

    Exact when ``x`` takes every integer value in the range over the tile, which holds for ``q_pos``,
    ``k``, ``q_pos - k`` and block-index differences over a rectangle. ``keep_hi=None`` is unbounded.
    Written in few ops (``1 + full - empty``, or a count of the span's ends inside when unbounded):
    lowering evaluates it for every term of a pattern.
    """
    if keep_hi is None:
        # Each end of the span is in or out: 0 (EMPTY), 1 (PARTIAL) or 2 (FULL) of them are in.
        return (lo >= keep_lo).to(torch.int8) + (hi >= keep_lo)
    full = (lo >= keep_lo) & (hi < keep_hi)
    empty = (hi < keep_lo) | (lo >= keep_hi)
    return (full.to(torch.int8) - empty.to(torch.int8)) + 1


def tile_bits(pattern: Pattern, tiles: Tiles, rows: Tensor, cols: Tensor) -> tuple[Tensor, Tensor]:
    """(mask bits, in-bounds bits) of each tile: bool ``[n, block_m, block_n]`` each."""
    ctx = tiles.ctx
    q_idx = (tiles.q_block * ctx.block_m).view(-1, 1, 1) + rows.view(1, -1, 1)
    k_idx = (tiles.kv_block * ctx.block_n).view(-1, 1, 1) + cols.view(1, 1, -1)
    bits = pattern.mask(tiles.head.view(-1, 1, 1), q_idx, k_idx, ctx)
    shape = (len(tiles), ctx.block_m, ctx.block_n)
    if ctx.q_len % ctx.block_m == 0 and ctx.kv_len % ctx.block_n == 0:
        # No tail tiles: every bit is in bounds (the common case, spared three operations).
        return bits.expand(shape), torch.ones((), dtype=torch.bool, device=bits.device).expand(shape)
    inside = (q_idx < ctx.q_len) & (k_idx < ctx.kv_len)
    return bits & inside, inside
