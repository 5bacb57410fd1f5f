"""Greedy answers and teacher-forced logits, with the prompt prefilled by whatever attention the model has.

Three steps, each its own function so that a paired evaluation can share the middle one:

- `prefill`: one forward of the prompt (the schedule's path), keeping its cache and last logits;
- `greedy`: greedy continuations of one or more prefilled prompts of one length, decoded together as one
  batch (every decode step attends densely to its own row's cache, so rows never see each other); the
  prefilled caches are copied, never extended;
- `forced`: reference tokens fed in one chunk after a prefilled prompt: the logits at those positions are
  what decode-position fidelity compares.

`answer` chains the three for one prompt; one prefill serves both the answer and the forced logits.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor


@dataclass
class Answer:
    tokens: list[int]  # greedy continuation, stop token excluded
    text: str
    forced_logits: Tensor  # float32 [T + 1, vocab]: the prompt's last position, then after each forced token


@dataclass
class Prefilled:
    """A prompt's cache after prefill and the logits at its last position (float32 [vocab])."""

    cache: Any
    first_logits: Tensor
    prompt_len: int


@torch.no_grad()
def prefill(model: Any, prompt_ids: Sequence[int]) -> Prefilled:
    device = next(model.parameters()).device
    ids = torch.tensor([list(prompt_ids)], device=device)
    out = model(ids, use_cache=True, logits_to_keep=1)
    return Prefilled(out.past_key_values, out.logits[0, -1].float(), len(prompt_ids))


@torch.no_grad()
def greedy(model: Any, tokenizer: Any, prompts: Sequence[Prefilled], *, max_new_tokens: int) -> list[list[int]]:
    """Greedy continuations (stop token excluded) of prompts of one length, decoded as one batch.

    Decoding is launch-bound at these model sizes: a step of several rows costs about one of a single row,
    so a paired evaluation decodes all its systems at once. Rows that stop early keep being fed their own
    argmax; their outputs are ignored and, each row attending only to its own cache, change no other row's
    arithmetic, though the batch's size may change the rounding of every row's products.
    """
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens: expected >= 1, got {max_new_tokens}")
    if not prompts:
        return []
    lengths = {p.prompt_len for p in prompts}
    if len(lengths) != 1:
        raise ValueError(f"prompts: expected prompts of one length to decode as a batch, got lengths {sorted(lengths)}")
    device = next(model.parameters()).device
    cache = _stacked([p.cache for p in prompts])
    stops = _stop_ids(tokenizer)
    tokens: list[list[int]] = [[] for _ in prompts]
    finished = [False] * len(prompts)
    logits = torch.stack([p.first_logits for p in prompts])  # [B, vocab]
    while True:
        chosen = logits.argmax(-1).tolist()
        for row, token in enumerate(chosen):
            if finished[row]:
                continue
            if token in stops:
                finished[row] = True
                continue
            tokens[row].append(token)
            finished[row] = len(tokens[row]) == max_new_tokens
        if all(finished):
            return tokens
        step = model(torch.tensor(chosen, device=device)[:, None], past_key_values=cache, use_cache=True)
        logits = step.logits[:, -1].float()


@torch.no_grad()
def forced(model: Any, prompt: Prefilled, force: Sequence[int]) -> Tensor:
    """float32 [len(force) + 1, vocab]: the prompt's last logits, then the logits after each forced token.

    Runs on a copy of the prompt's cache, so one prefill serves any number of forced sequences.
    """
    if not force:
        return prompt.first_logits[None]
    device = next(model.parameters()).device
    chunk = model(torch.tensor([list(force)], device=device), past_key_values=_stacked([prompt.cache]), use_cache=True)
    return torch.cat([prompt.first_logits[None], chunk.logits[0].float()])


def answer(
    model: Any,
    tokenizer: Any,
    prompt_ids: Sequence[int],
    *,
    max_new_tokens: int,
    force: list[int] | None = None,
) -> Answer:
    """Greedy continuation of ``prompt_ids`` and the logits along ``force`` (teacher forcing; default: the
    continuation itself)."""
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens: expected >= 1, got {max_new_tokens}")
    prompt = prefill(model, prompt_ids)
    (tokens,) = greedy(model, tokenizer, [prompt], max_new_tokens=max_new_tokens)
    logits = forced(model, prompt, tokens if force is None else force)
    return Answer(tokens, tokenizer.decode(tokens, skip_special_tokens=True), logits)


def _stacked(caches: Sequence[Any]) -> Any:
    """A new cache holding ``caches`` (batch 1 each) as the rows of one batch; the inputs stay as they were."""
    from transformers import DynamicCache

    out = DynamicCache()
    for layer, parts in enumerate(zip(*(cache.layers for cache in caches), strict=True)):
        out.update(torch.cat([p.keys for p in parts]), torch.cat([p.values for p in parts]), layer)
    return out


def _stop_ids(tokenizer: Any) -> set[int]:
    ids = {tokenizer.eos_token_id}
    for name in ("<|im_end|>", "<|endoftext|>"):
        tid = tokenizer.convert_tokens_to_ids(name)
        if isinstance(tid, int) and tid != tokenizer.unk_token_id:
            ids.add(tid)
    return {i for i in ids if i is not None}
