"""Hugging Face integration on tiny random models (CPU, the reference backend) and SmolLM2 once, briefly."""

import pytest
import torch

from sparseattn import Causal, Streaming, Triangle
from sparseattn.schedule import LayerSchedule

transformers = pytest.importorskip("transformers")
from tiny_llama import TINY_LLAMA  # noqa: E402

from sparseattn.integrations import LayerTimer, random_model, use_dense, use_schedule  # noqa: E402

TINY = TINY_LLAMA
TRIANGLE = Triangle(sink=2, window=5, last=3)


def tiny(architecture="llama", **extra):
    return random_model(architecture, {**TINY, **extra}, dtype="float32", device="cpu", seed=1)


def triangle_mask(batch: int, length: int) -> torch.Tensor:
    return TRIANGLE.to_dense(length).view(1, 1, length, length).expand(batch, 1, length, length)


@pytest.mark.parametrize("architecture", ["llama", "qwen2", "mistral"])
def test_sparse_prefill_equals_the_model_under_the_same_explicit_mask(architecture):
    extra = {"sliding_window": None} if architecture == "mistral" else {}
    model = tiny(architecture, **extra)
    ids = torch.randint(0, TINY["vocab_size"], (2, 37))
    # transformers passes a 4-D mask through untouched: the stock model then computes the triangle densely.
    expected = model(ids, attention_mask=triangle_mask(2, 37)).logits
    attention = use_schedule(model, LayerSchedule.uniform(TRIANGLE), impl="reference")
    got = model(ids).logits
    torch.testing.assert_close(got, expected, atol=2e-5, rtol=1e-5)
    assert attention.calls == {"sparse_prefill": TINY["num_hidden_layers"]}


def test_routes_are_counted_and_dense_layers_match_sdpa():
    model = tiny()
    ids = torch.randint(0, TINY["vocab_size"], (1, 24))
    expected = model(ids).logits
    dense = use_schedule(model, LayerSchedule.uniform(Causal()), impl="reference")
    torch.testing.assert_close(model(ids).logits, expected, atol=2e-5, rtol=1e-5)
    assert dense.calls == {"dense_prefill": 3}
    check = use_schedule(model, LayerSchedule.uniform(Causal()), impl="reference", causal_backend="sparse")
    torch.testing.assert_close(model(ids).logits, expected, atol=2e-5, rtol=1e-5)
    assert check.calls == {"sparse_prefill": 3}


def test_generate_decodes_densely_from_the_cache():
    model = tiny()
    ids = torch.randint(0, TINY["vocab_size"], (2, 20))
    stock = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=4, do_sample=False)
    schedule = LayerSchedule([{"layers": "0", "pattern": Causal()}, {"layers": "1-", "pattern": Streaming(2, 4)}])
    attention = use_schedule(model, schedule, impl="reference")
    out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=4, do_sample=False)
    assert out.shape == stock.shape and torch.equal(out[:, :20], ids)
    # One prefill (1 dense + 2 sparse layers), then three decode steps of three layers each.
    assert attention.calls == {"dense_prefill": 1, "sparse_prefill": 2, "dense_decode": 9}


def prefill_in_chunks(model, ids, sizes, attention=None, prompt_length=None):
    """Logits of ``ids`` prefilled chunk by chunk over one cache, concatenated along the sequence."""
    cache, logits, start = None, [], 0
    for size in sizes:
        if prompt_length is not None:
            with attention.prompt_length(prompt_length):
                out = model(ids[:, start : start + size], past_key_values=cache, use_cache=True)
        else:
            out = model(ids[:, start : start + size], past_key_values=cache, use_cache=True)
        cache, start = out.past_key_values, start + size
        logits.append(out.logits)
    return torch.cat(logits, 1)


@pytest.mark.parametrize("causal_backend", ["sdpa", "sparse"])
def test_chunked_prefill_of_causal_layers_equals_the_stock_model(causal_backend):
    model = tiny()
    ids = torch.randint(0, TINY["vocab_size"], (1, 30))
    stock = model(ids).logits
    attention = use_schedule(model, LayerSchedule.uniform(Causal()), impl="reference", causal_backend=causal_backend)
    got = prefill_in_chunks(model, ids, (18, 12))
    torch.testing.assert_close(got, stock, atol=2e-5, rtol=1e-5)
    if causal_backend == "sdpa":  # dense is exact for causal layers, also on a chunk
        assert attention.calls == {"dense_prefill": 3, "dense_cache": 3}
    else:
        assert attention.calls == {"sparse_prefill": 3, "sparse_chunk": 3}


@pytest.mark.parametrize("impl", ["reference", "triton"])
def test_chunked_prefill_with_the_prompt_length_equals_one_whole_prefill(impl, monkeypatch):
    if impl == "triton":
        monkeypatch.setenv("TRITON_INTERPRET", "1")
    model = tiny()
    ids = torch.randint(0, TINY["vocab_size"], (2, 40))
    schedule = LayerSchedule([{"layers": "0", "pattern": Streaming(2, 6)}], default=Triangle(sink=2, window=5, last=9))
    attention = use_schedule(model, schedule, impl=impl)
    whole = model(ids).logits
    # The prompt's last 9 rows straddle the last two chunks: every chunk must know where the prompt ends.
    got = prefill_in_chunks(model, ids, (16, 19, 5), attention, prompt_length=40)
    torch.testing.assert_close(got, whole, atol=2e-5, rtol=1e-5)
    assert attention.calls == {"sparse_prefill": 3 + 3, "sparse_chunk": 3 * 2}


def test_chunked_prefill_without_the_prompt_length_makes_each_chunk_end_the_prompt():
    model = tiny()
    ids = torch.randint(0, TINY["vocab_size"], (1, 40))
    streaming = use_schedule(model, LayerSchedule.uniform(Streaming(2, 6)), impl="reference")
    torch.testing.assert_close(prefill_in_chunks(model, ids, (16, 24)), model(ids).logits, atol=2e-5, rtol=1e-5)
    assert streaming.calls["sparse_chunk"] == 3
    attention = use_schedule(model, LayerSchedule.uniform(Triangle(sink=2, window=5, last=9)), impl="reference")
    whole = model(ids).logits
    got = prefill_in_chunks(model, ids, (16, 24))
    # The first chunk's rows 7-15 took every key as "last" rows; the last chunk ends the prompt, but its
    # keys' values came from those rows in the layers below, so only the first 7 rows agree.
    torch.testing.assert_close(got[:, :7], whole[:, :7], atol=2e-5, rtol=1e-5)
    assert not torch.allclose(got[:, 7:16], whole[:, 7:16], atol=1e-3)
    with pytest.raises(ValueError, match="prompt_length: 20 tokens, but this prefill call already holds 40 keys"):
        prefill_in_chunks(model, ids, (16, 24), attention, prompt_length=20)


def test_dynamic_patterns_estimate_every_chunk_from_its_own_queries():
    from sparseattn.estimation import VerticalSlash

    model = tiny()
    ids = torch.randint(0, TINY["vocab_size"], (2, 40))
    schedule = LayerSchedule(
        [{"layers": "1-", "pattern": VerticalSlash(vertical=64, slash=64, last_q=8)}], default=Causal()
    )
    attention = use_schedule(model, schedule, impl="reference")
    # Budgets above the prompt length keep every causal pair, so every estimate gives dense attention.
    got = prefill_in_chunks(model, ids, (24, 16))
    torch.testing.assert_close(got, model(ids).logits, atol=2e-5, rtol=1e-5)
    assert attention.schedule.estimates == 3 * 2 * 2  # (2 chunks + the whole prompt) x 2 layers x 2 sequences
    assert attention.calls == {"dense_prefill": 2, "dense_cache": 1, "sparse_prefill": 2 + 2, "sparse_chunk": 2}


def test_padded_batch_equals_each_sequence_alone():
    model = tiny()
    use_schedule(model, LayerSchedule.uniform(TRIANGLE), impl="reference")
    long, short = torch.randint(1, TINY["vocab_size"], (26,)), torch.randint(1, TINY["vocab_size"], (17,))
    alone = [model(seq[None]).logits[0, -1] for seq in (long, short)]
    for side in ("left", "right"):
        pad = torch.zeros(9, dtype=torch.long)
        padded = torch.cat([pad, short]) if side == "left" else torch.cat([short, pad])
        mask = torch.ones(2, 26, dtype=torch.long)
        if side == "left":
            mask[1, :9] = 0
        else:
            mask[1, 17:] = 0
        logits = model(torch.stack([long, padded]), attention_mask=mask).logits
        last_short = logits[1, -1] if side == "left" else logits[1, 16]
        torch.testing.assert_close(logits[0, -1], alone[0], atol=2e-5, rtol=1e-5)
        torch.testing.assert_close(last_short, alone[1], atol=2e-5, rtol=1e-5)


def test_left_padded_generate_matches_unpadded_generate():
    model = tiny()
    use_schedule(model, LayerSchedule.uniform(TRIANGLE), impl="reference")
    short = torch.randint(1, TINY["vocab_size"], (1, 15))
    alone = model.generate(short, attention_mask=torch.ones_like(short), max_new_tokens=3, do_sample=False)
    batch = torch.cat([torch.randint(1, TINY["vocab_size"], (1, 22)), torch.cat([torch.zeros(1, 7).long(), short], 1)])
    mask = torch.ones_like(batch)
    mask[1, :7] = 0
    out = model.generate(batch, attention_mask=mask, max_new_tokens=3, do_sample=False, pad_token_id=0)
    assert torch.equal(out[1, 7:], alone[0])


def test_masks_other_than_padding_are_refused():
    model = tiny()
    use_schedule(model, LayerSchedule.uniform(TRIANGLE), impl="reference")
    ids = torch.randint(0, TINY["vocab_size"], (1, 12))
    packed = torch.zeros(1, 1, 12, 12, dtype=torch.bool)
    packed[..., :6, :6] = packed[..., 6:, 6:] = True
    packed &= torch.ones(12, 12, dtype=torch.bool).tril()
    with pytest.raises(ValueError, match="attention_mask: row 0 is not a causal mask over one contiguous run"):
        model(ids, attention_mask=packed)


def test_model_checks():
    with pytest.raises(ValueError, match="sliding-window attention"):
        use_schedule(tiny("mistral", sliding_window=16), LayerSchedule.uniform(TRIANGLE))
    with pytest.raises(ValueError, match=r"rules\[0\]\.layers: 3-7 out of range; valid are 0-2"):
        use_schedule(tiny(), LayerSchedule([{"layers": "0-7", "pattern": TRIANGLE}]))
    with pytest.raises(ValueError, match="model: expected a Llama, Qwen2 or Mistral"):
        use_schedule(torch.nn.Linear(2, 2), LayerSchedule.uniform(TRIANGLE))
    with pytest.raises(ValueError, match="causal_backend"):
        use_schedule(tiny(), LayerSchedule.uniform(TRIANGLE), causal_backend="cudnn")


def test_layout_lowered_once_per_forward_and_timer_sees_every_layer():
    model = tiny()
    timer = LayerTimer()
    attention = use_schedule(model, LayerSchedule.uniform(TRIANGLE), impl="reference", timer=timer)
    ids = torch.randint(0, TINY["vocab_size"], (1, 40))
    model(ids)
    model(ids)
    assert attention.schedule.lowerings == 1
    assert sorted(timer.per_layer()) == [0, 1, 2] and len(timer.records()) == 6
    use_dense(model)
    model(ids)
    assert attention.calls == {"sparse_prefill": 6}


def test_vertical_slash_layers_are_estimated_per_layer_and_per_sequence():
    from sparseattn.estimation import VerticalSlash

    model = tiny()
    ids = torch.randint(0, TINY["vocab_size"], (2, 40))
    expected = model(ids).logits
    # Budgets above the prompt length keep every causal pair: the dynamic path must give the dense answer.
    schedule = LayerSchedule(
        [{"layers": "1-", "pattern": VerticalSlash(vertical=64, slash=64, last_q=8)}], default=Causal()
    )
    attention = use_schedule(model, schedule, impl="reference")
    torch.testing.assert_close(model(ids).logits, expected, atol=2e-5, rtol=1e-5)
    assert attention.schedule.estimates == 2 * 2  # two dynamic layers, each estimated for each sequence
    assert attention.calls == {"dense_prefill": 1, "sparse_prefill": 2}
