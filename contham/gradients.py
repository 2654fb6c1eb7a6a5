"""Gradient strategies: how the gradients of a solve are computed.

One argument, ``gradient=``, of `integrate`, `HamiltonianBlock` and `ODEBlock` takes one of
these objects or its name (`GRADIENTS`). A strategy carries its behaviour: a solver hands
its steps (or its torchdiffeq call) to the strategy, which runs them
(`contham.solvers.Gradient`); each strategy checks the solvers it can serve.

* `Backprop` (``"backprop"``): autograd through every step. Memory grows with the number of
  steps. Where a fixed-step block has a hand-written fused backward pass that computes the same
  gradients (dense fields made of kicks, `contham.fields.KickTerms`; see
  `contham.solvers.fused`), it is used automatically.
* `Reversible` (``"reversible"``): nothing is stored, the states are rebuilt backwards during
  backprop: split solvers undo their own steps (`contham.solvers.reversible`; on dense split
  fields of `contham.fields.KickTerms`, the fused path rebuilds them kick by kick), explicit
  Runge-Kutta methods, fixed or adaptive, run McCallum & Foster's reversible scheme
  (`contham.solvers.reversible_rk`). Exact gradients, activation memory independent of the
  number of steps.
* `Adjoint` (``"adjoint"``): torchdiffeq's adjoint method for torchdiffeq's solvers (and
  contham's engine with a method torchdiffeq also has); a second ODE is solved backwards in
  time. Memory independent of the number of steps; gradients accurate to the solver's
  tolerances.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, TypeVar

from torch import Tensor, nn
from torchdiffeq import odeint, odeint_adjoint

from ._checks import check_bool, check_positive
from .solvers import reversible_rk
from .solvers.base import SOLVERS, Gradient, Problem, Solution, Solver, Stats
from .solvers.fixed import wants_grad
from .solvers.fused import FusedPlan, fused_steps, reversible_fused_steps
from .solvers.reads import grad_inputs
from .solvers.reversible import reversible_steps
from .solvers.reversible_rk import COUPLING
from .solvers.tableaus import TABLEAUS

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

    def fixed_steps(self, solver: Any, schedule: Any, y: Tensor, stats: Stats) -> list[Tensor]:
        plan = self.fused(schedule)
        return [fused_steps(plan, y)] if plan is not None else solver.march(schedule, y)

    def odeint(self, func: nn.Module, y0: Tensor, ts: Tensor, stats: Stats, **kwargs: Any) -> Tensor:
        ys = odeint(func, y0, ts, **kwargs)
        _count_backward(ys, stats)
        return ys

    def adaptive(self, solver: Any, problem: Problem) -> Solution:
        loop = solver.loop(problem)
        ys = loop.run()
        _count_backward(ys[-1], loop.stats)
        return loop.solution(ys)


def _count_backward(y: Tensor, stats: Stats) -> None:
    """Backprop replays the forward calls: count them when it runs."""
    if y.requires_grad:
        y.register_hook(lambda grad: setattr(stats, "nfe_backward", stats.nfe_backward + stats.nfe_forward))


@register_gradient
@dataclass(frozen=True)
class Reversible(Gradient):
    """Exact gradients without storing the states: each step is undone during the backward pass.

    Split solvers (symplectic Euler, Verlet) undo their own steps (`contham.solvers.reversible`;
    dense split blocks on the fused path, kick by kick in its backward pass): the forward map is
    theirs. Every explicit Runge-Kutta method, fixed or adaptive, runs
    McCallum & Foster's reversible scheme instead (`contham.solvers.reversible_rk`): a pair of
    states coupled by ``coupling``, whose solution has the method's order but is not the plain
    method's. Without a backward pass to come (``torch.no_grad``, evaluation) the same forward
    map runs without its bookkeeping.

    Args:
        coupling: McCallum & Foster's l, ``0 < l < 1``; unused by split solvers.
    """

    name = "reversible"
    coupling: float = COUPLING

    def __post_init__(self) -> None:
        if isinstance(self.coupling, bool) or not isinstance(self.coupling, float) or not 0 < self.coupling < 1:
            raise ValueError(f"coupling must be a number with 0 < coupling < 1; got {self.coupling!r}")

    def check(self, solver: Solver) -> None:
        if not solver.reversible and solver.tableau is None:
            split = [repr(name) for name, cls in SOLVERS.items() if cls.reversible]
            raise ValueError(
                f"gradient='reversible' needs a split solver ({', '.join(split)}) or an explicit Runge-Kutta "
                f"method ({', '.join(map(repr, TABLEAUS))}); got {solver.name!r}"
            )

    def fixed_steps(self, solver: Any, schedule: Any, y: Tensor, stats: Stats) -> list[Tensor]:
        if not solver.reversible:  # a Runge-Kutta method: the coupled pair
            return reversible_rk.fixed_steps(solver.tableau, schedule, y, stats, self.coupling)
        plan = self.fused(schedule)
        if not wants_grad(schedule.field, y):
            return [fused_steps(plan, y)] if plan is not None else solver.march(schedule, y)
        if not schedule.final_only:
            raise ValueError("gradient='reversible' keeps only the final state: pass two times")
        if plan is not None:
            return [reversible_fused_steps(plan, y)]
        return [reversible_steps(schedule.field, solver, y, schedule.steps)]

    def fused(self, schedule: Any) -> FusedPlan | None:
        """A dense split block's fused plan: its backward pass rebuilds the states kick by kick."""
        plan = schedule.fused
        return plan if plan is not None and plan.split else None

    def adaptive(self, solver: Any, problem: Problem) -> Solution:
        return reversible_rk.adaptive_solve(solver, problem, self.coupling)

    def odeint(self, func: nn.Module, y0: Tensor, ts: Tensor, stats: Stats, **kwargs: Any) -> Tensor:
        raise ValueError("gradient='reversible' runs contham's solvers, not torchdiffeq's")


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
        refusal = solver.no_adjoint()
        if refusal is not None:
            raise ValueError(f"gradient='adjoint' {refusal}")

    def fixed_steps(self, solver: Any, schedule: Any, y: Tensor, stats: Stats) -> list[Tensor]:
        raise ValueError(f"gradient='adjoint' {solver.no_adjoint()}")

    def adaptive(self, solver: Any, problem: Problem) -> Solution:
        """torchdiffeq's adjoint solve of the same method, tolerances and step rule."""
        return solver.torchdiffeq_twin().solve(problem)

    def odeint(self, func: nn.Module, y0: Tensor, ts: Tensor, stats: Stats, **kwargs: Any) -> Tensor:
        if stats.steps_accepted is not None:  # an adaptive method: the adjoint solve's steps are counted too
            stats.steps_accepted_backward, stats.steps_rejected_backward = 0, 0
        params = grad_inputs(func.field, ts[0], y0)  # the field's, not the counting wrapper's
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
