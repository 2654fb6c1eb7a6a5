"""A stability analysis of Hamiltonian blocks: the three properties the H-DNN papers prove.

1. The Jacobian of a Hamiltonian field has its eigenvalues on the imaginary axis (marginal
   stability of the forward flow): largest |real part| of the eigenvalues of dF/dy.
2. With a symplectic step, every backward sensitivity dy_N/dy_l is symplectic, so its spectral
   norm is >= 1 at every depth l: gradients cannot vanish.
3. Energy: along a long trajectory of a time-invariant two-layer field, Verlet keeps H bounded
   where forward Euler drifts.

    python examples/stability.py [--depth 64] [--features 8]
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

import contham
from contham import analysis


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--depth", type=int, default=64)
    parser.add_argument("--features", type=int, default=8)
    parser.add_argument("--steps", type=int, default=2000, help="steps of the energy run")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    n, depth = args.features, args.depth
    y = torch.randn(1, n, dtype=torch.float64)

    # 1. eigenvalues of the field's Jacobian
    field = contham.HamiltonianField(n, "J1", "tanh").double()
    eigs = analysis.eigenvalues(analysis.field_map(field), y)
    print(f"1. H1-J1 field: max |Re lambda(dF/dy)| = {np.abs(eigs.real).max():.1e} (eigenvalues on the imaginary axis)")

    # 2. exact sensitivities dy_N/dy_l of every layer l, and their spectral norms
    block = contham.HamiltonianBlock(contham.TwoLayerField(n, "tanh", n_nodes=depth, dt=0.1).double())
    sens = analysis.sensitivities(block, y)  # (depth + 1, n, n)
    norms = torch.linalg.matrix_norm(sens[:-1], ord=2)  # l = 0 .. N-1 (l = N is the identity)
    print(f"2. two-layer block, symplectic Euler, {depth} layers: min_l ||dy_N/dy_l|| = {norms.min():.3f} (>= 1)")

    # 3. energy over a long run of a time-invariant field
    two_layer = contham.TwoLayerField(n, "tanh").double()
    times = [0.05 * k for k in range(args.steps + 1)]
    drift = {}
    for solver in ("verlet", "euler"):
        states = contham.integrate(two_layer, y, times, solver).ys
        drift[solver] = float(np.abs(analysis.energy_drift(two_layer, times, states)).max())
    print(
        f"3. max |H - H0| over {args.steps} steps of h = 0.05: Verlet {drift['verlet']:.1e}, Euler {drift['euler']:.1e}"
    )
    return {"max_real": float(np.abs(eigs.real).max()), "min_norm": float(norms.min()), **drift}


if __name__ == "__main__":
    main()
