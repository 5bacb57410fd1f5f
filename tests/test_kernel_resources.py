"""The default launch configurations, compiled for Hopper without a GPU, fit its shared memory and
registers: every one in a program's limit, and the short-row ones two programs to a multiprocessor (what
their speed rests on: kernel_options.md measured Triangle() 25% slower at one program per multiprocessor).

The compile runs in a child process: this suite runs Triton's interpreter, which replaces the kernel
by an interpreted function that cannot be compiled.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys

from sparseattn.kernels.attention import config as launch_config
from sparseattn.kernels.attention.config import default_config
from sparseattn.kernels.attention.resources import (
    HOPPER_REGISTERS_PER_SM,
    HOPPER_SHARED_PER_PROGRAM,
    HOPPER_SHARED_PER_SM,
    dot_kinds,
)
from sparseattn.lowering import lower
from sparseattn.patterns import Causal, PerHead, Triangle, Window

CASES = [
    ("dense rows", Causal(), (128, 128), 1),
    ("short rows, one layout for all heads", Triangle(8, 512, 128), (32, 32), 2),
    ("short rows, one layout, GQA pairs", Triangle(8, 512, 128), (64, 64), 2),
    ("short rows, per head", PerHead((Triangle(8, 512, 128), Causal() & Window(256))), (64, 64), 2),
]

CHILD = """
import json, sys
from sparseattn.kernels.attention.config import KernelConfig
from sparseattn.kernels.attention.resources import kernel_resources
cases = json.loads(sys.stdin.read())
found = [kernel_resources(tuple(c["block"]), 128, KernelConfig(**c["config"])) for c in cases]
print(json.dumps([[r.shared_bytes, r.registers] for r in found]))
"""


def test_default_configs_fit_hopper_shared_memory(monkeypatch):
    monkeypatch.setattr(launch_config, "_has_tma", lambda device: True)  # as on Hopper
    cases = []
    for name, pattern, block, least in CASES:
        layout = lower(pattern, 2048, block_size=block, num_heads=pattern.num_heads)
        group = 2 if "pairs" in name else 4
        config = dataclasses.asdict(default_config(layout, 128, group=group))
        cases.append({"name": name, "block": block, "config": config, "least": least})
    env = {**os.environ, "TRITON_INTERPRET": "0"}
    child = subprocess.run(
        [sys.executable, "-c", CHILD], input=json.dumps(cases), env=env, check=True, capture_output=True, text=True
    )
    for case, (shared, registers) in zip(cases, json.loads(child.stdout), strict=True):
        assert shared <= HOPPER_SHARED_PER_PROGRAM, case
        assert HOPPER_SHARED_PER_SM // shared >= case["least"], (case, shared)
        threads = 32 * case["config"]["num_warps"]
        assert HOPPER_REGISTERS_PER_SM // (registers * threads) >= case["least"], (case, registers)


WARP_SPECIALIZED_CHILD = """
import json
from sparseattn.kernels.attention.config import KernelConfig
from sparseattn.kernels.attention.resources import warp_specialized_resources
found = []
for dim, even_kv in ((64, True), (128, True), (128, False)):
    for ping_pong in (False, True):
        config = KernelConfig(4, 2, tma=True, warp_specialized=True, ping_pong=ping_pong)
        r = warp_specialized_resources(dim, config, even_kv=even_kv)
        found.append([[dim, even_kv, ping_pong], r.shared_bytes, r.registers, r.stack_bytes])
print(json.dumps(found))
"""


def test_warp_specialized_kernel_compiles_for_hopper_without_spills():
    """The Gluon kernel (no interpreter: CI only compiles it) builds for sm_90 on this Triton, with every
    launch in one program's shared memory, its 12 warps within the register file, and nothing spilled."""
    env = {**os.environ, "TRITON_INTERPRET": "0"}
    child = subprocess.run(
        [sys.executable, "-c", WARP_SPECIALIZED_CHILD], env=env, check=True, capture_output=True, text=True
    )
    for case, shared, registers, stack in json.loads(child.stdout):
        assert shared <= HOPPER_SHARED_PER_PROGRAM, (case, shared)
        assert registers * 32 * 12 <= HOPPER_REGISTERS_PER_SM, (case, registers)
        # A ragged kv_len keeps the last FULL tile's key count live through the row: Triton 3.6 and 3.7
        # then spill 16 bytes around the per-item output stores (STL/LDL there in the SASS), none in the
        # tile loop; even lengths spill nothing.
        even_kv = case[1]
        assert stack == 0 if even_kv else stack <= 16, (case, stack)


BACKWARD_CHILD = """
import dataclasses, json
from sparseattn.kernels.attention.backward import default_backward_config
from sparseattn.kernels.attention.resources import backward_resources
from sparseattn.kernels.planning.dkdv_work import build_dkdv_work
from sparseattn.lowering import lower
from sparseattn.patterns import Causal, Columns, Triangle
cases = json.loads(input())
found = []
for pattern, dim, flags in cases:
    pattern = {"triangle": Triangle(), "columns": Causal() & Columns((5, 300, 301, 900))}[pattern]
    layout = lower(pattern, 1000, 1000, block_size=(128, 128) if dim == 128 else (64, 64))
    config = dataclasses.replace(default_backward_config(layout, dim), **flags)
    resources = backward_resources(layout, dim, config)
    kernels = {name: r.shared_bytes for name, r in resources.items()}
    mma_sync = {name: r.mma_sync_dots for name, r in resources.items()}
    # backward_resources plans 4 query / 2 kv heads; the merge kernel runs where that plan splits.
    splits = bool(build_dkdv_work(layout, 1, 4, 2, config.max_chunk).merges.shape[0])
    found.append({"kernels": kernels, "splits": splits, "mma_sync": mma_sync})
print(json.dumps(found))
"""

# The backward's default and each of its flags alone, ragged length (1000) and gathered columns included.
# Key-major with unrolled row steps at one dK/dV stage: at two it needs more shared memory than a program
# may take (below).
BACKWARD_CASES = [
    ["triangle", 128, {}],
    # The query-major default before key-major one-loop steps measured faster.
    ["triangle", 128, {"key_major": False, "flat_steps": False, "sub_m": 32}],
    ["columns", 128, {"key_major": True, "flat_steps": False, "sub_m": 32, "dkdv_stages": 1}],
    ["triangle", 128, {"dq_atomic": True}],
    ["columns", 128, {"tma": True}],
    ["triangle", 128, {"max_chunk": 2}],
    ["columns", 128, {"key_major": False, "flat_steps": True, "sub_m": 32}],
    # Walked as one loop, key-major fits at two stages (112 KiB offline): one set of stage buffers for
    # Q and dO instead of one per unrolled row step.
    ["triangle", 128, {"key_major": True, "flat_steps": True}],
    ["columns", 64, {}],
    # tests/gpu/test_backward_gpu.py's combined flags, as it runs them
    ["triangle", 128, {"key_major": True, "dq_atomic": True, "max_chunk": 3, "dkdv_stages": 1}],
]


def compile_backward(cases: list) -> list[dict]:
    """`BACKWARD_CHILD` on ``cases``, in a process where Triton compiles instead of interpreting."""
    env = {**os.environ, "TRITON_INTERPRET": "0"}
    child = subprocess.run(
        [sys.executable, "-c", BACKWARD_CHILD],
        input=json.dumps(cases),
        env=env,
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(child.stdout)


def test_backward_kernels_compile_for_hopper():
    """Every backward kernel, as `triton_sparse_attention_backward` would launch it for these layouts, builds
    for sm_90 on this Triton (the interpreter cannot tell) and fits one program's shared memory."""
    for case, built in zip(BACKWARD_CASES, compile_backward(BACKWARD_CASES), strict=True):
        kernels = built["kernels"]
        # The default splits long dK/dV programs by the planner's rule; a forced max_chunk always splits here.
        assert built["splits"] or "max_chunk" not in case[2], case
        want = {"_bwd_delta_kernel", "_bwd_dkdv_kernel"} | ({"_bwd_dkdv_merge_kernel"} if built["splits"] else set())
        want |= set() if case[2].get("dq_atomic") else {"_bwd_dq_kernel"}
        assert set(kernels) == want, case
        assert max(kernels.values()) <= HOPPER_SHARED_PER_PROGRAM, (case, kernels)
        if case[2].get("key_major") and not case[2].get("dq_atomic"):
            # Scores [keys, rows]: its four products have M = keys, all on wgmma (dQ by atomics adds a
            # [rows, D] product, on mma.sync at 32 rows).
            assert built["mma_sync"]["_bwd_dkdv_kernel"] == 0, case


def test_dot_kinds_read_the_mma_version_of_each_product():
    ttgir = "\n".join(
        [
            "#mma = #ttg.nvidia_mma<{versionMajor = 2, versionMinor = 0, warpsPerCTA = [1, 8]}>",
            "#mma1 = #ttg.nvidia_mma<{versionMajor = 3, versionMinor = 0, warpsPerCTA = [4, 2]}>",
            "  %a = tt.dot %q, %k, %c : tensor<32x128xbf16, #x> * tensor<128x64xbf16, #y> -> tensor<32x64xf32, #mma>",
            "  %b = tt.dot %q, %k, %c : tensor<64x128xbf16, #x> * tensor<128x64xbf16, #y> -> tensor<64x64xf32, #mma>",
            "  %c = ttng.warp_group_dot %p, %v, %d : !ttg.memdesc<128x32xbf16> * !ttg.memdesc<32x128xbf16> -> tensor",
            "  %d = tt.dot %q, %k, %c : tensor<64x16xf32, #x> * tensor<16x64xf32, #y> -> tensor<64x64xf32, #blocked>",
        ]
    )
    assert dot_kinds(ttgir) == (1, 2)  # the blocked-layout product is neither


def test_offline_compiles_are_specialised_like_a_launch():
    """Key-major dK/dV at two stages asked an H100 for 263,168 bytes of shared memory under Triton 3.6 and
    did not launch. An offline compile must see the same kernel: Triton's launcher marks 16-divisible
    pointers and strides, which lets the q and dO loads become asynchronous copies into shared memory;
    compiled without those marks the kernel took 145 KiB and looked as if it fit."""
    unrolled = {"key_major": True, "flat_steps": False, "sub_m": 32}
    shared = compile_backward([["triangle", 128, unrolled]])[0]["kernels"]["_bwd_dkdv_kernel"]
    assert shared > HOPPER_SHARED_PER_PROGRAM, shared
