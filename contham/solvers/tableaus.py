"""Butcher tableaus of explicit Runge-Kutta methods, as data.

A method with ``s`` stages takes a step of size h from ``(t, y)`` as

    k_i = f(t + c_i h, y + h sum_{j<i} a_ij k_j),   y1 = y + h sum_i b_i k_i,

and, where it has an embedded pair, estimates the error of y1 by ``h sum_i e_i k_i`` (``e`` the
difference of the two weight rows). A tableau is *FSAL* (first same as last) when its last stage
is evaluated at ``(t + h, y1)``: that stage is then the next step's first. `RungeKutta`
(`contham.solvers.rk`) runs any of them; a new method is one more `Tableau`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch

from .._checks import check_choice


@dataclass(frozen=True)
class Tableau:
    """One explicit Runge-Kutta method.

    Args:
        name: the registered name.
        order: the order of y1.
        c: the stage times (``c[0] = 0``).
        a: ``a[i]`` the coefficients of stage i on stages ``0..i-1`` (``a[0] = ()``).
        b: the weights of y1 (one per stage).
        e: the error weights of the embedded pair (one per stage), or None for a method without
            one (fixed steps only).
        mid: weights of the solution at the middle of a step (``y + h sum_i mid_i k_i``), for a
            quartic dense output (`midpoint_weights` derives them); None: FSAL methods
            interpolate by a cubic Hermite polynomial.
    """

    name: str
    order: int
    c: tuple[float, ...]
    a: tuple[tuple[float, ...], ...]
    b: tuple[float, ...]
    e: tuple[float, ...] | None = None
    mid: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        s = len(self.c)
        shapes = [len(row) for row in self.a] == list(range(s)) and len(self.b) == s
        if not shapes or any(w is not None and len(w) != s for w in (self.e, self.mid)):
            raise ValueError(f"tableau {self.name!r}: a must be lower triangular and b, e, mid one weight per stage")
        for i, row in enumerate(self.a):
            if not math.isclose(sum(row), self.c[i], rel_tol=1e-12, abs_tol=1e-12):
                raise ValueError(f"tableau {self.name!r}: row {i} of a must sum to c[{i}] = {self.c[i]}")

    @property
    def stages(self) -> int:
        """Evaluations of the field per step (one fewer after the first step of an FSAL method)."""
        return len(self.c)

    @property
    def adaptive(self) -> bool:
        """Whether the method has an error estimate (step-size control)."""
        return self.e is not None

    @property
    def fsal(self) -> bool:
        """Whether the last stage is ``f(t + h, y1)``, reused as the next step's first."""
        return self.c[-1] == 1.0 and self.b[-1] == 0.0 and self.a[-1] == self.b[:-1]

    @property
    def solution_stages(self) -> int:
        """The stages y1 needs: an FSAL method's last stage only estimates the error."""
        return self.stages - 1 if self.fsal else self.stages


def midpoint_weights(tableau: Tableau) -> tuple[float, ...]:
    """Weights ``m`` with ``y + h sum_i m_i k_i = y(t + h/2) + O(h^5)``: the order conditions of
    the four orders at theta = 1/2 (Butcher's rooted trees: ``sum m = theta``, ``m.c = theta^2/2``,
    ``m.c^2 = theta^3/3``, ``m.Ac = theta^3/6``, ``m.c^3 = theta^4/4``, ``m.(c Ac) = theta^4/8``,
    ``m.Ac^2 = theta^4/12``, ``m.AAc = theta^4/24``), solved in the least-squares sense with the
    smallest weights. Raises ``ValueError`` if the stages cannot meet them."""
    s = tableau.stages
    a = torch.zeros(s, s, dtype=torch.float64)
    for i, row in enumerate(tableau.a):
        a[i, : len(row)] = torch.tensor(row, dtype=torch.float64)
    c = torch.tensor(tableau.c, dtype=torch.float64)
    ac = a @ c
    conditions = torch.stack([torch.ones(s, dtype=torch.float64), c, c**2, ac, c**3, c * ac, a @ c**2, a @ ac])
    theta = 0.5
    targets = torch.tensor([theta, theta**2 / 2, theta**3 / 3, theta**3 / 6, theta**4 / 4, theta**4 / 8,
                            theta**4 / 12, theta**4 / 24], dtype=torch.float64)  # fmt: skip
    weights = torch.linalg.pinv(conditions) @ targets
    if float((conditions @ weights - targets).abs().max()) > 1e-12:
        raise ValueError(f"tableau {tableau.name!r}: its stages cannot give a fourth-order midpoint")
    return tuple(weights.tolist())


TABLEAUS: dict[str, Tableau] = {}
"""Every tableau by name (`register_tableau`)."""


def register_tableau(tableau: Tableau) -> Tableau:
    """Make ``tableau`` reachable by its name."""
    TABLEAUS[tableau.name] = tableau
    return tableau


def get_tableau(name: str | Tableau) -> Tableau:
    """A registered tableau by name, or itself."""
    return name if isinstance(name, Tableau) else TABLEAUS[check_choice("method", name, tuple(TABLEAUS))]


EULER = register_tableau(Tableau("euler", 1, (0.0,), ((),), (1.0,)))
MIDPOINT = register_tableau(Tableau("midpoint", 2, (0.0, 0.5), ((), (0.5,)), (0.0, 1.0)))
RK4 = register_tableau(
    Tableau("rk4", 4, (0.0, 0.5, 0.5, 1.0), ((), (0.5,), (0.0, 0.5), (0.0, 0.0, 1.0)), (1 / 6, 1 / 3, 1 / 3, 1 / 6))
)
# Heun's method (explicit trapezoid) with forward Euler embedded: torchdiffeq's adaptive_heun
ADAPTIVE_HEUN = register_tableau(Tableau("adaptive_heun", 2, (0.0, 1.0), ((), (1.0,)), (0.5, 0.5), (0.5, -0.5)))
# Bogacki & Shampine (1989), order 3(2), FSAL
BOSH3 = register_tableau(
    Tableau(
        "bosh3",
        3,
        (0.0, 0.5, 0.75, 1.0),
        ((), (0.5,), (0.0, 0.75), (2 / 9, 1 / 3, 4 / 9)),
        (2 / 9, 1 / 3, 4 / 9, 0.0),
        (2 / 9 - 7 / 24, 1 / 3 - 1 / 4, 4 / 9 - 1 / 3, -1 / 8),
    )
)
# Dormand & Prince (1980), order 5(4), FSAL, with Shampine's (1986) embedded weights (as torchdiffeq)
_DOPRI5_B = (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84)
DOPRI5 = register_tableau(
    Tableau(
        "dopri5",
        5,
        (0.0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0, 1.0),
        (
            (),
            (1 / 5,),
            (3 / 40, 9 / 40),
            (44 / 45, -56 / 15, 32 / 9),
            (19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729),
            (9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656),
            _DOPRI5_B,
        ),
        (*_DOPRI5_B, 0.0),
        tuple(
            b - b4
            for b, b4 in zip(
                (*_DOPRI5_B, 0.0),
                (1951 / 21600, 0.0, 22642 / 50085, 451 / 720, -12231 / 42400, 649 / 6300, 1 / 60),
            )
        ),
        # Shampine's (1986) continuous extension at the middle of the step
        tuple(
            w / 2
            for w in (
                6025192743 / 30085553152,
                0.0,
                51252292925 / 65400821598,
                -2691868925 / 45128329728,
                187940372067 / 1594534317056,
                -1776094331 / 19743644256,
                11237099 / 235043384,
            )
        ),
    )
)
# Tsitouras (2011), order 5(4), FSAL; the coefficients as printed in the paper (16 digits); the
# midpoint of its dense output derived from the order conditions
_TSIT5_B = (
    0.09646076681806523,
    0.01,
    0.4798896504144996,
    1.379008574103742,
    -3.290069515436081,
    2.324710524099774,
)
TSIT5 = register_tableau(
    Tableau(
        "tsit5",
        5,
        (0.0, 0.161, 0.327, 0.9, 0.9800255409045097, 1.0, 1.0),
        (
            (),
            (0.161,),
            (-0.008480655492356989, 0.335480655492357),
            (2.8971530571054935, -6.359448489975075, 4.3622954328695815),
            (5.325864828439257, -11.748883564062828, 7.4955393428898365, -0.09249506636175525),
            (5.86145544294642, -12.92096931784711, 8.159367898576159, -0.071584973281401, -0.028269050394068383),
            _TSIT5_B,
        ),
        (*_TSIT5_B, 0.0),
        (
            -0.00178001105222577714,
            -0.0008164344596567469,
            0.007880878010261995,
            -0.1447110071732629,
            0.5823571654525552,
            -0.45808210592918697,
            1 / 66,
        ),
    )
)
TSIT5 = register_tableau(replace(TSIT5, mid=midpoint_weights(TSIT5)))
