"""Where the Triton kernels run: on CUDA tensors, or on CPU tensors under Triton's interpreter (tests).

Imports no Triton: the lowering layer calls it, and importing the package must load none.
"""

from __future__ import annotations

import os
import re
from functools import cache
from importlib.metadata import PackageNotFoundError, version

import torch


def interpreting() -> bool:
    """Whether Triton's interpreter runs the kernels (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET") == "1"


def check_kernel_device(name: str, device: torch.device, needs: str = "the Triton kernel needs CUDA tensors") -> None:
    """Raise, naming ``name``, unless a Triton kernel can run on ``device``: CUDA, or any device while
    interpreting, with a Triton and numpy pair whose interpreter works."""
    if device.type == "cuda":
        return
    if not interpreting():
        raise ValueError(
            f"{name}: {needs}, got device {device} (set TRITON_INTERPRET=1 to run Triton's interpreter on CPU, "
            "for tests)"
        )
    problem = installed_interpreter_problem()
    if problem is not None:
        raise RuntimeError(problem)


def interpreter_problem(triton_version: str, numpy_version: str) -> str | None:
    """Why Triton's interpreter cannot run these kernels with these versions, or None.

    Before 3.7 the interpreter turns a loop bound (a one-element array) into a Python int with ``int()``,
    which numpy refuses from 2.4 on: every kernel with a runtime loop bound then fails with "only
    0-dimensional arrays can be converted to Python scalars". Compiled kernels on a GPU are unaffected.
    `experiments/investigations/interpreter_loop_bound.py` runs such a loop with the installed pair.
    """
    if _release(triton_version) < (3, 7) and _release(numpy_version) >= (2, 4):
        return (
            f"Triton's interpreter: triton {triton_version} cannot run loops under numpy {numpy_version} "
            "(its interpreter converts one-element arrays with int(), which numpy refuses from 2.4); "
            "install triton>=3.7 or numpy<2.4 to run the kernels on CPU"
        )
    return None


@cache
def installed_interpreter_problem() -> str | None:
    """`interpreter_problem` for the installed Triton and numpy (read once per process)."""
    try:
        return interpreter_problem(version("triton"), version("numpy"))
    except PackageNotFoundError as missing:
        return f"Triton's interpreter: {missing.name} is not installed (pip install {missing.name})"


def _release(text: str) -> tuple[int, ...]:
    """``"3.6.0+git1a2b"`` -> ``(3, 6, 0)``: the leading release numbers of a version string."""
    match = re.match(r"\d+(\.\d+)*", text)
    if match is None:
        raise ValueError(f"version: expected a release such as 3.7.1, got {text!r}")
    return tuple(int(part) for part in match.group(0).split("."))
