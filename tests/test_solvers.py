"""Solvers: empirical convergence order, energy behaviour, symplecticity, field checks."""

import numpy as np
import pytest
import scipy.linalg
import torch

import contham
from contham.fields import HamiltonianField, SeparableField, SymmetricField, TwoLayerField, j1_matrix
from contham.solvers import SOLVERS

D = torch.float64
T = 1.0


def linear_hamiltonian(split: bool):
    """y' = J S y with S = K^T K (identity sigma, no bias) and its exact flow by expm."""
    if split:
        f = TwoLayerField(4, "identity").double()
        K1, K2 = f.K1[0], f.K2[0]
        Z = torch.zeros(2, 2, dtype=D)
        A = torch.cat((torch.cat((Z, K1.T @ K1), 1), torch.cat((-K2.T @ K2, Z), 1)), 0)
    else:
        f = HamiltonianField(4, "J1", "identity").double()
        A = j1_matrix(4).double() @ f.K[0].T @ f.K[0]
    return f, A


def fitted_order(solver_name, split, first=None):
    f, A = linear_hamiltonian(split)
    y0 = torch.randn(3, 4, dtype=D)
    exact = y0 @ torch.from_numpy(scipy.linalg.expm(A.detach().numpy() * T)).T
    solver = SOLVERS[solver_name]() if first is None else SOLVERS[solver_name](first=first)
    ns = [8, 16, 32, 64] if solver_name == "rk4" else [32, 64, 128, 256]
    errors = []
    with torch.no_grad():
        for n in ns:
            y = contham.integrate(f, y0, [0.0, T], solver, step_size=T / n).y
            errors.append(float((y - exact).abs().max()))
    slope = np.polyfit(np.log([T / n for n in ns]), np.log(errors), 1)[0]
    return slope, solver


@pytest.mark.parametrize(
    "name,split,first",
    [
        ("euler", False, None),
        ("midpoint", False, None),
        ("rk4", False, None),
        ("euler", True, None),
        ("rk4", True, None),
        ("symplectic_euler", True, "y"),
        ("symplectic_euler", True, "z"),
        ("verlet", True, "y"),
        ("verlet", True, "z"),
    ],
)
def test_convergence_order(name, split, first):
    slope, solver = fitted_order(name, split, first)
    assert abs(slope - solver.order) < 0.3, f"{name}: fitted order {slope:.2f}, declared {solver.order}"


def energy_trace(solver, n_steps=10_000, h=0.05):
    torch.manual_seed(1)
    f = TwoLayerField(4, "tanh").double()
    y0 = torch.randn(1, 4, dtype=D)
    ts = torch.linspace(0, n_steps * h, 201, dtype=D)
    with torch.no_grad():
        ys = contham.integrate(f, y0, ts, solver, step_size=h).ys
        H = torch.stack([f.energy(0.0, y)[0] for y in ys])
    return (H - H[0]).abs()


def test_symplectic_solvers_keep_energy_bounded_euler_drifts():
    euler = energy_trace("euler")
    for name in ("symplectic_euler", "verlet"):
        drift = energy_trace(name)
        # bounded: the error over the last half is no larger than over the first half (no secular growth)
        assert drift[100:].max() <= 1.5 * drift[:101].max() + 1e-12, name
        assert drift.max() < 0.05 * euler[-1], name
    # explicit Euler: energy grows along the run
    assert euler[-1] > 2 * euler[50] > 0
    assert euler[-1] > 0.1


def one_step_map(field, solver, t=0.0, h=0.1):
    x0 = torch.randn(field.features, dtype=D)
    step = lambda x: solver.step(field, t, h, x[None])[0]  # noqa: E731
    return torch.autograd.functional.jacobian(step, x0)


@pytest.mark.parametrize("solver", ["symplectic_euler", "verlet"])
@pytest.mark.parametrize("cls", [TwoLayerField, SeparableField])
@pytest.mark.parametrize("mode", ["piecewise", "linear"])
def test_split_steps_are_symplectic(solver, cls, mode):
    f = cls(6, "tanh", n_nodes=3, dt=0.1, time_mode=mode).double()
    for name in f.node_names:
        torch.nn.init.normal_(getattr(f, name))
    Phi = one_step_map(f, contham.get_solver(solver), t=0.05)
    J = f.J.J
    assert torch.allclose(Phi.T @ J @ Phi, J, atol=1e-10)


def test_euler_step_is_not_symplectic():
    f = TwoLayerField(6, "tanh").double()
    Phi = one_step_map(f, contham.get_solver("euler"), h=0.3)
    J = f.J.J
    assert (Phi.T @ J @ Phi - J).abs().max() > 1e-4


@pytest.mark.parametrize("J", ["J1", "J2"])
@pytest.mark.parametrize("ks", [None, 3])
def test_hamiltonian_jacobian_spectrum_is_imaginary(J, ks):
    f = HamiltonianField(6, J, "tanh", kernel_size=ks).double()
    torch.nn.init.normal_(f.b)
    shape = (6,) if ks is None else (6, 3, 3)
    y = torch.randn(*shape, dtype=D)
    jac = torch.autograd.functional.jacobian(lambda x: f(0.0, x[None])[0], y).reshape(y.numel(), y.numel())
    eig = np.linalg.eigvals(jac.numpy())
    assert np.abs(eig.real).max() < 1e-8
    assert np.abs(eig.imag).max() > 1e-3


def test_split_solver_needs_split_field():
    with pytest.raises(ValueError, match="solver='verlet'.*split field"):
        contham.integrate(HamiltonianField(4), torch.randn(2, 4), [0, 1], "verlet")


def test_solver_first_follows_field():
    # MS1 updates z first (Haber & Ruthotto); the solver's `first` overrides it.
    f = SymmetricField(4, "tanh").double()
    torch.nn.init.normal_(f.b)
    x = torch.randn(2, 4, dtype=D)
    y, z = x[:, :2], x[:, 2:]
    z1 = z + 0.1 * f.dz(0.0, y)
    y1 = y + 0.1 * f.dy(0.0, z1)
    step = contham.solvers.SymplecticEuler()
    assert torch.allclose(step.step(f, 0.0, 0.1, x), torch.cat((y1, z1), 1))
    y1 = y + 0.1 * f.dy(0.0, z)
    z1 = z + 0.1 * f.dz(0.0, y1)
    assert torch.allclose(contham.solvers.SymplecticEuler("y").step(f, 0.0, 0.1, x), torch.cat((y1, z1), 1))


@pytest.mark.parametrize("gradient", ["backprop", "reversible"])
def test_split_steps_join_the_halves_only_at_the_outputs(monkeypatch, gradient):
    # the halves are carried from step to step: one join per returned state, none per step
    field = TwoLayerField(4, "tanh", kernel_size=3, n_nodes=6, dt=0.1)
    joins = []
    merge = TwoLayerField.merge
    monkeypatch.setattr(TwoLayerField, "merge", staticmethod(lambda y, z: joins.append(1) or merge(y, z)))
    block = contham.HamiltonianBlock(field, gradient=gradient)
    x = torch.randn(2, 4, 5, 5, requires_grad=True)
    out = block(x)
    assert len(joins) == 1
    out.sum().backward()
    assert len(joins) == 1 + (gradient == "reversible")  # the reversible backward joins the input's gradient
    assert len(block.trajectory(x.detach())) == 7 and len(joins) == 1 + (gradient == "reversible") + 6
