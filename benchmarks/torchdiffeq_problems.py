"""torchdiffeq's own test problems through ``contham.integrate``: counts of passing cases.

Point ``--tests`` at the ``tests/`` folder of a checkout of rtqichen/torchdiffeq. The script
imports its ``problems.py`` (the constant, linear, sine and exp ODEs, float32 and float64,
forward and reverse) and runs the cases of its ``odeint_tests.py`` (the solution of every method
contham registers, with torchdiffeq's error bounds; the adjoint solution) and of its
``gradient_tests.py`` (adjoint vs direct gradients for y0 and the parameters), each through
``contham.integrate`` instead of ``torchdiffeq.odeint``. It prints one line per group and the
total; a failing case is printed with its error.

    git clone https://github.com/rtqichen/torchdiffeq /tmp/torchdiffeq
    python benchmarks/torchdiffeq_problems.py --tests /tmp/torchdiffeq/tests
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import warnings
from pathlib import Path

import torch

from contham import integrate
from contham.solvers import SOLVERS, TorchDiffEq, get_solver


def load(tests: Path):
    spec = importlib.util.spec_from_file_location("torchdiffeq_problems", tests / "problems.py")
    if spec is None or spec.loader is None or not (tests / "problems.py").exists():
        raise SystemExit(f"--tests must be torchdiffeq's tests/ folder (with problems.py); got {tests}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def rel_error(true, estimate) -> float:
    return float(((true - estimate) / true).abs().max())


def solution_cases(p):
    for reverse in (False, True):
        for dtype in p.DTYPES:
            for method in p.METHODS:
                if method not in SOLVERS:
                    continue  # torchdiffeq methods contham does not register (newer torchdiffeq)
                solver = get_solver(method)
                if method == "dopri8":
                    tol = (1e-12, 1e-14) if dtype == torch.float64 else (1e-7, 1e-7)
                    solver = TorchDiffEq("dopri8", rtol=tol[0], atol=tol[1])
                adaptive = method in p.ADAPTIVE_METHODS
                for ode in p.PROBLEMS if adaptive else ("constant",):
                    if method in ("adaptive_heun", "bosh3"):
                        eps = 4e-3
                    else:
                        eps = {"linear": 2e-3, "exp": 5e-2}.get(ode, 3e-4)
                    yield f"{method} {ode} {dtype} reverse={reverse}", (ode, dtype, reverse, solver, "backprop", eps)
            for ode in p.PROBLEMS:
                eps = 2e-3 if ode == "linear" else 1e-4
                yield (
                    f"adjoint {ode} {dtype} reverse={reverse}",
                    (ode, dtype, reverse, get_solver("dopri5"), "adjoint", eps),
                )
            for scipy in ("RK45", "RK23", "DOP853", "Radau", "BDF", "LSODA"):
                for ode in p.PROBLEMS:
                    solver = TorchDiffEq("scipy_solver", options={"solver": scipy})
                    yield (
                        f"scipy {scipy} {ode} {dtype} reverse={reverse}",
                        (ode, dtype, reverse, solver, "backprop", 1e-3),
                    )


def run_solution(p, ode, dtype, reverse, solver, gradient, eps) -> float | None:
    f, y0, t, sol = p.construct_problem(device="cpu", ode=ode, reverse=reverse, dtype=dtype)
    with torch.no_grad():
        y = integrate(f, y0.detach(), t.detach(), solver, gradient=gradient).ys
    error = rel_error(sol, y)
    return None if error < eps else error


def gradient_cases(p):
    for reverse in (False, True):
        for ode, eps in (("constant", 1e-12), ("linear", 1e-5), ("sine", 5e-3), ("exp", 1e-2)):
            yield f"adjoint vs direct {ode} reverse={reverse}", (ode, reverse, eps)


def run_gradient(p, ode, reverse, eps) -> float | None:
    f, y0, t, _ = p.construct_problem(device="cpu", ode=ode, reverse=reverse)
    y0 = y0.detach().requires_grad_()
    t = t.detach()
    torch.manual_seed(0)
    weight = None
    grads = []
    for gradient in ("backprop", "adjoint"):
        ys = integrate(f, y0, t, "dopri5", rtol=1e-9, atol=1e-12, gradient=gradient).ys
        weight = torch.rand_like(ys) if weight is None else weight
        grads.append(torch.autograd.grad((ys * weight).sum(), [y0, *f.parameters()]))
    error = max(float((a - b).abs().max()) for a, b in zip(*grads))
    return None if error < eps else error


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tests", type=Path, required=True, help="torchdiffeq's tests/ folder")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(args.tests))
    p = load(args.tests)
    warnings.simplefilter("ignore")
    totals = [0, 0]
    groups = (
        ("solutions (odeint_tests)", solution_cases(p), run_solution),
        ("adjoint vs direct gradients (gradient_tests)", gradient_cases(p), run_gradient),
    )
    for title, cases, run in groups:
        passed = total = 0
        for label, case in cases:
            total += 1
            try:
                error = run(p, *case)
            except Exception as exc:  # a refused or failing case is counted and shown
                error = f"{type(exc).__name__}: {exc}"
            if error is None:
                passed += 1
            else:
                print(f"  FAIL {label}: {error}")
        print(f"{title}: {passed} / {total} pass")
        totals[0] += passed
        totals[1] += total
    print(f"total: {totals[0]} / {totals[1]} pass through contham.integrate")
    return 0 if totals[0] == totals[1] else 1


if __name__ == "__main__":
    raise SystemExit(main())
