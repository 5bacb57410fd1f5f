"""LayerSchedule: rules, validation errors, layout sharing, dynamic estimation."""

from dataclasses import dataclass

import pytest
import torch

from sparseattn import Causal, PerHead, Streaming, Triangle, Window
from sparseattn.schedule import LayerSchedule, Rule, parse_indices

TRIANGLE = Triangle(sink=4, window=16, last=8)


def trianglemix(num_layers=4, split=2, **kw):
    return LayerSchedule(
        [{"layers": f"0-{split - 1}", "pattern": Causal()}, {"layers": f"{split}-", "pattern": TRIANGLE}],
        num_layers=num_layers,
        **kw,
    )


@dataclass(frozen=True)
class WindowFromKeys:
    """A stand-in dynamic pattern: the window width is read from the keys, so it must be estimated."""

    def estimate(self, q, k):
        assert q.shape[0] == 1
        return Window(1 + int(k.shape[2] // 2)) & Causal()


def qk(q_len=64, kv_len=None, heads=4, kv_heads=2, batch=1):
    kv_len = kv_len or q_len
    return torch.randn(batch, heads, q_len, 16), torch.randn(batch, kv_heads, kv_len, 16)


def test_rules_resolve_per_layer():
    schedule = trianglemix(32, 16)
    assert schedule.pattern(0) == Causal() and schedule.pattern(15) == Causal()
    assert schedule.pattern(16) == TRIANGLE and schedule.pattern(31) == TRIANGLE
    assert schedule.is_causal(3) and not schedule.is_causal(20)
    assert schedule.describe().splitlines() == ["layers 0-15: Causal()", f"layers 16-31: {TRIANGLE!r}"]


@pytest.mark.parametrize(
    ("spec", "expected"),
    [("3", [3]), (3, [3]), ("all", [0, 1, 2, 3, 4]), ("1-2,4", [1, 2, 4]), ("2-", [2, 3, 4]), ([0, 4], [0, 4])],
)
def test_index_specs(spec, expected):
    assert parse_indices(spec, 5, "layers") == expected


@pytest.mark.parametrize(
    ("rules", "message"),
    [
        ([("0-15", Causal()), ("15-31", TRIANGLE)], r"rules\[1\] overlaps rules\[0\] at layer 15"),
        ([("0-14", Causal()), ("16-31", TRIANGLE)], r"layers 15 have no pattern"),
        ([("0-15", Causal()), ("16-40", TRIANGLE)], r"rules\[1\]\.layers: 32-40 out of range; valid are 0-31"),
        ([("0-x", Causal())], r"rules\[0\]\.layers: cannot read '0-x'"),
        ([("5-2", Causal())], r"rules\[0\]\.layers: '5-2'"),
        ([("all", PerHead((Causal(),) * 4))], r"rules\[0\]\.pattern: PerHead is written for 4 heads, the model has 8"),
        ([("all", "Causal()")], r"rules\[0\]\.pattern: expected a Pattern, got str"),
    ],
)
def test_invalid_rules_name_the_problem(rules, message):
    with pytest.raises(ValueError, match=message):
        LayerSchedule([Rule(layers, pattern) for layers, pattern in rules], num_layers=32, num_heads=8)


def test_rule_mappings_are_checked():
    with pytest.raises(ValueError, match=r"rules\[0\]: expected keys layers, pattern"):
        LayerSchedule([{"layer": "0-3", "pattern": Causal()}])
    with pytest.raises(ValueError, match="at least one rule or a default"):
        LayerSchedule([])


def test_default_fills_gaps():
    schedule = LayerSchedule([{"layers": "2", "pattern": TRIANGLE}], default=Causal(), num_layers=4)
    assert [schedule.pattern(i) for i in range(4)] == [Causal(), Causal(), TRIANGLE, Causal()]


def test_head_rules_build_per_head_patterns():
    stream = Streaming(sink=4, window=8)
    schedule = LayerSchedule(
        [{"layers": "all", "heads": "0-1", "pattern": stream}, {"layers": "1", "heads": "2-3", "pattern": TRIANGLE}],
        default=Causal(),
        num_layers=2,
        num_heads=4,
    )
    assert schedule.pattern(0) == PerHead((stream, stream, Causal(), Causal()))
    assert schedule.pattern(1) == PerHead((stream, stream, TRIANGLE, TRIANGLE))


def test_head_rule_errors():
    heads = [{"layers": "0", "heads": "0-1", "pattern": Causal()}]
    with pytest.raises(ValueError, match=r"layer 0: heads 2-3 have no pattern"):
        LayerSchedule(heads, num_layers=1, num_heads=4)
    with pytest.raises(ValueError, match=r"rules\[1\] overlaps rules\[0\] at layer 0, head 1"):
        LayerSchedule([*heads, {"layers": "0", "heads": "1-3", "pattern": TRIANGLE}], num_layers=1, num_heads=4)
    with pytest.raises(ValueError, match=r"rules\[1\] overlaps rules\[0\] at layer 0"):
        LayerSchedule([*heads, {"layers": "0", "pattern": TRIANGLE}], num_layers=1, num_heads=4)
    with pytest.raises(ValueError, match=r"rules\[0\]\.heads: 4-5 out of range; valid are 0-3"):
        LayerSchedule([{"layers": "0", "heads": "2-5", "pattern": Causal()}], num_layers=1, num_heads=4)
    with pytest.raises(ValueError, match=r"rules\[0\]\.heads: per-head rules need num_heads"):
        LayerSchedule(heads, num_layers=1)
    with pytest.raises(ValueError, match=r"rules\[0\]\.heads: a dynamic pattern"):
        LayerSchedule([{"layers": "0", "heads": "0", "pattern": WindowFromKeys()}], num_layers=1, num_heads=4)


def test_unbound_schedule_refuses_queries_and_bind_validates():
    schedule = LayerSchedule([{"layers": "0-15", "pattern": Causal()}, {"layers": "16-", "pattern": TRIANGLE}])
    with pytest.raises(ValueError, match="not bound"):
        schedule.pattern(0)
    assert schedule.bind(28).pattern(27) == TRIANGLE
    with pytest.raises(ValueError, match=r"rules\[0\]\.layers: 8-15 out of range"):
        schedule.bind(8)


def test_static_patterns_lowered_once_and_shared_by_layers():
    schedule = trianglemix(6, 2)
    q, k = qk(96)
    layouts = [schedule.layout(layer, q, k, (32, 32)) for layer in range(2, 6)]
    assert schedule.lowerings == 1 and all(lay is layouts[0] for lay in layouts)
    schedule.layout(2, *qk(64), (32, 32))  # another length
    schedule.layout(2, q, k, (64, 64))  # another block size
    assert schedule.lowerings == 3
    assert schedule.layout(5, q, k, (32, 32)) is layouts[0]


def test_equal_patterns_in_different_rules_share_a_layout():
    schedule = LayerSchedule(
        [{"layers": "0", "pattern": Triangle(4, 16, 8)}, {"layers": "1", "pattern": Triangle(4, 16, 8)}], num_layers=2
    )
    q, k = qk(64)
    assert schedule.layout(0, q, k, (32, 32)) is schedule.layout(1, q, k, (32, 32))
    assert schedule.lowerings == 1


def test_dynamic_patterns_estimated_per_layer_per_call():
    schedule = LayerSchedule([{"layers": "0-2", "pattern": WindowFromKeys()}], default=TRIANGLE, num_layers=4)
    assert schedule.is_dynamic(0) and not schedule.is_dynamic(3)
    q, k = qk(64)
    for _ in range(2):
        for layer in range(3):
            layout = schedule.layout(layer, q, k, (32, 32))
    assert schedule.estimates == 6 and schedule.lowerings == 0
    assert torch.equal(layout.to_dense()[0, 0], (Window(33) & Causal()).to_dense(64)[0])
    with pytest.raises(ValueError, match="expected batch 1"):
        schedule.layout(0, *qk(64, batch=2), (32, 32))


def test_layout_checks_heads_against_the_bound_model():
    schedule = trianglemix(4, 2, num_heads=8)
    with pytest.raises(ValueError, match="bound to 8 query heads, got 4"):
        schedule.layout(3, *qk(64), (32, 32))


def test_per_layer_lists_become_one_rule_per_layer():
    layers = [Causal(), TRIANGLE, TRIANGLE]
    schedule = LayerSchedule.per_layer(layers, num_layers=3, model="toy")
    assert [schedule.pattern(i) for i in range(3)] == layers
    with pytest.raises(ValueError, match="num_layers: 4 given, but the per-layer list for toy has 3"):
        LayerSchedule.per_layer(layers, num_layers=4, model="toy")
    with pytest.raises(ValueError, match=r"layers 3 have no pattern"):
        LayerSchedule.per_layer(layers).bind(4)


def test_tile_shape_may_depend_on_the_concrete_pattern():
    schedule = trianglemix(4, 2)
    asked = []

    def choose(pattern, q_len, kv_len):
        asked.append((pattern, q_len, kv_len))
        return (32, 32) if pattern == TRIANGLE else (64, 64)

    q, k = qk(96)
    assert schedule.layout(3, q, k, choose).block_size == (32, 32)
    assert schedule.layout(0, q, k, choose).block_size == (64, 64)
    assert asked == [(TRIANGLE, 96, 96), (Causal(), 96, 96)]
