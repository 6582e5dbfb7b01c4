"""Execute every teaching notebook in ``notebooks/`` and check it ran and drew its plots.

Each notebook runs top to bottom in a fresh Jupyter kernel (nbclient + ipykernel) in its
*small* mode (``TINYGRAD_SGD_NOTEBOOK_SMALL=1``: fewer epochs, smaller data), so the whole
set takes well under a minute. A notebook fails the test when any cell raises — and the
notebooks contain their own sanity checks (gradient-accumulation equivalence, schedules
against closed forms, accuracy floors, ...), so executing them checks the library too.

The kernel must be the Python that runs this test (the one with tinygrad_sgd installed),
not whatever ``python3`` kernel a machine happens to have registered: the test writes its
own kernelspec pointing at ``sys.executable`` into a temporary ``JUPYTER_PATH`` and the
first executed cell asserts the interpreter.

Needs the ``test`` extras' nbclient, nbformat and ipykernel; skipped without them.
"""

import json
import os
import sys

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")
pytest.importorskip("matplotlib")

NOTEBOOK_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "notebooks")
NOTEBOOKS = sorted(name for name in os.listdir(NOTEBOOK_DIR) if name.endswith(".ipynb")) \
    if os.path.isdir(NOTEBOOK_DIR) else []
KERNEL_NAME = "tinygrad-sgd-test"
CELL_TIMEOUT_S = 300  # small mode needs seconds per cell; the margin is for slow, busy CI machines


@pytest.fixture(scope="module")
def kernel_env(tmp_path_factory):
    """A JUPYTER_PATH holding a kernelspec that runs *this* interpreter, and the kernel's env."""
    root = tmp_path_factory.mktemp("jupyter")
    spec_dir = root / "kernels" / KERNEL_NAME
    spec_dir.mkdir(parents=True)
    spec = {"argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
            "display_name": "tinygrad_sgd test kernel", "language": "python"}
    (spec_dir / "kernel.json").write_text(json.dumps(spec))
    env = dict(os.environ)
    env["JUPYTER_PATH"] = os.pathsep.join([str(root)] + ([env["JUPYTER_PATH"]] if env.get("JUPYTER_PATH") else []))
    env["TINYGRAD_SGD_NOTEBOOK_SMALL"] = "1"
    env["MPLBACKEND"] = "Agg"  # no display; %matplotlib inline in the notebooks still yields PNGs
    # One thread each: on a small, busy machine, OpenBLAS and Numba's parallel kernels spin up
    # threads that fight for the cores and make these small problems several times slower.
    env.setdefault("OPENBLAS_NUM_THREADS", "1")
    env.setdefault("NUMBA_NUM_THREADS", "1")
    return env


def test_notebooks_exist():
    assert len(NOTEBOOKS) >= 4, f"expected the teaching notebooks in {NOTEBOOK_DIR}, found {NOTEBOOKS}"


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_is_committed_clean(name):
    """Committed notebooks carry no outputs (diffs stay readable; results come from running them)."""
    nb = nbformat.read(os.path.join(NOTEBOOK_DIR, name), as_version=4)
    nbformat.validate(nb)
    for index, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            assert not cell.outputs and cell.execution_count is None, f"{name}: cell {index} has outputs"


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_executes(name, kernel_env, tmp_path, monkeypatch):
    nb = nbformat.read(os.path.join(NOTEBOOK_DIR, name), as_version=4)
    # The kernelspec search happens in this process, so JUPYTER_PATH must be set here too.
    monkeypatch.setenv("JUPYTER_PATH", kernel_env["JUPYTER_PATH"])
    check = nbformat.v4.new_code_cell(
        "import os, sys\n"
        f"assert os.path.realpath(sys.executable) == {os.path.realpath(sys.executable)!r}, sys.executable\n"
        "assert os.environ['TINYGRAD_SGD_NOTEBOOK_SMALL'] == '1'")
    nb.cells.insert(0, check)
    client = nbclient.NotebookClient(nb, kernel_name=KERNEL_NAME, timeout=CELL_TIMEOUT_S, startup_timeout=120,
                                     resources={"metadata": {"path": str(tmp_path)}})  # cwd: nothing lands in the repo
    client.execute(env=kernel_env)  # raises CellExecutionError naming the failing cell

    images = 0
    for index, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        pngs = sum("image/png" in out.get("data", {}) for out in cell.outputs if out.output_type == "display_data")
        images += pngs
        if "plt.show()" in cell.source:
            assert pngs >= 1, f"{name}: cell {index - 1} calls plt.show() but displayed no image:\n{cell.source[:200]}"
    assert images >= 1, f"{name} displayed no plot"
