"""`VerticalSlashMass`: vertical-slash heads whose line counts follow the estimated attention mass."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from sparseattn.estimation.budgets import (
    Budget,
    Threshold,
    budget_heads,
    budget_max,
    budget_tensor,
    check_budget,
    check_qk,
    check_threshold,
    per_head_tensor,
)
from sparseattn.estimation.topk import first_ascending, ranked_indices
from sparseattn.estimation.vertical_slash import check_line_settings
from sparseattn.estimation.vs_indices import VerticalSlashIndices
from sparseattn.estimation.vs_scores import line_sums


def mass_lines(scores: Tensor, forced: int, threshold: Tensor, cap: Tensor, k_max: int) -> Tensor:
    """``[H, k_max]`` lines of the cumulative-mass rule over ``scores [H, L]`` (modified in place),
    ascending, padded with `PAD`.

    Lines are ranked forced first (the first ``forced``), then by decreasing score, ties to the lower
    index; a line is kept while the share of the lines ranked before it is below ``threshold[h]``, so the
    count is the fewest lines whose share reaches it, at least ``forced`` and at most ``cap[h] <= k_max``.
    One ranking (`ranked_indices`, forced entries set to ``+inf``) gives both the count and the lines.
    """
    shares = scores / scores.sum(-1, keepdim=True)
    scores[:, : min(forced, scores.shape[-1])] = math.inf
    ranked = ranked_indices(scores, k_max)
    taken = F.pad(torch.cumsum(shares.gather(-1, ranked), -1)[:, :-1], (1, 0))  # share ranked before each
    count = (taken < threshold.view(-1, 1)).sum(-1)
    return first_ascending(ranked, torch.minimum(count.clamp(min=forced), cap))


@dataclass(frozen=True)
class VerticalSlashMass:
    """Vertical-slash with per-head line counts from the estimated attention mass (FlexPrefill's cumulative
    rule, Lai et al. 2025, applied to MInference's vertical and slash lines).

    Estimation, per query head (thresholds and caps per head when given as tuples):

    1. fp32 softmax of the last ``n = min(last_q, q_len)`` queries against every key, causal inside those
       rows and scaled like the attention (as `VerticalSlash`);
    2. the share of key column ``k`` is its summed probability over the ``n`` rows divided by the total
       (``n``); the share of diagonal ``d = q_pos - k`` likewise;
    3. columns are ranked forced first (``k < sink_columns``), then by decreasing share, ties to the
       lower index; the kept columns are the first ``m`` of that ranking, ``m`` the fewest whose shares
       sum to at least ``threshold`` (a column is kept while the share ranked before it is below
       ``threshold``), raised to ``sink_columns`` and capped at ``max(max_vertical, sink_columns)`` and
       at ``kv_len``;
    4. diagonals the same way with ``local_diagonals`` forced (``d < local_diagonals``) and ``max_slash``.

    A head whose last rows look at a few keys keeps few lines; a flat head keeps lines up to its caps.
    The estimate is a `VerticalSlashIndices` (mask by ``form`` as there), lowered on the device like
    `VerticalSlash`'s. Here the last queries attend uniformly (``q = 0``), so the earliest columns and
    nearest diagonals hold the most mass (column 0 a share of 0.34, column 1 of 0.21), and half of it takes
    2 columns and 2 diagonals:

    >>> q, k = torch.zeros(1, 1, 8, 4), torch.ones(1, 1, 8, 4)
    >>> rule = VerticalSlashMass(0.5, max_vertical=8, max_slash=8, last_q=8, sink_columns=1,
    ...                          local_diagonals=1, form="token", block_size=32)
    >>> print(rule.estimate(q, k).render(8))
    #-------
    ##------
    ###-----
    ####----
    ##-##---
    ##--##--
    ##---##-
    ##----##
    """

    threshold: Threshold
    max_vertical: Budget = 1000
    max_slash: Budget = 6096
    last_q: int = 64
    sink_columns: int = 30
    local_diagonals: int = 100
    form: str = "block"
    block_size: int = 64
    scale: float | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "threshold", check_threshold(self.threshold))
        object.__setattr__(self, "max_vertical", check_budget("max_vertical", self.max_vertical))
        object.__setattr__(self, "max_slash", check_budget("max_slash", self.max_slash))
        heads = budget_heads(self.max_vertical, self.max_slash)
        if isinstance(self.threshold, tuple) and heads is not None and len(self.threshold) != heads:
            raise ValueError(f"threshold: {len(self.threshold)} per-head thresholds, but the caps have {heads}")
        check_line_settings(
            self.last_q, self.sink_columns, self.local_diagonals, self.form, self.block_size, self.scale
        )

    @property
    def num_heads(self) -> int | None:
        heads = budget_heads(self.max_vertical, self.max_slash)
        return len(self.threshold) if isinstance(self.threshold, tuple) else heads

    def estimate(self, q: Tensor, k: Tensor) -> VerticalSlashIndices:
        """The concrete per-head pattern for ``q [1, Hq, q_len, D]`` and ``k [1, Hkv, kv_len, D]``; no host sync."""
        check_qk(q, k)
        heads, kv_len = q.shape[1], k.shape[2]
        threshold = per_head_tensor("threshold", self.threshold, heads, torch.float32, q.device)
        columns, diagonals = line_sums(q, k, self.last_q, self.scale)
        lines = []
        for name, scores, cap, forced in (
            ("max_vertical", columns, self.max_vertical, self.sink_columns),
            ("max_slash", diagonals, self.max_slash, self.local_diagonals),
        ):
            k_max = min(max(budget_max(cap), forced), kv_len)
            caps = budget_tensor(name, cap, heads, q.device).clamp(min=forced).clamp(max=kv_len)
            lines.append(mass_lines(scores, forced, threshold, caps, k_max))
        return VerticalSlashIndices(lines[0], lines[1], form=self.form, block_size=self.block_size)
