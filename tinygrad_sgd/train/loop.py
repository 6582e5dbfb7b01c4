"""The training loop: mini-batch SGD in one function you can read top to bottom.

    for epoch in range(epochs):
        for xb, yb in train_loader:                  # one mini-batch
            loss = loss_fn(model(xb), yb)             # forward
            loss.backward()                          # gradients add into p.grad
            if k micro-batches are in:               # gradient accumulation
                scale = clip_coef / k                 # one fused pass: the gradient norm
                optimizer.step(grad_scale=scale)      # averaging + clipping inside the update
                optimizer.zero_grad()
                scheduler.step()                     # per-step schedules
        evaluate on val_loader; scheduler.step()     # per-epoch schedules

Everything else in :func:`fit` is bookkeeping around those lines: the history, a guard
that stops on a NaN/Inf before it reaches the weights (and checks the weights after
each step, ``train/guard.py``), callbacks (early stopping),
progress bars, and checkpoints that let an interrupted run resume bit-for-bit.
"""

from __future__ import annotations

import math
import sys
import time

import numpy as np

from .. import backend, distributed, rng
from ..nn.utils import GradientNoiseScale, grad_scale_for_step
from ..optim.lr_scheduler import ReduceLROnPlateau
from ..tensor import no_grad
from . import metrics as metric_fns
from .checkpoint import check_writable, load_checkpoint, save_checkpoint
from .guard import StepGuard
from .history import History

CLASSIFICATION_METRICS = {
    "accuracy": metric_fns.accuracy,
    "precision": metric_fns.precision,
    "recall": metric_fns.recall,
    "f1": metric_fns.f1_score,
}
REGRESSION_METRICS = {"mse": metric_fns.mean_squared_error, "mae": metric_fns.mean_absolute_error,
                      "r2": metric_fns.r2_score}


class NonFiniteError(FloatingPointError):
    """Training produced a NaN/Inf loss, gradient or parameter; ``history`` has the run up
    to the step before. A NaN/Inf loss or gradient is never applied: the parameters and
    optimizer state hold the last good values. A step whose update made a parameter
    NaN/Inf was applied, but nothing after it (no History row, callback or checkpoint);
    with ``fit(..., undo_nonfinite_step=True)`` it is undone as well. The message says
    which case it is."""

    def __init__(self, message: str, *, epoch: int, step: int, history: History):
        super().__init__(message)
        self.epoch, self.step, self.history = epoch, step, history


class TrainState:
    """What callbacks see: the objects being trained and where the run stands."""

    def __init__(self, model, optimizer, history: History):
        self.model, self.optimizer, self.history = model, optimizer, history
        self.epoch = 0  # the epoch in progress (0-based)
        self.step = 0  # optimizer steps taken so far
        self.stop = False  # a callback sets this to end training after the current epoch
        self.stop_reason = ""


class Callback:
    """Hooks into :func:`fit`. Override the ones you need; each gets the TrainState."""

    def on_train_begin(self, state: TrainState) -> None:
        pass

    def on_step_end(self, state: TrainState) -> None:
        pass

    def on_epoch_end(self, state: TrainState, record: dict) -> None:
        pass

    def on_train_end(self, state: TrainState) -> None:
        pass


class EarlyStopping(Callback):
    """Stop when ``monitor`` has not improved by ``min_delta`` for ``patience`` epochs.

    With ``restore_best=True`` the model gets the weights of its best epoch back at the
    end (a copy of ``model.state_dict()`` is kept whenever the metric improves).
    """

    def __init__(self, monitor: str = "val_loss", patience: int = 5, min_delta: float = 0.0, mode: str = "min",
                 restore_best: bool = True):
        if mode not in ("min", "max"):
            raise ValueError(f"EarlyStopping: mode must be 'min' or 'max', got {mode!r}")
        if not isinstance(patience, int) or patience < 0:
            raise ValueError(f"EarlyStopping: patience must be a non-negative int, got {patience!r}")
        if min_delta < 0:
            raise ValueError(f"EarlyStopping: min_delta must be >= 0, got {min_delta}")
        self.monitor, self.patience, self.min_delta, self.mode = monitor, patience, min_delta, mode
        self.restore_best = restore_best
        self.best = math.inf if mode == "min" else -math.inf
        self.best_epoch = None
        self.best_state: dict | None = None
        self.bad_epochs = 0

    def on_epoch_end(self, state: TrainState, record: dict) -> None:
        if record.get(self.monitor) is None:
            raise KeyError(f"EarlyStopping monitors {self.monitor!r} but the epoch record has only {sorted(record)}")
        value = record[self.monitor]
        improved = value < self.best - self.min_delta if self.mode == "min" else value > self.best + self.min_delta
        if improved:
            self.best, self.best_epoch, self.bad_epochs = value, record["epoch"], 0
            if self.restore_best:
                self.best_state = {k: np.array(v, copy=True) for k, v in state.model.state_dict().items()}
            return
        self.bad_epochs += 1
        if self.bad_epochs > self.patience:
            state.stop = True
            state.stop_reason = (f"early stopping: {self.monitor} did not improve for {self.bad_epochs} epochs "
                                 f"(best {self.best:.6g} at epoch {self.best_epoch})")

    def on_train_end(self, state: TrainState) -> None:
        if self.restore_best and self.best_state is not None and state.stop:
            state.model.load_state_dict(self.best_state)


def _predictions_and_loss(model, loss_fn, xb, yb):
    output = model(xb)
    return output, loss_fn(output, yb)


def evaluate(model, loader, loss_fn=None, metrics=("accuracy",)) -> dict:
    """Loss (sample-weighted mean over batches) and metrics of ``model`` on ``loader``,
    in eval mode and without recording a graph. The loader's position is left as it was."""
    unknown = [m for m in metrics if m not in CLASSIFICATION_METRICS and m not in REGRESSION_METRICS]
    if unknown:
        known = sorted({**CLASSIFICATION_METRICS, **REGRESSION_METRICS})
        raise ValueError(f"unknown metrics {unknown}; choose from {known}")
    was_training = model.training
    model.eval()
    saved_position = loader.state_dict() if hasattr(loader, "state_dict") else None
    total_loss, count, outputs, targets = 0.0, 0, [], []
    try:
        with no_grad():
            for xb, yb in loader:
                output = model(xb)
                n = output.shape[0]
                if loss_fn is not None:
                    total_loss += float(loss_fn(output, yb).item()) * n
                count += n
                outputs.append(backend.to_numpy(output.data))
                targets.append(backend.to_numpy(yb.data))
    finally:
        model.train(was_training)
        if saved_position is not None:
            loader.load_state_dict(saved_position)
    result = {}
    if loss_fn is not None:
        result["loss"] = total_loss / count
    if metrics:
        output, target = np.concatenate(outputs), np.concatenate(targets)
        for name in metrics:
            fn = CLASSIFICATION_METRICS.get(name) or REGRESSION_METRICS[name]
            result[name] = fn(output, target)
    return result


def _progress_bar(iterable, total: int, description: str, enabled: bool):
    if not enabled or not sys.stderr.isatty():
        return iterable
    try:
        from tqdm import tqdm
    except ImportError:  # progress bars are a nicety, never a reason to fail
        return iterable
    return tqdm(iterable, total=total, desc=description, leave=False, dynamic_ncols=True)


def fit(model, loss_fn, optimizer, train_loader, *, epochs: int, val_loader=None, scheduler=None,
        scheduler_interval: str = "epoch", accumulation_steps: int = 1, clip_grad_norm: float | None = None,
        callbacks=(), progress: bool = True, metrics=("accuracy",), scale_lr_with_batch_size: bool = False,
        checkpoint_path=None, checkpoint_every: int | None = None, resume_from=None, log=print,
        noise_scale: bool = False, undo_nonfinite_step: bool = False,
        checkpoint_extra: dict | None = None) -> History:
    """Train ``model`` with mini-batch SGD; return the :class:`History`.

    ``epochs`` is where training ends, counted by the loader: it runs until
    ``train_loader`` has completed that many epochs (a resumed run, or a loader that has
    already done some epochs, continues to the same total, like Keras' ``epochs``).

    ``scheduler_interval``: ``"epoch"`` steps the scheduler after every epoch (StepLR,
    CosineAnnealingLR over epochs), ``"step"`` after every optimizer step (OneCycleLR,
    CyclicLR, warm-up); ReduceLROnPlateau is stepped per epoch with the validation loss
    (the training loss without a validation set).

    ``accumulation_steps=k`` sums the gradients of k loader batches and steps once with
    their average, so k micro-batches of size B/k give the update of one batch of B.

    ``clip_grad_norm``: rescale the (averaged) gradient to at most this global L2 norm.

    Averaging and clipping never rewrite ``.grad``: one fused pass measures the norm of the
    summed gradients, and the optimizer applies ``grad_scale = clip_coef / k`` inside its
    update (``tg.nn.utils.grad_scale_for_step``, ``optimizer.step(grad_scale=...)``); the
    reference optimizers (``fused=False``) compute the same numbers in NumPy.

    ``noise_scale=True`` (needs ``accumulation_steps >= 2``) records the gradient noise
    scale ``B_simple = tr(Sigma) / |G|^2`` of McCandlish et al. (2018), *An Empirical Model
    of Large-Batch Training*, per epoch as ``"noise_scale"`` in the History: the k
    micro-batch gradients of each step give unbiased estimates of ``tr(Sigma)`` (their
    spread times the micro-batch size) and of ``|G|^2`` (the squared norm of their mean
    minus its expected noise), summed over the epoch's steps before dividing
    (:class:`tg.nn.utils.GradientNoiseScale` has the derivation). It roughly says which
    batch size the problem can use well at this point of training.

    ``scale_lr_with_batch_size``: with a loader that has a batch-size schedule, multiply
    the learning rate by ``loader.lr_scale(epoch)`` (the linear scaling rule, Goyal et
    al. 2017) as the batch size changes from epoch to epoch.

    ``checkpoint_path``: save a checkpoint there after every epoch, and every
    ``checkpoint_every`` optimizer steps. ``resume_from``: continue a run from such a
    checkpoint; the result is bit-for-bit the run that was never interrupted (on the CPU).
    ``checkpoint_extra``: anything else each checkpoint should carry, under ``"extra"``
    (``tinygrad-sgd train`` keeps there what ``predict`` needs to rebuild the model).

    A NaN or Inf loss or gradient raises :class:`NonFiniteError` naming the epoch and step,
    before the optimizer applies it. The parameters are checked after every step too (a
    finite gradient times a huge learning rate overflows): a step that made one NaN or Inf
    raises it before anything is logged or checkpointed, so a checkpoint never holds a
    non-finite value. ``undo_nonfinite_step=True`` also restores the parameters, the
    optimizer state and the loader's position from before that step (copies taken before
    every step; the cost is in docs/benchmarks.md), so training can go on from there in
    the same process (another ``fit`` call with a smaller learning rate).

    **On several MPI ranks** (``mpiexec``; the model a ``tg.nn.parallel.DistributedDataParallel``,
    the loader's sampler a ``DistributedSampler``) the run is data-parallel: the gradients
    are summed over the ranks and the world size joins ``grad_scale``, the loss and metrics are
    those of the global batch, and only rank 0 logs and writes checkpoints
    (``tg.distributed.TrainingSync``; docs/distributed.md).

    ``resume_from`` is all or nothing: when any piece of the checkpoint does not fit
    (another model, optimizer, scheduler or dataset), it raises and nothing has changed.
    """
    if not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"epochs must be a positive int, got {epochs!r}")
    if not isinstance(accumulation_steps, int) or accumulation_steps < 1:
        raise ValueError(f"accumulation_steps must be a positive int, got {accumulation_steps!r}")
    if clip_grad_norm is not None and not clip_grad_norm > 0:
        raise ValueError(f"clip_grad_norm must be > 0, got {clip_grad_norm!r}")
    if noise_scale and accumulation_steps < 2:
        raise ValueError("noise_scale=True needs accumulation_steps >= 2: the noise scale compares the "
                         f"micro-batch gradients of one step, got accumulation_steps={accumulation_steps}")
    if scheduler_interval not in ("epoch", "step"):
        raise ValueError(f"scheduler_interval must be 'epoch' or 'step', got {scheduler_interval!r}")
    if checkpoint_every is not None and (not isinstance(checkpoint_every, int) or checkpoint_every < 1):
        raise ValueError(f"checkpoint_every must be a positive int, got {checkpoint_every!r}")
    if checkpoint_every is not None and checkpoint_path is None:
        raise ValueError("checkpoint_every needs checkpoint_path")
    for callback in callbacks:
        if not isinstance(callback, Callback):
            raise TypeError(f"callbacks must be tg.train.Callback instances, got {type(callback).__name__}")
    # Several MPI ranks (a DistributedDataParallel model): reduced gradients and metrics, rank 0 writes.
    sync = distributed.TrainingSync(model, optimizer, train_loader, noise_scale=noise_scale)
    if checkpoint_path is not None:
        sync.run_on_main(check_writable, checkpoint_path)  # now, not after the first epoch
    plateau = isinstance(scheduler, ReduceLROnPlateau)
    params = [p for group in optimizer.param_groups for p in group["params"]]
    history = History()
    noise = GradientNoiseScale() if noise_scale else None
    guard = StepGuard(params, optimizer, undo=bool(undo_nonfinite_step))
    state = TrainState(model, optimizer, history)
    # Running sums of the epoch in progress (checkpointed, so a resumed epoch reports
    # the same numbers as an uninterrupted one).
    epoch_sums = {"loss": 0.0, "correct": 0, "samples": 0, "time": 0.0}
    lr_scale = 1.0
    if resume_from is not None:
        saved = load_checkpoint(resume_from)
        _restore(saved, model, optimizer, scheduler, train_loader, history, state)
        epoch_sums, lr_scale = dict(saved["loop"]["epoch_sums"]), saved["loop"]["lr_scale"]

    def checkpoint() -> None:
        if not sync.is_main:
            return
        save_checkpoint(checkpoint_path, {
            "model": model.state_dict(), "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict() if scheduler is not None else None,
            "loader": train_loader.state_dict(), "rng": rng.get_rng_state(), "history": history.state_dict(),
            "loop": {"step": state.step, "epoch_sums": dict(epoch_sums), "lr_scale": lr_scale},
            **({"extra": checkpoint_extra} if checkpoint_extra is not None else {}),
        })

    for callback in callbacks:
        callback.on_train_begin(state)
    model.train()
    while train_loader.epoch < epochs and not state.stop:
        epoch = state.epoch = train_loader.epoch
        if scale_lr_with_batch_size:  # the linear scaling rule follows the batch size
            factor = train_loader.lr_scale(epoch) / lr_scale
            for group in optimizer.param_groups:
                group["lr"] *= factor
            lr_scale *= factor
        started = time.perf_counter()
        in_group = 0  # micro-batches accumulated since the last optimizer step
        # Where the loader stood before the group in progress: undo_nonfinite_step puts it back too.
        before_group = train_loader.state_dict() if undo_nonfinite_step else None
        batches = _progress_bar(train_loader, len(train_loader), f"epoch {epoch + 1}/{epochs}",
                                progress and sync.is_main)
        for xb, yb in batches:
            output, loss = _predictions_and_loss(model, loss_fn, xb, yb)
            correct = int((output.data.argmax(axis=1) == yb.data).sum()) \
                if output.ndim == 2 and yb.dtype.kind in "iu" else 0
            # the global batch's loss, samples and correct count (this batch's in one process)
            loss_value, n, correct = sync.global_batch(float(loss.item()), xb.shape[0], correct)
            if not math.isfinite(loss_value):
                optimizer.zero_grad()
                raise NonFiniteError(f"non-finite loss {loss_value} at epoch {epoch}, step {state.step + 1}; "
                                     "the parameters keep their last finite values", epoch=epoch,
                                     step=state.step + 1, history=history)
            sync.backward(loss, last=in_group + 1 == accumulation_steps or train_loader.epoch != epoch)
            in_group += 1
            if noise is not None:
                noise.add(params)
            epoch_sums["loss"] += loss_value * n
            epoch_sums["samples"] += n
            epoch_sums["correct"] += correct
            group_done = in_group == accumulation_steps or train_loader.epoch != epoch
            if not group_done:
                continue
            # ---- one optimizer step on the average of the group's (clipped) gradients
            grad_scale, grad_norm = grad_scale_for_step(params, accumulated=in_group, world_size=sync.grad_divisor,
                                                        max_norm=clip_grad_norm,
                                                        fused=None if getattr(optimizer, "fused", False) else False)
            if noise is not None:
                noise.end(n)
            if not math.isfinite(grad_norm):
                optimizer.zero_grad()
                raise NonFiniteError(f"non-finite gradient norm {grad_norm} at epoch {epoch}, step "
                                     f"{state.step + 1}; the parameters keep their last finite values",
                                     epoch=epoch, step=state.step + 1, history=history)
            lr = optimizer.param_groups[0]["lr"]
            guard.save()
            optimizer.step(grad_scale=grad_scale)
            optimizer.zero_grad()
            if not guard.finite():
                undone = guard.restore()
                if undone:
                    train_loader.load_state_dict(before_group)  # the group's batches come again
                raise NonFiniteError(
                    f"the update at epoch {epoch}, step {state.step + 1} made a parameter NaN or Inf (loss "
                    f"{loss_value:.6g} and gradient norm {grad_norm:.6g} were finite: is the learning rate {lr:g} "
                    "too large?); " + ("the step was undone: the parameters, the optimizer state and the "
                                       "loader's position are as before it" if undone else
                                       "the parameters now hold NaN/Inf; nothing of this step was logged or "
                                       "checkpointed (resume from the last checkpoint, or pass "
                                       "undo_nonfinite_step=True to restore the values from before the step)"),
                    epoch=epoch, step=state.step + 1, history=history)
            if undo_nonfinite_step:
                before_group = train_loader.state_dict()
            state.step += 1
            history.log_step(epoch=epoch, step=state.step, loss=loss_value, lr=lr, batch_size=n * in_group,
                             grad_norm=grad_norm)
            in_group = 0
            if scheduler is not None and scheduler_interval == "step" and not plateau:
                scheduler.step()
            for callback in callbacks:
                callback.on_step_end(state)
            if checkpoint_every is not None and state.step % checkpoint_every == 0:
                epoch_sums["time"] += time.perf_counter() - started
                started = time.perf_counter()
                checkpoint()
        # ---- end of epoch: evaluate, schedule, record
        elapsed = epoch_sums["time"] + time.perf_counter() - started
        sync.sync_buffers()  # several ranks: rank 0's running statistics everywhere before evaluating
        record = {"epoch": epoch, "step": state.step, "train_loss": epoch_sums["loss"] / epoch_sums["samples"]}
        if "accuracy" in metrics and epoch_sums["correct"]:
            record["train_accuracy"] = epoch_sums["correct"] / epoch_sums["samples"]
        if val_loader is not None:
            for name, value in evaluate(model, val_loader, loss_fn, metrics).items():
                record[f"val_{name}"] = value
        record["lr"] = optimizer.param_groups[0]["lr"]
        if noise is not None:
            record["noise_scale"] = noise.epoch_value()
        record["time_s"] = elapsed
        record["samples_per_s"] = epoch_sums["samples"] / elapsed if elapsed > 0 else float("nan")
        if scheduler is not None:
            if plateau:
                scheduler.step(record.get("val_loss", record["train_loss"]))
            elif scheduler_interval == "epoch":
                scheduler.step()
        history.log_epoch(record)
        epoch_sums = {"loss": 0.0, "correct": 0, "samples": 0, "time": 0.0}
        for callback in callbacks:
            callback.on_epoch_end(state, record)
        if log is not None and progress and sync.is_main:
            log(_epoch_line(record, epochs))
        if checkpoint_path is not None:
            checkpoint()
    if state.stop and log is not None and progress and sync.is_main:
        log(state.stop_reason)
    for callback in callbacks:
        callback.on_train_end(state)
    return history


def _epoch_line(record: dict, epochs: int) -> str:
    parts = [f"epoch {record['epoch'] + 1}/{epochs}", f"train_loss {record['train_loss']:.4f}"]
    for key in ("train_accuracy", "val_loss", "val_accuracy", "val_mse", "val_r2"):
        if key in record:
            parts.append(f"{key} {record[key]:.4f}")
    parts.append(f"lr {record['lr']:.4g}")
    parts.append(f"{record['samples_per_s']:.0f} samples/s")
    return "  ".join(parts)


def _restore(saved: dict, model, optimizer, scheduler, loader, history: History, state: TrainState) -> None:
    """Load every piece of a checkpoint, all or nothing.

    The structure is checked first (every piece present, a scheduler exactly when this
    run has one, the loop counters); then the pieces are loaded in turn, each validating
    before it changes anything. If a later piece is refused (an SGD checkpoint into Adam,
    another dataset's loader state) the pieces already loaded are put back from copies
    taken before, so a refused resume leaves the model, optimizer, scheduler, loader, RNG
    and history exactly as they were.
    """
    if not isinstance(saved, dict):
        raise TypeError("the checkpoint does not hold a dict: not written by tg.train.fit")
    for key in ("model", "optimizer", "scheduler", "loader", "rng", "history", "loop"):
        if key not in saved:
            raise KeyError(f"checkpoint lacks {key!r}: not written by tg.train.fit")
    if (saved["scheduler"] is None) != (scheduler is None):
        raise ValueError("the checkpoint was written " + ("without" if saved["scheduler"] is None else "with")
                         + " a scheduler, but this run " + ("has one" if scheduler is not None else "has none"))
    loop = saved["loop"]
    number = (int, float)
    if not isinstance(loop, dict) or not {"step", "epoch_sums", "lr_scale"} <= set(loop) \
            or not isinstance(loop["epoch_sums"], dict) \
            or set(loop["epoch_sums"]) != {"loss", "correct", "samples", "time"} \
            or not all(isinstance(v, number) and not isinstance(v, bool) for v in loop["epoch_sums"].values()) \
            or not isinstance(loop["step"], int) or isinstance(loop["step"], bool) or loop["step"] < 0 \
            or not isinstance(loop["lr_scale"], number) or not math.isfinite(loop["lr_scale"]) \
            or loop["lr_scale"] <= 0:
        raise ValueError("the checkpoint's 'loop' entry is malformed: not written by tg.train.fit")
    pieces = [(model, saved["model"]), (optimizer, saved["optimizer"])]
    if scheduler is not None:
        pieces.append((scheduler, saved["scheduler"]))
    pieces += [(loader, saved["loader"]), (history, saved["history"])]
    # Copies of the current state; state_dict() returns copies, so loading them back is exact.
    before = [(obj, obj.state_dict()) for obj, _ in pieces]
    rng_before = rng.get_rng_state()
    loaded = []
    try:
        for obj, piece in pieces:
            loaded.append(obj)
            obj.load_state_dict(piece)
        rng.set_rng_state(saved["rng"])
    except BaseException:
        for obj, copy in reversed(before):
            if any(obj is done for done in loaded):
                obj.load_state_dict(copy)
        rng.set_rng_state(rng_before)
        raise
    state.step = saved["loop"]["step"]
