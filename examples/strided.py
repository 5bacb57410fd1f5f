"""A user-defined pattern, written outside the package: every ``stride``-th key before the query.

This file is the README's worked example of extending sparseattn; `tests/test_extending.py` runs it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from sparseattn.patterns import EMPTY, FULL, PARTIAL, MaskContext, Pattern, Tiles


@dataclass(frozen=True)
class Strided(Pattern):
    """Causal keys on a stride grid: ``k <= q_pos and (q_pos - k) % stride == 0``.

    >>> print(Strided(3).render(7))
    #------
    -#-----
    --#----
    #--#---
    -#--#--
    --#--#-
    #--#--#
    """

    stride: int

    def __post_init__(self) -> None:
        if isinstance(self.stride, bool) or not isinstance(self.stride, int) or self.stride < 1:
            raise ValueError(f"stride: expected an int >= 1, got {self.stride!r}")

    def mask(self, h: Tensor, q_idx: Tensor, kv_idx: Tensor, ctx: MaskContext) -> Tensor:
        d = q_idx + ctx.offset - kv_idx
        return (d >= 0) & (d % self.stride == 0)

    # Optional, for speed: an analytic classification. Without it the default evaluates `mask`
    # over each tile, which is exact but costs the tile's area.
    def classify(self, tiles: Tiles) -> Tensor:
        lo = tiles.q_start - tiles.k_last  # smallest q_pos - k in the tile
        hi = tiles.q_last - tiles.k_start  # largest
        full = (lo >= 0) & ((self.stride == 1) | (hi == lo)) & (lo % self.stride == 0)
        empty = hi < 0
        return torch.where(full, FULL, torch.where(empty, EMPTY, PARTIAL)).to(torch.int8)
