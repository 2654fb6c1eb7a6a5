"""Gradient norm vs depth: ||dy_N / dy_l||_2 for l = 0..N (Galimberti et al. 2021, figure 3 style).

Six stacks of N layers on a 4-dimensional state, step h = 0.05:

* tanh MLP: ``y+ = tanh(W y + b)``;
* ResNet: ``y+ = y + h tanh(W y + b)``;
* J1 and J2 with forward Euler: ``y+ = y + h J K^T tanh(K y + b)``;
* two-layer Hamiltonian with Verlet, and separable (H2) with symplectic Euler.

They are measured at initialisation for N = 16, 64, 256, 1024, and for N = 64 after training on
the Swiss roll (input zero-padded to 4 features, a linear classifier on y_N). The norms are exact
(the 4x4 sensitivity matrices, mean over 3 samples). The symplectic schemes stay >= 1 at every l;
the MLP's norms vanish and Euler's drift. The script writes gradient_vs_depth.png and
gradient_vs_depth.csv to --out (default analysis/out) in about two minutes on 2 CPU cores.

    python analysis/gradient_vs_depth.py [--depths 16 64 256 1024] [--out analysis/out]
"""

from __future__ import annotations

import argparse
import csv
import math
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure
from torch import nn

from contham import HamiltonianBlock, HamiltonianField, SeparableField, TwoLayerField
from contham.analysis import sensitivities
from contham.data import points

H = 0.05
FEATURES = 4


class LayerStack(nn.Module):
    """N dense layers ``y+ = tanh(W_j y + b_j)`` (``residual=False``) or ``y + h tanh(...)``, with
    the ``n_steps`` / ``step(j, y)`` interface of a HamiltonianBlock."""

    def __init__(self, n_steps: int, residual: bool):
        super().__init__()
        self.n_steps, self.residual = n_steps, residual
        self.W = nn.Parameter(torch.randn(n_steps, FEATURES, FEATURES) / math.sqrt(FEATURES))
        self.b = nn.Parameter(torch.zeros(n_steps, FEATURES))

    def step(self, j: int, y: torch.Tensor) -> torch.Tensor:
        out = torch.tanh(y @ self.W[j].T + self.b[j])
        return y + H * out if self.residual else out

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        for j in range(self.n_steps):
            y = self.step(j, y)
        return y


def stacks(n: int) -> dict[str, nn.Module]:
    layout = dict(n_nodes=n, dt=H)
    return {
        "tanh MLP": LayerStack(n, residual=False),
        "ResNet": LayerStack(n, residual=True),
        "J1, Euler": HamiltonianBlock(HamiltonianField(FEATURES, "J1", "tanh", **layout)),
        "J2, Euler": HamiltonianBlock(HamiltonianField(FEATURES, "J2", "tanh", **layout)),
        "two-layer, Verlet": HamiltonianBlock(TwoLayerField(FEATURES, "tanh", **layout), "verlet"),
        "separable, symplectic Euler": HamiltonianBlock(SeparableField(FEATURES, "tanh", **layout)),
    }


def norms(stack: nn.Module, samples: torch.Tensor) -> np.ndarray:
    """Mean over samples of ||dy_N / dy_l||_2, l = 0..N."""
    per_sample = [torch.linalg.matrix_norm(sensitivities(stack, y[None]), 2).numpy() for y in samples]
    return np.mean(per_sample, axis=0)


def train(stack: nn.Module, iterations: int = 300) -> float:
    """Fit the Swiss roll with ``classifier(stack(pad(x)))``; return the final training accuracy."""
    data = points("swiss_roll", 500, seed=0)
    x, labels = data.tensors
    x = nn.functional.pad(x, (0, FEATURES - 2)).double()
    classifier = nn.Linear(FEATURES, 2).double()
    optimizer = torch.optim.Adam([*stack.parameters(), *classifier.parameters()], lr=0.01)
    for _ in range(iterations):
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(classifier(stack(x)), labels)
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        return float((classifier(stack(x)).argmax(1) == labels).double().mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--depths", type=int, nargs="+", default=[16, 64, 256, 1024])
    parser.add_argument("--trained-depth", type=int, default=64)
    parser.add_argument("--iterations", type=int, default=300, help="Adam iterations of the Swiss-roll training")
    parser.add_argument("--out", default="analysis/out")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    samples = torch.randn(3, FEATURES, dtype=torch.float64)
    rows, curves = [], {}
    settings = [(n, "initialisation") for n in args.depths] + [(args.trained_depth, "trained")]
    for n, state in settings:
        for name, stack in stacks(n).items():
            stack.double()
            accuracy = train(stack, args.iterations) if state == "trained" else None
            values = norms(stack, samples)
            curves[n, state, name] = values
            rows += [
                dict(depth=n, state=state, network=name, layer=layer, norm=float(v)) for layer, v in enumerate(values)
            ]
            extra = f", Swiss roll accuracy {accuracy:.3f}" if accuracy is not None else ""
            inner = values[:-1]  # l = N is the identity
            print(f"N={n:5d} {state:14s} {name:28s} l<N: min {inner.min():.3e}, max {inner.max():.3e}{extra}")
    with open(out / "gradient_vs_depth.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    fig = Figure(figsize=(4 * len(settings), 4))
    axes = fig.subplots(1, len(settings), squeeze=False)[0]
    for ax, (n, state) in zip(axes, settings):
        for name in stacks(2):
            ax.semilogy(curves[n, state, name], label=name)
        ax.axhline(1.0, color="k", lw=0.6, ls=":")
        ax.set_title(f"N = {n}, {state}", fontsize=9)
        ax.set_xlabel("layer l")
    axes[0].set_ylabel("||dy_N / dy_l||_2")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "gradient_vs_depth.png", dpi=110)
    print(f"written: {out / 'gradient_vs_depth.png'}, {out / 'gradient_vs_depth.csv'}")


if __name__ == "__main__":
    main()
