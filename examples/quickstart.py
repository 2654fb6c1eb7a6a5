"""Quickstart: a Hamiltonian block, then one Hamiltonian flow integrated by several solvers.

Prints, per solver, the steps, field evaluations, energy drift max |H(t) - H(0)| and wall time.
Run: python examples/quickstart.py [--T 50] [--h 0.05]
"""

from __future__ import annotations

import argparse
import time

import torch

import contham
from contham.fields import TwoLayerField


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--T", type=float, default=50.0, help="end time of the energy run")
    parser.add_argument("--h", type=float, default=0.05, help="step size of the fixed-step solvers")
    args = parser.parse_args(argv)
    torch.manual_seed(0)

    # 1) The discrete mode: 6 layers of Chang et al.'s two-layer Hamiltonian as one layer.
    field = TwoLayerField(16, "relu", kernel_size=3, n_nodes=6, dt=0.1)
    block = contham.HamiltonianBlock(field)
    x = torch.randn(8, 16, 32, 32)
    print(block)
    print(
        f"block output {tuple(block(x).shape)}, {sum(p.numel() for p in block.parameters()):,} parameters, "
        f"{block.last_stats.nfe_forward} half-field evaluations\n"
    )

    # 2) A time-invariant Hamiltonian flow: energy H is a first integral of the exact flow.
    flow = TwoLayerField(8, "tanh").double()
    y0 = torch.randn(16, 8, dtype=torch.float64)
    ts = torch.linspace(0, args.T, 101)
    runs = [
        ("euler", dict(step_size=args.h)),
        ("symplectic_euler", dict(step_size=args.h)),
        ("verlet", dict(step_size=args.h)),
        ("rk4", dict(step_size=args.h)),
        ("dopri5", dict(rtol=1e-6, atol=1e-8)),
    ]
    h0 = flow.energy(0.0, y0)
    print(f"Energy drift over T={args.T:g} (time-invariant two-layer field, tanh, 16 samples):")
    print(f"{'solver':<18}{'order':>6}{'steps':>8}{'NFE':>8}{'max |H-H0|':>14}{'time [ms]':>11}")
    with torch.no_grad():
        for name, kw in runs:
            start = time.perf_counter()
            sol = contham.integrate(flow, y0, ts, name, **kw)
            wall = 1e3 * (time.perf_counter() - start)
            drift = max(float((flow.energy(0.0, y) - h0).abs().max()) for y in sol.ys)
            order = contham.get_solver(name).order
            s = sol.stats
            print(f"{name:<18}{order:>6}{s.steps_accepted:>8}{s.nfe_forward:>8}{drift:>14.3e}{wall:>11.1f}")


if __name__ == "__main__":
    main()
