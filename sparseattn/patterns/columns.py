"""Index-set primitives: key columns (vertical lines) and diagonals (slash lines), shared or per head.

Both take either one tuple of ints (every head) or one tuple per head. They are stored sorted and
deduplicated, so equal sets compare and hash equal and ``repr`` round-trips.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import cast

import torch
from torch import Tensor

from sparseattn.patterns.base import MaskMod, Pattern
from sparseattn.patterns.primitives import diagonal_breaks, key_breaks, partial_key
from sparseattn.patterns.tiles import EMPTY, FULL, PARTIAL, MaskContext, Tiles

IndexSet = tuple[int, ...] | tuple[tuple[int, ...], ...]


def _normalise(name: str, indices: object, minimum: int | None) -> IndexSet:
    def one(values: object, where: str) -> tuple[int, ...]:
        if not isinstance(values, Sequence) or isinstance(values, (str, bytes)):
            raise ValueError(f"{name}{where}: expected a sequence of ints, got {values!r}")
        out = set()
        for v in values:
            if isinstance(v, bool) or not isinstance(v, int):
                raise ValueError(f"{name}{where}: expected ints, got {v!r}")
            if minimum is not None and v < minimum:
                raise ValueError(f"{name}{where}: expected ints >= {minimum}, got {v}")
            out.add(int(v))
        return tuple(sorted(out))

    if isinstance(indices, Tensor):
        indices = indices.tolist()
    if not isinstance(indices, Sequence) or isinstance(indices, (str, bytes)):
        raise ValueError(f"{name}: expected a sequence of ints or one sequence per head, got {indices!r}")
    if len(indices) and all(isinstance(v, (Sequence, Tensor)) and not isinstance(v, (str, bytes)) for v in indices):
        return tuple(one(v.tolist() if isinstance(v, Tensor) else v, f"[{h}]") for h, v in enumerate(indices))
    return one(indices, "")


def _per_head(indices: IndexSet) -> bool:
    return bool(indices) and isinstance(indices[0], tuple)


def _sets(indices: IndexSet) -> tuple[tuple[int, ...], ...]:
    """The index sets as one tuple per head (a single tuple when shared by every head)."""
    if _per_head(indices):
        return cast(tuple[tuple[int, ...], ...], indices)
    return (cast(tuple[int, ...], indices),)


def _membership(indices: IndexSet, size: int, shift: int, ctx: MaskContext) -> Tensor:
    """bool ``[H|1, size]``: entry ``[h, x + shift]`` says whether ``x`` is in head ``h``'s set."""
    sets = _sets(indices)
    table = torch.zeros(len(sets), size, dtype=torch.bool, device=ctx.device)
    for h, values in enumerate(sets):
        idx = torch.tensor(values, dtype=torch.long, device=ctx.device) + shift
        table[h, idx[(idx >= 0) & (idx < size)]] = True
    return table


def _run_cuts(indices: IndexSet) -> list[list[int]]:
    """Per head, the values where membership changes: each run's first value and one past its last."""
    per_head = []
    for values in _sets(indices):
        cuts = [v for i, v in enumerate(values) if i == 0 or values[i - 1] != v - 1]
        cuts += [v + 1 for i, v in enumerate(values) if i == len(values) - 1 or values[i + 1] != v + 1]
        per_head.append(cuts or [0])
    return per_head


def _breaks_if_few(
    breaks: Callable[[MaskContext, Tensor], Tensor], indices: IndexSet, ctx: MaskContext
) -> Tensor | None:
    """Row breaks of an index set, or None when they are many: beyond a quarter of a row's tiles the
    runs are short and the per-tile path is as fast, and the [H, QB, P] breaks of thousands of
    scattered diagonals would not even fit in memory. A few dozen are always fine."""
    per_head = _run_cuts(indices)
    width = max(len(c) for c in per_head)
    if 2 * width > max(64, ctx.num_kv_blocks // 4):
        return None
    # Heads with fewer cuts repeat their first one (a repeated cut adds no break).
    padded = [c + [c[0]] * (width - len(c)) for c in per_head]
    return breaks(ctx, torch.tensor(padded, dtype=torch.long, device=ctx.device))


def _padded(indices: IndexSet, pad: int) -> Tensor:
    """int64 ``[H|1, max(1, count)]``: each head's set, padded with ``pad`` (a value no index can equal)."""
    sets = _sets(indices)
    width = max(1, *(len(s) for s in sets))
    return torch.tensor([list(s) + [pad] * (width - len(s)) for s in sets], dtype=torch.long)


def _member_mod(indices: IndexSet, pad: int, value: Callable[[Tensor, Tensor], Tensor]) -> MaskMod:
    """``mask_mod`` keeping ``value(q_idx, kv_idx) in indices[h]``: one comparison per index of the head's
    set (a ``[H|1, count]`` tensor; no table over positions)."""
    table, per_head = _padded(indices, pad), _per_head(indices)

    def mask_mod(b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor) -> Tensor:
        t = table.to(q_idx.device)
        row = t[h] if per_head else t[0]
        return (value(q_idx, kv_idx).unsqueeze(-1) == row).any(-1)

    return mask_mod


def _range_class(table: Tensor, head: Tensor, lo: Tensor, hi: Tensor) -> Tensor:
    """Exact class of "x in set" over ``x`` in ``[lo, hi]`` (table coordinates), by prefix sums."""
    size = table.shape[1]
    prefix = torch.nn.functional.pad(table.long().cumsum(1), (1, 0))
    h = head if table.shape[0] > 1 else torch.zeros_like(head)
    lo_c, hi_c = lo.clamp(0, size), (hi + 1).clamp(0, size)
    count = prefix[h, hi_c] - prefix[h, lo_c]
    full = count == hi - lo + 1
    return torch.where(count == 0, EMPTY, torch.where(full, FULL, PARTIAL)).to(torch.int8)


@dataclass(frozen=True)
class Columns(Pattern):
    """Whole key columns (MInference's vertical lines): ``k in indices[h]``.

    Not causal by itself; ``Causal() & Columns(...)`` is what dynamic patterns produce, and lowering
    gathers such columns token by token instead of computing the tiles they fall in.

    >>> print(Columns((0, 3)).render(4))
    #--#
    #--#
    #--#
    #--#
    >>> Columns(((1,), (0, 2))).num_heads
    2
    """

    indices: IndexSet

    def __post_init__(self) -> None:
        object.__setattr__(self, "indices", _normalise("indices", self.indices, 0))

    @property
    def per_head(self) -> bool:
        return _per_head(self.indices)

    @property
    def num_heads(self) -> int | None:
        return len(self.indices) if self.per_head else None

    def head_sets(self, heads: int) -> tuple[tuple[int, ...], ...]:
        """One sorted column tuple per head."""
        sets = _sets(self.indices)
        return sets if self.per_head else sets * heads

    def mask(self, h: Tensor, q_idx: Tensor, kv_idx: Tensor, ctx: MaskContext) -> Tensor:
        table = _membership(self.indices, ctx.kv_len, 0, ctx)
        h = h if self.per_head else torch.zeros_like(h)
        return table[h, kv_idx.clamp(0, ctx.kv_len - 1)] & (q_idx >= 0)

    def mask_mod(self, ctx: MaskContext) -> MaskMod:
        # Keys are >= 0, so -1 pads.
        return _member_mod(self.indices, -1, lambda q_idx, kv_idx: kv_idx)

    def classify(self, tiles: Tiles) -> Tensor:
        table = _membership(self.indices, tiles.ctx.kv_len, 0, tiles.ctx)
        return _range_class(table, tiles.head, tiles.k_start, tiles.k_last)

    def support(self, ctx: MaskContext) -> Tiles:
        table = _membership(self.indices, ctx.kv_len, 0, ctx)
        pad = ctx.num_kv_blocks * ctx.block_n - ctx.kv_len
        hit = torch.nn.functional.pad(table, (0, pad)).view(table.shape[0], ctx.num_kv_blocks, ctx.block_n).any(-1)
        head, kv_block = torch.nonzero(hit, as_tuple=True)
        n = head.numel()
        q_block = torch.arange(ctx.num_q_blocks, device=ctx.device).repeat_interleave(n)
        return Tiles(ctx, head.repeat(ctx.num_q_blocks), q_block, kv_block.repeat(ctx.num_q_blocks))

    def support_size(self, ctx: MaskContext) -> int:
        blocks = sum(len({c // ctx.block_n for c in s if c < ctx.kv_len}) for s in _sets(self.indices))
        return blocks * ctx.num_q_blocks

    def tile_key(self, tiles: Tiles) -> Tensor:
        head = tiles.head if self.per_head else torch.zeros_like(tiles.head)
        return partial_key(self.classify(tiles), head, tiles.kv_block)

    def row_breaks(self, ctx: MaskContext) -> Tensor | None:
        return _breaks_if_few(key_breaks, self.indices, ctx)


@dataclass(frozen=True)
class Diagonals(Pattern):
    """Diagonal lines (MInference's slashes): ``q_pos - k in offsets[h]``; offset 0 is the main diagonal.

    >>> print(Diagonals((0, 2)).render(5))
    #----
    -#---
    #-#--
    -#-#-
    --#-#
    """

    offsets: IndexSet

    def __post_init__(self) -> None:
        object.__setattr__(self, "offsets", _normalise("offsets", self.offsets, None))

    @property
    def per_head(self) -> bool:
        return _per_head(self.offsets)

    @property
    def num_heads(self) -> int | None:
        return len(self.offsets) if self.per_head else None

    def _table(self, ctx: MaskContext) -> Tensor:
        return _membership(self.offsets, 2 * ctx.kv_len, ctx.kv_len, ctx)

    def mask(self, h: Tensor, q_idx: Tensor, kv_idx: Tensor, ctx: MaskContext) -> Tensor:
        table = self._table(ctx)
        h = h if self.per_head else torch.zeros_like(h)
        return table[h, (q_idx + ctx.offset - kv_idx + ctx.kv_len).clamp(0, 2 * ctx.kv_len - 1)]

    def mask_mod(self, ctx: MaskContext) -> MaskMod:
        # q_pos - k lies in (-kv_len, kv_len): kv_len pads, and offsets outside that range never match.
        offset = ctx.offset
        return _member_mod(self.offsets, ctx.kv_len, lambda q_idx, kv_idx: q_idx + offset - kv_idx)

    def classify(self, tiles: Tiles) -> Tensor:
        lo, hi = tiles.diagonal_span
        shift = tiles.ctx.kv_len
        return _range_class(self._table(tiles.ctx), tiles.head, lo + shift, hi + shift)

    def _runs(self) -> list[tuple[int, int, int]]:
        """Maximal runs of consecutive offsets as ``(head, first, last)``."""
        runs: list[tuple[int, int, int]] = []
        for h, values in enumerate(_sets(self.offsets)):
            for v in values:
                if runs and runs[-1][0] == h and runs[-1][2] == v - 1:
                    runs[-1] = (h, runs[-1][1], v)
                else:
                    runs.append((h, v, v))
        return runs

    def support(self, ctx: MaskContext) -> Tiles:
        runs = torch.tensor(self._runs(), dtype=torch.long, device=ctx.device).view(-1, 3)
        qb = torch.arange(ctx.num_q_blocks, device=ctx.device)
        first = qb * ctx.block_m + ctx.offset
        last = torch.clamp((qb + 1) * ctx.block_m, max=ctx.q_len) - 1 + ctx.offset
        # One row per (run, q block): keys q_pos - offset for q_pos in the block, offsets in the run.
        k_lo = (first.view(1, -1) - runs[:, 2:3]).clamp(0, ctx.kv_len - 1)
        k_hi = last.view(1, -1) - runs[:, 1:2]
        valid = (k_hi >= 0) & (first.view(1, -1) - runs[:, 2:3] < ctx.kv_len)
        lo = torch.where(valid, k_lo // ctx.block_n, 0).reshape(-1)
        hi = torch.where(valid, k_hi.clamp(max=ctx.kv_len - 1) // ctx.block_n + 1, 0).reshape(-1)
        head = runs[:, 0:1].expand(-1, ctx.num_q_blocks).reshape(-1)
        # Rows are (run, q block) in run-major order, which is what from_ranges expects.
        tiles = Tiles.from_ranges(ctx, lo, hi, head)
        return Tiles.from_key(ctx, tiles.key().unique())

    def support_size(self, ctx: MaskContext) -> int:
        per_run = -(-(ctx.block_m + ctx.block_n) // ctx.block_n) + 1
        return min(
            len(self._runs()) * ctx.num_q_blocks * per_run, ctx.num_q_blocks * ctx.num_kv_blocks * (self.num_heads or 1)
        )

    def tile_key(self, tiles: Tiles) -> Tensor:
        head = tiles.head if self.per_head else torch.zeros_like(tiles.head)
        return partial_key(self.classify(tiles), head, tiles.corner_offset)

    def row_breaks(self, ctx: MaskContext) -> Tensor | None:
        return _breaks_if_few(diagonal_breaks, self.offsets, ctx)
