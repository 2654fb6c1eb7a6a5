"""Benchmark 3: the thesis's ODENet vs its ResNet-4, time per training batch on MNIST-sized input.

Training step (forward, cross-entropy, backward) on a batch of 128 random 1x28x28 images, at
initialisation. ODENet runs dopri5 at rtol = atol = tol for each tolerance, with direct backprop
and with the adjoint. Each row gives the NFE forward/backward per batch, the seconds, and the
ratio to ResNet-4 (thesis_resnet4) measured in the same interleaved rounds (median of --repeats).

    python benchmarks/odenet.py [--tolerances 1e-1 1e-2 1e-3 1e-4 1e-5] [--batch 128]
"""

from __future__ import annotations

import argparse

import torch
from _timing import classifier_step, interleaved_medians

from contham import collect_stats
from contham.models import build


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tolerances", type=float, nargs="+", default=[1e-1, 1e-2, 1e-3, 1e-4, 1e-5])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.manual_seed(0)
    x = torch.randn(args.batch, 1, 28, 28)
    labels = torch.randint(0, 10, (args.batch,))
    models = {"ResNet-4": build("thesis_resnet4", in_channels=1)}
    for tol in args.tolerances:
        for adjoint in (False, True):
            models[f"ODENet tol={tol:g}" + (" adjoint" if adjoint else "")] = build(
                "thesis_odenet", in_channels=1, rtol=tol, atol=tol, gradient="adjoint" if adjoint else "backprop"
            )

    times = interleaved_medians({name: classifier_step(m, x, labels) for name, m in models.items()}, args.repeats)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch}, median of {args.repeats}")
    print("| model | NFE forward | NFE backward | s per batch | vs ResNet-4 |")
    print("|---|---|---|---|---|")
    for name, model in models.items():
        stats = collect_stats(model)
        nfe = (f"{stats[0].nfe_forward}", f"{stats[0].nfe_backward}") if stats else ("-", "-")
        print(f"| {name} | {nfe[0]} | {nfe[1]} | {times[name]:.3f} | {times[name] / times['ResNet-4']:.2f}x |")


if __name__ == "__main__":
    main()
