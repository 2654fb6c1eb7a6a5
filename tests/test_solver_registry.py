"""Every registered solver, tested from its declarations: order, symplecticity, gradients.

A new solver registered with :func:`contham.solvers.register_solver` is picked up here without new
test code: its declared ``order`` is measured, its ``symplectic`` flag checked both ways, and its
gradients checked (``gradcheck`` in float64; adjoint and reversible against backprop).
"""

import math
import warnings

import pytest
import torch

from contham import TwoLayerField, integrate
from contham.analysis import symplecticity_defect
from contham.gradients import gradient_names
from contham.solvers import SOLVERS, TABLEAUS, FixedStepSolver, RungeKutta, SplitSolver, TorchDiffEq, get_solver

D = torch.float64
NAMES = list(SOLVERS)


def solver_at(name: str, h: float):
    """The solver ``name`` stepping by ``h`` (fixed-step methods), or at tolerance ``h``."""
    solver = get_solver(name)
    if isinstance(solver, FixedStepSolver):
        return solver, dict(step_size=h)
    if solver.adaptive or name == "scipy_solver":
        return get_solver(name, rtol=h, atol=h), {}
    return TorchDiffEq(name, options={"step_size": h}), {}


@pytest.fixture(scope="module")
def problem():
    """A time-invariant two-layer field with O(1) weights, and its solution at t = 1 (dopri8)."""
    torch.manual_seed(0)
    field = TwoLayerField(4, "tanh").double()
    with torch.no_grad():
        for p in field.parameters():
            p.normal_()
    y0 = torch.randn(3, 4, dtype=D)
    reference = integrate(field, y0, [0, 1], "dopri8", rtol=1e-13, atol=1e-14).y
    return field, y0, reference


def error(problem, name: str, h: float) -> float:
    field, y0, reference = problem
    solver, kw = solver_at(name, h)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scipy's and torchdiffeq's notes about options
        return float((integrate(field, y0, [0, 1], solver, **kw).y - reference).abs().max())


@pytest.mark.parametrize("name", NAMES)
def test_declared_order_is_observed(problem, name):
    solver = get_solver(name)
    if not isinstance(solver, FixedStepSolver) and (solver.adaptive or name == "scipy_solver"):
        # error control: the error follows the tolerance
        loose, tight = error(problem, name, 1e-5), error(problem, name, 1e-8)
        assert tight < 1e-5 and tight < loose / 30
    elif solver.order is None:  # no fixed order (Adams): it converges
        assert error(problem, name, 1 / 128) < 1e-7
    else:
        e1, e2 = error(problem, name, 1 / 8), error(problem, name, 1 / 16)
        assert math.log2(e1 / e2) == pytest.approx(solver.order, abs=0.25)


@pytest.mark.parametrize("name", list(TABLEAUS))
def test_every_tableau_has_its_declared_order_in_fixed_steps(problem, name):
    """Fixed steps of contham's engine against the same method at h = 1/1024. Tsitouras's pair is
    built with small leading error terms, so its observed order runs above 5 at these steps."""
    field, y0, _ = problem
    with torch.no_grad():
        ys = [integrate(field, y0, [0, 1], RungeKutta(name), step_size=h).y for h in (1 / 8, 1 / 16, 1 / 1024)]
    e1, e2 = (float((y - ys[-1]).abs().max()) for y in ys[:2])
    order = TABLEAUS[name].order
    assert order - 0.25 < math.log2(e1 / e2) < order + (1 if name == "tsit5" else 0.25)


@pytest.mark.parametrize("name", NAMES)
def test_symplectic_flag_is_true_to_the_method(problem, name):
    field, y0, _ = problem
    solver, kw = solver_at(name, 0.5)
    if not isinstance(solver, FixedStepSolver):
        assert not solver.symplectic
        return
    defect = symplecticity_defect(lambda y: integrate(field, y, [0, 0.5], solver, **kw).y, y0[:1])
    if solver.symplectic:
        assert defect < 1e-12
    else:
        assert defect > 1e-6


@pytest.fixture(scope="module")
def flow():
    """A time-dependent two-layer field, a start and a weighting of the end state, and the
    gradients of the weighted end state by the exact flow (rk4 at h = 1/256; the rk4 case of
    `test_gradients` gradchecks rk4's steps, at h = 1/8)."""
    torch.manual_seed(1)
    field = TwoLayerField(4, "tanh", n_nodes=2, dt=0.25, time_mode="linear").double()
    y0 = torch.randn(2, 4, dtype=D, requires_grad=True)
    weight = torch.randn(2, 4, dtype=D)
    exact = end_state(field, "rk4", step_size=1 / 256)
    return field, y0, weight, weighted_gradients(exact, field, y0, weight)


def end_state(field, solver, gradient="backprop", **kw):
    return lambda y, *_: integrate(field, y, [0, 0.5], solver, gradient=gradient, **kw).y


def weighted_gradients(f, field, y0, weight):
    return torch.autograd.grad((f(y0) * weight).sum(), [y0, *field.parameters()])


@pytest.mark.parametrize("name", NAMES)
def test_gradients(flow, name):
    """Fixed grids: ``gradcheck``. Error control: the steps depend on the state but are not
    differentiated (finite differences see them move), so the gradients, by every strategy the
    solver takes, are compared with those of the exact flow."""
    field, y0, weight, exact = flow
    inputs = (y0, *field.parameters())
    solver = get_solver(name)
    if not solver.differentiable:
        assert not end_state(field, solver)(y0).requires_grad  # scipy runs on NumPy: nothing to differentiate
        return
    if isinstance(solver, FixedStepSolver):
        assert torch.autograd.gradcheck(end_state(field, solver, step_size=0.125), inputs)
        return
    if not solver.adaptive:
        assert torch.autograd.gradcheck(end_state(field, TorchDiffEq(name, options={"step_size": 0.125})), inputs)
        return
    tol, agree = (1e-11, 1e-6) if solver.order >= 5 else (1e-6, 1e-3)  # low orders: many steps
    tight = get_solver(name, rtol=tol, atol=tol)
    for gradient in gradient_names(tight):
        for a, b in zip(weighted_gradients(end_state(field, tight, gradient), field, y0, weight), exact):
            torch.testing.assert_close(a, b, rtol=agree, atol=agree)


@pytest.mark.parametrize("name", [n for n, cls in SOLVERS.items() if issubclass(cls, SplitSolver)])
def test_reversible_gradients_equal_backprop(name):
    torch.manual_seed(2)
    field = TwoLayerField(4, "tanh", n_nodes=3, dt=0.2).double()
    y0 = torch.randn(2, 4, dtype=D, requires_grad=True)
    weight = torch.randn(2, 4, dtype=D)
    grads = []
    for gradient in ("backprop", "reversible"):
        out = integrate(field, y0, [0, 0.6], name, gradient=gradient).y
        grads.append(torch.autograd.grad((out * weight).sum(), [y0, *field.parameters()]))
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_torchdiffeq_methods_and_orders_are_read_from_torchdiffeq():
    from torchdiffeq._impl.odeint import SOLVERS as TABLE

    from contham.solvers import ADAPTIVE_METHODS, TORCHDIFFEQ_METHODS, method_order

    assert TORCHDIFFEQ_METHODS == tuple(TABLE) and set(ADAPTIVE_METHODS) >= {"dopri5", "dopri8", "bosh3"}
    assert {m: method_order(m) for m in ("dopri5", "dopri8", "bosh3", "rk4", "heun3")} == dict(
        dopri5=5, dopri8=8, bosh3=3, rk4=4, heun3=3
    )
    assert method_order("explicit_adams") is None and method_order("scipy_solver") is None
    assert all(get_solver(m).name == m for m in TORCHDIFFEQ_METHODS if m not in ("euler", "midpoint", "rk4"))


def test_a_split_solver_counts_one_evaluation_per_kick():
    for cls in {cls for cls in SOLVERS.values() if issubclass(cls, SplitSolver)}:
        assert cls.evals_per_step == len(cls.kicks_y_first)
    field = TwoLayerField(4, n_nodes=3, dt=0.1)
    for name, per_step in (("symplectic_euler", 2), ("verlet", 3)):
        assert integrate(field, torch.randn(2, 4), [0, 0.3], name).stats.nfe_forward == 3 * per_step


def test_solvers_and_gradient_strategies_registered_after_import_are_accepted_everywhere(monkeypatch):
    from contham import HamiltonianBlock
    from contham.config import HamiltonianParameters
    from contham.gradients import GRADIENTS, Backprop, register_gradient
    from contham.models import build
    from contham.solvers import Verlet, register_solver

    monkeypatch.setitem(SOLVERS, "late_verlet", None)  # removed again after the test
    monkeypatch.setitem(GRADIENTS, "counting", None)

    @register_solver("late_verlet")
    class LateVerlet(Verlet):
        name = "late_verlet"

    @register_gradient
    class Counting(Backprop):
        """Backprop that counts the fixed-step solves it runs."""

        name = "counting"
        runs = 0

        def fixed_steps(self, solver, schedule, y, stats):
            type(self).runs += 1
            return super().fixed_steps(solver, schedule, y, stats)

    ham = HamiltonianParameters("TwoLayersHam", n_blocks=2, solver="late_verlet", gradient="reversible")
    assert ham.solver == "late_verlet"
    net = build("nominal", solver="late_verlet", n_blocks=2)
    assert all(b.solver.name == "late_verlet" for b in net.modules() if isinstance(b, HamiltonianBlock))
    block = HamiltonianBlock(TwoLayerField(4, n_nodes=2, dt=0.1), "late_verlet", gradient="counting")
    block(torch.randn(1, 4))
    assert Counting.runs == 1
    assert HamiltonianParameters("TwoLayersHam", gradient="counting").gradient == "counting"


def test_the_block_reports_the_path_its_gradient_strategy_runs(monkeypatch):
    from contham import HamiltonianBlock, gradients
    from contham.gradients import Backprop

    field = TwoLayerField(4, n_nodes=3, dt=0.1)
    for gradient, fused in (("backprop", True), ("reversible", True), (Backprop(higher_order=True), False)):
        block = HamiltonianBlock(field, gradient=gradient)
        assert block.fused == fused
        ran = []
        for name in ("fused_steps", "reversible_fused_steps"):
            original = getattr(gradients, name)
            monkeypatch.setattr(gradients, name, lambda plan, x, f=original, ran=ran: ran.append(1) or f(plan, x))
        with torch.no_grad():  # evaluation too runs the path the block reports
            block(torch.randn(2, 4))
        block(torch.randn(2, 4, requires_grad=True)).sum().backward()
        monkeypatch.undo()
        assert len(ran) == (2 if fused else 0), gradient


def test_no_import_cycle_in_the_core():
    """No module imports another only for type checking (the sign of an import cycle)."""
    import ast
    from pathlib import Path

    import contham

    root = Path(contham.__file__).parent
    for path in root.rglob("*.py"):
        tree = ast.parse(path.read_text())
        guarded = [n for n in ast.walk(tree) if isinstance(n, ast.If) and "TYPE_CHECKING" in ast.unparse(n.test)]
        assert not guarded, f"{path.relative_to(root)} imports under TYPE_CHECKING"
