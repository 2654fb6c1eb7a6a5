"""contham's Runge-Kutta engine: tableaus, step control on the device, per-sample steps, and the
reversible scheme of McCallum & Foster."""

import dataclasses
import math
import warnings
from functools import partial

import pytest
import torch
from torch import nn
from torch._dynamo import register_backend
from torch.utils._python_dispatch import TorchDispatchMode

from contham import ODEBlock, ODENetField, compile_steps, integrate
from contham.experiments import SavedTensors
from contham.fields import TwoLayerField
from contham.gradients import Adjoint, Backprop, Reversible
from contham.models import build
from contham.solvers import (
    TABLEAUS,
    AdaptiveLoop,
    PIController,
    RungeKutta,
    Tableau,
    TorchDiffEq,
    get_solver,
    reversible_rk,
    rk,
    rk_step,
)
from contham.solvers.base import Problem, Stats
from contham.solvers.fixed import Schedule, plan_steps
from contham.solvers.reversible_rk import COUPLING, Coupled
from contham.solvers.rk import Progress, Scheme, rk_increment
from contham.solvers.tableaus import RK4, midpoint_weights

D = torch.float64


class Dense(nn.Module):
    """``tanh(W y + b) (1 + t / 10)``: smooth, time-dependent, row-wise."""

    def __init__(self, n: int = 6):
        super().__init__()
        self.layer = nn.Linear(n, n).double()

    def forward(self, t, y):
        return torch.tanh(self.layer(y)) * (1 + 0.1 * t)


class Stiffish(nn.Module):
    """``y' = -k y`` per sample, with one rate per sample (a stiff sample where k is large)."""

    def __init__(self, rates):
        super().__init__()
        self.register_buffer("rates", torch.as_tensor(rates, dtype=D))

    def forward(self, t, y):
        return -self.rates[: y.shape[0], None] * y + torch.cos(t)


def test_a_tableau_is_checked_and_knows_when_its_last_stage_is_the_next_first():
    with pytest.raises(ValueError, match="row 1 of a must sum to c\\[1\\]"):
        Tableau("bad", 2, (0.0, 0.5), ((), (0.4,)), (0.0, 1.0))
    with pytest.raises(ValueError, match="lower triangular"):
        Tableau("bad", 2, (0.0, 0.5), ((), (0.25, 0.25)), (0.0, 1.0))
    assert get_solver("dopri5").tableau.fsal and get_solver("tsit5").tableau.fsal
    assert not get_solver("adaptive_heun").tableau.fsal
    with pytest.raises(ValueError, match="method must be one of 'euler', .*'tsit5'; got 'rk45'"):
        RungeKutta("rk45")
    # the midpoint weights (Shampine's for dopri5, as written down; derived for tsit5) give
    # y(t + h/2) with a local error of order 5: halving h divides it by about 32
    f, y0 = Dense(), torch.ones(2, 6, dtype=D)
    for tableau in (get_solver("dopri5").tableau, get_solver("tsit5").tableau):
        middle = dataclasses.replace(tableau, b=tableau.mid)
        errors = []
        for h in (0.4, 0.2):
            with torch.no_grad():
                exact = integrate(f, y0, [0.0, h / 2], "rk4", step_size=h / 400).y
                errors.append(float((y0 + rk_increment(f, middle, 0.0, h, y0)[0] - exact).abs().max()))
        assert math.log2(errors[0] / errors[1]) > 4.7, (tableau.name, errors)
    with pytest.raises(ValueError, match="cannot give a fourth-order midpoint"):
        midpoint_weights(get_solver("bosh3").tableau)


def butcher_step(f, tableau, t, dt, y):
    """A step as the tableau's equations write it: ``(y1, error estimate or None)``."""
    ks = []
    for c, row in zip(tableau.c, tableau.a):
        ks.append(f(t + c * dt, y + dt * sum((w * k for w, k in zip(row, ks)), torch.zeros_like(y))))
    total = [None if w is None else dt * sum(wi * k for wi, k in zip(w, ks)) for w in (tableau.b, tableau.e)]
    return y + total[0], total[1]


@pytest.mark.parametrize("name", sorted(TABLEAUS))
def test_a_step_is_the_tableaus_sums_and_its_error_estimate_carries_no_graph(name):
    """The stage sums, accumulated in place, equal the written equations for a step size that
    is a number, one tensor or one per sample, and autograd through them is exact (gradcheck)."""
    tableau, f = TABLEAUS[name], Dense()
    y = torch.randn(3, 6, dtype=D, requires_grad=True)
    for dt in (0.3, torch.tensor(0.3, dtype=D), torch.tensor([[0.3], [-0.2], [0.1]], dtype=D)):
        y1, err = butcher_step(f, tableau, 0.5, dt, y)
        for error in (False, True) if tableau.e is not None else (False,):
            ours, ours_err, _ = rk_step(f, tableau, 0.5, dt, y, error=error)
            increment, increment_err = rk_increment(f, tableau, 0.5, dt, y, error=error)
            assert torch.allclose(ours, y1, rtol=1e-13, atol=1e-14) and torch.allclose(increment, y1 - y, atol=1e-14)
            if error:
                assert torch.allclose(ours_err, err, atol=1e-14) and torch.equal(ours_err, increment_err)
                assert ours.requires_grad and not ours_err.requires_grad  # it only steers the step size
    if tableau.e is None:
        with pytest.raises(ValueError, match=f"solver={name!r} has no error estimate"):
            rk_step(f, tableau, 0.0, 0.1, y, error=True)
    h = torch.tensor([[0.3], [-0.2], [0.1]], dtype=D, requires_grad=True)
    step = partial(rk_step, f, tableau, 0.5, error=tableau.e is not None)
    assert torch.autograd.gradcheck(lambda y, h: step(h, y)[0], (y, h))


@pytest.mark.parametrize("per_sample", [False, True])
def test_the_stage_times_are_one_operation_for_all_stages(per_sample):
    """With a tensor time and step size (as the adaptive loop has them), the stages' times
    ``t + c_i dt`` are computed in one pass for all stages, each stage reading a view of it: two
    kernels per step on a GPU instead of two per stage. Bit for bit the written arithmetic."""
    seen = []
    shape = (2, 1) if per_sample else ()
    t, dt = torch.full(shape, 0.5, dtype=D), torch.full(shape, 0.3, dtype=D)
    rk_step(lambda s, y: seen.append(s) or -y, TABLEAUS["dopri5"], t, dt, torch.ones(2, 3, dtype=D), error=True)
    assert seen[0] is t and len(seen) == 7
    assert len({id(s._base) for s in seen[1:]}) == 1 and seen[1]._base is not None
    assert [s.flatten().tolist() for s in seen[1:]] == [[0.5 + c * 0.3] * t.numel() for c in TABLEAUS["dopri5"].c[1:]]


def test_the_engine_takes_torchdiffeqs_steps():
    """Same tableau, error norm, first step and step rule: the same number of steps and calls.
    torchdiffeq steps past the end and interpolates back; the engine ends its last step there,
    which for bosh3 (a crude interpolant) is far more accurate."""
    torch.manual_seed(0)
    f, y0 = Dense(), torch.randn(4, 6, dtype=D)
    with torch.no_grad():
        exact = integrate(f, y0, [0.0, 2.0], "rk4", step_size=1 / 2000).y
    for method in ("dopri5", "bosh3"):
        ours = integrate(f, y0, [0.0, 2.0], method, rtol=1e-6, atol=1e-8)
        theirs = integrate(f, y0, [0.0, 2.0], TorchDiffEq(method, rtol=1e-6, atol=1e-8))
        assert isinstance(get_solver(method), RungeKutta)
        assert abs(ours.stats.nfe_forward - theirs.stats.nfe_forward) <= 0.1 * theirs.stats.nfe_forward
        assert ours.stats.steps_accepted == pytest.approx(theirs.stats.steps_accepted, abs=1)
        assert float((ours.y.detach() - exact).abs().max()) < 2e-6


@pytest.mark.parametrize("method", ["dopri5", "tsit5", "bosh3"])
def test_output_times_inside_a_step_are_interpolated_not_stepped_to(method):
    torch.manual_seed(0)
    f, y0 = Dense(), torch.randn(4, 6, dtype=D)
    times = torch.linspace(0.0, 3.0, 16, dtype=D)
    with torch.no_grad():
        exact = integrate(f, y0, times, "rk4", step_size=1 / 1000).ys
        many = integrate(f, y0, times, method, rtol=1e-6, atol=1e-8)
        two = integrate(f, y0, [0.0, 3.0], method, rtol=1e-6, atol=1e-8)
    assert many.stats.nfe_forward == two.stats.nfe_forward  # the same steps: 16 outputs cost nothing
    assert torch.equal(many.y, two.y)
    assert float((many.ys - exact).abs().max()) < (1e-5 if method == "bosh3" else 2e-6)


def test_a_step_returns_its_dense_output_only_where_outputs_are_interpolated(monkeypatch):
    """Without output times inside the interval a step returns no dense output, which a compiled
    step's backward pass would otherwise fill with zero gradients (a launch each)."""
    returned = []
    attempt = AdaptiveLoop.attempt

    def recording(self, *args):
        advance = attempt(self, *args)
        returned.append(advance.dense is not None)
        return advance

    monkeypatch.setattr(AdaptiveLoop, "attempt", recording)
    f, y0 = Dense(), torch.randn(4, 6, dtype=D, requires_grad=True)
    kept = {}
    for times in ([0.0, 1.0], [0.0, 0.5, 1.0]):
        returned.clear()
        integrate(f, y0, times, RungeKutta("dopri5", rtol=1e-6, atol=1e-8)).ys.sum().backward()
        kept[len(times)] = set(returned)
    assert kept == {2: {False}, 3: {True}}


@pytest.mark.parametrize("per_sample", [False, True])
def test_each_output_time_is_interpolated_once_by_the_step_that_crossed_it(monkeypatch, per_sample):
    """400 output times through steps with rejections: the check's read-back tells the host which
    step crossed which output, and only those are evaluated (with shared steps, each output once,
    whatever check_every); checking every step or every 4 gives the same values, and per sample,
    each sample's values are those of solving it alone."""
    rates, y0 = [1.0, 2.0, 400.0], torch.tensor([[1.0, -1.0], [0.5, 2.0], [1.0, 1.0]], dtype=D)
    times = torch.linspace(0.0, 2.0, 402, dtype=D)
    evaluated: list[int] = []
    evaluate = rk.horner
    monkeypatch.setattr(rk, "horner", lambda *args: evaluated.append(1) or evaluate(*args))
    solves, counts = {}, {}
    for every in (1, 4):
        evaluated.clear()
        solver = RungeKutta("dopri5", rtol=1e-6, atol=1e-9, check_every=every, per_sample=per_sample)
        with torch.no_grad():
            solves[every] = integrate(Stiffish(rates), y0, times, solver)
        counts[every] = len(evaluated)
    assert torch.equal(solves[1].ys, solves[4].ys) and solves[1].stats.steps_rejected > 0
    if not per_sample:
        assert counts == {1: 400, 4: 400}
        return
    assert counts[1] == counts[4] and 400 < counts[1] < 3 * 400  # once per step some sample crossed it in
    for i, rate in enumerate(rates):
        with torch.no_grad():
            alone = integrate(Stiffish([rate]), y0[i : i + 1], times, RungeKutta("dopri5", rtol=1e-6, atol=1e-9))
        torch.testing.assert_close(solves[1].ys[:, i : i + 1], alone.ys, rtol=1e-12, atol=1e-12)


class FullSize(TorchDispatchMode):
    """The operations that return a tensor of ``numel`` elements."""

    def __init__(self, numel: int):
        super().__init__()
        self.numel, self.ops = numel, []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if isinstance(out, torch.Tensor) and out.numel() == self.numel:
            self.ops.append(func.__name__)
        return out


@pytest.mark.parametrize("per_sample", [False, True])
def test_output_times_are_written_into_the_solution_in_place(per_sample):
    """Without a graph to record, each output is evaluated into its row of the solution, which is
    allocated once: no copy of all the outputs stacked (at 400 outputs of the thesis ODENet block
    the copy cost as much as the evaluations). The values are those of a solve with a graph."""
    torch.manual_seed(0)
    f, y0 = Dense(), torch.randn(4, 6, dtype=D)
    times = torch.linspace(0.0, 3.0, 16, dtype=D)
    solver = RungeKutta("dopri5", rtol=1e-6, atol=1e-8, per_sample=per_sample)
    with torch.no_grad(), FullSize(16 * y0.numel()) as ops:
        solution = integrate(f, y0, times, solver)
    assert ops.ops == ["new_empty.default"]
    graph = integrate(f, y0.requires_grad_(), times, solver)
    assert graph.ys.requires_grad and torch.equal(solution.ys, graph.ys.detach())


@pytest.mark.parametrize(
    ("solver", "gradient", "split"),
    [
        ("rk4", "backprop", False),
        ("rk4", "reversible", False),
        ("symplectic_euler", "backprop", True),
        ("verlet", "reversible", True),
    ],
)
def test_fixed_step_outputs_are_written_into_the_solution_in_place(solver, gradient, split):
    """Fixed steps likewise: each output state is written into its row as the steps reach it
    (plain steps, the reversible Runge-Kutta pair, split steps carried as halves), the same
    values as the solve with a graph, whose outputs are stacked."""
    torch.manual_seed(0)
    f = TwoLayerField(6, "tanh", n_nodes=3, dt=0.5).double() if split else Dense()
    y0 = torch.randn(4, 6, dtype=D)
    times = torch.linspace(0.0, 1.5, 16, dtype=D)
    with torch.no_grad(), FullSize(16 * y0.numel()) as ops:
        solution = integrate(f, y0, times, solver, step_size=0.05, gradient=gradient)
    assert ops.ops == ["new_empty.default"]
    graph = integrate(f, y0.requires_grad_(), times, solver, step_size=0.05, gradient="backprop")
    if gradient == "backprop" or split:  # a split solver's reversible pass keeps its forward map
        assert graph.ys.requires_grad and torch.equal(solution.ys, graph.ys.detach())
    else:  # the coupled pair's outputs kept as they come
        steps, outputs = plan_steps(times.tolist(), [], 0.05)
        with torch.no_grad():
            pair = reversible_rk.fixed_steps(
                RK4, Schedule(f, get_solver("rk4"), steps, outputs), y0, Stats("rk4"), COUPLING
            )
        assert torch.equal(solution.ys, torch.stack([y0, *pair]))


def test_step_control_reads_the_host_once_per_check_every_steps(host_syncs):
    """One read-back per check: after the first step, then after ``check_every`` steps or, if
    sooner, when the samples could reach the end at their step sizes: at most one check per solve
    more than one per ``check_every`` steps, and few step attempts after the end."""
    torch.manual_seed(0)
    f, y0 = Dense(), torch.randn(4, 6, dtype=D)
    for times in ([0.0, 3.0], torch.linspace(0.0, 3.0, 16).tolist()):  # output times read from dense output
        calls = {}
        for every in (1, 4):
            with host_syncs() as syncs:
                sol = integrate(f, y0, times, RungeKutta("dopri5", rtol=1e-8, atol=1e-10, check_every=every))
            steps = sol.stats.steps_accepted + sol.stats.steps_rejected
            assert steps > 8
            # one per check, which also reads the statistics, whether y0 was finite and the steps' times
            assert math.ceil(steps / every) <= len(syncs.calls) <= 1 + math.ceil(steps / every), syncs.calls
            assert every > 1 or len(syncs.calls) == steps
            calls[every] = sol.stats.nfe_forward
        assert calls[4] == calls[1]  # no field call after the end
    block, x = ODEBlock(ODENetField(4), solver="dopri5"), torch.randn(2, 4, 5, 5)
    calls = {}
    for every in (1, 100):
        block.solver = RungeKutta("dopri5", rtol=1e-3, atol=1e-3, check_every=every)
        with host_syncs() as syncs:
            block(x)
        calls[every] = block.last_stats.nfe_forward
    assert len(syncs.calls) == 2, syncs.calls  # after the first step and at the end: the field reads nothing back
    assert calls[100] <= calls[1] + 6  # one attempt after the end at most, not the rest of 100 (6 calls each)
    for bad in (math.nan, math.inf, -math.inf):
        with pytest.raises(ValueError, match="y0 must be finite"):
            integrate(f, torch.tensor([[0.0, 1.0, bad, 2.0, 0.0, 0.0]], dtype=D), [0.0, 1.0], "dopri5")


def test_an_adaptive_step_compiles_without_a_graph_break():
    """One step of the loop is a fixed sequence of tensor operations: it compiles whole."""
    f, y0 = Dense(), torch.randn(3, 6, dtype=D)
    loop = RungeKutta("tsit5", rtol=1e-6, atol=1e-8).loop(
        Problem(f, y0, [0.0, 1.0], [], None, Reversible(), None, 10**6)
    )
    counts = torch.zeros(3, 1, dtype=torch.float64)

    def step(progress):
        return loop.attempt(f, 1.0, torch.tensor(1.0, dtype=D), progress, counts)

    start = Progress(torch.zeros(1, dtype=D), torch.full((1,), 0.1, dtype=D), y0, None, torch.ones(1, dtype=D),
                     torch.zeros(1, dtype=torch.bool))  # fmt: skip
    with torch.no_grad():
        eager = step(start)
        compiled = torch.compile(step, fullgraph=True, backend="aot_eager")(start)
    assert compiled.calls == eager.calls == 7  # tsit5: its first stage (not known yet) and six more
    torch.testing.assert_close(compiled.progress, eager.progress)
    torch.testing.assert_close(compiled.counts, eager.counts)


@pytest.mark.parametrize("per_sample", [False, True], ids=["shared", "per-sample"])
@pytest.mark.parametrize("make", [Scheme, partial(Coupled, COUPLING)], ids=["plain", "reversible"])
def test_an_adaptive_step_keeps_every_tensor_on_its_device(make, per_sample):
    """One step attempt, forward and backward, on a device that is not the CPU (``meta``:
    shapes without data): a tensor of the tableau or the step control made on the CPU and
    combined with the state's fails there as on CUDA, which CI does not have."""
    meta, n, scheme = torch.device("meta"), 3 if per_sample else 1, make()
    f, y0 = Dense().to(meta), torch.randn(3, 6, dtype=D, device=meta, requires_grad=True)
    problem = Problem(f, y0, [0.0, 1.0], [], None, Backprop(), None, 10**6)
    loop = RungeKutta("dopri5", rtol=1e-6, atol=1e-8, per_sample=per_sample).loop(problem, scheme)
    start = Progress(torch.zeros(n, dtype=D, device=meta), torch.full((n,), 0.1, dtype=D, device=meta),
                     scheme.start(f, y0), None, torch.ones(n, dtype=D, device=meta),
                     torch.zeros(n, dtype=torch.bool, device=meta))  # fmt: skip
    counts = torch.zeros(3, n, dtype=torch.float64, device=meta)
    advance = loop.attempt(f, 1.0, torch.ones((), dtype=D, device=meta), start, counts)
    grads = torch.autograd.grad(scheme.solution(advance.progress.state).sum(), [y0, *f.parameters()])
    assert advance.counts.is_meta and advance.progress.h.is_meta and all(g.is_meta for g in grads)


COMPILED: list[int] = []  # graph sizes, one per compilation by the backend below


@register_backend
def contham_test_counting(graph, example_inputs):
    """Runs dynamo's graph as it is (autograd through its operations), counting compilations."""
    COMPILED.append(len(graph.graph.nodes))
    return graph.forward


@register_backend
def contham_test_refusing(graph, example_inputs):
    raise RuntimeError("this backend compiles nothing")


def solve_and_gradients(solver, f, y0, times, gradient="backprop"):
    """The solution at ``times`` and the gradients of a loss on it (y0 and parameters)."""
    sol = integrate(f, y0, times, solver, gradient=gradient)
    weight = torch.linspace(-1, 1, sol.ys.numel(), dtype=sol.ys.dtype).view_as(sol.ys)
    return sol, torch.autograd.grad((sol.ys * weight).sum(), [y0, *f.parameters()])


def test_compiled_steps_equal_eager_steps_and_compile_once_per_kind_of_solve():
    """``compile``: each step attempt is one graph (and the reversible pair's backward steps),
    compiled at the first solve of a kind (shapes, grad mode, scheme), not again for later steps
    or solves; values, gradients and statistics are the eager ones."""
    torch.manual_seed(0)
    f, inner = ODENetField(4).double(), [0.0, 0.3, 0.7, 1.0]  # output times inside: the dense output
    y0 = torch.randn(3, 4, 5, 5, dtype=D, requires_grad=True)
    torch._dynamo.reset()
    rk._NODES.clear()  # a compiled step must not be compiled again once the stages' times exist
    COMPILED.clear()
    for per_sample in (False, True):
        eager = RungeKutta("dopri5", rtol=1e-5, atol=1e-5, per_sample=per_sample)
        compiled = RungeKutta("dopri5", rtol=1e-5, atol=1e-5, compile="contham_test_counting", per_sample=per_sample)
        for gradient, times in (("backprop", inner), ("reversible", [0.0, 1.0])):  # the pair keeps the end only
            graphs = []
            for scale in (1.0, 2.0):  # a second solve takes other steps
                start = (scale * y0).detach().requires_grad_(True)
                (ours, our_grads), (sol, grads) = (
                    solve_and_gradients(s, f, start, times, gradient) for s in (compiled, eager)
                )
                graphs.append(len(COMPILED))
                torch.testing.assert_close(ours.ys, sol.ys, rtol=1e-12, atol=1e-12)
                for a, b in zip(our_grads, grads, strict=True):
                    torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
                assert ours.stats == sol.stats and sol.stats.steps_accepted > 3
            # backprop: the step; reversible: the step and the backward pass's increment (the
            # first step too: its y, z and z before are three tensors, and the backward pass's
            # times are no views, which the graphs are guarded on)
            assert graphs == [1, 1] if gradient == "backprop" else graphs == [2, 2], COMPILED
            COMPILED.clear()
    assert "compile='contham_test_counting'" in repr(compiled)


def test_a_step_that_fails_to_compile_warns_once_and_steps_eagerly():
    torch.manual_seed(0)
    f, y0 = Dense(), torch.randn(3, 6, dtype=D, requires_grad=True)
    eager = solve_and_gradients(RungeKutta("tsit5", rtol=1e-6, atol=1e-8), f, y0, [0.0, 1.0])
    refused = RungeKutta("tsit5", rtol=1e-6, atol=1e-8, compile="contham_test_refusing")
    failed = "contham_test_refusing.*failed for AdaptiveLoop.attempt.*running it eagerly"
    with pytest.warns(RuntimeWarning, match=failed):
        ours = solve_and_gradients(refused, f, y0, [0.0, 1.0])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once: the next solve steps eagerly without trying again
        again = solve_and_gradients(refused, f, y0, [0.0, 1.0])
    for sol, grads in (ours, again):
        assert torch.equal(sol.ys, eager[0].ys) and all(map(torch.equal, grads, eager[1]))
    with pytest.raises(ValueError, match="compile must be true, false or a backend among .*inductor"):
        RungeKutta("dopri5", compile="fast")


def test_compile_steps_compiles_the_adaptive_engines_blocks_only():
    model = nn.Sequential(
        ODEBlock(ODENetField(4), solver="dopri5", rtol=1e-3, atol=1e-3),
        ODEBlock(ODENetField(4), solver=TorchDiffEq("bosh3")),
        ODEBlock(ODENetField(4), solver="rk4", step_size=0.5),
    )
    compile_steps(model, "aot_eager")
    adaptive, theirs, fixed = (block.solver for block in model)
    assert adaptive.compile == "aot_eager" and adaptive.rtol == 1e-3 and isinstance(theirs, TorchDiffEq)
    assert not hasattr(fixed, "compile")  # compiled within a model's graph, as blocks of fixed steps are


def test_per_sample_steps_give_each_sample_its_own_solve():
    rates = [1.0, 2.0, 400.0]  # the last sample is stiff for an explicit method
    y0 = torch.tensor([[1.0, -1.0], [0.5, 2.0], [1.0, 1.0]], dtype=D)
    solver = RungeKutta("dopri5", rtol=1e-6, atol=1e-9, per_sample=True)
    batch = integrate(Stiffish(rates), y0, [0.0, 1.0, 2.0], solver)
    shared = integrate(Stiffish(rates), y0, [0.0, 1.0, 2.0], RungeKutta("dopri5", rtol=1e-6, atol=1e-9))
    for i, rate in enumerate(rates):
        alone = integrate(Stiffish([rate]), y0[i : i + 1], [0.0, 1.0, 2.0], solver)
        torch.testing.assert_close(batch.ys[:, i : i + 1], alone.ys, rtol=1e-12, atol=1e-12)
        assert batch.stats.steps_per_sample[i] == alone.stats.steps_accepted
        assert batch.stats.nfe_per_sample[i] == alone.stats.nfe_forward
    calm = batch.stats.steps_per_sample[:2]  # no longer dragged along by the stiff one
    assert max(calm) * 5 < min(batch.stats.steps_per_sample[2], shared.stats.steps_accepted)
    with pytest.raises(ValueError, match="per_sample=True needs a batch axis"):
        integrate(Stiffish([1.0]), torch.tensor(1.0, dtype=D), [0.0, 1.0], solver)


def test_the_controller_and_options_are_checked():
    with pytest.raises(ValueError, match="pcoeff must be a finite number >= 0"):
        PIController(pcoeff=-0.1)
    with pytest.raises(ValueError, match="check_every must be an integer >= 1"):
        RungeKutta("dopri5", check_every=0)
    with pytest.raises(ValueError, match="has no error estimate: give it a step_size"):
        integrate(Dense(), torch.randn(2, 6, dtype=D), [0, 1], RungeKutta("rk4"))
    refusals = [  # the adjoint is torchdiffeq's: each refusal names what it lacks
        ("tsit5", "gradient='adjoint' runs torchdiffeq, which has no method 'tsit5'; use gradient='reversible'"),
        (RungeKutta("dopri5", per_sample=True), "whose steps the whole batch shares; got per_sample=True"),
        (RungeKutta("dopri5", controller=PIController(pcoeff=0.4)), r"integral controller; got PIController\("),
    ]
    for solver, refusal in refusals:
        with pytest.raises(ValueError, match=refusal):
            integrate(Dense(), torch.randn(2, 6, dtype=D), [0, 1], solver, gradient="adjoint")
    assert RungeKutta("dopri5").no_adjoint() is None
    pi = RungeKutta("dopri5", rtol=1e-8, atol=1e-10, controller=PIController(icoeff=0.3, pcoeff=0.4))
    torch.manual_seed(0)
    f, y0 = Dense(), torch.randn(4, 6, dtype=D)
    with torch.no_grad():
        exact = integrate(f, y0, [0, 2], "dopri5", rtol=1e-12, atol=1e-14).y
        assert float((integrate(f, y0, [0, 2], pi).y - exact).abs().max()) < 1e-7


def autograd_through_the_scheme(solver, f, y0, times):
    """The reversible scheme's forward map run through autograd: the reference gradient."""
    loop = solver.loop(Problem(f, y0, times, [], None, Reversible(), None, 10**6), Coupled())
    return loop.run()[-1][0]


@pytest.mark.parametrize("per_sample", [False, True])
@pytest.mark.parametrize("method", ["dopri5", "tsit5", "bosh3", "adaptive_heun"])
def test_reversible_gradients_equal_autograd_through_the_same_scheme(method, per_sample):
    torch.manual_seed(1)
    y0 = torch.randn(3, 6, dtype=D, requires_grad=True)
    w = torch.randn(6, 6, dtype=D)
    solver = RungeKutta(method, rtol=1e-5, atol=1e-7, per_sample=per_sample)
    for f in (Dense(), lambda t, y: torch.tanh(y @ w)):  # a module, and a function without parameters
        solution = integrate(f, y0, [0.0, 1.5], solver, gradient="reversible")
        reference = autograd_through_the_scheme(solver, f, y0, [0.0, 1.5])
        assert torch.equal(solution.y, reference)
        inputs = [y0, *(f.parameters() if isinstance(f, nn.Module) else [])]
        for a, b in zip(
            torch.autograd.grad(solution.y.pow(2).sum(), inputs), torch.autograd.grad(reference.pow(2).sum(), inputs)
        ):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
        assert solution.stats.nfe_backward > 0


@pytest.mark.parametrize("steps", [{}, {"step_size": 0.1}], ids=["adaptive", "fixed steps"])
def test_differentiating_reversible_gradients_again_raises(steps):
    """The walk's products carry no graph: a second backward pass through them raises (it
    returned part of the second derivative, silently)."""
    torch.manual_seed(0)
    f = Dense(3)
    y0 = torch.randn(2, 3, dtype=D, requires_grad=True)
    out = integrate(f, y0, [0.0, 1.0], RungeKutta("dopri5"), gradient="reversible", **steps).y
    (g,) = torch.autograd.grad(out.pow(2).sum(), y0, create_graph=True)
    with pytest.raises(RuntimeError, match="once_differentiable"):
        g.pow(2).sum().backward()


def test_reversible_fixed_steps_pass_gradcheck_and_have_the_methods_order():
    torch.manual_seed(2)
    f = Dense(3)
    y0 = torch.randn(2, 3, dtype=D, requires_grad=True)
    for method in ("euler", "midpoint", "rk4", "dopri5"):

        def run(y, *params, method=method):
            return integrate(f, y, [0.0, 0.6], RungeKutta(method), step_size=0.1, gradient="reversible").y

        assert torch.autograd.gradcheck(run, (y0, *f.parameters()))
    exact = integrate(f, y0, [0.0, 1.0], "dopri5", rtol=1e-12, atol=1e-14).y
    for method, order in (("euler", 1), ("midpoint", 2), ("rk4", 4)):
        errors = [
            float(
                (integrate(f, y0, [0.0, 1.0], method, step_size=h, gradient="reversible").y - exact)
                .abs()
                .max()
                .detach()
            )
            for h in (1 / 16, 1 / 32)
        ]
        assert math.log2(errors[0] / errors[1]) == pytest.approx(order, abs=0.3)


def test_the_last_steps_z_is_kept_not_rebuilt():
    """z after the last step feeds no step: fixed steps never compute it, and the backward pass
    starts from the z before the last step, kept by the forward pass, so the last step's
    ``Phi_{-h}`` is evaluated by neither pass where it would be wasted. Counted field calls (a
    fixed dopri5 step calls the field 6 times: its seventh stage only estimates the error; one more
    call, not counted, finds the tensors the field reads, `grad_inputs`)."""
    f, calls = Dense(), []
    f.register_forward_hook(lambda *_: calls.append(1))
    y0 = torch.randn(3, 6, dtype=D, requires_grad=True)
    fixed = {"step_size": 0.1}
    adaptive = RungeKutta("dopri5", rtol=1e-6, atol=1e-8)
    for solver, steps in ((RungeKutta("rk4"), fixed), (RungeKutta("dopri5"), fixed), (adaptive, {})):
        calls.clear()
        solution = integrate(f, y0, [0.0, 0.6], solver, gradient="reversible", **steps)
        forward = len(calls) - 1
        solution.y.sum().backward()
        taken, stages = solution.stats.steps_accepted, solver.tableau.solution_stages
        assert (forward, len(calls) - 1 - forward) == (solution.stats.nfe_forward, solution.stats.nfe_backward)
        assert solution.stats.nfe_backward == (2 * taken - 1) * stages
        if steps:  # six steps of two Phis, less the last Phi_{-h}
            assert (taken, forward) == (6, 11 * stages)


def test_the_reversible_gradient_is_far_closer_to_the_computed_losss_than_the_adjoints():
    """Each strategy against the exact gradient of its own forward map (backprop through it):
    the reversible scheme's is exact up to rounding, the adjoint's only up to its tolerances."""
    torch.manual_seed(3)
    f = Dense()
    y0 = torch.randn(3, 6, dtype=D, requires_grad=True)
    inputs = [y0, *f.parameters()]

    def gap(strategy, reference):
        out = integrate(f, y0, [0.0, 2.0], "dopri5", rtol=1e-6, atol=1e-8, gradient=strategy).y
        grads = torch.autograd.grad(out.pow(2).sum(), inputs)
        exact = torch.autograd.grad(reference.pow(2).sum(), inputs)
        return max(float((a - b).norm() / b.norm()) for a, b in zip(grads, exact))

    reversible = gap("reversible", autograd_through_the_scheme(get_solver("dopri5", 1e-6, 1e-8), f, y0, [0.0, 2.0]))
    adjoint = gap(Adjoint(), integrate(f, y0, [0.0, 2.0], TorchDiffEq("dopri5", rtol=1e-6, atol=1e-8)).y)
    assert reversible < 1e-12 and reversible * 100 < adjoint


def test_reversible_memory_does_not_grow_with_the_number_of_steps():
    torch.manual_seed(4)
    f = Dense(16)
    y0 = torch.randn(64, 16, dtype=D, requires_grad=True)
    saved = {}
    for gradient in ("backprop", "reversible"):
        for steps in (16, 256):
            with SavedTensors() as counter:
                integrate(f, y0, [0.0, 1.0], "rk4", step_size=1 / steps, gradient=gradient)
            saved[gradient, steps] = counter.megabytes_without(f.parameters())
    assert saved["reversible", 16] == saved["reversible", 256] < saved["backprop", 16] < saved["backprop", 256]
    tolerances = []
    for tol in (1e-4, 1e-9):
        with SavedTensors() as counter:
            integrate(f, y0, [0.0, 1.0], RungeKutta("dopri5", rtol=tol, atol=tol), gradient="reversible")
        tolerances.append(counter.megabytes_without(f.parameters()))
    assert tolerances[0] == tolerances[1]


class Operations(TorchDispatchMode):
    """Counts the tensor operations run inside it."""

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count += 1
        return func(*args, **(kwargs or {}))


class AsCalled(nn.Module):
    """A field called as it is: a wrapper without `prepared`."""

    def __init__(self, field: nn.Module):
        super().__init__()
        self.field = field

    def forward(self, t, y):
        return self.field(t, y)


@pytest.mark.parametrize(
    "method, gradient, per_sample",
    [
        ("dopri5", "backprop", False),
        ("dopri5", "backprop", True),
        ("dopri5", "reversible", False),
        ("dopri5", "reversible", True),
        ("rk4", "backprop", False),
        ("rk4", "reversible", False),
    ],
)
def test_a_solve_prepares_the_odenet_field_once(monkeypatch, method, gradient, per_sample):
    """`ODENetField.prepared`: the adaptive engine and the fixed steps have what the weights
    alone determine (each convolution's kernels and time-channel map) computed once per solve,
    not at every field call, and once more for a backward pass that rebuilds the steps:
    the values of a solve of the field called as it is, bit for bit, its gradients to rounding,
    fewer operations."""
    torch.manual_seed(0)
    f = ODENetField(4, groups=2).double()
    y0 = torch.randn(3, 4, 5, 5, dtype=D, requires_grad=True)
    preparations = []
    prepare = ODENetField.prepared
    monkeypatch.setattr(ODENetField, "prepared", lambda self, like: preparations.append(1) or prepare(self, like))
    solver, steps = (
        (RungeKutta(method, rtol=1e-5, atol=1e-5, per_sample=per_sample), {})
        if method == "dopri5"
        else (method, {"step_size": 0.25})
    )
    runs = {}
    for name, field in (("prepared", f), ("as called", AsCalled(f))):
        preparations.clear()
        with Operations() as ops:
            sol = integrate(field, y0, [0.0, 1.0], solver, gradient=gradient, **steps)
            grads = torch.autograd.grad(sol.y.pow(2).sum(), [y0, *f.parameters()])
        runs[name] = sol, grads, ops.count, len(preparations)
    (ours, our_grads, our_ops, prepared), (theirs, their_grads, their_ops, called) = runs.values()
    assert torch.equal(ours.ys, theirs.ys) and ours.stats == theirs.stats
    for a, b in zip(our_grads, their_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)
    reversible = gradient == "reversible"
    # backprop's backward pass calls nothing; the reversible scheme's rebuilds the steps, after one
    # call, not counted, that finds the tensors the field reads (`grad_inputs`)
    rebuilt = ours.stats.nfe_backward + 1 if reversible else 0
    passes = 1 + 2 * reversible  # the reversible backward pass prepares the field afresh, once; so does that call
    assert our_ops < their_ops and called == ours.stats.nfe_forward + rebuilt and prepared == passes


def test_the_thesis_odenet_trains_with_reversible_gradients():
    torch.manual_seed(5)
    net = build("thesis_odenet", image_size=8, gradient="reversible", rtol=1e-2, atol=1e-2).double()
    x, labels = torch.randn(4, 1, 8, 8, dtype=D), torch.tensor([0, 1, 2, 3])
    loss = nn.functional.cross_entropy(net(x), labels)
    loss.backward()
    grads = [p.grad for p in net.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    block = next(m for m in net.modules() if isinstance(m, ODEBlock))
    assert isinstance(block.solver, RungeKutta) and isinstance(block.gradient, Reversible)
    assert block.last_stats.nfe_backward > 0
