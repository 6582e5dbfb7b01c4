"""``tinygrad-sgd doctor``: the report, the smoke test on every device, and a failing
smoke test turning into exit status 1 with a one-line reason."""

import sys

import numpy as np
import pytest

import tinygrad_sgd as tg
from tinygrad_sgd import cli, doctor


def test_doctor_reports_and_passes_through_the_cli(capsys):
    assert cli.main(["doctor"]) == 0
    out = capsys.readouterr().out
    for expected in ("numpy      " + np.__version__, "numba ", "cupy ", "cpu        ", "threading layer: ",
                     "smoke      cpu: forward, backward and fused Adam step ok", "all smoke tests passed"):
        assert expected in out
    assert "extra      [gpu]" in out and "extra      [test]" in out


def test_smoke_test_passes_on_every_device(device):
    assert doctor.smoke_test(tg.backend.parse_device(device)).startswith("forward, backward and fused Adam")


def test_a_wrong_fused_step_fails_with_one_line(monkeypatch, capsys):
    class WrongAdam(tg.optim.Adam):
        def step(self, *args, **kwargs):
            super().step(*args, **kwargs)
            if self.fused:  # a broken kernel: the fused update lands a little off
                for p in self.param_groups[0]["params"]:
                    p.data += 1e-3

    monkeypatch.setattr(tg.optim, "Adam", WrongAdam)
    assert doctor.main(devices=["cpu"]) == 1
    captured = capsys.readouterr()
    assert "smoke      cpu: FAILED: fused Adam step (parameter 0) against the reference differs by 0.001" \
        in captured.out
    assert captured.err.strip().splitlines() == [
        ("tinygrad-sgd doctor: failed: cpu: fused Adam step (parameter 0) against the reference "
         "differs by 0.001 (tolerance 1e-06)")]


def test_a_crashing_smoke_test_is_reported_not_raised(monkeypatch, capsys):
    def crash(device):
        raise RuntimeError(f"no kernel image for {device}\nsecond line")

    monkeypatch.setattr(doctor, "smoke_test", crash)
    assert doctor.main(devices=["cpu"]) == 1
    assert capsys.readouterr().err == "tinygrad-sgd doctor: failed: cpu: no kernel image for cpu\n"


def test_wrong_backward_is_caught_on_the_cpu(monkeypatch):
    monkeypatch.setattr(tg.autograd, "gradcheck", lambda *args, **kwargs: False)
    with pytest.raises(doctor.SmokeTestFailure, match="backward differs from finite differences"):
        doctor.smoke_test("cpu")


def test_module_status_names_missing_and_broken_modules(tmp_path, monkeypatch):
    (tmp_path / "broken_module_for_doctor.py").write_text("raise RuntimeError('boom')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert doctor.module_status("no_such_module_for_doctor") == "not installed"
    assert doctor.module_status("broken_module_for_doctor") == \
        "installed but fails to import: RuntimeError: boom"
    assert doctor.module_status("numpy") == np.__version__
    sys.modules.pop("broken_module_for_doctor", None)


def test_extras_come_from_the_package_metadata():
    extras = dict(doctor.extras())
    assert {"gpu", "cudasim", "test"} <= set(extras)
    assert any(spec.startswith("cupy-cuda13x") for spec, _ in extras["gpu"])
    assert all(version is not None for _, version in extras["test"])  # the test run has them


def test_gpu_lines_name_each_device_or_why_there_is_none(device):
    lines = doctor.gpus()
    if device == "cpu" and not tg.gpu_available():
        assert len(lines) == 1 and lines[0].startswith("none: ")
        return
    assert lines[0].startswith("cuda:0: ") and "compute capability" in lines[0] and "CUDA driver" in lines[0]
    assert len(lines) == tg.backend.gpu_count()
