"""Two MLP steps with this working tree's engine and with an earlier revision's, all against
hand-written NumPy, timed in alternating rounds in one process: op_overhead.py's raw-op
step, and mlp_train.py's library step (``tg.nn.Linear`` + cross-entropy + fused SGD).

    python benchmarks/engine_ab.py [REV] [--batch 128] [--rounds 21] [--steps 20]

REV defaults to HEAD: what the uncommitted changes do.

On a shared machine the speed of every step drifts by more than most changes move it, so
two separate runs of op_overhead.py cannot tell a 5% change from the drift. Here the
earlier revision's ``tinygrad_sgd`` and ``kernels`` (taken with ``git archive REV``) are
imported under another name beside this tree's package, and the steps take turns,
so the drift hits all of them alike. Prints the median step time of each and its ratio to
NumPy's.
"""

from __future__ import annotations

import argparse
import importlib
import io
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np

import tinygrad_sgd as tg
from mlp_train import engine_model
from op_overhead import SIZES, EngineMLP, NumpyMLP, interleaved_times, make_params

REPO = Path(__file__).resolve().parent.parent
OLD_NAME = "tinygrad_sgd_at_rev"


def import_revision(rev: str, into: Path):
    """``tinygrad_sgd`` as it was at ``rev``, importable as ``OLD_NAME`` (its imports are
    relative, so the package works under any name; ``kernels`` goes inside it, where
    setup.cfg's package mapping puts it)."""
    try:
        archive = subprocess.run(["git", "-C", str(REPO), "archive", "--format=tar", rev, "tinygrad_sgd", "kernels"],
                                 check=True, capture_output=True).stdout
    except (OSError, subprocess.CalledProcessError) as error:
        detail = getattr(error, "stderr", b"") or b""
        raise SystemExit(f"engine_ab: cannot read revision {rev!r} from a git checkout at {REPO}: "
                         f"{detail.decode(errors='replace').strip() or error}") from None
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        if hasattr(tarfile, "data_filter"):  # Python >= 3.11.4: refuse paths outside `into`
            tar.extractall(into, filter="data")
        else:
            tar.extractall(into)
    package = into / OLD_NAME
    (into / "tinygrad_sgd").rename(package)
    kernels_link = package / "kernels"
    if kernels_link.is_symlink() or kernels_link.exists():  # a checkout may carry a link
        kernels_link.unlink()
    (into / "kernels").rename(kernels_link)
    sys.path.insert(0, str(into))
    return importlib.import_module(OLD_NAME)


def library_step(model, loss_fn, optimizer, x, y):
    def step():
        optimizer.zero_grad()
        loss_fn(model(x), y).backward()
        optimizer.step()

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("rev", nargs="?", default="HEAD", help="the earlier revision (a commit, tag or branch; "
                        "default HEAD)")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=21)
    parser.add_argument("--steps", type=int, default=20, help="steps per round")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        old_tg = import_revision(args.rev, Path(tmp))
        rng = np.random.default_rng(1)
        params = make_params()
        x = rng.standard_normal((args.batch, SIZES[0])).astype(np.float32)
        y = rng.integers(0, SIZES[-1], args.batch)
        numpy_model = NumpyMLP(params)
        steps = {"numpy": lambda: numpy_model.step(x, y)}
        for label, engine in ((f"at {args.rev}", old_tg), ("this tree", tg)):
            xt, yt = engine.Tensor(x), engine.Tensor(y)
            raw = EngineMLP(params, engine=engine)
            steps[f"raw ops, {label}"] = lambda raw=raw, xt=xt, yt=yt: raw.step(xt, yt)
            steps[f"tg.nn, {label}"] = library_step(*engine_model(params, engine=engine), xt, yt)
        medians = interleaved_times(steps, args.steps, rounds=args.rounds, warmup=5)
    print(f"# engine_ab  batch {args.batch}  {args.rounds} rounds of {args.steps} steps  {time.strftime('%Y-%m-%d')}")
    print(f"{'step':<32}{'ms':>10}{'/ numpy':>10}")
    for name, t in medians.items():
        print(f"{name:<32}{t * 1e3:>10.3f}{t / medians['numpy']:>9.3f}x")


if __name__ == "__main__":
    main()
