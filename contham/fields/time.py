"""Time dependence of a field's weights: the node axis.

A time-dependent weight such as K(t) is stored as *one* tensor whose leading axis runs over
``n`` nodes, e.g. ``K`` of shape ``(n, out, in)`` (dense) or ``(n, out, in, kh, kw)`` (conv), and
``b`` of shape ``(n, out)``. Node ``j`` sits at time ``t_j = j * dt``. How the weights between
nodes are read is the *mode*:

* ``"piecewise"``: node ``j`` acts on ``[t_j, t_{j+1})``; the last node acts on
  ``[t_{n-1}, inf)`` and node 0 also before 0. This is the discrete mode: a network of ``n``
  layers with step ``h = dt`` uses node ``j`` in layer ``j``. The interior boundaries
  ``t_1, ..., t_{n-1}`` are where the weights jump.
* ``"linear"``: linear interpolation between node ``j`` at ``t_j`` and node ``j+1`` at
  ``t_{j+1}``, clamped to node 0 / node ``n-1`` outside ``[0, (n-1) dt]`` (smooth in t, for
  adaptive solvers).
* ``"constant"``: a single node used at every t (a time-invariant field).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .._checks import check_choice, check_int, check_positive

TIME_MODES = ("constant", "piecewise", "linear")


@dataclass(frozen=True)
class TimeNodes:
    """Layout of the node axis of time-dependent weights (see the module docstring).

    Args:
        n: number of nodes (the length of the leading axis of every weight tensor).
        dt: spacing of the nodes in time (the step ``h`` in the discrete mode).
        mode: ``"constant"`` (needs ``n == 1``), ``"piecewise"`` or ``"linear"`` (needs ``n >= 2``).
    """

    n: int = 1
    dt: float = 1.0
    mode: str = "constant"

    def __post_init__(self) -> None:
        check_int("n_nodes", self.n)
        check_positive("dt", self.dt)
        check_choice("time_mode", self.mode, TIME_MODES)
        if self.mode == "constant" and self.n != 1:
            raise ValueError(f"time_mode='constant' needs n_nodes == 1; got n_nodes={self.n}")
        if self.mode == "linear" and self.n < 2:
            raise ValueError(f"time_mode='linear' needs n_nodes >= 2; got n_nodes={self.n}")

    @property
    def breaks(self) -> tuple[float, ...]:
        """Interior node times ``t_1, ..., t_{n-1}``: where piecewise weights jump and linear
        weights have a kink. Solvers put step boundaries there."""
        return tuple(j * self.dt for j in range(1, self.n))

    @property
    def jumps(self) -> tuple[float, ...]:
        """Times where the weights are discontinuous (piecewise mode only)."""
        return self.breaks if self.mode == "piecewise" else ()

    @property
    def times(self) -> tuple[float, ...]:
        """Node times ``t_j = j * dt``."""
        return tuple(j * self.dt for j in range(self.n))

    def locate(self, t: float) -> tuple[int, float]:
        """Return ``(j, w)`` such that the weights at ``t`` are ``(1 - w) W[j] + w W[j + 1]``.

        ``w == 0`` means node ``j`` alone. The comparison against node times is exact, so a
        solver that evaluates just below a boundary (torchdiffeq's ``jump_t`` handling does)
        reads the node on the left of it.
        """
        if self.mode == "constant":
            return 0, 0.0
        if not math.isfinite(t):
            raise ValueError(f"t must be finite; got {t!r}")
        j = sum(1 for s in self.times if s <= t) - 1  # bisect_right, in a form torch.compile traces
        if self.mode == "piecewise":
            return min(max(j, 0), self.n - 1), 0.0
        if j < 0:
            return 0, 0.0
        if j >= self.n - 1:
            return self.n - 1, 0.0
        return j, (t - j * self.dt) / self.dt
