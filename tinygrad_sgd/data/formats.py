"""Readers for data sets a user downloads once: MNIST / Fashion-MNIST (IDX) and CIFAR-10.

Nothing here downloads anything: the loaders read the standard files from a local
directory and, when they are missing, raise ``FileNotFoundError`` saying which files to
put where and where they are published.

IDX (the MNIST format, LeCun et al.): a 4-byte big-endian header ``0x00 0x00 <type>
<ndim>``, then ``ndim`` big-endian uint32 sizes, then the values in C order, big-endian.
Type codes: 0x08 uint8, 0x09 int8, 0x0B int16, 0x0C int32, 0x0D float32, 0x0E float64.
Files may be gzip-compressed (as distributed) or raw.

CIFAR-10 binary version (Krizhevsky 2009): ``data_batch_1.bin`` ... ``data_batch_5.bin``
and ``test_batch.bin``, each a sequence of 3073-byte records: one label byte (0-9) and a
32x32 RGB image as 1024 red, 1024 green, 1024 blue bytes (row-major), which reshapes
straight to the NCHW layout of ``Conv2d``.
"""

from __future__ import annotations

import gzip
import math
import os

import numpy as np

_IDX_TYPES: dict[int, np.dtype] = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_GZIP_MAGIC = b"\x1f\x8b"


def _read_bytes(path) -> bytes:
    """The file's content, gunzipped when it starts with the gzip magic bytes."""
    with open(path, "rb") as f:
        raw = f.read()
    if raw[:2] == _GZIP_MAGIC:
        try:
            return gzip.decompress(raw)
        except (OSError, EOFError) as error:  # BadGzipFile is an OSError
            raise ValueError(f"{path}: corrupt or truncated gzip data ({error})") from None
    return raw


def read_idx(path) -> np.ndarray:
    """Read one IDX file (raw or ``.gz``) into a NumPy array in native byte order.

    Raises ``ValueError`` naming the file when the header is malformed, the type code is
    unknown, or the data is shorter or longer than the header promises.
    """
    path = os.fspath(path)
    raw = _read_bytes(path)
    if len(raw) < 4:
        raise ValueError(f"{path}: not an IDX file (only {len(raw)} bytes, the header alone is 4)")
    zero1, zero2, type_code, ndim = raw[0], raw[1], raw[2], raw[3]
    if zero1 != 0 or zero2 != 0:
        raise ValueError(f"{path}: not an IDX file (magic bytes {raw[:4].hex()} should start with 0000)")
    if type_code not in _IDX_TYPES:
        raise ValueError(f"{path}: unknown IDX type code 0x{type_code:02x} "
                         f"(known: {', '.join(f'0x{c:02x}' for c in _IDX_TYPES)})")
    if ndim == 0:
        raise ValueError(f"{path}: IDX header declares 0 dimensions")
    header_end = 4 + 4 * ndim
    if len(raw) < header_end:
        raise ValueError(f"{path}: truncated IDX header ({len(raw)} bytes, {ndim} dimensions need {header_end})")
    shape = tuple(int(s) for s in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    dtype = _IDX_TYPES[type_code]
    expected = math.prod(shape) * dtype.itemsize  # Python ints: 2**32-1 per dimension overflows int64
    actual = len(raw) - header_end
    if actual != expected:
        what = "truncated" if actual < expected else "has trailing bytes"
        raise ValueError(f"{path}: IDX data {what}: header shape {shape} of {dtype.name} needs {expected} bytes, "
                         f"found {actual}")
    array = np.frombuffer(raw, dtype=dtype, offset=header_end).reshape(shape)
    return array.astype(dtype.newbyteorder("="))  # a native-order, writable copy


# ----------------------------------------------------------------------------- MNIST

_MNIST_FILES = {
    True: ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    False: ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_SOURCES = {
    "MNIST": "the MNIST database (LeCun, Cortes & Burges), e.g. the mirror that torchvision uses, "
             "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "Fashion-MNIST": "https://github.com/zalandoresearch/fashion-mnist (data/fashion/ in that repository)",
}


def _find(root: str, names: list[str], what: str, hint: str) -> str:
    for name in names:
        candidate = os.path.join(root, name)
        if os.path.isfile(candidate):
            return candidate
    raise FileNotFoundError(f"{what}: none of {names} found in {os.path.abspath(root)}. {hint}")


def _idx_candidates(stem: str) -> list[str]:
    # Distributed names end in .gz; some mirrors write "images.idx3" with a dot.
    dotted = stem.replace("-idx", ".idx")
    return [stem, stem + ".gz", dotted, dotted + ".gz"]


def _scale_images(images: np.ndarray, normalize) -> np.ndarray:
    if normalize is None:
        return images
    if normalize == "scale":
        return images.astype(np.float32) / np.float32(255.0)
    raise ValueError(f"normalize must be None or 'scale', got {normalize!r} (fit tg.data.Normalize on the "
                     "training set for standardisation)")


def load_mnist(root, train: bool = True, normalize="scale", kind: str = "MNIST"):
    """Load MNIST (or Fashion-MNIST with ``kind="Fashion-MNIST"``) from ``root``.

    ``root`` holds the four IDX files under their distributed names, gzipped or not:
    ``train-images-idx3-ubyte.gz``, ``train-labels-idx1-ubyte.gz``,
    ``t10k-images-idx3-ubyte.gz``, ``t10k-labels-idx1-ubyte.gz``. Returns ``(images,
    labels)``: images ``(N, 28, 28)`` — float32 in [0, 1] with ``normalize="scale"``, the
    stored uint8 with ``normalize=None`` — and int64 labels in 0..9.
    """
    if kind not in _SOURCES:
        raise ValueError(f"kind must be one of {sorted(_SOURCES)}, got {kind!r}")
    root = os.fspath(root)
    hint = (f"Download the {kind} IDX files from {_SOURCES[kind]} and put them (gzipped or not) in that "
            "directory.")
    image_stem, label_stem = _MNIST_FILES[bool(train)]
    image_path = _find(root, _idx_candidates(image_stem), f"load_mnist({kind})", hint)
    label_path = _find(root, _idx_candidates(label_stem), f"load_mnist({kind})", hint)
    images, labels = read_idx(image_path), read_idx(label_path)
    if images.ndim != 3 or images.dtype != np.uint8:
        raise ValueError(f"{image_path}: expected a 3-D uint8 image array, got {images.dtype} shape {images.shape}")
    if labels.ndim != 1 or labels.dtype != np.uint8:
        raise ValueError(f"{label_path}: expected a 1-D uint8 label array, got {labels.dtype} shape {labels.shape}")
    if labels.shape[0] != images.shape[0]:
        raise ValueError(f"{label_path} has {labels.shape[0]} labels but {image_path} has {images.shape[0]} images")
    if labels.size and labels.max() > 9:
        raise ValueError(f"{label_path}: label {int(labels.max())} is outside 0..9")
    return _scale_images(images, normalize), labels.astype(np.int64)


def load_fashion_mnist(root, train: bool = True, normalize="scale"):
    """Fashion-MNIST (Xiao, Rasul & Vollgraf 2017): MNIST's format and file names."""
    return load_mnist(root, train=train, normalize=normalize, kind="Fashion-MNIST")


# ----------------------------------------------------------------------------- CIFAR-10

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
_CIFAR_RECORD = 1 + 3 * 32 * 32


def read_cifar10_batch(path) -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR-10 binary batch file -> ``(images uint8 (N, 3, 32, 32), labels int64)``."""
    path = os.fspath(path)
    raw = np.fromfile(path, dtype=np.uint8)
    if raw.size == 0 or raw.size % _CIFAR_RECORD != 0:
        raise ValueError(f"{path}: corrupt or truncated CIFAR-10 batch: {raw.size} bytes is not a positive "
                         f"multiple of the {_CIFAR_RECORD}-byte record")
    records = raw.reshape(-1, _CIFAR_RECORD)
    labels = records[:, 0].astype(np.int64)
    if labels.max() > 9:
        bad = int(np.argmax(labels > 9))
        raise ValueError(f"{path}: record {bad} has label {int(labels[bad])}, outside 0..9 (corrupt file?)")
    return records[:, 1:].reshape(-1, 3, 32, 32), labels


def load_cifar10(root, train: bool = True, normalize="scale"):
    """Load CIFAR-10's binary version from ``root`` (or ``root/cifar-10-batches-bin``).

    Training set: ``data_batch_1.bin`` ... ``data_batch_5.bin`` concatenated; test set:
    ``test_batch.bin``. Returns ``(images, labels)``: images ``(N, 3, 32, 32)`` (NCHW,
    RGB) — float32 in [0, 1] with ``normalize="scale"``, uint8 with ``None`` — and int64
    labels; :data:`CIFAR10_CLASSES` names them.
    """
    root = os.fspath(root)
    names = [f"data_batch_{k}.bin" for k in range(1, 6)] if train else ["test_batch.bin"]
    folder = root
    nested = os.path.join(root, "cifar-10-batches-bin")
    if not os.path.isfile(os.path.join(root, names[0])) and os.path.isdir(nested):
        folder = nested
    missing = [n for n in names if not os.path.isfile(os.path.join(folder, n))]
    if missing:
        raise FileNotFoundError(
            f"load_cifar10: missing {missing} in {os.path.abspath(folder)}. Download the CIFAR-10 binary version "
            "(cifar-10-binary.tar.gz) from https://www.cs.toronto.edu/~kriz/cifar.html and extract it there "
            "(the files may stay in its cifar-10-batches-bin/ folder).")
    parts = [read_cifar10_batch(os.path.join(folder, n)) for n in names]
    images = np.concatenate([p[0] for p in parts]) if len(parts) > 1 else parts[0][0]
    labels = np.concatenate([p[1] for p in parts]) if len(parts) > 1 else parts[0][1]
    return _scale_images(images, normalize), labels
