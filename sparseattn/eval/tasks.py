"""RULER-style long-context tasks, generated offline and deterministically from (seed, task, length, index).

Tasks (RULER's names in brackets):

- ``passkey``: a 5-digit pass key in repeated filler sentences [passkey retrieval].
- ``niah_single``: one "special magic number" needle in Paul Graham's essays [niah_single_2].
- ``niah_multikey``: the queried needle among three distractor needles with other keys [niah_multikey_1].
- ``niah_multivalue``: four values under one key, all must be recalled [niah_multivalue].
- ``niah_multiquery``: four needles, all four keys queried [niah_multiquery].
- ``qa_squad``: a SQuAD question, its paragraph shuffled among distractor paragraphs [qa_1].

Prompts use the model's chat template with an answer prefix in the assistant turn, as RULER does, and
are sized in the model's own tokens to within a few tokens of ``length`` (`Sample.num_tokens` is exact).
"""

from __future__ import annotations

import random
import re
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from sparseattn.eval import text_sources

TASKS = ("passkey", "niah_single", "niah_multikey", "niah_multivalue", "niah_multiquery", "qa_squad")

_ADJECTIVES = [
    "amber",
    "brave",
    "calm",
    "dusty",
    "eager",
    "faint",
    "gentle",
    "hollow",
    "icy",
    "jolly",
    "keen",
    "lively",
    "misty",
    "noble",
    "odd",
    "proud",
    "quiet",
    "rusty",
    "silent",
    "tender",
    "urban",
    "vivid",
    "wild",
    "young",
    "zesty",
    "bitter",
    "cosmic",
    "dapper",
    "frozen",
    "golden",
    "humble",
    "lunar",
    "mellow",
    "narrow",
    "olive",
    "plain",
    "rapid",
    "shiny",
    "tidy",
    "upper",
    "velvet",
    "woody",
]
_NOUNS = [
    "anchor",
    "badger",
    "candle",
    "dragon",
    "falcon",
    "garden",
    "harbor",
    "island",
    "jacket",
    "kettle",
    "lantern",
    "meadow",
    "needle",
    "orchard",
    "pepper",
    "quarry",
    "raven",
    "saddle",
    "tunnel",
    "umbrella",
    "violin",
    "walnut",
    "yacht",
    "zebra",
    "beacon",
    "cobalt",
    "dune",
    "ember",
    "fjord",
    "glacier",
    "hammock",
    "iris",
    "juniper",
    "kayak",
    "lotus",
    "marble",
    "nectar",
    "otter",
    "pumpkin",
]
_FILLER = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. "
_SENTENCE_END = re.compile(r"(?<=[.!?])\s*")


@dataclass(frozen=True)
class Sample:
    task: str
    index: int
    length: int  # the target; num_tokens is what the prompt really has
    prompt_ids: tuple[int, ...]
    references: tuple[str, ...]
    metric: str  # "all" or "part", see scoring
    max_new_tokens: int

    @property
    def num_tokens(self) -> int:
        return len(self.prompt_ids)


@dataclass(frozen=True)
class _Spec:
    """A task instance before sizing: everything but the haystack."""

    instruction: str
    question: str
    answer_prefix: str
    needles: tuple[str, ...]
    references: tuple[str, ...]
    metric: str
    max_new_tokens: int


class TaskGenerator:
    """Builds `Sample`s for one tokenizer; ``seed`` fixes every random choice.

    Sample ``i`` of a task at a length depends only on (seed, task, length, i), so adding samples or
    tasks never changes existing ones. The essay haystack is tokenized once per tokenizer and split, and
    shared by every generator of that tokenizer in the process (seconds for the ~3M characters). ``split``
    draws haystacks from all essays (the default, the committed results) or from one held-out half
    (`text_sources.essay_split`: ``"eval"``, when ``"train"`` text fine-tunes the model evaluated).
    """

    def __init__(self, tokenizer: Any, seed: int = 0, split: str = "all") -> None:
        if split not in text_sources.ESSAY_SPLITS:
            raise ValueError(f"split: expected one of {text_sources.ESSAY_SPLITS}, got {split!r}")
        self.tokenizer = tokenizer
        self.seed = seed
        self.split = split
        self._essay_ids: list[int] | None = None
        self._paragraph_ids: list[int] | None = None

    def samples(self, task: str, length: int, count: int, start: int = 0) -> list[Sample]:
        return [self.sample(task, length, i) for i in range(start, start + count)]

    def sample(self, task: str, length: int, index: int) -> Sample:
        if task not in TASKS:
            raise ValueError(f"task: expected one of {TASKS}, got {task!r}")
        if isinstance(length, bool) or not isinstance(length, int) or length < 256:
            raise ValueError(f"length: expected an int >= 256 tokens, got {length!r}")
        if isinstance(index, bool) or not isinstance(index, int) or index < 0:
            raise ValueError(f"index: expected a non-negative int, got {index!r}")
        rng = random.Random(f"{self.seed}/{task}/{length}/{index}")
        if task == "qa_squad":
            return self._qa_sample(rng, length, index)
        spec = _needle_spec(task, rng)
        ids = self._fit(spec, length, lambda budget: self._haystack(task, rng.random(), budget), rng)
        return Sample(task, index, length, tuple(ids), spec.references, spec.metric, spec.max_new_tokens)

    # ----------------------------------------------------------------- needle tasks
    def _haystack(self, task: str, position: float, budget: int) -> str:
        """``budget`` tokens of haystack text starting at a seeded ``position`` (a fraction) of the source."""
        if task == "passkey":
            per_repetition = len(self._encode(_FILLER))
            return (_FILLER * (budget // per_repetition + 1)).strip()
        if self._essay_ids is None:
            self._essay_ids = self._shared(
                f"essays/{self.split}", lambda: self._encode(text_sources.essay_split(self.split))
            )
        start = int(position * (len(self._essay_ids) - budget - 1))
        return self.tokenizer.decode(self._essay_ids[start : start + budget])

    def _fit(self, spec: _Spec, length: int, haystack: Any, rng: random.Random) -> list[int]:
        """Prompt ids of about ``length`` tokens: size the haystack by the prompt's overhead, then trim."""
        depths = sorted(rng.random() for _ in spec.needles)
        overhead = len(self._prompt(spec, _insert("", spec.needles, depths)))
        budget = length - overhead
        if budget < 16:
            raise ValueError(f"length: {length} tokens leave no room for a haystack (the prompt alone is {overhead})")
        text = haystack(budget)
        for _ in range(8):  # tokenization at the joins moves the count by a few tokens; converge
            ids = self._prompt(spec, _insert(text, spec.needles, depths))
            excess = len(ids) - length
            if excess <= 0:
                return ids
            chars_per_token = len(text) / max(1, len(ids) - overhead)
            text = text[: max(0, int(len(text) - chars_per_token * (excess + 1)))]
        return ids

    # ----------------------------------------------------------------- QA
    def _qa_sample(self, rng: random.Random, length: int, index: int) -> Sample:
        paragraphs, items = text_sources.squad()
        item = items[rng.randrange(len(items))]
        spec = _Spec(
            instruction="Answer the question based on the given documents. Only give me the answer and do not "
            "output any other words.\n\nThe following are given documents.",
            question=f"Answer the question based on the given documents. Only give me the answer and do not output "
            f"any other words.\n\nQuestion: {item.question}",
            answer_prefix="Answer:",
            needles=(),
            references=item.answers,
            metric="part",
            max_new_tokens=24,
        )
        overhead = len(self._prompt(spec, ""))
        budget = length - overhead - 8 * 8  # the "Document i:" headers
        chosen = [item.paragraph]
        used = self._paragraph_tokens(item.paragraph)
        order = list(range(len(paragraphs)))
        rng.shuffle(order)
        for p in order:
            if p != item.paragraph and used + self._paragraph_tokens(p) + 8 <= budget:
                chosen.append(p)
                used += self._paragraph_tokens(p) + 8
        rng.shuffle(chosen)
        while True:
            docs = "\n\n".join(f"Document {i + 1}:\n{paragraphs[p]}" for i, p in enumerate(chosen))
            ids = self._prompt(spec, docs)
            if len(ids) <= length or len(chosen) == 1:
                break
            chosen.remove(next(p for p in chosen if p != item.paragraph))  # too long: drop a distractor
        return Sample("qa_squad", index, length, tuple(ids), spec.references, spec.metric, spec.max_new_tokens)

    def _paragraph_tokens(self, p: int) -> int:
        if self._paragraph_ids is None:
            # Every paragraph is measured for any QA sample: one batch call, the same ids as one call each.
            self._paragraph_ids = self._shared(
                "squad_paragraphs",
                lambda: [len(ids) for ids in self._encode_batch(text_sources.squad()[0])],
            )
        return self._paragraph_ids[p]

    def _shared(self, key: str, compute: Callable[[], list[int]]) -> list[int]:
        """``compute()`` once per tokenizer object and ``key`` in this process; never mutate the result."""
        try:
            per_tokenizer = _TOKENIZED.setdefault(self.tokenizer, {})
        except TypeError:  # a tokenizer that is not hashable or weakly referable: no sharing
            return compute()
        if key not in per_tokenizer:
            per_tokenizer[key] = compute()
        return per_tokenizer[key]

    # ----------------------------------------------------------------- prompt
    def _prompt(self, spec: _Spec, context: str) -> list[int]:
        user = f"{spec.instruction}\n\n{context}\n\n{spec.question}"
        text = self.tokenizer.apply_chat_template(
            [{"role": "user", "content": user}], tokenize=False, add_generation_prompt=True
        )
        return self._encode(text + spec.answer_prefix)

    def _encode(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def _encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [list(ids) for ids in self.tokenizer(list(texts), add_special_tokens=False)["input_ids"]]


# Token ids of the haystack sources, per tokenizer object (weakly: dropped with the tokenizer).
_TOKENIZED: weakref.WeakKeyDictionary[Any, dict[str, list[int]]] = weakref.WeakKeyDictionary()


def _needle_spec(task: str, rng: random.Random) -> _Spec:
    keys = _distinct_keys(rng, 4)
    numbers = [str(rng.randrange(1_000_000, 10_000_000)) for _ in range(4)]
    instruction = (
        "Some special magic numbers are hidden inside the following text. Memorize them; "
        "I will ask you about them afterwards."
    )

    def needle(key: str, value: str) -> str:
        return f"One of the special magic numbers for {key} is: {value}."

    def ask(key: str) -> tuple[str, str]:
        return (
            f"What is the special magic number for {key} mentioned in the text above?",
            f"The special magic number for {key} mentioned in the text above is",
        )

    if task == "passkey":
        key = str(rng.randrange(10_000, 100_000))
        return _Spec(
            "There is important information hidden inside a lot of irrelevant text. Find it and memorize it; "
            "I will ask you about it.",
            "What is the pass key?",
            "The pass key is",
            (f"The pass key is {key}. Remember it. {key} is the pass key.",),
            (key,),
            "all",
            12,
        )
    if task == "niah_single":
        return _Spec(instruction, *ask(keys[0]), (needle(keys[0], numbers[0]),), (numbers[0],), "all", 16)
    if task == "niah_multikey":
        needles = tuple(needle(k, v) for k, v in zip(keys, numbers, strict=True))
        return _Spec(instruction, *ask(keys[0]), _shuffled(needles, rng), (numbers[0],), "all", 16)
    if task == "niah_multivalue":
        needles = tuple(needle(keys[0], v) for v in numbers)
        return _Spec(
            instruction,
            f"What are all the special magic numbers for {keys[0]} mentioned in the text above?",
            f"The special magic numbers for {keys[0]} mentioned in the text above are",
            _shuffled(needles, rng),
            tuple(numbers),
            "all",
            48,
        )
    if task == "niah_multiquery":
        needles = tuple(needle(k, v) for k, v in zip(keys, numbers, strict=True))
        listed = ", ".join(keys[:-1]) + f" and {keys[-1]}"
        return _Spec(
            instruction,
            f"What are the special magic numbers for {listed} mentioned in the text above?",
            f"The special magic numbers for {listed} mentioned in the text above are",
            _shuffled(needles, rng),
            tuple(numbers),
            "all",
            48,
        )
    raise ValueError(f"task: expected one of {TASKS}, got {task!r}")


def _distinct_keys(rng: random.Random, count: int) -> list[str]:
    keys: list[str] = []
    while len(keys) < count:
        key = f"{rng.choice(_ADJECTIVES)}-{rng.choice(_NOUNS)}"
        if key not in keys:
            keys.append(key)
    return keys


def _shuffled(items: Sequence[str], rng: random.Random) -> tuple[str, ...]:
    out = list(items)
    rng.shuffle(out)
    return tuple(out)


def _insert(text: str, needles: Sequence[str], depths: Sequence[float]) -> str:
    """``needles`` placed at sentence boundaries of ``text`` at the given depths (fractions, ascending)."""
    if not needles:
        return text
    cuts = [m.end() for m in _SENTENCE_END.finditer(text)] or [len(text)]
    pieces, last = [], 0
    for needle, depth in zip(needles, depths, strict=True):
        cut = max(last, min(cuts, key=lambda c: abs(c - depth * len(text))))
        pieces += [text[last:cut], " " + needle + " "]
        last = cut
    pieces.append(text[last:])
    return "".join(pieces)
