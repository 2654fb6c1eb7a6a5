"""The ODENet field of the ResNet-vs-ODENet thesis (section 4.1.4), after Chen et al. 2018.

``f(t, y) = GN(conv_t(ReLU(GN(conv_t(ReLU(GN(y)))))))`` where ``conv_t`` is a 3x3 convolution
(stride 1, padding 1, with bias) whose input is ``y`` with the time ``t`` concatenated as an
extra constant channel, and ``GN`` is GroupNorm with ``min(32, C)`` groups.
"""

from __future__ import annotations

from collections.abc import Callable

import torch.nn.functional as F
from torch import Tensor, nn

from .._checks import check_choice, check_int
from .activations import ACTIVATIONS
from .base import check_state


class ConcatConv2d(nn.Module):
    """A convolution whose input gets the time t as one extra constant channel (in front).

    By linearity it is computed as the convolution of x by the other channels' kernels plus t
    times that of a zero-padded channel of ones by the time channel's kernel: the same map and
    parameters, without copying x into a concatenation, and with a channel count the
    convolution libraries are tuned for (C, not C + 1; ``benchmarks/runge_kutta.py`` times
    both). ``t``: a number, or a tensor that broadcasts against the output (one time per
    sample: ``(batch, 1, 1, 1)``).
    """

    def __init__(self, channels_in: int, channels_out: int, kernel_size: int = 3, padding: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(channels_in + 1, channels_out, kernel_size, padding=padding)

    def forward(self, t: float | Tensor, x: Tensor) -> Tensor:
        """The convolution of ``[t, x]``."""
        return self.prepared(x)(t, x)

    def prepared(self, like: Tensor) -> Callable[[float | Tensor, Tensor], Tensor]:
        """`forward` on inputs shaped like ``like``, with what the weights alone determine (the
        two kernels, the time channel's map) computed once, for many calls."""
        conv = self.conv
        w_time, w_x = conv.weight.split((1, conv.in_channels - 1), 1)  # one gradient op for both, not two scatters
        ones = like.new_ones(1, 1, *like.shape[2:])
        time = F.conv2d(ones, w_time, None, conv.stride, conv.padding)

        def convolve(t: float | Tensor, x: Tensor) -> Tensor:
            out = F.conv2d(x, w_x, conv.bias, conv.stride, conv.padding)
            return out.addcmul_(time, t) if isinstance(t, Tensor) else out.add_(time * t)  # one kernel for a tensor t

        return convolve


class ODENetField(nn.Module):
    """The thesis's ODE-block field on ``(batch, channels, H, W)`` states (64 channels there).

    Parameters: two `ConcatConv2d` (``(C+1) * C * 9 + C`` each) and three GroupNorms.

    ``activation``: a name of `ACTIVATIONS`; ReLU in the thesis. ReLU makes
    the field non-smooth: adaptive solvers then
    need many more steps, and adjoint gradients agree with direct backprop only to about 1e-3
    (float64, rtol 1e-8) instead of 1e-8 with ``"softplus"`` (see docs/solvers.md).
    """

    def __init__(self, channels: int = 64, groups: int | None = None, activation: str = "relu"):
        super().__init__()
        self.features = check_int("channels", channels)
        groups = min(32, channels) if groups is None else check_int("groups", groups)
        if channels % groups:
            raise ValueError(f"groups must divide channels ({channels}); got {groups}")
        self.norm1 = nn.GroupNorm(groups, channels)
        self.conv1 = ConcatConv2d(channels, channels)
        self.norm2 = nn.GroupNorm(groups, channels)
        self.conv2 = ConcatConv2d(channels, channels)
        self.norm3 = nn.GroupNorm(groups, channels)
        self.activation = ACTIVATIONS[check_choice("activation", activation, tuple(ACTIVATIONS))]

    def forward(self, t: float | Tensor, y: Tensor) -> Tensor:
        """``f(t, y)``."""
        return self.prepared(y)(t, y)

    def prepared(self, like: Tensor) -> Callable[[float | Tensor, Tensor], Tensor]:
        """``f`` on states shaped like ``like``, with what the weights alone determine (each
        convolution's kernels and time map) computed once: a solve calls it once, then the
        result at every step (in the grad mode of the call: gradients reach the weights through
        it). The values are `forward`'s, bit for bit."""
        conv1, conv2 = self.conv1.prepared(like), self.conv2.prepared(like)  # 3x3, padding 1: the same maps

        def f(t: float | Tensor, y: Tensor) -> Tensor:
            out = conv1(t, self.activation(self.norm1(y)))
            out = conv2(t, self.activation(self.norm2(out)))
            return self.norm3(out)

        return f

    def check_input(self, y: Tensor) -> None:
        """Raise ``ValueError`` unless ``y`` is a ``(batch, channels, H, W)`` state of the field's dtype
        and device."""
        check_state(y, self.features, 4, self.conv1.conv.weight)
