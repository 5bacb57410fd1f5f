"""`LayerSchedule`: which pattern each layer of a model (and, optionally, each head) attends with.

A schedule is written as rules, the way papers state them::

    LayerSchedule([
        {"layers": "0-15", "pattern": Causal()},
        {"layers": "16-31", "pattern": Triangle()},
    ])

Layer and head specs are ``"a-b"`` (inclusive), ``"a-"`` (from ``a`` to the last), ``"a"``, ``"all"``,
comma-separated combinations of those, an int, or a list of ints. A rule with ``heads`` gives the pattern
to those heads only; the head rules of a layer are combined into one `PerHead`. ``default`` fills every
layer (or head) no rule names; without it, such a gap is an error.

Binding to a model (`bind`) checks everything at once: overlapping rules, gaps, layers or heads out of
range, patterns written for another number of heads. Each error is a ValueError naming the rule.

At run time a static pattern is lowered once per (pattern, q_len, kv_len, block size, device) and the
layout is shared by every layer that uses the pattern. A dynamic pattern — one with an ``estimate(q, k)``
method returning a concrete per-head pattern, such as MInference's vertical-slash — is estimated from
each layer's own queries and keys on every forward, and that concrete pattern is lowered then.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeGuard

import torch
from torch import Tensor

from sparseattn.estimation.captured import CapturedEstimates
from sparseattn.layout import BlockLayout, block_shape
from sparseattn.lowering import lower
from sparseattn.memo import LRU
from sparseattn.patterns import Causal, Pattern, PerHead


class DynamicPattern(Protocol):
    """A pattern known only once q and k are: ``estimate`` returns the concrete per-head pattern."""

    def estimate(self, q: Tensor, k: Tensor) -> Pattern: ...


LayerPattern = Pattern | DynamicPattern
BlockSize = int | tuple[int, int] | Callable[[Pattern, int, int], tuple[int, int]]


def is_dynamic(pattern: object) -> TypeGuard[DynamicPattern]:
    """True for patterns that must be estimated from q and k before they can be lowered."""
    return callable(getattr(pattern, "estimate", None))


def parse_indices(spec: object, count: int, what: str) -> list[int]:
    """Expand a layer or head spec (see the module docstring) to sorted indices in ``[0, count)``.

    >>> parse_indices("0-2,5-", 7, "layers")
    [0, 1, 2, 5, 6]
    """
    if isinstance(spec, bool):
        raise ValueError(f"{what}: expected a range such as '0-15', an int or a list of ints, got {spec!r}")
    if isinstance(spec, int):
        picked = [spec]
    elif isinstance(spec, str):
        picked = []
        for part in spec.replace(" ", "").split(","):
            picked.extend(_parse_part(part, count, what, spec))
    elif isinstance(spec, Sequence) and all(isinstance(i, int) and not isinstance(i, bool) for i in spec):
        picked = list(spec)
    else:
        raise ValueError(f"{what}: expected a range such as '0-15', an int or a list of ints, got {spec!r}")
    outside = sorted({i for i in picked if not 0 <= i < count})
    if outside:
        raise ValueError(f"{what}: {_ranges(outside)} out of range; valid are {_ranges(range(count))}")
    if len(set(picked)) != len(picked):
        raise ValueError(f"{what}: {spec!r} names an index twice")
    return sorted(picked)


def _parse_part(part: str, count: int, what: str, spec: str) -> range:
    if part in ("all", "*"):
        return range(count)
    first, dash, last = part.partition("-")
    try:
        lo = int(first)
        hi = (count - 1 if last == "" else int(last)) if dash else lo
    except ValueError:
        raise ValueError(f"{what}: cannot read {part!r} in {spec!r}; expected 'a-b', 'a-', 'a' or 'all'") from None
    if lo < 0 or hi < lo:
        raise ValueError(f"{what}: {part!r} in {spec!r} is not an ascending range of non-negative indices")
    return range(lo, hi + 1)


def _ranges(indices: Sequence[int] | range) -> str:
    """``[0, 1, 2, 5]`` -> ``'0-2, 5'``."""
    out: list[list[int]] = []
    for i in indices:
        if out and out[-1][1] == i - 1:
            out[-1][1] = i
        else:
            out.append([i, i])
    return ", ".join(f"{a}-{b}" if a != b else f"{a}" for a, b in out)


@dataclass(frozen=True)
class Rule:
    """``pattern`` for ``layers`` (and only ``heads`` of them, if given)."""

    layers: object
    pattern: LayerPattern
    heads: object = None


class LayerSchedule:
    """Layer (and head) -> pattern, validated against a model's shape; lowers and caches layouts.

    Construct from rules (and an optional ``default``); give ``num_layers`` (and ``num_heads``, the query
    heads) here or later through `bind`, which returns a bound copy. Only a bound schedule answers
    `pattern` and `layout`.

    ``capture_estimates=True`` replays dynamic layers' estimate and lowering from CUDA graphs
    (`sparseattn.estimation.captured`): on CUDA inputs that do not require grad, once per (pattern,
    shapes); a returned layout is then valid until the next dynamic layer of the same shapes.
    """

    def __init__(
        self,
        rules: Sequence[Rule | Mapping[str, Any]] = (),
        *,
        default: LayerPattern | None = None,
        num_layers: int | None = None,
        num_heads: int | None = None,
        cache_size: int = 64,
        capture_estimates: bool = False,
    ) -> None:
        self.rules = tuple(_as_rule(r, i) for i, r in enumerate(rules))
        if default is not None and not isinstance(default, Pattern) and not is_dynamic(default):
            raise ValueError(f"default: expected a Pattern, got {type(default).__name__}")
        if not self.rules and default is None:
            raise ValueError("rules: expected at least one rule or a default pattern")
        self.default = default
        self.cache_size = cache_size
        self.num_layers = num_layers
        self.num_heads = num_heads
        self._patterns: tuple[LayerPattern, ...] | None = None
        self._layouts: LRU[tuple[object, ...], BlockLayout] = LRU(cache_size)
        if not isinstance(capture_estimates, bool):
            raise ValueError(f"capture_estimates: expected a bool, got {capture_estimates!r}")
        self.capture_estimates = capture_estimates
        self._captured = CapturedEstimates() if capture_estimates else None
        self.estimates = 0  # dynamic estimations done
        if num_layers is not None:
            self._patterns = self._resolve(num_layers, num_heads)

    # ----------------------------------------------------------------- construction
    @classmethod
    def uniform(cls, pattern: Pattern, num_layers: int | None = None, num_heads: int | None = None) -> LayerSchedule:
        """Every layer uses ``pattern``."""
        return cls(default=pattern, num_layers=num_layers, num_heads=num_heads)

    @classmethod
    def per_layer(
        cls,
        layers: Sequence[LayerPattern],
        *,
        num_layers: int | None = None,
        num_heads: int | None = None,
        model: str | None = None,
    ) -> LayerSchedule:
        """Layer ``i`` uses ``layers[i]`` (lists such as ``sparseattn.estimation.load_yaml`` returns).

        ``num_layers`` and ``num_heads``, if given, are what the list was written for; ``model`` names that
        model (informational: MInference's per-head configs are fitted to one model).
        """
        if num_layers is not None and num_layers != len(layers):
            raise ValueError(f"num_layers: {num_layers} given, but the per-layer list{_for(model)} has {len(layers)}")
        rules = [Rule(layers=i, pattern=p) for i, p in enumerate(layers)]
        return cls(rules, num_layers=num_layers, num_heads=num_heads)

    def bind(self, num_layers: int, num_heads: int | None = None) -> LayerSchedule:
        """A copy validated for a model with ``num_layers`` layers and ``num_heads`` query heads."""
        return LayerSchedule(
            self.rules,
            default=self.default,
            num_layers=num_layers,
            num_heads=num_heads,
            cache_size=self.cache_size,
            capture_estimates=self.capture_estimates,
        )

    def _resolve(self, num_layers: int, num_heads: int | None) -> tuple[LayerPattern, ...]:
        if isinstance(num_layers, bool) or not isinstance(num_layers, int) or num_layers < 1:
            raise ValueError(f"num_layers: expected a positive int, got {num_layers!r}")
        if num_heads is not None and (isinstance(num_heads, bool) or not isinstance(num_heads, int) or num_heads < 1):
            raise ValueError(f"num_heads: expected a positive int or None, got {num_heads!r}")
        # owner[layer][head] = index of the rule that set it; head None stands for "the whole layer".
        owner: list[dict[int | None, int]] = [{} for _ in range(num_layers)]
        for i, rule in enumerate(self.rules):
            _check_heads(rule.pattern, num_heads, f"rules[{i}].pattern")
            layers = parse_indices(rule.layers, num_layers, f"rules[{i}].layers")
            heads: list[int | None] = [None]
            if rule.heads is not None:
                if num_heads is None:
                    raise ValueError(f"rules[{i}].heads: per-head rules need num_heads (the model's query heads)")
                if is_dynamic(rule.pattern):
                    raise ValueError(
                        f"rules[{i}].heads: a dynamic pattern ({type(rule.pattern).__name__}) is estimated for all "
                        "heads of a layer at once; give it whole layers and put per-head budgets in the pattern"
                    )
                heads = list(parse_indices(rule.heads, num_heads, f"rules[{i}].heads"))
            for layer in layers:
                for head in heads:
                    taken = owner[layer]
                    clash = next(iter(taken.values()), None) if head is None else taken.get(head, taken.get(None))
                    if clash is not None:
                        where = f"layer {layer}" + (f", head {head}" if head is not None else "")
                        raise ValueError(f"rules[{i}] overlaps rules[{clash}] at {where}")
                    owner[layer][head] = i
        if self.default is not None:
            _check_heads(self.default, num_heads, "default")
        uncovered = [layer for layer in range(num_layers) if not owner[layer]]
        if uncovered and self.default is None:
            raise ValueError(f"layers {_ranges(uncovered)} have no pattern: no rule names them and there is no default")
        return tuple(self._layer_pattern(layer, owner[layer], num_heads) for layer in range(num_layers))

    def _layer_pattern(self, layer: int, owner: dict[int | None, int], num_heads: int | None) -> LayerPattern:
        if None in owner:
            return self.rules[owner[None]].pattern
        if not owner:
            assert self.default is not None  # _resolve reported uncovered layers already
            return self.default
        assert num_heads is not None
        default = self.default
        missing = [h for h in range(num_heads) if h not in owner]
        if missing and not isinstance(default, Pattern):
            raise ValueError(f"layer {layer}: heads {_ranges(missing)} have no pattern: add a rule or a static default")
        # Head rules never hold dynamic patterns (_resolve refuses them), so every member is a Pattern.
        members = [self.rules[owner[h]].pattern if h in owner else default for h in range(num_heads)]
        return PerHead(tuple(m for m in members if isinstance(m, Pattern)))

    # ----------------------------------------------------------------- queries
    @property
    def bound(self) -> bool:
        return self._patterns is not None

    def pattern(self, layer: int) -> LayerPattern:
        """The pattern of ``layer`` (a `PerHead` where head rules apply; possibly dynamic)."""
        patterns = self._require_bound()
        if not 0 <= layer < len(patterns):
            raise ValueError(f"layer: expected 0 <= layer < {len(patterns)}, got {layer}")
        return patterns[layer]

    def is_causal(self, layer: int) -> bool:
        """True where the layer is plain causal attention (a dense kernel may serve it)."""
        return self.pattern(layer) == Causal()

    def is_dynamic(self, layer: int) -> bool:
        return is_dynamic(self.pattern(layer))

    def layout(
        self, layer: int, q: Tensor, k: Tensor, block_size: BlockSize, *, prompt_len: int | None = None
    ) -> BlockLayout:
        """The layout ``layer`` attends with for these queries and keys (``[1, H, S, D]`` for dynamic layers).

        ``q`` may be a chunk of a prompt over the keys cached so far (``q_len < kv_len``, chunked prefill);
        ``prompt_len`` is then the whole prompt's length, if known (`MaskContext.prompt_len`: `LastQueries`
        counts from the prompt's end, not from this chunk's).

        ``block_size`` is a tile shape (an int: square), or a function ``(pattern, q_len, kv_len) -> tile
        shape`` (a backend may prefer other tiles for sparse rows than for dense ones), for static patterns, which come from
        the cache (lowered on first use). Dynamic ones are estimated from ``q`` and ``k`` of this call (so a
        batch must be split into single sequences first) and lowered on the estimate's own tiles.
        """
        pattern = self.pattern(layer)
        q_len, kv_len, heads = q.shape[2], k.shape[2], q.shape[1]
        if self.num_heads is not None and heads != self.num_heads:
            raise ValueError(f"q: schedule is bound to {self.num_heads} query heads, got {heads}")
        if is_dynamic(pattern):
            if q.shape[0] != 1:
                raise ValueError(f"q: dynamic patterns are estimated per sequence; expected batch 1, got {q.shape[0]}")
            self.estimates += 1
            grad = torch.is_grad_enabled() and (q.requires_grad or k.requires_grad)
            if self._captured is not None and q.is_cuda and not grad:
                return self._captured.layout(pattern, q, k, num_heads=heads, prompt_len=prompt_len)
            # An estimate is lowered on its own tiles: a block-rounded vertical-slash is defined on them.
            estimate = pattern.estimate(q, k)
            return lower(estimate, q_len, kv_len, num_heads=heads, device=q.device, prompt_len=prompt_len)
        assert isinstance(pattern, Pattern)
        block = _tile_shape(block_size, pattern, q_len, kv_len)
        if prompt_len == kv_len:  # the same semantics as no prompt_len: one cache entry
            prompt_len = None
        key = (_pattern_key(pattern), q_len, kv_len, block, str(q.device), heads, prompt_len)
        return self._layouts.get(
            key,
            lambda: lower(
                pattern, q_len, kv_len, block_size=block, num_heads=heads, device=q.device, prompt_len=prompt_len
            ),
        )

    @property
    def lowerings(self) -> int:
        """Static lowerings done: the layout cache's misses (tests and logs read it)."""
        return self._layouts.misses

    def clear_cache(self) -> None:
        self._layouts.clear()

    def describe(self) -> str:
        """One line per run of layers sharing a pattern, e.g. ``layers 16-31: Triangle(...)``."""
        patterns = self._require_bound()
        lines: list[tuple[list[int], LayerPattern]] = []
        for layer, p in enumerate(patterns):
            if lines and lines[-1][1] == p:
                lines[-1][0].append(layer)
            else:
                lines.append(([layer], p))
        return "\n".join(f"layer{'s' if len(ls) > 1 else ''} {_ranges(ls)}: {p!r}" for ls, p in lines)

    def _require_bound(self) -> tuple[LayerPattern, ...]:
        if self._patterns is None:
            raise ValueError("schedule: not bound to a model yet; call bind(num_layers, num_heads) first")
        return self._patterns

    def __repr__(self) -> str:
        shape = f", num_layers={self.num_layers}, num_heads={self.num_heads}" if self.bound else ""
        return f"LayerSchedule(rules={list(self.rules)!r}, default={self.default!r}{shape})"


def _for(model: str | None) -> str:
    return f" for {model}" if model else ""


def _as_rule(rule: Rule | Mapping[str, Any], index: int) -> Rule:
    if isinstance(rule, Rule):
        out = rule
    elif isinstance(rule, Mapping):
        unknown = set(rule) - {"layers", "pattern", "heads"}
        if unknown or "layers" not in rule or "pattern" not in rule:
            raise ValueError(
                f"rules[{index}]: expected keys layers, pattern (and optionally heads), got {sorted(map(str, rule))}"
            )
        out = Rule(layers=rule["layers"], pattern=rule["pattern"], heads=rule.get("heads"))
    else:
        raise ValueError(f"rules[{index}]: expected a Rule or a mapping with layers and pattern, got {rule!r}")
    if not isinstance(out.pattern, Pattern) and not is_dynamic(out.pattern):
        raise ValueError(f"rules[{index}].pattern: expected a Pattern, got {type(out.pattern).__name__}")
    return out


def _check_heads(pattern: object, num_heads: int | None, what: str) -> None:
    own = getattr(pattern, "num_heads", None)
    if own is not None and num_heads is not None and own != num_heads:
        raise ValueError(f"{what}: {type(pattern).__name__} is written for {own} heads, the model has {num_heads}")


def _tile_shape(block_size: BlockSize, pattern: Pattern, q_len: int, kv_len: int) -> tuple[int, int]:
    return block_shape(block_size(pattern, q_len, kv_len) if callable(block_size) else block_size)


def _pattern_key(pattern: object) -> object:
    """Equal patterns share a layout; unhashable ones fall back to identity."""
    try:
        hash(pattern)
    except TypeError:
        return ("id", id(pattern))
    return pattern
