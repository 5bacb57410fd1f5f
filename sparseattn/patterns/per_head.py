"""`PerHead`: a different pattern for each attention head, as MInference assigns them."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from sparseattn.patterns.base import MaskMod, Pattern
from sparseattn.patterns.tiles import MaskContext, Tiles


@dataclass(frozen=True)
class PerHead(Pattern):
    """Head ``h`` uses ``patterns[h]``: ``mask(h, q, k) = patterns[h].mask(h, q, k)``.

    Each member sees the global head index, so a member that is itself per head (a per-head
    `Columns`, say) must be written for the same number of heads.

    >>> from sparseattn.patterns import Causal, Window
    >>> mixed = PerHead((Causal(), Window(2)))
    >>> print(mixed.render(4, head=1))
    #---
    ##--
    -##-
    --##
    """

    patterns: tuple[Pattern, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "patterns", tuple(self.patterns))
        if not self.patterns:
            raise ValueError("patterns: expected one pattern per head, got none")
        for h, p in enumerate(self.patterns):
            if not isinstance(p, Pattern):
                raise ValueError(f"patterns[{h}]: expected a Pattern, got {type(p).__name__}")
            if p.num_heads is not None and p.num_heads != len(self.patterns):
                raise ValueError(
                    f"patterns[{h}]: written for {p.num_heads} heads, but PerHead has {len(self.patterns)}"
                )

    @property
    def num_heads(self) -> int:
        return len(self.patterns)

    def mask(self, h: Tensor, q_idx: Tensor, kv_idx: Tensor, ctx: MaskContext) -> Tensor:
        shape = torch.broadcast_shapes(h.shape, q_idx.shape, kv_idx.shape)
        out = torch.zeros(shape, dtype=torch.bool, device=q_idx.device)
        for i, p in enumerate(self.patterns):
            out = torch.where(h == i, p.mask(h, q_idx, kv_idx, ctx), out)
        return out

    def mask_mod(self, ctx: MaskContext) -> MaskMod:
        """Each distinct member's predicate once, picked by a head -> member table: ``kind = table[h]``,
        then a chain of ``torch.where(kind == j, ...)`` over the distinct members. A FlexAttention user
        writes a mixture of a few kinds this way; one ``where`` per head instead made compiled
        ``create_block_mask`` materialise the whole mask (32 heads of 4 kinds at 128K asked for 512 GiB,
        `experiments/results/kernel_bench_128k_h100.md`), since inductor stores a pointwise expression
        with that many operations instead of fusing it into the block reduction (at 8K on the CPU: 2.5 GB
        against 0.5 GB, `experiments/investigations/per_head_mask_mod_memory.py`)."""
        # Members are told apart by repr (it round-trips), which also holds for members that do not hash.
        reprs = [repr(p) for p in self.patterns]
        names = list(dict.fromkeys(reprs))
        mods = [self.patterns[reprs.index(n)].mask_mod(ctx) for n in names]
        table = torch.tensor([names.index(r) for r in reprs], dtype=torch.int64)

        def mask_mod(b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor) -> Tensor:
            out = mods[-1](b, h, q_idx, kv_idx)
            if len(mods) == 1:
                return out
            kind = table.to(q_idx.device)[h]
            for j in range(len(mods) - 2, -1, -1):
                out = torch.where(kind == j, mods[j](b, h, q_idx, kv_idx), out)
            return out

        return mask_mod

    def _by_member(self, tiles: Tiles, evaluate: Callable[[Pattern, Tiles], Tensor]) -> list[Tensor]:
        """``evaluate(patterns[h], tiles)`` on the tiles of each head ``h``, as ``[len(tiles), ...]`` tensors
        that are only meaningful on the member's own tiles.

        On a GPU every member runs on every tile (selecting a member's tiles would wait for the device
        once per member); on the CPU, where that wait is free, each member sees only its own tiles, so a
        member that classifies by evaluating its mask is not run on the other heads' tiles.
        """
        if tiles.head.device.type != "cpu":
            return [evaluate(p, tiles) for p in self.patterns]
        results = []
        for i, p in enumerate(self.patterns):
            mine = tiles.head == i
            part = evaluate(p, tiles.select(mine))
            full = torch.zeros((len(tiles), *part.shape[1:]), dtype=part.dtype, device=part.device)
            full[mine] = part
            results.append(full)
        return results

    def classify(self, tiles: Tiles) -> Tensor:
        out = torch.zeros(len(tiles), dtype=torch.int8, device=tiles.head.device)
        for i, cls in enumerate(self._by_member(tiles, lambda p, t: t.classes_of(p))):
            out = torch.where(tiles.head == i, cls, out)
        return out

    def support(self, ctx: MaskContext) -> Tiles | None:
        if self.support_size(ctx) is None:
            return None
        keys = []
        for i, p in enumerate(self.patterns):
            tiles = p.support(ctx)
            assert tiles is not None
            tiles = tiles.select(tiles.head == i) if p.num_heads is not None else tiles
            keys.append(Tiles(ctx, torch.full_like(tiles.head, i), tiles.q_block, tiles.kv_block).key())
        return Tiles.from_key(ctx, torch.cat(keys).unique())

    def support_size(self, ctx: MaskContext) -> int | None:
        total = 0
        for p in self.patterns:
            size = p.support_size(ctx)
            if size is None:
                return None
            total += size
        return total

    def row_breaks(self, ctx: MaskContext) -> Tensor | None:
        rows = []
        for i, p in enumerate(self.patterns):
            breaks = ctx.breaks_of(p)
            if breaks is None:
                return None
            rows.append(breaks[i if breaks.shape[0] > 1 else 0])
        width = max(r.shape[-1] for r in rows)
        # Padding with 0 adds no run: 0 starts every row anyway.
        return torch.stack([torch.nn.functional.pad(r, (0, width - r.shape[-1])) for r in rows])

    def tile_key(self, tiles: Tiles) -> Tensor:
        keys = self._by_member(tiles, lambda p, t: t.keys_of(p))
        width = max(key.shape[1] for key in keys)
        out = torch.zeros(len(tiles), width, dtype=torch.long, device=tiles.head.device)
        for i, key in enumerate(keys):
            padded = torch.nn.functional.pad(key, (0, width - key.shape[1]))
            out = torch.where((tiles.head == i).unsqueeze(1), padded, out)
        return torch.cat([tiles.head.unsqueeze(1), out], dim=1)
