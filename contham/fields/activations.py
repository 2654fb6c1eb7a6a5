"""Activation functions sigma: the one table of everything contham needs to know about each.

For each named sigma, `Activation` holds the function, its antiderivative sigma~ (for the
energy ``H = 1^T sigma~(K y + b)``), its derivative written in terms of its *output*
``w = sigma(z)`` (the fused backward pass keeps w, not z) and an in-place form (the fused forward
pass applies sigma to the buffer it just filled).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

Function = Callable[[Tensor], Tensor]


@dataclass(frozen=True)
class Activation:
    """An element-wise sigma and what the fields and the fused path derive from it.

    Attributes:
        name: contham's name (``"tanh"``); ``title``: the report's spelling (``"Tanh"``).
        fn: sigma itself.
        antiderivative: sigma~ with sigma~' = sigma (None: the field has no energy).
        derivative: sigma'(z) computed from ``w = sigma(z)`` (None: no fused path).
        inplace: sigma applied in place to its argument (None: no fused path).
    """

    name: str
    title: str
    fn: Function
    antiderivative: Function | None = None
    derivative: Function | None = None
    inplace: Function | None = None

    def __call__(self, z: Tensor) -> Tensor:
        return self.fn(z)

    @property
    def fusable(self) -> bool:
        """True when the fused path can run it (derivative from the output and in-place form)."""
        return self.derivative is not None and self.inplace is not None


def _log_cosh(x: Tensor) -> Tensor:
    # log cosh x = |x| + log(1 + exp(-2|x|)) - log 2, stable for large |x|.
    a = x.abs()
    return a + torch.log1p(torch.exp(-2.0 * a)) - math.log(2.0)


def _identity(x: Tensor) -> Tensor:
    return x


# the in-place forms as plain functions (torch.compile of older torch cannot call Tensor.tanh_ and
# the like when they are stored as attributes)
def _tanh_(x: Tensor) -> Tensor:
    if x.device.type == "cpu" and x.numel() >= 4096:
        # tanh z = 2 sigmoid(2z) - 1: 5x faster than tanh_ on large CPU tensors (0.27 against
        # 1.40 ms on 627,200 floats, torch 2.15, AVX-512; slower below about 4,000 floats, where
        # its four kernels cost more than they save), absolute error below 2e-7 in float32 and
        # 4e-16 in float64
        return x.mul_(2).sigmoid_().mul_(2).sub_(1)
    return x.tanh_()


def _tanh_derivative(w: Tensor) -> Tensor:
    return torch.addcmul(w.new_ones(()), w, w, value=-1)  # 1 - w^2 in one pass


def _relu_(x: Tensor) -> Tensor:
    return x.relu_()


def _sigmoid_(x: Tensor) -> Tensor:
    return x.sigmoid_()


def _softplus_(x: Tensor) -> Tensor:
    return x.copy_(F.softplus(x))


ACTIVATIONS: dict[str, Activation] = {
    a.name: a
    for a in (
        Activation(
            "relu",
            "ReLU",
            F.relu,
            lambda x: 0.5 * F.relu(x) ** 2,
            lambda w: (w > 0).to(w.dtype),
            _relu_,
        ),
        Activation(
            "tanh",
            "Tanh",
            torch.tanh,
            _log_cosh,
            _tanh_derivative,
            _tanh_,
        ),
        Activation(
            "sigmoid",
            "Sigmoid",
            torch.sigmoid,
            F.softplus,
            lambda w: torch.sub(1, w).mul_(w),
            _sigmoid_,
        ),
        # softplus' = sigmoid = 1 - exp(-softplus) (1 where F.softplus returns its input, above 20);
        # its antiderivative (a dilogarithm) is not in torch
        Activation(
            "softplus",
            "Softplus",
            F.softplus,
            None,
            lambda w: torch.expm1(-w).neg_().masked_fill_(w > 20, 1.0),
            _softplus_,
        ),
        Activation("identity", "Identity", _identity, lambda x: 0.5 * x * x, torch.ones_like, _identity),
    )
}
"""The named activations, by contham's name."""


def resolve_activation(sigma: str | Function, antiderivative: Function | None = None) -> Activation:
    """The `Activation` of a name in `ACTIVATIONS` or of a callable.

    A callable that is a table entry's function (``torch.tanh``) is that entry; another gets
    ``antiderivative`` (if given; without it the field has no energy) and no fused path.
    """
    if isinstance(sigma, str):
        if sigma not in ACTIVATIONS:
            raise ValueError(f"sigma must be one of {', '.join(map(repr, ACTIVATIONS))} or a callable; got {sigma!r}")
        return ACTIVATIONS[sigma]
    if callable(sigma):
        known = next((a for a in ACTIVATIONS.values() if a.fn is sigma), None)
        if known is not None and antiderivative in (None, known.antiderivative):
            return known  # torch.tanh is "tanh"
        name = getattr(sigma, "__name__", type(sigma).__name__)
        return Activation(name, name, sigma, antiderivative)
    raise ValueError(f"sigma must be one of {', '.join(map(repr, ACTIVATIONS))} or a callable; got {sigma!r}")
