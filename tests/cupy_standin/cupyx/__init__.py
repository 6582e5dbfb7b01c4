"""``cupyx`` of the CuPy stand-in: only ``scatter_add`` (see ``cupy/__init__.py``)."""

from cupy import scatter_add

__all__ = ["scatter_add"]
