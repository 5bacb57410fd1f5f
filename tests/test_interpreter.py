"""Where the Triton kernels run: CUDA, or CPU under Triton's interpreter with versions that work."""

from __future__ import annotations

import pytest
import torch

from sparseattn.kernels import interpreter
from sparseattn.kernels.interpreter import check_kernel_device, interpreter_problem


@pytest.mark.parametrize(
    ("triton_version", "numpy_version", "broken"),
    [
        ("3.6.0", "2.4.6", True),
        ("3.6.0+gitdeadbeef", "2.5.0rc1", True),
        ("3.6.0", "2.3.5", False),
        ("3.7.1", "2.4.6", False),
        ("3.10.0", "3.0.0", False),
    ],
)
def test_interpreter_problem_names_the_versions(triton_version, numpy_version, broken):
    problem = interpreter_problem(triton_version, numpy_version)
    assert (problem is not None) == broken
    if broken:
        assert triton_version in problem and numpy_version in problem and "triton>=3.7" in problem


def test_interpreter_problem_rejects_an_unreadable_version():
    with pytest.raises(ValueError, match="version"):
        interpreter_problem("nightly", "2.4.0")


def test_cpu_tensors_need_the_interpreter(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(ValueError, match=r"^q: the Triton kernel needs CUDA tensors, got device cpu"):
        check_kernel_device("q", torch.device("cpu"))


def test_a_broken_interpreter_is_named_before_any_kernel_runs(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setattr(interpreter, "installed_interpreter_problem", lambda: "triton 3.6.0 cannot run loops")
    with pytest.raises(RuntimeError, match=r"triton 3\.6\.0 cannot run loops"):
        check_kernel_device("k", torch.device("cpu"))


def test_cuda_devices_pass_without_the_interpreter(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    check_kernel_device("q", torch.device("cuda", 0))


def test_the_installed_versions_run_the_interpreter():
    """The environment the README's commands build must interpret the kernels."""
    assert interpreter.installed_interpreter_problem() is None
