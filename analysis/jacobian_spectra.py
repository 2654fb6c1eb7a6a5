"""Jacobian spectra in the complex plane: Hamiltonian fields vs a ResNet block vs the ODENet field.

Every field acts on one 8-channel 6x6 state (n = 288, dense Jacobians), at initialisation, with
random biases and a random state:

* J1 and J2 Hamiltonian fields ``J K^T sigma(K y + b)`` (3x3 conv K; tanh and ReLU);
* the two-layer Hamiltonian field of Chang et al.;
* the residual branch F of the thesis's pre-activation block (``y + F(y)``);
* the thesis's ODENet field.

The Hamiltonian spectra lie on the imaginary axis: ``J K^T D K`` with D >= 0 diagonal is similar
to a skew-symmetric matrix. The others spread into both half-planes. The script writes
jacobian_spectra.png and jacobian_spectra.csv (each eigenvalue, plus the max |real part| per field)
to --out, in under a minute on 2 CPU cores.

    python analysis/jacobian_spectra.py [--out analysis/out]
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure

from contham import HamiltonianField, ODENetField, TwoLayerField
from contham.analysis import eigenvalues, field_map
from contham.models.thesis import PreActBlock

CHANNELS, SIZE = 8, 6


def fields() -> dict:
    """name -> y -> F(y); Hamiltonian biases drawn from N(0, 0.25) so that sigma' varies."""
    hamiltonian = {
        "J1, tanh": HamiltonianField(CHANNELS, "J1", "tanh", kernel_size=3),
        "J2, ReLU": HamiltonianField(CHANNELS, "J2", "relu", kernel_size=3),
        "two-layer, tanh": TwoLayerField(CHANNELS, "tanh", kernel_size=3),
    }
    maps = {}
    for name, field in hamiltonian.items():
        field.double()
        with torch.no_grad():
            for bias in field.bias_names:
                getattr(field, bias).normal_(0.0, 0.5)
        maps[name] = field_map(field)
    residual = PreActBlock(CHANNELS).double()
    maps["ResNet block branch"] = lambda y: residual(y) - y
    maps["ODENet field"] = field_map(ODENetField(CHANNELS).double(), 0.5)
    return maps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="analysis/out")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    y = torch.randn(1, CHANNELS, SIZE, SIZE, dtype=torch.float64)
    spectra = {}
    for name, fn in fields().items():
        spectra[name] = eigenvalues(fn, y)
        values = spectra[name]
        print(f"{name:22s} max |Re| = {np.abs(values.real).max():.3e}, max |lambda| = {np.abs(values).max():.3f}")
    with open(out / "jacobian_spectra.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["field", "real", "imag"])
        for name, values in spectra.items():
            writer.writerows([name, v.real, v.imag] for v in values)
    fig = Figure(figsize=(4 * len(spectra), 4))
    axes = fig.subplots(1, len(spectra))
    for ax, (name, values) in zip(axes, spectra.items()):
        ax.scatter(values.real, values.imag, s=6)
        ax.axvline(0.0, color="k", lw=0.6)
        ax.set_title(f"{name}\nmax |Re| = {np.abs(values.real).max():.1e}", fontsize=9)
        ax.set_xlabel("Re")
        bound = 1.05 * np.abs(values).max()
        ax.set_xlim(-bound, bound)
        ax.set_ylim(-bound, bound)
        ax.set_aspect("equal")
    axes[0].set_ylabel("Im")
    fig.tight_layout()
    fig.savefig(out / "jacobian_spectra.png", dpi=110)
    print(f"written: {out / 'jacobian_spectra.png'}, {out / 'jacobian_spectra.csv'}")


if __name__ == "__main__":
    main()
