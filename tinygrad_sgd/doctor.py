"""``tinygrad-sgd doctor``: what a student runs first when something is off.

It prints the versions that matter (Python, tinygrad_sgd, NumPy, Numba, numba-cuda, CuPy,
mpi4py, torch), the CPU threads and Numba's threading layer, the GPUs CuPy sees (name,
compute capability, memory, driver and runtime versions), and which of the package's
extras are installed. Then it runs a smoke test on every usable device, about a second
each: a small float64 network forward and backward (on the CPU against central finite
differences, on a GPU against the CPU's numbers), and one fused Adam step against the
readable reference update. It exits 0 when every smoke test passes, else 1 after one line
``tinygrad-sgd doctor: failed: <device>: <reason>`` on stderr.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import platform
import re
import sys
import time
from importlib import metadata

import numpy as np

_ENV_VARS = ("TINYGRAD_SGD_DEVICE", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS",
             "NUMBA_THREADING_LAYER", "NUMBA_ENABLE_CUDASIM", "CUDA_VISIBLE_DEVICES")


class SmokeTestFailure(Exception):
    """A smoke test whose result differs from the reference (its message says by how much)."""


# ----------------------------------------------------------------------------- report


def version_of(distribution: str) -> str | None:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def module_status(name: str) -> str:
    """``"1.2.3"``, ``"not installed"``, or why the import failed (first line)."""
    if importlib.util.find_spec(name) is None:
        return "not installed"
    try:
        module = importlib.import_module(name)
    except Exception as error:  # a broken install: say what it raised
        return f"installed but fails to import: {type(error).__name__}: {str(error).splitlines()[0]}"
    version = getattr(module, "__version__", "?")
    if getattr(module, "STANDIN", False):
        return f"{version} -- the TEST STAND-IN from tests/cupy_standin (NumPy on the CPU), not a GPU"
    return str(version)


def extras() -> list[tuple[str, list[tuple[str, str | None]]]]:
    """``[(extra, [(requirement, installed version or None), ...]), ...]`` read from the
    installed package's metadata (the extras of setup.cfg), so no list is kept twice."""
    try:
        requires = metadata.requires("tinygrad_sgd") or []
    except metadata.PackageNotFoundError:
        return []
    found: dict[str, list] = {}
    for line in requires:
        spec, _, marker = line.partition(";")
        extra = re.search(r"""extra\s*==\s*["']([^"']+)["']""", marker)
        if extra is None:
            continue
        name = re.match(r"[A-Za-z0-9._-]*", spec.strip())
        found.setdefault(extra.group(1), []).append((spec.strip(), version_of(name.group(0)) if name else None))
    return sorted(found.items())


def cpu_threads() -> str:
    import numba

    try:
        usable: int | None = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        usable = os.cpu_count()
    return (f"{os.cpu_count()} logical CPUs ({usable} usable by this process); Numba uses "
            f"{numba.get_num_threads()} threads")


def threading_layer() -> str:
    """Numba's threading layer (known only once a parallel kernel has run: call after the
    CPU smoke test)."""
    import numba

    try:
        return numba.threading_layer()
    except ValueError:
        return f"not chosen yet (requested: {getattr(numba.config, 'THREADING_LAYER', 'default')})"


def gpus() -> list[str]:
    """One line per GPU that CuPy sees, or why there is none."""
    from . import backend

    if backend._cupy is None:
        return ["none: CuPy is not importable (pip install 'tinygrad_sgd[gpu]')"]
    cupy = backend._cupy
    try:
        count = int(cupy.cuda.runtime.getDeviceCount())
        driver = _cuda_version(cupy.cuda.runtime.driverGetVersion())
        runtime = _cuda_version(cupy.cuda.runtime.runtimeGetVersion())
    except Exception as error:  # no driver, no device: say which
        return [f"none: CuPy cannot reach a GPU ({type(error).__name__}: {str(error).splitlines()[0]})"]
    lines = []
    for i in range(count):
        props = cupy.cuda.runtime.getDeviceProperties(i)
        name = props["name"].decode() if isinstance(props["name"], bytes) else str(props["name"])
        memory = props.get("totalGlobalMem", 0) / 2**30
        lines.append(f"cuda:{i}: {name}, compute capability {props['major']}.{props['minor']}, "
                     f"{memory:.0f} GiB; CUDA driver {driver}, runtime {runtime}")
    return lines or ["none: CuPy reports 0 devices"]


def _cuda_version(number: int) -> str:
    return f"{number // 1000}.{number % 1000 // 10}"


# ----------------------------------------------------------------------------- smoke tests


def smoke_test(device: str) -> str:
    """Forward, backward and one fused Adam step on ``device``; a short summary, or
    :class:`SmokeTestFailure` naming the first difference."""
    import tinygrad_sgd as tg

    started = time.perf_counter()
    gen = np.random.default_rng(0)
    x, y = gen.normal(size=(6, 5)), gen.integers(0, 3, 6)
    w1, w2 = gen.normal(size=(5, 4)) * 0.5, gen.normal(size=(4, 3)) * 0.5

    def loss_and_grads(where):
        params = [tg.Tensor(w, dtype=tg.float64, device=where, requires_grad=True) for w in (w1, w2)]
        hidden = (tg.Tensor(x, dtype=tg.float64, device=where) @ params[0]).tanh()
        loss = tg.nn.functional.cross_entropy(hidden @ params[1], tg.Tensor(y, device=where))
        loss.backward()
        return float(loss.item()), [p.grad.numpy() for p in params], params

    loss, grads, params = loss_and_grads(device)
    if device == "cpu":  # the CPU is checked against central finite differences
        ok = tg.autograd.gradcheck(lambda a, b: tg.nn.functional.cross_entropy(
            (tg.Tensor(x, dtype=tg.float64) @ a).tanh() @ b, tg.Tensor(y)),
            [p.detach().requires_grad_() for p in params], raise_exception=False)
        if not ok:
            raise SmokeTestFailure("backward differs from finite differences")
    else:  # a GPU against the CPU
        cpu_loss, cpu_grads, _ = loss_and_grads("cpu")
        _close("forward (loss)", loss, cpu_loss, 1e-10)
        for i, (g, cpu_g) in enumerate(zip(grads, cpu_grads)):
            _close(f"backward (gradient {i})", g, cpu_g, 1e-10)

    results = []
    for fused in (True, False):  # one Adam step on float32 parameters, same gradients
        ps = [tg.Tensor(w, device=device, requires_grad=True) for w in (w1, w2)]
        for p, g in zip(ps, grads):
            p.grad = tg.Tensor(g, device=device)
        tg.optim.Adam(ps, lr=0.1, weight_decay=0.01, fused=fused).step()
        results.append([p.detach().numpy() for p in ps])
    for i, (fused, reference) in enumerate(zip(*results)):
        _close(f"fused Adam step (parameter {i}) against the reference", fused, reference, 1e-6)
    return f"forward, backward and fused Adam step ok ({time.perf_counter() - started:.1f} s)"


def _close(what: str, got, expected, tolerance: float) -> None:
    error = float(np.max(np.abs(np.asarray(got, dtype=np.float64) - np.asarray(expected, dtype=np.float64))))
    if not error <= tolerance:  # also catches NaN
        raise SmokeTestFailure(f"{what} differs by {error:.3g} (tolerance {tolerance:g})")


# ----------------------------------------------------------------------------- command


def main(devices=None, out=print) -> int:
    """Print the report, run the smoke tests on ``devices`` (default: the CPU and every
    GPU CuPy can use); 0 when they pass, else 1 with a one-line reason on stderr."""
    import tinygrad_sgd as tg

    from . import backend

    out(f"tinygrad_sgd {tg.__version__} doctor")
    out(f"python     {platform.python_version()} ({sys.executable}) on {platform.platform()}")
    for name in ("numpy", "numba", "cupy", "mpi4py", "torch"):
        out(f"{name:<10} {module_status(name)}")
    out(f"numba-cuda {version_of('numba-cuda') or 'not installed'}")
    out(f"cpu        {cpu_threads()}")
    for line in gpus():
        out(f"gpu        {line}")
    for extra, requirements in extras():
        missing = [spec for spec, version in requirements if version is None]
        state = "installed" if not missing else f"missing {', '.join(missing)}"
        out(f"extra      [{extra}] {state}")
    for name in _ENV_VARS:
        if name in os.environ:
            out(f"env        {name}={os.environ[name]}")

    if devices is None:
        devices = ["cpu"] + [f"cuda:{i}" for i in range(backend.gpu_count())]
    failure = None
    for device in devices:
        try:
            summary = smoke_test(device)
        except Exception as error:  # any failure is the report's answer, in one line
            reason = str(error).splitlines()[0] if str(error) else type(error).__name__
            out(f"smoke      {device}: FAILED: {reason}")
            failure = failure or f"{device}: {reason}"
        else:
            out(f"smoke      {device}: {summary}")
        if device == "cpu":
            out(f"numba      threading layer: {threading_layer()}")
    if len(devices) == 1 and devices[0] == "cpu":
        out("smoke     no GPU to test (the CPU path alone)")
    if failure is not None:
        print(f"tinygrad-sgd doctor: failed: {failure}", file=sys.stderr)
        return 1
    out("all smoke tests passed")
    return 0
