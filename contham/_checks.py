"""Argument checks that raise ``ValueError`` naming the parameter and what is allowed."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch


def check_choice(name: str, value: Any, allowed: Iterable[str]) -> str:
    allowed = tuple(allowed)
    if not isinstance(value, str) or value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, allowed))}; got {value!r}")
    return value


def check_positive(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a finite number > 0; got {value!r}")
    return float(value)


def check_int(name: str, value: Any, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}; got {value!r}")
    return value


def check_even(name: str, value: int, why: str) -> int:
    if value % 2:
        raise ValueError(f"{name} must be even ({why}); got {value}")
    return value


def check_name(name: str, value: Any, allowed: Iterable[str]) -> str:
    """Like `check_choice` but case-insensitive; returns the allowed spelling."""
    allowed = tuple(allowed)
    if isinstance(value, str):
        for option in allowed:
            if value.lower() == option.lower():
                return option
    raise ValueError(f"{name} must be one of {', '.join(map(repr, allowed))} (any case); got {value!r}")


def check_probability(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
        raise ValueError(f"{name} must be a number in [0, 1); got {value!r}")
    return float(value)


def check_bool(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be True or False; got {value!r}")
    return value


def check_nonnegative(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number >= 0; got {value!r}")
    return float(value)


def check_backend(name: str, value: Any) -> bool | str:
    """A ``torch.compile`` switch checked: False, True (the default backend) or a backend name."""
    if isinstance(value, bool):
        return value
    backends = torch.compiler.list_backends(exclude_tags=())
    if not isinstance(value, str) or value not in backends:
        raise ValueError(f"{name} must be true, false or a backend among {', '.join(backends)}; got {value!r}")
    return value
