"""Benchmark 4: activation memory and time vs depth for backprop, the adjoint and reversible mode.

A convolutional two-layer Hamiltonian block (16 channels, 16x16 maps, batch 16, h = 0.01) of
16 to 1024 steps is trained for one step (forward + backward) in three ways:

* plain backprop: a HamiltonianBlock (symplectic Euler), where autograd keeps every step;
* reversible: the same block with ``gradient="reversible"``;
* adjoint: an ODEBlock of the same field with weights linear in t (torchdiffeq's fixed grid
  cannot stop at weight jumps), torchdiffeq's fixed-grid Euler at step h, ``gradient="adjoint"``;
* rk4 backprop / rk4 reversible: that ODEBlock by RK4 at step h, with backprop and with
  McCallum & Foster's reversible scheme (``gradient="reversible"``).

``--modes`` picks some of them (e.g. ``--modes "rk4 reversible" --depths 16 4096 --repeats 1`` for
the reversible scheme's memory at depth).

Memory is what autograd keeps for the backward pass, counted with
``contham.experiments.SavedTensors`` (saved-tensor hooks). On CUDA the script also reports the peak allocated
memory of the step. Time is the median of 3 interleaved repetitions. The script prints a table
with ratios to depth 16.

    python benchmarks/memory.py [--depths 16 64 256 1024]
"""

from __future__ import annotations

import argparse

import torch
from _timing import interleaved_medians

from contham import HamiltonianBlock, ODEBlock, TwoLayerField
from contham.experiments import SavedTensors
from contham.solvers import TorchDiffEq

H = 0.01


def saved_megabytes(model: torch.nn.Module, x: torch.Tensor) -> float:
    with SavedTensors() as saved:
        out = model(x)
    out.sum().backward()
    return saved.megabytes_without(model.parameters())


def peak_cuda_megabytes(model: torch.nn.Module, x: torch.Tensor) -> float | None:
    if x.device.type != "cuda":
        return None
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    model(x).sum().backward()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**20


def models(n: int, device: torch.device) -> dict[str, torch.nn.Module]:
    field = TwoLayerField(16, "tanh", kernel_size=3, n_nodes=n, dt=H).to(device)
    smooth = TwoLayerField(16, "tanh", kernel_size=3, n_nodes=n, dt=H, time_mode="linear").to(device)
    solver = TorchDiffEq("euler", options=dict(step_size=H))
    return {
        "backprop": HamiltonianBlock(field),
        "reversible": HamiltonianBlock(field, gradient="reversible"),
        "adjoint": ODEBlock(smooth, n * H, solver, gradient="adjoint"),
        "rk4 backprop": ODEBlock(smooth, n * H, "rk4", step_size=H),
        "rk4 reversible": ODEBlock(smooth, n * H, "rk4", step_size=H, gradient="reversible"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--depths", type=int, nargs="+", default=[16, 64, 256, 1024])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--modes", nargs="+", default=None, help="some of the modes (default: all)")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    x = torch.randn(args.batch, 16, 16, 16, device=device, requires_grad=True)
    print(f"device {device}, state {tuple(x.shape)} ({x.numel() * 4 / 2**20:.2f} MiB), h = {H}")
    print("| steps | mode | autograd MiB | vs 16 steps | CUDA peak MiB | s per training step | s per step |")
    print("|---|---|---|---|---|---|---|")
    first: dict[str, float] = {}
    for n in args.depths:
        built = {k: m for k, m in models(n, device).items() if args.modes is None or k in args.modes}

        def step(model: torch.nn.Module) -> None:
            model(x).sum().backward()

        times = interleaved_medians({k: (lambda m=m: step(m)) for k, m in built.items()}, args.repeats)
        for mode, model in built.items():
            saved = saved_megabytes(model, x)
            first.setdefault(mode, saved)
            peak = peak_cuda_megabytes(model, x)
            peak_text = "-" if peak is None else f"{peak:.1f}"
            print(f"| {n} | {mode} | {saved:.2f} | {saved / first[mode]:.2f}x | {peak_text} | "
                  f"{times[mode]:.3f} | {times[mode] / n * 1e3:.2f} ms |")  # fmt: skip


if __name__ == "__main__":
    main()
