"""Gradient strategies: how the gradients of a solve are computed.

One argument, ``gradient=``, of `integrate`, `HamiltonianBlock` and `ODEBlock` takes one of
these objects or its name (`GRADIENTS`). A strategy carries its behaviour: a solver hands
its steps (or its torchdiffeq call) to the strategy, which runs them
(`contham.solvers.Gradient`); each strategy checks the solvers it can serve.

* `Backprop` (``"backprop"``): autograd through every step. Memory grows with the number of
  steps. Where a fixed-step block has a hand-written fused backward pass that computes the same
  gradients (dense sigma-term fields, see `contham.solvers.fused`), it is used automatically.
* `Reversible` (``"reversible"``): split solvers only; nothing is stored, the states are
  rebuilt backwards during backprop (`contham.solvers.reversible`). Exact gradients, activation
  memory independent of the number of steps.
* `Adjoint` (``"adjoint"``): torchdiffeq's adjoint method for torchdiffeq's solvers; a
  second ODE is solved backwards in time. Memory independent of the number of steps; gradients
  accurate to the solver's tolerances.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, TypeVar

from torch import Tensor, nn
from torchdiffeq import odeint, odeint_adjoint

from ._checks import check_bool, check_positive
from .solvers.base import SOLVERS, Gradient, Solver, Stats
from .solvers.fixed import wants_grad
from .solvers.fused import FusedPlan, fused_steps
from .solvers.reversible import reversible_steps

G = TypeVar("G", bound=type[Gradient])

GRADIENTS: dict[str, type[Gradient]] = {}
"""Every strategy class by name (`register_gradient`); read at the time of use."""


def register_gradient(cls: G) -> G:
    """Class decorator: make the strategy reachable as ``gradient=cls.name``."""
    GRADIENTS[cls.name] = cls
    return cls


@register_gradient
@dataclass(frozen=True)
class Backprop(Gradient):
    """Autograd through the steps of the solve.

    Args:
        higher_order: keep every step in autograd's graph even where the fused path applies, so
            that the gradients can be differentiated again (double backward, ``torch.func``
            transforms). The fused backward is once-differentiable.
    """

    name = "backprop"
    higher_order: bool = False

    def __post_init__(self) -> None:
        check_bool("higher_order", self.higher_order)

    def fused(self, schedule: Any) -> FusedPlan | None:
        return None if self.higher_order else schedule.fused

    def fixed_steps(self, solver: Any, schedule: Any, y: Tensor) -> list[Tensor]:
        plan = self.fused(schedule)
        return [fused_steps(plan, y)] if plan is not None else solver.march(schedule, y)

    def odeint(self, func: nn.Module, y0: Tensor, ts: Tensor, stats: Stats, **kwargs: Any) -> Tensor:
        ys = odeint(func, y0, ts, **kwargs)
        if ys.requires_grad:  # backprop replays the forward calls
            ys.register_hook(lambda grad: setattr(stats, "nfe_backward", stats.nfe_backward + stats.nfe_forward))
        return ys


@register_gradient
@dataclass(frozen=True)
class Reversible(Gradient):
    """Backprop through a reversible split scheme (symplectic Euler, Verlet) without storing the
    states: each step is undone exactly during the backward pass. Without a backward pass to
    come (``torch.no_grad``, evaluation) the steps run one by one."""

    name = "reversible"

    def check(self, solver: Solver) -> None:
        if not solver.reversible:
            split = ", ".join(repr(name) for name, cls in SOLVERS.items() if cls.reversible)
            raise ValueError(f"gradient='reversible' needs a split solver ({split}); got {solver.name!r}")

    def fixed_steps(self, solver: Any, schedule: Any, y: Tensor) -> list[Tensor]:
        if not wants_grad(schedule.field, y):
            return solver.march(schedule, y)
        if not schedule.final_only:
            raise ValueError("gradient='reversible' keeps only the final state: pass two times")
        return [reversible_steps(schedule.field, solver, y, schedule.steps)]

    def odeint(self, func: nn.Module, y0: Tensor, ts: Tensor, stats: Stats, **kwargs: Any) -> Tensor:
        raise ValueError("gradient='reversible' runs fixed split steps, not torchdiffeq's solvers")


@register_gradient
@dataclass(frozen=True)
class Adjoint(Gradient):
    """torchdiffeq's adjoint method (``odeint_adjoint``).

    Args:
        rtol: relative tolerance of the backward (adjoint) solve; None takes the forward solve's.
        atol: absolute tolerance of the backward solve; None takes the forward solve's.
        seminorm: measure the error of the adjoint solve on the state and its adjoint only, not on
            the parameter gradients (Kidger et al. 2021, torchdiffeq's
            ``adjoint_options=dict(norm="seminorm")``): fewer backward steps, same gradients to
            the tolerances.
    """

    name = "adjoint"
    rtol: float | None = None
    atol: float | None = None
    seminorm: bool = False

    def __post_init__(self) -> None:
        for name in ("rtol", "atol"):
            if getattr(self, name) is not None:
                check_positive(name, getattr(self, name))
        check_bool("seminorm", self.seminorm)

    def check(self, solver: Solver) -> None:
        if not solver.has_adjoint:
            raise ValueError(
                "gradient='adjoint' needs a torchdiffeq method (e.g. solver='dopri5' or "
                f"TorchDiffEq('rk4', options=...)); got the fixed-step solver={solver.name!r}"
            )

    def fixed_steps(self, solver: Any, schedule: Any, y: Tensor) -> list[Tensor]:
        raise ValueError(f"gradient='adjoint' needs a torchdiffeq method; got the fixed-step solver={solver.name!r}")

    def odeint(self, func: nn.Module, y0: Tensor, ts: Tensor, stats: Stats, **kwargs: Any) -> Tensor:
        if stats.steps_accepted is not None:  # an adaptive method: the adjoint solve's steps are counted too
            stats.steps_accepted_backward, stats.steps_rejected_backward = 0, 0
        params = tuple(p for p in func.parameters() if p.requires_grad)
        backward: dict[str, Any] = {}
        if self.rtol is not None:
            backward["adjoint_rtol"] = self.rtol
        if self.atol is not None:
            backward["adjoint_atol"] = self.atol
        if self.seminorm:  # the default adjoint options are the forward ones (with jump_t/step_t)
            backward["adjoint_options"] = {**kwargs.get("options", {}), "norm": "seminorm"}
        ys = odeint_adjoint(func, y0, ts, adjoint_params=params, **kwargs, **backward)
        func.backward_pass = True  # type: ignore[assignment]  # calls from now on are the adjoint solve's
        return ys


def gradient_names(solver: Solver | None = None) -> list[str]:
    """The registered strategy names, or those that can serve ``solver``."""
    if solver is None:
        return list(GRADIENTS)
    return [name for name, cls in GRADIENTS.items() if _accepts(cls(), solver)]


def _accepts(strategy: Gradient, solver: Solver) -> bool:
    try:
        strategy.check(solver)
    except ValueError:
        return False
    return True


def get_gradient(gradient: str | Gradient) -> Gradient:
    """A strategy from its registered name (with default options) or itself."""
    if isinstance(gradient, Gradient):
        return gradient
    if isinstance(gradient, str) and gradient in GRADIENTS:
        return GRADIENTS[gradient]()
    raise ValueError(
        f"gradient must be one of {', '.join(map(repr, GRADIENTS))} or a strategy object "
        f"({', '.join(cls.__name__ for cls in GRADIENTS.values())}); got {gradient!r}"
    )


__all__ = [
    "GRADIENTS",
    "Adjoint",
    "Backprop",
    "Gradient",
    "Reversible",
    "get_gradient",
    "gradient_names",
    "register_gradient",
]
