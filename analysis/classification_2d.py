"""2-D classification with H-DNNs: decision regions and the propagation of the hidden states.

A thin use of ``hdnn_2d`` (the same as ``contham train hdnn_2d dataset=... function=...
n_layers=...`` then ``contham plot``): the Swiss roll and double circles, each with H1_J1
(forward Euler) and H2 (symplectic Euler), trained by the H-DNN papers' protocol (see
docs/hdnn.md). Writes, per case, the run folder, ``classification_2d_<dataset>_<function>.png``
(``contham plot``'s decision regions with the test points, then the hidden states at evenly
spaced layers) and ``classification_2d.csv`` (test accuracy and training time) to --out.

    python analysis/classification_2d.py [--layers 64] [--epochs 50] [--out analysis/out]
"""

from __future__ import annotations

import argparse
import csv
import shutil
from pathlib import Path

from contham.experiments import RunConfig
from contham.experiments.cli import main as contham
from contham.experiments.trainer import run

CASES = [(d, f) for d in ("swiss_roll", "double_circles") for f in ("H1_J1", "H2")]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=50)
    parser.add_argument("--out", default="analysis/out")
    args = parser.parse_args(argv)
    out = Path(args.out)
    rows = []
    for dataset, function in CASES:
        config = RunConfig(model="hdnn_2d", dataset=dataset, epochs=args.epochs, seed=1, device="cpu")
        config.set("n_layers", args.layers)
        config.set("function", function)
        folder = out / f"classification_2d_{dataset}_{function}"
        metrics = run(config, folder, progress=False)
        contham(["plot", str(folder)])
        shutil.copy(folder / "points_2d.png", out / f"classification_2d_{dataset}_{function}.png")
        rows.append(dict(dataset=dataset, function=function, layers=args.layers, test_accuracy=metrics["test_accuracy"],
                         train_seconds=round(metrics["train_seconds"], 1)))  # fmt: skip
        print(rows[-1], flush=True)
    with open(out / "classification_2d.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    print(f"written: {out / 'classification_2d.csv'} and the figures beside it")


if __name__ == "__main__":
    main()
