"""``tinygrad-sgd`` (also ``python -m tinygrad_sgd``): train, compare CPU with GPU, benchmark.

    tinygrad-sgd train                      # the main job: an MLP on the bundled digits
    tinygrad-sgd train --model cnn --optimizer adam --lr 0.003 --schedule onecycle
    tinygrad-sgd compare --epochs 3         # same run on CPU and GPU, side by side
    tinygrad-sgd bench                      # the benchmark scripts (from a source checkout)
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

OPTIMIZERS = ("sgd", "adam", "adamw", "rmsprop", "adagrad")
SCHEDULES = ("none", "step", "exponential", "cosine", "cyclic", "onecycle", "warmup")
BATCH_SCHEDULES = ("constant", "warmup", "step")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tinygrad-sgd", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)

    def add_run_options(sub):
        sub.add_argument("--model", choices=("mlp", "cnn"), default="mlp")
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
        sub.add_argument("--test-fraction", type=float, default=0.2)
        sub.add_argument("--quiet", action="store_true", help="no progress output")

    train = commands.add_parser("train", help="train on the bundled digits (the README's main job)")
    add_run_options(train)
    train.add_argument("--device", default="auto", help="auto (GPU when present), cpu, cuda, cuda:N")
    train.add_argument("--run-dir", default=None, help="where outputs go (default runs/<date-time>)")
    train.add_argument("--resume", default=None, help="continue from a checkpoint.npz")
    train.add_argument("--checkpoint-every", type=int, default=None, help="also checkpoint every N steps")

    compare = commands.add_parser("compare", help="the same run on CPU and GPU: time and drift")
    add_run_options(compare)

    bench = commands.add_parser("bench", help="run the benchmark scripts of a source checkout")
    bench.add_argument("names", nargs="*", help="benchmark names (default: all), e.g. op_overhead")
    commands.add_parser("doctor", help="versions, threads, GPUs, extras and a smoke test per device")
    return parser


# ----------------------------------------------------------------------------- building a run


def make_model(args, tg):
    nn = tg.nn
    if args.model == "mlp":
        layers = [nn.Linear(64, args.hidden), nn.ReLU()]
        if args.dropout:
            layers.append(nn.Dropout(args.dropout))
        layers.append(nn.Linear(args.hidden, 10))
        return nn.Sequential(*layers)
    layers = [nn.Conv2d(1, 16, kernel_size=3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
              nn.Conv2d(16, 32, kernel_size=3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten()]
    if args.dropout:
        layers.append(nn.Dropout(args.dropout))
    layers.append(nn.Linear(32 * 2 * 2, 10))
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
    return sched.LinearLR(optimizer, start_factor=0.1, total_iters=max(1, args.epochs // 4)), "epoch"


def make_batch_schedule(args, tg):
    data = tg.data
    if args.batch_size_schedule == "constant":
        return None
    if args.batch_size_schedule == "warmup":
        return data.LinearWarmupBatchSize(start=max(1, args.batch_size // 4), end=args.batch_size, warmup_epochs=5,
                                          base_batch_size=args.batch_size)
    return data.StepBatchSize(args.batch_size, step_size=5, factor=2, base_batch_size=args.batch_size)


def prepare(args, device: str):
    """Data, model, optimizer, scheduler and loaders for one run on ``device``."""
    import tinygrad_sgd as tg

    tg.manual_seed(args.seed)
    (x_train, y_train), (x_test, y_test) = tg.data.load_digits(split=args.test_fraction, seed=args.seed,
                                                                flatten=args.model == "mlp")
    schedule = make_batch_schedule(args, tg)
    loader_options = dict(batch_size_schedule=schedule) if schedule is not None else dict(batch_size=args.batch_size)
    train_loader = tg.data.DataLoader(tg.data.TensorDataset(x_train, y_train), shuffle=True, seed=args.seed,
                                      device=device, **loader_options)
    test_loader = tg.data.DataLoader(tg.data.TensorDataset(x_test, y_test), batch_size=512, device=device)
    model = make_model(args, tg).to(device)
    optimizer = make_optimizer(args, tg, model.parameters())
    scheduler, interval = make_scheduler(args, tg, optimizer, len(train_loader) // args.accumulation or 1)
    return tg, model, optimizer, scheduler, interval, train_loader, test_loader


def _fit(args, tg, model, optimizer, scheduler, interval, train_loader, test_loader, **extra):
    return tg.train.fit(model, tg.nn.CrossEntropyLoss(), optimizer, train_loader, epochs=args.epochs,
                        val_loader=test_loader, scheduler=scheduler, scheduler_interval=interval,
                        accumulation_steps=args.accumulation, clip_grad_norm=args.clip,
                        # warm-up follows the linear scaling rule; the step increase
                        # replaces LR decay, so its LR stays put (Smith et al. 2018)
                        scale_lr_with_batch_size=args.batch_size_schedule == "warmup",
                        metrics=("accuracy", "precision", "recall", "f1"), progress=not args.quiet, **extra)


# ----------------------------------------------------------------------------- commands


def command_train(args) -> int:
    import tinygrad_sgd as tg

    device = tg.backend.best_device() if args.device == "auto" else tg.backend.parse_device(args.device)
    run_dir = Path(args.run_dir or Path("runs") / time.strftime("%Y%m%d-%H%M%S"))
    run_dir.mkdir(parents=True, exist_ok=True)
    tg, model, optimizer, scheduler, interval, train_loader, test_loader = prepare(args, device)
    say = (lambda *a: None) if args.quiet else print
    say(f"tinygrad_sgd {tg.__version__}: {args.model} on the digits ({len(train_loader.dataset)} train / "
        f"{len(test_loader.dataset)} test), {args.optimizer} lr={optimizer.param_groups[0]['lr']:g}, "
        f"batch {args.batch_size}, {args.epochs} epochs, device {device}")
    started = time.perf_counter()
    checkpoint = run_dir / "checkpoint.npz"
    history = _fit(args, tg, model, optimizer, scheduler, interval, train_loader, test_loader,
                   checkpoint_path=checkpoint, checkpoint_every=args.checkpoint_every, resume_from=args.resume)
    elapsed = time.perf_counter() - started
    final = tg.train.evaluate(model, test_loader, tg.nn.CrossEntropyLoss(), ("accuracy", "f1"))
    history.to_csv(run_dir / "history.csv")
    history.to_csv(run_dir / "history_steps.csv", level="step")
    history.plot(run_dir / "loss.png", title=f"{args.model} / {args.optimizer} on digits")
    say(f"test accuracy {final['accuracy']:.4f}  macro F1 {final['f1']:.4f}  test loss {final['loss']:.4f}  "
        f"({elapsed:.1f} s)")
    say(f"wrote {run_dir / 'history.csv'}, {run_dir / 'loss.png'}, {checkpoint}")
    return 0


def command_compare(args) -> int:
    import tinygrad_sgd as tg

    devices = ["cpu"] + (["cuda:0"] if tg.gpu_available() else [])
    if len(devices) == 1:
        print("no CUDA GPU found (CuPy missing or no device): running on the CPU only, nothing to compare against")
    runs = {}
    for device in devices:
        tg_, model, optimizer, scheduler, interval, train_loader, test_loader = prepare(args, device)
        args_quiet = argparse.Namespace(**{**vars(args), "quiet": True})
        started = time.perf_counter()
        history = _fit(args_quiet, tg_, model, optimizer, scheduler, interval, train_loader, test_loader, log=None)
        total = time.perf_counter() - started
        params = {k: np.asarray(v, dtype=np.float64) for k, v in model.state_dict().items()}
        runs[device] = (history, total, params)
        epoch_times = [r["time_s"] for r in history.epochs]
        print(f"{device:>7}: {np.median(epoch_times):.3f} s/epoch (median of {len(epoch_times)}), "
              f"final val accuracy {history.epochs[-1].get('val_accuracy', float('nan')):.4f}")
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


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "epochs", 1) < 1 or getattr(args, "batch_size", 1) < 1 or getattr(args, "accumulation", 1) < 1:
        build_parser().error("--epochs, --batch-size and --accumulation must be at least 1")
    commands = {"train": command_train, "compare": command_compare, "bench": command_bench,
                "doctor": command_doctor}
    return commands[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
