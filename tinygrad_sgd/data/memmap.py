"""Out-of-core datasets over ``.npy`` files: train on data larger than memory.

``MemmapDataset("X.npy", "y.npy")`` opens the files without loading them; a batch reads
only its own rows. A field may also be a directory of ``.npy`` shards (taken in file-name
order and concatenated along axis 0), so a data set can be written piece by piece, e.g.
with ``numpy.lib.format.open_memmap`` or one ``numpy.save`` per shard.

Why batches are read, not taken from a memory map. Pages of a mapped file that the
process touches count in its resident set (RSS) for as long as the mapping lives, and a
touch maps more than the bytes asked for: on Linux 6.x with large page-cache folios
(ext4, xfs) one random 3 KB row mapped ~1.9 MiB, so a single shuffled batch of 256 rows
through ``np.load(..., mmap_mode="r")`` grew RSS by ~500 MB and a sweep of a 2 GiB file by
the whole 2 GiB (measured; ``benchmarks/memmap_rss.py --control``). Unmapping every so
often does not bound the peak inside one batch. Positional reads (``os.preadv``) copy
exactly the requested rows into the batch array; the data passes through the kernel's page
cache, which the kernel frees under memory pressure and which is not RSS. So RSS grows by
the batch being built and nothing else.

Reads are coalesced: the batch's row indices are sorted per shard and every run of
consecutive rows is one read, so an unshuffled sweep costs one read per batch and a
shuffled one a read per row — which is what random access to a disk costs anyway.
"""

from __future__ import annotations

import glob
import math
import os

import numpy as np

from .dataset import Dataset


class _NpyShard:
    """One ``.npy`` file: its header, and an open descriptor for positional reads."""

    _fd = None  # opened on the first read

    def __init__(self, path: str):
        self.path = path
        try:
            with open(path, "rb") as f:
                version = np.lib.format.read_magic(f)
                if version == (1, 0):
                    shape, fortran_order, dtype = np.lib.format.read_array_header_1_0(f)
                else:
                    shape, fortran_order, dtype = np.lib.format.read_array_header_2_0(f)
                self.offset = f.tell()
        except ValueError as error:  # bad magic string or header
            raise ValueError(f"MemmapDataset: {path} is not a readable .npy file ({error})") from None
        if dtype.hasobject or dtype.kind not in "biuf":
            raise ValueError(f"MemmapDataset: {path} has unsupported dtype {dtype} (numbers only)")
        if len(shape) == 0:
            raise ValueError(f"MemmapDataset: {path} holds a 0-d array; rows need a leading axis")
        if any(not isinstance(n, int) or n < 0 for n in shape):
            raise ValueError(f"MemmapDataset: {path} has a corrupt header: shape {shape} has a negative dimension")
        if fortran_order and len(shape) > 1:
            raise ValueError(f"MemmapDataset: {path} is stored in Fortran order, so its rows are not contiguous; "
                             "save it with numpy.ascontiguousarray(array)")
        self.rows, self.row_shape, self.dtype = int(shape[0]), tuple(shape[1:]), dtype
        self.row_bytes = math.prod(self.row_shape) * dtype.itemsize  # Python ints: a corrupt header cannot overflow
        expected = self.offset + self.rows * self.row_bytes
        actual = os.path.getsize(path)
        if actual != expected:
            what = "truncated" if actual < expected else "longer than its header says"
            raise ValueError(f"MemmapDataset: {path} is {what}: header shape {shape} of {dtype} needs {expected} "
                             f"bytes, the file has {actual}")

    def read_rows(self, rows: np.ndarray, out: np.ndarray) -> None:
        """Fill ``out[k]`` with row ``rows[k]``; ``rows`` sorted, unique, in range."""
        if self._fd is None:
            self._fd = os.open(self.path, os.O_RDONLY | getattr(os, "O_BINARY", 0))
        buffer = out.data.cast("B")  # a byte view of out's memory
        fd, row_bytes = self._fd, self.row_bytes
        # Runs of consecutive rows: each is one read.
        breaks = np.flatnonzero(np.diff(rows) != 1) + 1
        starts = np.concatenate([[0], breaks])
        ends = np.concatenate([breaks, [rows.size]])
        file_offsets = (self.offset + rows[starts] * row_bytes).tolist()
        total = 0
        for start, end, file_offset in zip((starts * row_bytes).tolist(), (ends * row_bytes).tolist(), file_offsets):
            total += os.preadv(fd, [buffer[start:end]], file_offset)
        if total != rows.size * row_bytes:
            raise OSError(f"MemmapDataset: short read from {self.path} ({total} of {rows.size * row_bytes} bytes); "
                          "was the file truncated after it was opened?")

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __del__(self):
        self.close()


class _Field:
    """One field of the dataset: a ``.npy`` file, or shards read as one array."""

    def __init__(self, source):
        source = os.fspath(source)
        if os.path.isdir(source):
            paths = sorted(glob.glob(os.path.join(source, "*.npy")))
            if not paths:
                raise FileNotFoundError(f"MemmapDataset: directory {source} holds no .npy shards")
        elif os.path.isfile(source):
            paths = [source]
        else:
            raise FileNotFoundError(f"MemmapDataset: {source} is neither a .npy file nor a directory of shards")
        self.source = source
        self.shards = [_NpyShard(p) for p in paths]
        first = self.shards[0]
        for shard in self.shards[1:]:
            if shard.row_shape != first.row_shape or shard.dtype != first.dtype:
                raise ValueError(f"MemmapDataset: shard {shard.path} is {shard.dtype}{shard.row_shape} per row, but "
                                 f"{first.path} is {first.dtype}{first.row_shape}; shards of one field must match")
        self.row_shape, self.dtype = first.row_shape, first.dtype
        self.offsets = np.concatenate([[0], np.cumsum([s.rows for s in self.shards])]).astype(np.int64)
        self.length = int(self.offsets[-1])

    def gather(self, indices: np.ndarray) -> np.ndarray:
        if indices.size and (indices.min() < 0 or indices.max() >= self.length):
            bad = indices[(indices < 0) | (indices >= self.length)][0]
            raise IndexError(f"MemmapDataset: index {int(bad)} out of range for {self.length} rows of {self.source}")
        # Read each distinct row once, in file order, then put the rows in batch order
        # (a with-replacement batch may repeat rows).
        unique, inverse = np.unique(indices, return_inverse=True)
        rows = np.empty((unique.size,) + self.row_shape, dtype=self.dtype)
        bounds = np.searchsorted(unique, self.offsets)  # where each shard's rows start in `unique`
        for k, shard in enumerate(self.shards):
            a, b = int(bounds[k]), int(bounds[k + 1])
            if a < b:
                shard.read_rows(unique[a:b] - self.offsets[k], rows[a:b])
        return rows if unique.size == indices.size and np.array_equal(unique, indices) else rows[inverse]

    def close(self) -> None:
        for shard in self.shards:
            shard.close()


class MemmapDataset(Dataset):
    """A dataset whose fields are ``.npy`` files or directories of ``.npy`` shards, read
    on demand so that data larger than memory trains with bounded RSS.

    ``MemmapDataset(x_source, y_source, ...)``: sample ``i`` is ``(x[i], y[i], ...)`` as
    NumPy arrays in the stored dtypes; ``gather`` reads a whole batch (see the module
    docstring for how, and why reads rather than a memory map). Headers are checked when
    the dataset is built: a truncated file, a Fortran-ordered or object array, shards that
    disagree, or fields of different lengths raise an error naming the file.
    """

    def __init__(self, *sources):
        if not sources:
            raise ValueError("MemmapDataset needs at least one .npy file or shard directory")
        self.fields = [_Field(s) for s in sources]
        lengths = [f.length for f in self.fields]
        if len(set(lengths)) > 1:
            described = ", ".join(f"{f.source}: {f.length}" for f in self.fields)
            raise ValueError(f"MemmapDataset: fields have different numbers of rows ({described})")
        self._length = lengths[0]

    def __len__(self) -> int:
        return self._length

    def gather(self, indices: np.ndarray) -> tuple:
        indices = np.asarray(indices, dtype=np.int64)
        return tuple(field.gather(indices) for field in self.fields)

    def __getitem__(self, index):
        if not isinstance(index, (int, np.integer)):
            raise TypeError(f"MemmapDataset indices must be integers, got {type(index).__name__}")
        index = int(index)
        if not -self._length <= index < self._length:
            raise IndexError(f"MemmapDataset: index {index} out of range for {self._length} rows")
        if index < 0:
            index += self._length
        return tuple(rows[0] for rows in self.gather(np.array([index], dtype=np.int64)))

    def close(self) -> None:
        """Close the open file descriptors (reads reopen them)."""
        for field in self.fields:
            field.close()

    def __repr__(self) -> str:
        fields = ", ".join(f"{f.dtype}{f.row_shape} in {len(f.shards)} file(s)" for f in self.fields)
        return f"MemmapDataset({self._length} rows: {fields})"
