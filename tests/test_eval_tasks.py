"""Task generator: deterministic by seed, sized to the target length, needles present; RULER scoring."""

import pytest

pytest.importorskip("transformers")
from sparseattn.eval.scoring import score, string_match_all, string_match_part
from sparseattn.eval.tasks import TASKS, TaskGenerator


@pytest.fixture(scope="module")
def tokenizer():
    from sparseattn.integrations import gguf_tokenizer

    return gguf_tokenizer()


@pytest.fixture(scope="module")
def generator(tokenizer):
    return TaskGenerator(tokenizer, seed=7)


@pytest.mark.parametrize("task", TASKS)
def test_samples_are_deterministic_sized_and_contain_their_answers(task, tokenizer, generator):
    sample = generator.sample(task, 1024, 3)
    again = TaskGenerator(tokenizer, seed=7).sample(task, 1024, 3)
    assert sample == again
    assert 1024 - 80 <= sample.num_tokens <= 1024
    text = tokenizer.decode(sample.prompt_ids)
    for reference in sample.references[:1] if task == "qa_squad" else sample.references:
        assert reference in text
    other = TaskGenerator(tokenizer, seed=8).sample(task, 1024, 3)
    assert other.prompt_ids != sample.prompt_ids


def test_a_sample_does_not_depend_on_the_ones_before_it(tokenizer):
    fresh = TaskGenerator(tokenizer, seed=7).sample("niah_multikey", 512, 5)
    warm = TaskGenerator(tokenizer, seed=7)
    warm.samples("niah_multikey", 512, 5)
    assert warm.sample("niah_multikey", 512, 5) == fresh


def test_multikey_holds_three_distractor_needles(generator, tokenizer):
    text = tokenizer.decode(generator.sample("niah_multikey", 1024, 0).prompt_ids)
    assert text.count("One of the special magic numbers for") == 4


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"task": "niah"}, "task"),
        ({"length": 100}, "length"),
        ({"index": -1}, "index"),
    ],
)
def test_bad_arguments_are_named(generator, kwargs, name):
    args = {"task": "passkey", "length": 512, "index": 0, **kwargs}
    with pytest.raises(ValueError, match=name):
        generator.sample(**args)


def test_ruler_string_match():
    assert string_match_all("the numbers are 123 and 456.", ["123", "456", "789"]) == pytest.approx(2 / 3)
    assert string_match_part("It is the North sea.", ["North Sea", "the Netherlands"]) == 1.0
    assert string_match_part("Amsterdam", ["North Sea"]) == 0.0
    assert score("x 42", ["42"], "all") == 1.0
    with pytest.raises(ValueError, match="metric"):
        score("x", ["x"], "exact")
    with pytest.raises(ValueError, match="references"):
        string_match_all("x", [])
