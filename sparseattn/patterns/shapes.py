"""Named shapes from the literature, each a composition of primitives.

A named shape is a frozen dataclass with the parameters a paper uses; ``expand()`` gives the
expression it stands for, and every question about the shape is answered by that expression.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

from torch import Tensor

from sparseattn.patterns.base import MaskMod, Pattern
from sparseattn.patterns.primitives import BlockBand, Causal, LastQueries, Sink, Window, _check_int
from sparseattn.patterns.tiles import MaskContext, Tiles


class Composite(Pattern):
    """A pattern defined by an expression of other patterns; subclasses implement ``expand``."""

    def expand(self) -> Pattern:
        raise NotImplementedError(f"{type(self).__name__} must implement expand()")

    @cached_property
    def expression(self) -> Pattern:
        return self.expand()

    @property
    def num_heads(self) -> int | None:
        return self.expression.num_heads

    def mask(self, h: Tensor, q_idx: Tensor, kv_idx: Tensor, ctx: MaskContext) -> Tensor:
        return self.expression.mask(h, q_idx, kv_idx, ctx)

    def mask_mod(self, ctx: MaskContext) -> MaskMod:
        return self.expression.mask_mod(ctx)

    def classify(self, tiles: Tiles) -> Tensor:
        return tiles.classes_of(self.expression)

    def support(self, ctx: MaskContext) -> Tiles | None:
        return self.expression.support(ctx)

    def support_size(self, ctx: MaskContext) -> int | None:
        return self.expression.support_size(ctx)

    def tile_key(self, tiles: Tiles) -> Tensor:
        return tiles.keys_of(self.expression)

    def row_breaks(self, ctx: MaskContext) -> Tensor | None:
        return ctx.breaks_of(self.expression)


@dataclass(frozen=True)
class Streaming(Composite):
    """StreamingLLM: token-exact attention sinks plus a sliding window, causal.

    ``Causal() & (Sink(sink) | Window(window))``

    >>> print(Streaming(sink=1, window=2).render(8))
    #-------
    ##------
    ###-----
    #-##----
    #--##---
    #---##--
    #----##-
    #-----##
    """

    sink: int = 4
    window: int = 4096

    def __post_init__(self) -> None:
        _check_int("sink", self.sink, 0)
        _check_int("window", self.window, 1)

    def expand(self) -> Pattern:
        return Causal() & (Sink(self.sink) | Window(self.window))


@dataclass(frozen=True)
class AShape(Composite):
    """MInference's A-shape head: whole key blocks at the start plus a band of local blocks, causal.

    ``Causal() & (Sink(sink_blocks * block_size) | BlockBand(local_blocks, block_size))``

    >>> print(AShape(sink_blocks=1, local_blocks=2, block_size=2).render(8))
    #-------
    ##------
    ###-----
    ####----
    #####---
    ######--
    ##--###-
    ##--####
    """

    sink_blocks: int = 1
    local_blocks: int = 4
    block_size: int = 64

    def __post_init__(self) -> None:
        _check_int("sink_blocks", self.sink_blocks, 0)
        _check_int("local_blocks", self.local_blocks, 1)
        _check_int("block_size", self.block_size, 1)

    def expand(self) -> Pattern:
        sink = Sink(self.sink_blocks * self.block_size)
        return Causal() & (sink | BlockBand(self.local_blocks, self.block_size))


@dataclass(frozen=True)
class Triangle(Composite):
    """TriangleMix's triangle (arXiv 2507.21526): sinks, a local window, and the last query rows dense.

    ``Causal() & (Sink(sink) | Window(window) | LastQueries(last))``: keep ``k < sink`` or
    ``q_pos - k < window`` (window counts the query itself) or ``q_pos >= kv_len - last``. The defaults
    are the paper's, token-exact.

    >>> print(Triangle(sink=1, window=2, last=2).render(8))
    #-------
    ##------
    ###-----
    #-##----
    #--##---
    #---##--
    #######-
    ########
    """

    sink: int = 8
    window: int = 512
    last: int = 128

    def __post_init__(self) -> None:
        _check_int("sink", self.sink, 0)
        _check_int("window", self.window, 1)
        _check_int("last", self.last, 0)

    def expand(self) -> Pattern:
        return Causal() & (Sink(self.sink) | Window(self.window) | LastQueries(self.last))
