"""Benchmark 5: training time of ODE-family models to ResNet-4's MNIST test accuracy.

The reference is the thesis's ResNet-4 trained with the thesis protocol (SGD, momentum 0.9, lr 0.1,
batch 128, the thesis preprocessing) for --periods periods of --batches-per-period batches, on
real MNIST. Its final test accuracy A (full 10,000-image test set) and its training seconds T
(evaluation excluded) are the target. Every candidate then trains with the same protocol and
seed, evaluated after each period, until its test accuracy reaches A
(``RunConfig.stop_at_accuracy``) or its training time passes --limit x T
(``max_train_seconds``). Prints per model: parameters, NFE per batch, periods, training seconds
and their ratio to T, the test accuracy reached, and whether A was reached within the limit
(accuracy is checked once per period, so times are quantised by the period). Each run lives in
its own folder under --out and resumes if interrupted.

    python benchmarks/mnist_time_to_accuracy.py --root DATA [--periods 4] [--batches-per-period 117]
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import torch

from contham.experiments import RunConfig, run
from contham.experiments.drivers import safe_name

CANDIDATES = {
    "ODENet, dopri5 tol 1e-3 (thesis)": ("thesis_odenet", {}),
    "ODENet, dopri5 tol 1e-1": ("thesis_odenet", {"rtol": 0.1, "atol": 0.1}),
    "ODENet, rk4, 1 step": ("thesis_odenet", {"solver": "rk4", "step_size": 1.0}),
    "ODENet, midpoint, 2 steps": ("thesis_odenet", {"solver": "midpoint", "step_size": 0.5}),
    "Hamiltonian two-layer, 8 steps (SE)": ("thesis_hamiltonian", {}),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", required=True, help="torchvision MNIST root (raw/*.gz is enough)")
    parser.add_argument("--periods", type=int, default=4, help="ResNet-4's training periods")
    parser.add_argument("--batches-per-period", type=int, default=117, help="117 x 128 images = 1/4 epoch")
    parser.add_argument("--limit", type=float, default=2.5, help="time budget of a candidate, in units of T")
    parser.add_argument("--only", nargs="*", default=None, help="candidate names to run (default: all)")
    parser.add_argument("--out", default="runs/mnist_time_to_accuracy")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    out = Path(args.out)

    def train(name: str, model: str, options: dict, periods: int, **stops) -> dict:
        config = RunConfig(model=model, model_options=options, dataset="mnist", root=args.root, epochs=periods,
                           max_batches=args.batches_per_period, seed=args.seed, **stops)  # fmt: skip
        return run(config, out / safe_name(name), progress=False)

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, MNIST, "
          f"{args.periods} x {args.batches_per_period} batches of 128 for ResNet-4, limit {args.limit:g}T")  # fmt: skip
    reference = train("ResNet-4", "thesis_resnet4", {}, args.periods)
    target, seconds = reference["test_accuracy"], reference["train_seconds"]
    print("| model | params | NFE fwd / bwd per batch | periods | train s | vs ResNet-4 | test acc (%) | "
          "A within limit |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|")
    print(f"| ResNet-4 | {reference['parameters']:,} | - | {reference['epochs_done']} | {seconds:.0f} | 1.00x | "
          f"{100 * target:.2f} | (target) |")  # fmt: skip
    cap = math.ceil(4 * args.limit * args.periods)  # a period cap far beyond the time budget of any candidate
    for name, (model, options) in CANDIDATES.items():
        if args.only is not None and name not in args.only:
            continue
        metrics = train(name, model, options, cap, stop_at_accuracy=target, max_train_seconds=args.limit * seconds)
        nfe = f"{metrics['nfe_forward']:.1f} / {metrics['nfe_backward']:.1f}" if "nfe_forward" in metrics else "-"
        ratio = metrics["train_seconds"] / seconds
        reached = metrics["stop_reason"] == "accuracy" and ratio <= args.limit
        print(f"| {name} | {metrics['parameters']:,} | {nfe} | {metrics['epochs_done']} | "
              f"{metrics['train_seconds']:.0f} | {ratio:.2f}x | "
              f"{100 * metrics['test_accuracy']:.2f} | {'yes' if reached else 'no'} |")  # fmt: skip


if __name__ == "__main__":
    main()
