"""The H-DNN papers' 2-D experiments, contham beside the papers' own code: test accuracy and
wall time of every (implementation, dataset, function, layers, seed).

contham runs ``hdnn_2d`` with its default protocol (the papers', see docs/hdnn.md) plus any
``--set key=value`` overrides; ``--reference PATH`` also runs the papers' ``train_2d_example``
from a checkout of DecodEPFL/HamiltonianNet at PATH (patched for torch 2.x as docs/hdnn.md lists),
each run in its own process with one thread, as contham's. ``--nudge N`` moves every initial
weight of both H-DNNs N units in the last place before training (rows labelled ``...+Nulp``): a
control that measures how much one run's accuracy owes to rounding. Rows are appended to
``<out>/hdnn_2d.csv`` as they finish; a rerun skips the rows already there, so the sweep resumes
after an interrupt. At the end a table of means over the seeds is printed (Markdown).

    python analysis/hdnn_2d_reproduction.py --out docs/results [--reference ../HamiltonianNet]
        [--datasets swiss_roll double_circles] [--functions H1_J1 MS3 H2] [--layers 16 64]
        [--seeds 1 2 3] [--set learning.lr=0.01 --label lr0.01] [--nudge 1]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from _sweep import resumable_sweep
from torch import nn

from contham.experiments import RunConfig
from contham.experiments.drivers import parse_value
from contham.experiments.trainer import run
from contham.models.hdnn import FUNCTIONS

FIELDS = ("implementation", "dataset", "function", "layers", "seed", "test_accuracy", "seconds")
T_END, NF = 1.2, 4  # the papers' run.py defaults

REFERENCE_RUN = """
import json, sys, time, torch
torch.set_num_threads(1)
sys.path[:0] = [{path!r}, {here!r}]
import examples.train_2d_example as script
from hdnn_2d_reproduction import nudge

def nudged(network):
    class Nudged(network):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            nudge(self, {ulps})
    return Nudged

for name in ("MS1", "MS2", "MS3", "H1", "H2"):
    setattr(script, name, nudged(getattr(script, name)))
start = time.perf_counter()
out = script.train_2d_example({dataset!r}, {function!r}, {nf}, {layers}, {t_end}, False, None, {seed})
print(json.dumps(dict(test=float(out[3]), seconds=time.perf_counter() - start)))
"""


@torch.no_grad()
def nudge(network: nn.Module, ulps: int) -> None:
    """Move every nonzero weight of ``network`` ``ulps`` units in the last place towards +inf (an
    entry that is exactly zero, such as a masked one, stays zero)."""
    for weight in network.parameters():
        for _ in range(ulps):
            weight.copy_(torch.where(weight == 0, weight, torch.nextafter(weight, torch.full_like(weight, torch.inf))))


def contham_run(dataset: str, function: str, layers: int, seed: int, settings: list[tuple[str, object]],
                ulps: int = 0) -> dict:  # fmt: skip
    config = RunConfig(model="hdnn_2d", dataset=dataset, seed=seed, device="cpu")
    for key, value in [("nf", NF), ("t_end", T_END), ("n_layers", layers), ("function", function), *settings]:
        config.set(key, value)
    with tempfile.TemporaryDirectory() as folder:
        start = time.perf_counter()
        metrics = run(config, folder, progress=False, on_build=lambda network: nudge(network.block, ulps))
        return {"test_accuracy": metrics["test_accuracy"], "seconds": time.perf_counter() - start}


def reference_run(path: Path, dataset: str, function: str, layers: int, seed: int, ulps: int = 0) -> dict:
    code = REFERENCE_RUN.format(path=str(path), here=str(Path(__file__).parent), ulps=ulps, dataset=dataset,
                                function=function, nf=NF, layers=layers, t_end=T_END, seed=seed)  # fmt: skip
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=path)
    if done.returncode != 0:
        return {"test_accuracy": "", "seconds": "", "error": done.stderr.strip().splitlines()[-1]}
    result = json.loads(done.stdout.strip().splitlines()[-1])
    return {"test_accuracy": result["test"], "seconds": result["seconds"]}


def table(rows: list[dict]) -> str:
    """Markdown: one line per (dataset, layers, function), per implementation the test accuracy of
    each seed, their mean (%) and the mean wall time of a run (s)."""
    groups: dict[tuple, dict[str, dict[int, tuple[float, float]]]] = {}
    for row in rows:
        if row["test_accuracy"] != "":
            key = (row["dataset"], int(row["layers"]), row["function"])
            seeds = groups.setdefault(key, {}).setdefault(row["implementation"], {})
            seeds[int(row["seed"])] = (100 * float(row["test_accuracy"]), float(row["seconds"]))
    implementations = sorted({i for group in groups.values() for i in group}, key=lambda i: i.startswith("reference"))
    head = "".join(f" {i} | mean | s |" for i in implementations)
    lines = [f"| dataset | layers | function |{head}", "|---" * (3 + 3 * len(implementations)) + "|"]
    order = {function: i for i, function in enumerate(FUNCTIONS)}
    for (dataset, layers, function), group in sorted(groups.items(), key=lambda g: (*g[0][:2], order[g[0][2]])):
        cells = ""
        for implementation in implementations:
            runs = [group.get(implementation, {})[k] for k in sorted(group.get(implementation, {}))]
            if runs:
                accuracies, seconds = zip(*runs)
                cells += f" {' / '.join(f'{a:.1f}' for a in accuracies)} | {sum(accuracies) / len(runs):.1f}"
                cells += f" | {sum(seconds) / len(runs):.1f} |"
            else:
                cells += " | | |"
        lines.append(f"| {dataset} | {layers} | {function} |{cells}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="analysis/out")
    parser.add_argument("--reference", type=Path, help="a checkout of DecodEPFL/HamiltonianNet to run beside contham")
    parser.add_argument("--datasets", nargs="+", default=["swiss_roll", "double_circles"])
    parser.add_argument("--functions", nargs="+", default=list(FUNCTIONS), choices=list(FUNCTIONS))
    parser.add_argument("--layers", nargs="+", type=int, default=[16, 64])
    parser.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    parser.add_argument("--set", nargs="*", default=[], help="contham overrides key=value (e.g. learning.lr=0.01)")
    parser.add_argument("--label", default="contham", help="implementation name of the contham rows")
    parser.add_argument("--nudge", type=int, default=0, metavar="N", help="move the initial weights N ulps")
    args = parser.parse_args(argv)
    if args.nudge < 0:
        parser.error(f"--nudge must be a number of ulps >= 0; got {args.nudge}")
    torch.set_num_threads(1)
    settings = [(k, parse_value(v)) for k, _, v in (s.partition("=") for s in args.set)]
    suffix = f"+{args.nudge}ulp" if args.nudge else ""
    implementations = [args.label + suffix] + (["reference" + suffix] if args.reference else [])
    keys = [
        (implementation, dataset, function, str(layers), str(seed))
        for layers in args.layers
        for dataset in args.datasets
        for function in args.functions
        for seed in args.seeds
        for implementation in implementations  # side by side, alternating
    ]

    def one(key: tuple[str, ...]) -> dict:
        implementation, dataset, function, layers, seed = key
        if implementation == "reference" + suffix:
            return reference_run(args.reference.resolve(), dataset, function, int(layers), int(seed), args.nudge)
        return contham_run(dataset, function, int(layers), int(seed), settings, args.nudge)

    rows = resumable_sweep(Path(args.out) / "hdnn_2d.csv", FIELDS, keys, one)
    print(table(rows))


if __name__ == "__main__":
    main()
