"""Compiled vs eager training step of Hamiltonian blocks (``torch.compile(..., fullgraph=True)``).

Blocks: a dense two-layer block of ``--features`` features (default 4, the 2-D protocol's
shape: 64 steps, batch 125; the fused path), the same block step by step
(``Backprop(higher_order=True)``),
its reversible form, a dense H1-J1 ODEBlock with rk4, and a convolutional two-layer block (16
channels, 8 steps, 16x16 images, batch 32). Each is timed eager and compiled (inductor) on a
training step (forward, ``sum().backward()``), interleaved, median of ``--repeats`` after the
compilation's own warm-up. The ratio is eager time / compiled time.

    python benchmarks/compile.py [--device cpu|cuda] [--repeats 20] [--only conv]
"""

from __future__ import annotations

import argparse

import torch
from _timing import interleaved_medians, training_step

from contham import Backprop, HamiltonianBlock, HamiltonianField, ODEBlock, TwoLayerField


def blocks(features: int) -> dict[str, tuple[torch.nn.Module, tuple[int, ...]]]:
    dense = TwoLayerField(features, n_nodes=64, dt=0.05)
    return {
        "dense two-layer, 64 steps (fused)": (HamiltonianBlock(dense, "verlet"), (125, features)),
        "dense two-layer, 64 steps (step by step)": (
            HamiltonianBlock(dense, "verlet", gradient=Backprop(higher_order=True)),
            (125, features),
        ),
        "dense two-layer, 64 steps (reversible)": (
            HamiltonianBlock(dense, "verlet", gradient="reversible"),
            (125, features),
        ),
        "dense H1-J1 ODEBlock, rk4, 16 steps": (
            ODEBlock(HamiltonianField(features, n_nodes=4, dt=0.25, time_mode="linear"), 1.0, "rk4", step_size=1 / 16),
            (125, features),
        ),
        "conv two-layer 3x3, 16 ch, 8 steps": (
            HamiltonianBlock(TwoLayerField(16, kernel_size=3, n_nodes=8, dt=0.1)),
            (32, 16, 16, 16),
        ),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--features", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--only", help="time only the blocks whose name contains this text (e.g. conv)")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {device}, {torch.get_num_threads()} threads, median of {args.repeats}")
    print("| block | eager (ms) | compiled (ms) | eager / compiled |")
    print("|---|---|---|---|")
    for name, (block, shape) in blocks(args.features).items():
        if args.only is not None and args.only not in name:
            continue
        block = block.to(device)
        x = torch.randn(*shape, device=device, requires_grad=True)
        compiled = torch.compile(block, fullgraph=True)
        candidates = {"eager": training_step(block, x), "compiled": training_step(compiled, x)}
        for step in candidates.values():  # compilation (forward and backward graphs) before timing
            step()
        if device.type == "cuda":
            candidates = {k: _synced(f) for k, f in candidates.items()}
        times = interleaved_medians(candidates, args.repeats, warmup=2)
        eager, fast = times["eager"] * 1e3, times["compiled"] * 1e3
        print(f"| {name} | {eager:.2f} | {fast:.2f} | {eager / fast:.2f}x |")


def _synced(step):
    def run() -> None:
        step()
        torch.cuda.synchronize()

    return run


if __name__ == "__main__":
    main()
