"""Stability analysis on cases with known answers."""

import numpy as np
import pytest
import torch
from torch import nn

from contham import AntisymmetricField, HamiltonianBlock, HamiltonianField, TwoLayerField
from contham.analysis import (
    GradientNorms,
    eigenvalues,
    energy_drift,
    field_map,
    jacobian,
    reversibility_error,
    sensitivities,
    sensitivity_norms,
    symplecticity_defect,
    top_eigenvalues,
)
from contham.fields import j1_matrix

D = torch.float64


def test_linear_field_spectrum_is_j_ktk_and_imaginary():
    field = HamiltonianField(4, "J1", "identity").double()
    y = torch.randn(1, 4, dtype=D)
    K = field.K[0].detach()
    expected = np.linalg.eigvals((j1_matrix(4).double() @ K.T @ K).numpy())
    got = eigenvalues(field_map(field), y)
    np.testing.assert_allclose(np.sort_complex(got), np.sort_complex(expected), atol=1e-12)
    assert np.abs(got.real).max() < 1e-12 and np.abs(got.imag).max() > 0.1


@pytest.mark.parametrize("which, key", [("LM", np.abs), ("LR", np.real)])
def test_iterative_eigenvalues_match_dense_on_conv_fields(which, key):
    hamiltonian = HamiltonianField(4, "J2", "tanh", kernel_size=3).double()
    damped = AntisymmetricField(4, "tanh", gamma=0.5, kernel_size=3).double()
    y = torch.randn(1, 4, 6, 6, dtype=D)  # n = 144
    for field in (hamiltonian, damped) if which == "LM" else (damped,):
        with torch.no_grad():
            field.b.normal_()
        dense = eigenvalues(field_map(field), y)
        top = top_eigenvalues(field_map(field), y, k=4, which=which, tol=1e-10)
        np.testing.assert_allclose(np.sort(key(top))[::-1], np.sort(key(dense))[::-1][:4], rtol=1e-7, atol=1e-9)


def test_eigenvalue_errors():
    field = HamiltonianField(4, "J2", "tanh", kernel_size=3).double()
    y = torch.randn(1, 4, 6, 6, dtype=D)
    with pytest.raises(ValueError, match="too clustered.*imaginary axis"):
        top_eigenvalues(field_map(field), y, k=4, which="LR", maxiter=20)
    with pytest.raises(ValueError, match="which must be one of 'LR', 'LM'"):
        top_eigenvalues(field_map(field), y, which="SR")
    with pytest.raises(ValueError, match="y must be one sample"):
        eigenvalues(field_map(field), torch.randn(2, 4, 6, 6, dtype=D))


def finite_difference_jacobian(fn, y, eps=1e-6):
    flat = y.reshape(-1)
    columns = []
    for i in range(flat.numel()):
        e = torch.zeros_like(flat)
        e[i] = eps
        columns.append((fn((flat + e).view_as(y)) - fn((flat - e).view_as(y))).reshape(-1) / (2 * eps))
    return torch.stack(columns, 1)


def test_symplectic_step_jacobian_and_its_defect():
    field = TwoLayerField(4, "tanh", n_nodes=3, dt=0.3).double()
    with torch.no_grad():
        for name in field.bias_names:
            getattr(field, name).normal_()
    block = HamiltonianBlock(field, "symplectic_euler")
    y = torch.randn(1, 4, dtype=D)
    step = lambda v: block.step(1, v)  # noqa: E731
    torch.testing.assert_close(jacobian(step, y), finite_difference_jacobian(step, y), rtol=1e-7, atol=1e-8)
    assert symplecticity_defect(step, y) < 1e-12
    euler = HamiltonianBlock(HamiltonianField(4, "J1", "tanh", n_nodes=3, dt=0.3).double())
    assert symplecticity_defect(lambda v: euler.step(0, v), y) > 1e-3  # forward Euler is not symplectic


def test_sensitivities_are_symplectic_with_norm_at_least_one():
    block = HamiltonianBlock(TwoLayerField(4, "tanh", n_nodes=12, dt=0.2).double(), "verlet")
    y = torch.randn(1, 4, dtype=D)
    S = sensitivities(block, y)
    assert S.shape == (13, 4, 4)
    torch.testing.assert_close(S[-1], torch.eye(4, dtype=D))
    torch.testing.assert_close(S[0], jacobian(block, y), rtol=1e-10, atol=1e-12)
    J = j1_matrix(4).double()
    for s in S:
        torch.testing.assert_close(s.T @ J @ s, J, rtol=0, atol=1e-10)
    assert torch.linalg.matrix_norm(S, 2).min() >= 1 - 1e-12
    batch = torch.cat((y, torch.randn(2, 4, dtype=D)))
    per_sample = sensitivities(block, batch)
    assert per_sample.shape == (3, 13, 4, 4)
    torch.testing.assert_close(per_sample[0], S)
    np.testing.assert_allclose(sensitivity_norms(block, batch, layers=[0], iterations=80)[:, 0],
                               torch.linalg.matrix_norm(per_sample[:, 0], 2).numpy(), rtol=1e-6)  # fmt: skip


def test_power_iteration_matches_dense_norms():
    field = HamiltonianField(4, "J2", "tanh", n_nodes=6, dt=0.2).double()
    block = HamiltonianBlock(field)
    y = torch.randn(1, 4, dtype=D)
    dense = torch.linalg.matrix_norm(sensitivities(block, y), 2).numpy()
    np.testing.assert_allclose(sensitivity_norms(block, y, iterations=60), dense, rtol=1e-6)
    conv = HamiltonianBlock(TwoLayerField(4, "tanh", kernel_size=3, n_nodes=4, dt=0.2).double())
    x = torch.randn(1, 4, 5, 5, dtype=D)
    dense = torch.linalg.matrix_norm(sensitivities(conv, x)[[0, 2]], 2).numpy()
    np.testing.assert_allclose(sensitivity_norms(conv, x, layers=[0, 2], iterations=100), dense, rtol=1e-5)


def test_energy_drift_and_reversibility():
    field = TwoLayerField(4, "tanh", n_nodes=1).double()
    verlet = HamiltonianBlock(TwoLayerField(4, "tanh", n_nodes=200, dt=0.05).double(), "verlet")
    with torch.no_grad():
        for name in verlet.field.node_names:  # one constant weight: an autonomous Hamiltonian
            getattr(verlet.field, name)[:] = getattr(verlet.field, name)[0].clone()
            getattr(field, name)[:] = getattr(verlet.field, name)[0]
    y = torch.randn(3, 4, dtype=D)
    with torch.no_grad():
        states = verlet.trajectory(y)
        drift = energy_drift(field, np.arange(201) * 0.05, states)
        euler = HamiltonianBlock(verlet.field, "euler")
        euler_drift = energy_drift(field, np.arange(201) * 0.05, euler.trajectory(y))
        assert np.abs(drift).max() < 1e-2 < np.abs(euler_drift).max()
        assert reversibility_error(verlet, y) < 1e-12
        assert reversibility_error(euler, y) > 1e-4


def test_gradient_norm_hooks_agree_with_autograd():
    torch.manual_seed(0)
    first = HamiltonianBlock(TwoLayerField(4, "tanh", n_nodes=3, dt=0.1))
    second = HamiltonianBlock(HamiltonianField(4, "J2", "tanh", n_nodes=3, dt=0.1))
    model = nn.Sequential(nn.Linear(2, 4), first, second, nn.Linear(4, 3))
    x, target = torch.randn(8, 2), torch.randint(0, 3, (8,))
    with GradientNorms(model) as norms:
        for _ in range(2):
            model.zero_grad()
            h1 = first(model[0](x))
            h2 = second(h1)
            h1.retain_grad(), h2.retain_grad()
            nn.functional.cross_entropy(model[3](h2), target).backward()
    latest = norms.latest()
    assert set(norms.history) >= {"state/1", "state/2", "param/1.field.K1", "param/3.weight"}
    assert all(len(v) == 2 for v in norms.history.values())
    assert latest["state/1"] == pytest.approx(float(h1.grad.norm()), rel=1e-6)
    assert latest["state/2"] == pytest.approx(float(h2.grad.norm()), rel=1e-6)
    for name, p in model.named_parameters():
        assert latest[f"param/{name}"] == pytest.approx(float(p.grad.norm()), rel=1e-6)
    model.zero_grad()
    nn.functional.cross_entropy(model(x), target).backward()
    assert len(norms.history["param/3.weight"]) == 2  # removed on exit
