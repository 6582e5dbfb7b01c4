"""Optimizers and learning-rate schedules (tg.optim).

Every optimizer writes its algorithm out in its docstring, names its paper, and keeps
a readable reference update (``_single_tensor_*``, the specification) next to its fused
update (``_fused_*``: one multi-tensor Numba kernel call over the parameters, gradients and
state arrays of a group, ``tinygrad_sgd.kernels``). ``fused=None`` (the default) takes the
fused update where the kernels apply, ``fused=False`` the reference; both give the same
numbers and checkpoints::

    opt = tg.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    sched = tg.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=100)
    for xb, yb in loader:
        opt.zero_grad(); loss_fn(model(xb), yb).backward(); opt.step()
    sched.step()
"""

from . import lr_scheduler
from .adagrad import Adagrad
from .adam import Adam
from .adamw import AdamW
from .optimizer import Optimizer
from .rmsprop import RMSprop
from .scaling import scale_lr_linearly, set_lr_for_batch_size
from .sgd import SGD
from .sparse_adam import SparseAdam

__all__ = ["Optimizer", "SGD", "Adam", "AdamW", "RMSprop", "Adagrad", "SparseAdam", "lr_scheduler",
           "scale_lr_linearly", "set_lr_for_batch_size"]
