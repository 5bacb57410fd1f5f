"""The attention kernels: forward (Triton, and Gluon for Hopper), backward, the split-row merge,
and their launch policy (`config`), which imports no Triton."""
