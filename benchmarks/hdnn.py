"""contham's H-DNN experiments against the papers' code (DecodEPFL/HamiltonianNet), side by side in
one process, interleaved, medians:

* a whole 2-D run (``hdnn_2d``, the papers' protocol: 50 epochs, 10 inner classifier iterations
  per batch, the final refit) against the papers' ``train_2d_example``;
* one training step of the MNIST H-DNN (batch 100, 8 layers: forward, loss with the smoothness
  term, backward, Adam step) against the papers' ``Net`` of ``run_MNIST.py`` (which runs MS1
  whatever its ``net_type``; its H1 layer is timed too).

Needs a checkout of the papers' code, patched for torch 2.x as docs/hdnn.md lists:

    python benchmarks/hdnn.py --reference ../HamiltonianNet [--repeats 3] [--steps 20] [--threads 1]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from contham import smoothness
from contham.experiments import RunConfig
from contham.experiments.trainer import run
from contham.models.hdnn import HDNNMnist


def contham_2d(function: str, layers: int) -> None:
    config = RunConfig(model="hdnn_2d", seed=1, device="cpu")
    config.set("n_layers", layers)
    config.set("function", function)
    with tempfile.TemporaryDirectory() as folder:
        run(config, folder, progress=False)


def reference_2d(function: str, layers: int) -> None:
    from examples.train_2d_example import train_2d_example  # type: ignore[import-not-found]

    train_2d_example("swiss_roll", function, 4, layers, 1.2, False, None, 1)


def mnist_steps(network: str, steps: int, device: str | torch.device = "cpu") -> Any:
    """A closure running ``steps`` training steps of one network on a fixed batch on ``device``."""
    x, y = torch.randn(100, 1, 28, 28, device=device), torch.randint(0, 10, (100,), device=device)
    if network == "contham":
        model: Any = HDNNMnist(n_layers=8, h=0.5, function="H1_J1").to(device)
        optimizer = torch.optim.Adam(model.parameters(), 0.04, weight_decay=4e-3)

        def loss() -> torch.Tensor:
            return F.cross_entropy(model(x), y) + smoothness(model, 4e-3, b_in_reg=True, h_div=False)

    else:
        from examples.run_MNIST import Net  # type: ignore[import-not-found]
        from integrators.integrators import H1  # type: ignore[import-not-found]
        from regularization.regularization import regularization  # type: ignore[import-not-found]

        model = Net(nf=8, n_layers=8, h=0.5, net_type="H1_J1")
        if network == "reference H1":
            model.hamiltonian = H1(n_layers=8, t_end=4.0, nf=8, select_j="J1")
        model = model.to(device)
        optimizer = torch.optim.Adam(model.parameters(), 0.04, weight_decay=4e-3)

        def loss() -> torch.Tensor:
            value = F.nll_loss(model(x), y)
            K, b = model.hamiltonian.getK(), model.hamiltonian.getb()
            for _ in range(7):  # as run_MNIST.py: the smoothness term n_layers - 1 times
                value = value + regularization(8e-3, 0.5, K, b)
            return value

    def go() -> None:
        for _ in range(steps):
            optimizer.zero_grad()
            loss().backward()
            optimizer.step()

    return go


def timed(fn: Any) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference", type=Path, required=True, help="a checkout of DecodEPFL/HamiltonianNet")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--only", choices=["2d", "mnist"])
    args = parser.parse_args(argv)
    sys.path.insert(0, str(args.reference.resolve()))
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} thread(s), medians of {args.repeats} interleaved repeats")
    if args.only in (None, "2d"):
        for function, layers in (("H1_J1", 16), ("MS3", 16), ("H1_J1", 64)):
            times: dict[str, list[float]] = {"contham": [], "reference": []}
            for _ in range(args.repeats):
                times["contham"].append(timed(lambda f=function, n=layers: contham_2d(f, n)))
                times["reference"].append(timed(lambda f=function, n=layers: reference_2d(f, n)))
            c, r = (statistics.median(times[k]) for k in ("contham", "reference"))
            print(
                f"2-D run, swiss_roll {function} {layers} layers: contham {c:.2f} s, reference {r:.2f} s: {r / c:.2f}x"
            )
    if args.only in (None, "mnist"):
        runs = {name: mnist_steps(name, args.steps) for name in ("contham", "reference Net", "reference H1")}
        for go in runs.values():
            go()  # warm-up
        times = {name: [] for name in runs}
        for _ in range(args.repeats):
            for name, go in runs.items():
                times[name].append(timed(go) / args.steps)
        c = statistics.median(times["contham"])
        print(f"MNIST H-DNN training step (batch 100, 8 layers): contham H1_J1 {1e3 * c:.1f} ms")
        for name in ("reference Net", "reference H1"):
            r = statistics.median(times[name])
            print(f"  {name}: {1e3 * r:.1f} ms: contham is {r / c:.2f}x faster")


if __name__ == "__main__":
    main()
