"""`VerticalSlash`: MInference's vertical-slash head, estimated from the last queries."""

from __future__ import annotations

import math
from dataclasses import dataclass

from torch import Tensor

from sparseattn.estimation.budgets import (
    Budget,
    budget_heads,
    budget_max,
    budget_tensor,
    check_budget,
    check_int,
    check_qk,
)
from sparseattn.estimation.topk import top_indices
from sparseattn.estimation.vs_indices import FORMS, VerticalSlashIndices
from sparseattn.estimation.vs_scores import line_sums


def check_line_settings(
    last_q: object, sink_columns: object, local_diagonals: object, form: object, block_size: object, scale: object
) -> None:
    """The settings vertical-slash rules share besides their budgets, each checked by name."""
    check_int("last_q", last_q, 1)
    check_int("sink_columns", sink_columns, 0)
    check_int("local_diagonals", local_diagonals, 0)
    if check_int("block_size", block_size, 32) % 32:
        raise ValueError(f"block_size: expected a multiple of 32, got {block_size}")
    if form not in FORMS:
        raise ValueError(f"form: expected one of {FORMS}, got {form!r}")
    if scale is not None and not (isinstance(scale, (int, float)) and math.isfinite(scale) and scale > 0):
        raise ValueError(f"scale: expected None or a positive finite float, got {scale!r}")


@dataclass(frozen=True)
class VerticalSlash:
    """MInference's vertical-slash pattern (Jiang et al. 2024), dynamic: ``estimate(q, k)`` picks the lines.

    Estimation (per query head, budgets per head when given as tuples):

    1. fp32 softmax of the last ``last_q`` queries (scaled like the attention, ``1/sqrt(D)`` unless
       ``scale`` is given) against every key, causal inside those last rows;
    2. column sums -> the ``vertical`` best key columns, the first ``sink_columns`` always among them;
    3. diagonal sums (by ``d = q_pos - k``) -> the ``slash`` best diagonals, the ``local_diagonals``
       nearest (``d < local_diagonals``) always among them.

    Forced lines count toward the budget; a budget below the forced count is raised to it, and budgets
    are capped at ``kv_len``. Ties at the budget boundary go to the lower index (the nearer diagonal).

    The estimate is a `VerticalSlashIndices`, whose token mask depends on ``form``:

    - ``"block"`` (MInference-compatible): ``k <= q_pos`` and (``k`` a vertical, or some slash crosses
      the ``block_size`` x ``block_size`` block holding ``(q, k)``): every block a slash crosses is
      computed whole, as MInference's kernel computes whole 64-wide key blocks around each slash;
    - ``"token"``: ``k <= q_pos`` and (``k`` a vertical or ``q_pos - k`` a slash), token-exact.

    >>> VerticalSlash(vertical=512, slash=2048)
    VerticalSlash(vertical=512, slash=2048, last_q=64, sink_columns=30, local_diagonals=100, form='block', block_size=64, scale=None)
    """

    vertical: Budget
    slash: Budget
    last_q: int = 64
    sink_columns: int = 30
    local_diagonals: int = 100
    form: str = "block"
    block_size: int = 64
    scale: float | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "vertical", check_budget("vertical", self.vertical))
        object.__setattr__(self, "slash", check_budget("slash", self.slash))
        budget_heads(self.vertical, self.slash)
        check_line_settings(
            self.last_q, self.sink_columns, self.local_diagonals, self.form, self.block_size, self.scale
        )

    @property
    def num_heads(self) -> int | None:
        return budget_heads(self.vertical, self.slash)

    def estimate(self, q: Tensor, k: Tensor) -> VerticalSlashIndices:
        """The concrete per-head pattern for ``q [1, Hq, q_len, D]`` and ``k [1, Hkv, kv_len, D]``."""
        check_qk(q, k)
        heads, kv_len = q.shape[1], k.shape[2]
        columns, diagonals = line_sums(q, k, self.last_q, self.scale)
        verticals = self._pick("vertical", columns, self.vertical, self.sink_columns, heads, kv_len)
        slashes = self._pick("slash", diagonals, self.slash, self.local_diagonals, heads, kv_len)
        return VerticalSlashIndices(verticals, slashes, form=self.form, block_size=self.block_size)

    @staticmethod
    def _pick(name: str, scores: Tensor, budget: Budget, forced: int, heads: int, kv_len: int) -> Tensor:
        scores[:, : min(forced, kv_len)] = math.inf
        counts = budget_tensor(name, budget, heads, scores.device).clamp(min=forced).clamp(max=kv_len)
        k_max = min(max(budget_max(budget), forced), kv_len)
        return top_indices(scores, counts.view(heads), k_max)
