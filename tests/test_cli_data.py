"""``tinygrad-sgd train --data`` on the user's own files and ``tinygrad-sgd predict``: every
format round-trips, a generated CSV trains to a known accuracy, normalisation comes from
the training split alone and travels in the checkpoint, and malformed files get one line
and exit status 2."""

import csv
import gzip
import os

import numpy as np
import pytest

import tinygrad_sgd as tg
from tinygrad_sgd import cli, rundata
from tinygrad_sgd.data import files

PREFIX = "tinygrad-sgd: error: "


def run(argv, capsys):
    status = cli.main([str(a) for a in argv])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(PREFIX), err
    return lines[0]


def write_csv(path, header, rows):
    with open(path, "w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def blobs(n=300, seed=0):
    """Three well-separated Gaussian classes in 4-D, features on very different scales."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    centres = np.array([[0, 0, 0, 0], [4, 4, 0, 0], [0, 4, 4, 0]], dtype=np.float64)
    x = (centres[y] + rng.standard_normal((n, 4))) * np.array([1.0, 10.0, 100.0, 0.01]) + np.array([0, 50, -300, 2])
    return x, y


def write_idx(path, array, gz=False):
    codes = {np.dtype(np.uint8): 0x08, np.dtype(np.int32): 0x0C, np.dtype(np.float32): 0x0D}
    header = bytes([0, 0, codes[array.dtype], array.ndim]) + b"".join(
        int(s).to_bytes(4, "big") for s in array.shape)
    body = array.astype(array.dtype.newbyteorder(">")).tobytes()
    opener = gzip.open if gz else open
    with opener(path, "wb") as file:
        file.write(header + body)


def write_cifar_batch(path, images, labels):
    records = np.concatenate([labels.astype(np.uint8)[:, None], images.reshape(len(images), -1)], axis=1)
    records.astype(np.uint8).tofile(path)


# ----------------------------------------------------------------------------- training on a CSV


def test_a_generated_csv_trains_to_a_known_accuracy_and_predict_writes_its_labels(tmp_path, capsys):
    x, y = blobs()
    names = np.array(["setosa", "versicolor", "virginica"])
    data = write_csv(tmp_path / "course.csv", ["f1", "f2", "species", "f3", "f4"],
                     [[a, b, names[c], d, e] for (a, b, d, e), c in zip(x.tolist(), y)])
    run_dir = tmp_path / "run"
    status, out, err = run(["train", "--data", data, "--target", "species", "--epochs", "15", "--run-dir",
                            run_dir], capsys)
    assert status == 0, err
    assert "classification (216 train / 24 val / 60 test)" in out.splitlines()[0]
    test_accuracy = float(out.split("test accuracy ")[1].split()[0])
    assert test_accuracy >= 0.95  # the classes overlap little: about 99.5% is attainable
    history = list(csv.DictReader(open(run_dir / "history.csv")))
    assert float(history[-1]["val_accuracy"]) >= 0.85  # 24 samples: one or two may sit in another cluster
    saved = tg.train.load_checkpoint(run_dir / "checkpoint.npz")
    spec = saved["extra"]["run"]
    assert spec["task"] == "classification" and spec["classes"] == names.tolist()
    assert spec["feature_names"] == ["f1", "f2", "f3", "f4"] and spec["target"] == "species"

    # predict on the features alone, columns in another order: labels by name, probabilities per class
    shuffled = write_csv(tmp_path / "new.csv", ["f4", "f3", "f2", "f1"], [row[::-1] for row in x.tolist()])
    status, out, err = run(["predict", "--checkpoint", run_dir / "checkpoint.npz", "--data", shuffled, "--out",
                            tmp_path / "predictions.csv"], capsys)
    assert status == 0, err
    rows = list(csv.DictReader(open(tmp_path / "predictions.csv")))
    assert list(rows[0]) == ["prediction", "p_setosa", "p_versicolor", "p_virginica"]
    predicted = np.array([r["prediction"] for r in rows])
    assert np.mean(predicted == names[y]) >= 0.97
    probabilities = np.array([[float(r[f"p_{c}"]) for c in names] for r in rows])
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)
    assert np.all(names[probabilities.argmax(axis=1)] == predicted)

    # to standard output without --out; with the target column present its accuracy is reported
    status, out, _ = run(["predict", "--checkpoint", run_dir / "checkpoint.npz", "--data", data], capsys)
    assert status == 0 and out.splitlines()[0] == "prediction,p_setosa,p_versicolor,p_virginica"
    assert len(out.splitlines()) == len(y) + 1
    status, out, _ = run(["predict", "--checkpoint", run_dir / "checkpoint.npz", "--data", data, "--out",
                          tmp_path / "again.csv"], capsys)
    assert status == 0 and "accuracy on the file's labels" in out


def test_float_targets_are_regression_with_r2_and_predictions_in_the_targets_units(tmp_path, capsys):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((400, 3))
    target = 5000.0 + x @ np.array([300.0, -200.0, 50.0])  # large offset and scale: standardised inside
    data = write_csv(tmp_path / "houses.csv", ["a", "b", "c", "price"], np.column_stack([x, target]).tolist())
    run_dir = tmp_path / "run"
    status, out, err = run(["train", "--data", data, "--epochs", "20", "--lr", "0.01", "--run-dir", run_dir],
                           capsys)
    assert status == 0, err
    assert "regression" in out and "R^2" in out
    history = list(csv.DictReader(open(run_dir / "history.csv")))
    assert "val_r2" in history[-1] and "val_accuracy" not in history[-1]
    assert float(history[-1]["val_r2"]) > 0.98
    status, out, err = run(["predict", "--checkpoint", run_dir / "checkpoint.npz", "--data", data, "--out",
                            tmp_path / "p.csv"], capsys)
    assert status == 0, err
    predicted = np.array([float(r["prediction"]) for r in csv.DictReader(open(tmp_path / "p.csv"))])
    assert 1 - np.mean((predicted - target) ** 2) / np.var(target) > 0.98  # R^2 in the target's own units


def test_task_overrides_the_guess(tmp_path, capsys):
    x, y = blobs(120)
    data = write_csv(tmp_path / "d.csv", ["a", "b", "c", "d", "y"], np.column_stack([x, y]).tolist())
    # "0.0", "1.0" are floats: regression by default, classification when asked
    status, out, err = run(["train", "--data", data, "--epochs", "1", "--run-dir", tmp_path / "r1"], capsys)
    assert status == 0 and "regression" in out, err
    status, out, err = run(["train", "--data", data, "--epochs", "1", "--task", "classification", "--run-dir",
                            tmp_path / "r2"], capsys)
    assert status == 0 and "classification" in out, err
    halves = write_csv(tmp_path / "h.csv", ["a", "y"], [[1, 0.5], [2, 1.0], [3, 0.0], [4, 1.5]])
    status, _, err = run(["train", "--data", halves, "--task", "classification", "--run-dir", tmp_path / "r3"],
                         capsys)
    assert status == 2 and "0.5" in one_error_line(err) and not (tmp_path / "r3").exists()


def test_the_test_split_is_never_the_validation_split(tmp_path, capsys):
    x, y = blobs(200)
    data = write_csv(tmp_path / "d.csv", ["a", "b", "c", "d", "y"], [[*r, int(c)] for r, c in zip(x.tolist(), y)])
    status, out, err = run(["train", "--data", data, "--epochs", "2", "--val-fraction", "0", "--run-dir",
                            tmp_path / "r"], capsys)
    assert status == 0, err
    history = list(csv.DictReader(open(tmp_path / "r" / "history.csv")))
    assert not any(key.startswith("val_") for key in history[0])  # no validation split: no val columns
    assert "40 test" in out and "val" not in out.splitlines()[0]
    status, out, err = run(["train", "--data", data, "--epochs", "2", "--val-fraction", "0.25", "--run-dir",
                            tmp_path / "s"], capsys)
    assert status == 0 and "120 train / 40 val / 40 test" in out, err
    status, _, err = run(["train", "--data", data, "--val-fraction", "0", "--early-stopping", "2", "--run-dir",
                          tmp_path / "t"], capsys)
    assert status == 2 and "--early-stopping" in one_error_line(err)


def test_early_stopping_and_the_plateau_schedule_use_the_validation_split(tmp_path, capsys):
    x, _ = blobs(200)
    noise = np.random.default_rng(7).integers(0, 3, 200)  # labels with no signal: validation loss soon rises
    data = write_csv(tmp_path / "d.csv", ["a", "b", "c", "d", "y"], [[*r, int(c)] for r, c in zip(x.tolist(), noise)])
    status, out, err = run(["train", "--data", data, "--epochs", "60", "--early-stopping", "2", "--schedule",
                            "none", "--run-dir", tmp_path / "r", "--quiet"], capsys)
    assert status == 0, err
    history = list(csv.DictReader(open(tmp_path / "r" / "history.csv")))
    assert len(history) < 60  # stopped on the validation loss
    losses = [float(r["val_loss"]) for r in history]
    assert min(losses[-2:]) > min(losses)  # the last two epochs did not improve on the best
    # the checkpoint holds the best epoch's weights: its validation loss is the smallest recorded
    args = cli.build_parser().parse_args(["train", "--data", str(data)])
    split = rundata.load_run_data(args)
    model = cli.make_model(args, tg, split.spec["input_shape"], 3)
    model.load_state_dict(tg.train.load_checkpoint(tmp_path / "r" / "checkpoint.npz")["model"])
    model.eval()
    with tg.no_grad():
        best = tg.nn.CrossEntropyLoss()(model(tg.Tensor(split.x_val)), tg.Tensor(split.y_val)).item()
    assert best == pytest.approx(min(losses), rel=1e-5)
    status, out, err = run(["train", "--data", data, "--epochs", "12", "--schedule", "plateau", "--run-dir",
                            tmp_path / "p", "--quiet"], capsys)
    assert status == 0, err
    rates = [float(r["lr"]) for r in csv.DictReader(open(tmp_path / "p" / "history.csv"))]
    assert rates[0] == 0.05 and rates[-1] < 0.05  # cut when the validation loss stopped improving


def test_normalisation_is_fitted_on_the_training_split_only_and_saved(tmp_path, capsys):
    rng = np.random.default_rng(2)
    x_train = rng.standard_normal((200, 3)).astype(np.float32) * 5 + 10
    y_train = (x_train[:, 0] > 10).astype(np.int64)
    x_test = x_train[:50] + 1000  # a shifted test part: must not move the statistics
    np.savez(tmp_path / "d.npz", x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_train[:50])
    args = cli.build_parser().parse_args(["train", "--data", str(tmp_path / "d.npz")])
    data = rundata.load_run_data(args)
    mean, std = data.spec["mean"], data.spec["std"]
    assert np.all(np.abs(mean - 10) < 1.5) and np.all(np.abs(std - 5) < 1.5)
    np.testing.assert_allclose(data.x_train.mean(axis=0), 0, atol=1e-5)   # exactly standardised: train
    np.testing.assert_allclose(data.x_train.std(axis=0), 1, atol=1e-4)
    assert np.all(data.x_test.mean(axis=0) > 100)                         # the test part only transformed
    assert len(data.x_train) + len(data.x_val) == 200 and len(data.x_test) == 50
    status, _, err = run(["train", "--data", tmp_path / "d.npz", "--epochs", "1", "--run-dir", tmp_path / "r"],
                         capsys)
    assert status == 0, err
    spec = tg.train.load_checkpoint(tmp_path / "r" / "checkpoint.npz")["extra"]["run"]
    np.testing.assert_array_equal(spec["mean"], mean)
    np.testing.assert_array_equal(spec["std"], std)


def test_the_digits_main_job_keeps_its_scaling_and_a_checkpoint_predict_can_use(tmp_path, capsys):
    args = cli.build_parser().parse_args(["train"])
    data = rundata.load_run_data(args)
    (x_train, _), (x_test, _) = tg.data.load_digits(split=0.2, seed=0)
    np.testing.assert_array_equal(data.x_test, x_test)  # load_digits' "scale": pixels / 16
    assert len(data.x_train) + len(data.x_val) == len(x_train)


# ----------------------------------------------------------------------------- every format round-trips


def test_csv_round_trips(tmp_path):
    x, y = blobs(50)
    path = write_csv(tmp_path / "d.csv", ["a", "b", "c", "d", "y"], [[*r, int(c)] for r, c in zip(x.tolist(), y)])
    got = files.read_data(path)
    assert got.kind == "CSV" and got.feature_names == ["a", "b", "c", "d"] and got.target_name == "y"
    np.testing.assert_array_equal(got.x, x.astype(np.float32))
    np.testing.assert_array_equal(got.y, y)
    assert got.y.dtype == np.int64
    first = files.read_data(path, target="a")  # another target column; the rest are features
    np.testing.assert_array_equal(first.y, x[:, 0].astype(np.float32))
    assert first.feature_names == ["b", "c", "d", "y"]


@pytest.mark.parametrize("keys", [("X", "y"), ("x_train", "y_train"), ("x_train", "y_train", "x_test", "y_test")])
def test_npz_round_trips(tmp_path, keys):
    rng = np.random.default_rng(3)
    arrays = {k: (rng.standard_normal((20, 2, 3)).astype(np.float32) if k.lower().startswith("x")
                  else rng.integers(0, 4, 20)) for k in keys}
    np.savez(tmp_path / "d.npz", **arrays)
    got = files.read_data(tmp_path / "d.npz")
    assert got.kind == "npz"
    np.testing.assert_array_equal(got.x, arrays[keys[0]])
    np.testing.assert_array_equal(got.y, arrays[keys[1]])
    if len(keys) == 4:
        np.testing.assert_array_equal(got.x_test, arrays["x_test"])
        np.testing.assert_array_equal(got.y_test, arrays["y_test"])
    else:
        assert got.x_test is None


def mnist_like(tmp_path, n_train=60, n_test=20, gz=True):
    rng = np.random.default_rng(4)
    y = rng.integers(0, 3, n_train + n_test).astype(np.uint8)
    images = (rng.integers(0, 60, (n_train + n_test, 8, 8)) + 60 * y[:, None, None]).astype(np.uint8)
    suffix = ".gz" if gz else ""
    write_idx(tmp_path / f"train-images-idx3-ubyte{suffix}", images[:n_train], gz)
    write_idx(tmp_path / f"train-labels-idx1-ubyte{suffix}", y[:n_train], gz)
    write_idx(tmp_path / f"t10k-images-idx3-ubyte{suffix}", images[n_train:], gz)
    write_idx(tmp_path / f"t10k-labels-idx1-ubyte{suffix}", y[n_train:], gz)
    return images, y


@pytest.mark.parametrize("gz", [True, False])
def test_an_idx_folder_round_trips_with_its_test_pair(tmp_path, gz):
    images, y = mnist_like(tmp_path, gz=gz)
    (tmp_path / "README.txt").write_text("not an IDX file: ignored")
    got = files.read_data(tmp_path)
    assert got.kind == "IDX"
    np.testing.assert_array_equal(got.x, images[:60])
    np.testing.assert_array_equal(got.y, y[:60])
    np.testing.assert_array_equal(got.x_test, images[60:])
    np.testing.assert_array_equal(got.y_test, y[60:])


def test_idx_files_pair_by_part_whatever_their_names(tmp_path):
    rng = np.random.default_rng(6)
    images, labels = rng.integers(0, 255, (12, 5, 5)).astype(np.uint8), rng.integers(0, 4, 12).astype(np.uint8)
    write_idx(tmp_path / "x_train.idx", images[:8])
    write_idx(tmp_path / "y_train.idx", labels[:8])
    write_idx(tmp_path / "x_test.idx", images[8:])
    write_idx(tmp_path / "y_test.idx", labels[8:])
    got = files.read_data(tmp_path)
    np.testing.assert_array_equal(got.x, images[:8])
    np.testing.assert_array_equal(got.y_test, labels[8:])


def test_an_idx_glob_picks_one_pair(tmp_path):
    images, y = mnist_like(tmp_path)
    got = files.read_data(str(tmp_path / "t10k-*"))
    np.testing.assert_array_equal(got.x, images[60:])
    np.testing.assert_array_equal(got.y, y[60:])
    assert got.x_test is None


def test_a_cifar10_folder_round_trips(tmp_path):
    rng = np.random.default_rng(5)
    folder = tmp_path / "cifar-10-batches-bin"
    folder.mkdir()
    parts = []
    for name in ("data_batch_1.bin", "data_batch_2.bin", "test_batch.bin"):
        images = rng.integers(0, 256, (6, 3, 32, 32)).astype(np.uint8)
        labels = rng.integers(0, 10, 6)
        write_cifar_batch(folder / name, images, labels)
        parts.append((images, labels))
    got = files.read_data(tmp_path)  # the parent of cifar-10-batches-bin works too
    assert got.kind == "CIFAR-10"
    np.testing.assert_array_equal(got.x, np.concatenate([parts[0][0], parts[1][0]]))
    np.testing.assert_array_equal(got.y, np.concatenate([parts[0][1], parts[1][1]]))
    np.testing.assert_array_equal(got.x_test, parts[2][0])
    np.testing.assert_array_equal(got.y_test, parts[2][1])


def test_a_cnn_trains_on_an_idx_folder_and_predicts_its_test_images(tmp_path, capsys):
    (tmp_path / "mnist").mkdir()
    mnist_like(tmp_path / "mnist")
    status, out, err = run(["train", "--data", tmp_path / "mnist", "--model", "cnn", "--epochs", "3",
                            "--optimizer", "adam", "--run-dir", tmp_path / "run"], capsys)
    assert status == 0, err
    assert "classification (54 train / 6 val / 20 test)" in out
    spec = tg.train.load_checkpoint(tmp_path / "run" / "checkpoint.npz")["extra"]["run"]
    assert spec["layout"] == "image" and spec["input_shape"] == [1, 8, 8] and spec["mean"].shape == (1, 1, 1)
    status, out, err = run(["predict", "--checkpoint", tmp_path / "run" / "checkpoint.npz", "--data",
                            tmp_path / "mnist"], capsys)
    assert status == 0, err
    assert len(out.splitlines()) == 21  # the t10k part, with a header


# ----------------------------------------------------------------------------- malformed files


def malformed(tmp_path):
    ragged = write_csv(tmp_path / "ragged.csv", ["a", "b", "y"], [[1, 2, 0], [3, 4], [5, 6, 1]])
    nan = write_csv(tmp_path / "nan.csv", ["a", "b", "y"], [[1, 2, 0], [3, "nan", 1]])
    empty = write_csv(tmp_path / "empty_cell.csv", ["a", "b", "y"], [[1, 2, 0], [3, "", 1]])
    text = write_csv(tmp_path / "text.csv", ["a", "b", "y"], [[1, 2, 0], [3, "seven", 1]])
    missing_target = write_csv(tmp_path / "target.csv", ["a", "b", "y"], [[1, 2, 0], [3, 4, 1]])
    idx = tmp_path / "idx"
    idx.mkdir()
    write_idx(idx / "train-images-idx3-ubyte", np.zeros((10, 4, 4), np.uint8))
    write_idx(idx / "train-labels-idx1-ubyte", np.zeros(9, np.uint8))
    unknown = tmp_path / "notes.bin"
    unknown.write_bytes(bytes(range(256)))
    np.savez(tmp_path / "keys.npz", features=np.zeros((3, 2)), labels=np.zeros(3))
    np.savez(tmp_path / "lengths.npz", X=np.zeros((3, 2)), y=np.zeros(4, np.int64))
    np.savez(tmp_path / "ok.npz", X=np.zeros((10, 2)), y=np.arange(10) % 2)
    np.savez(tmp_path / "nhwc.npz", X=np.zeros((10, 8, 8, 3), np.uint8), y=np.arange(10) % 2)
    return [
        ([ragged], "line 3: 2 fields, but the header has 3"),
        ([nan], "line 3, column 'b': missing value 'nan'"),
        ([empty], "line 3, column 'b': missing value ''"),
        ([text], "line 3, column 'b': 'seven' is not a number"),
        ([missing_target, "--target", "label"], "--target 'label' is not a column"),
        ([idx], "has 9 labels but"),
        ([unknown], "--data takes a CSV file"),
        ([tmp_path / "keys.npz"], "expected arrays X and y"),
        ([tmp_path / "lengths.npz"], "X has 3 samples but y has 4"),
        ([tmp_path / "no_such_file.csv"], "does not exist"),
        ([str(tmp_path / "nothing-*")], "matches no file"),
        ([missing_target, "--model", "cnn"], "--model cnn needs images"),
        ([tmp_path / "ok.npz", "--target", "y"], "--target names a CSV column"),
        ([tmp_path / "nhwc.npz", "--model", "cnn"], "looks channels-last"),
        ([missing_target, "--test-fraction", "0.1", "--val-fraction", "0.5"], "both must be positive"),
    ]


def test_malformed_files_give_one_line_and_exit_2(tmp_path, capsys):
    for arguments, says in malformed(tmp_path):
        run_dir = tmp_path / "run"
        status, out, err = run(["train", "--data", *arguments, "--run-dir", run_dir], capsys)
        assert status == 2, (arguments, err)
        line = one_error_line(err)
        assert says in line, (says, line)
        assert out == "" and not run_dir.exists()


def test_predict_refuses_what_does_not_fit_before_writing(tmp_path, capsys):
    x, y = blobs(60)
    data = write_csv(tmp_path / "d.csv", ["a", "b", "c", "d", "y"], [[*r, int(c)] for r, c in zip(x.tolist(), y)])
    assert cli.main(["train", "--data", str(data), "--epochs", "1", "--quiet", "--run-dir", str(tmp_path / "r")]) == 0
    checkpoint = tmp_path / "r" / "checkpoint.npz"
    capsys.readouterr()
    fewer = write_csv(tmp_path / "fewer.csv", ["a", "b", "c"], x[:, :3].tolist())
    out = tmp_path / "p.csv"
    cases = [
        (["--checkpoint", checkpoint, "--data", fewer], "lacks the feature column(s) ['d']"),
        (["--checkpoint", tmp_path / "none.npz", "--data", data], "--checkpoint"),
        (["--checkpoint", data, "--data", data], "--checkpoint"),
        (["--checkpoint", checkpoint, "--data", data, "--out", tmp_path], "--out"),
        (["--checkpoint", checkpoint, "--data", data, "--out", tmp_path / "no" / "p.csv"], "--out"),
    ]
    for arguments, says in cases:
        status, _, err = run(["predict", "--out", out, *arguments], capsys)
        assert status == 2 and says in one_error_line(err), (arguments, err)
        assert not out.exists()
    # a checkpoint from fit() itself, without the record of the data, is refused by name
    plain = tmp_path / "plain.npz"
    tg.train.save_checkpoint(plain, {"model": {}})
    status, _, err = run(["predict", "--checkpoint", plain, "--data", data], capsys)
    assert status == 2 and "not written by tinygrad-sgd train" in one_error_line(err)
    assert not any(name.startswith(".predictions-") for name in os.listdir(tmp_path))


def test_r2_score_is_one_minus_the_unexplained_share_of_the_variance():
    target = np.array([1.0, 2.0, 4.0, 7.0])
    assert tg.train.metrics.r2_score(target, target) == 1.0
    assert tg.train.metrics.r2_score(np.full(4, target.mean()), target) == pytest.approx(0.0)
    guess = np.array([1.5, 2.0, 3.0, 8.0])
    expected = 1 - np.sum((target - guess) ** 2) / np.sum((target - target.mean()) ** 2)
    assert tg.train.metrics.r2_score(guess, target) == pytest.approx(expected)
    assert np.isnan(tg.train.metrics.r2_score(target, np.ones(4)))
