"""Benchmark 1: conv Hamiltonian blocks against a ResNet basic block of the same width.

Per training step (forward + backward), batch 128, at the report's widths and map sizes (32 on
32x32, 64 on 16x16, 112 on 8x8): 6 ResNet basic blocks (two 3x3 convs + BN each) vs a J1 block
of 6 steps (two 3x3 convs per step: K and K^T) vs a two-layer block of 6 steps (four half-width
convs per step, half the arithmetic), in backprop and reversible memory modes. Interleaved
repetitions, median of 5; prints each time and its ratio to the ResNet blocks.

    python benchmarks/blocks.py [--batch 128] [--repeats 5]
"""

from __future__ import annotations

import argparse

import torch
from _timing import interleaved_medians, training_step
from torch import nn

from contham import HamiltonianBlock, HamiltonianField, TwoLayerField
from contham.models.resnet import BasicBlock

STEPS = 6
SHAPES = ((32, 32), (64, 16), (112, 8))
"""The report's widths and their map sizes."""


def block_models(width: int) -> dict[str, nn.Module]:
    """6 ResNet basic blocks, a J1 block and a two-layer block of 6 steps (backprop and reversible)."""
    models = {
        "resnet": nn.Sequential(*[BasicBlock(width, width) for _ in range(STEPS)]),
        "j1": HamiltonianBlock(HamiltonianField(width, "J1", "relu", kernel_size=3, n_nodes=STEPS, dt=0.1)),
        "two_layer": HamiltonianBlock(TwoLayerField(width, "relu", kernel_size=3, n_nodes=STEPS, dt=0.1)),
    }
    models["two_layer_rev"] = HamiltonianBlock(models["two_layer"].field, gradient="reversible")
    return models


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch}, {STEPS} steps/blocks")
    print("| width | map | ResNet blocks (s) | J1 (s) | J1 / ResNet | two-layer (s) | two-layer / ResNet | "
          "two-layer reversible / ResNet |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|")
    for width, size in SHAPES:
        x = torch.randn(args.batch, width, size, size)
        models = block_models(width)
        t = interleaved_medians({k: training_step(m, x) for k, m in models.items()}, args.repeats)
        r = {k: v / t["resnet"] for k, v in t.items()}
        print(f"| {width} | {size}x{size} | {t['resnet']:.3f} | {t['j1']:.3f} | {r['j1']:.2f}x | "
              f"{t['two_layer']:.3f} | {r['two_layer']:.2f}x | {r['two_layer_rev']:.2f}x |")  # fmt: skip


if __name__ == "__main__":
    main()
