"""What scaling out costs and saves on this machine, measured side by side in one run.

1. A grid (thesis ResNet-2 on the bundled digits, 4 learning rates x 2 seeds, EPOCHS epochs):
   ``contham grid`` sequentially in one process vs ``contham grid --ray`` on a local Ray instance
   (one CPU per run), wall time of the whole command including Ray's start.
2. One run: ``contham train`` in one process vs ``torchrun --nproc_per_node=2`` (gloo), seconds
   per training epoch from the run's history and wall time of the command.

The repetitions are interleaved (A, B, A, B, ...) and the medians printed; every repetition
trains from scratch in a fresh folder. Usage: ``python benchmarks/scaling.py [--repeats 3]
[--epochs 2] [--max-batches N]``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

GRID = [
    "grid",
    "thesis_resnet2",
    "dataset=digits",
    "--param",
    "learning.lr=0.01,0.02,0.05,0.1",
    "--seeds",
    "0",
    "1",
    "--quiet",
]
TRAIN = ["train", "thesis_resnet2", "dataset=digits", "--quiet"]


def timed(command: list[str]) -> float:
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
    return time.perf_counter() - start


def seconds_per_epoch(folder: Path) -> float:
    history = json.loads((folder / "history.json").read_text())
    return statistics.mean(h["seconds"] for h in history)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--max-batches", type=int, help="batches per epoch (default: all 47)")
    args = parser.parse_args()
    contham = [sys.executable, "-m", "contham"]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "contham"]
    epochs = [f"epochs={args.epochs}", "device=cpu"] + ([f"max_batches={args.max_batches}"] if args.max_batches else [])
    times: dict[str, list[float]] = {k: [] for k in ("sequential", "ray", "one", "two", "one_epoch", "two_epoch")}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeats):
            out = Path(tmp) / str(r)
            times["sequential"].append(timed([*contham, *GRID, *epochs, "--out", str(out / "seq")]))
            times["ray"].append(timed([*contham, *GRID, *epochs, "--ray", "--out", str(out / "ray")]))
            times["one"].append(timed([*contham, *TRAIN, *epochs, "--out", str(out / "one")]))
            times["two"].append(timed([*torchrun, *TRAIN, *epochs, "--out", str(out / "two")]))
            times["one_epoch"].append(seconds_per_epoch(out / "one"))
            times["two_epoch"].append(seconds_per_epoch(out / "two"))
    m = {k: statistics.median(v) for k, v in times.items()}
    print(f"grid of 8 runs, {args.epochs} epochs each, median of {args.repeats}:")
    print(f"  sequential {m['sequential']:.1f} s, Ray (local, 1 CPU per run) {m['ray']:.1f} s")
    print(f"  one run, 1 process: {m['one_epoch']:.2f} s/epoch ({m['one']:.1f} s wall)")
    print(f"  one run, torchrun 2 ranks (gloo): {m['two_epoch']:.2f} s/epoch ({m['two']:.1f} s wall)")
    print(f"torchrun 2 ranks / 1 process, s/epoch: {m['two_epoch'] / m['one_epoch']:.2f}x")
    print(f"grid speed-up, sequential / Ray: {m['sequential'] / m['ray']:.2f}x")


if __name__ == "__main__":
    main()
