"""Activation functions sigma and their antiderivatives sigma~ (for the energy H)."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

Activation = Callable[[Tensor], Tensor]


def _log_cosh(x: Tensor) -> Tensor:
    # log cosh x = |x| + log(1 + exp(-2|x|)) - log 2, stable for large |x|.
    a = x.abs()
    return a + torch.log1p(torch.exp(-2.0 * a)) - math.log(2.0)


def _half_relu_sq(x: Tensor) -> Tensor:
    return 0.5 * F.relu(x) ** 2


def _half_sq(x: Tensor) -> Tensor:
    return 0.5 * x * x


def _identity(x: Tensor) -> Tensor:
    return x


ACTIVATIONS: dict[str, tuple[Activation, Activation]] = {
    "tanh": (torch.tanh, _log_cosh),
    "relu": (F.relu, _half_relu_sq),
    "sigmoid": (torch.sigmoid, F.softplus),
    "identity": (_identity, _half_sq),
}


def resolve_activation(
    sigma: str | Activation, antiderivative: Activation | None = None
) -> tuple[Activation, Activation | None, str]:
    """Return ``(sigma, sigma~, name)`` for a name in :data:`ACTIVATIONS` or a callable.

    For a callable, ``antiderivative`` (if given) is used for the energy; without it the field
    has no energy.
    """
    if isinstance(sigma, str):
        if sigma not in ACTIVATIONS:
            raise ValueError(f"sigma must be one of {', '.join(map(repr, ACTIVATIONS))} or a callable; got {sigma!r}")
        fn, integral = ACTIVATIONS[sigma]
        return fn, integral, sigma
    if callable(sigma):
        return sigma, antiderivative, getattr(sigma, "__name__", type(sigma).__name__)
    raise ValueError(f"sigma must be one of {', '.join(map(repr, ACTIVATIONS))} or a callable; got {sigma!r}")
