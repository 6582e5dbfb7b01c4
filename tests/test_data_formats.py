"""MNIST/Fashion-MNIST IDX and CIFAR-10 binary readers, on small files written here."""

import gzip
import struct

import numpy as np
import pytest

from tinygrad_sgd.data import CIFAR10_CLASSES, load_cifar10, load_fashion_mnist, load_mnist, read_idx

_TYPE_CODES = {np.uint8: 0x08, np.int8: 0x09, np.int16: 0x0B, np.int32: 0x0C, np.float32: 0x0D, np.float64: 0x0E}


def idx_bytes(array: np.ndarray) -> bytes:
    """The IDX encoding, written out by hand from the format description (independent of
    the reader under test): 0, 0, type code, ndim, big-endian uint32 sizes, big-endian data."""
    header = struct.pack(">BBBB", 0, 0, _TYPE_CODES[array.dtype.type], array.ndim)
    header += struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


def write_mnist(folder, n_train=7, n_test=3, gz=True, seed=0):
    gen = np.random.default_rng(seed)
    data = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = gen.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labels = gen.integers(0, 10, size=n, dtype=np.uint8)
        for name, array in ((f"{prefix}-images-idx3-ubyte", images), (f"{prefix}-labels-idx1-ubyte", labels)):
            payload = idx_bytes(array)
            if gz:
                (folder / (name + ".gz")).write_bytes(gzip.compress(payload))
            else:
                (folder / name).write_bytes(payload)
        data[prefix] = (images, labels)
    return data


# ----------------------------------------------------------------------------- IDX


@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.int16, np.int32, np.float32, np.float64])
@pytest.mark.parametrize("gz", [False, True])
def test_read_idx_round_trips_every_type(tmp_path, dtype, gz):
    array = (np.arange(2 * 3 * 4) - 5).reshape(2, 3, 4).astype(dtype)
    payload = idx_bytes(array)
    path = tmp_path / ("a.idx.gz" if gz else "a.idx")
    path.write_bytes(gzip.compress(payload) if gz else payload)
    out = read_idx(path)
    assert out.dtype == np.dtype(dtype) and out.dtype.isnative and out.flags.writeable
    np.testing.assert_array_equal(out, array)


@pytest.mark.parametrize("gz", [True, False])
def test_load_mnist(tmp_path, gz):
    data = write_mnist(tmp_path, gz=gz)
    images, labels = load_mnist(tmp_path)
    assert images.shape == (7, 28, 28) and images.dtype == np.float32 and labels.dtype == np.int64
    np.testing.assert_allclose(images, data["train"][0] / 255.0, rtol=1e-6)
    np.testing.assert_array_equal(labels, data["train"][1])
    raw, test_labels = load_mnist(tmp_path, train=False, normalize=None)
    assert raw.dtype == np.uint8
    np.testing.assert_array_equal(raw, data["t10k"][0])
    np.testing.assert_array_equal(test_labels, data["t10k"][1])
    fashion, _ = load_fashion_mnist(tmp_path, normalize=None)
    np.testing.assert_array_equal(fashion, data["train"][0])


def test_load_mnist_accepts_dotted_mirror_names(tmp_path):
    images = np.zeros((2, 28, 28), np.uint8)
    (tmp_path / "train-images.idx3-ubyte").write_bytes(idx_bytes(images))
    (tmp_path / "train-labels.idx1-ubyte").write_bytes(idx_bytes(np.array([3, 4], np.uint8)))
    assert load_mnist(tmp_path)[1].tolist() == [3, 4]


def test_missing_mnist_files_say_where_to_put_them(tmp_path):
    with pytest.raises(FileNotFoundError) as info:
        load_mnist(tmp_path)
    message = str(info.value)
    assert str(tmp_path) in message and "train-images-idx3-ubyte.gz" in message and "Download" in message
    with pytest.raises(FileNotFoundError, match="fashion-mnist"):
        load_fashion_mnist(tmp_path)
    with pytest.raises(ValueError, match="kind"):
        load_mnist(tmp_path, kind="KMNIST")


def test_corrupt_idx_files_name_the_file(tmp_path):
    good = idx_bytes(np.zeros((3, 4, 4), np.uint8))
    cases = {
        "truncated.idx": good[:-5],
        "trailing.idx": good + b"\x00",
        "short.idx": b"\x00\x00",
        "magic.idx": b"\x01\x02" + good[2:],
        "type.idx": good[:2] + b"\x07" + good[3:],
        "header.idx": good[:9],
        "zero-dims.idx": b"\x00\x00\x08\x00",
    }
    expected = {"truncated.idx": "truncated", "trailing.idx": "trailing bytes", "short.idx": "not an IDX file",
                "magic.idx": "magic", "type.idx": "unknown IDX type code 0x07", "header.idx": "truncated IDX header",
                "zero-dims.idx": "0 dimensions"}
    for name, payload in cases.items():
        path = tmp_path / name
        path.write_bytes(payload)
        with pytest.raises(ValueError, match=expected[name]) as info:
            read_idx(path)
        assert str(path) in str(info.value)
    bad_gz = tmp_path / "cut.idx.gz"
    bad_gz.write_bytes(gzip.compress(good)[:-10])
    with pytest.raises(ValueError, match="gzip") as info:
        read_idx(bad_gz)
    assert str(bad_gz) in str(info.value)


def test_mnist_consistency_checks(tmp_path):
    (tmp_path / "train-images-idx3-ubyte").write_bytes(idx_bytes(np.zeros((3, 28, 28), np.uint8)))
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(idx_bytes(np.zeros(2, np.uint8)))
    with pytest.raises(ValueError, match="has 2 labels but .* has 3 images"):
        load_mnist(tmp_path)
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(idx_bytes(np.array([1, 2, 12], np.uint8)))
    with pytest.raises(ValueError, match="label 12 is outside 0..9"):
        load_mnist(tmp_path)
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(idx_bytes(np.zeros((3, 1), np.uint8)))
    with pytest.raises(ValueError, match="1-D uint8 label"):
        load_mnist(tmp_path)


# ----------------------------------------------------------------------------- CIFAR-10


def cifar_records(n, seed):
    """CIFAR-10 binary records by hand: label byte, then R, G, B planes of 32x32 bytes."""
    gen = np.random.default_rng(seed)
    labels = gen.integers(0, 10, size=n, dtype=np.uint8)
    images = gen.integers(0, 256, size=(n, 3, 32, 32), dtype=np.uint8)
    payload = b"".join(bytes([labels[i]]) + images[i, 0].tobytes() + images[i, 1].tobytes() + images[i, 2].tobytes()
                       for i in range(n))
    return images, labels, payload


@pytest.mark.parametrize("nested", [False, True])
def test_load_cifar10(tmp_path, nested):
    folder = tmp_path / "cifar-10-batches-bin" if nested else tmp_path
    folder.mkdir(exist_ok=True)
    train_images, train_labels = [], []
    for k in range(1, 6):
        images, labels, payload = cifar_records(k, seed=k)  # batches of 1..5 records
        (folder / f"data_batch_{k}.bin").write_bytes(payload)
        train_images.append(images)
        train_labels.append(labels)
    test_images, test_labels, payload = cifar_records(4, seed=9)
    (folder / "test_batch.bin").write_bytes(payload)
    X, y = load_cifar10(tmp_path)
    assert X.shape == (15, 3, 32, 32) and X.dtype == np.float32 and y.dtype == np.int64
    np.testing.assert_allclose(X, np.concatenate(train_images) / 255.0, rtol=1e-6)
    np.testing.assert_array_equal(y, np.concatenate(train_labels))
    Xt, yt = load_cifar10(tmp_path, train=False, normalize=None)
    np.testing.assert_array_equal(Xt, test_images)
    np.testing.assert_array_equal(yt, test_labels)
    assert len(CIFAR10_CLASSES) == 10


def test_cifar10_missing_and_corrupt_files(tmp_path):
    with pytest.raises(FileNotFoundError) as info:
        load_cifar10(tmp_path, train=False)
    assert "test_batch.bin" in str(info.value) and "cifar-10-binary.tar.gz" in str(info.value)
    _, _, payload = cifar_records(2, seed=0)
    path = tmp_path / "test_batch.bin"
    path.write_bytes(payload[:-1])
    with pytest.raises(ValueError, match="truncated") as info:
        load_cifar10(tmp_path, train=False)
    assert str(path) in str(info.value)
    path.write_bytes(payload[:3073] + bytes([10]) + payload[3074:])
    with pytest.raises(ValueError, match="record 1 has label 10"):
        load_cifar10(tmp_path, train=False)
    path.write_bytes(b"")
    with pytest.raises(ValueError, match="0 bytes"):
        load_cifar10(tmp_path, train=False)
    with pytest.raises(FileNotFoundError, match="data_batch_1.bin"):
        load_cifar10(tmp_path, train=True)
