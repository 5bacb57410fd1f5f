"""Dynamic patterns: estimated from q and k per call (MInference's vertical-slash and block-sparse heads,
and block-sparse heads with an adaptive, mass-threshold budget)."""

from sparseattn.patterns.dynamic.block_mass import BlockMass
from sparseattn.patterns.dynamic.block_topk import BlockTopK, BlockTopKTiles
from sparseattn.patterns.dynamic.head_tiles import HeadTiles
from sparseattn.patterns.dynamic.minference_config import from_minference_json, load_yaml, to_yaml
from sparseattn.patterns.dynamic.mixed_heads import MixedHeads
from sparseattn.patterns.dynamic.vertical_slash import VerticalSlash
from sparseattn.patterns.dynamic.vs_indices import VerticalSlashIndices

__all__ = [
    "BlockMass",
    "BlockTopK",
    "BlockTopKTiles",
    "HeadTiles",
    "MixedHeads",
    "VerticalSlash",
    "VerticalSlashIndices",
    "from_minference_json",
    "load_yaml",
    "to_yaml",
]
