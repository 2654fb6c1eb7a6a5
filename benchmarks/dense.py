"""Benchmark 2: dense Hamiltonian nets (the 2-D protocol) vs a straightforward per-layer loop.

nf = 4 features, 64 layers, h = 0.1, batch 125, one training step (forward + backward of the
sum). Five contham blocks:

* H1: J1, tanh, forward Euler;
* the two-layer field with symplectic Euler;
* the separable field with symplectic Euler;
* MS1 (Haber & Ruthotto's symmetric field) with symplectic Euler, z first;
* MS2 (their antisymmetric field, no damping) with forward Euler.

Each is compared with the same equations written as a plain loop over one ``nn.Linear`` per layer
and weight, with J as an explicit matrix (what research code typically does). contham runs both
with its default fused path (:mod:`contham.solvers.fused`) and with ``Backprop(higher_order=True)``
(one autograd node per operation); split blocks also with ``gradient="reversible"`` (the fused path
rebuilding the states kick by kick, nothing stored). All start from the same weights, and their
outputs are checked equal (float32 rounding) before timing. Interleaved, median of --repeats.

    python benchmarks/dense.py [--nf 4] [--layers 64] [--batch 125]

``--nf 8 --layers 8 --batch 78400`` is the per-pixel state of the MNIST H-DNN (a batch of 100
images of 28 x 28 pixels).
"""

from __future__ import annotations

import argparse

import torch
from _timing import interleaved_medians, training_step
from torch import nn

from contham import (
    AntisymmetricField,
    Backprop,
    HamiltonianBlock,
    HamiltonianField,
    SeparableField,
    SymmetricField,
    TwoLayerField,
)
from contham.fields import j1_matrix

H = 0.1


def linear_layers(weights: torch.Tensor, biases: torch.Tensor) -> nn.ModuleList:
    """One ``nn.Linear`` per layer j with weight ``weights[j]`` and bias ``biases[j]``."""
    layers = nn.ModuleList(nn.Linear(w.shape[1], w.shape[0]) for w in weights)
    with torch.no_grad():
        for layer, w, b in zip(layers, weights, biases):
            layer.weight.copy_(w), layer.bias.copy_(b)
    return layers


class LoopH1(nn.Module):
    """y <- y + h J K_j^T tanh(K_j y + b_j), one nn.Linear per layer."""

    def __init__(self, block: HamiltonianBlock):
        super().__init__()
        self.layers = linear_layers(block.field.K, block.field.b)
        self.register_buffer("J", j1_matrix(block.field.features))

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            y = y + H * (torch.tanh(layer(y)) @ layer.weight) @ self.J.T
        return y


class LoopSplit(nn.Module):
    """Symplectic Euler on halves: u <- u + s_u h K_u^T tanh(K_u v + b_u), per-layer nn.Linear."""

    def __init__(self, block: HamiltonianBlock, names: tuple[str, str, str, str], order: str):
        super().__init__()
        k_y, b_y, k_z, b_z = names  # weights driving y (read z) and driving z (read y)
        self.order, self.half = order, block.field.features // 2
        field = block.field
        self.drive_y = linear_layers(getattr(field, k_y), getattr(field, b_y))
        self.drive_z = linear_layers(getattr(field, k_z), getattr(field, b_z))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y, z = x[:, : self.half], x[:, self.half :]
        for ly, lz in zip(self.drive_y, self.drive_z):
            if self.order == "y":
                y = y + H * torch.tanh(ly(z)) @ ly.weight
                z = z - H * torch.tanh(lz(y)) @ lz.weight
            else:
                z = z - H * torch.tanh(lz(y)) @ lz.weight
                y = y + H * torch.tanh(ly(z)) @ ly.weight
        return torch.cat((y, z), dim=1)


class LoopMS1(nn.Module):
    """z <- z + h tanh(-K0^T y + b_z), then y <- y + h tanh(K0 z + b_y); nn.Linear (K0, b_y) per layer."""

    def __init__(self, block: HamiltonianBlock):
        super().__init__()
        self.half = block.field.features // 2
        self.layers = linear_layers(block.field.K0, block.field.b[:, : self.half])
        self.b_z = nn.Parameter(block.field.b[:, self.half :].detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y, z = x[:, : self.half], x[:, self.half :]
        for layer, b_z in zip(self.layers, self.b_z):
            z = z + H * torch.tanh(b_z - y @ layer.weight)
            y = y + H * torch.tanh(layer(z))
        return torch.cat((y, z), dim=1)


class LoopMS2(nn.Module):
    """y <- y + h tanh((W - W^T) y + b), one nn.Linear (W, b) per layer."""

    def __init__(self, block: HamiltonianBlock):
        super().__init__()
        self.layers = linear_layers(block.field.W, block.field.b)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            y = y + H * torch.tanh(layer(y) - y @ layer.weight)
        return y


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nf", type=int, default=4, help="features (even)")
    parser.add_argument("--layers", type=int, default=64)
    parser.add_argument("--batch", type=int, default=125)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    torch.manual_seed(0)
    layout = dict(n_nodes=args.layers, dt=H)
    blocks = {
        "H1 (J1, Euler)": HamiltonianBlock(HamiltonianField(args.nf, "J1", "tanh", **layout)),
        "two-layer (SE)": HamiltonianBlock(TwoLayerField(args.nf, "tanh", **layout)),
        "separable (SE)": HamiltonianBlock(SeparableField(args.nf, "tanh", **layout)),
        "MS1 (SE)": HamiltonianBlock(SymmetricField(args.nf, "tanh", **layout)),
        "MS2 (Euler)": HamiltonianBlock(AntisymmetricField(args.nf, "tanh", **layout)),
    }
    step_by_step = Backprop(higher_order=True)
    unfused = {
        name: HamiltonianBlock(block.field, block.solver, gradient=step_by_step) for name, block in blocks.items()
    }
    loops = {
        "H1 (J1, Euler)": LoopH1(blocks["H1 (J1, Euler)"]),
        "two-layer (SE)": LoopSplit(blocks["two-layer (SE)"], ("K1", "b1", "K2", "b2"), "y"),
        "separable (SE)": LoopSplit(blocks["separable (SE)"], ("Kq", "bq", "Kp", "bp"), "z"),
        "MS1 (SE)": LoopMS1(blocks["MS1 (SE)"]),
        "MS2 (Euler)": LoopMS2(blocks["MS2 (Euler)"]),
    }
    x = torch.randn(args.batch, args.nf)
    print(
        f"torch {torch.__version__}, nf {args.nf}, {args.layers} layers, batch {args.batch}, median of {args.repeats}"
    )
    print("| network | loop (ms) | contham step by step (ms) | contham (ms) | loop / step by step | loop / contham | "
          "contham reversible / contham |")  # fmt: skip
    print("|---|---|---|---|---|---|---|")
    for name, block in blocks.items():
        # split blocks: gradient="reversible" on the fused path (the states rebuilt kick by kick)
        split = block.field.is_split
        reversible = HamiltonianBlock(block.field, block.solver, gradient="reversible") if split else None
        for candidate in (block, unfused[name], reversible):
            if candidate is not None:
                torch.testing.assert_close(candidate(x), loops[name](x), rtol=1e-4, atol=1e-5)
        steps = {"loop": loops[name], "unfused": unfused[name], "fused": block, "reversible": reversible}
        t = interleaved_medians({k: training_step(m, x) for k, m in steps.items() if m is not None}, args.repeats)
        ms = " | ".join(f"{1e3 * t[k]:.2f}" for k in ("loop", "unfused", "fused"))
        ratio = f"{t['reversible'] / t['fused']:.2f}x" if "reversible" in t else "-"
        print(f"| {name} | {ms} | {t['loop'] / t['unfused']:.2f}x | {t['loop'] / t['fused']:.2f}x | {ratio} |")


if __name__ == "__main__":
    main()
