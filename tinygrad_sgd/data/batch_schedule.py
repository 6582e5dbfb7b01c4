r"""Batch-size schedules: the batch size as a function of the epoch.

Why change the batch size at all? For SGD with learning rate :math:`\eta`, batch size
:math:`B` and training-set size :math:`N`, the gradient noise that drives (and limits)
training has scale

.. math:: g = \eta \left(\frac{N}{B} - 1\right) \approx \frac{\eta N}{B}
          \qquad (B \ll N)

(Smith, Kindermans, Ying & Le, "Don't Decay the Learning Rate, Increase the Batch Size",
ICLR 2018, arXiv:1711.00489). Two recipes follow from it:

* **Linear scaling rule** (Goyal et al., "Accurate, Large Minibatch SGD: Training
  ImageNet in 1 Hour", 2017, arXiv:1706.02677): when the batch is multiplied by
  :math:`k`, multiply the learning rate by :math:`k` too, which keeps :math:`g` (and so
  the training curve per epoch) about the same. Every schedule here gives that factor as
  :meth:`BatchSizeSchedule.lr_scale` ``(epoch) = batch_size(epoch) / base_batch_size``;
  :func:`linear_scaled_lr` applies it to a learning rate. Goyal et al. pair it with a
  learning-rate warm-up over the first epochs, because the rule breaks down early in
  training when the weights change fast.
* **Increase the batch instead of decaying the rate** (Smith et al.): a step decay
  :math:`\eta \to \eta / k` and a step increase :math:`B \to kB` lower :math:`g` by the
  same factor, so they reach the same accuracy after the same number of epochs — but the
  larger batch takes :math:`k` times fewer parameter updates. Here the learning rate is
  *not* scaled with the batch (that would undo the noise reduction); once the batch hits
  its memory cap, the remaining factor goes back into the learning rate:
  :meth:`StepBatchSize.lr_factor`.

A :class:`~tinygrad_sgd.data.DataLoader` given ``batch_size_schedule=`` asks the
schedule for each epoch's batch size when that epoch starts.
"""

from __future__ import annotations

import math

from ._checks import check_int


def linear_scaled_lr(base_lr: float, batch_size: int, base_batch_size: int) -> float:
    r"""Goyal et al.'s linear scaling rule: :math:`\eta = \eta_{base} \cdot B / B_{base}`.

    ``base_lr`` is a learning rate tuned at batch size ``base_batch_size``; the result is
    the rate that keeps the SGD noise scale :math:`\eta N / B` unchanged at ``batch_size``.
    """
    base_lr = float(base_lr)
    if not math.isfinite(base_lr) or base_lr < 0:
        raise ValueError(f"base_lr must be a finite non-negative number, got {base_lr}")
    batch_size = check_int(batch_size, "batch_size", minimum=1)
    base_batch_size = check_int(base_batch_size, "base_batch_size", minimum=1)
    return base_lr * batch_size / base_batch_size


class BatchSizeSchedule:
    """Base class: ``batch_size(epoch)`` gives the batch size for a 0-based epoch.

    ``base_batch_size`` is the batch size the learning rate was tuned for (by default the
    schedule's epoch-0 batch size); ``lr_scale(epoch)`` is the linear-scaling factor
    ``batch_size(epoch) / base_batch_size``.
    """

    def __init__(self, base_batch_size: int | None = None):
        self.base_batch_size = (self.batch_size(0) if base_batch_size is None
                                else check_int(base_batch_size, "base_batch_size", minimum=1))

    def batch_size(self, epoch: int) -> int:  # pragma: no cover - abstract
        raise NotImplementedError

    def __call__(self, epoch: int) -> int:
        return self.batch_size(epoch)

    def lr_scale(self, epoch: int) -> float:
        """``batch_size(epoch) / base_batch_size``: multiply the base learning rate by it to
        follow the linear scaling rule (Goyal et al. 2017)."""
        return self.batch_size(epoch) / self.base_batch_size


class ConstantBatchSize(BatchSizeSchedule):
    """The same batch size every epoch."""

    def __init__(self, batch_size: int, base_batch_size: int | None = None):
        self.value = check_int(batch_size, "batch_size", minimum=1)
        super().__init__(base_batch_size)

    def batch_size(self, epoch: int) -> int:
        check_int(epoch, "epoch", minimum=0)
        return self.value

    def __repr__(self) -> str:
        return f"ConstantBatchSize({self.value})"


class LinearWarmupBatchSize(BatchSizeSchedule):
    r"""Grow the batch linearly from ``start`` to ``end`` over ``warmup_epochs``, then hold.

    :math:`B(e) = \mathrm{round}(B_{start} + (B_{end} - B_{start}) \cdot e / E_{warm})`
    for :math:`e < E_{warm}`, and :math:`B_{end}` after. Small batches while the weights
    move fast, large ones (cheaper epochs, fewer updates) once training settles — the
    batch-size ramp used for large language models (e.g. GPT-3, Brown et al. 2020).
    """

    def __init__(self, start: int, end: int, warmup_epochs: int, base_batch_size: int | None = None):
        self.start = check_int(start, "start", minimum=1)
        self.end = check_int(end, "end", minimum=1)
        self.warmup_epochs = check_int(warmup_epochs, "warmup_epochs", minimum=0)
        super().__init__(base_batch_size)

    def batch_size(self, epoch: int) -> int:
        epoch = check_int(epoch, "epoch", minimum=0)
        if epoch >= self.warmup_epochs:
            return self.end
        # floor(x + 0.5) rather than round(): Python's round() sends halves to even.
        return max(1, math.floor(self.start + (self.end - self.start) * epoch / self.warmup_epochs + 0.5))

    def __repr__(self) -> str:
        return f"LinearWarmupBatchSize(start={self.start}, end={self.end}, warmup_epochs={self.warmup_epochs})"


class StepBatchSize(BatchSizeSchedule):
    r"""Multiply the batch by ``factor`` at each milestone, up to ``max_batch_size``.

    Smith et al. (2018): where a step schedule would divide the learning rate by ``factor``
    at epochs ``milestones`` (or every ``step_size`` epochs), multiply the batch size by
    ``factor`` instead and keep the learning rate. With :math:`k(e)` milestones passed,

    .. math:: B_{wanted}(e) = B_0 \cdot \mathrm{factor}^{k(e)}, \qquad
              B(e) = \min(B_{wanted}(e), B_{max}).

    Give exactly one of ``milestones`` (epochs, increasing) and ``step_size``.
    """

    def __init__(self, batch_size: int, *, milestones=None, step_size: int | None = None, factor: int = 2,
                 max_batch_size: int | None = None, base_batch_size: int | None = None):
        self.initial = check_int(batch_size, "batch_size", minimum=1)
        if (milestones is None) == (step_size is None):
            raise ValueError("StepBatchSize: give exactly one of milestones= and step_size=")
        self.milestones: list[int] | None
        self.step_size: int | None
        if milestones is not None:
            self.milestones = [check_int(m, "milestone", minimum=1) for m in milestones]
            if any(b <= a for a, b in zip(self.milestones, self.milestones[1:])):
                raise ValueError(f"StepBatchSize: milestones must be strictly increasing, got {self.milestones}")
            self.step_size = None
        else:
            self.milestones = None
            self.step_size = check_int(step_size, "step_size", minimum=1)
        self.factor = check_int(factor, "factor", minimum=2)
        self.max_batch_size = (None if max_batch_size is None
                               else check_int(max_batch_size, "max_batch_size", minimum=self.initial))
        super().__init__(base_batch_size)

    def steps_taken(self, epoch: int) -> int:
        """How many milestones lie at or before ``epoch``."""
        epoch = check_int(epoch, "epoch", minimum=0)
        if self.milestones is not None:
            return sum(1 for m in self.milestones if m <= epoch)
        assert self.step_size is not None  # __init__ sets exactly one of the two
        return epoch // self.step_size

    def wanted_batch_size(self, epoch: int) -> int:
        """The batch size the schedule asks for before the ``max_batch_size`` cap."""
        return self.initial * self.factor ** self.steps_taken(epoch)

    def batch_size(self, epoch: int) -> int:
        wanted = self.wanted_batch_size(epoch)
        return wanted if self.max_batch_size is None else min(wanted, self.max_batch_size)

    def lr_factor(self, epoch: int) -> float:
        r"""The learning-rate decay the batch could not absorb: ``B(e) / B_wanted(e)``.

        1 until the batch reaches ``max_batch_size``; after that each further milestone
        divides it by ``factor``, as Smith et al. do when the batch stops growing. Keeping
        :math:`\eta \cdot \mathrm{lr\_factor}(e) / B(e) = \eta / B_{wanted}(e)` keeps the
        noise scale on the schedule's intended path.
        """
        return self.batch_size(epoch) / self.wanted_batch_size(epoch)

    def __repr__(self) -> str:
        when = f"milestones={self.milestones}" if self.milestones is not None else f"step_size={self.step_size}"
        return (f"StepBatchSize({self.initial}, {when}, factor={self.factor}, "
                f"max_batch_size={self.max_batch_size})")
