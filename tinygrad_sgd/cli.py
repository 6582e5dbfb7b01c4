"""``tinygrad-sgd`` (also ``python -m tinygrad_sgd``): train, predict, compare CPU with GPU, benchmark.

    tinygrad-sgd train                      # the main job: an MLP on the bundled digits
    tinygrad-sgd train --model cnn --optimizer adam --lr 0.003 --schedule onecycle
    tinygrad-sgd train --data course.csv --target grade     # your own data (CSV, npz, IDX, CIFAR-10)
    tinygrad-sgd predict --checkpoint runs/<run>/checkpoint.npz --data new.csv --out predictions.csv
    tinygrad-sgd compare --epochs 3         # same run on CPU and GPU, side by side
    tinygrad-sgd bench                      # the benchmark scripts (from a source checkout)
    tinygrad-sgd doctor                     # versions, devices and a smoke test per device
    mpiexec -n 4 tinygrad-sgd train         # data-parallel on 4 MPI processes (--batch-size is global)

Every value is checked before anything runs: a bad one is refused in one line,
``tinygrad-sgd: error: ...``, with exit status 2, and leaves no run folder behind. A run
that fails while training (it diverged, the disk filled) stops with one line and exit
status 1, keeping what it had recorded; Ctrl-C does the same with status 130.
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from . import rundata
from .data import files
from .rundata import TASKS, RunData, load_run_data, n_outputs

PROG = "tinygrad-sgd"
OPTIMIZERS = ("sgd", "adam", "adamw", "rmsprop", "adagrad")
SCHEDULES = ("none", "step", "exponential", "cosine", "cyclic", "onecycle", "warmup", "plateau")
BATCH_SCHEDULES = ("constant", "warmup", "step")


class UsageError(Exception):
    """A bad command-line value or input, found before anything runs or is written.
    ``main`` prints it as one line, ``tinygrad-sgd: error: ...``, and returns 2 (argparse's code)."""


class _Parser(argparse.ArgumentParser):
    """argparse, with its own errors (unknown option, invalid choice, not a number) raised as
    :class:`UsageError`, so that every refusal is the same one line instead of a usage block."""

    def error(self, message):
        raise UsageError(message)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)

    def add_run_options(sub):
        sub.add_argument("--model", choices=("mlp", "cnn", "lstm"), default="mlp",
                         help="lstm: an LSTM sentiment classifier on generated movie reviews")
        sub.add_argument("--hidden", type=int, default=128, help="MLP hidden units (default 128)")
        sub.add_argument("--dropout", type=float, default=0.0)
        sub.add_argument("--optimizer", choices=OPTIMIZERS, default="sgd")
        sub.add_argument("--lr", type=float, default=None, help="default: 0.05 for sgd and adagrad, 0.003 otherwise")
        sub.add_argument("--momentum", type=float, default=0.9, help="SGD/RMSprop momentum (default 0.9)")
        sub.add_argument("--nesterov", action="store_true")
        sub.add_argument("--weight-decay", type=float, default=0.0)
        sub.add_argument("--batch-size", type=int, default=32)
        sub.add_argument("--epochs", type=int, default=20)
        sub.add_argument("--schedule", choices=SCHEDULES, default="cosine", help="learning-rate schedule")
        sub.add_argument("--batch-size-schedule", choices=BATCH_SCHEDULES, default="constant",
                         help="warmup: grow to --batch-size over 5 epochs with the LR scaled linearly "
                              "(Goyal et al. 2017); step: double the batch every 5 epochs instead of "
                              "decaying the LR (Smith et al. 2018)")
        sub.add_argument("--accumulation", type=int, default=1, help="micro-batches per optimizer step")
        sub.add_argument("--clip", type=float, default=None, help="clip the gradient to this global L2 norm")
        sub.add_argument("--seed", type=int, default=0)
        sub.add_argument("--data", default=None,
                         help="your data instead of the bundled digits: a CSV with a header row, an .npz "
                              "(X/y or x_train/y_train[/x_test/y_test]), an IDX image/label pair (folder or "
                              "glob), or a CIFAR-10 batches folder")
        sub.add_argument("--target", default=None, help="the CSV column to predict (default: the last)")
        sub.add_argument("--task", choices=TASKS, default="auto",
                         help="auto: classification for integer or named targets, regression for floats")
        sub.add_argument("--test-fraction", type=float, default=0.2,
                         help="share held out for the final test (unless the data has its own test part)")
        sub.add_argument("--val-fraction", type=float, default=0.1,
                         help="share of the training data for validation: the val_* columns, --early-stopping "
                              "and --schedule plateau use it (0: none)")
        sub.add_argument("--early-stopping", type=int, default=None, metavar="PATIENCE",
                         help="stop after PATIENCE epochs without a better validation loss; keep the best weights")
        sub.add_argument("--quiet", action="store_true", help="no progress output")

    train = commands.add_parser("train", help="train on the bundled digits or your --data (the main job)")
    add_run_options(train)
    train.add_argument("--device", default="auto", help="auto (GPU when present), cpu, cuda, cuda:N")
    train.add_argument("--run-dir", default=None, help="where outputs go (default runs/<date-time>)")
    train.add_argument("--resume", default=None, help="continue from a checkpoint.npz")
    train.add_argument("--checkpoint-every", type=int, default=None, help="also checkpoint every N steps")

    compare = commands.add_parser("compare", help="the same run on CPU and GPU: time and drift")
    add_run_options(compare)

    predict = commands.add_parser("predict", help="predictions of a trained checkpoint on new data, as CSV")
    predict.add_argument("--checkpoint", required=True, help="a checkpoint.npz written by tinygrad-sgd train")
    predict.add_argument("--data", required=True, help="the samples, in any format train reads (a CSV needs the "
                                                       "feature columns; the target column may be absent)")
    predict.add_argument("--out", default=None, help="write the CSV here (default: standard output)")
    predict.add_argument("--device", default="cpu", help="cpu (default), auto, cuda, cuda:N")

    bench = commands.add_parser("bench", help="run the benchmark scripts of a source checkout")
    bench.add_argument("names", nargs="*", help="benchmark names (default: all), e.g. op_overhead")
    commands.add_parser("doctor", help="versions, threads, GPUs, extras and a smoke test per device")
    # Named in the message for a missing command: "required: {train,compare,...}".
    commands.metavar = "{" + ",".join(commands.choices) + "}"
    return parser


# ----------------------------------------------------------------------------- checking the values
# Every value is checked before anything is trained or any folder is created; a refusal
# names the option and the values it takes.

_MAX_SEED = 2**63 - 1  # seeds are stored in checkpoints as JSON and int64


def _option(name: str) -> str:
    return "--" + name.replace("_", "-")


def _require(args, name: str, ok, allowed: str) -> None:
    """Refuse ``args.<name>`` unless ``ok(value)``; None (an unset optional value) passes."""
    value = getattr(args, name, None)
    if value is not None and not ok(value):
        raise UsageError(f"argument {_option(name)}: must be {allowed}, got {value!r}")


def check_run_options(args) -> None:
    """The options of every training command (``train``, ``compare``)."""
    finite = math.isfinite
    for name in ("epochs", "batch_size", "accumulation", "hidden"):
        _require(args, name, lambda v: v >= 1, "an integer >= 1")
    _require(args, "checkpoint_every", lambda v: v >= 1, "an integer >= 1 (optimizer steps)")
    _require(args, "seed", lambda v: 0 <= v <= _MAX_SEED, f"an integer in [0, {_MAX_SEED}]")
    _require(args, "lr", lambda v: finite(v) and v > 0, "a finite number > 0")
    _require(args, "momentum", lambda v: 0 <= v < 1, "in [0, 1)")
    _require(args, "weight_decay", lambda v: finite(v) and v >= 0, "a finite number >= 0")
    _require(args, "dropout", lambda v: 0 <= v < 1, "in [0, 1) (the probability of zeroing a unit)")
    _require(args, "clip", lambda v: finite(v) and v > 0, "a finite number > 0 (the largest gradient norm)")
    _require(args, "test_fraction", lambda v: 0 < v < 1, "in (0, 1) (the share of samples held out)")
    _require(args, "val_fraction", lambda v: 0 <= v < 1, "in [0, 1) (the share of the training data)")
    _require(args, "early_stopping", lambda v: v >= 1, "an integer >= 1 (epochs without improvement)")
    if getattr(args, "early_stopping", None) is not None and args.val_fraction == 0:
        raise UsageError("argument --early-stopping: needs a validation split (--val-fraction > 0); the test "
                         "split is never used to choose the model")


def resolve_device(tg, text: str) -> str:
    """``--device``: auto (a GPU when present; rank r of the processes on a machine with G GPUs takes
    GPU r % G), cpu, cuda or cuda:N, and that device must exist."""
    if text == "auto":  # under mpiexec: the ranks on one machine spread over its GPUs
        return tg.distributed.device_for_this_rank()
    try:
        return tg.backend.parse_device(text)
    except ValueError as error:  # not a device name
        raise UsageError(f"argument --device: {error}, or 'auto'") from None
    except RuntimeError as error:  # no such device here
        raise UsageError(f"argument --device: {error} (--device cpu, or auto: a GPU when there is one)") from None


def check_run_dir(path: Path) -> None:
    """``--run-dir`` can be created (or is a folder) and written to; nothing is created yet."""
    if path.exists() and not path.is_dir():
        raise UsageError(f"argument --run-dir: {path} exists and is not a folder")
    existing = path
    while not existing.exists():  # the nearest ancestor that exists decides
        existing = existing.parent
    if not existing.is_dir():
        raise UsageError(f"argument --run-dir: cannot create {path}: {existing} is a file")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UsageError(f"argument --run-dir: cannot write to {existing}")


def check_resume(args, tg, build) -> None:
    """``--resume``: the file is a checkpoint of this run's model, optimizer, schedule and data.

    It is tried on a second, throwaway copy of the run (``build()``): every piece loads, or
    the refusal says which one differs, while the real run is still untouched."""
    path = Path(args.resume)
    if not path.is_file():
        raise UsageError(f"argument --resume: {path} " + ("is not a file" if path.exists() else "does not exist"))
    try:
        saved = tg.train.load_checkpoint(path)
        trial = build()
        tg.train.loop._restore(saved, trial.model, trial.optimizer, trial.scheduler, trial.train_loader,
                               tg.train.History(), tg.train.TrainState(trial.model, trial.optimizer,
                                                                       tg.train.History()))
    except (RuntimeError, ValueError, TypeError, KeyError) as error:  # CheckpointError is a RuntimeError
        message = error.args[0] if isinstance(error, KeyError) and error.args else error
        raise UsageError(f"argument --resume: {path} does not fit this run: {message}") from None


# ----------------------------------------------------------------------------- building a run


def make_model(args, tg, input_shape=None, outputs: int = 10):
    """The network for one sample of ``input_shape`` (features, or (C, H, W) for the CNN)
    with ``outputs`` outputs (the classes, or 1 for regression). The defaults are the digits'."""
    nn = tg.nn
    if args.model == "lstm":  # embedding, LSTM (--hidden units), dropout, linear (tinygrad_sgd/text_task.py)
        from .text_task import SentimentLSTM, vocabulary

        return SentimentLSTM(len(vocabulary()), hidden_size=args.hidden, dropout=args.dropout, classes=outputs)
    if input_shape is None:
        input_shape = (64,) if args.model == "mlp" else (1, 8, 8)
    if args.model == "mlp":
        layers = [nn.Linear(int(np.prod(input_shape)), args.hidden), nn.ReLU()]
        if args.dropout:
            layers.append(nn.Dropout(args.dropout))
        layers.append(nn.Linear(args.hidden, outputs))
        return nn.Sequential(*layers)
    channels, height, width = input_shape
    layers = [nn.Conv2d(channels, 16, kernel_size=3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
              nn.Conv2d(16, 32, kernel_size=3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten()]
    if args.dropout:
        layers.append(nn.Dropout(args.dropout))
    layers.append(nn.Linear(32 * (height // 4) * (width // 4), outputs))
    return nn.Sequential(*layers)


def make_optimizer(args, tg, params):
    lr = args.lr if args.lr is not None else (0.05 if args.optimizer in ("sgd", "adagrad") else 0.003)
    optim = tg.optim
    if args.optimizer == "sgd":
        return optim.SGD(params, lr=lr, momentum=args.momentum, nesterov=args.nesterov,
                         weight_decay=args.weight_decay)
    if args.optimizer == "adam":
        return optim.Adam(params, lr=lr, weight_decay=args.weight_decay)
    if args.optimizer == "adamw":
        return optim.AdamW(params, lr=lr, weight_decay=args.weight_decay or 0.01)
    if args.optimizer == "rmsprop":
        return optim.RMSprop(params, lr=lr, momentum=args.momentum, weight_decay=args.weight_decay)
    return optim.Adagrad(params, lr=lr, weight_decay=args.weight_decay)


def make_scheduler(args, tg, optimizer, steps_per_epoch: int):
    """Returns (scheduler, interval)."""
    sched = tg.optim.lr_scheduler
    lr = optimizer.param_groups[0]["lr"]
    if args.schedule == "none":
        return None, "epoch"
    if args.schedule == "step":
        return sched.StepLR(optimizer, step_size=max(1, args.epochs // 3), gamma=0.1), "epoch"
    if args.schedule == "exponential":
        return sched.ExponentialLR(optimizer, gamma=0.9), "epoch"
    if args.schedule == "cosine":
        return sched.CosineAnnealingLR(optimizer, T_max=args.epochs), "epoch"
    if args.schedule == "cyclic":
        return sched.CyclicLR(optimizer, base_lr=lr / 10, max_lr=lr, step_size_up=2 * steps_per_epoch,
                              cycle_momentum=False), "step"
    if args.schedule == "onecycle":
        return sched.OneCycleLR(optimizer, max_lr=lr, total_steps=args.epochs * steps_per_epoch,
                                cycle_momentum=False), "step"
    if args.schedule == "plateau":  # fit steps it with the validation loss (the training loss without one)
        return sched.ReduceLROnPlateau(optimizer, factor=0.1, patience=3), "epoch"
    return sched.LinearLR(optimizer, start_factor=0.1, total_iters=max(1, args.epochs // 4)), "epoch"


def make_batch_schedule(args, tg):
    data = tg.data
    if args.batch_size_schedule == "constant":
        return None
    if args.batch_size_schedule == "warmup":
        return data.LinearWarmupBatchSize(start=max(1, args.batch_size // 4), end=args.batch_size, warmup_epochs=5,
                                          base_batch_size=args.batch_size)
    return data.StepBatchSize(args.batch_size, step_size=5, factor=2, base_batch_size=args.batch_size)


@dataclass
class Run:
    """Everything one training run is made of."""

    model: Any
    optimizer: Any
    scheduler: Any
    interval: str       # when the scheduler steps: "epoch" or "step"
    train_loader: Any
    val_loader: Any     # None without a validation split
    test_loader: Any    # looked at once, after training
    loss_fn: Any
    metrics: tuple      # what fit records on the validation split
    data: RunData       # the splits and the spec (tinygrad_sgd/rundata.py)


def prepare(args, device: str):
    """Data, model, optimizer, scheduler and loaders for one run on ``device``, as
    ``(tg, model, optimizer, scheduler, interval, train_loader, test_loader)``."""
    import tinygrad_sgd as tg

    tg.manual_seed(args.seed)
    run = build_run(args, tg, load_run_data(args), device)
    return tg, run.model, run.optimizer, run.scheduler, run.interval, run.train_loader, run.test_loader


def build_run(args, tg, data: RunData, device: str) -> Run:
    """Model, optimizer, scheduler (and its interval) and loaders for the splits of ``data``."""
    schedule = make_batch_schedule(args, tg)
    loader_options = dict(batch_size_schedule=schedule) if schedule is not None else dict(batch_size=args.batch_size)
    world = tg.distributed.get_world_size()
    train_set = tg.data.TensorDataset(data.x_train, data.y_train)
    if world > 1:  # MPI ranks: each takes its share (a DistributedSampler) of every global batch
        train_loader = tg.data.DataLoader(train_set, batch_size=args.batch_size // world, device=device,
                                          sampler=tg.data.DistributedSampler(train_set, seed=args.seed))
    else:
        train_loader = tg.data.DataLoader(train_set, shuffle=True, seed=args.seed, device=device, **loader_options)
    val_loader = None if data.x_val is None else tg.data.DataLoader(
        tg.data.TensorDataset(data.x_val, data.y_val), batch_size=512, device=device)
    test_loader = tg.data.DataLoader(tg.data.TensorDataset(data.x_test, data.y_test), batch_size=512, device=device)
    model = make_model(args, tg, data.spec["input_shape"], n_outputs(data.spec)).to(device)
    if world > 1:  # rank 0's weights everywhere; backward sums the gradients over the ranks
        model = tg.nn.parallel.DistributedDataParallel(model)
    optimizer = make_optimizer(args, tg, model.parameters())
    scheduler, interval = make_scheduler(args, tg, optimizer, len(train_loader) // args.accumulation or 1)
    metrics: tuple[str, ...]
    if data.task == "classification":
        loss_fn, metrics = tg.nn.CrossEntropyLoss(), ("accuracy", "precision", "recall", "f1")
    else:
        loss_fn, metrics = tg.nn.MSELoss(), ("mse", "r2")
    return Run(model, optimizer, scheduler, interval, train_loader, val_loader, test_loader, loss_fn, metrics, data)


def _fit(args, tg, model, optimizer, scheduler, interval, train_loader, val_loader, *, loss_fn=None,
         metrics=("accuracy", "precision", "recall", "f1"), **extra):
    return tg.train.fit(model, loss_fn or tg.nn.CrossEntropyLoss(), optimizer, train_loader, epochs=args.epochs,
                        val_loader=val_loader, scheduler=scheduler, scheduler_interval=interval,
                        accumulation_steps=args.accumulation, clip_grad_norm=args.clip,
                        # warm-up follows the linear scaling rule; the step increase
                        # replaces LR decay, so its LR stays put (Smith et al. 2018)
                        scale_lr_with_batch_size=args.batch_size_schedule == "warmup",
                        metrics=metrics, progress=not args.quiet, **extra)


# ----------------------------------------------------------------------------- commands


class RunError(Exception):
    """Training failed after it started (diverged, disk full): one line, exit 1; what was
    recorded so far stays in the run folder."""


class Interrupted(RunError):
    """Ctrl-C while training: one line and exit status 130 (the shell's 128 + SIGINT)."""


def command_train(args) -> int:
    import tinygrad_sgd as tg

    # ---- check everything; nothing is trained or written before this block ends
    device = resolve_device(tg, args.device)
    world, main_rank = tg.distributed.get_world_size(), tg.distributed.is_main_process()
    # One run folder: rank 0 names it, and only rank 0 writes into it.
    run_dir = Path(tg.distributed.broadcast_object(args.run_dir or str(Path("runs") / time.strftime("%Y%m%d-%H%M%S"))))
    check_run_dir(run_dir)
    tg.manual_seed(args.seed)
    try:
        data = load_run_data(args)
        run = build_run(args, tg, data, device)
    except (ValueError, TypeError, OSError) as error:  # the data, or a value the objects refuse
        raise UsageError(str(error)) from None
    if args.resume is not None:
        check_resume(args, tg, lambda: build_run(args, tg, data, device))
    # ---- run
    if main_rank:
        run_dir.mkdir(parents=True, exist_ok=True)
    say = (lambda *a: None) if args.quiet or not main_rank else print
    processes = f" ({world} processes x {args.batch_size // world} per process)" if world > 1 else ""
    sizes = f"{len(run.train_loader.dataset)} train / " + (
        f"{len(run.val_loader.dataset)} val / " if run.val_loader is not None else "") + \
        f"{len(run.test_loader.dataset)} test"
    say(f"tinygrad_sgd {tg.__version__}: {args.model} on {data.name}, {data.task} ({sizes}), "
        f"{args.optimizer} lr={run.optimizer.param_groups[0]['lr']:g}, batch {args.batch_size}{processes}, "
        f"{args.epochs} epochs, device {device}")
    started = time.perf_counter()
    checkpoint = run_dir / "checkpoint.npz"
    stopper = None if args.early_stopping is None else tg.train.EarlyStopping(patience=args.early_stopping)
    callbacks = () if stopper is None else (stopper,)
    try:
        # NumPy's overflow warnings would only repeat what the NaN guard reports, in more lines.
        with np.errstate(over="ignore", invalid="ignore"):
            history = _fit(args, tg, run.model, run.optimizer, run.scheduler, run.interval, run.train_loader,
                           run.val_loader, loss_fn=run.loss_fn, metrics=run.metrics, callbacks=callbacks,
                           checkpoint_path=checkpoint, checkpoint_every=args.checkpoint_every,
                           resume_from=args.resume, checkpoint_extra={"run": data.spec})
    except tg.train.NonFiniteError as error:
        if main_rank:
            _write_history(error.history, run_dir)
        raise RunError(f"training diverged: {error}; the history up to there is in {run_dir}/history*.csv"
                       + (" (try a smaller --lr)" if args.clip is None else "")) from None
    except OSError as error:
        raise RunError(f"training stopped: {error}; the last checkpoint, if any, is {checkpoint}") from None
    except KeyboardInterrupt:
        if not (main_rank and checkpoint.exists()):
            raise Interrupted("interrupted before the first checkpoint was written") from None
        # The checkpoint holds the history up to it; the run continues from there with --resume.
        saved_history = tg.train.History()
        saved_history.load_state_dict(tg.train.load_checkpoint(checkpoint)["history"])
        _write_history(saved_history, run_dir)
        raise Interrupted(f"interrupted; the history up to the last checkpoint is in {run_dir}/history*.csv, "
                          f"and --resume {checkpoint} continues the run") from None
    elapsed = time.perf_counter() - started
    summary = _test_summary(tg, run)  # on every rank: evaluating may take part in collectives
    if not main_rank:
        return 0
    if stopper is not None and stopper.bad_epochs > stopper.patience and stopper.best_epoch is not None:
        # The model now holds its best epoch's weights: so does the checkpoint that predict reads
        # (the optimizer and loader state stay those of the last epoch).
        saved = tg.train.load_checkpoint(checkpoint)
        saved["model"] = run.model.state_dict()
        tg.train.save_checkpoint(checkpoint, saved)
        say(f"kept the weights of epoch {stopper.best_epoch + 1}, the best validation loss ({stopper.best:.4g})")
    _write_history(history, run_dir)
    history.plot(run_dir / "loss.png", title=f"{args.model} / {args.optimizer} on {data.name}")
    say(f"{summary}  ({elapsed:.1f} s)")
    say(f"wrote {run_dir / 'history.csv'}, {run_dir / 'loss.png'}, {checkpoint}")
    return 0


def _test_summary(tg, run: Run) -> str:
    """The held-out test split, looked at once, at the end."""
    if run.data.task == "classification":
        final = tg.train.evaluate(run.model, run.test_loader, run.loss_fn, ("accuracy", "f1"))
        return f"test accuracy {final['accuracy']:.4f}  macro F1 {final['f1']:.4f}  test loss {final['loss']:.4f}"
    final = tg.train.evaluate(run.model, run.test_loader, run.loss_fn, ("mse", "r2"))
    mse = final["mse"] * run.data.spec["target_std"] ** 2  # back in the target's units
    return f"test MSE {mse:.6g} (in the target's units)  R^2 {final['r2']:.4f}"


def _write_history(history, run_dir: Path) -> None:
    history.to_csv(run_dir / "history.csv")
    history.to_csv(run_dir / "history_steps.csv", level="step")


def command_predict(args) -> int:
    """Predictions of a checkpoint written by ``train`` on ``--data``, as CSV: a
    ``prediction`` column (the class label, or the value in the target's units) and, for
    classification, one probability column per class. For data with its own test part
    (npz ``x_test``, MNIST ``t10k``, CIFAR ``test_batch``) that part is used."""
    import tinygrad_sgd as tg

    # ---- check everything before anything is computed or written
    device = resolve_device(tg, args.device)
    path = Path(args.checkpoint)
    if not path.is_file():
        raise UsageError(f"argument --checkpoint: {path} " + ("is not a file" if path.exists() else "does not exist"))
    try:
        saved = tg.train.load_checkpoint(path)
    except tg.train.CheckpointError as error:
        raise UsageError(f"argument --checkpoint: {error}") from None
    extra = saved.get("extra")
    spec = extra.get("run") if isinstance(extra, dict) else None
    if not isinstance(spec, dict):
        raise UsageError(f"argument --checkpoint: {path} does not record its data and model (it was not written "
                         "by tinygrad-sgd train)")
    out = Path(args.out) if args.out is not None else None
    if out is not None:
        if out.is_dir():
            raise UsageError(f"argument --out: {out} is a folder")
        if not out.parent.is_dir() or not os.access(out.parent, os.W_OK | os.X_OK):
            raise UsageError(f"argument --out: cannot write in {out.parent}")
    try:
        raw = files.read_data(args.data, target=spec["target"], require_target=False,
                              features=spec["feature_names"])
        x, y = (raw.x_test, raw.y_test) if raw.x_test is not None else (raw.x, raw.y)
        x = rundata.inputs(x, spec)
        model = make_model(rundata.model_options(spec), tg, spec["input_shape"], n_outputs(spec))
        model.load_state_dict(saved["model"])
    except (ValueError, TypeError, RuntimeError, KeyError) as error:
        raise UsageError(f"{error}" if not isinstance(error, KeyError) else f"{path}: missing {error}") from None
    try:  # the file's own targets, when it has them, give a score; predictions do not need them
        expected = rundata.targets(y, spec) if y is not None else None
    except rundata.DataError:  # a label the model never saw, say
        expected = None
    # ---- predict
    model.to(device).eval()
    outputs = []
    with tg.no_grad():
        for start in range(0, len(x), 1024):
            outputs.append(model(tg.Tensor(x[start:start + 1024], device=device)).numpy())
    scores = np.concatenate(outputs) if outputs else np.zeros((0, n_outputs(spec)), np.float32)
    predictions, probabilities = rundata.outputs_to_predictions(scores, spec)
    header = ["prediction"] + ([f"p_{c}" for c in spec["classes"]] if probabilities is not None else [])
    rows = ([p, *(f"{v:.6g}" for v in probs)] for p, probs in zip(predictions.tolist(), probabilities)) \
        if probabilities is not None else ([f"{p:.8g}"] for p in predictions.tolist())
    if out is None:
        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)
        return 0
    handle, temporary = tempfile.mkstemp(prefix=".predictions-", suffix=".csv.tmp", dir=out.parent)
    try:  # written whole, then renamed: an interrupted run leaves the old file as it was
        with os.fdopen(handle, "w", newline="") as file:
            writer = csv.writer(file, lineterminator="\n")
            writer.writerow(header)
            writer.writerows(rows)
        os.replace(temporary, out)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise
    score = ""
    if expected is not None:
        if spec["task"] == "classification":
            score = f"; accuracy on the file's labels {tg.train.metrics.accuracy(scores, expected):.4f}"
        else:
            score = f"; R^2 on the file's targets {tg.train.metrics.r2_score(scores, expected):.4f}"
    print(f"wrote {len(predictions)} predictions to {out}{score}")
    return 0


def command_compare(args) -> int:
    import tinygrad_sgd as tg

    devices = ["cpu"] + (["cuda:0"] if tg.gpu_available() else [])
    if len(devices) == 1:
        print("no CUDA GPU found (CuPy missing or no device): running on the CPU only, nothing to compare against")
    runs = {}
    for device in devices:
        tg.manual_seed(args.seed)
        try:
            run = build_run(args, tg, load_run_data(args), device)
        except (ValueError, TypeError, OSError) as error:  # the data, or a value the objects refuse
            raise UsageError(str(error)) from None
        args_quiet = argparse.Namespace(**{**vars(args), "quiet": True})
        started = time.perf_counter()
        history = _fit(args_quiet, tg, run.model, run.optimizer, run.scheduler, run.interval, run.train_loader,
                       run.val_loader, loss_fn=run.loss_fn, metrics=run.metrics, log=None)
        total = time.perf_counter() - started
        params = {k: np.asarray(v, dtype=np.float64) for k, v in run.model.state_dict().items()}
        runs[device] = (history, total, params)
        epoch_times = [r["time_s"] for r in history.epochs]
        metric = "val_accuracy" if run.data.task == "classification" else "val_r2"
        print(f"{device:>7}: {np.median(epoch_times):.3f} s/epoch (median of {len(epoch_times)}), "
              f"final {metric} {history.epochs[-1].get(metric, float('nan')):.4f}")
    if len(devices) == 2:
        (h_cpu, _, p_cpu), (h_gpu, _, p_gpu) = runs["cpu"], runs["cuda:0"]
        loss_drift = np.max(np.abs(np.array(h_cpu.steps["loss"]) - np.array(h_gpu.steps["loss"])))
        param_drift = max(float(np.max(np.abs(p_cpu[k] - p_gpu[k]))) for k in p_cpu)
        cpu_epoch = np.median([r["time_s"] for r in h_cpu.epochs])
        gpu_epoch = np.median([r["time_s"] for r in h_gpu.epochs])
        print(f"speed-up (CPU epoch time / GPU epoch time): {cpu_epoch / gpu_epoch:.2f}x")
        print(f"largest per-step loss difference: {loss_drift:.3g}; largest parameter difference: {param_drift:.3g}")
        cpu_loss, gpu_loss = h_cpu.epochs[-1]["train_loss"], h_gpu.epochs[-1]["train_loss"]
        print(f"last epoch's training loss: cpu {cpu_loss:.6g}, cuda:0 {gpu_loss:.6g}, relative difference "
              f"{abs(gpu_loss - cpu_loss) / max(abs(cpu_loss), 1e-30):.3g}")
    return 0


def command_bench(args) -> int:
    folder = Path(__file__).resolve().parent.parent / "benchmarks"
    if not folder.is_dir():
        print("the benchmark scripts live in the source checkout's benchmarks/ folder, which this install "
              "does not have; run from a clone (pip install -e .)", file=sys.stderr)
        return 2
    scripts = sorted(folder.glob("*.py"))
    if args.names:
        wanted = {name.removesuffix(".py") for name in args.names}
        unknown = wanted - {s.stem for s in scripts}
        if unknown:
            print(f"unknown benchmarks {sorted(unknown)}; available: {[s.stem for s in scripts]}", file=sys.stderr)
            return 2
        scripts = [s for s in scripts if s.stem in wanted]
    status = 0
    for script in scripts:
        print(f"== {script.stem}", flush=True)
        status |= subprocess.run([sys.executable, str(script)], env=dict(os.environ)).returncode
    return status


def command_doctor(args) -> int:
    from .doctor import main as doctor

    return doctor()


COMMANDS = {"train": command_train, "predict": command_predict, "compare": command_compare,
            "bench": command_bench, "doctor": command_doctor}


class _EveryRankUsageError(UsageError):
    """A usage error that every rank finds alike (from the arguments and the world size)."""


def _check_data_parallel(args) -> None:
    """Join the MPI process group; refuse, on every rank, what cannot be split across ranks."""
    import tinygrad_sgd as tg

    tg.distributed.init_process_group()
    world = tg.distributed.get_world_size()
    problem = None
    if world > 1 and args.batch_size % world:
        problem = (f"argument --batch-size: {args.batch_size} (the global batch) does not divide among the "
                   f"{world} processes; use a multiple of the process count")
    elif world > 1 and args.batch_size_schedule != "constant":
        problem = (f"argument --batch-size-schedule: {args.batch_size_schedule} runs in one process only; "
                   f"this is one of {world}")
    if problem is not None:
        raise _EveryRankUsageError(problem)


def main(argv=None) -> int:
    """Run one command; returns the exit status: 0 done, 1 failed while running, 2 refused."""
    try:
        args = build_parser().parse_args(argv)
        if args.command in ("train", "compare"):
            check_run_options(args)
        if args.command == "train":  # under mpiexec: one rank of a data-parallel run (a world of one otherwise)
            _check_data_parallel(args)
        return COMMANDS[args.command](args)
    except UsageError as error:
        return _fail(error, 2)
    except Interrupted as error:
        return _fail(error, 130)
    except RunError as error:
        return _fail(error, 1)
    except BrokenPipeError:  # `tinygrad-sgd predict ... | head`: the reader left; say nothing more
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


def _fail(error: Exception, status: int) -> int:
    message = " ".join(str(error).split())  # one line, whatever the message held
    print(f"{PROG}: error: {message}", file=sys.stderr, flush=True)
    _let_other_ranks_report(error)
    return status


def _let_other_ranks_report(error: Exception) -> None:
    """Under mpiexec, the first rank to exit with an error ends the job. An error that every
    rank finds (``_EveryRankUsageError``, e.g. a batch that does not divide among the ranks) waits
    for the others at a barrier, so each has printed it; any other waits a moment."""
    distributed = sys.modules.get("tinygrad_sgd.distributed")
    if distributed is None or distributed.get_world_size() == 1:
        return
    if isinstance(error, _EveryRankUsageError):
        distributed.barrier()
    time.sleep(0.25)


if __name__ == "__main__":
    sys.exit(main())
