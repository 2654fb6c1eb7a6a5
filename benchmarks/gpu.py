"""contham on a GPU: training-step throughput per network, eager, captured and compiled, epoch
times, and the checks that only a GPU can make, side by side in one run (interleaved, medians,
synchronised).

1. Images per second of one training step (forward, cross-entropy, backward, SGD step; random
   inputs of each network's own data) per network at two batch sizes: eager; on CUDA also the
   whole step replayed from one CUDA graph (`contham.experiments.graphs.Captured`, as the
   training loop's ``cuda_graphs`` does it); a case whose warm-up fails is left out with its
   reason; with the per-image cost of the small batch against the large one (1.0: the host does
   not set the pace). Last, on CUDA, the fixed-step networks at the small batch: eager, captured
   and ``torch.compile(mode="reduce-overhead")`` (CUDA graphs of the pieces it traces: the
   backward call is a graph break); last because each compilation takes tens of seconds.
2. Checks that fail loudly (``SystemExit``) when they do not hold:
   - on CUDA, a fixed-step network's training step under
     ``torch.cuda.set_sync_debug_mode("error")`` (no host synchronisation; the CPU path's reads
     are counted by tests/test_training.py), and an adaptive solve of a field with weights
     linear in t synchronising at the loop's checks only (after its first step and one or two
     per interval between node times), never in its field calls;
   - on CUDA, the training loop with ``cuda_graphs=true`` (it raises if a warm-up step
     synchronises) against ``cuda_graphs=false``: per-epoch histories equal to 1e-5 relative,
     two networks, five epochs on the digits (the partial batches' graphs are captured in epoch 4),
     and the H-DNN 2-D protocol with its inner classifier fits (final metrics, 1e-5);
   - the fused blocks' Triton kernels (`contham.solvers.fused_triton`), stored and reversible,
     against step-by-step autograd: 1e-10 in float64 and 1e-5 in float32 (on the CPU through
     Triton's interpreter), and on CUDA the blocks run on them (their shared memory fits);
3. the kernels' effective memory bandwidth on the per-pixel MNIST H-DNN state (8 features, 8
   layers, in its column form; bytes the forward pass must move at the least, over its time), the
   rate of their products on the padded tiles and its FLOP per byte of state moved, and a
   two-layer block's training pass there with the kicks' inputs stored against rebuilt
   (``gradient="reversible"``);
4. the report's conv blocks against 6 ResNet basic blocks (`benchmarks/blocks.py`'s blocks:
   J1, two-layer, two-layer reversible; training step at the small batch, ratio of times), with
   the profile of the ResNet and two-layer steps at width 32 (the operations by device time);
5. the 2-D H-DNN protocol's training step (H1_J1, nf 4, 64 layers, batch 125, Adam, smoothness
   term), eager and, on CUDA, replayed from a graph; with ``--reference`` (a checkout of the
   papers' code, DecodEPFL/HamiltonianNet, patched as docs/hdnn.md lists) the MNIST H-DNN step
   against the papers' ``Net`` and H1 layer (`benchmarks/hdnn.py`'s steps);
6. with ``--root`` (a torchvision root holding MNIST): seconds of one MNIST epoch per network
   through ``RunConfig`` and ``run`` with the defaults (``cuda_graphs=auto``) and with
   ``cuda_graphs=false`` (``--small``: the offline digits instead, without ``--root``);
7. the adaptive networks (the ODENet): the training step at the small batch, eager and with the
   solves' steps compiled (`contham.compile_steps`; ``--small``: by aot_eager), its kernels and
   the share of its time the device is busy; with ``--root`` (``--small``: the digits) two
   epochs with ``compile`` (the first one compiles).

A section that fails (an error, or a check) is reported where it failed and the next one runs,
so that one run measures all that works; the script then exits with status 1 and lists the
failures. ``--only`` runs some sections (by the names in `SECTIONS`), to redo one.

    python benchmarks/gpu.py --root ~/data [--reference ../HamiltonianNet]   # on CUDA, under 5 minutes
    python benchmarks/gpu.py --small         # on the CPU: small batches, the interpreter's checks
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import functools
import json
import os
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import torch

CUDA = torch.cuda.is_available()
if not CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")  # the kernels run on CPU tensors, interpreted

import hdnn  # noqa: E402
from _timing import interleaved_medians, launches  # noqa: E402
from _timing import training_step as forward_backward  # noqa: E402
from blocks import SHAPES, block_models  # noqa: E402

from contham import (  # noqa: E402
    AntisymmetricField,
    Backprop,
    HamiltonianBlock,
    HamiltonianField,
    ODEBlock,
    SymmetricField,
    TwoLayerField,
    compile_steps,
    smoothness,
)
from contham.data import input_shape, load_image_set  # noqa: E402
from contham.experiments import Loop, RunConfig, Settings, run  # noqa: E402
from contham.experiments.checkpoints import seed_everything  # noqa: E402
from contham.experiments.graphs import GRAPHS, WARMUP, Captured, synchronisations  # noqa: E402
from contham.models import build, default_data  # noqa: E402
from contham.models.hdnn import HDNN2d  # noqa: E402
from contham.solvers import RungeKutta, rk  # noqa: E402
from contham.solvers.fused_triton import supports, tiles, triton_steps  # noqa: E402

NETWORKS = ["resnet20", "nominal", "thesis_hamiltonian", "hdnn_mnist", "thesis_resnet2", "thesis_odenet"]
EPOCH_NETWORKS = ["thesis_resnet2", "thesis_hamiltonian", "hdnn_mnist", "thesis_odenet"]


def synchronised(fn):
    def run() -> None:
        fn()
        if CUDA:
            torch.cuda.synchronize()

    return run


ADAPTIVE = {"thesis_odenet"}
"""Networks with an adaptive solve: not captured (its loop reads the host); their steps compile."""


def applies(name: str, mode: str) -> bool:
    """Whether a training step of network ``name`` runs in ``mode``."""
    return mode in ("eager", "compiled steps") if name in ADAPTIVE else mode != "compiled steps"


def training_step(name: str, batch: int, device: torch.device, mode: str, backend: bool | str = True):
    """One SGD training step of network ``name`` on a fixed random batch of its own data: eager,
    replayed from one CUDA graph ("graph"), compiled ("reduce-overhead"), or eager around
    adaptive solves whose steps are compiled with ``backend`` ("compiled steps",
    `contham.compile_steps`)."""
    shape = input_shape(*default_data(name))
    model = build(name).to(device)
    if mode == "compiled steps":
        compile_steps(model, backend)
    x = torch.randn(batch, shape["in_channels"], shape["image_size"], shape["image_size"], device=device)
    labels = torch.randint(0, shape["num_classes"], (batch,), device=device)
    if mode == "graph":  # fused, with the lr on the device, as the training loop makes it for capture
        lr = torch.tensor(1e-3, device=device)
        optimiser = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, fused=True)
    else:
        optimiser = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, foreach=True)

    def step(x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        optimiser.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(model(x), labels)
        loss.backward()
        optimiser.step()
        return loss.detach()

    if mode == "graph":
        captured = Captured(step, GRAPHS[device.type](), f"{name} training step", strict=True)
        return lambda: captured(x, labels)
    if mode == "reduce-overhead":
        return functools.partial(torch.compile(step, mode="reduce-overhead"), x, labels)
    return functools.partial(step, x, labels)


def first_line(error: BaseException) -> str:
    """The first line of an error's message ("" for none)."""
    return next(iter(str(error).splitlines()), "")


def runnable(cases: dict, calls: int) -> dict:
    """The cases that run ``calls`` times without an error (the warm-up: graphs record, compilers
    compile), each alone; a case that fails is left out of the table with the reason printed."""
    kept = {}
    for key, case in cases.items():
        try:
            for _ in range(calls):
                case()
        except Exception as error:  # a compiler or a capture can fail in many ways
            print(f"left out {key}: {type(error).__name__}: {first_line(error)}")
        else:
            kept[key] = case
    return kept


def step_times(
    args: argparse.Namespace, device: torch.device, batches: list[int], modes: list[str], networks: list[str]
) -> dict:
    """Seconds per training step by (network, batch, mode), interleaved medians; the cases that
    fail their warm-up are left out."""
    cases = {
        (name, batch, mode): synchronised(training_step(name, batch, device, mode, args.backend))
        for name in networks
        for batch in batches
        for mode in modes
        if applies(name, mode)
    }
    return interleaved_medians(runnable(cases, WARMUP + 1), args.repeats)


def throughput(args: argparse.Namespace, device: torch.device) -> None:
    modes = ["eager", "graph"] if CUDA else ["eager"]
    small, large = args.batches
    times = step_times(args, device, args.batches, modes, args.networks)
    print(f"\nTraining step, images per second ({device}, median of {args.repeats})")
    print(f"| network | mode | batch {small} | batch {large} | per image, {small} / {large} |")
    print("|---|---|---|---|---|")
    for name in args.networks:
        for mode in modes:
            a, b = times.get((name, small, mode)), times.get((name, large, mode))
            cells = [f"{n / t:,.0f}" if t else "-" for n, t in ((small, a), (large, b))]
            ratio = f"{(a / small) / (b / large):.2f}x" if a and b else "-"
            if a or b:
                print(f"| {name} | {mode} | {cells[0]} | {cells[1]} | {ratio} |")


def adaptive(args: argparse.Namespace, device: torch.device) -> None:
    """The adaptive networks' training step at the small batch, eager and with the solves' steps
    compiled (`contham.compile_steps`: inductor; ``--small``: aot_eager, the same path without
    inductor's compile time), the kernels each step launches and the share of the step's time
    the device is busy; then with ``--root`` (``--small``: the digits) two epochs with
    ``compile`` (the first one compiles)."""
    networks = [name for name in args.networks if name in ADAPTIVE]
    batch, modes = args.batches[0], ["eager", "compiled steps"]
    times = step_times(args, device, [batch], modes, networks)  # its warm-up compiles
    print(f"\nAdaptive networks' training step at batch {batch} (compiled steps: backend {args.backend}), median of")
    print(f"{args.repeats}; kernels and the device's busy time from the profiler, over the step's median time: below")
    print("1, the host sets the pace")
    print("| network | steps | images per second | kernels | device busy | of the step's time |")
    print("|---|---|---|---|---|---|")
    for name in networks:
        for mode in modes:
            if (name, batch, mode) in times:  # compiled at its warm-up: no compilation here
                step = synchronised(training_step(name, batch, device, mode, args.backend))
                step()
                kernels, busy = launches(step)
                t = times[name, batch, mode]
                print(f"| {name} | {mode} | {batch / t:,.0f} | {kernels} | {busy * 1e3:.2f} ms | {busy / t:.2f} |")
    if args.root is None and not args.small:
        print("MNIST epochs with compile: give --root (a torchvision root that holds MNIST)")
        return
    data: dict = {"root": args.root} if args.root else {"dataset": "digits"}
    if args.small:
        data.update(fraction=0.1, test_fraction=0.1)
    source = data.get("dataset", "MNIST")
    print(f"\nEpochs with compile={args.backend} (the first one compiles; {source}): seconds training")
    for model in networks:
        seconds = [entry["seconds"] for entry in epochs(model, data, device, epochs=2, compile=args.backend)]
        print(f"| {model} | {' | '.join(f'{s:.2f} s' for s in seconds)} |")


def compiled(args: argparse.Namespace, device: torch.device) -> None:
    """The captured step against ``torch.compile(mode="reduce-overhead")`` at the small batch (the
    last section: each compilation takes tens of seconds)."""
    if not CUDA:
        print("\ntorch.compile(mode='reduce-overhead'): CUDA only here")
        return
    batch, modes = args.batches[0], ["eager", "graph", "reduce-overhead"]
    networks = [name for name in args.networks if name not in ADAPTIVE]
    times = step_times(args, device, [batch], modes, networks)
    print(f"\nTraining step at batch {batch}, images per second (median of {args.repeats})")
    print(f"| network | {' | '.join(modes)} |")
    print("|---" * (len(modes) + 1) + "|")
    for name in networks:
        cells = [f"{batch / times[name, batch, m]:,.0f}" if (name, batch, m) in times else "-" for m in modes]
        print(f"| {name} | {' | '.join(cells)} |")


def epochs(model: str, data: dict, device: torch.device, **fields) -> list[dict]:
    """The per-epoch history of a run of ``model`` through `RunConfig` and `run`."""
    config = RunConfig(model=model, device=str(device), **data, **fields)
    with tempfile.TemporaryDirectory() as folder:
        run(config, folder, progress=False)
        return json.loads((Path(folder) / "history.json").read_text())


def no_host_sync(device: torch.device) -> None:
    if not CUDA:
        print("\nno host sync in the step: CUDA only here (the CPU path: tests/test_training.py)")
        return
    step = training_step("thesis_hamiltonian", 128, device, "eager")
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
    # an adaptive solve reads the host at its checks only, also with weights linear in t (found on the device)
    field = HamiltonianField(8, "J1", "tanh", n_nodes=4, dt=0.25, time_mode="linear")
    block = ODEBlock(field, 1.0, RungeKutta("dopri5", check_every=100)).to(device)  # more steps than an interval takes
    y = torch.randn(64, 8, device=device)
    block(y)
    torch.cuda.synchronize()
    syncs = [found.rsplit(", in ", 1)[1] for found in synchronisations(lambda: block(y))[1]]
    # the loop's checks only: after the first step, and one or two per interval between node times (step
    # boundaries), none in the field's calls (about 200)
    loop = str(Path(rk.__file__))
    if len(syncs) > 9 or any(not place.startswith(loop) for place in syncs):
        raise SystemExit(f"FAILED: an adaptive solve of a linear-in-t field synchronised {len(syncs)} times, "
                         f"not only at the loop's checks: {syncs}")  # fmt: skip
    print(f"an adaptive solve (dopri5) of a field with weights linear in t: {len(syncs)} host syncs, all at the "
          f"loop's checks ({block.last_stats.nfe_forward} field calls), passed")  # fmt: skip


def digits_loop(model: str, cuda_graphs: bool, device: torch.device) -> Loop:
    """A five-epoch training loop of ``model`` on the digits (11 full batches of 128 and one of 92,
    2 test batches of 100 and one of 97), the lr halved after epochs 2 and 4."""
    preprocessing = "report" if model == "nominal" else default_data(model)[1]
    train_set, test_set = (load_image_set("digits", train=t, preprocessing=preprocessing) for t in (True, False))
    seed_everything(0)
    net = build(model, **input_shape("digits", preprocessing))
    learning = dataclasses.replace(RunConfig(model=model, dataset="digits").learning, batch_size=128,
                                   lr_decay_at=[2, 4], lr_decay=0.5)  # fmt: skip
    settings = Settings(epochs=5, seed=3, device=str(device), cuda_graphs=cuda_graphs)
    seed_everything(3)
    return Loop(net, train_set, test_set, learning, settings, num_classes=10, eval_batch_size=100)


def captured_equals_eager(device: torch.device) -> None:
    if not CUDA:
        print("\ncaptured = eager histories: CUDA only here (the loop's side: tests/test_graphs.py)")
        return
    keys = ("train_loss", "train_accuracy", "test_loss", "test_accuracy")
    for model in ("thesis_hamiltonian", "hdnn_mnist"):  # SGD; Adam with the smoothness penalty and lr decay
        histories = []
        for cuda_graphs in (False, True):
            loop = digits_loop(model, cuda_graphs, device)
            histories.append([loop.epoch(epoch) for epoch in range(1, 6)])
        if loop.train_step.captures != 2 or loop.eval_forward.captures != 2:
            raise SystemExit(f"FAILED: {model}: {loop.train_step.captures} training graphs captured, not 2")
        for eager, captured in zip(*histories):
            gaps = [abs(captured[k] - eager[k]) / max(abs(eager[k]), 1e-12) for k in keys]
            if max(gaps) > 1e-5:
                raise SystemExit(f"FAILED: {model}: captured history differs from eager: {eager} vs {captured}")
        seconds = [sum(e["seconds"] for e in h) for h in histories]
        print(f"captured = eager histories of {model} (5 epochs, 1e-5): passed; "
              f"training {seconds[0]:.2f} s eager, {seconds[1]:.2f} s captured")  # fmt: skip


def inner_fits_captured_equals_eager(device: torch.device) -> None:
    """The 2-D protocol with its inner classifier fits, captured (``cuda_graphs=true``: an error if
    anything keeps it from capture) against eager: the same final metrics to 1e-5."""
    if not CUDA:
        print("captured = eager 2-D protocol with inner fits: CUDA only here (the loop's side: tests/test_graphs.py)")
        return
    results = []
    with tempfile.TemporaryDirectory() as folder:
        for cuda_graphs in (False, True):
            config = RunConfig(model="hdnn_2d", dataset="double_moons", epochs=5, data_size=500, device=str(device),
                               cuda_graphs=cuda_graphs)  # fmt: skip
            results.append(run(config, Path(folder) / str(cuda_graphs), progress=False))
    for key in ("train_loss", "test_loss", "test_accuracy"):
        eager, captured = results[0][key], results[1][key]
        if abs(captured - eager) > 1e-5 * max(abs(eager), 1e-12):
            raise SystemExit(f"FAILED: hdnn_2d with inner fits: captured {key} {captured} vs eager {eager}")
    print("captured = eager 2-D protocol with inner fits (hdnn_2d, 5 epochs, 1e-5): passed")


def blocks_vs_basic_blocks(args: argparse.Namespace, device: torch.device) -> None:
    batch = args.batches[0]
    print(f"\nConv blocks vs 6 ResNet basic blocks, training step, batch {batch} (time / ResNet blocks)")
    print("| width | map | ResNet blocks (ms) | J1 | two-layer | two-layer reversible |")
    print("|---|---|---|---|---|---|")
    for width, size in SHAPES:
        x = torch.randn(batch, width, size, size, device=device)
        steps = {k: synchronised(forward_backward(m.to(device), x)) for k, m in block_models(width).items()}
        t = interleaved_medians(steps, args.repeats)
        r = {k: v / t["resnet"] for k, v in t.items()}
        print(f"| {width} | {size}x{size} | {1e3 * t['resnet']:.2f} | {r['j1']:.2f}x | {r['two_layer']:.2f}x | "
              f"{r['two_layer_rev']:.2f}x |")  # fmt: skip


def block_profiles(args: argparse.Namespace, device: torch.device) -> None:
    """Where the ResNet blocks and the two-layer block spend a training step at width 32."""
    width, size = SHAPES[0]
    x = torch.randn(args.batches[0], width, size, size, device=device)
    for name in ("resnet", "two_layer"):  # where each spends its time: the kernels, by time on the device
        step = synchronised(forward_backward(block_models(width)[name].to(device), x))
        step()
        activities = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA] if CUDA else [])
        with torch.profiler.profile(activities=activities) as profile:
            step()
        sort = "self_cuda_time_total" if CUDA else "self_cpu_time_total"
        print(f"\n{name}, width {width}, {size}x{size}: the operations that took the most time")
        print(profile.key_averages().table(sort_by=sort, row_limit=8))


def hdnn_2d_step(device: torch.device, mode: str):
    """One training step of the 2-D protocol's network on a fixed batch: eager or "graph"."""
    model = HDNN2d(nf=4, n_layers=64, function="H1_J1").to(device)
    x, y = torch.randn(125, 2, device=device), torch.randint(0, 2, (125,), device=device)
    lr = torch.tensor(0.05, device=device) if mode == "graph" else 0.05
    optimiser = torch.optim.Adam(model.parameters(), lr, fused=mode == "graph", capturable=mode == "graph")

    def step(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        optimiser.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss = loss + smoothness(model, 2.5e-4, b_in_reg=True, h_div=False, of="K")
        loss.backward()
        optimiser.step()
        return loss.detach()

    if mode == "graph":
        captured = Captured(step, GRAPHS[device.type](), "2-D training step", strict=True)
        return lambda: captured(x, y)
    return functools.partial(step, x, y)


def hdnn_steps(args: argparse.Namespace, device: torch.device) -> None:
    modes = ["eager", "graph"] if CUDA else ["eager"]
    times = interleaved_medians({m: synchronised(hdnn_2d_step(device, m)) for m in modes}, args.repeats * 20,
                                warmup=WARMUP + 1)  # fmt: skip
    cells = ", ".join(f"{mode} {1e3 * t:.3f} ms" for mode, t in times.items())
    print(f"\n2-D H-DNN training step (H1_J1, nf 4, 64 layers, batch 125, Adam): {cells}")
    if args.reference is None:
        print("MNIST H-DNN vs the papers' code: give --reference (a checkout of DecodEPFL/HamiltonianNet)")
        return
    sys.path.insert(0, str(Path(args.reference).resolve()))
    names = ("contham", "reference Net", "reference H1")
    try:
        runs = {name: synchronised(hdnn.mnist_steps(name, 1, device)) for name in names}
        steps = interleaved_medians(runs, args.repeats * 4, warmup=2)
    except RuntimeError as error:  # the papers' code was written for the CPU
        print(f"the papers' code does not run on {device}: {str(error).splitlines()[0]}")
        return
    line = ", ".join(f"{name} {1e3 * t:.2f} ms ({t / steps['contham']:.2f}x)" for name, t in steps.items())
    print(f"MNIST H-DNN training step (batch 100, 8 layers, H1_J1): {line}")


def epoch_seconds(args: argparse.Namespace, device: torch.device) -> None:
    if args.root is None and not args.small:
        print("\nMNIST epoch seconds: give --root (a torchvision root that holds MNIST)")
        return
    data = {"root": args.root} if args.root else {"dataset": "digits"}
    if args.small and args.root:
        data.update(fraction=0.01, test_fraction=0.01)
    print(f"\nOne epoch through RunConfig + run ({data.get('dataset', 'MNIST')}, {device}): seconds training, total")
    print("| network | cuda_graphs=auto | cuda_graphs=false |")
    print("|---|---|---|")
    for model in args.networks:
        if model not in EPOCH_NETWORKS:
            continue
        cells = []
        for cuda_graphs in ("auto", False):
            start = time.perf_counter()
            (entry,) = epochs(model, data, device, epochs=1, cuda_graphs=cuda_graphs)
            cells.append(f"{entry['seconds']:.2f} s, {time.perf_counter() - start:.2f} s")
        print(f"| {model} | {' | '.join(cells)} |")


def kernel_blocks(dtype: torch.dtype, device: torch.device):
    """H1 (J1, forward Euler), two-layer (Verlet), MS1 (symplectic Euler) and damped MS2 (forward
    Euler) blocks, fused, with step-by-step twins."""
    made = [(HamiltonianField(8, "J1", "tanh", n_nodes=8, dt=0.1), "euler"),
            (TwoLayerField(8, "tanh", width=16, n_nodes=8, dt=0.1), "verlet"),
            (SymmetricField(8, "tanh", n_nodes=8, dt=0.1), "symplectic_euler"),
            (AntisymmetricField(8, "tanh", gamma=0.1, n_nodes=8, dt=0.1), "euler")]  # fmt: skip
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
            plan = fused.schedule.fused
            if not supports(plan, dtype, device):  # on CUDA: the kernels fit the device's shared memory
                raise SystemExit(f"FAILED: the Triton kernels do not run {type(fused.field).__name__} ({dtype})")
            for rebuild in (False, True) if plan.split else (False,):  # stored, and reversible
                outs = []
                kernels = functools.partial(triton_steps, plan, rebuild=rebuild)
                for apply, block in ((kernels, fused), (plain, plain)):
                    xg = x.clone().requires_grad_()
                    y = apply(xg)
                    outs.append((y, *torch.autograd.grad(y.square().sum(), (xg, *block.field.parameters()))))
                for a, b in zip(*outs):
                    if not torch.allclose(a, b, rtol=tol, atol=tol):
                        gap = float((a - b).abs().max())
                        raise SystemExit(f"FAILED: Triton kernels differ from autograd by {gap:.1e} ({dtype})")
    print("Triton kernels = step-by-step autograd (1e-10 float64, 1e-5 float32; stored and reversible): passed")


def peak_bandwidth() -> float:
    """The GPU's peak memory bandwidth in GB/s from its properties: two transfers per memory clock
    (double data rate) over the bus's width; NaN on the CPU or where torch does not report them."""
    properties = torch.cuda.get_device_properties() if CUDA else None
    clock_khz, bus_bits = (getattr(properties, name, 0) for name in ("memory_clock_rate", "memory_bus_width"))
    return 2 * clock_khz * 1e3 * bus_bits / 8 / 1e9 if clock_khz and bus_bits else float("nan")


def bandwidth(args: argparse.Namespace, device: torch.device) -> None:
    field = HamiltonianField(8, "J1", "tanh", n_nodes=8, dt=0.1).to(device)
    block = HamiltonianBlock(field, "euler")
    plan = block.schedule.fused
    rows = args.rows
    # in the column form the MNIST H-DNN hands over (one feature after another)
    x = torch.randn(8, rows, device=device).t().requires_grad_()

    def forward() -> None:
        with torch.no_grad():
            triton_steps(plan, x)

    def both() -> None:
        triton_steps(plan, x).sum().backward()

    times = interleaved_medians({"forward": synchronised(forward), "forward and backward": synchronised(both)},
                                args.repeats)  # fmt: skip
    # at the least, a forward pass without a graph reads the state once and writes it once
    moved = 2 * x.element_size() * rows * 8
    rate = moved / times["forward"] / 1e9
    peak = peak_bandwidth()
    print(f"\nTriton kernels on the per-pixel state ({rows / 784:g} images, {rows:,} rows of 8 features, 8 layers)")
    print(f"forward {1e3 * times['forward']:.2f} ms, forward and backward {1e3 * times['forward and backward']:.2f} ms")
    known = f", {100 * rate / peak:.0f} % of the GPU's {peak:,.0f} GB/s" if peak == peak else ""
    print(f"forward: {rate:,.1f} GB/s at the least{known}")
    # the kernels' products on the padded tiles: per row and kick, K v and M^T w, 2 W F multiply-adds each
    F, W = tiles(plan)
    flops = 4 * W * F * len(plan.kicks) * rows
    print(f"forward: {flops / times['forward'] / 1e9:,.0f} GFLOP/s of products on the padded {W} x {F} tiles "
          f"({flops / moved:.0f} FLOP per byte of state moved)")  # fmt: skip
    split = HamiltonianBlock(TwoLayerField(8, "tanh", n_nodes=8, dt=0.1).to(device)).schedule.fused

    def backward(rebuild: bool):
        return synchronised(lambda: triton_steps(split, x, rebuild=rebuild).sum().backward())

    times = interleaved_medians({"stored": backward(False), "rebuilt": backward(True)}, args.repeats)
    print(f"two-layer (symplectic Euler), forward and backward: {1e3 * times['stored']:.2f} ms with the kicks' "
          f"inputs stored, {1e3 * times['rebuilt']:.2f} ms rebuilt (gradient='reversible': "
          f"{times['rebuilt'] / times['stored']:.2f}x)")  # fmt: skip


def no_args(section: Callable[[torch.device], None]) -> Callable[[argparse.Namespace, torch.device], None]:
    return lambda _, device: section(device)


SECTIONS: dict[str, Callable[[argparse.Namespace, torch.device], None]] = {
    "throughput": throughput,
    "sync": no_args(no_host_sync),
    "captured": no_args(captured_equals_eager),
    "inner-fits": no_args(inner_fits_captured_equals_eager),
    "kernels": no_args(kernels_equal_autograd),
    "bandwidth": bandwidth,
    "blocks": blocks_vs_basic_blocks,
    "profiles": block_profiles,
    "hdnn": hdnn_steps,
    "epochs": epoch_seconds,
    "adaptive": adaptive,
    "compiled": compiled,
}
"""The script's sections, in the order they run (``--only`` picks some)."""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="CPU-sized: batches 4 and 16, 49 pixels")
    parser.add_argument("--networks", nargs="+", default=NETWORKS)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--root", help="a torchvision root that holds MNIST, for the epoch times")
    parser.add_argument("--reference", help="a checkout of the papers' code (DecodEPFL/HamiltonianNet)")
    parser.add_argument("--only", nargs="+", choices=list(SECTIONS), default=list(SECTIONS),
                        help="the sections to run (all by default)")  # fmt: skip
    args = parser.parse_args()
    if args.reference and not (Path(args.reference) / "examples" / "run_MNIST.py").is_file():
        parser.error(f"--reference {args.reference} holds no examples/run_MNIST.py (DecodEPFL/HamiltonianNet's)")
    # the per-pixel state's rows: 2,500 MNIST images; on the CPU the interpreter runs each block of rows in turn
    args.batches, args.rows = ([4, 16], 49) if args.small else ([128, 1024], 2500 * 784)
    args.backend = "aot_eager" if args.small else True  # compiled steps' backend: True, torch.compile's default
    device = torch.device("cuda" if CUDA else "cpu")
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]  # each line out as it comes (into a pipe)
    print(f"torch {torch.__version__}, {torch.cuda.get_device_name() if CUDA else 'CPU'}")
    failures = run_sections({name: functools.partial(SECTIONS[name], args, device) for name in args.only})
    if failures:
        raise SystemExit("FAILED:\n" + "\n".join(failures))


def run_sections(sections: dict[str, Callable[[], None]]) -> list[str]:
    """Run each section in turn, with its time; one that fails (an error, or a check's
    ``SystemExit``) is reported and the next runs, so that one run measures all that works.
    Returns the failures, a line each."""
    failures = []
    for name, section in sections.items():
        start = time.perf_counter()
        try:
            section()
        except (Exception, SystemExit) as error:
            if not isinstance(error, SystemExit):
                traceback.print_exc()
            failures.append(f"{name}: {first_line(error) or type(error).__name__}")
            print(f"\n{failures[-1]}")
        print(f"[{name}: {time.perf_counter() - start:.1f} s]", flush=True)
    return failures


if __name__ == "__main__":
    main()
