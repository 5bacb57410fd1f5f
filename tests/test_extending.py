"""The README's extension example: a user pattern, its YAML, and the one-line property test."""

from pathlib import Path

import hydra.utils
from hypothesis import strategies as st
from omegaconf import OmegaConf

from examples.strided import Strided
from sparseattn.lowering import lower
from sparseattn.testing import pattern_property_test

test_strided = pattern_property_test(st.builds(Strided, st.integers(1, 9)))

test_strided_in_expressions = pattern_property_test(
    st.builds(lambda s, w: Strided(s) | (Strided(1) & ~Strided(s + 1)), st.integers(1, 6), st.integers(1, 40))
)


def test_yaml_points_at_the_class():
    config = OmegaConf.load(Path(__file__).parents[1] / "examples" / "strided.yaml")
    pattern = hydra.utils.instantiate(config)
    assert pattern == Strided(4)
    layout = lower(pattern, 300, block_size=(64, 64))
    assert layout.to_dense()[0, 0].equal(pattern.to_dense(300)[0])
