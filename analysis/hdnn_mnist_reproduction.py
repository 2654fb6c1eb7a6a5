"""The H-DNN papers' MNIST experiment, contham beside the papers' own code: the final and best test
accuracy over the epochs and the wall time of every (implementation, function, seed).

Both run the papers' settings per function (8 layers, batches of 100, Adam lr 0.04 with lr x 0.8
after every epoch; h, weight decay and smoothness alpha as in ``SETTINGS``). contham runs
``hdnn_mnist`` with those settings; ``--reference PATH`` also runs the main loop of the papers'
``examples/run_MNIST.py`` (its ``Net``, ``train`` and ``test``, which build MS1 layers whatever the
function and add the smoothness term n_layers - 1 times; docs/hdnn.md) from a checkout of
DecodEPFL/HamiltonianNet at PATH. Every run has its own process and one thread. Rows are appended
to ``<out>/hdnn_mnist.csv`` as they finish; a rerun skips the rows already there. At the end a
Markdown table is printed.

    python analysis/hdnn_mnist_reproduction.py --root data --out docs/results [--reference ../HamiltonianNet]
        [--functions H1_J1 MS1 H1_J2] [--seeds 1] [--epochs 10]
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

from contham.experiments import RunConfig
from contham.experiments.files import read_json
from contham.experiments.trainer import run

FIELDS = ("implementation", "function", "seed", "epochs", "final_test_accuracy", "best_test_accuracy", "seconds")
SETTINGS = {  # function: (h, weight decay, the papers' alpha), from run_MNIST.py
    "H1_J1": (0.5, 4e-3, 8e-3),
    "H1_J2": (0.05, 2e-4, 1e-3),
    "MS1": (0.4, 1e-3, 1e-3),
}

REFERENCE_RUN = """
import json, sys, time, torch
from torchvision import datasets, transforms
torch.set_num_threads(1)
sys.path.insert(0, {path!r})
import examples.run_MNIST as script
h, wd, alpha = {settings!r}
script.h = h  # its train() reads the global h that its __main__ sets
torch.manual_seed({seed})
model = script.Net(nf=8, n_layers=8, h=h, net_type={function!r})
normalise = transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.1307,), (0.3081,))])
train = torch.utils.data.DataLoader(datasets.MNIST({root!r}, train=True, transform=normalise), 100, shuffle=True)
test = torch.utils.data.DataLoader(datasets.MNIST({root!r}, train=False, transform=normalise), 1000, shuffle=True)
optimizer = torch.optim.Adam(model.parameters(), lr=0.04, weight_decay=wd)
scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.8)
start, accuracies = time.perf_counter(), []
for epoch in range(1, {epochs} + 1):
    script.train(model, torch.device("cpu"), train, optimizer, epoch, alpha, 0)
    accuracies.append(script.test(model, torch.device("cpu"), test, 0) / len(test.dataset))
    scheduler.step()
print(json.dumps(dict(accuracies=accuracies, seconds=time.perf_counter() - start)))
"""


def contham_run(root: str, function: str, seed: int, epochs: int) -> dict:
    h, wd, alpha = SETTINGS[function]
    config = RunConfig(model="hdnn_mnist", root=root, seed=seed, device="cpu", epochs=epochs)
    settings = {"function": function, "h": h, "learning.wd": wd, "learning.alpha": alpha / 2,  # on half norms
                "learning.lr_decay_at": list(range(1, epochs))}  # fmt: skip
    for key, value in settings.items():
        config.set(key, value)
    with tempfile.TemporaryDirectory() as folder:
        start = time.perf_counter()
        run(config, folder, progress=False)
        seconds = time.perf_counter() - start
        accuracies = [epoch["test_accuracy"] for epoch in read_json(Path(folder) / "history.json")]
    return {"final_test_accuracy": accuracies[-1], "best_test_accuracy": max(accuracies), "seconds": seconds}


def reference_run(path: Path, root: str, function: str, seed: int, epochs: int) -> dict:
    code = REFERENCE_RUN.format(path=str(path), root=root, function=function, seed=seed, epochs=epochs,
                                settings=SETTINGS[function])  # fmt: skip
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=path)
    if done.returncode != 0:
        raise RuntimeError(f"the papers' code failed on {function}, seed {seed}:\n{done.stderr[-2000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    accuracies = result["accuracies"]
    return {"final_test_accuracy": accuracies[-1], "best_test_accuracy": max(accuracies), "seconds": result["seconds"]}


def table(rows: list[dict]) -> str:
    lines = ["| function | implementation | seed | epochs | final test (%) | best test (%) | s per run |",
             "|---|---|---|---|---|---|---|"]  # fmt: skip
    order = {function: i for i, function in enumerate(SETTINGS)}
    for r in sorted(rows, key=lambda r: (order[r["function"]], r["implementation"] == "reference", int(r["seed"]))):
        lines.append(
            f"| {r['function']} | {r['implementation']} | {r['seed']} | {r['epochs']} | "
            f"{100 * float(r['final_test_accuracy']):.2f} | {100 * float(r['best_test_accuracy']):.2f} | "
            f"{float(r['seconds']):.0f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", required=True, help="torchvision root holding MNIST/raw")
    parser.add_argument("--out", default="analysis/out")
    parser.add_argument("--reference", type=Path, help="a checkout of DecodEPFL/HamiltonianNet to run beside contham")
    parser.add_argument("--functions", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[1])
    parser.add_argument("--epochs", type=int, default=10)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    root = str(Path(args.root).resolve())
    implementations = ["contham"] + (["reference"] if args.reference else [])
    keys = [
        (implementation, function, str(seed), str(args.epochs))
        for function in args.functions
        for seed in args.seeds
        for implementation in implementations
    ]

    def one(key: tuple[str, ...]) -> dict:
        implementation, function, seed, epochs = key
        if implementation == "reference":
            return reference_run(args.reference.resolve(), root, function, int(seed), int(epochs))
        return contham_run(root, function, int(seed), int(epochs))

    rows = resumable_sweep(Path(args.out) / "hdnn_mnist.csv", FIELDS, keys, one)
    print(table(rows))


if __name__ == "__main__":
    main()
