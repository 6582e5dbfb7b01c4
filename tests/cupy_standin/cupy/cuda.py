"""``cupy.cuda`` of the stand-in: one device (id 0), ``Device`` as a context manager,
streams that synchronise (every call already ran), and the ``runtime`` functions the
library and ``tinygrad-sgd doctor`` read. A device id other than 0 fails when used, as
CuPy's does on a one-GPU machine."""

from __future__ import annotations


class CUDARuntimeError(RuntimeError):
    pass


class runtime:  # CuPy's module name
    CUDARuntimeError = CUDARuntimeError

    @staticmethod
    def getDeviceCount() -> int:
        return 1

    @staticmethod
    def getDeviceProperties(device: int) -> dict:
        _check(device)
        return {"name": b"CuPy stand-in (NumPy on the CPU)", "major": 0, "minor": 0, "totalGlobalMem": 0,
                "multiProcessorCount": 0}

    @staticmethod
    def driverGetVersion() -> int:
        return 0

    @staticmethod
    def runtimeGetVersion() -> int:
        return 0


def _check(device_id: int) -> None:
    if device_id != 0:
        raise CUDARuntimeError("cudaErrorInvalidDevice: invalid device ordinal (the CuPy stand-in has one "
                               "device)")


_current = [0]


class Device:
    def __init__(self, device=None):
        self.id = _current[0] if device is None else int(device)
        self._previous: list = []

    compute_capability = property(lambda self: "00")

    def use(self):
        _check(self.id)
        _current[0] = self.id

    def synchronize(self):
        _check(self.id)

    def __enter__(self):
        _check(self.id)
        self._previous.append(_current[0])
        _current[0] = self.id
        return self

    def __exit__(self, *exc):
        _current[0] = self._previous.pop()
        return False

    def __eq__(self, other):
        return isinstance(other, Device) and other.id == self.id

    def __hash__(self):
        return hash(self.id)

    def __repr__(self):
        return f"<CUDA Device {self.id} (stand-in)>"


class Stream:
    """A stream: ``ptr`` 0 for the null stream. Work runs at once, so ``synchronize`` has
    nothing to wait for."""

    null: Stream

    def __init__(self, null=False, non_blocking=False, ptds=False):
        self.ptr = 0 if null else id(self)
        self._previous: list = []

    def synchronize(self):
        pass

    def use(self):
        _stream[0] = self
        return self

    def __enter__(self):
        self._previous.append(_stream[0])
        _stream[0] = self
        return self

    def __exit__(self, *exc):
        _stream[0] = self._previous.pop()
        return False


Stream.null = Stream(null=True)
_stream = [Stream.null]


def get_current_stream(device_id=None) -> Stream:
    return _stream[0]


def get_device_id() -> int:
    return _current[0]
