"""Whether Triton's interpreter runs a loop whose bound is a kernel argument, with the installed Triton and numpy.

    TRITON_INTERPRET=1 python experiments/investigations/interpreter_loop_bound.py

The rule `sparseattn.kernels.interpreter.interpreter_problem` states came from this kernel: under Triton
3.6.0 it ran with numpy 2.2.6 and 2.3.5 and failed with numpy 2.4.6 ("only 0-dimensional arrays can be
converted to Python scalars"); Triton 3.7.1 ran it with numpy 2.4.6. Prints the versions, the outcome and
what the rule predicts; exits non-zero when they disagree.
"""

from __future__ import annotations

import os
import sys
from importlib.metadata import version

import torch
import triton
import triton.language as tl

from sparseattn.kernels.interpreter import interpreter_problem


@triton.jit
def _count_kernel(OUT, n):
    total = 0.0
    for _ in range(n):
        total += 1.0
    tl.store(OUT + tl.program_id(0), total)


def main() -> int:
    if os.environ.get("TRITON_INTERPRET") != "1":
        print("set TRITON_INTERPRET=1: this checks Triton's interpreter", file=sys.stderr)
        return 2
    versions = {"triton": version("triton"), "numpy": version("numpy")}
    out = torch.zeros(2)
    try:
        _count_kernel[(2,)](out, 5)
        runs = out.tolist() == [5.0, 5.0]
        outcome = "runs" if runs else f"wrong result {out.tolist()}"
    except Exception as error:  # the interpreter wraps the numpy TypeError in its own error type
        runs, outcome = False, f"fails: {error}"
    predicted = interpreter_problem(versions["triton"], versions["numpy"]) is None
    print(
        f"triton {versions['triton']}, numpy {versions['numpy']}: {outcome}; the rule predicts it "
        f"{'runs' if predicted else 'fails'}"
    )
    return 0 if runs == predicted else 1


if __name__ == "__main__":
    sys.exit(main())
