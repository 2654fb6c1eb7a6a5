"""One MNIST training epoch of data (thesis preprocessing: upscale to 32, random crop 28,
standardise), produced two ways side by side:

* per-sample: torchvision's MNIST with per-image transforms in a ``DataLoader`` (batch 128,
  shuffled, no workers): what contham's trainer did before the batched path;
* batched: the images decoded once into a uint8 tensor (:class:`contham.data.ImageSet`), each
  batch gathered by index and preprocessed as tensor ops (:mod:`contham.augment`), as the trainer
  does now.

No network is trained: this is the data path alone, on the CPU. Repetitions are interleaved and
the medians printed; the last line ends with the speed-up.

Usage: ``python benchmarks/data.py ROOT [--repeats 3] [--batch 128]``, ROOT a writable
torchvision root that holds MNIST.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch.utils.data import DataLoader

from contham.data import load_dataset, load_image_set
from contham.experiments.distributed import GlobalBatches, Ranks


def per_sample_epoch(root: str, batch: int, seed: int) -> int:
    dataset = load_dataset("mnist", root, train=True, preprocessing="thesis")
    loader = DataLoader(dataset, batch, shuffle=True, generator=torch.Generator().manual_seed(seed))
    return sum(len(y) for _, y in loader)


def batched_epoch(root: str, batch: int, seed: int) -> int:
    dataset = load_image_set("mnist", root, train=True, preprocessing="thesis")
    batches = GlobalBatches(len(dataset), batch, torch.Generator().manual_seed(seed), Ranks())
    augmentation = torch.Generator().manual_seed(seed + 1)
    cpu = torch.device("cpu")
    seen = 0
    for (indices, _), size in zip(batches.shards(), batches.global_sizes):
        x, y = dataset.batch(indices, cpu, dataset.preprocess.draw(size, augmentation))
        seen += len(y)
    return seen


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", help="torchvision root holding MNIST (writable)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch", type=int, default=128)
    args = parser.parse_args()
    times: dict[str, list[float]] = {"per-sample": [], "batched": []}
    for r in range(args.repeats):
        for name, epoch in (("per-sample", per_sample_epoch), ("batched", batched_epoch)):
            start = time.perf_counter()
            images = epoch(args.root, args.batch, r)
            times[name].append(time.perf_counter() - start)
    old, new = statistics.median(times["per-sample"]), statistics.median(times["batched"])
    print(f"one MNIST training epoch of data ({images:,} images, batch {args.batch}, thesis preprocessing, "
          f"loading included), median of {args.repeats}:")  # fmt: skip
    print(f"  per-sample torchvision transforms: {old:.2f} s")
    print(f"  batched tensor path:               {new:.2f} s")
    print(f"speed-up of the batched path: {old / new:.2f}x")


if __name__ == "__main__":
    main()
