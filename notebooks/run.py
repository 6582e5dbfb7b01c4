"""Re-execute the teaching notebooks in place, storing their outputs.

    python notebooks/run.py                 # every notebook, full mode
    python notebooks/run.py 01 03           # the notebooks whose names start with 01 and 03
    python notebooks/run.py --small 00      # small mode (TINYGRAD_SGD_NOTEBOOK_SMALL=1), as the tests run

The stored ``.ipynb`` files are both the source and the executed copy, so someone browsing the
repository sees every figure. Each run

* executes the notebook top to bottom in a fresh kernel running *this* interpreter (a temporary
  kernelspec; whatever ``python3`` kernel the machine has registered is not used), in a temporary
  working directory so nothing lands in the repository;
* draws PNG figures at ``FIGURE_DPI`` (a ``matplotlibrc`` handed to the kernel), one thread for
  BLAS and Numba (the results must not depend on the machine's core count), ``PYTHONHASHSEED=0``;
* records no execution timestamps, and replaces absolute paths, the home directory and the host
  name in the outputs by placeholders (``<repo>``, ``<python>``, ``~``, ``<host>``);
* stamps the notebook's metadata with the mode and a hash of its code cells
  (``metadata.tinygrad_sgd``): ``tests/test_notebooks.py`` recomputes the hash, so a code cell
  edited after the last run fails the tests until the notebook is run again;
* writes the file atomically (a failing cell leaves the stored copy untouched) and refuses to store
  a notebook over ``MAX_BYTES``.

Timings make outputs differ from run to run and tell the reader about one machine; notebooks print
ratios, not seconds. A cell whose output is a measurement on purpose (notebook 10 compares devices)
carries the cell tag ``timing`` so the tests accept it; its numbers must say on what they were
measured, and nothing else changes between runs.
"""

import argparse
import hashlib
import json
import os
import re
import socket
import sys
import tempfile
import time

NOTEBOOK_DIR = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(NOTEBOOK_DIR)
SMALL_ENV = "TINYGRAD_SGD_NOTEBOOK_SMALL"
KERNEL_NAME = "tinygrad-sgd-notebooks"
FIGURE_DPI = 80                  # inline PNGs: readable on a screen, ~30-120 kB per figure
MAX_BYTES = 1_500_000            # per stored notebook
CELL_TIMEOUT_S = 1200            # a full-mode cell may train for minutes on a busy machine
STORED_KERNELSPEC = {"display_name": "Python 3 (ipykernel)", "language": "python", "name": "python3"}
TIMING_TAG = "timing"


def notebook_paths(selectors=()):
    """The notebooks named by ``selectors`` (file names, stems or prefixes such as ``06``); all when empty."""
    names = sorted(n for n in os.listdir(NOTEBOOK_DIR) if n.endswith(".ipynb"))
    if not selectors:
        return [os.path.join(NOTEBOOK_DIR, n) for n in names]
    chosen = []
    for selector in selectors:
        key = os.path.basename(selector)
        matches = [n for n in names if n == key or n.startswith(key)]
        if not matches:
            raise ValueError(f"no notebook in notebooks/ matches {selector!r} (have: {', '.join(names)})")
        chosen += [os.path.join(NOTEBOOK_DIR, n) for n in matches if os.path.join(NOTEBOOK_DIR, n) not in chosen]
    return chosen


def code_hash(nb):
    """SHA-256 of the notebook's code cells (their sources, in order): what the stored outputs came from."""
    sources = [cell.source for cell in nb.cells if cell.cell_type == "code"]
    return hashlib.sha256(json.dumps(sources).encode("utf-8")).hexdigest()


def kernel_environment(root, small):
    """Write a kernelspec for this interpreter and a matplotlibrc under ``root``; return the kernel's env."""
    spec_dir = os.path.join(root, "kernels", KERNEL_NAME)
    os.makedirs(spec_dir, exist_ok=True)
    spec = {"argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
            "display_name": "tinygrad_sgd notebooks", "language": "python"}
    with open(os.path.join(spec_dir, "kernel.json"), "w") as f:
        json.dump(spec, f)
    rc_dir = os.path.join(root, "matplotlib")
    os.makedirs(rc_dir, exist_ok=True)
    with open(os.path.join(rc_dir, "matplotlibrc"), "w") as f:
        f.write(f"figure.dpi: {FIGURE_DPI}\nsavefig.dpi: {FIGURE_DPI}\n")
    env = dict(os.environ)
    env["JUPYTER_PATH"] = os.pathsep.join([root] + ([env["JUPYTER_PATH"]] if env.get("JUPYTER_PATH") else []))
    env["MATPLOTLIBRC"] = rc_dir
    env["MPLBACKEND"] = "Agg"            # no display; %matplotlib inline in the notebooks still yields PNGs
    env["PYTHONHASHSEED"] = "0"
    # One thread each: results independent of the core count (and no oversubscription on small machines).
    env["OPENBLAS_NUM_THREADS"] = "1"
    env["OMP_NUM_THREADS"] = "1"
    env["NUMBA_NUM_THREADS"] = "1"
    if small:
        env[SMALL_ENV] = "1"
    else:
        env.pop(SMALL_ENV, None)
    return env


def _replacements(workdir):
    """(absolute text, placeholder) pairs, longest first, so a path inside another is replaced whole."""
    pairs = [(workdir, "."), (os.path.realpath(workdir), "."), (REPO_ROOT, "<repo>"),
             (os.path.realpath(REPO_ROOT), "<repo>")]
    for prefix in {sys.prefix, sys.base_prefix, sys.exec_prefix, os.path.realpath(sys.prefix)}:
        pairs.append((prefix, "<python>"))
    for entry in sys.path:               # site-packages of a venv layered on another (a .pth file)
        if entry.endswith("site-packages") and os.path.isabs(entry):
            pairs.append((entry, "<python>/site-packages"))
    home = os.path.expanduser("~")
    if home not in ("", "/"):
        pairs.append((home, "~"))
    pairs.append((tempfile.gettempdir(), "<tmp>"))
    pairs = [(text, repl) for text, repl in pairs if len(text) > 1]
    pairs.sort(key=lambda pair: -len(pair[0]))
    host = socket.gethostname()
    return pairs, host


def scrub_text(text, pairs, host):
    for absolute, placeholder in pairs:
        text = text.replace(absolute, placeholder)
    if host and len(host) > 2:
        text = re.sub(rf"\b{re.escape(host)}\b", "<host>", text)
    return text


def scrub_outputs(nb, workdir):
    """Replace machine-specific strings in every text output (streams, text/*, tracebacks)."""
    pairs, host = _replacements(workdir)
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        cell.metadata.pop("execution", None)
        for out in cell.outputs:
            if "text" in out:
                out["text"] = scrub_text(out["text"], pairs, host)
            for mime, value in out.get("data", {}).items():
                if mime.startswith("text/") and isinstance(value, str):
                    out["data"][mime] = scrub_text(value, pairs, host)
            if "traceback" in out:
                out["traceback"] = [scrub_text(line, pairs, host) for line in out["traceback"]]


def execute(path, small=False):
    """Execute one notebook and store it in place. Returns (seconds, bytes written)."""
    import nbclient
    import nbformat

    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
            cell.metadata.pop("execution", None)
    with tempfile.TemporaryDirectory(prefix="tinygrad-sgd-nb-") as root:
        env = kernel_environment(root, small)
        workdir = os.path.join(root, "work")
        os.makedirs(workdir)
        previous = os.environ.get("JUPYTER_PATH")
        os.environ["JUPYTER_PATH"] = env["JUPYTER_PATH"]   # the kernelspec lookup happens in this process
        started = time.perf_counter()
        try:
            client = nbclient.NotebookClient(nb, kernel_name=KERNEL_NAME, timeout=CELL_TIMEOUT_S,
                                             startup_timeout=120, record_timing=False,
                                             resources={"metadata": {"path": workdir}})
            client.execute(env=env)       # raises CellExecutionError naming the failing cell
        finally:
            if previous is None:
                os.environ.pop("JUPYTER_PATH", None)
            else:
                os.environ["JUPYTER_PATH"] = previous
        seconds = time.perf_counter() - started
        scrub_outputs(nb, workdir)
    nb.metadata["kernelspec"] = dict(STORED_KERNELSPEC)
    nb.metadata["language_info"] = {"name": "python"}   # no interpreter version: it differs between machines
    nb.metadata["tinygrad_sgd"] = {"mode": "small" if small else "full", "code_sha256": code_hash(nb)}
    text = nbformat.writes(nb) + "\n"
    size = len(text.encode("utf-8"))
    if size > MAX_BYTES:
        raise RuntimeError(f"{os.path.basename(path)}: executed notebook is {size / 1e6:.2f} MB, over the "
                           f"{MAX_BYTES / 1e6:.1f} MB limit; draw fewer or smaller figures (not stored)")
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)
    return seconds, size


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python notebooks/run.py", description=__doc__.split("\n")[0])
    parser.add_argument("notebooks", nargs="*", help="notebook names or prefixes (e.g. 01 06); default: all")
    parser.add_argument("--small", action="store_true",
                        help=f"small mode ({SMALL_ENV}=1): the quick version the tests run")
    args = parser.parse_args(argv)
    try:
        paths = notebook_paths(args.notebooks)
    except ValueError as error:
        parser.error(str(error))
    from nbclient import exceptions

    failed = []
    for path in paths:
        name = os.path.basename(path)
        print(f"{name}: running ({'small' if args.small else 'full'} mode) ...", flush=True)
        try:
            seconds, size = execute(path, small=args.small)
        # Report and go on with the next notebook; the exit status says one failed.
        except (exceptions.CellExecutionError, exceptions.CellTimeoutError, exceptions.DeadKernelError,
                RuntimeError) as error:
            failed.append(name)
            print(f"{name}: FAILED, stored copy unchanged: {type(error).__name__}: {error}", flush=True)
            continue
        print(f"{name}: stored, {seconds:.0f} s, {size / 1e3:.0f} kB", flush=True)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
