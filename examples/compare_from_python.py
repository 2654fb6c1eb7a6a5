"""Training and comparing networks from Python: the thesis's ResNet-2, its ODENet and a
Hamiltonian network of the same shape, on scikit-learn's bundled digits, over two seeds.

``RunConfig`` describes a run as data; ``compare`` trains every model for every seed into its own
run folder (resumable: run the script again and finished runs are read back), then writes
``compare.csv``, ``compare.md`` and ``compare.png`` and returns the table rows.

    python examples/compare_from_python.py [--epochs 2] [--out runs/example_compare]
"""

from __future__ import annotations

import argparse

from contham.experiments import RunConfig, compare
from contham.experiments.drivers import format_table


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--max-batches", type=int, default=None, help="batches per epoch (short runs)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--out", default="runs/example_compare")
    args = parser.parse_args(argv)

    base = RunConfig(model="thesis_resnet2", dataset="digits", epochs=args.epochs, max_batches=args.max_batches)
    base.set("learning.batch_size", 32)
    base.set("learning.lr", 0.05)
    models = [
        "thesis_resnet2",
        "thesis_odenet",  # dopri5, rtol = atol = 1e-3 as in the thesis
        "thesis_odenet:gradient=adjoint,seminorm=true",  # the adjoint with the seminorm
        "thesis_hamiltonian",  # eight two-layer Hamiltonian steps, ResNet-2's parameter count
    ]
    print(f"training {len(models)} networks x {len(args.seeds)} seeds on digits -> {args.out}", flush=True)
    rows = compare(models, base, args.seeds, args.out, progress=True)  # a line per run, bars per epoch
    print(format_table(rows))
    return rows


if __name__ == "__main__":
    main()
