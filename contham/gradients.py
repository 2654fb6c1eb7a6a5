"""Gradient strategies: how the gradients of a solve are computed.

One argument, ``gradient=``, of :func:`~contham.integrate`, :class:`~contham.HamiltonianBlock`
and :class:`~contham.ODEBlock` takes one of these objects (or its name):

* :class:`Backprop` (``"backprop"``): autograd through every step. Memory grows with the number of
  steps. Where a fixed-step block has a hand-written fused backward pass that computes the same
  gradients (dense sigma-term fields, see :mod:`contham.fused`), it is used automatically.
* :class:`Reversible` (``"reversible"``): split solvers only; nothing is stored, the states are
  rebuilt backwards during backprop (:mod:`contham.reversible`). Exact gradients, activation
  memory independent of the number of steps.
* :class:`Adjoint` (``"adjoint"``): torchdiffeq's adjoint method for torchdiffeq's solvers; a
  second ODE is solved backwards in time. Memory independent of the number of steps; gradients
  accurate to the solver's tolerances.
"""

from __future__ import annotations

from dataclasses import dataclass

from ._checks import check_bool, check_positive


@dataclass(frozen=True)
class Backprop:
    """Autograd through the steps of the solve.

    Args:
        higher_order: keep every step in autograd's graph even where the fused path applies, so
            that the gradients can be differentiated again (double backward, ``torch.func``
            transforms). The fused backward is once-differentiable.
    """

    higher_order: bool = False

    def __post_init__(self) -> None:
        check_bool("higher_order", self.higher_order)


@dataclass(frozen=True)
class Reversible:
    """Backprop through a reversible split scheme (symplectic Euler, Verlet) without storing the
    states: each step is undone exactly during the backward pass."""


@dataclass(frozen=True)
class Adjoint:
    """torchdiffeq's adjoint method (``odeint_adjoint``).

    Args:
        rtol: relative tolerance of the backward (adjoint) solve; None takes the forward solve's.
        atol: absolute tolerance of the backward solve; None takes the forward solve's.
        seminorm: measure the error of the adjoint solve on the state and its adjoint only, not on
            the parameter gradients (Kidger et al. 2021, torchdiffeq's
            ``adjoint_options=dict(norm="seminorm")``): fewer backward steps, same gradients to
            the tolerances.
    """

    rtol: float | None = None
    atol: float | None = None
    seminorm: bool = False

    def __post_init__(self) -> None:
        for name in ("rtol", "atol"):
            if getattr(self, name) is not None:
                check_positive(name, getattr(self, name))
        check_bool("seminorm", self.seminorm)


Gradient = Backprop | Reversible | Adjoint
GRADIENTS: dict[str, type[Gradient]] = {"backprop": Backprop, "reversible": Reversible, "adjoint": Adjoint}
"""The strategies by name."""


def get_gradient(gradient: str | Gradient) -> Gradient:
    """A strategy from its name (with default options) or itself."""
    if isinstance(gradient, (Backprop, Reversible, Adjoint)):
        return gradient
    if isinstance(gradient, str) and gradient in GRADIENTS:
        return GRADIENTS[gradient]()
    raise ValueError(
        f"gradient must be one of {', '.join(map(repr, GRADIENTS))} or a Backprop/Reversible/Adjoint object; "
        f"got {gradient!r}"
    )
