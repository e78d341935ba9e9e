import gc

import numpy as np
import pytest

from fasttn.backend import _BufferPool, kernel_threads


def test_pooled_block_outlives_every_view(rng):
    pool = _BufferPool()
    shape = (512, 1024)  # 2 MiB of float32: pooled
    a = pool.empty(shape, np.float32)
    a[:] = rng.standard_normal(shape)
    view = a.reshape(-1)[::3]  # NumPy collapses a view's base; the lease must still hold
    kept = view.copy()
    del a
    gc.collect()
    b = pool.empty(shape, np.float32)
    assert not np.shares_memory(b, view)
    b[:] = 0.0
    np.testing.assert_array_equal(view, kept)
    del view, b
    gc.collect()
    c = pool.empty(shape, np.float32)  # now a block is free and is reused
    assert c.flags.c_contiguous and c.shape == shape and c.dtype == np.float32
    assert pool._free_bytes == 2 << 20  # one of the two blocks back in the pool, one in use


def test_small_buffers_bypass_the_pool():
    pool = _BufferPool()
    a = pool.empty((4, 5), np.float64)
    assert a.base is None and a.shape == (4, 5)


def test_kernel_blas_runs_on_one_thread():
    from threadpoolctl import ThreadpoolController

    with kernel_threads() as policy:
        pinned = set(policy.pinned)
    assert pinned
    for lib in ThreadpoolController().lib_controllers:
        if lib.filepath in pinned:
            assert lib.num_threads == 1


def test_fasttn_num_threads_caps_numba_inside_kernels_only(monkeypatch):
    import numba

    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("one Numba thread: nothing to cap")
    outside = numba.get_num_threads()
    monkeypatch.setenv("FASTTN_NUM_THREADS", "1")
    with kernel_threads():
        assert numba.get_num_threads() == 1
        with kernel_threads():  # nested: still capped, then back to the outer cap
            assert numba.get_num_threads() == 1
        assert numba.get_num_threads() == 1
    assert numba.get_num_threads() == outside
    monkeypatch.setenv("FASTTN_NUM_THREADS", "10000")  # at most the pool Numba started
    with kernel_threads():
        assert numba.get_num_threads() == numba.config.NUMBA_NUM_THREADS
    monkeypatch.delenv("FASTTN_NUM_THREADS")
    with kernel_threads():
        assert numba.get_num_threads() == outside
    monkeypatch.setenv("FASTTN_NUM_THREADS", "zero")
    with pytest.raises(ValueError, match="FASTTN_NUM_THREADS: expected a positive integer"):
        with kernel_threads():
            pass
    monkeypatch.delenv("FASTTN_NUM_THREADS")
    with kernel_threads():  # a failed entry left nothing behind
        assert numba.get_num_threads() == outside
