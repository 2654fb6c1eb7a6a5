"""contham's Runge-Kutta engine against torchdiffeq, and the gradient strategies of an adaptive solve.

On the thesis's ODENet block (64 channels, 6x6 maps after the downsampling, batch 128, dopri5
at rtol = atol = tol; random input through the network's own downsampling), measured side by
side in one run (interleaved, medians):

1. one forward solve, without and with a graph for backprop: contham's dopri5 vs torchdiffeq's
   on the same field, and torchdiffeq's on the field as its MNIST example writes it (the time
   channel concatenated), with the field calls (NFE) of each, and the time of those field calls
   alone (no solver: the floor of any solver's time);
2. one training step of the whole network (forward, cross-entropy, backward) with
   ``gradient="backprop"``, ``"adjoint"`` and ``"reversible"`` (McCallum & Foster), and with
   torchdiffeq's dopri5 and backprop: seconds, the ratio to backprop, NFE forward/backward and
   the kernel launches of one step (the host's work: ``--batch 1`` times a step where the
   host sets the pace, as on a GPU); with ``--compile``, also backprop and reversible with the
   adaptive steps compiled by inductor (`contham.compile_steps`; the warm-up round compiles;
   inductor's CPU kernels stand for the GPU's, which it fuses alike);
3. with ``--outputs N ...``: one forward solve with N output times on [0, 1] (read from the dense
   output), contham's dopri5 vs torchdiffeq's;
4. the loop's own cost on a small problem (``y' = A y``, 10 states, ``A`` skew as in torchdiffeq's
   "linear" test problem, times 1 to 8; dopri5 at tol 1e-8, adaptive_heun at 1e-6): steps, NFE,
   tensor operations per step beyond the field's (views excluded: on a GPU each is a kernel
   launch) and seconds per solve, contham vs torchdiffeq;
5. with ``--tests <torchdiffeq checkout>/tests``: NFE of the engine's dopri5 and bosh3 vs
   torchdiffeq's on torchdiffeq's own test problems (float64, forwards), and the gradient error
   of the reversible scheme and of the adjoint against the exact gradient of each one's computed
   loss.

    python benchmarks/runge_kutta.py [--tol 1e-3] [--batch 128] [--repeats 5] [--tests DIR]
                                     [--outputs 2 101 401] [--compile]
"""

from __future__ import annotations

import argparse
import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from _timing import classifier_step, interleaved_medians, launches
from torch._inductor import config as inductor
from torch.utils._python_dispatch import TorchDispatchMode
from torchdiffeq_problems import load

from contham import ODEBlock, collect_stats, compile_steps, integrate
from contham.fields import ConcatConv2d, prepared
from contham.gradients import Reversible
from contham.models import build
from contham.solvers import Problem, RungeKutta, Solution, TorchDiffEq
from contham.solvers.reversible_rk import Coupled


class ConcatenatingConv2d(ConcatConv2d):
    """`ConcatConv2d` as torchdiffeq's MNIST example writes it: t concatenated to x as a channel."""

    def forward(self, t: float | torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return self.conv(torch.cat((torch.ones_like(x[:, :1]) * t, x), dim=1))


def concatenating(field: torch.nn.Module) -> torch.nn.Module:
    """A copy of ``field`` whose time channels are concatenated (the same map and weights)."""
    written = copy.deepcopy(field)
    for conv in (written.conv1, written.conv2):  # an ODENetField's
        conv.__class__ = ConcatenatingConv2d
    return written


def thesis_block(args: argparse.Namespace) -> tuple[ODEBlock, torch.Tensor]:
    """The thesis ODENet's ODE block and its input for a random batch."""
    torch.manual_seed(0)
    net = build("thesis_odenet", in_channels=1)
    block = next(m for m in net.modules() if isinstance(m, ODEBlock))
    with torch.no_grad():
        return block, net.downsampling(torch.randn(args.batch, 1, 28, 28))


def solve_times(args: argparse.Namespace) -> None:
    block, y0 = thesis_block(args)
    torchdiffeq = TorchDiffEq("dopri5", rtol=args.tol, atol=args.tol)
    written = concatenating(block.field)
    runs = {  # name: (solver, field)
        "contham dopri5": (RungeKutta("dopri5", rtol=args.tol, atol=args.tol), block.field),
        "torchdiffeq dopri5": (torchdiffeq, block.field),
        "torchdiffeq dopri5, concatenating field": (torchdiffeq, written),
    }
    nfe: dict[str, int] = {}

    def solve(name: str, grad: bool):
        solver, field = runs[name]

        def run() -> None:
            with torch.set_grad_enabled(grad):
                nfe[name] = integrate(field, y0, [0.0, 1.0], solver).stats.nfe_forward

        return run

    def alone(field: torch.nn.Module, prepare: bool = False):
        def calls() -> None:  # the field calls of a solve and nothing else: the floor of its time
            with torch.no_grad():
                f = prepared(field, y0) if prepare else field  # once, as contham's engine does
                for _ in range(nfe["contham dopri5"]):
                    f(0.5, y0)

        return calls

    modes = ("no graph", "with graph")
    cases = {f"{name}, {mode}": solve(name, mode == "with graph") for name in runs for mode in modes}
    fields = {
        "field alone": alone(block.field),
        "prepared field alone": alone(block.field, prepare=True),
        "concatenating field alone": alone(written),
    }
    solve("contham dopri5", False)()  # the NFE that the fields alone repeat
    times = interleaved_medians({**cases, **fields}, args.repeats)
    print(f"\nOne forward solve of the ODENet block, batch {args.batch}, tol {args.tol:g}")
    print("| solver | graph | NFE | s | over contham's |")
    print("|---|---|---|---|---|")
    for mode in modes:
        ours = times[f"contham dopri5, {mode}"]
        for name in runs:
            took = times[f"{name}, {mode}"]
            ratio = "" if name.startswith("contham") else f"{took / ours:.2f}x"
            print(f"| {name} | {mode} | {nfe[name]} | {took:.3f} | {ratio} |")
    calls, ours_alone, theirs_alone = nfe["contham dopri5"], times["field alone"], times["concatenating field alone"]
    ceiling = times["torchdiffeq dopri5, no graph"] / ours_alone  # the most a solver calling the field can gain
    print(f"| the field's {calls} calls alone | no graph | | {ours_alone:.3f} | ceiling {ceiling:.2f}x |")
    ready = times["prepared field alone"]
    print(f"| the same, the field prepared once (`prepared`) | no graph | | {ready:.3f} | "
          f"{ready / ours_alone:.2f}x the field's |")  # fmt: skip
    print(f"| the concatenating field's {calls} calls alone | no graph | | {theirs_alone:.3f} | "
          f"{theirs_alone / ours_alone:.2f}x the field's |")  # fmt: skip


def forward_solve(field: Any, y0: torch.Tensor, times: list[float], solver: Any) -> Callable[[], Solution]:
    """One solve without a graph, as a timing candidate (it returns the solution)."""

    def run() -> Solution:
        with torch.no_grad():
            return integrate(field, y0, times, solver)

    return run


def output_times(args: argparse.Namespace) -> None:
    block, y0 = thesis_block(args)
    solvers = {
        "contham dopri5": RungeKutta("dopri5", rtol=args.tol, atol=args.tol),
        "torchdiffeq dopri5": TorchDiffEq("dopri5", rtol=args.tol, atol=args.tol),
    }

    cases = {
        f"{name}, {n}": forward_solve(block.field, y0, torch.linspace(0.0, 1.0, n).tolist(), solver)
        for n in args.outputs
        for name, solver in solvers.items()
    }
    times = interleaved_medians(cases, args.repeats)
    print(f"\nOne forward solve of the ODENet block on [0, 1] with n output times (dense output), tol {args.tol:g}")
    print("| n | contham s | torchdiffeq s | torchdiffeq / contham |")
    print("|---|---|---|---|")
    for n in args.outputs:
        ours, theirs = times[f"contham dopri5, {n}"], times[f"torchdiffeq dopri5, {n}"]
        print(f"| {n} | {ours:.3f} | {theirs:.3f} | {theirs / ours:.2f}x |")


class Operations(TorchDispatchMode):
    """Counts the tensor operations run inside it, views and aliases excluded (they launch nothing)."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        returns = func._schema.returns
        self.count += not any(r.alias_info is not None and not r.alias_info.is_write for r in returns)
        return func(*args, **(kwargs or {}))


def small_problem(args: argparse.Namespace) -> None:
    u = 0.1 * torch.randn(10, 10, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    a, y0, times = u - u.T, torch.ones(10, dtype=torch.float64), torch.linspace(1, 8, 10).tolist()

    def field(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return a @ y

    with Operations() as once:
        field(torch.tensor(0.0), y0)
    solvers = {
        (method, name): kind(method, rtol=tol, atol=tol)
        for method, tol in (("dopri5", 1e-8), ("adaptive_heun", 1e-6))
        for name, kind in (("contham", RungeKutta), ("torchdiffeq", TorchDiffEq))
    }
    rows = {}
    for key, solver in solvers.items():
        with torch.no_grad(), Operations() as ops:
            stats = integrate(field, y0, times, solver).stats
        steps = stats.steps_accepted + stats.steps_rejected
        rows[key] = (steps, stats.nfe_forward, (ops.count - stats.nfe_forward * once.count) / steps)

    # one method at a time: a solve of 2,000 steps leaves garbage whose cleanup the next solve pays
    took = {}
    for method in ("dopri5", "adaptive_heun"):
        pair = {key: forward_solve(field, y0, times, solver) for key, solver in solvers.items() if key[0] == method}
        took.update(interleaved_medians(pair, args.repeats))
    print("\nThe loop's own cost: y' = A y, 10 states, one sample, output times 1 to 8")
    print("| method | solver | steps | NFE | operations per step beyond the field's | s per solve | over contham's |")
    print("|---|---|---|---|---|---|---|")
    for (method, name), (steps, nfe, per_step) in rows.items():
        ratio = took[method, name] / took[method, "contham"]
        print(f"| {method} | {name} | {steps} | {nfe} | {per_step:.1f} | {took[method, name]:.4f} | {ratio:.2f}x |")


def training_steps(args: argparse.Namespace) -> None:
    torch.manual_seed(0)
    x, labels = torch.randn(args.batch, 1, 28, 28), torch.randint(0, 10, (args.batch,))
    models = {
        gradient: build("thesis_odenet", in_channels=1, rtol=args.tol, atol=args.tol, gradient=gradient)
        for gradient in ("backprop", "adjoint", "reversible")
    }
    models["torchdiffeq backprop"] = copy.deepcopy(models["backprop"])
    ode = next(m for m in models["torchdiffeq backprop"].modules() if isinstance(m, ODEBlock))
    ode.solver = TorchDiffEq("dopri5", rtol=args.tol, atol=args.tol)
    if args.compile:
        inductor.cpp.enable_kernel_profile = True  # the compiled kernels' launches counted
        for gradient in ("backprop", "reversible"):
            models[f"{gradient}, compiled steps"] = copy.deepcopy(models[gradient])
            compile_steps(models[f"{gradient}, compiled steps"], True)
    for model in models.values():
        model.load_state_dict(models["backprop"].state_dict())
    steps = {name: classifier_step(m, x, labels) for name, m in models.items()}
    times = interleaved_medians(steps, args.repeats)  # its warm-up round compiles
    counts = {name: launches(step)[0] for name, step in steps.items()}
    print(f"\nTraining step of thesis_odenet, batch {args.batch}, dopri5 at tol {args.tol:g} (contham's unless named;")
    print("launches: the step's outermost tensor operations, views excluded, and inductor's fused kernels;")
    print("on a GPU each launches a kernel)")
    print("| gradient | NFE forward | NFE backward | launches | s per step | vs backprop |")
    print("|---|---|---|---|---|---|")
    for name, model in models.items():
        stats = collect_stats(model)[0]
        print(f"| {name} | {stats.nfe_forward} | {stats.nfe_backward} | {counts[name]} | {times[name]:.3f} | "
              f"{times[name] / times['backprop']:.2f}x |")  # fmt: skip


def reference_problems(tests: Path) -> None:
    p = load(tests)
    print("\ntorchdiffeq's test problems (float64, forwards, rtol = atol = 1e-6): NFE with 10 output times")
    print("(torchdiffeq's) and with the end time only")
    print("| problem | method | outputs | contham | torchdiffeq | contham / torchdiffeq |")
    print("|---|---|---|---|---|---|")
    for ode in p.PROBLEMS:
        f, y0, t_points, _ = p.construct_problem("cpu", dtype=torch.float64, ode=ode)
        for method in ("dopri5", "bosh3"):
            for ts in (t_points.detach(), t_points.detach()[[0, -1]]):
                ours = integrate(f, y0, ts, RungeKutta(method, rtol=1e-6, atol=1e-6)).stats.nfe_forward
                theirs = integrate(f, y0, ts, TorchDiffEq(method, rtol=1e-6, atol=1e-6)).stats.nfe_forward
                print(f"| {ode} | {method} | {len(ts)} | {ours} | {theirs} | {ours / theirs:.2f} |")
    print("\nGradient of the computed loss (float64, dopri5, rtol = atol = 1e-6): relative error of each")
    print("strategy against autograd through its own forward solve")
    print("| problem | reversible | adjoint | adjoint / reversible |")
    print("|---|---|---|---|")
    for ode in p.PROBLEMS:
        f, y0, t_points, _ = p.construct_problem("cpu", dtype=torch.float64, ode=ode)
        ts = [float(t_points[0].detach()), float(t_points[-1].detach())]
        reversible, adjoint = gradient_gaps(f, y0.detach().requires_grad_(True), ts)
        ratio = f"{adjoint / reversible:.0e}" if reversible > 0 else "- (reversible exact)"
        print(f"| {ode} | {reversible:.1e} | {adjoint:.1e} | {ratio} |")


def gradient_gaps(f: torch.nn.Module, y0: torch.Tensor, ts: list[float]) -> tuple[float, float]:
    """The relative gradient errors of the reversible scheme and of the adjoint, each against
    autograd through its own forward map."""
    inputs = [y0, *(q for q in f.parameters() if q.requires_grad)]

    def grads(out: torch.Tensor) -> tuple:
        return torch.autograd.grad(out.pow(2).sum(), inputs, allow_unused=True)

    def gap(ours: tuple, exact: tuple) -> float:
        """|ours - exact| / |exact| over every input's gradient together."""
        pairs = [(a, b) for a, b in zip(ours, exact) if b is not None]
        difference = torch.cat([((torch.zeros_like(b) if a is None else a) - b).flatten() for a, b in pairs])
        return float(difference.norm() / torch.cat([b.flatten() for _, b in pairs]).norm())

    engine = RungeKutta("dopri5", rtol=1e-6, atol=1e-6)
    problem = Problem(f, y0, ts, [], None, Reversible(), None, 10**6)
    scheme = engine.loop(problem, Coupled()).run()[-1][0]  # the reversible scheme through autograd
    reversible = gap(grads(integrate(f, y0, ts, engine, gradient="reversible").y), grads(scheme))
    torchdiffeq = TorchDiffEq("dopri5", rtol=1e-6, atol=1e-6)
    adjoint_out = integrate(f, y0, ts, torchdiffeq, gradient="adjoint").y
    adjoint = gap(grads(adjoint_out), grads(integrate(f, y0, ts, torchdiffeq).y))
    return reversible, adjoint


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tol", type=float, default=1e-3)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--tests", type=Path, default=None, help="torchdiffeq's tests/ folder")
    parser.add_argument("--outputs", type=int, nargs="*", default=[], help="output time counts to time solves with")
    parser.add_argument("--compile", action="store_true", help="also train with the adaptive steps compiled (inductor)")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, median of {args.repeats}")
    solve_times(args)
    training_steps(args)
    if args.outputs:
        output_times(args)
    small_problem(args)
    if args.tests is not None:
        reference_problems(args.tests)


if __name__ == "__main__":
    main()
