"""Decode-position fidelity and the masked-SDPA backend on a tiny random Llama built here (CPU, seconds)."""

import pytest
import torch

pytest.importorskip("transformers")
from tiny_llama import TINY_LLAMA

from sparseattn import Causal, Streaming, Triangle, Window
from sparseattn.eval.fidelity import compare_logits
from sparseattn.eval.generation import answer
from sparseattn.eval.masked_backend import AttentionSwitch, use_masked_schedule
from sparseattn.integrations import random_model, use_dense, use_schedule
from sparseattn.schedule import LayerSchedule

TINY = TINY_LLAMA


class Tokens:
    """The least of a tokenizer that `answer` needs, for a model with integer tokens."""

    eos_token_id = 0
    unk_token_id = None

    def convert_tokens_to_ids(self, name):
        return None

    def decode(self, ids, skip_special_tokens=True):
        return " ".join(map(str, ids))


@pytest.fixture(scope="module")
def model():
    return random_model("llama", TINY, dtype="float32", device="cpu", seed=2)


@pytest.fixture(scope="module")
def prompt():
    return torch.randint(1, 97, (200,), generator=torch.Generator().manual_seed(0)).tolist()


def fidelity(model, prompt, schedule):
    switch = AttentionSwitch()
    switch(model, None)
    dense = answer(model, Tokens(), prompt, max_new_tokens=6)
    switch(model, schedule)
    got = answer(model, Tokens(), prompt, max_new_tokens=6, force=dense.tokens)
    switch(model, None)
    return compare_logits(dense.forced_logits, got.forced_logits), dense, got


def test_dense_against_dense_is_exact(model, prompt):
    result, dense, got = fidelity(model, prompt, LayerSchedule.uniform(Causal()))
    assert result.kl.shape == (7,)  # the prompt's last position and one after each of the 6 forced tokens
    assert float(result.kl.max()) == 0.0 and bool(result.top1.all())
    assert got.tokens == dense.tokens


def test_a_destructive_schedule_is_detected(model, prompt):
    result, *_ = fidelity(model, prompt, LayerSchedule.uniform(Causal() & Window(2)))
    harmless, *_ = fidelity(model, prompt, LayerSchedule.uniform(Triangle(sink=4, window=512, last=8)))
    assert float(harmless.kl.max()) == 0.0  # a window longer than the prompt drops nothing
    assert float(result.kl.mean()) > 1e-3


def test_teacher_forced_logits_equal_a_dense_forward_of_the_whole_sequence(model, prompt):
    use_dense(model)
    got = answer(model, Tokens(), prompt, max_new_tokens=5)
    full = model(torch.tensor([prompt + got.tokens])).logits[0, len(prompt) - 1 :].float()
    torch.testing.assert_close(got.forced_logits, full, atol=1e-4, rtol=1e-4)


def test_masked_backend_equals_the_framework_reference_path(model, prompt):
    ids = torch.tensor([prompt])
    schedule = LayerSchedule([{"layers": "0", "pattern": Causal()}, {"layers": "1-", "pattern": Streaming(4, 16)}])
    use_schedule(model, schedule, impl="reference")
    expected = model(ids).logits
    attention = use_masked_schedule(model, schedule)
    torch.testing.assert_close(model(ids).logits, expected, atol=2e-5, rtol=1e-5)
    assert attention.calls == {"dense_prefill": 1, "sparse_prefill": 2}
    use_dense(model)


def test_compare_logits_values_and_errors():
    dense = torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    same = compare_logits(dense, dense)
    assert same.kl.tolist() == [0.0, 0.0] and same.top1.tolist() == [True, True]
    flipped = compare_logits(dense, dense.flip(-1))
    p = torch.softmax(dense[0].double(), -1)
    q = torch.softmax(dense[0].flip(-1).double(), -1)
    assert float(flipped.kl[0]) == pytest.approx(float((p * (p / q).log()).sum()), rel=1e-6)
    assert flipped.top1.tolist() == [False, True]
    with pytest.raises(ValueError, match="sparse"):
        compare_logits(dense, dense[:1])


def test_paired_rows_share_samples_and_carry_fidelity(model, prompt):
    from sparseattn.eval.paired_eval import DENSE, done_keys, evaluate_sample
    from sparseattn.eval.tasks import Sample

    sample = Sample("niah_single", 0, 256, tuple(prompt), ("5",), "all", 4)
    schedules = {"same": LayerSchedule.uniform(Causal()), "window2": LayerSchedule.uniform(Causal() & Window(2))}
    rows = evaluate_sample(model, Tokens(), sample, schedules, AttentionSwitch())
    assert [r["system"] for r in rows] == [DENSE, "same", "window2"]
    assert "kl_mean" not in rows[0] and rows[1]["kl_mean"] == 0.0 and rows[1]["top1_mean"] == 1.0
    assert rows[1]["prediction"] == rows[0]["prediction"]
    assert rows[2]["kl_mean"] > 0
    assert done_keys(rows) == {("niah_single", 256, 0)}
    with pytest.raises(ValueError, match="schedules"):
        evaluate_sample(model, Tokens(), sample, {DENSE: schedules["same"]}, AttentionSwitch())


def test_batched_greedy_equals_one_prompt_at_a_time_and_leaves_the_caches_alone(model, prompt):
    from sparseattn.eval.generation import forced, greedy, prefill

    switch = AttentionSwitch()
    schedules = [None, LayerSchedule.uniform(Causal() & Window(3)), LayerSchedule.uniform(Streaming(2, 8))]
    prompts = []
    for schedule in schedules:
        switch(model, schedule)
        prompts.append(prefill(model, prompt))
    before = [p.cache.layers[0].keys.clone() for p in prompts]
    switch(model, None)
    alone = [greedy(model, Tokens(), [p], max_new_tokens=7)[0] for p in prompts]
    together = greedy(model, Tokens(), prompts, max_new_tokens=7)
    assert together == alone
    assert len({tuple(t) for t in alone}) > 1  # the schedules answer differently: the rows did not mix
    assert all(torch.equal(p.cache.layers[0].keys, b) for p, b in zip(prompts, before, strict=True))
    assert all(p.cache.get_seq_length() == len(prompt) for p in prompts)
    once, twice = forced(model, prompts[0], alone[0]), forced(model, prompts[0], alone[0])
    assert torch.equal(once, twice) and once.shape[0] == len(alone[0]) + 1
    with pytest.raises(ValueError, match="one length"):
        greedy(model, Tokens(), [prompts[0], prefill(model, prompt[:-1])], max_new_tokens=2)
