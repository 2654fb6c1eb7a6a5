"""ODENet tolerance study (thesis section 5.3.4): tolerance vs NFE vs accuracy vs time per batch.

The thesis's ODENet (dopri5, rtol = atol = tol) is trained briefly on offline data for each
tolerance, with direct backprop and with the adjoint method. The defaults are sklearn's bundled
digits with the thesis's preprocessing: 3 epochs in batches of 32, evaluated on the 297 test
images. Each (tolerance, adjoint) pair is a resumable run under --out/runs. The script writes
odenet_tolerance.csv and odenet_tolerance.png: NFE forward and backward per batch, seconds per
training batch and test accuracy, each against the tolerance. It takes a few minutes on 2 CPU
cores.

    python analysis/odenet_tolerance.py [--tolerances 1e-1 1e-2 1e-3 1e-4 1e-5] [--dataset mnist --root data]
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

from matplotlib.figure import Figure

from contham.experiments import RunConfig, run
from contham.experiments.files import read_json


def _per_batch(run_dir: Path) -> float:
    history = read_json(run_dir / "history.json")
    return sum(h["seconds"] for h in history) / sum(h["batches"] for h in history)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tolerances", type=float, nargs="+", default=[1e-1, 1e-2, 1e-3, 1e-4])
    parser.add_argument("--dataset", default="digits")
    parser.add_argument("--root")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--max-batches", type=int, help="batches per epoch (default: all)")
    parser.add_argument("--out", default="analysis/out")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for adjoint in (False, True):
        for tol in args.tolerances:
            options = dict(rtol=tol, atol=tol, gradient="adjoint" if adjoint else "backprop")
            config = RunConfig(
                model="thesis_odenet",
                dataset=args.dataset,
                root=args.root,
                epochs=args.epochs,
                max_batches=args.max_batches,
                model_options=options,
            )
            config.set("learning.batch_size", 32)
            config.set("learning.lr", 0.05)
            metrics = run(config, out / "runs" / f"tol{tol:g}_adjoint{adjoint}", progress=False)
            row = dict(
                tolerance=tol,
                adjoint=adjoint,
                status=metrics["status"],
                nfe_forward=metrics.get("nfe_forward"),
                nfe_backward=metrics.get("nfe_backward"),
                seconds_per_batch=_per_batch(out / "runs" / f"tol{tol:g}_adjoint{adjoint}"),
                test_accuracy=metrics.get("test_accuracy"),
                saved_tensors_mb=metrics.get("saved_tensors_mb"),
            )
            rows.append(row)
            print(", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()), flush=True)
    with open(out / "odenet_tolerance.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    fig = Figure(figsize=(15, 4))
    panels = fig.subplots(1, 3)
    for adjoint, style in ((False, "o-"), (True, "s--")):
        part = [r for r in rows if r["adjoint"] == adjoint]
        label = "adjoint" if adjoint else "direct backprop"
        tols = [r["tolerance"] for r in part]
        panels[0].plot(tols, [r["nfe_forward"] for r in part], style, label=f"forward, {label}")
        panels[0].plot(tols, [r["nfe_backward"] for r in part], style, alpha=0.5, label=f"backward, {label}")
        panels[1].plot(tols, [r["seconds_per_batch"] for r in part], style, label=label)
        panels[2].plot(tols, [r["test_accuracy"] for r in part], style, label=label)
    for ax, name in zip(panels, ("NFE per batch", "seconds per training batch", "test accuracy")):
        ax.set_xscale("log")
        ax.invert_xaxis()
        ax.set_xlabel("tolerance (rtol = atol)")
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "odenet_tolerance.png", dpi=110)
    print(f"written: {out / 'odenet_tolerance.png'}, {out / 'odenet_tolerance.csv'}")


if __name__ == "__main__":
    main()
