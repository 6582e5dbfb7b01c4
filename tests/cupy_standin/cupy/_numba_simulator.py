"""What Numba's CUDA simulator lacks for CuPy arrays, given to it while the CuPy stand-in
is on (the stand-in calls :func:`install` when ``NUMBA_ENABLE_CUDASIM=1`` and the kernels'
dispatcher first reads an array's ``__cuda_array_interface__``).

``kernels/cuda.py`` launches CuPy arrays through ``cuda.as_cuda_array`` on CuPy's current
stream (``cuda.external_stream``, or ``cuda.default_stream`` for the null stream); the
simulator has none of the three. Here ``as_cuda_array`` returns a simulator device array
over the stand-in's own NumPy memory (a view, not a copy, so a kernel that writes in
place is seen), and the streams are the simulator's synchronous stream.
"""

from __future__ import annotations


_installed = []


def install() -> None:
    if _installed:
        return
    from numba import cuda
    from numba.core import config
    from numba.cuda.simulator.cudadrv.devicearray import FakeCUDAArray

    if not config.ENABLE_CUDASIM:
        raise RuntimeError("the simulator shims need NUMBA_ENABLE_CUDASIM=1 set before numba is imported")

    def as_cuda_array(obj, sync=True):
        import cupy

        if type(obj) is not cupy.ndarray:
            raise TypeError(f"as_cuda_array (stand-in shim) takes a cupy.ndarray, got {type(obj).__name__}")
        return FakeCUDAArray(obj._a)

    for name, fn in [("as_cuda_array", as_cuda_array), ("default_stream", lambda: cuda.stream()),
                     ("external_stream", lambda ptr: cuda.stream())]:
        if not hasattr(cuda, name):
            setattr(cuda, name, fn)
    _installed.append(True)
