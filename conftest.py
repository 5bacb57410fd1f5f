"""Test-session setup shared by the whole suite.

Without a CUDA device the Triton kernels run in Triton's interpreter, which must be switched on before
Triton is first imported; BLAS threads are pinned because CI has two cores and pytest-xdist uses both.
"""

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
torch.set_num_threads(1)


def pytest_terminal_summary(terminalreporter) -> None:
    """All skips in one line, grouped by reason (most frequent first), instead of a bare 's' each."""
    from collections import Counter

    reasons: Counter[str] = Counter()
    for report in terminalreporter.stats.get("skipped", []):
        longrepr = report.longrepr
        reason = longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)
        reasons[reason.removeprefix("Skipped: ")] += 1
    if reasons:
        terminalreporter.write_line(
            f"skipped {sum(reasons.values())}: " + "; ".join(f"{n} x {r}" for r, n in reasons.most_common())
        )
