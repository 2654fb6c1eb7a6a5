"""The tensors a field's value depends on, for the gradient strategies that rebuild or re-solve
its calls in their own backward pass (the reversible scheme, the adjoint) and so must name the
tensors the gradients go to: the field's parameters, and any other tensor requiring grad that
it reads, such as one a plain function closes over or a context set on a module before the solve.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from .base import outside_compile


class _Reads(TorchFunctionMode):
    """Collects the tensors requiring grad that torch functions (and tensor methods) receive
    and did not make themselves while the mode was on."""

    def __init__(self) -> None:
        super().__init__()
        self.tensors: dict[int, Tensor] = {}
        self.made: set[int] = set()

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        for value in _tensors((args, kwargs)):
            if value.requires_grad and id(value) not in self.made:
                self.tensors.setdefault(id(value), value)
        out = func(*args, **kwargs)
        # a view made without gradients of a tensor that requires them requires them too
        self.made.update(map(id, _tensors(out)))
        return out


def _tensors(value: Any) -> list[Tensor]:
    """The tensors in ``value``, through lists, tuples and dicts."""
    if isinstance(value, Tensor):
        return [value]
    items = value.values() if isinstance(value, dict) else value if isinstance(value, (list, tuple)) else ()
    return [tensor for item in items for tensor in _tensors(item)]


@contextlib.contextmanager
def _evaluating(field: Any) -> Iterator[None]:
    """The modules of ``field``, or of the module whose method it is, in eval mode, each put
    back as it was."""
    owner = getattr(field, "__self__", field)
    modules = list(owner.modules()) if isinstance(owner, nn.Module) else []
    modes = [m.training for m in modules]
    try:
        for m in modules:
            m.training = False
        yield
    finally:
        for m, mode in zip(modules, modes):
            m.training = mode


@outside_compile  # a probe, run as it is where a compiled model calls it
def grad_inputs(field: Any, t: float | Tensor, y: Tensor) -> tuple[Tensor, ...]:
    """The tensors besides the state that a solve of ``field`` from ``(t, y)`` sends gradients
    to: its parameters that require grad, then the other tensors requiring grad it reads in a
    call at ``(t, y)`` (one call, without gradients, with its modules in eval mode: no batch
    statistics updated, no dropout; tensors the field reads only at other times are not seen).
    Empty where gradients are disabled."""
    if not torch.is_grad_enabled():
        return ()
    params = [p for p in field.parameters() if p.requires_grad] if isinstance(field, nn.Module) else []
    state = y.detach()  # before the mode: not read
    # without gradients, what the call computes requires none: the tensors requiring grad it
    # passes to torch functions were made before it, its parameters and views of them aside
    with _evaluating(field), torch.no_grad(), _Reads() as reads:
        field(t, state)
    owned = {p.untyped_storage().data_ptr() for p in params}
    read = [v for v in reads.tensors.values() if v.untyped_storage().data_ptr() not in owned]
    return (*params, *read)
