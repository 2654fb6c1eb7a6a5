"""Seminorm adjoint: backward field evaluations and time per training batch of the thesis ODENet.

Two copies of the thesis's ODENet (``thesis_odenet``, dopri5, ``gradient="adjoint"``) start from
the same weights and train in lockstep on the same MNIST batches (SGD, lr 0.05, momentum 0.9):
one measures the adjoint solve's error on everything it integrates (torchdiffeq's default), the
other with the seminorm (``Adjoint(seminorm=True)``: the parameters' gradients are left out of
the error estimate). Per setting, the script prints the median over the batches of the backward
NFE and of the seconds per batch (forward + backward + step), the two models timed alternately.

Settings: the tolerance, the adjoint's absolute tolerance and the loss reduction. The absolute
tolerance is what decides: with the mean cross-entropy the adjoint is 1/batch the size it has with
the summed loss, so a shared atol lets the state alone set the backward steps and the seminorm has
nothing to save.

    python benchmarks/seminorm.py --root DATA [--batches 20] [--batch 32]
    (DATA: a torchvision root holding MNIST; without --root, random 28x28 images)
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
import torch.nn.functional as F

from contham import collect_stats
from contham.data import load_images
from contham.models import build

SETTINGS = [  # (rtol = atol, adjoint atol, loss reduction)
    (1e-3, None, "mean"),
    (1e-4, None, "mean"),
    (1e-4, 1e-6, "mean"),
    (1e-3, None, "sum"),
    (1e-4, None, "sum"),
    (1e-6, None, "sum"),
]


def batches(root: str | None, count: int, size: int):
    generator = torch.Generator().manual_seed(0)
    if root is None:
        images = torch.randn(count * size, 1, 28, 28, generator=generator)
        labels = torch.randint(0, 10, (count * size,), generator=generator)
    else:
        raw, labels = load_images("mnist", root)
        order = torch.randperm(len(raw), generator=generator)[: count * size]
        images, labels = (raw[order].float() / 255 - 0.1307) / 0.3081, labels[order]
    return list(zip(images.split(size), labels.split(size)))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", help="torchvision root with MNIST (default: random images)")
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--batch", type=int, default=32)
    args = parser.parse_args(argv)
    data = batches(args.root, args.batches, args.batch)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {len(data)} batches of {args.batch}")
    print("| tol | adjoint atol | loss | NFE fwd | NFE bwd | NFE bwd, seminorm | fewer | s/batch | s/batch, seminorm |")
    print("|---|---|---|---|---|---|---|---|---|")
    for tol, adjoint_atol, reduction in SETTINGS:
        torch.manual_seed(0)
        options = dict(in_channels=1, rtol=tol, atol=tol, gradient="adjoint", adjoint_atol=adjoint_atol)
        models = {False: build("thesis_odenet", **options)}
        models[True] = build("thesis_odenet", seminorm=True, **options)
        models[True].load_state_dict(copy.deepcopy(models[False].state_dict()))
        optimisers = {k: torch.optim.SGD(m.parameters(), lr=0.05, momentum=0.9) for k, m in models.items()}
        nfe: dict[bool, list[int]] = {False: [], True: []}
        seconds: dict[bool, list[float]] = {False: [], True: []}
        forward: list[int] = []
        for i, (x, y) in enumerate(data):
            for seminorm in (False, True) if i % 2 == 0 else (True, False):
                model, optimiser = models[seminorm], optimisers[seminorm]
                start = time.perf_counter()
                optimiser.zero_grad(set_to_none=True)
                F.cross_entropy(model(x), y, reduction=reduction).backward()
                optimiser.step()
                seconds[seminorm].append(time.perf_counter() - start)
                (stats,) = collect_stats(model)
                nfe[seminorm].append(stats.nfe_backward)
                if not seminorm:
                    forward.append(stats.nfe_forward)
        full, semi = statistics.median(nfe[False]), statistics.median(nfe[True])
        print(
            f"| {tol:g} | {adjoint_atol or tol:g} | {reduction} | {statistics.median(forward):g} | {full:g} | {semi:g} "
            f"| {1 - semi / full:.0%} | {statistics.median(seconds[False]):.3f} "
            f"| {statistics.median(seconds[True]):.3f} |"
        )


if __name__ == "__main__":
    main()
