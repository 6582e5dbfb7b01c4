"""MemmapDataset: same batches as in memory, shards, bounded RSS, clear errors."""

import os

import numpy as np
import pytest

from tinygrad_sgd.data import DataLoader, MemmapDataset, TensorDataset


def write_npy_rows(path, n_rows, row_width, dtype=np.float32, chunk=8192):
    """Write an (n_rows, row_width) .npy whose row i is all i, without ever holding it in
    memory (header, then chunks appended with plain file writes)."""
    with open(path, "wb") as f:
        np.lib.format.write_array_header_1_0(
            f, {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False,
                "shape": (n_rows, row_width)})
        for start in range(0, n_rows, chunk):
            rows = np.arange(start, min(start + chunk, n_rows), dtype=dtype)
            np.ascontiguousarray(np.broadcast_to(rows[:, None], (rows.size, row_width))).tofile(f)


def rss_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS line")


def small_arrays(n=50):
    gen = np.random.default_rng(0)
    return gen.standard_normal((n, 3, 2)).astype(np.float32), gen.integers(0, 10, n).astype(np.int64)


def test_memmap_batches_equal_in_memory_batches(tmp_path):
    X, y = small_arrays()
    np.save(tmp_path / "X.npy", X)
    np.save(tmp_path / "y.npy", y)
    mm = MemmapDataset(tmp_path / "X.npy", str(tmp_path / "y.npy"))
    assert len(mm) == 50
    memory = DataLoader(TensorDataset(X, y), batch_size=8, shuffle=True, seed=1)
    mapped = DataLoader(mm, batch_size=8, shuffle=True, seed=1)
    for _ in range(2):
        for (xa, ya), (xb, yb) in zip(memory, mapped, strict=True):
            assert xb.dtype == np.float32 and yb.dtype == np.int64
            np.testing.assert_array_equal(xa.numpy(), xb.numpy())
            np.testing.assert_array_equal(ya.numpy(), yb.numpy())
    x7, y7 = mm[7]
    np.testing.assert_array_equal(x7, X[7])
    assert y7 == y[7] and mm[-1][1] == y[-1]


def test_shard_directories_concatenate_in_name_order(tmp_path):
    X, y = small_arrays(50)
    (tmp_path / "X").mkdir()
    (tmp_path / "y").mkdir()
    bounds_x = [0, 7, 30, 31, 50]  # uneven shards, one of a single row
    for k, (a, b) in enumerate(zip(bounds_x[:-1], bounds_x[1:])):
        np.save(tmp_path / "X" / f"part-{k:03d}.npy", X[a:b])
    for k, (a, b) in enumerate([(0, 25), (25, 50)]):  # y sharded differently from X
        np.save(tmp_path / "y" / f"part-{k:03d}.npy", y[a:b])
    (tmp_path / "X" / "README.txt").write_text("not a shard")
    mm = MemmapDataset(tmp_path / "X", tmp_path / "y")
    gen = np.random.default_rng(2)
    for idx in (gen.permutation(50), gen.integers(0, 50, 40), np.arange(5, 45), np.array([49, 0, 30, 30, 6])):
        xb, yb = mm.gather(idx)  # shuffled, with repeats, sequential across shard edges
        np.testing.assert_array_equal(xb, X[idx])
        np.testing.assert_array_equal(yb, y[idx])
    batches = list(DataLoader(mm, batch_size=9, shuffle=True, seed=0))
    assert sorted(np.concatenate([b[1].numpy() for b in batches]).tolist()) == sorted(y.tolist())


def test_memmap_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.npy"):
        MemmapDataset(tmp_path / "nope.npy")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no .npy shards"):
        MemmapDataset(tmp_path / "empty")
    np.save(tmp_path / "a.npy", np.zeros((5, 2), np.float32))
    np.save(tmp_path / "b.npy", np.zeros(4, np.int64))
    with pytest.raises(ValueError, match="different numbers of rows") as info:
        MemmapDataset(tmp_path / "a.npy", tmp_path / "b.npy")
    assert "a.npy: 5" in str(info.value) and "b.npy: 4" in str(info.value)
    (tmp_path / "mixed").mkdir()
    np.save(tmp_path / "mixed" / "0.npy", np.zeros((2, 3), np.float32))
    np.save(tmp_path / "mixed" / "1.npy", np.zeros((2, 4), np.float32))
    with pytest.raises(ValueError, match="1.npy.*must match"):
        MemmapDataset(tmp_path / "mixed")
    (tmp_path / "text.npy").write_bytes(b"this is not numpy")
    with pytest.raises(ValueError, match="text.npy"):
        MemmapDataset(tmp_path / "text.npy")
    np.save(tmp_path / "objects.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match="objects.npy"):
        MemmapDataset(tmp_path / "objects.npy")
    np.save(tmp_path / "scalar.npy", np.float32(1.0))
    with pytest.raises(ValueError, match="0-d"):
        MemmapDataset(tmp_path / "scalar.npy")
    with pytest.raises(ValueError, match="at least one"):
        MemmapDataset()
    with pytest.raises(IndexError, match="index 5 out of range"):
        MemmapDataset(tmp_path / "a.npy").gather(np.array([0, 5]))
    opened = MemmapDataset(tmp_path / "a.npy")
    opened.gather(np.array([0]))
    with open(tmp_path / "a.npy", "r+b") as f:  # truncated after it was checked and opened
        f.truncate(140)  # the 128-byte header and 1.5 of the 5 rows
    with pytest.raises(OSError, match="short read from .*a.npy"):
        opened.gather(np.array([4]))
    opened.close()
    np.save(tmp_path / "a.npy", np.zeros((5, 2), np.float32))
    whole = (tmp_path / "a.npy").read_bytes()
    (tmp_path / "cut.npy").write_bytes(whole[:-3])
    with pytest.raises(ValueError, match="cut.npy is truncated"):
        MemmapDataset(tmp_path / "cut.npy")
    (tmp_path / "long.npy").write_bytes(whole + b"\0")
    with pytest.raises(ValueError, match="long.npy is longer than its header says"):
        MemmapDataset(tmp_path / "long.npy")
    np.save(tmp_path / "fortran.npy", np.asfortranarray(np.zeros((3, 2))))
    with pytest.raises(ValueError, match="fortran.npy is stored in Fortran order"):
        MemmapDataset(tmp_path / "fortran.npy")


def peak_rss_growth(sweep) -> int:
    """How far the process's peak RSS (VmHWM) rose above its current RSS during sweep().

    Writing 5 to /proc/self/clear_refs resets the peak, so a transient inside one batch
    counts, not just the RSS sampled between batches."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    base = rss_bytes()
    sweep()
    with open("/proc/self/status") as f:
        hwm = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))
    return hwm - base


@pytest.mark.skipif(not os.access("/proc/self/clear_refs", os.W_OK), reason="needs Linux /proc for peak RSS")
def test_sweeping_a_300mb_file_keeps_rss_bounded(tmp_path):
    n_rows, width = 76_800, 1024  # 76,800 rows x 4 KiB = 300 MiB
    path = tmp_path / "big.npy"
    write_npy_rows(path, n_rows, width)
    assert path.stat().st_size > 300 * 2**20
    order = np.random.default_rng(0).permutation(n_rows)

    def sweep_dataset():
        seen = 0
        for (xb,) in DataLoader(MemmapDataset(path), batch_size=512, shuffle=True, seed=0):
            # Every row holds its own index in every column: the right rows came back.
            assert np.array_equal(xb.data[:, 0], xb.data[:, -1])
            seen += len(xb)
        assert seen == n_rows

    def sweep_plain_memmap():  # the control: fancy-indexing numpy's memory map
        mapped = np.load(path, mmap_mode="r")
        for start in range(0, n_rows, 512):
            np.take(mapped, order[start:start + 512], axis=0)

    bounded = peak_rss_growth(sweep_dataset)
    control = peak_rss_growth(sweep_plain_memmap)
    # The control proves the measurement sees mapped pages: a shuffled sweep through a
    # memory map leaves (nearly) the whole file resident.
    assert control > 250 * 2**20, f"control sweep grew peak RSS by only {control / 2**20:.0f} MiB"
    # The batch is 2 MiB; allow for the permutation, allocator slack and page tables.
    print(f"peak RSS growth: dataset {bounded / 2**20:.1f} MiB, plain memmap {control / 2**20:.1f} MiB")
    assert bounded < 50 * 2**20, f"peak RSS grew by {bounded / 2**20:.0f} MiB sweeping a 300 MiB file"
