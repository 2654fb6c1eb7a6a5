"""Reversible (memory-free) backprop: the same gradients as ordinary backprop, flat memory in depth."""

import pytest
import torch

from contham import (
    Backprop,
    HamiltonianBlock,
    Reversible,
    SeparableField,
    SymmetricField,
    TwoLayerField,
)
from contham.config import HamiltonianParameters
from contham.experiments import SavedTensors
from contham.models import build

D = torch.float64
FIELDS = [TwoLayerField, SeparableField, SymmetricField]


def gradients(block, x, weight):
    out = block(x)
    return (out, *torch.autograd.grad((out * weight).sum(), (x, *block.field.parameters())))


def relative_error(a, b):
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("cls", FIELDS)
@pytest.mark.parametrize("solver", ["symplectic_euler", "verlet"])
@pytest.mark.parametrize("kernel_size", [None, 3])
@pytest.mark.parametrize("dtype, tolerance", [(torch.float64, 1e-10), (torch.float32, 1e-4)])
def test_reversible_gradients_equal_backprop(cls, solver, kernel_size, dtype, tolerance):
    field = cls(6, "tanh", kernel_size=kernel_size, n_nodes=40, dt=0.1).to(dtype)
    shape = (3, 6) if kernel_size is None else (2, 6, 5, 5)
    x = torch.randn(shape, dtype=dtype, requires_grad=True)
    weight = torch.randn(shape, dtype=dtype)
    plain = gradients(HamiltonianBlock(field, solver, gradient=Backprop(higher_order=True)), x, weight)
    block = HamiltonianBlock(field, solver, gradient="reversible")
    assert block.fused == (kernel_size is None)  # dense blocks rebuild their states on the fused path
    reversible = gradients(block, x, weight)
    with torch.no_grad():  # the forward arithmetic of backprop's default path (fused where dense)
        torch.testing.assert_close(reversible[0], HamiltonianBlock(field, solver)(x), rtol=0, atol=0)
    for a, b in zip(reversible, plain):
        assert relative_error(a, b) < tolerance


def test_gradcheck_reversible_block():
    field = TwoLayerField(4, "tanh", n_nodes=3, dt=0.2).double()
    block = HamiltonianBlock(field, "verlet", gradient="reversible")
    x = torch.randn(2, 4, dtype=D, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, *p: block(x), (x, *field.parameters()))


def test_activation_memory_does_not_grow_with_depth():
    x = torch.randn(16, 16, 16, 16)  # 0.25 MiB per state
    activations = {}
    for mode in ("backprop", "reversible"):
        for n in (16, 256):
            field = TwoLayerField(16, "relu", kernel_size=3, n_nodes=n, dt=0.05)
            with SavedTensors() as saved:
                HamiltonianBlock(field, gradient=mode)(x)
            activations[mode, n] = saved.megabytes_without(field.parameters())
    # reversible keeps the output state only (besides the weights); backprop keeps every step's
    assert activations["reversible", 256] <= 1.2 * activations["reversible", 16]
    assert activations["reversible", 256] == pytest.approx(0.25)
    assert activations["backprop", 256] > 12 * activations["backprop", 16]


def test_dense_activation_memory_does_not_grow_with_depth():
    x = torch.randn(4096, 8)  # a per-pixel state: 0.125 MiB
    activations = {}
    for n in (16, 256):
        field = TwoLayerField(8, "tanh", n_nodes=n, dt=0.05)
        with SavedTensors() as saved:
            HamiltonianBlock(field, gradient="reversible")(x)
        activations[n] = saved.megabytes_without(field.parameters())
    assert activations[256] == activations[16] == pytest.approx(0.125)  # the output state only


def test_statistics_modes_and_errors():
    field = TwoLayerField(4, n_nodes=5, dt=0.1)
    block = HamiltonianBlock(field, gradient="reversible")
    out = block(torch.randn(2, 4, requires_grad=True))
    assert block.last_stats.nfe_forward == 10 and block.last_stats.nfe_backward == 10  # one per kick undone
    out.sum().backward()
    with torch.no_grad():  # no graph wanted: the ordinary path
        torch.testing.assert_close(block(torch.ones(1, 4)), HamiltonianBlock(field)(torch.ones(1, 4)))
    assert "gradient=Reversible(coupling=0.999)" in repr(block)
    with pytest.raises(ValueError, match="coupling must be a number with 0 < coupling < 1; got 1.0"):
        HamiltonianBlock(field, "rk4", gradient=Reversible(coupling=1.0))
    with pytest.raises(ValueError, match="gradient must be one of 'backprop', 'reversible', 'adjoint'"):
        HamiltonianBlock(field, gradient="checkpoint")
    with pytest.raises(ValueError, match="gradient='adjoint' needs a torchdiffeq method"):
        HamiltonianBlock(field, gradient="adjoint")
    assert HamiltonianParameters.from_dict({"function": "H2", "memory": "reversible"}).gradient == "reversible"


def test_networks_use_the_reversible_mode_when_asked():
    torch.manual_seed(0)
    plain = build("nominal").double().eval()
    torch.manual_seed(0)
    reversible = build("nominal", gradient="reversible").double().eval()
    assert all(isinstance(u.block.gradient, Reversible) for u in reversible.units)
    x = torch.randn(2, 3, 32, 32, dtype=D)
    grads = [torch.autograd.grad(m(x).sum(), list(m.parameters())) for m in (plain, reversible)]
    for a, b in zip(*grads):
        assert relative_error(a, b) < 1e-10 or b.norm() == 0
