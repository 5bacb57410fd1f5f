"""Slow, obvious reference implementations of the dynamic estimators (loops over heads and rows, fp64).

They define the algorithms the fast paths in `sparseattn.estimation` must reproduce index for
index; the ranking rule is "higher score first, then lower index", forced entries first of all.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor


def _rank(scores: list[float], forced: set[int], count: int) -> list[int]:
    order = sorted(range(len(scores)), key=lambda i: (i not in forced, -scores[i], i))
    return sorted(order[:count])


_PerHead = int | float | tuple[int, ...] | tuple[float, ...]


def _budget(budget: _PerHead, h: int) -> Any:
    """Head ``h``'s value of a setting given for all heads or as one value per head."""
    return budget[h] if isinstance(budget, tuple) else budget


def reference_vertical_slash(
    q: Tensor,
    k: Tensor,
    vertical: int | tuple[int, ...],
    slash: int | tuple[int, ...],
    *,
    last_q: int = 64,
    sink_columns: int = 30,
    local_diagonals: int = 100,
    scale: float | None = None,
) -> tuple[list[list[int]], list[list[int]]]:
    """(verticals, slashes) per head, both ascending lists, for ``q [1, Hq, q_len, D]`` and ``k [1, Hkv, kv_len, D]``."""
    kv_len = k.shape[2]
    verticals, slashes = [], []
    for h, (column, diagonal) in enumerate(_line_scores(q, k, last_q, scale)):
        nv = min(kv_len, max(_budget(vertical, h), sink_columns))
        ns = min(kv_len, max(_budget(slash, h), local_diagonals))
        verticals.append(_rank(column, set(range(min(sink_columns, kv_len))), nv))
        slashes.append(_rank(diagonal, set(range(min(local_diagonals, kv_len))), ns))
    return verticals, slashes


def _line_scores(q: Tensor, k: Tensor, last_q: int, scale: float | None) -> Iterator[tuple[list[float], list[float]]]:
    """Per query head: (mass of each key column, mass of each diagonal ``d = q_pos - k``) over the last
    ``min(last_q, q_len)`` rows, each row an fp64 softmax over the keys it sees."""
    heads, q_len, dim = q.shape[1], q.shape[2], q.shape[3]
    kv_len, group = k.shape[2], q.shape[1] // k.shape[1]
    scale = 1.0 / math.sqrt(dim) if scale is None else scale
    n = min(last_q, q_len)
    for h in range(heads):
        keys = k[0, h // group].double()
        column = [0.0] * kv_len
        diagonal = [0.0] * kv_len
        for r in range(n):
            q_pos = kv_len - n + r
            logits = (keys[: q_pos + 1] @ q[0, h, q_len - n + r].double()) * scale
            probs = torch.softmax(logits, 0).tolist()
            for key, p in enumerate(probs):
                column[key] += p
                diagonal[q_pos - key] += p
        yield column, diagonal


def _mass_rank(scores: list[float], forced: int, threshold: float, cap: int) -> list[int]:
    """The cumulative-mass rule: rank forced first, then by score, then index; keep a line while the share
    ranked before it is below ``threshold`` (forced lines always), at most ``cap`` lines."""
    total = sum(scores)
    order = sorted(range(len(scores)), key=lambda i: (i >= forced, -scores[i], i))
    kept: list[int] = []
    taken = 0.0
    for i in order:
        if len(kept) < cap and (i < forced or taken < threshold):
            kept.append(i)
        taken += scores[i] / total
    return sorted(kept)


def reference_vertical_slash_mass(
    q: Tensor,
    k: Tensor,
    threshold: float | tuple[float, ...],
    max_vertical: int | tuple[int, ...],
    max_slash: int | tuple[int, ...],
    *,
    last_q: int = 64,
    sink_columns: int = 30,
    local_diagonals: int = 100,
    scale: float | None = None,
) -> tuple[list[list[int]], list[list[int]]]:
    """(verticals, slashes) per head of `VerticalSlashMass`, ascending, one row and one line at a time in fp64."""
    kv_len = k.shape[2]
    verticals, slashes = [], []
    for h, (column, diagonal) in enumerate(_line_scores(q, k, last_q, scale)):
        share = _budget(threshold, h)
        v_cap = min(kv_len, max(_budget(max_vertical, h), sink_columns))
        s_cap = min(kv_len, max(_budget(max_slash, h), local_diagonals))
        verticals.append(_mass_rank(column, sink_columns, share, v_cap))
        slashes.append(_mass_rank(diagonal, local_diagonals, share, s_cap))
    return verticals, slashes


def _block_rows(
    q: Tensor, k: Tensor, block_size: int
) -> Iterator[tuple[int, Tensor, list[Tensor], list[int], set[int]]]:
    """For each (head, query block) row in order: (head, pooled query, the head's pooled keys, key blocks the
    row reaches causally, forced ones: the sink block and those holding the row's own positions), in fp64."""
    heads, q_len = q.shape[1], q.shape[2]
    kv_len, group = k.shape[2], q.shape[1] // k.shape[1]
    offset = kv_len - q_len
    q_blocks, k_blocks = -(-q_len // block_size), -(-kv_len // block_size)
    for h in range(heads):
        k_pool = [k[0, h // group, b * block_size : (b + 1) * block_size].double().mean(0) for b in range(k_blocks)]
        for g in range(q_blocks):
            q_pool = q[0, h, g * block_size : (g + 1) * block_size].double().mean(0)
            first = g * block_size + offset
            last = min((g + 1) * block_size, q_len) - 1 + offset
            reach = [b for b in range(k_blocks) if b * block_size <= last]
            forced = {b for b in reach if b == 0 or min((b + 1) * block_size, kv_len) - 1 >= first}
            yield h, q_pool, k_pool, reach, forced


def reference_block_topk(
    q: Tensor, k: Tensor, topk: int | tuple[int, ...], *, block_size: int = 64
) -> list[list[list[int]]]:
    """Selected key blocks per head and query block (ascending lists)."""
    out: list[list[list[int]]] = [[] for _ in range(q.shape[1])]
    for h, q_pool, k_pool, reach, forced in _block_rows(q, k, block_size):
        scores = [float(q_pool @ k_pool[b]) if b in reach else -math.inf for b in range(len(k_pool))]
        chosen = set(_rank(scores, forced, min(_budget(topk, h), len(k_pool)))) & set(reach)
        out[h].append(sorted(chosen | forced))
    return out


def _sampled_share(q: Tensor, k: Tensor, h: int, g: int, block_size: int, samples: int) -> list[float]:
    """Share of each key block in query block ``g`` of head ``h``: the mean over its sampled rows
    ``first + ceil((j + 1) L / samples) - 1`` of each row's fp64 softmax mass in the block."""
    q_len, kv_len, group = q.shape[2], k.shape[2], q.shape[1] // k.shape[1]
    first = g * block_size
    rows_in = min(block_size, q_len - first)
    share = [0.0] * -(-kv_len // block_size)
    for j in range(samples):
        row = first + -(-(j + 1) * rows_in // samples) - 1
        q_pos = row + kv_len - q_len
        logits = (k[0, h // group, : q_pos + 1].double() @ q[0, h, row].double()) / math.sqrt(q.shape[3])
        for key, p in enumerate(torch.softmax(logits, 0).tolist()):
            share[key // block_size] += p / samples
    return share


def reference_block_mass(
    q: Tensor,
    k: Tensor,
    threshold: float | tuple[float, ...],
    *,
    block_size: int = 64,
    estimator: str = "pooled",
    samples: int = 4,
) -> list[list[list[int]]]:
    """Kept key blocks per head and query block (ascending) of `BlockMass`, one row at a time in fp64."""
    out: list[list[list[int]]] = [[] for _ in range(q.shape[1])]
    for h, q_pool, k_pool, reach, forced in _block_rows(q, k, block_size):
        share_needed = threshold[h] if isinstance(threshold, tuple) else threshold
        if estimator == "sampled":
            sampled = _sampled_share(q, k, h, len(out[h]), block_size, samples)
            share = {b: sampled[b] for b in reach}
        else:
            pooled = [float(q_pool @ k_pool[b]) for b in reach]
            logits = torch.tensor(pooled, dtype=torch.float64) / math.sqrt(q.shape[3])
            share = dict(zip(reach, torch.softmax(logits, 0).tolist(), strict=True))
        kept, taken = [], 0.0
        for b in sorted(reach, key=lambda b: (b not in forced, -share[b], b)):
            if b in forced or taken < share_needed:
                kept.append(b)
            taken += share[b]
        out[h].append(sorted(kept))
    return out
