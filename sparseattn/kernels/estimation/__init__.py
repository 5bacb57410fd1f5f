"""Kernels of the estimation layer: last-query logits, pooled block scores, and top-k selection."""
