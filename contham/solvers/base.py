"""What every solver shares: the registry, the problem it is handed, what it returns.

A solver is one class: it declares its ``order`` (and ``symplectic``), checks the fields and the
gradient strategies it accepts, and owns its integration loop in `Solver.solve`. It becomes
reachable by name through `register_solver`; `integrate` only checks the
arguments, builds a `Problem` and hands it over.
"""

from __future__ import annotations

import functools
import sys
import warnings
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, NamedTuple, TypeVar

import torch
from torch import Tensor, nn

from ..fields.time import TimeNodes
from .tableaus import Tableau

Step = tuple[float, float, "int | None"]
"""One fixed step ``(t, h, node)``: from time t by h (negative backwards in time), with the weights
of ``node`` for the whole step (None: the field is read at each stage time)."""


class IntegrationError(RuntimeError):
    """An integration that cannot finish: step limit reached or step size underflow."""


@dataclass
class Stats:
    """Statistics of one integration.

    ``nfe_forward``: calls of the field in the forward solve (a split solver's half update counts
    one call). ``nfe_backward``: calls of the field in the backward pass: with the adjoint, those
    of the adjoint solve (counted as it runs); with backprop or the reversible scheme through
    fixed steps, the calls backpropagated through or replayed (known in advance: set by the
    forward pass when its result requires gradients); with backprop through torchdiffeq, the
    forward calls once ``backward()`` has run. Steps accepted/rejected: fixed-step solvers accept
    every step; torchdiffeq's adaptive methods report theirs (also for the adjoint solve); None
    where a method does not tell. With contham's Runge-Kutta engine and ``per_sample=True``:
    ``nfe_per_sample`` and ``steps_per_sample`` (accepted) for each sample, and the step counts
    above are the largest over the batch.
    """

    solver: str
    nfe_forward: int = 0
    nfe_backward: int = 0
    steps_accepted: int | None = None
    steps_rejected: int | None = None
    steps_accepted_backward: int | None = None
    steps_rejected_backward: int | None = None
    nfe_per_sample: list[int] | None = None
    steps_per_sample: list[int] | None = None


@dataclass
class Solution:
    """``ys[i]`` is the state at ``times[i]`` (``ts[i]``); ``y`` the final state; ``stats`` the
    statistics."""

    times: list[float]
    ys: Tensor
    stats: Stats

    @property
    def ts(self) -> Tensor:
        """The output times, float64 on the states' device; made when read (a solve inside a
        training step copies nothing from the host, which on CUDA would synchronise with it)."""
        return torch.tensor(self.times, dtype=torch.float64, device=self.ys.device)

    @property
    def y(self) -> Tensor:
        """The state at the last output time."""
        return self.ys[-1]


@dataclass
class Problem:
    """A checked initial value problem ``y' = field(t, y)``, ``y(times[0]) = y0``.

    ``times`` are strictly monotone (increasing, or decreasing for a solve backwards in time);
    ``breaks`` the node times of the field's weights strictly between ``times[0]`` and
    ``times[-1]`` (step boundaries), ``nodes`` the field's node layout or None.
    """

    field: nn.Module
    y0: Tensor
    times: list[float]
    breaks: list[float]
    nodes: TimeNodes | None
    gradient: Gradient
    step_size: float | None
    max_nfe: int


class Gradient(ABC):
    """A gradient strategy: how the gradients of a solve are computed. A solver hands its work
    to the strategy of its `Problem`, which runs it: a fixed-step solver its steps
    (`fixed_steps`), contham's Runge-Kutta engine its adaptive solve (`adaptive`), a solver
    built on torchdiffeq its call (`odeint`). The strategies
    themselves live in `contham.gradients`."""

    #: the name of the strategy (``gradient=<name>``)
    name: ClassVar[str]

    def check(self, solver: Solver) -> None:  # noqa: B027 (accepts every solver)
        """Raise ``ValueError`` if this strategy cannot compute the gradients of ``solver``."""

    @abstractmethod
    def fixed_steps(self, solver: Any, schedule: Any, y: Tensor, stats: Stats) -> list[Tensor]:
        """The states after the output steps (``schedule.row``) of a fixed-step ``solver`` from ``y`` (``stats``
        as `FixedStepSolver.run` filled them, for a strategy that calls the field otherwise)."""

    @abstractmethod
    def odeint(self, func: nn.Module, y0: Tensor, ts: Tensor, stats: Stats, **kwargs: Any) -> Tensor:
        """torchdiffeq's solve of ``func`` from ``y0`` at ``ts`` (``kwargs``: method, tolerances,
        options), with gradients as this strategy computes them; counts the backward pass in
        ``stats``."""

    @abstractmethod
    def adaptive(self, solver: Any, problem: Problem) -> Solution:
        """An adaptive solve of contham's Runge-Kutta engine (`contham.solvers.rk`), with
        gradients as this strategy computes them."""

    def fused(self, schedule: Any) -> Any:
        """The fused plan this strategy runs ``schedule`` with (`contham.solvers.fused`), or
        None: the one place that decides the fused path."""
        return None


class Kick(NamedTuple):
    """One update ``u <- u + (c h) f_u(t + d h, v)`` of half ``u`` ("y" or "z", or "x": the whole
    state) by the term that drives it, read on the other half v. Split steps are sequences of
    kicks with u != v; each is undone exactly by subtracting the same term, which makes them
    reversible (`contham.solvers.reversible`) and lets `contham.solvers.fused` run them."""

    u: str
    c: float
    d: float


class Solver(ABC):
    """Base of all solvers: ``name``, ``order``, the checks, and `solve`."""

    name: str
    #: order of accuracy of the solution (None where it depends on options)
    order: int | None = None
    #: True for methods that preserve the symplectic form of canonical Hamiltonian split fields
    symplectic: bool = False
    #: True for methods through which gradients can flow (by backprop or the adjoint)
    differentiable: bool = True
    #: True for methods whose steps are undone exactly (``gradient="reversible"``)
    reversible: bool = False
    #: the Butcher tableau of an explicit Runge-Kutta method (None for others)
    tableau: Tableau | None = None

    @classmethod
    def from_name(cls, name: str, rtol: float | None = None, atol: float | None = None) -> Solver:
        """The solver registered as ``name`` (``rtol``/``atol`` for methods with error control)."""
        if rtol is not None or atol is not None:
            raise ValueError(f"rtol/atol apply to adaptive methods, not to the fixed-step solver={name!r}")
        return cls()

    def check_field(self, field: nn.Module) -> None:  # noqa: B027 (accepts every field)
        """Raise ``ValueError`` if this solver cannot integrate ``field``."""

    def no_adjoint(self) -> str | None:
        """Why ``gradient="adjoint"`` (torchdiffeq's continuous adjoint) cannot differentiate this
        solver's solves, as the rest of a sentence that begins with the strategy's name; None
        where it can."""
        return (
            "needs a torchdiffeq method (e.g. solver='dopri5' or TorchDiffEq('rk4', options=...)); "
            f"got the fixed-step solver={self.name!r}"
        )

    def check_start(self, problem: Problem) -> None:
        """Raise ``ValueError`` unless ``problem.y0`` is finite (a read-back to the host; solvers
        that check it on the device, with their own read-backs, override this)."""
        if not bool(torch.isfinite(problem.y0).all()):
            raise ValueError("y0 must be finite; it contains NaN or inf")

    @abstractmethod
    def solve(self, problem: Problem) -> Solution:
        """Integrate ``problem`` and return the states at its times."""

    def compiled(self, backend: bool | str) -> Solver:
        """This solver with the steps that ``torch.compile`` leaves out of a compiled model (a
        loop that reads back on the host runs outside the graph) compiled by ``backend`` (True:
        the default one). Here: itself, whose solves compile within the model's graph or not at
        all."""
        return self

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


F = TypeVar("F", bound=Callable[..., Any])
R = TypeVar("R")


def outside_compile(fn: F) -> F:
    """``fn`` run outside ``torch.compile`` (a graph break around it): for loops whose steps are
    decided by reading values back on the host. ``torch.compile`` imports ``torch._dynamo``;
    without it nothing is being compiled, and importing it in the middle of a run (a DDP
    worker's backward pass) is slow and needless, so the wrapper is made at the first call
    under a loaded ``torch._dynamo``."""
    disabled: list[Callable[..., Any]] = []

    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> Any:
        if "torch._dynamo" not in sys.modules:
            return fn(*args, **kwargs)
        if not disabled:
            disabled.append(torch.compiler.disable(fn))
        return disabled[0](*args, **kwargs)

    return run  # type: ignore[return-value]


_COMPILED: dict[tuple[Callable, str], Callable] = {}  # by function and torch.compile backend


def compiled_or_eager(fn: Callable[..., R], backend: bool | str) -> Callable[..., R]:
    """``fn`` through ``torch.compile`` with ``backend`` (True: the default one; False: ``fn``
    itself), one wrapper per function and backend in a process: each kind of call (shapes, grad
    mode, arguments' types and options) gets its own graph at its first call. After a failed
    compilation (one warning that names the error), ``fn`` itself for the rest of the process."""
    if not backend:
        return fn
    key = (fn, "inductor" if backend is True else backend)
    if key not in _COMPILED:
        compiled = torch.compile(fn, backend=key[1])
        failed: list[str] = []  # the cause, once a compilation failed

        def run(*args: Any) -> R:
            if failed:
                return fn(*args)
            try:
                return compiled(*args)
            except torch._dynamo.exc.TorchDynamoException as error:  # the compiler's, not the field's
                cause = next((line for line in str(error).splitlines() if line.strip()), type(error).__name__)
                warnings.warn(
                    f"torch.compile(backend={key[1]!r}) failed for {fn.__qualname__} ({cause}); running it eagerly",
                    RuntimeWarning,
                    stacklevel=2,
                )
                failed.append(cause)
                return fn(*args)

        _COMPILED[key] = run
    return _COMPILED[key]


S = TypeVar("S", bound=type[Solver])

SOLVERS: dict[str, type[Solver]] = {}
"""Every solver class by the names it was registered under."""


def register_solver(*names: str, replace: bool = True) -> Callable[[S], S]:
    """Class decorator: make the solver reachable by ``names`` in `get_solver`.
    ``replace=False`` keeps a name someone registered before (contham's own fixed-step methods
    keep ``euler``, ``midpoint`` and ``rk4`` from torchdiffeq's)."""

    def register(cls: S) -> S:
        for name in names:
            if replace or name not in SOLVERS:
                SOLVERS[name] = cls
        return cls

    return register


def solver_names() -> tuple[str, ...]:
    """Every name `get_solver` accepts."""
    return tuple(SOLVERS)


def get_solver(solver: str | Solver, rtol: float | None = None, atol: float | None = None) -> Solver:
    """A solver from its registered name or itself.

    Names of contham's fixed-step methods (``euler``, ``midpoint``, ``rk4``,
    ``symplectic_euler``, ``verlet``/``leapfrog``) give those; any other torchdiffeq method name
    (``dopri5``, ``bosh3``, ``adaptive_heun``, ...) gives `TorchDiffEq`
    with ``rtol`` and ``atol``. (For torchdiffeq's own ``rk4`` use
    ``TorchDiffEq("rk4", options=...)``.)
    """
    if isinstance(solver, Solver):
        if rtol is not None or atol is not None:
            raise ValueError("rtol/atol must be set on the solver object (TorchDiffEq(method, rtol=..., atol=...))")
        return solver
    if isinstance(solver, str) and solver in SOLVERS:
        return SOLVERS[solver].from_name(solver, rtol, atol)
    raise ValueError(f"solver must be one of {', '.join(map(repr, SOLVERS))} or a Solver object; got {solver!r}")
