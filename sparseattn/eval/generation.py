"""Greedy answers and teacher-forced logits, with the prompt prefilled by whatever attention the model has.

`answer` prefills once (the schedule's path), decodes greedily (every step attends densely to the
cache), then rewinds the cache to the prompt and feeds reference tokens in one chunk: the logits at
those positions are what decode-position fidelity compares. One prefill serves both.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor


@dataclass
class Answer:
    tokens: list[int]  # greedy continuation, stop token excluded
    text: str
    forced_logits: Tensor  # float32 [T + 1, vocab]: the prompt's last position, then after each forced token


@torch.no_grad()
def answer(
    model: Any,
    tokenizer: Any,
    prompt_ids: list[int] | tuple[int, ...],
    *,
    max_new_tokens: int,
    force: list[int] | None = None,
) -> Answer:
    """Greedy continuation of ``prompt_ids`` and the logits along ``force`` (teacher forcing; default: the
    continuation itself)."""
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens: expected >= 1, got {max_new_tokens}")
    device = next(model.parameters()).device
    ids = torch.tensor([list(prompt_ids)], device=device)
    out = model(ids, use_cache=True, logits_to_keep=1)
    cache, first_logits = out.past_key_values, out.logits[0, -1].float()
    stops = _stop_ids(tokenizer)
    tokens: list[int] = []
    logits = first_logits
    while True:
        token = int(logits.argmax())
        if token in stops:
            break
        tokens.append(token)
        if len(tokens) == max_new_tokens:
            break
        step = model(torch.tensor([[token]], device=device), past_key_values=cache, use_cache=True)
        logits = step.logits[0, -1].float()
    force = tokens if force is None else force
    forced = first_logits[None]
    if force:
        extra = cache.get_seq_length() - len(prompt_ids)
        if extra:
            cache.crop(-extra)  # negative: "remove this many", read the same by transformers 4.x and 5.x
        chunk = model(torch.tensor([list(force)], device=device), past_key_values=cache, use_cache=True)
        forced = torch.cat([forced, chunk.logits[0].float()])
    return Answer(tokens, tokenizer.decode(tokens, skip_special_tokens=True), forced)


def _stop_ids(tokenizer: Any) -> set[int]:
    ids = {tokenizer.eos_token_id}
    for name in ("<|im_end|>", "<|endoftext|>"):
        tid = tokenizer.convert_tokens_to_ids(name)
        if isinstance(tid, int) and tid != tokenizer.unk_token_id:
            ids.add(tid)
    return {i for i in ids if i is not None}
