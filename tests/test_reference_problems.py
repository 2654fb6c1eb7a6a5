"""torchdiffeq's four test problems through :func:`contham.integrate`, forward and backwards in time.

The ODEs, the times (10 points on [1, 8]) and the error bounds are those of torchdiffeq's test
suite (``tests/problems.py`` and ``tests/odeint_tests.py`` of rtqichen/torchdiffeq); the code is
contham's. ``benchmarks/torchdiffeq_problems.py`` runs torchdiffeq's own file the same way.
"""

import math

import numpy as np
import pytest
import scipy.linalg
import torch
from torch import nn

from contham import integrate
from contham.solvers import SOLVERS, FixedStepSolver, TorchDiffEq, get_solver


class Constant(nn.Module):
    """y' = a + (y - (a t + b))^5, y = a t + b."""

    def __init__(self):
        super().__init__()
        self.a = nn.Parameter(torch.tensor(0.2))
        self.b = nn.Parameter(torch.tensor(3.0))

    def forward(self, t, y):
        return self.a + (y - (self.a * t + self.b)) ** 5

    def exact(self, t):
        return self.a * t + self.b


class Sine(nn.Module):
    """y' = 2y/t + t^4 sin 2t - t^2 + 4t^3."""

    def forward(self, t, y):
        return 2 * y / t + t**4 * torch.sin(2 * t) - t**2 + 4 * t**3

    def exact(self, t):
        c, s = torch.cos(2 * t), torch.sin(2 * t)
        return -0.5 * t**4 * c + 0.5 * t**3 * s + 0.25 * t**2 * c - t**3 + 2 * t**4 + (math.pi - 0.25) * t**2


class Linear(nn.Module):
    """y' = A y with A = U - U^T (U: 0.1 N(0, 1), 10 x 10), y(0) = 1."""

    def __init__(self, dim: int = 10):
        super().__init__()
        U = 0.1 * torch.randn(dim, dim, generator=torch.Generator().manual_seed(0))
        self.A = nn.Parameter(U - U.T)

    def forward(self, t, y):
        return self.A.to(y.dtype) @ y

    def exact(self, t):
        A = self.A.detach().double().numpy()
        ones = np.ones(A.shape[0])
        return torch.tensor(np.stack([scipy.linalg.expm(A * s) @ ones for s in t.tolist()])).to(t)


class Exp(nn.Module):
    """y' = -0.1 exp(-0.1 t)."""

    def forward(self, t, y):
        return -0.1 * torch.exp(-0.1 * t) * torch.ones_like(y)

    def exact(self, t):
        return torch.exp(-0.1 * t)


PROBLEMS = {"constant": Constant, "sine": Sine, "linear": Linear, "exp": Exp}
# the methods of torchdiffeq's suite that contham registers (split methods need a split state)
METHODS = [name for name, cls in SOLVERS.items() if not getattr(cls, "needs_split", False)]


def problem(name: str, dtype: torch.dtype, reverse: bool):
    f = PROBLEMS[name]().to(dtype)
    t = torch.linspace(1, 8, 10, dtype=torch.float64)
    with torch.no_grad():
        sol = f.exact(t).to(dtype)
    if reverse:
        t, sol = t.flip(0), sol.flip(0)
    return f, sol[0].clone(), t, sol


def cases():
    for method in METHODS:
        solver = get_solver(method)
        adaptive = not isinstance(solver, FixedStepSolver) and (solver.adaptive or method == "scipy_solver")
        for ode in PROBLEMS if adaptive else ("constant",):
            for dtype in (torch.float32, torch.float64):
                for reverse in (False, True):
                    yield pytest.param(
                        method, ode, dtype, reverse, id=f"{method}-{ode}-{str(dtype)[6:]}-{'rev' if reverse else 'fwd'}"
                    )


def bound(method: str, ode: str) -> float:
    if method == "scipy_solver":
        return 1e-3
    if method in ("adaptive_heun", "bosh3"):
        return 4e-3
    return {"linear": 2e-3, "exp": 5e-2}.get(ode, 3e-4)


def rel_error(true, estimate):
    return float(((true - estimate) / true).abs().max())


@pytest.mark.parametrize("method,ode,dtype,reverse", list(cases()))
def test_solution(method, ode, dtype, reverse):
    f, y0, t, sol = problem(ode, dtype, reverse)
    solver = get_solver(method)
    if method == "dopri8":  # torchdiffeq's suite tightens dopri8 too
        solver = (
            TorchDiffEq("dopri8", rtol=1e-12, atol=1e-14)
            if dtype == torch.float64
            else TorchDiffEq("dopri8", rtol=1e-7, atol=1e-7)
        )
    if method == "scipy_solver":
        solver = TorchDiffEq("scipy_solver", options={"solver": "RK45"})
    with torch.no_grad():
        ys = integrate(f, y0, t, solver).ys
    assert ys.shape == sol.shape and ys.dtype == dtype
    assert rel_error(sol, ys) < bound(method, ode)


@pytest.mark.parametrize("ode", PROBLEMS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
def test_adjoint_solution(ode, dtype, reverse):
    f, y0, t, sol = problem(ode, dtype, reverse)
    with torch.no_grad():
        ys = integrate(f, y0, t, "dopri5", gradient="adjoint").ys
    assert rel_error(sol, ys) < (2e-3 if ode == "linear" else 1e-4)


@pytest.mark.parametrize("ode,eps", [("constant", 1e-12), ("linear", 1e-5), ("sine", 5e-3), ("exp", 1e-2)])
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
def test_adjoint_gradients_equal_direct(ode, eps, reverse):
    f, y0, t, _ = problem(ode, torch.float64, reverse)
    y0.requires_grad_()
    weight = torch.rand(10, *y0.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    grads = []
    for gradient in ("backprop", "adjoint"):
        ys = integrate(f, y0, t, "dopri5", rtol=1e-9, atol=1e-12, gradient=gradient).ys
        grads.append(torch.autograd.grad((ys * weight).sum(), [y0, *f.parameters()]))
    for a, b in zip(*grads):
        assert float((a - b).abs().max()) < eps
