"""HamiltonianBlock equals the written discrete equations; both blocks are ordinary layers."""

import pytest
import torch
import torch.nn.functional as F

from contham import Backprop, HamiltonianBlock, ODEBlock
from contham.fields import (
    AntisymmetricField,
    HamiltonianField,
    ODENetField,
    SeparableField,
    SymmetricField,
    TwoLayerField,
    j1_matrix,
    j2_matrix,
)

D = torch.float64
N, H = 5, 0.1


def lin(K, x, b=None):
    """K x + b written out: a matrix product or a same-padding convolution."""
    if K.dim() == 2:
        return x @ K.T + (0 if b is None else b)
    return F.conv2d(x, K, b, padding=K.shape[-1] // 2)


def lin_t(K, x):
    if K.dim() == 2:
        return x @ K
    return F.conv_transpose2d(x, K, padding=K.shape[-1] // 2)


def state(ks, n=4):
    return torch.randn(3, n, dtype=D) if ks is None else torch.randn(2, n, 5, 5, dtype=D)


def randomise(field):
    for name in field.node_names:
        torch.nn.init.normal_(getattr(field, name), std=0.5)
    return field


@pytest.mark.parametrize("J", ["J1", "J2"])
@pytest.mark.parametrize("ks", [None, 3])
@pytest.mark.parametrize("sigma", ["tanh", "relu"])
@pytest.mark.parametrize("fused", [True, False])
def test_j1_j2_block_is_report_eq_2_21(J, ks, sigma, fused):
    f = randomise(HamiltonianField(4, J, sigma, kernel_size=ks, n_nodes=N, dt=H).double())
    Jm = (j1_matrix(4) if J == "J1" else j2_matrix(4)).double()
    act = torch.tanh if sigma == "tanh" else torch.relu
    y = state(ks)
    out = HamiltonianBlock(f, gradient=Backprop(higher_order=not fused))(y)
    for j in range(N):  # y_{j+1} = y_j + h J K_j^T sigma(K_j y_j + b_j)
        g = lin_t(f.K[j], act(lin(f.K[j], y, f.b[j])))
        y = y + H * torch.einsum("ij,bj...->bi...", Jm, g)
    assert torch.allclose(out, y, atol=1e-12)


@pytest.mark.parametrize("ks", [None, 3])
def test_two_layer_block_is_chang_verlet(ks):
    f = randomise(TwoLayerField(4, "relu", kernel_size=ks, n_nodes=N, dt=H).double())
    x = state(ks)
    out = HamiltonianBlock(f)(x)
    y, z = x[:, :2], x[:, 2:]
    for j in range(N):
        y = y + H * lin_t(f.K1[j], torch.relu(lin(f.K1[j], z, f.b1[j])))
        z = z - H * lin_t(f.K2[j], torch.relu(lin(f.K2[j], y, f.b2[j])))
    assert torch.allclose(out, torch.cat((y, z), 1), atol=1e-12)


def test_separable_block_is_symplectic_euler_q_first():
    f = randomise(SeparableField(4, "tanh", n_nodes=N, dt=H).double())
    x = state(None)
    out = HamiltonianBlock(f)(x)
    p, q = x[:, :2], x[:, 2:]
    for j in range(N):
        q = q - H * lin_t(f.Kp[j], torch.tanh(lin(f.Kp[j], p, f.bp[j])))
        p = p + H * lin_t(f.Kq[j], torch.tanh(lin(f.Kq[j], q, f.bq[j])))
    assert torch.allclose(out, torch.cat((p, q), 1), atol=1e-12)


@pytest.mark.parametrize("ks", [None, 3])
def test_symmetric_block_is_haber_ruthotto_verlet(ks):
    f = randomise(SymmetricField(4, "tanh", kernel_size=ks, n_nodes=N, dt=H).double())
    x = state(ks)
    out = HamiltonianBlock(f)(x)
    y, z = x[:, :2], x[:, 2:]
    bias = (lambda v: v) if ks is None else (lambda v: v[:, None, None])
    for j in range(N):  # z_{j+1} = z_j + h sigma(-K0_j^T y_j + b_z); y_{j+1} = y_j + h sigma(K0_j z_{j+1} + b_y)
        z = z + H * torch.tanh(-lin_t(f.K0[j], y) + bias(f.b[j, 2:]))
        y = y + H * torch.tanh(lin(f.K0[j], z) + bias(f.b[j, :2]))
    assert torch.allclose(out, torch.cat((y, z), 1), atol=1e-12)


def test_antisymmetric_block_is_forward_euler():
    f = randomise(AntisymmetricField(4, "tanh", gamma=0.1, n_nodes=N, dt=H).double())
    y = state(None)
    out = HamiltonianBlock(f)(y)
    for j in range(N):
        W = f.W[j]
        y = y + H * torch.tanh(y @ (W - W.T - 0.1 * torch.eye(4, dtype=D)).T + f.b[j])
    assert torch.allclose(out, y, atol=1e-12)


def test_block_solver_choice_and_trajectory():
    f = randomise(TwoLayerField(4, "tanh", n_nodes=N, dt=H).double())
    x = state(None)
    block = HamiltonianBlock(f, solver="verlet")
    traj = block.trajectory(x)
    assert traj.shape == (N + 1, 3, 4) and torch.equal(traj[0], x) and torch.allclose(traj[-1], block(x))
    assert block.last_stats.nfe_forward == 3 * N
    # one Verlet step by hand on node 0
    y, z = x[:, :2], x[:, 2:]
    dy = lambda z: lin_t(f.K1[0], torch.tanh(lin(f.K1[0], z, f.b1[0])))  # noqa: E731
    dz = lambda y: -lin_t(f.K2[0], torch.tanh(lin(f.K2[0], y, f.b2[0])))  # noqa: E731
    y = y + H / 2 * dy(z)
    z = z + H * dz(y)
    y = y + H / 2 * dy(z)
    assert torch.allclose(traj[1], torch.cat((y, z), 1), atol=1e-12)


def test_blocks_are_layers():
    net = torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 3, padding=1),
        HamiltonianBlock(TwoLayerField(4, "relu", kernel_size=3, n_nodes=3, dt=0.1)),
        ODEBlock(ODENetField(4, groups=2), T=0.5, solver="rk4", step_size=0.25),
        ODEBlock(HamiltonianField(4, "J2", kernel_size=3), solver="dopri5", rtol=1e-3, atol=1e-3, gradient="adjoint"),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
        torch.nn.Linear(4, 10),
    )
    x = torch.randn(2, 1, 8, 8)
    net(x).sum().backward()
    assert all(p.grad is not None for p in net.parameters())
    assert net[3].last_stats.nfe_backward > 0
    net.double()
    assert net(x.double()).dtype == D
    text = repr(net)
    assert "n_steps=3, h=0.1, solver=symplectic_euler" in text and "T=0.5, solver=rk4" in text
    assert "solver=dopri5, gradient=Adjoint(rtol=None, atol=None, seminorm=False)" in text


def test_block_state_dict_round_trip():
    a = HamiltonianBlock(HamiltonianField(6, "J1", kernel_size=3, n_nodes=4, dt=0.1))
    b = HamiltonianBlock(HamiltonianField(6, "J1", kernel_size=3, n_nodes=4, dt=0.1))
    b.load_state_dict(a.state_dict())
    x = torch.randn(2, 6, 4, 4)
    assert torch.equal(a(x), b(x))
    assert set(a.state_dict()) == {"field.K", "field.b", "field.J.J"}


def test_gradcheck_blocks():
    f = randomise(TwoLayerField(4, "tanh", kernel_size=3, n_nodes=3, dt=0.2).double())
    x = torch.randn(1, 4, 3, 3, dtype=D, requires_grad=True)
    block = HamiltonianBlock(f)
    names = [n for n, _ in block.named_parameters()]
    params = list(block.parameters())
    assert torch.autograd.gradcheck(
        lambda x, *ps: torch.func.functional_call(block, dict(zip(names, ps)), (x,)), (x, *params)
    )
    ode = ODEBlock(HamiltonianField(4, "J2", n_nodes=2, dt=0.5).double(), solver="rk4", step_size=0.25)
    y = torch.randn(2, 4, dtype=D, requires_grad=True)
    names = [n for n, _ in ode.named_parameters()]
    params = list(ode.parameters())
    assert torch.autograd.gradcheck(
        lambda y, *ps: torch.func.functional_call(ode, dict(zip(names, ps)), (y,)), (y, *params)
    )


@pytest.mark.parametrize("ks", [None, 3])
def test_j_is_folded_into_k_once_per_forward_not_per_step(ks, monkeypatch):
    field = HamiltonianField(4, "J2", kernel_size=ks, n_nodes=6, dt=0.1)
    calls = []
    real = type(field.J).forward
    monkeypatch.setattr(type(field.J), "forward", lambda self, x: calls.append(tuple(x.shape)) or real(self, x))
    HamiltonianBlock(field, gradient=Backprop(higher_order=True))(state(ks).float())
    assert calls == [(6 * 4, 4, 3, 3) if ks else (6 * 4, 4)]  # one call on all six K's, none per step


def test_block_bad_input():
    with pytest.raises(ValueError, match="time_mode 'piecewise' or 'constant'"):
        HamiltonianBlock(HamiltonianField(4, n_nodes=2, time_mode="linear"))
    with pytest.raises(ValueError, match="fixed-step solver"):
        HamiltonianBlock(HamiltonianField(4, n_nodes=2), solver="dopri5")
    with pytest.raises(ValueError, match="split field"):
        HamiltonianBlock(HamiltonianField(4, n_nodes=2), solver="symplectic_euler")
    with pytest.raises(ValueError, match="T must be"):
        ODEBlock(ODENetField(4, groups=2), T=0)
    with pytest.raises(ValueError, match="y must have shape"):
        HamiltonianBlock(HamiltonianField(4, n_nodes=2))(torch.randn(2, 4, 3, 3))
    with pytest.raises(ValueError, match="step_size must be a finite number > 0; got -1"):
        ODEBlock(ODENetField(4, groups=2), solver="rk4", step_size=-1)  # at construction, not at the first forward
    with pytest.raises(ValueError, match="max_nfe must be an integer >= 1; got 0"):
        ODEBlock(ODENetField(4, groups=2), max_nfe=0)


@pytest.mark.parametrize("make", [lambda: HamiltonianBlock(TwoLayerField(4, n_nodes=2)),
                                  lambda: ODEBlock(TwoLayerField(4), solver="rk4", step_size=0.5)])  # fmt: skip
def test_blocks_check_their_input_before_anything_else(make):
    import numpy as np

    block = make()
    name = "y" if isinstance(block, HamiltonianBlock) else "y0"
    for bad, kind in ((np.zeros((2, 4)), "ndarray"), ([[0.0] * 4], "list")):
        with pytest.raises(TypeError, match=f"{name} must be a torch.Tensor; got {kind}"):
            block(bad)
        with torch.autocast("cpu", dtype=torch.bfloat16), pytest.raises(TypeError, match="must be a torch.Tensor"):
            block(bad)
    with pytest.raises(ValueError, match=f"{name} is a meta tensor"):
        block(torch.zeros(2, 4, device="meta"))
