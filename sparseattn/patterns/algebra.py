"""The combinators built by ``&``, ``|`` and ``~``: plain data, inspectable, printed as the expression.

Tile classes combine by Kleene logic over EMPTY < PARTIAL < FULL (And = min, Or = max, Not = 2 - x),
which is sound: a tile is called FULL or EMPTY only if it is. It can call a tile PARTIAL that is in fact
FULL or EMPTY (``Window(4) | ~Window(4)``); lowering then computes a bitmap that happens to be
uniform, never a wrong answer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import torch
from torch import Tensor

from sparseattn.patterns.base import MaskContext, Pattern, Tiles

if TYPE_CHECKING:
    from typing_extensions import Self


def common_heads(terms: tuple[Pattern, ...]) -> int | None:
    """The head count the terms agree on (None if none depends on heads); conflicting counts are an error."""
    counts = {t.num_heads for t in terms if t.num_heads is not None}
    if len(counts) > 1:
        raise ValueError(f"terms: patterns written for different head counts {sorted(counts)} cannot be combined")
    return counts.pop() if counts else None


def _check_terms(terms: tuple[Pattern, ...], name: str) -> None:
    if len(terms) < 2:
        raise ValueError(f"terms: {name} needs at least two patterns, got {len(terms)}")
    for t in terms:
        if not isinstance(t, Pattern):
            raise ValueError(f"terms: expected Pattern instances, got {type(t).__name__}")
    common_heads(terms)


def stack_breaks(parts: list[Tensor]) -> Tensor:
    """Concatenate row breaks ``[H|1, QB, P_i]`` along P, expanding head-independent ones to H heads."""
    heads = max(p.shape[0] for p in parts)
    return torch.cat([p.expand(heads, -1, -1) for p in parts], dim=-1)


def heads_of(tiles: Tiles, pattern_heads: int | None, wanted: int | None) -> Tiles:
    """Tiles of a pattern with ``pattern_heads`` heads, expanded when ``wanted`` heads are needed."""
    if wanted is not None and pattern_heads is None:
        return tiles.for_heads(wanted)
    return tiles


class Nary(Pattern):
    """Shared shape of `And` and `Or`: a flat tuple of terms combined by one associative operator.

    Subclasses are frozen dataclasses with a ``terms`` field and set ``symbol`` (for ``repr``),
    ``combine_masks`` (the token operator) and ``combine_classes`` (its Kleene counterpart).
    """

    terms: tuple[Pattern, ...]
    symbol: ClassVar[str]

    def __post_init__(self) -> None:
        object.__setattr__(self, "terms", tuple(self.terms))
        _check_terms(self.terms, type(self).__name__)

    @classmethod
    def of(cls, *patterns: Pattern) -> Self:
        flat: list[Pattern] = []
        for p in patterns:
            flat.extend(p.terms if isinstance(p, cls) else (p,))
        return cls(tuple(flat))  # type: ignore[call-arg]

    def __repr__(self) -> str:
        return "(" + f" {self.symbol} ".join(map(repr, self.terms)) + ")"

    @property
    def num_heads(self) -> int | None:
        return common_heads(self.terms)

    @staticmethod
    def combine_masks(a: Tensor, b: Tensor) -> Tensor:
        raise NotImplementedError

    @staticmethod
    def combine_classes(classes: Tensor) -> Tensor:
        raise NotImplementedError

    def mask(self, h: Tensor, q_idx: Tensor, kv_idx: Tensor, ctx: MaskContext) -> Tensor:
        out = self.terms[0].mask(h, q_idx, kv_idx, ctx)
        for t in self.terms[1:]:
            out = self.combine_masks(out, t.mask(h, q_idx, kv_idx, ctx))
        return out

    def classify(self, tiles: Tiles) -> Tensor:
        return self.combine_classes(torch.stack([tiles.classes_of(t) for t in self.terms]))

    def tile_key(self, tiles: Tiles) -> Tensor:
        return torch.cat([tiles.keys_of(t) for t in self.terms], dim=1)

    def row_breaks(self, ctx: MaskContext) -> Tensor | None:
        # Kleene min / max of the terms' classes changes only where some term's class does.
        parts = [ctx.breaks_of(t) for t in self.terms]
        if any(p is None for p in parts):
            return None
        return stack_breaks(parts)  # type: ignore[arg-type]


@dataclass(frozen=True, repr=False)
class And(Nary):
    """Pairs every term keeps (intersection). Built by ``a & b``; nested Ands are flattened."""

    terms: tuple[Pattern, ...]
    symbol: ClassVar[str] = "&"

    @staticmethod
    def combine_masks(a: Tensor, b: Tensor) -> Tensor:
        return a & b

    @staticmethod
    def combine_classes(classes: Tensor) -> Tensor:
        return classes.amin(0)

    def _tightest(self, ctx: MaskContext) -> Pattern | None:
        sized = [(size, i) for i, t in enumerate(self.terms) if (size := t.support_size(ctx)) is not None]
        return self.terms[min(sized)[1]] if sized else None

    def support(self, ctx: MaskContext) -> Tiles | None:
        # Any one term's support bounds the intersection; the smallest is the cheapest to filter.
        term = self._tightest(ctx)
        if term is None:
            return None
        tiles = term.support(ctx)
        assert tiles is not None
        return heads_of(tiles, term.num_heads, self.num_heads)

    def support_size(self, ctx: MaskContext) -> int | None:
        term = self._tightest(ctx)
        if term is None:
            return None
        size = term.support_size(ctx)
        assert size is not None
        return size * (self.num_heads or 1) if term.num_heads is None else size


@dataclass(frozen=True, repr=False)
class Or(Nary):
    """Pairs any term keeps (union). Built by ``a | b``; nested Ors are flattened."""

    terms: tuple[Pattern, ...]
    symbol: ClassVar[str] = "|"

    @staticmethod
    def combine_masks(a: Tensor, b: Tensor) -> Tensor:
        return a | b

    @staticmethod
    def combine_classes(classes: Tensor) -> Tensor:
        return classes.amax(0)

    def support(self, ctx: MaskContext) -> Tiles | None:
        if self.support_size(ctx) is None:
            return None
        heads = self.num_heads
        keys = []
        for t in self.terms:
            tiles = t.support(ctx)
            assert tiles is not None
            keys.append(heads_of(tiles, t.num_heads, heads).key())
        return Tiles.from_key(ctx, torch.cat(keys).unique())

    def support_size(self, ctx: MaskContext) -> int | None:
        heads = self.num_heads or 1
        total = 0
        for t in self.terms:
            size = t.support_size(ctx)
            if size is None:
                return None
            total += size * (heads if t.num_heads is None else 1)
        return total


@dataclass(frozen=True)
class Not(Pattern):
    """Pairs the term drops (complement). Built by ``~a``."""

    term: Pattern

    def __post_init__(self) -> None:
        if not isinstance(self.term, Pattern):
            raise ValueError(f"term: expected a Pattern, got {type(self.term).__name__}")

    @classmethod
    def of(cls, pattern: Pattern) -> Not:
        return cls(pattern)

    def __repr__(self) -> str:
        return f"~{self.term!r}"

    @property
    def num_heads(self) -> int | None:
        return self.term.num_heads

    def mask(self, h: Tensor, q_idx: Tensor, kv_idx: Tensor, ctx: MaskContext) -> Tensor:
        return ~self.term.mask(h, q_idx, kv_idx, ctx)

    def classify(self, tiles: Tiles) -> Tensor:
        return (2 - tiles.classes_of(self.term)).to(torch.int8)

    def tile_key(self, tiles: Tiles) -> Tensor:
        return tiles.keys_of(self.term)

    def row_breaks(self, ctx: MaskContext) -> Tensor | None:
        return ctx.breaks_of(self.term)
