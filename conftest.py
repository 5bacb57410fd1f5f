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
