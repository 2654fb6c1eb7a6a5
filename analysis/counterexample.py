"""The counterexample of Galimberti et al. 2023 (appendix III): symplectic sensitivities can grow.

``y' = eps J tanh(y)`` with ``J = [[0, -1], [1, 0]]``, eps = 1, integrated by the semi-implicit
(symplectic) Euler scheme with h = 0.05 up to T = 20 (N = 400 layers). The first component is
updated first, from the second. Symplectic sensitivities cannot vanish (their norm is >= 1), but
this example shows that they can still grow: the entries of ``dy(T) / dy(T - t)`` grow with the
depth t.

In contham this system is the two-layer Hamiltonian with scalar weights ``K1 = K2 = 1`` and zero
biases. It is written on ``x = (y2, y1)``, so ``y2' = tanh(y1)`` and ``y1' = -tanh(y2)``, with
``first="z"``, which updates y1 first. The script computes the sensitivity two ways:

* exactly, with :func:`contham.analysis.sensitivities`;
* as the paper estimates it, by finite differences with a perturbation ``gamma = 0.05`` of
  ``y(T - t)``.

The initial state is a random unit vector (seed 0). The script writes counterexample.png and
counterexample.csv to --out in a few seconds.

    python analysis/counterexample.py [--h 0.05] [--T 20] [--gamma 0.05]
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure

from contham import HamiltonianBlock, TwoLayerField
from contham.analysis import sensitivities
from contham.solvers import SymplecticEuler

PAPER_ORDER = [1, 0]  # the paper's (y1, y2) are contham's (z, y)


def block(h: float, n: int) -> HamiltonianBlock:
    field = TwoLayerField(2, "tanh", n_nodes=n, dt=h).double()
    with torch.no_grad():
        field.K1.fill_(1.0), field.K2.fill_(1.0), field.b1.zero_(), field.b2.zero_()
    return HamiltonianBlock(field, SymplecticEuler(first="z"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--h", type=float, default=0.05)
    parser.add_argument("--T", type=float, default=20.0)
    parser.add_argument("--gamma", type=float, default=0.05)
    parser.add_argument("--out", default="analysis/out")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    n = round(args.T / args.h)
    net = block(args.h, n)
    y0 = torch.randn(1, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    y0 = y0 / y0.norm()
    exact = sensitivities(net, y0)[:, PAPER_ORDER][:, :, PAPER_ORDER]  # (N + 1, 2, 2), index l
    with torch.no_grad():
        states = net.trajectory(y0)
        finite = torch.zeros_like(exact)
        for layer in range(n + 1):
            for i in range(2):  # perturb y(T - t) along the paper's coordinate i
                perturbed = states[layer].clone()
                perturbed[0, PAPER_ORDER[i]] += args.gamma
                for j in range(layer, n):
                    perturbed = net.step(j, perturbed)
                finite[layer, :, i] = (perturbed - states[n])[0, PAPER_ORDER] / args.gamma
    depth = args.h * (n - np.arange(n + 1))  # t such that layer l holds y(T - t)
    rows = []
    for layer in range(n + 1):
        row = {"t": depth[layer]}
        for i in range(2):
            for k in range(2):
                row[f"exact_{i + 1}{k + 1}"] = float(exact[layer, i, k])
                row[f"gamma_{i + 1}{k + 1}"] = float(finite[layer, i, k])
        row["norm"] = float(torch.linalg.matrix_norm(exact[layer], 2))
        rows.append(row)
    with open(out / "counterexample.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    fig = Figure(figsize=(11, 4))
    entries, trajectory = fig.subplots(1, 2)
    for i in range(2):
        for k in range(2):
            line = entries.plot(depth, exact[:, i, k].numpy(), label=f"({i + 1},{k + 1}) exact")[0]
            entries.plot(depth, finite[:, i, k].numpy(), ":", color=line.get_color(), label=f"({i + 1},{k + 1}) gamma")
    entries.plot(depth, [r["norm"] for r in rows], "k", lw=0.8, label="spectral norm")
    entries.set_xlabel("depth t")
    entries.set_ylabel("entries of dy(T) / dy(T - t)")
    entries.legend(fontsize=7)
    entries.grid(alpha=0.3)
    path = states[:, 0, PAPER_ORDER].numpy()
    trajectory.plot(path[:, 0], path[:, 1])
    trajectory.scatter(path[0, 0], path[0, 1], color="red", zorder=3)
    trajectory.set_xlabel("y1")
    trajectory.set_ylabel("y2")
    trajectory.set_aspect("equal")
    trajectory.set_title("y(t), t in [0, T]", fontsize=9)
    fig.tight_layout()
    fig.savefig(out / "counterexample.png", dpi=110)
    smallest = min(r["norm"] for r in rows)
    print(f"||dy(T)/dy(0)||_2 = {rows[0]['norm']:.2f} at depth T = {args.T:g}; min over t of the norm: {smallest:.4f}")
    print(f"max |exact - gamma estimate| = {float((exact - finite).abs().max()):.3e} (gamma = {args.gamma:g})")
    print(f"written: {out / 'counterexample.png'}, {out / 'counterexample.csv'}")


if __name__ == "__main__":
    main()
