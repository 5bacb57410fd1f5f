"""What a new user meets first: no wrong number without an error, the same input policy on every backend,
``block_size`` as an int, and a warning before a mask-only pattern lowers slowly."""

import os
import warnings
from dataclasses import dataclass

import pytest
import torch

from sparseattn import BlockLayout, Causal, LayerSchedule, Triangle, sparse_attention
from sparseattn.lowering import lower
from sparseattn.patterns import Pattern
from sparseattn.testing import assert_close_to_oracle

IMPLS = ["reference", "flex", "triton"]


def qkv(batch=1, heads=2, kv_heads=1, n=96, dim=32, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    make = lambda h: torch.randn(batch, h, n, dim, generator=g).to(dtype)
    return make(heads), make(kv_heads), make(kv_heads)


@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1", reason="needs Triton's interpreter")
def test_bfloat16_under_the_interpreter_is_correct():
    """The interpreter's bf16 tl.dot returns ~1e8 everywhere; the launch computes bf16 through fp32."""
    q, k, v = qkv(dtype=torch.bfloat16)
    pattern = Triangle(sink=4, window=32, last=16)
    out, lse = sparse_attention(q, k, v, pattern, impl="triton", return_lse=True)
    assert out.dtype == torch.bfloat16
    assert_close_to_oracle(out, lse, q, k, v, pattern.to_dense(96).unsqueeze(0))


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("name", ["q", "k", "v"])
@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_inputs_raise_on_every_backend(impl, name, value):
    tensors = dict(zip("qkv", qkv(), strict=True))
    tensors[name][0, 0, 50, 3] = value
    with pytest.raises(ValueError, match=rf"^{name}: expected finite values"):
        sparse_attention(tensors["q"], tensors["k"], tensors["v"], Causal(), impl=impl)


@pytest.mark.parametrize("impl", IMPLS)
def test_empty_batch_raises_on_every_backend(impl):
    q, k, v = (t[:0] for t in qkv())
    with pytest.raises(ValueError, match=r"^q: expected batch, heads and head_dim >= 1"):
        sparse_attention(q, k, v, Causal(), impl=impl)


def test_int_block_size_means_a_square_tile_everywhere():
    mask = Causal().to_dense(128).unsqueeze(0)
    assert BlockLayout.from_dense(mask, 64).block_size == (64, 64)
    assert lower(Causal(), 128, block_size=64).block_size == (64, 64)
    schedule = LayerSchedule([], default=Causal()).bind(1, 2)
    q, k, _ = qkv(n=128)
    assert schedule.layout(0, q, k, 64).block_size == (64, 64)
    for bad in ("64", (64,), 64.0):
        with pytest.raises(ValueError, match=r"^block_size: expected an int"):
            BlockLayout.from_dense(mask, bad)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match=r"^block_size: expected an int"):
            schedule.layout(0, q, k, bad)  # type: ignore[arg-type]


@dataclass(frozen=True)
class _Stripes(Pattern):
    """Keeps every 7th diagonal; defines only ``mask``."""

    def mask(self, h, q_idx, kv_idx, ctx):
        return (q_idx + ctx.offset - kv_idx) % 7 == 0


@dataclass(frozen=True)
class _OtherStripes(_Stripes):
    pass


def test_mask_only_pattern_warns_once_above_the_slow_size(monkeypatch):
    from sparseattn import lowering

    # 2**14 token pairs instead of 2**24 keeps the test small; the rule is the same.
    monkeypatch.setattr(lowering, "SLOW_TOKEN_PAIRS", 2**14)
    monkeypatch.setattr(lowering, "_WARNED", set())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        lower(Causal() & _Stripes(), 64, block_size=(32, 32))  # 3 candidate tiles: 3 * 1024 pairs
        assert not caught
        layout = lower(Causal() & _Stripes(), 256, block_size=(32, 32))
        lower(Causal() & _Stripes(), 256, block_size=(32, 32))
        lower(Causal() & _OtherStripes(), 256, block_size=(32, 32))
        lower(_Stripes(), 256, block_size=(32, 32), by_segments=False)  # the oracle path, asked for
    messages = [str(w.message) for w in caught]
    assert len(messages) == 2, messages
    assert messages[0].startswith("_Stripes defines only `mask`") and "_OtherStripes" in messages[1]
    assert all("`classify`" in m and "`row_breaks`" in m for m in messages)
    assert caught[0].filename == __file__
    assert torch.equal(layout.to_dense()[0, 0], (Causal() & _Stripes()).to_dense(256)[0])


def test_patterns_with_row_breaks_never_warn(monkeypatch):
    from sparseattn import lowering

    monkeypatch.setattr(lowering, "SLOW_TOKEN_PAIRS", 1)
    monkeypatch.setattr(lowering, "SLOW_TILES", 1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        lower(Triangle(sink=4, window=64, last=32), 512, block_size=(32, 32))
