"""Attention-mass profile on a tiny random Llama: exact for patterns whose answer is known."""

import pytest
import torch

pytest.importorskip("transformers")
from tiny_llama import TINY_LLAMA

from sparseattn import Causal, Triangle, Window
from sparseattn.eval.attention_profile import mass_kept
from sparseattn.integrations import random_model

TINY = TINY_LLAMA


def test_complementary_patterns_add_up_to_all_the_mass_and_causal_keeps_it_all():
    model = random_model("llama", TINY, dtype="float32", device="cpu", seed=4)
    prompts = [torch.randint(0, 97, (60,), generator=torch.Generator().manual_seed(s)).tolist() for s in (0, 1)]
    window = Causal() & Window(5)
    patterns = {"causal": Causal(), "window": window, "rest": Causal() & ~Window(5), "wide": Triangle(2, 64, 4)}
    kept = mass_kept(model, prompts, patterns, rows_per_chunk=16)
    assert kept["causal"].shape == (3, 4)
    torch.testing.assert_close(kept["causal"], torch.ones(3, 4))
    torch.testing.assert_close(kept["wide"], torch.ones(3, 4))  # its window covers the whole prompt
    torch.testing.assert_close(kept["window"] + kept["rest"], torch.ones(3, 4))
    assert bool((kept["window"] < 1).all()) and bool((kept["window"] > 0).all())
    assert model.config._attn_implementation == "sdpa"  # the probe is removed afterwards


def test_needs_patterns_and_prompts():
    model = random_model("llama", TINY, dtype="float32", device="cpu", seed=4)
    with pytest.raises(ValueError, match="patterns"):
        mass_kept(model, [[1, 2, 3]], {})
