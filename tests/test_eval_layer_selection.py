"""Layer selection on a tiny random Llama: the gradient statistic equals its oracle, is right, and ranks an inert
layer first."""

import pytest
import torch

pytest.importorskip("transformers")
from tiny_llama import TINY_LLAMA

from sparseattn import Triangle
from sparseattn.eval.eager_attention import ProbeAttention, use_probe
from sparseattn.eval.layer_selection import middle_gradients, schedule_config, select_layers
from sparseattn.eval.layer_selection_reference import middle_gradients_reference
from sparseattn.integrations import random_model

TINY = {**TINY_LLAMA, "num_hidden_layers": 4}
TRI = Triangle(sink=2, window=6, last=4)


def tiny():
    return random_model("llama", TINY, dtype="float32", device="cpu", seed=3)


def prompts(n=2, length=40):
    gen = torch.Generator().manual_seed(5)
    return [torch.randint(0, 97, (length,), generator=gen).tolist() for _ in range(n)], [7, 11][:n]


def test_probe_attention_reproduces_the_model():
    model = tiny()
    ids = torch.tensor([prompts(1)[0][0]])
    expected = model(ids).logits
    use_probe(model, ProbeAttention(lambda *_: None, rows_per_chunk=16))
    torch.testing.assert_close(model(ids).logits, expected, atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("implementation", [middle_gradients, middle_gradients_reference])
def test_checkpointing_does_not_change_the_statistics(implementation):
    ids, targets = prompts()
    plain = implementation(tiny(), ids, targets, triangle=TRI, checkpointing=False)
    checkpointed = implementation(tiny(), ids, targets, triangle=TRI, checkpointing=True, rows_per_chunk=16)
    torch.testing.assert_close(checkpointed.grad_abs, plain.grad_abs, atol=1e-9, rtol=1e-5)
    torch.testing.assert_close(checkpointed.attribution, plain.attribution, atol=1e-9, rtol=1e-5)
    assert plain.grad_abs.shape == (2, 4, 4) and bool((plain.grad_abs[:, :3] > 0).all())
    # The last layer's middle rows feed only positions whose outputs the loss never reads: exactly zero.
    assert bool((plain.grad_abs[:, 3] == 0).all())


@pytest.mark.parametrize("rows_per_chunk", [None, 7])
def test_statistics_from_the_output_gradient_equal_the_gated_probabilities(rows_per_chunk):
    ids, targets = prompts(2, length=45)
    model = random_model("llama", {**TINY, "num_key_value_heads": 2}, dtype="float32", device="cpu", seed=4)
    fast = middle_gradients(model, ids, targets, triangle=TRI, rows_per_chunk=rows_per_chunk)
    oracle = middle_gradients_reference(model, ids, targets, triangle=TRI, checkpointing=False)
    torch.testing.assert_close(fast.grad_abs, oracle.grad_abs, atol=1e-8, rtol=1e-4)
    torch.testing.assert_close(fast.attribution, oracle.attribution, atol=1e-8, rtol=1e-4)
    assert bool((fast.grad_abs[:, :3] > 0).all())


@pytest.mark.parametrize("implementation", [middle_gradients, middle_gradients_reference])
def test_a_prompt_the_triangle_covers_whole_is_refused(implementation):
    ids, targets = prompts(1, length=12)  # sink 2 + window 6 + last 4: every pair is kept
    with pytest.raises(ValueError, match="no middle region"):
        implementation(tiny(), ids, targets, triangle=TRI, checkpointing=False)


def test_attribution_is_the_derivative_of_the_loss_when_scaling_the_middle():
    ids, targets = prompts(1)
    model = tiny()
    scores = middle_gradients(model, ids, targets, triangle=TRI, checkpointing=False)
    middle = (~TRI.to_dense(40) & torch.ones(40, 40, dtype=torch.bool).tril()).float()
    layer, head, eps = 2, 1, 1e-3

    def loss(g):
        def scale(at, probs, start):
            if at != layer:
                return None
            factor = torch.ones_like(probs)
            factor[:, head] += g * middle
            return probs * factor

        use_probe(model, ProbeAttention(scale))
        logits = model(torch.tensor(ids), logits_to_keep=1).logits[0, -1].double()
        return -torch.log_softmax(logits, -1)[targets[0]]

    with torch.no_grad():
        numeric = (loss(eps) - loss(-eps)) / (2 * eps)
    assert float(scores.attribution[0, layer, head]) == pytest.approx(float(numeric), rel=2e-2, abs=1e-6)


def test_a_layer_whose_attention_output_is_discarded_ranks_first():
    model = tiny()
    with torch.no_grad():
        model.model.layers[1].self_attn.o_proj.weight.zero_()  # layer 1's attention cannot change the loss
    ids, targets = prompts()
    scores = middle_gradients(model, ids, targets, triangle=TRI)
    assert float(scores.per_layer[1]) == 0.0
    assert select_layers("gradient", 1, 4, scores.per_layer) == [1]


def test_baseline_selections_and_the_emitted_schedule():
    assert select_layers("deepest", 2, 5) == [3, 4]
    assert select_layers("shallowest", 2, 5) == [0, 1]
    assert select_layers("random", 3, 30, seed=1) == select_layers("random", 3, 30, seed=1)
    with pytest.raises(ValueError, match="method"):
        select_layers("middle", 1, 4)
    with pytest.raises(ValueError, match="k:"):
        select_layers("deepest", 5, 4)
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    schedule = instantiate(OmegaConf.create(schedule_config([1, 3], TRI))).bind(4)
    assert [schedule.pattern(i) for i in range(4)] == [schedule.pattern(0), TRI, schedule.pattern(0), TRI]
    assert schedule.is_causal(0)
