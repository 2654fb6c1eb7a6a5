"""contham's per-sample steps against torchode's, the PyTorch solver built on them.

On the thesis's ODENet block (64 channels, 6x6 maps, batch 128; random input through the
network's downsampling), dopri5 at rtol = atol = tol for each tol given, each sample with its own
steps, one forward solve without a graph: contham's ``RungeKutta("dopri5", per_sample=True)``
and torchode's ``Dopri5`` with its ``IntegralController`` (the field as torchode takes it, the
state flattened per sample), measured side by side (interleaved, medians). Printed: whether every
sample takes the same number of steps in both, the steps per sample, NFE, the largest difference
of the final states relative to their largest entry, and seconds per solve. torchode comes with
the ``dev`` extras; the library does not depend on it.

    python benchmarks/torchode_per_sample.py [--tols 1e-3 1e-5] [--repeats 7] [--dtype float32]
"""

from __future__ import annotations

import argparse
from typing import Any

import torch
import torchode  # from the dev extras, not a dependency of the library
from _timing import interleaved_medians
from runge_kutta import forward_solve, thesis_block

from contham.solvers import RungeKutta


def torchode_solve(field: Any, y0: torch.Tensor, tol: float) -> Any:
    """torchode's dopri5 solve of ``field`` from y0 on [0, 1], each sample its own steps."""
    shape = y0.shape

    def flat(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:  # torchode: t (batch,), y (batch, n)
        return field(t.view(-1, *(1,) * (len(shape) - 1)), y.view(shape)).flatten(1)

    term = torchode.ODETerm(flat)
    solver = torchode.AutoDiffAdjoint(
        torchode.Dopri5(term=term), torchode.IntegralController(atol=tol, rtol=tol, term=term)
    )
    times = torch.tensor([0.0, 1.0], dtype=y0.dtype).repeat(shape[0], 1)
    problem = torchode.InitialValueProblem(y0=y0.flatten(1), t_eval=times)

    def solve() -> Any:
        with torch.no_grad():
            return solver.solve(problem)

    return solve


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tols", type=float, nargs="+", default=[1e-3, 1e-5])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    args = parser.parse_args()
    dtype = getattr(torch, args.dtype)
    block, y0 = thesis_block(args)
    field, y0 = block.field.to(dtype), y0.to(dtype)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.dtype}, median of {args.repeats}")
    print("| tol | same steps per sample | steps per sample (min-max) | NFE contham / torchode | "
          "largest difference | contham s | torchode s | torchode / contham |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|")
    for tol in args.tols:
        solver = RungeKutta("dopri5", rtol=tol, atol=tol, per_sample=True)
        ours, theirs = forward_solve(field, y0, [0.0, 1.0], solver), torchode_solve(field, y0, tol)
        a, b = ours(), theirs()
        steps = a.stats.steps_per_sample
        same = steps == b.stats["n_steps"].tolist()
        gap = float((a.y - b.ys[:, -1].view(y0.shape)).abs().max() / a.y.abs().max())
        nfe = f"{a.stats.nfe_forward} / {int(b.stats['n_f_evals'].max())}"
        took = interleaved_medians({"contham": ours, "torchode": theirs}, args.repeats)
        print(f"| {tol:g} | {same} | {min(steps)}-{max(steps)} | {nfe} | {gap:.1e} | {took['contham']:.3f} | "
              f"{took['torchode']:.3f} | {took['torchode'] / took['contham']:.2f}x |")  # fmt: skip


if __name__ == "__main__":
    main()
