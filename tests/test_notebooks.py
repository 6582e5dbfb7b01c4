"""The teaching notebooks in ``notebooks/``: they execute, and the stored copies are fresh.

The stored ``.ipynb`` files are executed copies (outputs included, so the repository shows every
figure) written by ``python notebooks/run.py``. Two kinds of test:

* **executes**: each notebook runs top to bottom in a fresh Jupyter kernel (nbclient + ipykernel)
  in its *small* mode (``TINYGRAD_SGD_NOTEBOOK_SMALL=1``: fewer epochs, smaller data; under a
  minute each). A notebook fails when any cell raises, and the notebooks carry their own checks
  (gradients against finite differences, schedules against closed forms, claims against the
  spread over seeds, the exercises' hidden solution asserts), so executing them checks the
  library too. The kernel runs *this* interpreter: run.py's kernelspec points at
  ``sys.executable`` and the first executed cell asserts it.
* **fresh**: the stored copy has outputs and no error output; its code is the code that produced
  them (run.py stamps a hash of the code cells into the metadata, recomputed here, and the cells
  ran once each, in order); it is at most 1.5 MB; and its outputs name no absolute path, host or
  wall-clock time (cells tagged ``timing`` may show measured times).

Needs the ``test`` extras' nbclient, nbformat and ipykernel; skipped without them.
"""

import importlib.util
import os
import re
import socket
import sys

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")
pytest.importorskip("matplotlib")

NOTEBOOK_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "notebooks")
_spec = importlib.util.spec_from_file_location("notebooks_run", os.path.join(NOTEBOOK_DIR, "run.py"))
assert _spec is not None and _spec.loader is not None
run = importlib.util.module_from_spec(_spec)   # notebooks/run.py: one place for the kernel setup and the hash
_spec.loader.exec_module(run)

NOTEBOOKS = [os.path.basename(path) for path in run.notebook_paths()]
CELL_TIMEOUT_S = 300  # small mode needs seconds per cell; the margin is for slow, busy CI machines
RERUN = "re-run `python notebooks/run.py {prefix}` and commit the result"

# Absolute paths of the usual kinds, and wall-clock times ("0.52 s", "12 ms", "Wall time").
ABSOLUTE_PATH = re.compile(r"(?<![\w.<>~])(/(home|Users|work|tmp|root|var|opt|usr|private|mnt)/|[A-Za-z]:\\\\)")
TIMING = re.compile(r"\b\d+(\.\d+)?\s*(s|ms|us|µs|sec|secs|seconds|minutes)\b(?![\w/=-])|Wall time|CPU times")


def _prefix(name):
    return name.split("_")[0]


def _shows_unconditionally(source):
    """A top-level ``plt.show()`` line (an indented one may sit under an ``if``: a plot that needs
    mpiexec or a GPU, say, is skipped where they are missing)."""
    return any(line.rstrip() == "plt.show()" for line in source.split("\n"))


def _text_outputs(cell):
    for out in cell.outputs:
        if "text" in out:
            yield out["text"]
        for mime, value in out.get("data", {}).items():
            if mime.startswith("text/") and isinstance(value, str):
                yield value
        yield from out.get("traceback", [])


@pytest.fixture(scope="module")
def kernel_env(tmp_path_factory):
    """run.py's kernel environment (this interpreter, its figure settings) in small mode."""
    return run.kernel_environment(str(tmp_path_factory.mktemp("jupyter")), small=True)


def test_notebooks_exist():
    assert len(NOTEBOOKS) >= 4, f"expected the teaching notebooks in {NOTEBOOK_DIR}, found {NOTEBOOKS}"


@pytest.mark.parametrize("page", ["docs/curriculum.md", "notebooks/README.md"])
def test_every_notebook_is_linked(page):
    """The curriculum (reading order) and the folder's README link every notebook."""
    with open(os.path.join(run.REPO_ROOT, page), encoding="utf-8") as f:
        text = f.read()
    missing = [name for name in NOTEBOOKS if f"{name})" not in text]
    assert not missing, f"{page} does not link {missing}"


def test_notebook_selection():
    assert [os.path.basename(p) for p in run.notebook_paths(["01"])] == [n for n in NOTEBOOKS if n.startswith("01")]
    with pytest.raises(ValueError, match="no notebook"):
        run.notebook_paths(["99_no_such_notebook"])


def test_scrub_replaces_machine_strings(tmp_path):
    pairs, host = run._replacements(str(tmp_path))
    text = f"{run.REPO_ROOT}/tinygrad_sgd/x.py {tmp_path}/out.npz {sys.prefix}/bin/python on {host}"
    scrubbed = run.scrub_text(text, pairs, host)
    assert scrubbed.startswith("<repo>/tinygrad_sgd/x.py ./out.npz <python>/bin/python on ")
    assert host not in scrubbed or len(host) <= 2


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_stored_notebook_is_fresh(name):
    path = os.path.join(NOTEBOOK_DIR, name)
    assert os.path.getsize(path) <= run.MAX_BYTES, f"{name}: {os.path.getsize(path)} bytes, over the limit"
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    stamp = nb.metadata.get("tinygrad_sgd", {})
    assert stamp.get("mode") in ("full", "small"), f"{name} was not stored by notebooks/run.py; " + \
        RERUN.format(prefix=_prefix(name))
    assert stamp.get("code_sha256") == run.code_hash(nb), \
        f"{name}: code cells changed since the stored outputs were made; " + RERUN.format(prefix=_prefix(name))
    code = [cell for cell in nb.cells if cell.cell_type == "code"]
    counts = [cell.execution_count for cell in code if cell.source.strip()]
    assert counts == list(range(1, len(counts) + 1)), f"{name}: cells not run once each, in order: {counts}"
    assert sum(len(cell.outputs) for cell in code) > 0, f"{name} has no outputs"
    hostname = socket.gethostname()
    for index, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        assert not any(out.output_type == "error" for out in cell.outputs), f"{name}: cell {index} stored an error"
        if _shows_unconditionally(cell.source):
            assert any("image/png" in out.get("data", {}) for out in cell.outputs), \
                f"{name}: cell {index} calls plt.show() but stored no image"
        for text in _text_outputs(cell):
            match = ABSOLUTE_PATH.search(text)
            assert match is None, f"{name}: cell {index} output names an absolute path: {text[match.start():][:80]!r}"
            assert len(hostname) <= 2 or not re.search(rf"\b{re.escape(hostname)}\b", text), \
                f"{name}: cell {index} output names the host"
            if run.TIMING_TAG not in cell.metadata.get("tags", []):
                match = TIMING.search(text)
                assert match is None, (f"{name}: cell {index} prints a wall-clock time "
                                       f"({text[max(0, match.start() - 30):match.end() + 10]!r}); print ratios, "
                                       f"or tag the cell '{run.TIMING_TAG}' if measuring is its point")


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_executes(name, kernel_env, tmp_path, monkeypatch):
    nb = nbformat.read(os.path.join(NOTEBOOK_DIR, name), as_version=4)
    # The kernelspec search happens in this process, so JUPYTER_PATH must be set here too.
    monkeypatch.setenv("JUPYTER_PATH", kernel_env["JUPYTER_PATH"])
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    executed_hash = run.code_hash(nb)
    check = nbformat.v4.new_code_cell(
        "import os, sys\n"
        f"assert os.path.realpath(sys.executable) == {os.path.realpath(sys.executable)!r}, sys.executable\n"
        f"assert os.environ[{run.SMALL_ENV!r}] == '1'")
    nb.cells.insert(0, check)
    client = nbclient.NotebookClient(nb, kernel_name=run.KERNEL_NAME, timeout=CELL_TIMEOUT_S, startup_timeout=120,
                                     resources={"metadata": {"path": str(tmp_path)}})  # cwd: nothing lands in the repo
    client.execute(env=kernel_env)  # raises CellExecutionError naming the failing cell
    nb.cells.pop(0)
    # The code executed here is the stored code (the same file) whose hash the freshness test checks.
    assert run.code_hash(nb) == executed_hash

    images = 0
    for index, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        pngs = sum("image/png" in out.get("data", {}) for out in cell.outputs if out.output_type == "display_data")
        images += pngs
        if _shows_unconditionally(cell.source):
            assert pngs >= 1, f"{name}: cell {index} calls plt.show() but displayed no image:\n{cell.source[:200]}"
    assert images >= 1, f"{name} displayed no plot"


def test_run_stores_a_scrubbed_stamped_copy_and_refuses_an_oversized_one(tmp_path):
    """notebooks/run.py's promises on a two-cell notebook: outputs stored, the working directory
    and the repository path replaced by placeholders, no execution timestamps, the mode and code hash
    stamped; an executed notebook over the size limit is refused and the file left as it was."""
    path = tmp_path / "tiny.ipynb"
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("import os\nprint(os.getcwd())"),
                nbformat.v4.new_code_cell(f"print({run.REPO_ROOT!r} + '/x.py', os.environ.get({run.SMALL_ENV!r}))")]
    nbformat.write(nb, str(path))
    run.execute(str(path), small=True)
    stored = nbformat.read(str(path), as_version=4)
    assert stored.metadata["tinygrad_sgd"] == {"mode": "small", "code_sha256": run.code_hash(stored)}
    assert [cell.execution_count for cell in stored.cells] == [1, 2]
    assert stored.cells[0].outputs[0]["text"].strip() == "."
    assert stored.cells[1].outputs[0]["text"].strip() == "<repo>/x.py 1"
    assert all("execution" not in cell.metadata for cell in stored.cells)

    big = nbformat.v4.new_notebook()
    big.cells = [nbformat.v4.new_code_cell(f"print('x' * {run.MAX_BYTES + 1000})")]
    nbformat.write(big, str(path))
    before = path.read_bytes()
    with pytest.raises(RuntimeError, match="over the"):
        run.execute(str(path), small=True)
    assert path.read_bytes() == before and not os.path.exists(str(path) + ".tmp")
