"""torchdiffeq's methods (adaptive Runge-Kutta, fixed-grid, scipy) behind contham's interface."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .._checks import check_choice, check_positive

#: torchdiffeq methods with error control; they honour ``jump_t`` (weight discontinuities).
ADAPTIVE_METHODS = ("dopri5", "dopri8", "bosh3", "fehlberg2", "adaptive_heun")
#: torchdiffeq methods on a fixed grid (``options={"step_size": h}``).
FIXED_GRID_METHODS = ("euler", "midpoint", "rk4", "heun2", "heun3", "explicit_adams", "implicit_adams", "fixed_adams")
TORCHDIFFEQ_METHODS = ADAPTIVE_METHODS + FIXED_GRID_METHODS + ("scipy_solver",)
#: order of accuracy of each method's solution (the Adams methods: their maximum order)
ORDERS = {
    "dopri5": 5,
    "dopri8": 8,
    "bosh3": 3,
    "fehlberg2": 2,
    "adaptive_heun": 2,
    "euler": 1,
    "midpoint": 2,
    "rk4": 4,
    "heun2": 2,
    "heun3": 3,
    "explicit_adams": 4,
    "implicit_adams": 4,
    "fixed_adams": 4,
}


@dataclass
class TorchDiffEq:
    """A torchdiffeq method with its tolerances and options.

    Args:
        method: any torchdiffeq method name (see ``TORCHDIFFEQ_METHODS``).
        rtol, atol: relative and absolute error tolerances (adaptive methods).
        options: passed to torchdiffeq as ``options`` (e.g. ``{"step_size": 0.1}`` for a
            fixed-grid method, ``{"first_step": 1e-3}``).
    """

    method: str = "dopri5"
    rtol: float = 1e-7
    atol: float = 1e-9
    options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_choice("solver", self.method, TORCHDIFFEQ_METHODS)
        check_positive("rtol", self.rtol)
        check_positive("atol", self.atol)

    @property
    def name(self) -> str:
        """The torchdiffeq method name."""
        return self.method

    @property
    def order(self) -> int | None:
        """Order of the method (None for ``scipy_solver``, which depends on its options)."""
        return ORDERS.get(self.method)

    @property
    def adaptive(self) -> bool:
        """True for methods with error control (they honour weight jumps)."""
        return self.method in ADAPTIVE_METHODS

    def check_field(self, f: Any) -> None:
        """Fixed-grid torchdiffeq methods would step across weight jumps: refuse piecewise fields."""
        nodes = getattr(f, "nodes", None)
        if not self.adaptive and nodes is not None and nodes.jumps:
            raise ValueError(
                f"solver={self.method!r} (torchdiffeq fixed grid) cannot align its steps with the weight jumps "
                "of a piecewise field; use contham's 'euler', 'midpoint', 'rk4', 'symplectic_euler', 'verlet' "
                f"or an adaptive method ({', '.join(ADAPTIVE_METHODS)})"
            )
