"""2-D classification with 64-layer Hamiltonian networks: decision regions and hidden states.

The Swiss roll and double circles (contham.data.points) are classified by
``Linear(4, 2)(block(pad(x)))``: the 2-D input is zero-padded to 4 features and passed through a
64-layer block with h = 0.1. Two blocks are compared, as in Galimberti et al.'s 2-D examples:
H1 (J1, tanh, forward Euler) and H2 (separable, tanh, symplectic Euler). Training uses Adam
(lr 0.01, 600 full-batch iterations) and the weight smoothness penalty (alpha = 1e-3). For each
case the figure shows the decision regions over the input plane with the test points, then the
first two hidden features at layers 0, 16, 32, 48 and 64, coloured by class: the propagation of
the hidden states. The script writes classification_2d.png and classification_2d.csv (accuracies
and training time) to --out, in about a minute on 2 CPU cores.

    python analysis/classification_2d.py [--layers 64] [--iterations 600]
"""

from __future__ import annotations

import argparse
import csv
import time
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure
from torch import nn

from contham import HamiltonianBlock, HamiltonianField, SeparableField, smoothness
from contham.data import points

FEATURES, H = 4, 0.1
SNAPSHOTS = (0, 16, 32, 48, 64)


def network(kind: str, layers: int) -> nn.Module:
    layout = dict(n_nodes=layers, dt=H)
    if kind == "H1 (J1, Euler)":
        block = HamiltonianBlock(HamiltonianField(FEATURES, "J1", "tanh", **layout))
    else:
        block = HamiltonianBlock(SeparableField(FEATURES, "tanh", **layout), "symplectic_euler")
    return nn.Sequential(block, nn.Linear(FEATURES, 2))


def pad(x: torch.Tensor) -> torch.Tensor:
    return nn.functional.pad(x, (0, FEATURES - 2))


def train(model: nn.Module, x: torch.Tensor, labels: torch.Tensor, iterations: int) -> None:
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(iterations):
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(model(pad(x)), labels) + smoothness(model, 1e-3)
        loss.backward()
        optimizer.step()


def accuracy(model: nn.Module, x: torch.Tensor, labels: torch.Tensor) -> float:
    with torch.no_grad():
        return float((model(pad(x)).argmax(1) == labels).float().mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=64)
    parser.add_argument("--iterations", type=int, default=600)
    parser.add_argument("--out", default="analysis/out")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    snapshots = [s for s in SNAPSHOTS if s <= args.layers]
    cases = [(d, k) for d in ("swiss_roll", "double_circles") for k in ("H1 (J1, Euler)", "H2 (separable, SE)")]
    fig = Figure(figsize=(2.6 * (len(snapshots) + 1), 2.6 * len(cases)))
    axes = fig.subplots(len(cases), len(snapshots) + 1, squeeze=False)
    rows = []
    for row, (dataset, kind) in enumerate(cases):
        torch.manual_seed(0)
        (x, labels), (x_test, labels_test) = points(dataset, 500).tensors, points(dataset, 300, seed=1).tensors
        model = network(kind, args.layers)
        start = time.perf_counter()
        train(model, x, labels, args.iterations)
        seconds = time.perf_counter() - start
        train_accuracy, test_accuracy = accuracy(model, x, labels), accuracy(model, x_test, labels_test)
        rows.append(
            dict(dataset=dataset, network=kind, layers=args.layers, seconds=round(seconds, 1),
                 train_accuracy=train_accuracy, test_accuracy=test_accuracy)
        )  # fmt: skip
        print(rows[-1], flush=True)
        grid = np.linspace(-1.6, 1.6, 150) if dataset == "swiss_roll" else np.linspace(-1.4, 1.4, 150)
        gx, gy = np.meshgrid(grid, grid)
        plane = torch.tensor(np.stack((gx.ravel(), gy.ravel()), 1), dtype=torch.float32)
        with torch.no_grad():
            regions = model(pad(plane)).argmax(1).reshape(gx.shape).numpy()
            states = model[0].trajectory(pad(x_test))
        ax = axes[row, 0]
        ax.contourf(gx, gy, regions, levels=[-0.5, 0.5, 1.5], cmap="coolwarm", alpha=0.3)
        ax.scatter(x_test[:, 0], x_test[:, 1], c=labels_test, cmap="coolwarm", s=4)
        ax.set_title(f"{dataset}, {kind}\ntest accuracy {rows[-1]['test_accuracy']:.3f}", fontsize=8)
        for col, layer in enumerate(snapshots, start=1):
            hidden = states[layer]
            axes[row, col].scatter(hidden[:, 0], hidden[:, 1], c=labels_test, cmap="coolwarm", s=4)
            axes[row, col].set_title(f"layer {layer}", fontsize=8)
    for ax in axes.flat:
        ax.set_xticks([]), ax.set_yticks([])
    fig.tight_layout()
    fig.savefig(out / "classification_2d.png", dpi=80)
    with open(out / "classification_2d.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    print(f"written: {out / 'classification_2d.png'}, {out / 'classification_2d.csv'}")


if __name__ == "__main__":
    main()
