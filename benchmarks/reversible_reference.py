"""contham's reversible Runge-Kutta scheme against McCallum & Foster's own code.

The same problem goes through ``gradient="reversible"`` and through the fixed-step ``Reversible``
solver of sammccallum/reversible (JAX, the code of "Efficient, accurate and stable gradients for
neural ODEs"), run in a Python that has jax and equinox: a time-dependent tanh network field
``W2 tanh(W1 y + b1 + t c) + b2`` (4 states, 16 hidden units, float64), y0, steps of 0.05 on
[0, 1], coupling 0.999, the loss ``sum w y(1)^2``. For each of their steps (Euler, Midpoint,
RK4, Dopri5) it prints the largest relative difference of the final state and of the gradients
with respect to y0 and each weight, and exits with 1 if any exceeds 1e-12. Their Dopri5 step
takes the Dormand-Prince 4th-order embedded weights (with the seventh stage) as its solution, not
the 5th-order ones: contham runs that method as a `Tableau` of the same stages.

    python benchmarks/reversible_reference.py --reference <sammccallum/reversible checkout> --python <python>
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import nn

from contham import integrate
from contham.gradients import Reversible
from contham.solvers import RungeKutta
from contham.solvers.tableaus import DOPRI5, Tableau

WEIGHTS = ("W1", "b1", "c", "W2", "b2")
TOLERANCE = 1e-12

# Dormand & Prince's stages, with their 4th-order weights as the solution (their Dopri5 step)
DOPRI5_ORDER_4 = Tableau(
    "dopri5, 4th-order weights",
    4,
    DOPRI5.c,
    DOPRI5.a,
    (5179 / 57600, 0.0, 7571 / 16695, 393 / 640, -92097 / 339200, 187 / 2100, 1 / 40),
)
METHODS = {"Euler": "euler", "Midpoint": "midpoint", "RK4": "rk4", "Dopri5": DOPRI5_ORDER_4}

# run in the Python given by --python, with the reference checkout on its path
THEIRS = """
import sys
import numpy as np
import jax
jax.config.update("jax_enable_x64", True)
import jax.numpy as jnp
from reversible import solver_step
from reversible.reversible_solver import Reversible
from reversible.vector_field import AbstractVectorField

p = np.load(sys.argv[1])

class Field(AbstractVectorField):
    W1: jnp.ndarray
    b1: jnp.ndarray
    c: jnp.ndarray
    W2: jnp.ndarray
    b2: jnp.ndarray

    def __call__(self, t, y):
        return self.W2 @ jnp.tanh(self.W1 @ y + self.b1 + t * self.c) + self.b2

field = Field(*(jnp.asarray(p[k]) for k in ("W1", "b1", "c", "W2", "b2")))
y0, w = jnp.asarray(p["y0"]), jnp.asarray(p["w"])
out = {}
for step in sys.argv[3:]:
    solver = Reversible(l=float(p["l"]), solver=getattr(solver_step, step)())
    final = lambda f, y: solver.solve_forward(f, y, float(p["h"]), float(p["T"]))
    g_field, g_y0 = jax.grad(lambda f, y: jnp.sum(w * final(f, y) ** 2), argnums=(0, 1))(field, y0)
    out[step + "/y"] = np.asarray(final(field, y0))
    out[step + "/y0"] = np.asarray(g_y0)
    for k in ("W1", "b1", "c", "W2", "b2"):
        out[step + "/" + k] = np.asarray(getattr(g_field, k))
np.savez(sys.argv[2], **out)
print("jax", jax.__version__)
"""


class Field(nn.Module):
    """``W2 tanh(W1 y + b1 + t c) + b2``, as the reference side writes it."""

    def __init__(self, problem: dict[str, np.ndarray]):
        super().__init__()
        for k in WEIGHTS:
            setattr(self, k, nn.Parameter(torch.tensor(problem[k], dtype=torch.float64)))

    def forward(self, t: float | torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.W2 @ torch.tanh(self.W1 @ y + self.b1 + t * self.c) + self.b2


def problem() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    d, m = 4, 16
    return {
        "W1": rng.normal(size=(m, d)) / 2,
        "b1": rng.normal(size=m),
        "c": rng.normal(size=m),
        "W2": rng.normal(size=(d, m)) / 4,
        "b2": rng.normal(size=d) / 4,
        "y0": rng.normal(size=d),
        "w": rng.uniform(size=d),
        "h": np.array(0.05),
        "T": np.array(1.0),
        "l": np.array(0.999),
    }


def ours(p: dict[str, np.ndarray], method: str | Tableau) -> dict[str, np.ndarray]:
    """The final state and the gradients by contham's reversible scheme."""
    field = Field(p)
    y0 = torch.tensor(p["y0"], dtype=torch.float64, requires_grad=True)
    solver, gradient = RungeKutta(method), Reversible(coupling=float(p["l"]))
    y = integrate(field, y0, [0.0, float(p["T"])], solver, step_size=float(p["h"]), gradient=gradient).y
    grads = torch.autograd.grad((torch.tensor(p["w"]) * y**2).sum(), [y0, *field.parameters()])
    return {"y": y.detach().numpy(), **{k: g.numpy() for k, g in zip(("y0", *WEIGHTS), grads)}}


def theirs(p: dict[str, np.ndarray], reference: Path, python: str) -> dict[str, np.ndarray]:
    """The same from the reference code, run in ``python``."""
    with tempfile.TemporaryDirectory() as tmp:
        problem_file, result_file, program = Path(tmp, "problem.npz"), Path(tmp, "theirs.npz"), Path(tmp, "theirs.py")
        np.savez(problem_file, **p)
        program.write_text(THEIRS)
        env = {**os.environ, "PYTHONPATH": str(reference), "JAX_PLATFORMS": "cpu"}
        run = [python, str(program), str(problem_file), str(result_file), *METHODS]
        done = subprocess.run(run, env=env, capture_output=True, text=True)
        if done.returncode != 0:
            sys.exit(f"the reference side failed (--python {python}: it needs jax and equinox):\n{done.stderr}")
        print(done.stdout.strip())
        with np.load(result_file) as results:
            return dict(results)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference", type=Path, required=True, help="a checkout of sammccallum/reversible")
    parser.add_argument("--python", required=True, help="a Python with jax and equinox installed")
    args = parser.parse_args()
    if not (args.reference / "reversible" / "reversible_solver.py").is_file():
        parser.error(f"--reference {args.reference} holds no reversible/reversible_solver.py")
    p = problem()
    reference = theirs(p, args.reference, args.python)
    print(f"torch {torch.__version__}; steps of {float(p['h'])} on [0, {float(p['T'])}], coupling {float(p['l'])}")
    print("| their step | y(1) | dL/dy0 | " + " | ".join(f"dL/d{k}" for k in WEIGHTS) + " |")
    print("|---|" + "---|" * (2 + len(WEIGHTS)))
    worst = 0.0
    for step, method in METHODS.items():
        mine = ours(p, method)
        gaps = [float(np.abs(v - reference[f"{step}/{k}"]).max() / np.abs(reference[f"{step}/{k}"]).max())
                for k, v in mine.items()]  # fmt: skip
        worst = max(worst, *gaps)
        print(f"| {step} | " + " | ".join(f"{g:.1e}" for g in gaps) + " |")
    print(f"largest relative difference {worst:.1e} (at most {TOLERANCE:g} required)")
    if worst > TOLERANCE:
        sys.exit(1)


if __name__ == "__main__":
    main()
