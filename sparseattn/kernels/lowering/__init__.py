"""Kernels of the lowering layer: interval programs run as straight-line code, and tile-grid row scans."""
