"""History: what a training run did, step by step and epoch by epoch.

Per optimizer step: epoch, step, loss, learning rate, batch size, gradient norm (before
clipping). Per epoch: train/validation loss and metrics, wall time, samples per second.
``to_csv`` writes either table; ``plot`` draws the loss curves, the learning rate and the
accuracy into one PNG.
"""

from __future__ import annotations

import csv
import os

STEP_FIELDS = ("epoch", "step", "loss", "lr", "batch_size", "grad_norm")


class History:
    def __init__(self):
        self.steps: dict[str, list] = {name: [] for name in STEP_FIELDS}
        self.epochs: list[dict] = []

    # ------------------------------------------------------------------ recording
    def log_step(self, *, epoch: int, step: int, loss: float, lr: float, batch_size: int, grad_norm: float) -> None:
        for name, value in zip(STEP_FIELDS, (epoch, step, loss, lr, batch_size, grad_norm)):
            self.steps[name].append(value)

    def log_epoch(self, record: dict) -> None:
        self.epochs.append(dict(record))

    def __len__(self) -> int:
        return len(self.steps["step"])

    def epoch_values(self, key: str) -> list:
        """One column of the epoch table (``None`` where an epoch lacks it)."""
        return [record.get(key) for record in self.epochs]

    # ------------------------------------------------------------------ output
    def to_csv(self, path, level: str = "epoch") -> None:
        """Write the epoch table (``level="epoch"``) or the step table (``"step"``)."""
        if level == "step":
            header = list(STEP_FIELDS)
            rows = [list(row) for row in zip(*(self.steps[name] for name in STEP_FIELDS))]
        elif level == "epoch":
            header = []
            for record in self.epochs:
                header.extend(key for key in record if key not in header)
            rows = [[record.get(key, "") for key in header] for record in self.epochs]
        else:
            raise ValueError(f"level must be 'epoch' or 'step', got {level!r}")
        temporary = f"{os.fspath(path)}.tmp"
        with open(temporary, "w", newline="") as file:
            writer = csv.writer(file)
            writer.writerow(header)
            writer.writerows(rows)
        os.replace(temporary, path)

    def plot(self, path=None, title: str | None = None):
        """Loss per step (and per epoch, train and validation), the learning rate, and
        accuracy where recorded. Saves a PNG to ``path`` when given; returns the figure."""
        import matplotlib

        if path is not None:
            matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt

        accuracy_keys = [k for k in ("train_accuracy", "val_accuracy") if any(r.get(k) is not None
                                                                               for r in self.epochs)]
        panels = 3 if accuracy_keys else 2
        figure, axes = plt.subplots(1, panels, figsize=(5 * panels, 3.6))
        steps, losses = self.steps["step"], self.steps["loss"]
        axes[0].plot(steps, losses, lw=0.8, alpha=0.5, label="loss per step")
        ends = self._epoch_end_steps()
        for key, style in (("train_loss", "o-"), ("val_loss", "s-")):
            values = self.epoch_values(key)
            if any(v is not None for v in values):
                axes[0].plot(ends, values, style, label=key.replace("_", " "))
        axes[0].set_xlabel("optimizer step")
        axes[0].set_ylabel("loss")
        if losses and min(losses) > 0:
            axes[0].set_yscale("log")
        axes[0].legend()
        axes[1].plot(steps, self.steps["lr"], color="tab:green")
        axes[1].set_xlabel("optimizer step")
        axes[1].set_ylabel("learning rate")
        if accuracy_keys:
            epochs = [e + 1 for e in self.epoch_values("epoch")]  # 1-based, as the log prints them
            for key in accuracy_keys:
                axes[2].plot(epochs, self.epoch_values(key), "o-", label=key.replace("_", " "))
            axes[2].set_xlabel("epoch")
            axes[2].set_ylabel("accuracy")
            axes[2].legend()
        if title:
            figure.suptitle(title)
        figure.tight_layout()
        if path is not None:
            figure.savefig(path, dpi=100)
            plt.close(figure)
        return figure

    def _epoch_end_steps(self) -> list:
        """The step count at the end of each recorded epoch (x positions of epoch points)."""
        return [record.get("step", i) for i, record in enumerate(self.epochs)]

    # ------------------------------------------------------------------ checkpoint
    def state_dict(self) -> dict:
        return {"steps": {name: list(values) for name, values in self.steps.items()},
                "epochs": [dict(record) for record in self.epochs]}

    def load_state_dict(self, state: dict) -> None:
        """Replace the records with ``state``'s; checked first, so nothing changes when it raises."""
        if not isinstance(state, dict) or not isinstance(state.get("steps"), dict) or "epochs" not in state:
            raise ValueError("History.load_state_dict: expects {'steps': {...}, 'epochs': [...]}")
        steps = state["steps"]
        if set(steps) != set(STEP_FIELDS):
            raise ValueError(f"History.load_state_dict: step fields {sorted(steps)} != {sorted(STEP_FIELDS)}")
        new_steps = {name: list(steps[name]) for name in STEP_FIELDS}
        if len({len(values) for values in new_steps.values()}) != 1:
            raise ValueError("History.load_state_dict: the step fields have different lengths")
        if not all(isinstance(record, dict) for record in state["epochs"]):
            raise ValueError("History.load_state_dict: every epoch record must be a dict")
        self.steps, self.epochs = new_steps, [dict(record) for record in state["epochs"]]

    def __repr__(self) -> str:
        return f"History({len(self)} steps, {len(self.epochs)} epochs)"
