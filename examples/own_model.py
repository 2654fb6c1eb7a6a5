"""A Hamiltonian block inside your own model and your own training loop.

The model: a 1x1 convolution lifts the 8x8 digit images to 16 channels, a convolutional H1-J1
Hamiltonian block (``n_layers`` forward-Euler steps of ``h``) propagates them, 2x2 average pooling
and a linear layer classify. The loop is plain PyTorch (Adam, cross-entropy) plus contham's
smoothness penalty on the block's weights across layers. It prints the test accuracy per epoch
and the field evaluations of a training step.

    python examples/own_model.py [--epochs 5] [--layers 8]
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from torch import nn

import contham


class DigitNet(nn.Module):
    def __init__(self, layers: int, h: float):
        super().__init__()
        self.lift = nn.Conv2d(1, 16, 1)
        field = contham.HamiltonianField(16, "J1", "tanh", kernel_size=3, n_nodes=layers, dt=h)
        self.block = contham.HamiltonianBlock(field)  # one Euler step per layer (the discrete mode)
        self.head = nn.Sequential(nn.AvgPool2d(2), nn.Flatten(), nn.Linear(16 * 4 * 4, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.block(self.lift(x)))


def main(argv: list[str] | None = None) -> float:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--h", type=float, default=0.2)
    parser.add_argument("--alpha", type=float, default=1e-3, help="weight of the smoothness penalty")
    args = parser.parse_args(argv)

    torch.manual_seed(0)
    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32)[:, None] / 16.0
    labels = torch.tensor(digits.target)
    order = torch.randperm(len(x))
    train, test = order[:1500], order[1500:]

    model = DigitNet(args.layers, args.h)
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-2)
    for epoch in range(args.epochs):
        model.train()
        for batch in train[torch.randperm(len(train))].split(64):
            loss = F.cross_entropy(model(x[batch]), labels[batch])
            loss = loss + contham.smoothness(model, args.alpha)  # differences of K, b between layers
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
        stats = model.block.last_stats  # of the latest training step
        model.eval()
        with torch.no_grad():
            accuracy = (model(x[test]).argmax(1) == labels[test]).float().mean().item()
        print(f"epoch {epoch + 1}: loss {loss.item():.3f}, test accuracy {accuracy:.3f}")

    print(f"a training step: {stats.nfe_forward} field evaluations forward, {stats.nfe_backward} backward")
    return accuracy


if __name__ == "__main__":
    main()
