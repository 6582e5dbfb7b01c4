"""The CuPy path end to end, on every device: the bugs found by running it on the CuPy
stand-in (tests/cupy_standin) with the CUDA simulator, and small training runs that must
give the CPU's numbers on ``cuda``.

In the normal run the ``cuda`` cases skip without a GPU; CI runs them on the stand-in
(``.ci/cupy_standin.sh``: ``NUMBA_ENABLE_CUDASIM=1 pytest --cupy-standin -m cuda``), and
``benchmarks/gpu_check.sh`` on a real GPU. Comparisons always move device values to the
host first (``.numpy()``, ``backend.to_numpy``).
"""

import numpy as np
import pytest

import tinygrad_sgd as tg
from tinygrad_sgd import backend
from tinygrad_sgd.train import fit


def host(x):
    """A NumPy copy of a Tensor or raw array on any device."""
    return np.array(backend.to_numpy(x.detach().data if isinstance(x, tg.Tensor) else x))


# ----------------------------------------------------------------------------- engine


def test_backward_delivers_leaf_gradients_on_the_device(device):
    """The leaf-delivery rules read only what CuPy arrays have (no ``flags.writeable``):
    Add hands one gradient to both inputs and a broadcast input gets a zero-stride view;
    every ``.grad`` must still own its memory, on the tensors' device."""
    x = tg.Tensor(np.arange(6.0).reshape(2, 3), requires_grad=True, dtype=tg.float64, device=device)
    y = tg.Tensor(np.ones((2, 3)), requires_grad=True, dtype=tg.float64, device=device)
    b = tg.Tensor(np.ones(3), requires_grad=True, dtype=tg.float64, device=device)
    ((x + y) * 2 + b).sum().backward()
    for t, expected in [(x, np.full((2, 3), 2.0)), (y, np.full((2, 3), 2.0)), (b, np.full(3, 2.0))]:
        assert t.grad.device == t.device == backend.parse_device(device)
        assert type(t.grad.data) is type(t.data)
        np.testing.assert_array_equal(host(t.grad), expected)
    assert x.grad.data is not y.grad.data
    x.grad.data[...] = 0  # independent memory: the other gradients keep their values
    np.testing.assert_array_equal(host(y.grad), np.full((2, 3), 2.0))
    (x * 3).sum().backward()  # a second backward accumulates in place
    np.testing.assert_array_equal(host(x.grad), np.full((2, 3), 3.0))


def test_to_labels_the_result_with_the_target_device(device):
    """``ToDevice`` results carry the device they are on (``Function.output_device``)."""
    target = backend.parse_device(device)
    moved = tg.Tensor([1.0, 2.0]).to(device)
    assert moved.device == target and backend.device_of(moved.data) == target
    back = moved.cpu()
    assert back.device == "cpu" and isinstance(back.data, np.ndarray)
    if target != "cpu":
        assert moved.cuda().device == target
    # the gradient flows back across the move, onto the source device
    x = tg.Tensor([1.0, -2.0, 3.0], requires_grad=True)
    (x.to(device) * tg.Tensor([2.0, 2.0, 2.0], device=device)).sum().backward()
    assert x.grad.device == "cpu"
    np.testing.assert_array_equal(x.grad.numpy(), [2.0, 2.0, 2.0])


def test_cpu_index_tensor_moves_to_the_indexed_tensors_device(device):
    """As in PyTorch: a CPU index tensor may index a tensor on any device."""
    x = tg.Tensor(np.arange(12.0).reshape(3, 4), requires_grad=True, device=device)
    picked = x[tg.Tensor([2, 0, 2])]
    assert picked.device == x.device
    picked.sum().backward()
    np.testing.assert_array_equal(host(x.grad), np.array([[1.0] * 4, [0.0] * 4, [2.0] * 4]))


def test_index_tensor_on_a_gpu_cannot_index_a_cpu_tensor(device):
    if device == "cpu":
        pytest.skip("needs a second device")
    x = tg.Tensor(np.arange(4.0))
    with pytest.raises(RuntimeError, match="index tensor is on cuda:0 but the indexed tensor is on cpu"):
        x[tg.Tensor([1, 2], device=device)]


def test_batchnorm_refuses_an_input_on_another_device_before_any_state_changes(device):
    if device == "cpu":
        pytest.skip("needs a second device")
    bn = tg.nn.BatchNorm1d(3)
    x = tg.Tensor(np.random.default_rng(0).normal(size=(4, 3)), device=device)
    with pytest.raises(RuntimeError, match="BatchNorm1d: weight is on cpu but the input is on cuda:0"):
        bn(x)
    assert int(bn.num_batches_tracked.item()) == 0
    np.testing.assert_array_equal(bn.running_mean.numpy(), np.zeros(3))
    with pytest.raises(RuntimeError, match="batch_norm: running_mean is on cpu but the input is on cuda:0"):
        tg.nn.functional.batch_norm(x, bn.running_mean, bn.running_var, training=True)
    np.testing.assert_array_equal(bn.running_mean.numpy(), np.zeros(3))


# ----------------------------------------------------------------------------- training


def blobs(n=64, features=8, classes=3, seed=0):
    gen = np.random.default_rng(seed)
    y = gen.integers(0, classes, n)
    x = gen.normal(size=(n, features)).astype(np.float32) + y[:, None].astype(np.float32)
    return x, y


def run_mlp(device, optimizer, fused, *, epochs=2, accumulation=1, clip=None, checkpoint=None, resume=None):
    tg.manual_seed(0)
    x, y = blobs()
    model = tg.nn.Sequential(tg.nn.Linear(8, 16), tg.nn.ReLU(), tg.nn.Linear(16, 3)).to(device)
    options = {"SGD": {"lr": 0.1, "momentum": 0.9}, "Adam": {"lr": 1e-2}, "AdamW": {"lr": 1e-2},
               "RMSprop": {"lr": 1e-3}, "Adagrad": {"lr": 0.05}}[optimizer]
    opt = getattr(tg.optim, optimizer)(model.parameters(), fused=fused, **options)
    loader = tg.data.DataLoader(tg.data.TensorDataset(x, y), batch_size=16, shuffle=True, seed=0, device=device)
    history = fit(model, tg.nn.CrossEntropyLoss(), opt, loader, epochs=epochs, accumulation_steps=accumulation,
                  clip_grad_norm=clip, progress=False, log=None, checkpoint_path=checkpoint, resume_from=resume)
    return model, history


@pytest.mark.parametrize("optimizer", ["SGD", "Adam", "AdamW", "RMSprop", "Adagrad"])
@pytest.mark.parametrize("fused", [True, False], ids=["fused", "reference"])
def test_fit_on_the_device_matches_the_cpu(device, optimizer, fused):
    """Same seed, same data order: the device run gives the CPU run's losses and weights
    (float32; the order of the sums differs between NumPy, CuPy and the kernels)."""
    model, history = run_mlp(device, optimizer, fused, accumulation=2, clip=1.0)
    cpu_model, cpu_history = run_mlp("cpu", optimizer, fused, accumulation=2, clip=1.0)
    assert all(p.device == backend.parse_device(device) for p in model.parameters())
    np.testing.assert_allclose(history.steps["loss"], cpu_history.steps["loss"], rtol=1e-4, atol=1e-6)
    for (name, value), cpu_value in zip(model.state_dict().items(), cpu_model.state_dict().values()):
        np.testing.assert_allclose(host(value), host(cpu_value), rtol=1e-4, atol=1e-5, err_msg=name)


def test_checkpoint_from_the_device_resumes_on_the_cpu(device, tmp_path):
    """A checkpoint holds host arrays: one written on the GPU resumes on the CPU, and the
    resumed run ends where an uninterrupted CPU run ends."""
    path = tmp_path / "ckpt.npz"
    run_mlp(device, "Adam", True, epochs=1, checkpoint=path)
    resumed, _ = run_mlp("cpu", "Adam", True, epochs=2, resume=path)
    straight, _ = run_mlp("cpu", "Adam", True, epochs=2)
    for (name, value), expected in zip(resumed.state_dict().items(), straight.state_dict().values()):
        np.testing.assert_allclose(host(value), host(expected), rtol=1e-4, atol=1e-5, err_msg=name)


def test_module_to_device_after_the_optimizer_keeps_training(device):
    tg.manual_seed(0)
    model = tg.nn.Linear(4, 2)
    opt = tg.optim.Adam(model.parameters(), lr=0.1)
    model.to(device)
    x = tg.Tensor(np.ones((3, 4), np.float32), device=device)
    before = host(model.weight)
    model(x).sum().backward()
    opt.step()
    assert model.weight.device == backend.parse_device(device)
    assert not np.allclose(host(model.weight), before)


def small_cnn(device):
    return tg.nn.Sequential(tg.nn.Conv2d(1, 4, 3, padding=1), tg.nn.BatchNorm2d(4), tg.nn.ReLU(),
                            tg.nn.MaxPool2d(2), tg.nn.Flatten(), tg.nn.Linear(4 * 4 * 4, 3)).to(device)


def test_cnn_with_batchnorm_trains_alike_on_every_device(device):
    gen = np.random.default_rng(1)
    x, y = gen.normal(size=(8, 1, 8, 8)).astype(np.float32), gen.integers(0, 3, 8)
    results = []
    for where in (device, "cpu"):
        tg.manual_seed(0)
        model = small_cnn(where)
        opt = tg.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        for _ in range(3):
            loss = tg.nn.functional.cross_entropy(model(tg.Tensor(x, device=where)), tg.Tensor(y, device=where))
            opt.zero_grad()
            loss.backward()
            opt.step()
        model.eval()
        results.append((loss.item(), host(model(tg.Tensor(x, device=where))), host(model[1].running_var)))
    for got, expected in zip(results[0], results[1]):
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("cell", ["RNN", "LSTM", "GRU"])
def test_recurrent_layers_match_the_cpu(device, cell):
    gen = np.random.default_rng(2)
    x = gen.normal(size=(5, 2, 3)).astype(np.float32)
    grads = []
    for where in (device, "cpu"):
        tg.manual_seed(0)
        layer = getattr(tg.nn, cell)(3, 4, num_layers=2).to(where)
        out, _ = layer(tg.Tensor(x, device=where))
        (out * out).sum().backward()
        grads.append([host(p.grad) for p in layer.parameters()] + [host(out)])
    for got, expected in zip(*grads):
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)


def test_sparse_embedding_with_sparse_adam_on_the_device(device):
    """Row-sparse gradients (repeated rows summed by ``cupyx.scatter_add`` on the GPU)."""
    ids = np.array([[1, 3, 3], [0, 3, 5]])
    weights = []
    for where in (device, "cpu"):
        tg.manual_seed(0)
        emb = tg.nn.Embedding(8, 4, sparse=True).to(where)
        opt = tg.optim.SparseAdam(list(emb.parameters()), lr=0.1)
        for _ in range(2):
            opt.zero_grad()
            (emb(tg.Tensor(ids, device=where)) ** 2).sum().backward()
            opt.step()
        weights.append(host(emb.weight))
    np.testing.assert_allclose(weights[0], weights[1], rtol=1e-5, atol=1e-6)
    untouched = [2, 4, 6, 7]
    tg.manual_seed(0)
    np.testing.assert_array_equal(weights[0][untouched], host(tg.nn.Embedding(8, 4, sparse=True).weight)[untouched])


def test_compare_command_runs_on_both_devices(device, capsys):
    """``tinygrad-sgd compare`` with tiny sizes: on a GPU (or the stand-in) it trains on
    both devices and reports the drift, which must be small."""
    from tinygrad_sgd import cli

    assert cli.main(["compare", "--epochs", "1", "--hidden", "8", "--batch-size", "128", "--quiet"]) == 0
    out = capsys.readouterr().out
    if device == "cpu":
        assert "cpu:" in out
        return
    assert "cuda:0:" in out and "speed-up" in out
    drift = float(out.split("largest per-step loss difference:")[1].split(";")[0])
    relative = float(out.split("relative difference")[1].split()[0])
    assert drift < 1e-4 and relative < 1e-4


def test_host_data_goes_to_the_default_device(device, monkeypatch):
    """As ``torch.tensor``: lists and NumPy arrays go to the default device; a Tensor or a
    GPU array keeps its own (``TINYGRAD_SGD_DEVICE=cuda`` then needs no ``device=``)."""
    monkeypatch.setattr(backend, "_default_device", None)
    backend.set_default_device(device)
    target = backend.parse_device(device)
    for data in ([1.0, 2.0], np.array([1.0, 2.0]), 3.0):
        assert tg.Tensor(data).device == target
    on_cpu = tg.Tensor([1.0], device="cpu")
    assert tg.Tensor(on_cpu).device == "cpu" and tg.tensor(on_cpu).device == "cpu"
    on_device = tg.Tensor([1.0], device=device)
    backend.set_default_device("cpu")
    assert tg.Tensor(on_device).device == target and tg.Tensor(on_device.data).device == target
    assert tg.Tensor(np.array([1.0])).device == "cpu"
