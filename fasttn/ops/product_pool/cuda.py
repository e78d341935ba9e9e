"""CuPy launches of the product-pooling kernels in ``fasttn/csrc/product_pool.cu``.

Same functions and signatures as :mod:`.cpu`; inputs are CuPy arrays on the current
device, outputs are fresh CuPy arrays there. Imported only when an op receives a CuPy
array, so CuPy is imported here at module level.
"""
from __future__ import annotations

import cupy as cp
import numpy as np

from ..._cuda import get_kernel, launch_config

_CTYPE = {np.dtype(np.float32): "float", np.dtype(np.float64): "double"}
# Sign dtypes with their own log-domain entry; any other (bool, int16, ...) goes through
# int8, which holds the product of signs in {-1, 0, 1} exactly.
_SIGN_CTYPE = {np.dtype(np.int8): "int8", np.dtype(np.float32): "float",
               np.dtype(np.float64): "double"}


def _pooled_shape(shape: tuple, window: int) -> tuple:
    if len(shape) == 3:
        return (shape[0], shape[1] // window, shape[2])
    return (shape[0], shape[1] // 2, shape[2] // 2, shape[3])


def _layout_args(out_shape: tuple, window: int) -> tuple:
    """``(layout name, channels, window or output width)`` as the kernels take them."""
    if len(out_shape) == 3:
        return "chain", np.int64(out_shape[2]), np.int64(window)
    return "grid", np.int64(out_shape[3]), np.int64(out_shape[2])


def product_pool(x: cp.ndarray, window: int) -> cp.ndarray:
    x = cp.ascontiguousarray(x)
    out = cp.empty(_pooled_shape(x.shape, window), x.dtype)
    if out.size:
        layout, channels, extent = _layout_args(out.shape, window)
        kernel = get_kernel("product_pool", f"product_pool_{layout}_{_CTYPE[x.dtype]}")
        kernel(*launch_config(out.size), (x, out, np.int64(out.size), channels, extent))
    return out


def product_pool_backward(x: cp.ndarray, grad_out: cp.ndarray, window: int) -> cp.ndarray:
    x = cp.ascontiguousarray(x)
    grad_out = cp.ascontiguousarray(grad_out)
    # Every element of x is a member of exactly one window, so the kernel writes all of grad.
    grad = cp.empty_like(x)
    if grad_out.size:
        layout, channels, extent = _layout_args(grad_out.shape, window)
        kernel = get_kernel("product_pool",
                            f"product_pool_{layout}_backward_{_CTYPE[x.dtype]}")
        kernel(*launch_config(grad_out.size),
               (x, grad_out, grad, np.int64(grad_out.size), channels, extent))
    return grad


def product_pool_log(logabs: cp.ndarray, sign: cp.ndarray, window: int):
    logabs = cp.ascontiguousarray(logabs)
    sign_dtype = sign.dtype
    kernel_sign = sign if sign.dtype in _SIGN_CTYPE else sign.astype(np.int8)
    kernel_sign = cp.ascontiguousarray(kernel_sign)
    shape = _pooled_shape(logabs.shape, window)
    out_logabs = cp.empty(shape, logabs.dtype)
    out_sign = cp.empty(shape, kernel_sign.dtype)
    if out_logabs.size:
        layout, channels, extent = _layout_args(shape, window)
        entry = (f"product_pool_log_{layout}_{_CTYPE[logabs.dtype]}_"
                 f"{_SIGN_CTYPE[kernel_sign.dtype]}")
        get_kernel("product_pool", entry)(
            *launch_config(out_logabs.size),
            (logabs, kernel_sign, out_logabs, out_sign, np.int64(out_logabs.size), channels,
             extent))
    return out_logabs, out_sign.astype(sign_dtype, copy=False)
