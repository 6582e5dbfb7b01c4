"""The command line refuses bad values cleanly: one line ``tinygrad-sgd: error: ...`` and
exit status 2, found before anything is read, trained or written (no run folder is left
behind). A failure while training (divergence) exits 1 with one line and keeps the
history recorded up to it."""

import csv
import subprocess
import sys

import pytest

import tinygrad_sgd as tg
from tinygrad_sgd import cli

PREFIX = "tinygrad-sgd: error: "


def run(argv, capsys):
    status = cli.main(argv)
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(PREFIX), err
    return lines[0]


BAD_VALUES = [
    (["--lr", "-0.1"], "--lr"),
    (["--lr", "nan"], "--lr"),
    (["--lr", "inf"], "--lr"),
    (["--lr", "abc"], "--lr"),
    (["--momentum", "-0.5"], "--momentum"),
    (["--momentum", "1"], "--momentum"),
    (["--weight-decay", "-1"], "--weight-decay"),
    (["--dropout", "1.5"], "--dropout"),
    (["--dropout", "nan"], "--dropout"),
    (["--test-fraction", "0"], "--test-fraction"),
    (["--test-fraction", "1.5"], "--test-fraction"),
    (["--clip", "-1"], "--clip"),
    (["--clip", "0"], "--clip"),
    (["--checkpoint-every", "0"], "--checkpoint-every"),
    (["--seed", "-1"], "--seed"),
    (["--seed", str(2**64)], "--seed"),
    (["--hidden", "0"], "--hidden"),
    (["--epochs", "0"], "--epochs"),
    (["--batch-size", "0"], "--batch-size"),
    (["--accumulation", "0"], "--accumulation"),
    (["--optimizer", "lbfgs"], "--optimizer"),
    (["--device", "tpu"], "--device"),
    (["--device", "cuda:x"], "--device"),
    (["--resume", "no_such_checkpoint.npz"], "--resume"),
    (["--target", "label"], "--target"),
    (["--val-fraction", "1"], "--val-fraction"),
    (["--early-stopping", "0"], "--early-stopping"),
    (["--task", "ranking"], "--task"),
    (["--no-such-option"], "--no-such-option"),
]


@pytest.mark.parametrize("extra, option", BAD_VALUES, ids=[" ".join(e) for e, _ in BAD_VALUES])
def test_a_bad_value_is_one_line_exit_2_and_leaves_no_run_folder(tmp_path, capsys, extra, option):
    run_dir = tmp_path / "run"
    status, out, err = run(["train", "--epochs", "1", "--quiet", "--run-dir", str(run_dir), *extra], capsys)
    assert status == 2
    line = one_error_line(err)
    assert option in line
    assert out == ""
    assert not run_dir.exists()


@pytest.mark.skipif(tg.gpu_available(), reason="a GPU is present: --device cuda is valid here")
def test_device_cuda_without_a_gpu_is_refused_before_anything_runs(tmp_path, capsys):
    status, _, err = run(["train", "--device", "cuda", "--run-dir", str(tmp_path / "run")], capsys)
    assert status == 2 and "--device" in one_error_line(err) and "not available" in err
    assert not (tmp_path / "run").exists()


def test_run_dir_naming_a_file_or_under_a_file_is_refused(tmp_path, capsys):
    a_file = tmp_path / "notes.txt"
    a_file.write_text("keep me")
    for run_dir in (a_file, a_file / "run"):
        status, _, err = run(["train", "--epochs", "1", "--run-dir", str(run_dir)], capsys)
        assert status == 2 and "--run-dir" in one_error_line(err)
    assert a_file.read_text() == "keep me"


def test_compare_checks_its_values_too(capsys):
    status, out, err = run(["compare", "--dropout", "1.5"], capsys)
    assert status == 2 and "--dropout" in one_error_line(err) and out == ""


@pytest.fixture(scope="module")
def small_checkpoint(tmp_path_factory):
    """One epoch of a small MLP with SGD and the cosine schedule."""
    run_dir = tmp_path_factory.mktemp("small") / "run"
    assert cli.main(["train", "--epochs", "1", "--hidden", "8", "--quiet", "--run-dir", str(run_dir)]) == 0
    return run_dir / "checkpoint.npz"


@pytest.mark.parametrize("extra, says", [
    (["--hidden", "16"], "size mismatch"),                     # another model
    (["--optimizer", "adam"], "SGD"),                          # another optimizer
    (["--schedule", "none"], "scheduler"),                     # another schedule
])
def test_resume_of_another_runs_checkpoint_is_refused_before_anything_runs(small_checkpoint, tmp_path, capsys,
                                                                           extra, says):
    run_dir = tmp_path / "resumed"
    status, out, err = run(["train", "--epochs", "2", "--hidden", "8", "--quiet", "--run-dir", str(run_dir),
                            "--resume", str(small_checkpoint), *extra], capsys)
    assert status == 2
    line = one_error_line(err)
    assert "--resume" in line and says in line
    assert out == "" and not run_dir.exists()


def test_resume_of_a_file_that_is_not_a_checkpoint_is_refused(small_checkpoint, tmp_path, capsys):
    not_a_checkpoint = small_checkpoint.parent / "history.csv"
    status, _, err = run(["train", "--hidden", "8", "--run-dir", str(tmp_path / "r"), "--resume",
                          str(not_a_checkpoint)], capsys)
    assert status == 2 and "--resume" in one_error_line(err)
    assert not (tmp_path / "r").exists()


def test_a_matching_resume_is_accepted(small_checkpoint, tmp_path, capsys):
    run_dir = tmp_path / "resumed"
    status, _, err = run(["train", "--epochs", "2", "--hidden", "8", "--quiet", "--run-dir", str(run_dir),
                          "--resume", str(small_checkpoint)], capsys)
    assert status == 0, err
    with open(run_dir / "history.csv") as file:
        assert [int(r["epoch"]) for r in csv.DictReader(file)] == [0, 1]


def test_divergence_exits_1_with_one_line_and_keeps_the_partial_history(tmp_path, capsys):
    run_dir = tmp_path / "run"
    status, _, err = run(["train", "--lr", "1e30", "--epochs", "2", "--quiet", "--run-dir", str(run_dir)], capsys)
    assert status == 1
    line = one_error_line(err)
    assert "diverged" in line and "non-finite" in line and str(run_dir) in line
    with open(run_dir / "history_steps.csv") as file:
        steps = list(csv.DictReader(file))
    assert len(steps) >= 1 and float(steps[0]["lr"]) == 1e30
    assert (run_dir / "history.csv").exists()


def test_the_installed_command_prints_no_traceback(tmp_path):
    result = subprocess.run([sys.executable, "-m", "tinygrad_sgd", "train", "--lr", "nan", "--run-dir",
                             str(tmp_path / "run")], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stdout == "" and "Traceback" not in result.stderr
    assert one_error_line(result.stderr) == f"{PREFIX}argument --lr: must be a finite number > 0, got nan"
    assert not (tmp_path / "run").exists()
