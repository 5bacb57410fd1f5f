"""Kernels, grouped by concern: ``reference`` (the dense oracle), ``attention`` (the block-sparse
forward and backward kernels with their launch policy), ``flex`` (the FlexAttention adapter),
``lowering`` (kernels that turn a pattern's interval program or tile grid into layout lists),
``estimation`` (kernels of the dynamic patterns' hot path) and ``planning`` (the work list a launch
runs). Only the Triton and Gluon kernel modules import Triton, and nothing here imports them at
package import."""
