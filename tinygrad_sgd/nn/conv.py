"""Convolution and pooling layers over NCHW images (torch names, shapes and defaults)."""

from __future__ import annotations

from ..tensor import Tensor
from . import functional as F
from .layers import _count, _new_parameter, _uniform_fan_in_
from .module import Module


class Conv2d(Module):
    """2-D cross-correlation: ``(N, C_in, H, W) -> (N, C_out, H_out, W_out)``::

        y[n, o, y, x] = b[o] + sum_{c, i, j} W[o, c, i, j] * x_pad[n, c, y*s_h + i*d_h, x*s_w + j*d_w]
        H_out = (H + 2 p_h - d_h (k_h - 1) - 1) // s_h + 1

    ``weight`` is ``(out_channels, in_channels, kh, kw)``, ``bias`` ``(out_channels,)``,
    initialised U(-1/sqrt(fan_in), 1/sqrt(fan_in)) with ``fan_in = in_channels*kh*kw``
    (torch's default), so weights copied from ``torch.nn.Conv2d`` give the same outputs
    and gradients. ``padding`` is an int, a pair, ``'valid'`` or ``'same'`` (zeros);
    ``groups`` other than 1 is not supported. Forward is im2col (a stride-tricks view
    and one batched matmul); backward is the transposed convolution (col2im, one slice
    addition per kernel offset) and a batched matmul for the weight.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0, dilation=1,
                 bias: bool = True, device=None, dtype=None):
        super().__init__()
        name = "Conv2d"
        self.in_channels = _count(in_channels, "in_channels", name)
        self.out_channels = _count(out_channels, "out_channels", name)
        self.kernel_size = F._pair(kernel_size, "kernel_size", name, 1)
        self.stride = F._pair(stride, "stride", name, 1)
        self.dilation = F._pair(dilation, "dilation", name, 1)
        F._conv_pads(padding, self.kernel_size, self.stride, self.dilation, name)  # validate now, not at first call
        self.padding = padding if isinstance(padding, str) else F._pair(padding, "padding", name, 0)
        self.weight = _new_parameter((self.out_channels, self.in_channels) + self.kernel_size, device, dtype)
        if bias:
            self.bias = _new_parameter((self.out_channels,), device, dtype)
        else:
            self.register_parameter("bias", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        _uniform_fan_in_(self.weight, self.bias, self.in_channels * self.kernel_size[0] * self.kernel_size[1])

    def forward(self, input: Tensor) -> Tensor:
        if isinstance(input, Tensor) and input.ndim in (3, 4) and input.shape[-3] != self.in_channels:
            raise ValueError(f"Conv2d: expected input with {self.in_channels} channels (in_channels) at axis "
                             f"{input.ndim - 3}, got shape {input.shape}")
        return F.conv2d(input, self.weight, self.bias, self.stride, self.padding, self.dilation)

    def extra_repr(self) -> str:
        text = f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}"
        if self.padding not in ((0, 0), "valid"):
            text += f", padding={self.padding!r}" if isinstance(self.padding, str) else f", padding={self.padding}"
        if self.dilation != (1, 1):
            text += f", dilation={self.dilation}"
        return text + ("" if self.bias is not None else ", bias=False")


class MaxPool2d(Module):
    """Max over ``kernel_size`` windows (``stride`` defaults to the kernel size; padding
    counts as -inf). The gradient goes to the first maximum of each window, as torch."""

    def __init__(self, kernel_size, stride=None, padding=0):
        super().__init__()
        self.kernel_size = F._pair(kernel_size, "kernel_size", "MaxPool2d", 1)
        self.stride = self.kernel_size if stride is None else F._pair(stride, "stride", "MaxPool2d", 1)
        self.padding = F._pair(padding, "padding", "MaxPool2d", 0)

    def forward(self, input: Tensor) -> Tensor:
        return F.max_pool2d(input, self.kernel_size, self.stride, self.padding)

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"


class AvgPool2d(Module):
    """Mean over ``kernel_size`` windows; zero padding is counted in the mean unless
    ``count_include_pad=False`` (torch's default is True)."""

    def __init__(self, kernel_size, stride=None, padding=0, count_include_pad: bool = True):
        super().__init__()
        self.kernel_size = F._pair(kernel_size, "kernel_size", "AvgPool2d", 1)
        self.stride = self.kernel_size if stride is None else F._pair(stride, "stride", "AvgPool2d", 1)
        self.padding = F._pair(padding, "padding", "AvgPool2d", 0)
        self.count_include_pad = bool(count_include_pad)

    def forward(self, input: Tensor) -> Tensor:
        return F.avg_pool2d(input, self.kernel_size, self.stride, self.padding, self.count_include_pad)

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"
