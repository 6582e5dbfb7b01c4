"""Fused Numba (CPU) and Numba-CUDA (GPU) kernels over raw arrays, installed as
``tinygrad_sgd.kernels``. Kernels take NumPy/CuPy arrays, never Tensors; inside this
package use relative imports only (it is mapped from the top-level ``kernels/`` folder).
"""
