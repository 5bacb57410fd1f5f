"""Per-layer, per-head MInference configurations: their JSON in, our Hydra YAML in and out.

MInference's searched configs are a JSON list with one dict per layer, mapping a head index (string)
to ``[type, vertical, slash, score]``:

- ``"vertical_and_slash"``: `VerticalSlash` with those budgets, ``form="minference"`` unless
  ``vs_options`` say otherwise (MInference's own mask: its index builder's merged windows and gathered
  verticals; see `VerticalSlashIndices`);
- ``"block_sparse"``: `BlockTopK` keeping ``vertical`` key blocks (MInference passes that field as its top-k);
- ``"stream_llm"`` / ``"a_shape"``: `Streaming` with ``vertical`` sink tokens (``n_init``) and a window of
  ``slash`` tokens (``n_local``), the query itself included: MInference runs both through
  ``streaming_forward`` / ``a_shape_kernel`` (``ops/streaming_kernel.py``), whose mask is
  ``k < n_init or 0 <= q_pos - k < n_local``, causal. (`AShape` is the block-granular variant.)

``score`` (the search's recovery score) is not needed to run the pattern and is dropped.

Ours is Hydra YAML with named fields and real ``_target_`` classes (no registries)::

    layers:
      - _target_: sparseattn.estimation.VerticalSlash
        vertical: [1000, 3500, ...]   # one per head, or one int for all heads
        slash: [6096, 100, ...]
"""

from __future__ import annotations

import json
from dataclasses import fields
from pathlib import Path
from typing import Any

from sparseattn.estimation.block_topk import BlockTopK
from sparseattn.estimation.budgets import scalar_budget
from sparseattn.estimation.mixed_heads import HeadPattern, MixedHeads
from sparseattn.estimation.vertical_slash import VerticalSlash
from sparseattn.patterns.base import Pattern
from sparseattn.patterns.shapes import Streaming

LayerPattern = VerticalSlash | BlockTopK | MixedHeads | Pattern


def _head(layer: int, head: str, entry: Any, vs_options: dict[str, Any]) -> HeadPattern:
    where = f"config[{layer}][{head!r}]"
    if not isinstance(entry, (list, tuple)) or len(entry) < 3:
        raise ValueError(f"{where}: expected [type, vertical, slash, score], got {entry!r}")
    kind, vertical, slash = entry[0], entry[1], entry[2]
    if kind == "vertical_and_slash":
        return VerticalSlash(vertical, slash, **vs_options)
    if kind == "block_sparse":
        return BlockTopK(vertical)
    if kind in ("stream_llm", "a_shape"):
        return Streaming(sink=vertical, window=slash)
    raise ValueError(f"{where}: type expected 'vertical_and_slash', 'block_sparse' or 'stream_llm', got {kind!r}")


def _layer(heads: tuple[HeadPattern, ...]) -> LayerPattern:
    """One pattern for the layer: uniform kinds fold their per-head budgets into one pattern."""
    slashes = [p for p in heads if isinstance(p, VerticalSlash)]
    if len(slashes) == len(heads):
        vertical = tuple(scalar_budget(p.vertical) for p in slashes)
        slash = tuple(scalar_budget(p.slash) for p in slashes)
        # Every head was built with the same options (from_minference_json's vs_options).
        vertical_budget, slash_budget = _fold(vertical, slash)
        return VerticalSlash(vertical_budget, slash_budget, **_vs_options(slashes[0]))
    blocks = [p for p in heads if isinstance(p, BlockTopK)]
    if len(blocks) == len(heads) and len({p.block_size for p in blocks}) == 1:
        (topk,) = _fold(tuple(scalar_budget(p.topk) for p in blocks))
        return BlockTopK(topk, blocks[0].block_size)
    if len(set(heads)) == 1 and isinstance(heads[0], Pattern):
        return heads[0]
    return MixedHeads(heads)


def _fold(*budgets: tuple[int, ...]) -> tuple[int | tuple[int, ...], ...]:
    """Budgets equal on every head become one int; otherwise they stay per head."""
    if all(len(set(b)) == 1 for b in budgets):
        return tuple(b[0] for b in budgets)
    return budgets


def _vs_options(p: VerticalSlash) -> dict[str, Any]:
    return {f.name: getattr(p, f.name) for f in fields(p) if f.name not in ("vertical", "slash")}


def from_minference_json(config: str | Path | list[Any], **vs_options: Any) -> list[LayerPattern]:
    """One pattern per layer from MInference's per-head JSON (a path, or the parsed list).

    ``vs_options`` (``last_q``, ``form``, ``block_size``, ...) are passed to every `VerticalSlash`;
    ``form`` defaults to ``"minference"``, the mask MInference computes.
    """
    vs_options = {"form": "minference", **vs_options}
    data = json.loads(Path(config).read_text()) if isinstance(config, (str, Path)) else config
    if not isinstance(data, list) or not data:
        raise ValueError(f"config: expected a non-empty list with one dict per layer, got {type(data).__name__}")
    layers = []
    for i, layer in enumerate(data):
        if not isinstance(layer, dict) or not layer:
            raise ValueError(f"config[{i}]: expected a dict head -> [type, vertical, slash, score], got {layer!r}")
        order = sorted(layer, key=int)
        if [int(h) for h in order] != list(range(len(order))):
            raise ValueError(f"config[{i}]: expected heads 0..{len(order) - 1}, got {order}")
        layers.append(_layer(tuple(_head(i, h, layer[h], vs_options) for h in order)))
    return layers


def _node(p: Any) -> Any:
    """Hydra config node (``_target_`` plus named fields) of a pattern, recursively."""
    if isinstance(p, (list, tuple)):
        return [_node(v) for v in p]
    if hasattr(p, "__dataclass_fields__"):
        node: dict[str, Any] = {
            "_target_": f"{type(p).__module__.rsplit('.', 1)[0] if type(p).__module__.startswith('sparseattn.estimation') else type(p).__module__}.{type(p).__qualname__}"
        }
        for f in fields(p):
            node[f.name] = _node(getattr(p, f.name))
        return node
    return p


def to_yaml(layers: list[LayerPattern]) -> str:
    """Our Hydra YAML for per-layer patterns (``layers:`` list, named fields, real ``_target_`` classes)."""
    from omegaconf import OmegaConf

    return OmegaConf.to_yaml(OmegaConf.create({"layers": [_node(p) for p in layers]}))


def load_yaml(path: str | Path) -> list[LayerPattern]:
    """Instantiate the ``layers`` of one of our YAML files (see the module docstring)."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(path)
    if "layers" not in cfg:
        raise ValueError(f"path: expected a YAML with a 'layers' list, {path} has keys {list(cfg)}")
    return list(instantiate(cfg.layers, _convert_="all"))
