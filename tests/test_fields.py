"""Fields equal their written equations; K^T is the adjoint of K; f = J grad H."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

import contham
from contham.fields import (
    AntisymmetricField,
    ConcatConv2d,
    HamiltonianField,
    ODENetField,
    SeparableField,
    SkewMatrix,
    SymmetricField,
    TimeNodes,
    TwoLayerField,
    j1_matrix,
    j2_matrix,
    linear_op,
    linear_op_t,
)

D = torch.float64


def conv_matrix(K, C, H, W):
    """Dense matrix of the same-padding convolution with weight K on (C, H, W) inputs."""
    eye = torch.eye(C * H * W, dtype=K.dtype).reshape(-1, C, H, W)
    return F.conv2d(eye, K, padding=K.shape[-1] // 2).reshape(C * H * W, -1).T


@pytest.mark.parametrize("ks", [None, 1, 3, 5])
def test_transpose_is_adjoint(ks):
    if ks is None:
        K = torch.randn(5, 7, dtype=D)
        y, z = torch.randn(3, 7, dtype=D), torch.randn(3, 5, dtype=D)
    else:
        K = torch.randn(5, 4, ks, ks, dtype=D)
        y, z = torch.randn(3, 4, 6, 6, dtype=D), torch.randn(3, 5, 6, 6, dtype=D)
    lhs = (linear_op(K, y) * z).sum()
    rhs = (y * linear_op_t(K, z)).sum()
    assert torch.allclose(lhs, rhs, rtol=1e-12)


def test_j_matrices():
    assert torch.equal(j1_matrix(4), torch.tensor([[0, 0, 1, 0], [0, 0, 0, 1], [-1, 0, 0, 0], [0, -1, 0, 0.0]]))
    assert torch.equal(j2_matrix(3), torch.tensor([[0, 1, 1], [-1, 0, 1], [-1, -1, 0.0]]))


@pytest.mark.parametrize("kind", ["J1", "J2", "custom"])
@pytest.mark.parametrize("shape", [(3, 6), (2, 6, 4, 5)])
def test_skew_apply_equals_matrix_product(kind, shape):
    J = torch.randn(6, 6, dtype=D)
    J = J - J.T if kind == "custom" else kind
    op = SkewMatrix(J, 6).double()
    x = torch.randn(*shape, dtype=D)
    expected = torch.einsum("ij,bj...->bi...", op.J, x)
    assert torch.allclose(op(x), expected, atol=1e-12)
    assert "J" in dict(op.named_buffers())


def _dense(field, name):
    return getattr(field, name)[0]


@pytest.mark.parametrize("J", ["J1", "J2"])
@pytest.mark.parametrize("sigma", ["tanh", "relu"])
def test_hamiltonian_dense_equals_equation(J, sigma):
    f = HamiltonianField(6, J, sigma).double()
    torch.nn.init.normal_(f.b)
    y = torch.randn(4, 6, dtype=D)
    K, b = f.K[0], f.b[0]
    act = torch.tanh if sigma == "tanh" else torch.relu
    Jm = j1_matrix(6).double() if J == "J1" else j2_matrix(6).double()
    expected = (Jm @ K.T @ act(K @ y.T + b[:, None])).T
    assert torch.allclose(f(0.0, y), expected, atol=1e-12)


@pytest.mark.parametrize("J", ["J1", "J2"])
def test_hamiltonian_conv_equals_equation(J):
    C, H, W = 4, 5, 5
    f = HamiltonianField(C, J, "tanh", kernel_size=3).double()
    torch.nn.init.normal_(f.b)
    y = torch.randn(2, C, H, W, dtype=D)
    Km = conv_matrix(f.K[0], C, H, W)
    bm = f.b[0].repeat_interleave(H * W)
    Jm = torch.kron((j1_matrix(C) if J == "J1" else j2_matrix(C)).double(), torch.eye(H * W, dtype=D))
    expected = (Jm @ Km.T @ torch.tanh(Km @ y.reshape(2, -1).T + bm[:, None])).T.reshape(y.shape)
    assert torch.allclose(f(0.0, y), expected, atol=1e-12)


def test_two_layer_equals_unified_form():
    f = TwoLayerField(6, "tanh").double()
    for p in (f.b1, f.b2):
        torch.nn.init.normal_(p)
    K1, K2, b1, b2 = (_dense(f, n) for n in ("K1", "K2", "b1", "b2"))
    Z = torch.zeros(3, 3, dtype=D)
    K = torch.cat((torch.cat((Z, K1), 1), torch.cat((K2, Z), 1)), 0)
    b = torch.cat((b1, b2))
    x = torch.randn(4, 6, dtype=D)
    expected = (j1_matrix(6).double() @ K.T @ torch.tanh(K @ x.T + b[:, None])).T
    assert torch.allclose(f(0.0, x), expected, atol=1e-12)
    y, z = x[:, :3], x[:, 3:]
    assert torch.allclose(f.dy(0.0, z), torch.tanh(z @ K1.T + b1) @ K1, atol=1e-12)
    assert torch.allclose(f.dz(0.0, y), -torch.tanh(y @ K2.T + b2) @ K2, atol=1e-12)


def test_separable_equals_unified_form():
    f = SeparableField(6, "tanh").double()
    for p in (f.bp, f.bq):
        torch.nn.init.normal_(p)
    Kp, Kq, bp, bq = (_dense(f, n) for n in ("Kp", "Kq", "bp", "bq"))
    K = torch.block_diag(Kp, Kq)
    b = torch.cat((bp, bq))
    x = torch.randn(4, 6, dtype=D)
    expected = (j1_matrix(6).double() @ K.T @ torch.tanh(K @ x.T + b[:, None])).T
    assert torch.allclose(f(0.0, x), expected, atol=1e-12)


@pytest.mark.parametrize("ks", [None, 3])
def test_symmetric_equals_sigma_Kx_plus_b(ks):
    f = SymmetricField(4, "tanh", kernel_size=ks).double()
    torch.nn.init.normal_(f.b)
    shape = (3, 4) if ks is None else (3, 4, 5, 5)
    x = torch.randn(*shape, dtype=D)
    K0 = f.K0[0] if ks is None else conv_matrix(f.K0[0], 2, 5, 5)
    Z = torch.zeros_like(K0)
    K = torch.cat((torch.cat((Z, K0), 1), torch.cat((-K0.T, Z), 1)), 0)
    b = f.b[0] if ks is None else torch.cat([f.b[0][:2].repeat_interleave(25), f.b[0][2:].repeat_interleave(25)])
    # The state (y, z) flattens to (y_flat, z_flat) since y and z are the channel halves.
    flat = x.reshape(3, -1)
    expected = torch.tanh(flat @ K.T + b).reshape(shape)
    assert torch.allclose(f(0.0, x), expected, atol=1e-12)


@pytest.mark.parametrize("gamma", [0.0, 0.3])
def test_antisymmetric_equals_equation(gamma):
    f = AntisymmetricField(5, "tanh", gamma=gamma).double()
    torch.nn.init.normal_(f.b)
    W, b = f.W[0], f.b[0]
    y = torch.randn(3, 5, dtype=D)
    K = W - W.T - gamma * torch.eye(5, dtype=D)
    assert torch.allclose(f(0.0, y), torch.tanh(y @ K.T + b), atol=1e-12)
    fc = AntisymmetricField(4, "tanh", kernel_size=3).double()
    Km = conv_matrix(fc.W[0], 4, 4, 4)
    yc = torch.randn(2, 4, 4, 4, dtype=D)
    expected = torch.tanh(yc.reshape(2, -1) @ (Km - Km.T).T).reshape(yc.shape)
    assert torch.allclose(fc(0.0, yc), expected, atol=1e-12)


@pytest.mark.parametrize("sigma", ["tanh", "relu", "sigmoid", "identity"])
@pytest.mark.parametrize(
    "make",
    [
        lambda s: HamiltonianField(4, "J1", s),
        lambda s: HamiltonianField(3, "J2", s, width=5),
        lambda s: HamiltonianField(4, "J2", s, kernel_size=3),
        lambda s: TwoLayerField(4, s),
        lambda s: SeparableField(4, s, kernel_size=3),
    ],
)
def test_field_is_J_grad_energy(make, sigma):
    f = make(sigma).double()
    for name in f.node_names:
        if name.startswith("b"):
            torch.nn.init.normal_(getattr(f, name))
    shape = (3, f.features) if not f.conv else (3, f.features, 4, 4)
    y = torch.randn(*shape, dtype=D, requires_grad=True)
    (grad,) = torch.autograd.grad(f.energy(0.0, y).sum(), y)
    assert torch.allclose(f(0.0, y), f.J(grad), atol=1e-10)


def test_energy_values():
    f = HamiltonianField(2, "J1", "tanh").double()
    y = torch.randn(3, 2, dtype=D)
    pre = y @ f.K[0].T
    assert torch.allclose(f.energy(0.0, y), torch.log(torch.cosh(pre)).sum(1))
    g = HamiltonianField(2, "J1", "relu").double()
    pre = y @ g.K[0].T
    assert torch.allclose(g.energy(0.0, y), (0.5 * torch.relu(pre) ** 2).sum(1))


def test_time_nodes_locate():
    nodes = TimeNodes(4, 0.1, "piecewise")
    assert nodes.jumps == pytest.approx((0.1, 0.2, 0.3))
    for j, t in enumerate(nodes.times):
        assert nodes.locate(t) == (j, 0.0)
        if j:
            assert nodes.locate(math.nextafter(t, -math.inf)) == (j - 1, 0.0)
    assert nodes.locate(-1.0) == (0, 0.0) and nodes.locate(7.0) == (3, 0.0)
    lin = TimeNodes(3, 0.5, "linear")
    assert lin.locate(0.25) == (0, 0.5) and lin.locate(0.75) == (1, 0.5) and lin.locate(2.0) == (2, 0.0)
    assert lin.jumps == ()


def test_time_modes_read_weights():
    f = HamiltonianField(2, "J1", n_nodes=3, dt=0.5, time_mode="linear").double()
    K, b = f.params_at(0.75)
    assert torch.allclose(K, 0.5 * (f.K[1] + f.K[2]))
    p = HamiltonianField(2, "J1", n_nodes=3, dt=0.5).double()
    assert p.nodes.mode == "piecewise"
    assert torch.equal(p.params_at(0.6)[0], p.K[1]) and torch.equal(p.params_at(0.4999)[0], p.K[0])
    assert HamiltonianField(2).nodes.mode == "constant"


@pytest.mark.parametrize("mode", ["piecewise", "linear"])
def test_weights_at_a_tensor_time_are_found_on_its_device(mode, host_syncs):
    """A tensor time (as adaptive solvers give it; off the CPU `params_at` takes this path) is
    located without a read-back to the host, and gives the weights of the same time as a number:
    at, just below and between node times, before node 0 and after the last (float64: bit for
    bit). Linear weights keep their derivative in t between nodes, and have none at a node time
    or where they are clamped, as on the CPU's path."""
    f = HamiltonianField(4, "J1", n_nodes=4, dt=0.3, time_mode=mode).double()
    below = [math.nextafter(j * 0.3, -math.inf) for j in range(5)]
    times = [j * 0.3 for j in range(-1, 6)] + below + torch.linspace(-0.5, 1.5, 41).tolist()
    for s in times:
        t = torch.tensor(s, dtype=torch.float64, requires_grad=True)
        with host_syncs() as syncs:
            located = f.located(t)
        assert syncs.calls == []
        for a, b in zip(located, f.params_at(s)):
            assert torch.equal(a, b), s
        if mode == "linear":
            (slope,) = torch.autograd.grad(located[0].sum(), t)
            j = min(f.nodes.locate(s)[0], 2)
            inside = 0 <= s < f.nodes.times[-1] and s not in f.nodes.times  # none at a node, as on the CPU
            expected = float((f.K[j + 1] - f.K[j]).sum()) / 0.3 if inside else 0.0
            assert slope.item() == pytest.approx(expected, rel=1e-12, abs=1e-12), s
    with pytest.raises(ValueError, match="one time per call; got t of shape \\(3, 1\\)"):
        f.located(torch.zeros(3, 1, dtype=torch.float64))


def test_node_axis_layout():
    f = HamiltonianField(6, "J1", width=8, kernel_size=3, n_nodes=5)
    assert f.K.shape == (5, 8, 6, 3, 3) and f.b.shape == (5, 8)
    t = TwoLayerField(6, kernel_size=3, n_nodes=5)
    assert t.K1.shape == (5, 3, 3, 3, 3) and t.b2.shape == (5, 3)
    assert sorted(n for n, _ in t.named_parameters()) == ["K1", "K2", "b1", "b2"]
    assert "J.J" in f.state_dict()


def test_odenet_field_layout():
    f = ODENetField(64)
    assert sum(p.numel() for p in f.parameters()) == 2 * (65 * 64 * 9 + 64) + 3 * 2 * 64
    assert [m.num_groups for m in (f.norm1, f.norm2, f.norm3)] == [32, 32, 32]
    y = torch.randn(2, 64, 7, 7)
    out = f(torch.tensor(0.5), y)
    assert out.shape == y.shape
    # time is an input: the field changes with t
    assert not torch.allclose(f(0.0, y), f(1.0, y))


@pytest.mark.parametrize("kernel_size, padding", [(3, 1), (5, 2), (3, 0)])
@pytest.mark.parametrize("time", ["number", "tensor", "per sample"])
def test_concat_conv_is_the_convolution_of_the_time_channel_and_the_state(kernel_size, padding, time):
    """The convolution by linearity equals the written one: conv of ``[t, x]`` concatenated,
    values and gradients, with t a number, a 0-dim tensor or one per sample."""
    torch.manual_seed(0)
    conv = ConcatConv2d(3, 4, kernel_size, padding).double()
    x = torch.randn(5, 3, 6, 6, dtype=D, requires_grad=True)
    t = {"number": 0.7, "tensor": torch.tensor(0.7, dtype=D), "per sample": torch.rand(5, 1, 1, 1, dtype=D)}[time]

    def written() -> Tensor:
        channel = torch.ones_like(x[:, :1]) * t
        return F.conv2d(torch.cat((channel, x), 1), conv.conv.weight, conv.conv.bias, padding=padding)

    outs = [conv(t, x), written()]
    torch.testing.assert_close(outs[0], outs[1], rtol=1e-13, atol=1e-13)
    grads = [torch.autograd.grad(o.square().sum(), (x, conv.conv.weight, conv.conv.bias)) for o in outs]
    for mine, theirs in zip(*grads):
        torch.testing.assert_close(mine, theirs, rtol=1e-12, atol=1e-12)


def test_fields_move_with_dtype():
    f = contham.TwoLayerField(4, kernel_size=3).double()
    assert all(p.dtype == D for p in f.parameters()) and f.J.J.dtype == D


@pytest.mark.parametrize("to", [{"dtype": D}, {"memory_format": torch.channels_last}])
def test_node_stacked_conv_weights_convert_node_by_node(to):
    """Conversions reach each node's kernel as a 4-D conv weight; values and node layout stay."""
    f = contham.TwoLayerField(4, kernel_size=3, n_nodes=3)
    before = f.K1.detach().clone()
    f.to(**to)
    assert f.K1.shape == (3, 2, 2, 3, 3) and isinstance(f.K1, torch.nn.Parameter)
    assert torch.equal(f.K1.detach().float(), before)
    layout = to.get("memory_format", torch.contiguous_format)
    assert all(k.is_contiguous(memory_format=layout) for k in f.K1)
