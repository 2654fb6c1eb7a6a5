"""contham on a GPU: training-step throughput per network, eager and compiled, and the checks that
only a GPU can make, side by side in one run (interleaved, medians, synchronised).

1. Images per second of one training step (forward, cross-entropy, backward, SGD step; random
   inputs of each network's own data) per network at two batch sizes, eager and, on CUDA,
   compiled with ``torch.compile(mode="reduce-overhead")`` (CUDA graphs of the graphs it traces:
   the backward call is a graph break, so the step is captured in pieces), with the per-image cost of
   the small batch against the large one (1.0: the host does not set the pace).
2. Checks that fail loudly (``SystemExit``) when they do not hold:
   - on CUDA, a fixed-step network's training step under
     ``torch.cuda.set_sync_debug_mode("error")`` (no host synchronisation; the CPU path's reads
     are counted by tests/test_training.py);
   - the fused blocks' Triton kernels (`contham.solvers.fused_triton`) against step-by-step
     autograd: 1e-10 in float64 and 1e-5 in float32 (on the CPU through Triton's interpreter);
3. the kernels' effective memory bandwidth on the per-pixel MNIST H-DNN state (8 features, 8
   layers; bytes the forward and backward passes must move at the least, over their time).

    python benchmarks/gpu.py                 # on CUDA: batches 128 and 1024, 2,500 images' pixels
    python benchmarks/gpu.py --small         # on the CPU: small batches, the interpreter's checks
"""

from __future__ import annotations

import argparse
import copy
import functools
import os

import torch

CUDA = torch.cuda.is_available()
if not CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")  # the kernels run on CPU tensors, interpreted

from _timing import interleaved_medians  # noqa: E402

from contham import Backprop, HamiltonianBlock, HamiltonianField, TwoLayerField  # noqa: E402
from contham.data import input_shape  # noqa: E402
from contham.models import build, default_data  # noqa: E402
from contham.solvers.fused_triton import triton_steps  # noqa: E402

NETWORKS = ["resnet20", "nominal", "thesis_hamiltonian", "hdnn_mnist", "thesis_resnet2", "thesis_odenet"]


def synchronised(fn):
    def run() -> None:
        fn()
        if CUDA:
            torch.cuda.synchronize()

    return run


def training_step(name: str, batch: int, device: torch.device, compiled: bool):
    """One SGD training step of network ``name`` on a fixed random batch of its own data."""
    shape = input_shape(*default_data(name))
    model = build(name).to(device)
    x = torch.randn(batch, shape["in_channels"], shape["image_size"], shape["image_size"], device=device)
    labels = torch.randint(0, shape["num_classes"], (batch,), device=device)
    optimiser = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, foreach=True)

    def step() -> None:
        optimiser.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(x), labels).backward()
        optimiser.step()

    return torch.compile(step, mode="reduce-overhead") if compiled else step


def throughput(args: argparse.Namespace, device: torch.device) -> None:
    modes = ["eager", "reduce-overhead"] if CUDA else ["eager"]
    cases = {
        (name, batch, mode): synchronised(training_step(name, batch, device, mode != "eager"))
        for name in args.networks
        for batch in args.batches
        for mode in modes
        if mode == "eager" or name != "thesis_odenet"  # an adaptive solve reads the host: not compiled here
    }
    times = interleaved_medians(cases, args.repeats, warmup=3)  # type: ignore[arg-type]  # (graphs record)
    small, large = args.batches
    print(f"\nTraining step, images per second ({device}, median of {args.repeats})")
    print(f"| network | mode | batch {small} | batch {large} | per image, {small} / {large} |")
    print("|---|---|---|---|---|")
    for name in args.networks:
        for mode in modes:
            if (name, small, mode) in times:
                a, b = times[name, small, mode], times[name, large, mode]
                print(f"| {name} | {mode} | {small / a:,.0f} | {large / b:,.0f} | {(a / small) / (b / large):.2f}x |")


def no_host_sync(device: torch.device) -> None:
    if not CUDA:
        print("\nno host sync in the step: CUDA only here (the CPU path: tests/test_training.py)")
        return
    step = training_step("thesis_hamiltonian", 128, device, compiled=False)
    step()  # warm-up: lazy initialisation may read the host once
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        step()
    except RuntimeError as error:
        raise SystemExit(f"FAILED: the training step synchronises with the host: {error}") from error
    finally:
        torch.cuda.set_sync_debug_mode("default")
    print("\nno host sync in the training step of thesis_hamiltonian: passed")


def kernel_blocks(dtype: torch.dtype, device: torch.device):
    """An H1 (J1, forward Euler) and a two-layer (Verlet) block, fused, with step-by-step twins."""
    made = [(HamiltonianField(8, "J1", "tanh", n_nodes=8, dt=0.1), "euler"),
            (TwoLayerField(8, "tanh", width=16, n_nodes=8, dt=0.1), "verlet")]  # fmt: skip
    for field, solver in made:
        field = field.to(device, dtype)
        with torch.no_grad():
            for p in field.parameters():
                p.normal_(0, 0.5)
        plain = HamiltonianBlock(copy.deepcopy(field), solver, gradient=Backprop(higher_order=True))
        yield HamiltonianBlock(field, solver), plain


def kernels_equal_autograd(device: torch.device) -> None:
    for dtype, tol in ((torch.float64, 1e-10), (torch.float32, 1e-5)):
        for fused, plain in kernel_blocks(dtype, device):
            x = torch.randn(77, fused.field.features, dtype=dtype, device=device)
            outs = []
            kernels = functools.partial(triton_steps, fused.schedule.fused)
            for run, block in ((kernels, fused), (plain, plain)):
                xg = x.clone().requires_grad_()
                y = run(xg)
                outs.append((y, *torch.autograd.grad(y.square().sum(), (xg, *block.field.parameters()))))
            for a, b in zip(*outs):
                if not torch.allclose(a, b, rtol=tol, atol=tol):
                    gap = float((a - b).abs().max())
                    raise SystemExit(f"FAILED: Triton kernels differ from autograd by {gap:.1e} ({dtype})")
    print("Triton kernels = step-by-step autograd (1e-10 float64, 1e-5 float32): passed")


def bandwidth(args: argparse.Namespace, device: torch.device) -> None:
    field = HamiltonianField(8, "J1", "tanh", n_nodes=8, dt=0.1).to(device)
    block = HamiltonianBlock(field, "euler")
    plan = block.schedule.fused
    rows = args.images * 28 * 28
    x = torch.randn(rows, 8, device=device, requires_grad=True)

    def forward() -> None:
        with torch.no_grad():
            triton_steps(plan, x)

    def both() -> None:
        triton_steps(plan, x).sum().backward()

    times = interleaved_medians({"forward": synchronised(forward), "forward and backward": synchronised(both)},
                                args.repeats)  # fmt: skip
    # at the least, a forward pass without a graph reads the state once and writes it once
    rate = 2 * x.element_size() * rows * 8 / times["forward"] / 1e9
    peak = {"NVIDIA H200": 4800.0}.get(torch.cuda.get_device_name() if CUDA else "", float("nan"))  # spec sheet
    print(f"\nTriton kernels on the per-pixel state ({args.images:,} images, {rows:,} rows of 8 features, 8 layers)")
    print(f"forward {1e3 * times['forward']:.2f} ms, forward and backward {1e3 * times['forward and backward']:.2f} ms")
    known = f", {100 * rate / peak:.0f} % of the GPU's {peak:,.0f} GB/s" if peak == peak else ""
    print(f"forward: {rate:,.1f} GB/s at the least{known}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="CPU-sized: batches 4 and 16, 2 images' pixels")
    parser.add_argument("--networks", nargs="+", default=NETWORKS)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    args.batches, args.images = ([4, 16], 2) if args.small else ([128, 1024], 2500)
    device = torch.device("cuda" if CUDA else "cpu")
    print(f"torch {torch.__version__}, {torch.cuda.get_device_name() if CUDA else 'CPU'}")
    throughput(args, device)
    no_host_sync(device)
    kernels_equal_autograd(device)
    bandwidth(args, device)


if __name__ == "__main__":
    main()
