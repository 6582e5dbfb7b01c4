"""tg.distributed and DistributedDataParallel in one process (a world of one), and the
launcher of the tests that need two MPI ranks (``tests/mpi``, run under ``mpiexec -n 2``)."""

import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

import tinygrad_sgd as tg
from tinygrad_sgd.nn.parallel import DistributedDataParallel

dist = tg.distributed
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MPIEXEC = shutil.which("mpiexec") or (shutil.which("mpiexec", path=os.path.dirname(sys.executable)))


@pytest.fixture(autouse=True)
def world_of_one():
    dist.init_process_group()
    yield
    assert dist.get_world_size() == 1


def mpi_env():
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", NUMBA_NUM_THREADS="1", MPLBACKEND="Agg")
    # the ranks must run this interpreter (the one with tinygrad_sgd installed)
    env["PATH"] = os.pathsep.join([os.path.dirname(sys.executable), env.get("PATH", "")])
    return env


def run_mpi(args, *, timeout=300, cwd=ROOT):
    """Run ``mpiexec -n 2 args``; skipped without mpiexec and mpi4py, unless CI insists
    (``TINYGRAD_SGD_REQUIRE_MPI=1``)."""
    missing = "mpiexec" if MPIEXEC is None else None
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        missing = "mpi4py"
    if missing is not None:
        if os.environ.get("TINYGRAD_SGD_REQUIRE_MPI") == "1":
            pytest.fail(f"{missing} not found but TINYGRAD_SGD_REQUIRE_MPI=1 (pip install 'tinygrad_sgd[mpi]')")
        pytest.skip(f"{missing} not found (pip install 'tinygrad_sgd[mpi]')")
    return subprocess.run([MPIEXEC, "-n", "2", *args], cwd=cwd, env=mpi_env(), capture_output=True, text=True,
                          timeout=timeout, check=False)


# ----------------------------------------------------------------------------- a world of one


def test_world_of_one_without_mpiexec():
    assert dist.is_initialized() and dist.get_rank() == 0 and dist.get_world_size() == 1
    assert dist.is_main_process() and dist.get_local_rank() == 0
    assert dist.device_for_this_rank() == tg.backend.best_device()
    dist.init_process_group()  # again: harmless
    dist.barrier()


def test_collectives_are_the_identity_in_a_world_of_one():
    a = np.arange(6.0).reshape(2, 3)
    assert dist.all_reduce(a, op="mean") is a and a.tolist() == [[0, 1, 2], [3, 4, 5]]
    t = tg.Tensor([1.0, 2.0])
    assert dist.broadcast(t, src=0) is t
    gathered = dist.all_gather(t)
    assert len(gathered) == 1 and gathered[0].numpy().tolist() == [1.0, 2.0] and gathered[0] is not t
    assert dist.all_gather_object(3) == [3] and dist.broadcast_object("x") == "x"
    dist.check_on_all_ranks(None)


def test_collective_argument_errors():
    with pytest.raises(ValueError, match="op must be one of"):
        dist.all_reduce(np.zeros(2), op="prod")
    with pytest.raises(TypeError, match="floating-point"):
        dist.all_reduce(np.zeros(2, dtype=np.int64), op="mean")
    with pytest.raises(TypeError, match="tg.Tensor or a NumPy"):
        dist.all_reduce([1.0, 2.0])
    with pytest.raises(ValueError, match="C-contiguous"):
        dist.all_reduce(np.zeros((4, 4))[:, 1])
    with pytest.raises(ValueError, match="read-only"):
        a = np.zeros(3)
        a.flags.writeable = False
        dist.broadcast(a)
    with pytest.raises(ValueError, match="src must be a rank"):
        dist.broadcast(np.zeros(2), src=1)
    with pytest.raises(TypeError, match="float16"):
        dist.all_reduce(np.zeros(2, dtype=np.float16))
    with pytest.raises(ValueError, match="backend must be 'mpi'"):
        dist.init_process_group("nccl")


def test_check_on_all_ranks_raises_the_problem():
    with pytest.raises(RuntimeError, match="bad thing"):
        dist.check_on_all_ranks("bad thing", RuntimeError)


def test_distributed_sampler_defaults_come_from_the_group():
    s = tg.data.DistributedSampler(10)
    assert s.num_replicas == 1 and s.rank == 0 and len(s) == 10
    with pytest.raises(ValueError, match=r"rank=2 must be in \[0, num_replicas=2\)"):
        tg.data.DistributedSampler(10, num_replicas=2, rank=2)


# ----------------------------------------------------------------------------- DDP in a world of one


def mlp(seed=0):
    tg.manual_seed(seed)
    return tg.nn.Sequential(tg.nn.Linear(6, 8), tg.nn.ReLU(), tg.nn.Linear(8, 3))


def data(n=16, seed=0):
    rng = np.random.default_rng(seed)
    return tg.Tensor(rng.standard_normal((n, 6)).astype(np.float32)), tg.Tensor(rng.integers(0, 3, n))


@pytest.mark.parametrize("bucket_cap_mb", [None, 25.0, 0.0001])
def test_ddp_in_a_world_of_one_is_the_plain_model(bucket_cap_mb):
    x, y = data()
    plain, wrapped = mlp(), DistributedDataParallel(mlp(), bucket_cap_mb=bucket_cap_mb)
    for model in (plain, wrapped):
        tg.nn.CrossEntropyLoss()(model(x), y).backward()
    for p, q in zip(plain.parameters(), wrapped.parameters()):
        np.testing.assert_array_equal(p.grad.numpy(), q.grad.numpy())


def test_ddp_buckets_in_reverse_order_with_a_cap():
    model = mlp()
    ddp = DistributedDataParallel(model, bucket_cap_mb=100 / 2**20)  # 100 bytes: one bucket per tensor here
    assert len(ddp._buckets) == 4 and ddp._buckets[0].params[0] is model[2].bias
    assert len(DistributedDataParallel(mlp()).__dict__["_buckets"]) == 1
    assert "buckets=1" in repr(DistributedDataParallel(mlp()))


def test_ddp_forwards_state_dict_parameters_and_modes():
    model = mlp()
    ddp = DistributedDataParallel(model)
    assert list(ddp.state_dict()) == list(model.state_dict()) == ["0.weight", "0.bias", "2.weight", "2.bias"]
    assert [p is q for p, q in zip(ddp.parameters(), model.parameters())] == [True] * 4
    assert [n for n, _ in ddp.named_parameters()] == ["0.weight", "0.bias", "2.weight", "2.bias"]
    ddp.eval()
    assert not model.training and not model[0].training
    ddp.train()
    assert model.training
    ddp.load_state_dict(mlp(seed=5).state_dict())
    np.testing.assert_array_equal(model[0].weight.detach().numpy(), mlp(seed=5)[0].weight.detach().numpy())


def test_ddp_grad_kept_from_a_step_keeps_its_values():
    x, y = data()
    ddp = DistributedDataParallel(mlp())
    opt = tg.optim.SGD(ddp.parameters(), lr=0.1)
    tg.nn.CrossEntropyLoss()(ddp(x), y).backward()
    kept = ddp.module[0].weight.grad
    saved = kept.numpy().copy()
    opt.step()
    opt.zero_grad()
    tg.nn.CrossEntropyLoss()(ddp(x), y).backward()
    np.testing.assert_array_equal(kept.numpy(), saved)


def test_ddp_summed_with_grad_scale_equals_averaged():
    x, y = data()
    results = []
    for average in (True, False):
        ddp = DistributedDataParallel(mlp(), average=average)
        opt = tg.optim.Adam(ddp.parameters(), lr=0.01)
        for _ in range(3):
            tg.nn.CrossEntropyLoss()(ddp(x), y).backward()
            opt.step(grad_scale=1.0 / ddp.grad_divisor)
            opt.zero_grad()
        results.append(ddp.state_dict())
    for key in results[0]:
        np.testing.assert_array_equal(results[0][key], results[1][key])


def test_ddp_reports_a_parameter_without_gradient_at_the_next_forward():
    class Partial(tg.nn.Module):
        def __init__(self):
            super().__init__()
            self.used = tg.nn.Linear(6, 3)
            self.unused = tg.nn.Linear(6, 3)

        def forward(self, x):
            return self.used(x)

    x, y = data()
    ddp = DistributedDataParallel(Partial(), bucket_cap_mb=25.0)
    tg.nn.CrossEntropyLoss()(ddp(x), y).backward()
    with pytest.raises(RuntimeError, match="unused.weight"):
        ddp(x)
    ddp.module.unused.requires_grad_(False)
    ddp = DistributedDataParallel(ddp.module)
    tg.nn.CrossEntropyLoss()(ddp(x), y).backward()
    ddp(x)  # no error now


def test_ddp_argument_errors():
    with pytest.raises(TypeError, match="wraps a tg.nn.Module"):
        DistributedDataParallel(lambda x: x)
    with pytest.raises(ValueError, match="bucket_cap_mb"):
        DistributedDataParallel(mlp(), bucket_cap_mb=0)
    with pytest.raises(TypeError, match="average must be a bool"):
        DistributedDataParallel(mlp(), average="yes")


def test_ddp_refuses_parameters_on_two_devices():
    model = mlp()
    model[2].weight._device = "cuda:0"  # a stand-in for a second device on a machine without a GPU
    with pytest.raises(ValueError, match=r"one device, got cpu \(e.g. '0.weight'\), cuda:0 \(e.g. '2.weight'\)"):
        DistributedDataParallel(model)


# ----------------------------------------------------------------------------- two ranks


def test_two_rank_suite_under_mpiexec():
    """tests/mpi under ``mpiexec -n 2``: DDP against one process on the global batch, etc."""
    result = run_mpi([sys.executable, "-m", "pytest", "tests/mpi", "-q", "-p", "no:cacheprovider",
                      "-o", "addopts=--import-mode=importlib"])
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert result.stdout.count(" passed") == 2 and "skipped" not in result.stdout, result.stdout[-2000:]


def test_an_exception_on_one_rank_aborts_both_instead_of_hanging(tmp_path):
    script = tmp_path / "one_rank_fails.py"
    script.write_text(
        "import numpy as np\n"
        "import tinygrad_sgd as tg\n"
        "tg.distributed.init_process_group()\n"
        "rank = tg.distributed.get_rank()\n"
        "sampler = tg.data.DistributedSampler(10, num_replicas=2, rank=rank + 1)  # wrong on rank 1\n"
        "tg.distributed.all_reduce(np.zeros(3))  # rank 0 would wait here forever without the abort\n")
    result = run_mpi([sys.executable, str(script)], timeout=120)
    output = result.stdout[-3000:] + result.stderr[-3000:]
    assert result.returncode != 0, output
    assert "rank=2 must be in [0, num_replicas=2)" in result.stderr, output
    assert "aborting all 2 ranks" in result.stderr, output


def test_cli_train_on_two_ranks_writes_one_run_folder(tmp_path):
    result = run_mpi([sys.executable, "-m", "tinygrad_sgd", "train", "--epochs", "1", "--hidden", "16",
                      "--run-dir", str(tmp_path / "run")], cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert result.stdout.count("batch 32 (2 processes x 16 per process)") == 1  # rank 0 alone speaks
    assert result.stdout.count("test accuracy") == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["checkpoint.npz", "history.csv",
                                                                    "history_steps.csv", "loss.png"]


def test_cli_batch_that_does_not_divide_among_the_ranks_fails_on_every_rank(tmp_path):
    result = run_mpi([sys.executable, "-m", "tinygrad_sgd", "train", "--batch-size", "33"], cwd=tmp_path, timeout=120)
    assert result.returncode == 2
    message = "tinygrad-sgd: error: argument --batch-size: 33 (the global batch) does not divide among the 2 processes"
    assert result.stderr.count(message) == 2
    assert not any(tmp_path.iterdir())


def test_local_sgd_in_a_world_of_one():
    model = mlp()
    local = tg.nn.parallel.LocalSGD(model, period=2)
    x, y = data()
    opt = tg.optim.SGD(local.parameters(), lr=0.1)
    plain = mlp()
    plain_opt = tg.optim.SGD(plain.parameters(), lr=0.1)
    averaged = []
    for _ in range(4):
        for m, o in ((local, opt), (plain, plain_opt)):
            tg.nn.CrossEntropyLoss()(m(x), y).backward()
            o.step()
            o.zero_grad()
        averaged.append(local.step())
    assert averaged == [False, True, False, True] and local.communications == 2
    for (key, a), (_, b) in zip(local.state_dict().items(), plain.state_dict().items()):
        np.testing.assert_array_equal(a, b, err_msg=key)  # the mean over one rank is the identity
    assert list(local.state_dict()) == list(model.state_dict()) and "period=2" in repr(local)


def test_local_sgd_argument_errors():
    for period in (0, 1.5, True):
        with pytest.raises(ValueError, match="period must be a positive int"):
            tg.nn.parallel.LocalSGD(mlp(), period=period)
    with pytest.raises(TypeError, match="LocalSGD wraps a tg.nn.Module"):
        tg.nn.parallel.LocalSGD("model", period=2)


def test_allreduce_cost_model():
    alpha, beta = 5e-6, 1e9
    assert dist.ring_allreduce_time(1, 1e6, alpha, beta) == 0.0
    assert dist.ring_allreduce_time(2, 1e6, alpha, beta) == pytest.approx(2 * alpha + 1e6 / beta)
    # the bandwidth term stays below 2 n / beta; the latency term grows with N
    assert dist.ring_allreduce_time(1024, 1e9, 0.0, beta) < 2.0
    assert dist.ring_allreduce_time(1024, 0.0, alpha, beta) == pytest.approx(2 * 1023 * alpha)
    assert dist.recursive_doubling_allreduce_time(512, 1e3, alpha, beta) == pytest.approx(9 * (alpha + 1e3 / beta))


def test_distributed_benchmark_fits_latency_and_bandwidth(monkeypatch):
    monkeypatch.syspath_prepend(os.path.join(ROOT, "benchmarks"))
    import distributed as bench

    sizes = np.array([1e3, 1e4, 1e5, 1e6, 1e7])
    times = np.array([dist.ring_allreduce_time(2, n, 3e-6, 2e9) for n in sizes])
    alpha, beta = bench.fit_latency_bandwidth(sizes, times, workers=2)
    assert alpha == pytest.approx(3e-6, rel=1e-6) and beta == pytest.approx(2e9, rel=1e-6)
    step, efficiency = bench.predict(1e-3, 10_000, 64, alpha, beta, period=8)
    assert step == pytest.approx(1e-3 + dist.ring_allreduce_time(64, 40_000, alpha, beta) / 8)
    assert efficiency == pytest.approx(1e-3 / step)


def test_distributed_benchmark_runs_on_two_ranks():
    result = run_mpi([sys.executable, "benchmarks/distributed.py", "--quick"], timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "fit: alpha =" in result.stdout and result.stdout.count("cnn     512   64") == 1


@pytest.mark.parametrize("bucket_cap_mb", [None, 25.0])
def test_ddp_reduces_a_sparse_embedding_gradient_as_a_dense_one(bucket_cap_mb):
    tg.manual_seed(0)
    emb = tg.nn.Embedding(10, 3, sparse=True)
    ddp = DistributedDataParallel(emb, bucket_cap_mb=bucket_cap_mb)
    ddp(tg.Tensor(np.array([1, 4, 4]))).sum().backward()
    expected = np.zeros((10, 3), dtype=np.float32)
    expected[1], expected[4] = 1.0, 2.0
    assert isinstance(emb.weight.grad, tg.Tensor)
    np.testing.assert_array_equal(emb.weight.grad.numpy(), expected)


@pytest.mark.cuda
@pytest.mark.parametrize("cuda_aware", [False, True])
def test_cupy_arrays_on_two_ranks(cuda_aware, monkeypatch):
    """CuPy arrays through MPI -- staged through the host, or handed to a CUDA-aware MPI
    directly, as the debug log says -- and DDP on the GPU; on a GPU, or on the CuPy stand-in
    in CI. The direct path is forced only on the stand-in, whose device memory is host
    memory: on a real GPU it needs an MPI built with CUDA support."""
    if not tg.gpu_available():
        pytest.skip("no CUDA GPU (run with --cupy-standin for the CuPy stand-in)")
    if cuda_aware:
        if not getattr(tg.backend.get_array_module("cuda"), "STANDIN", False):
            pytest.skip("forcing the CUDA-aware path needs a CUDA-aware MPI on a real GPU")
        monkeypatch.setenv("TINYGRAD_SGD_MPI_CUDA_AWARE", "1")
    else:
        monkeypatch.delenv("TINYGRAD_SGD_MPI_CUDA_AWARE", raising=False)
    result = run_mpi([sys.executable, "tests/mpi/cupy_collectives.py"], timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "cupy collectives and DDP on 2 ranks: ok" in result.stdout
    assert ("passed to MPI directly" if cuda_aware else "staged through host memory") in result.stderr


def test_distributed_sampler_under_mpiexec_needs_the_group(tmp_path):
    script = tmp_path / "no_group.py"
    script.write_text("import tinygrad_sgd as tg\n"
                      "tg.data.DistributedSampler(10)\n")
    result = run_mpi([sys.executable, str(script)], timeout=120)
    assert result.returncode != 0, result.stderr[-3000:]
    # every rank raises; mpiexec may end the slower one before its traceback is out
    assert "call tg.distributed.init_process_group() first" in result.stderr, result.stderr[-3000:]
