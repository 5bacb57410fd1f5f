"""Every experiment's top-level config composes, resolves, and its patterns and schedules instantiate.

(`tests/test_configs.py` covers the `pattern/`, `schedule/` and `model/` groups; `tests/test_dynamic_patterns.py`
covers `minference/`.) Models are not built here: that is the groups' test.
"""

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import DictConfig, ListConfig, OmegaConf

from sparseattn.patterns import Pattern
from sparseattn.schedule import LayerSchedule

CONF = Path(__file__).resolve().parents[1] / "conf"
TOP_LEVEL = sorted(p.stem for p in CONF.glob("*.yaml"))


def cheap_targets(node: object) -> list[DictConfig]:
    """Config nodes whose _target_ is one of our patterns or schedules."""
    found: list[DictConfig] = []
    if isinstance(node, DictConfig):
        target = node.get("_target_")
        if isinstance(target, str) and target.startswith(("sparseattn.patterns", "sparseattn.schedule")):
            return [node]
        for value in node.values():
            found += cheap_targets(value)
    elif isinstance(node, ListConfig):
        for value in node:
            found += cheap_targets(value)
    return found


@pytest.mark.parametrize("name", TOP_LEVEL)
def test_top_level_config_composes_and_instantiates(name):
    with initialize_config_dir(config_dir=str(CONF), version_base=None):
        cfg = compose(name)
    OmegaConf.to_container(cfg, resolve=True)  # every interpolation resolves
    targets = cheap_targets(cfg)
    for node in targets:
        obj = instantiate(node, _convert_="all")
        assert isinstance(obj, (Pattern, LayerSchedule)), f"{name}: {node._target_} gave {type(obj).__name__}"
        if isinstance(obj, LayerSchedule):
            obj.bind(30)
    if name in ("accuracy", "attention_profile", "bench_kernel"):
        assert targets, f"{name}: expected patterns or schedules to instantiate"


def test_bench_tiles_follow_the_blocks_override(monkeypatch):
    """`bench_kernel.py blocks={triangle: [64, 32]}` lowers that pattern on those tiles, the others as
    `sparse_attention` would."""
    import torch

    monkeypatch.syspath_prepend(str(CONF.parent / "experiments"))
    from bench_kernel import build_patterns, tile_shape

    with initialize_config_dir(config_dir=str(CONF), version_base=None):
        cfg = compose("bench_kernel", overrides=["+blocks.triangle=[64,32]"])
    pats = build_patterns(cfg)
    assert tile_shape(cfg, "triangle", pats["triangle"], 32768, torch.bfloat16) == (64, 32)
    assert tile_shape(cfg, "causal", pats["causal"], 32768, torch.bfloat16) == (128, 128)


def test_bench_only_names_known_patterns(monkeypatch):
    """`bench_kernel.py only=[...]` accepts the pattern names and mixture, and names what it expected."""
    monkeypatch.syspath_prepend(str(CONF.parent / "experiments"))
    from bench_kernel import build_patterns

    with initialize_config_dir(config_dir=str(CONF), version_base=None):
        assert "mixture" in build_patterns(compose("bench_kernel", overrides=["only=[mixture]"]))
        with pytest.raises(ValueError, match="only: expected names from"):
            build_patterns(compose("bench_kernel", overrides=["only=[mixtur]"]))
