"""What each accelerator option costs or saves per training epoch, measured side by side.

For each network (thesis ResNet-2, the thesis-shaped two-layer Hamiltonian network, the report's
nominal network) on the bundled digits, batch 32, this trains ``--epochs`` epochs with fp32 eager,
``amp=bf16``, ``amp=fp16``, ``channels_last=true`` and ``compile=true`` (inductor), one after
another within each repetition, repetitions interleaved. It prints the median seconds per epoch
in the steady state (epochs after the first) and the first epoch's extra time (compilation), and
each option's ratio to fp32 eager (below 1: faster).

Usage: ``python benchmarks/options.py [--repeats 3] [--epochs 3] [--device cpu|cuda]
[--max-batches N] [--models ...] [--options ...]``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

from contham.experiments import RunConfig, run

OPTIONS = {
    "fp32 eager": {},
    "amp=bf16": {"amp": "bf16"},
    "amp=fp16": {"amp": "fp16"},
    "channels_last": {"channels_last": True},
    "compile (inductor)": {"compile": True},
}


def epoch_times(model: str, options: dict, folder: Path, args: argparse.Namespace) -> tuple[float, float]:
    config = RunConfig(model=model, dataset="digits", epochs=args.epochs, max_batches=args.max_batches,
                       device=args.device, test_fraction=0.1, **options)  # fmt: skip
    config.set("learning.batch_size", 32)
    run(config, folder, progress=False)
    seconds = [h["seconds"] for h in json.loads((folder / "history.json").read_text())]
    return statistics.median(seconds[1:]), seconds[0] - statistics.median(seconds[1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--max-batches", type=int)
    parser.add_argument("--models", nargs="+", default=["thesis_resnet2", "thesis_hamiltonian", "nominal"])
    parser.add_argument("--options", nargs="+", default=list(OPTIONS), choices=list(OPTIONS), metavar="OPTION")
    args = parser.parse_args()
    options = {name: OPTIONS[name] for name in dict.fromkeys(["fp32 eager", *args.options])}
    if args.epochs < 2:
        parser.error("--epochs must be at least 2 (the first epoch includes compilation)")
    steady: dict[tuple[str, str], list[float]] = {}
    first: dict[tuple[str, str], list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeats):
            for model in args.models:
                for i, (name, fields) in enumerate(options.items()):
                    folder = Path(tmp) / f"{r}-{model}-{i}"  # a fresh folder per run
                    s, extra = epoch_times(model, fields, folder, args)
                    steady.setdefault((model, name), []).append(s)
                    first.setdefault((model, name), []).append(extra)
    print(f"| network | option | s/epoch (steady) | first-epoch extra s | vs fp32 eager |  ({args.device}, "
          f"median of {args.repeats})")  # fmt: skip
    print("|---|---|---|---|---|")
    for model in args.models:
        base = statistics.median(steady[model, "fp32 eager"])
        for name in options:
            s, extra = statistics.median(steady[model, name]), statistics.median(first[model, name])
            print(f"| {model} | {name} | {s:.3f} | {extra:.1f} | {s / base:.2f}x |")


if __name__ == "__main__":
    main()
