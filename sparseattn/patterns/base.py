"""The `Pattern` base class and its algebra: token-level truth, tile classification, and the `And`,
`Or`, `Not` nodes that ``&``, ``|``, ``~`` build (plain frozen data whose ``repr`` is the expression).

A pattern answers three questions, from the most exact to the cheapest:

- ``mask(h, q_idx, kv_idx, ctx)``: is the pair kept? (the truth; broadcasting tensors)
- ``classify(ctx, tiles)``: is each tile EMPTY, PARTIAL or FULL? (sound: never a wrong EMPTY or FULL)
- ``support(ctx)``: which tiles can possibly be non-empty? (a superset, so lowering never scans the
  whole q x kv plane)
- ``row_breaks(ctx)``: where along each query-block row can the tile class change? (a superset of
  the change points, so lowering classifies one tile per run of equal tiles instead of every tile)

``to_mask_mod(q_len, kv_len)`` gives the same truth as a FlexAttention ``mask_mod`` written from the
pattern's own parameters (comparisons, no q x kv table), where the pattern has such a predicate.

Subclasses of primitives answer all three analytically from their parameters. A user subclass only
has to implement ``mask``: the defaults classify by evaluating ``mask`` on each tile, which is exact
and O(tile area).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import torch
from torch import Tensor

from sparseattn.patterns.tiles import EMPTY, FULL, PARTIAL, MaskContext, Tiles, tile_bits

if TYPE_CHECKING:
    from typing_extensions import Self

    from sparseattn.layout import BlockLayout

MaskMod = Callable[[Tensor, Tensor, Tensor, Tensor], Tensor]
"""A FlexAttention ``mask_mod``: ``(b, h, q_idx, kv_idx) -> bool tensor``, arguments broadcasting."""


class Pattern:
    """Base class of every attention pattern.

    Subclasses are frozen dataclasses. ``mask`` is required; ``classify``, ``support`` and ``tile_key``
    have exact but slow defaults that analytic subclasses override.
    """

    # ----------------------------------------------------------------- truth
    def mask(self, h: Tensor, q_idx: Tensor, kv_idx: Tensor, ctx: MaskContext) -> Tensor:
        """Keep (True) or drop each pair; arguments broadcast against each other."""
        raise NotImplementedError(f"{type(self).__name__} must implement mask(h, q_idx, kv_idx, ctx)")

    @property
    def num_heads(self) -> int | None:
        """Number of heads the pattern is written for, or None if it does not depend on the head."""
        return None

    def to_dense(
        self, q_len: int, kv_len: int | None = None, num_heads: int | None = None, prompt_len: int | None = None
    ) -> Tensor:
        """The token truth: bool ``[H|1, q_len, kv_len]`` (``H`` only when the pattern depends on heads).

        ``prompt_len`` is the whole prompt's length when these queries are a chunk it continues past
        (`MaskContext.prompt_len`)."""
        kv_len = q_len if kv_len is None else kv_len
        heads = self._resolve_heads(num_heads)
        ctx = MaskContext(q_len, kv_len, heads or 1, prompt_len=prompt_len)
        h = torch.arange(heads or 1).view(-1, 1, 1)
        q = torch.arange(q_len).view(1, -1, 1)
        k = torch.arange(kv_len).view(1, 1, -1)
        return self.mask(h, q, k, ctx).expand(heads or 1, q_len, kv_len).clone()

    def render(self, q_len: int = 8, kv_len: int | None = None, head: int = 0) -> str:
        """ASCII picture of one head: ``#`` kept, ``-`` dropped, one line per query row."""
        dense = self.to_dense(q_len, kv_len, num_heads=self.num_heads)
        rows = dense[head if dense.shape[0] > 1 else 0]
        return "\n".join("".join("#" if kept else "-" for kept in row.tolist()) for row in rows)

    # ----------------------------------------------------------------- FlexAttention predicate
    def to_mask_mod(self, q_len: int, kv_len: int | None = None) -> MaskMod:
        """The pattern as a FlexAttention ``mask_mod`` for ``q_len`` queries against ``kv_len`` keys.

        Built from the pattern's own parameters (comparisons on indices, and small per-head or
        per-document tensors at most; never a q x kv table), with the bottom-right alignment of
        `MaskContext`: ``q_pos = q_idx + (kv_len - q_len)``. What a FlexAttention user writes::

            block_mask = create_block_mask(pattern.to_mask_mod(q_len, kv_len), B, H, q_len, kv_len)

        Equal to ``to_dense(q_len, kv_len)``. Patterns without an analytic predicate (estimated patterns
        given by their tiles, user patterns that only implement ``mask``) raise `NotImplementedError`;
        they reach FlexAttention through the layout path, ``sparseattn.lower(pattern, ...).to_flex()``.
        """
        return self.mask_mod(MaskContext(q_len, q_len if kv_len is None else kv_len))

    def mask_mod(self, ctx: MaskContext) -> MaskMod:
        """`to_mask_mod` under ``ctx`` (its lengths); subclasses with an analytic predicate override this."""
        raise NotImplementedError(
            f"{type(self).__name__} has no analytic predicate (to_mask_mod); use the layout path: "
            "sparseattn.lower(pattern, q_len, kv_len, ...).to_flex()"
        )

    def _resolve_heads(self, num_heads: int | None) -> int | None:
        own = self.num_heads
        if own is not None and num_heads is not None and own != num_heads:
            raise ValueError(f"num_heads: {type(self).__name__} is written for {own} heads, got num_heads={num_heads}")
        return own if own is not None else num_heads

    # ----------------------------------------------------------------- tiles
    def classify(self, tiles: Tiles) -> Tensor:
        """EMPTY / PARTIAL / FULL (int8) for each tile; the default evaluates ``mask`` on the tile."""
        ctx = tiles.ctx
        rows = torch.arange(ctx.block_m, device=ctx.device)
        cols = torch.arange(ctx.block_n, device=ctx.device)
        out = torch.empty(len(tiles), dtype=torch.int8, device=ctx.device)
        chunk = max(1, 2**22 // (ctx.block_m * ctx.block_n))
        for start in range(0, len(tiles), chunk):
            part = tiles.select(slice(start, start + chunk))
            bits, inside = tile_bits(self, part, rows, cols)
            kept = (bits & inside).sum((-1, -2))
            out[start : start + chunk] = torch.where(
                kept == 0, EMPTY, torch.where(kept == inside.sum((-1, -2)), FULL, PARTIAL)
            ).to(torch.int8)
        return out

    def support(self, ctx: MaskContext) -> Tiles | None:
        """Tiles that may be non-empty (a superset), or None for "any tile"."""
        return None

    def support_size(self, ctx: MaskContext) -> int | None:
        """Cheap upper bound on ``len(support(ctx))``, or None exactly when ``support`` is None."""
        return None

    def row_breaks(self, ctx: MaskContext) -> Tensor | None:
        """Kv-block indices where the tile class may change along each query-block row, or None.

        int64 ``[H|1, QB, P]`` (``H`` only when the pattern depends on the head; entries may repeat or
        fall outside ``[0, num_kv_blocks]``). With the breaks of a row sorted and ``0``,
        ``num_kv_blocks - 1`` and ``num_kv_blocks`` added, ``classify`` must give every tile between two
        consecutive breaks the same class. The last kv block is always a run of its own, so breaks need
        not account for its clipped extent. None (the default) means unknown: lowering then classifies
        every candidate tile.
        """
        return None

    def tile_key(self, tiles: Tiles) -> Tensor:
        """int64 ``[len(tiles), K]`` such that PARTIAL tiles with equal rows (and equal extents) have equal bitmaps.

        The default makes every tile its own key, which is always correct; analytic patterns return
        keys that collapse the many identical tiles of a structured pattern into a few.
        """
        return torch.stack([tiles.head, tiles.q_block, tiles.kv_block], dim=1)

    # ----------------------------------------------------------------- lowering
    @property
    def native_block_size(self) -> tuple[int, int] | None:
        """The tile shape the pattern is defined on, for patterns given tile by tile (an estimate's kept
        tiles); None for token-level patterns, which lower to any tile shape."""
        return None

    def own_layout(
        self, q_len: int, kv_len: int, block_size: tuple[int, int], device: torch.device | None
    ) -> BlockLayout | None:
        """A layout the pattern builds itself on ``block_size`` tiles (its `native_block_size` when it has
        one) on ``device`` (where its own data lives when None), or None to be lowered analytically.

        Estimated patterns that already hold their kept tiles override this (`sparseattn.lowering.lower`
        asks first); analytic patterns never need to.
        """
        return None

    # ----------------------------------------------------------------- algebra
    def __and__(self, other: Pattern) -> Pattern:
        return And.of(self, other)

    def __or__(self, other: Pattern) -> Pattern:
        return Or.of(self, other)

    def __invert__(self) -> Pattern:
        return Not.of(self)


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

    def mask_mod(self, ctx: MaskContext) -> MaskMod:
        mods = [t.mask_mod(ctx) for t in self.terms]
        combine = self.combine_masks

        def mask_mod(b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor) -> Tensor:
            out = mods[0](b, h, q_idx, kv_idx)
            for mod in mods[1:]:
                out = combine(out, mod(b, h, q_idx, kv_idx))
            return out

        return mask_mod

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

    def mask_mod(self, ctx: MaskContext) -> MaskMod:
        mod = self.term.mask_mod(ctx)

        def mask_mod(b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor) -> Tensor:
            return ~mod(b, h, q_idx, kv_idx)

        return mask_mod

    def classify(self, tiles: Tiles) -> Tensor:
        return (2 - tiles.classes_of(self.term)).to(torch.int8)

    def tile_key(self, tiles: Tiles) -> Tensor:
        return tiles.keys_of(self.term)

    def row_breaks(self, ctx: MaskContext) -> Tensor | None:
        return ctx.breaks_of(self.term)
