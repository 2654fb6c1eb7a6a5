"""Solving backwards in time (strictly decreasing ``t``) and the exact inverse of reversible blocks."""

import pytest
import torch

from contham import HamiltonianBlock, HamiltonianField, SeparableField, SymmetricField, TwoLayerField, integrate
from contham.solvers import plan_steps

D = torch.float64


def piecewise_field():
    torch.manual_seed(0)
    field = TwoLayerField(4, "tanh", n_nodes=4, dt=0.25).double()
    with torch.no_grad():
        for p in field.parameters():
            p.normal_()
    return field


def test_reverse_plan_reads_the_node_of_each_interval():
    field = piecewise_field()
    steps, outputs = plan_steps([1.0, 0.0], field.nodes.breaks, 0.125, field.nodes)
    assert [node for _, _, node in steps] == [3, 3, 2, 2, 1, 1, 0, 0]
    assert all(h == pytest.approx(-0.125) for _, h, _ in steps) and outputs == [8]


@pytest.mark.parametrize(
    "solver,kw,tol", [("rk4", dict(step_size=1e-3), 1e-10), ("dopri5", dict(rtol=1e-10, atol=1e-12), 1e-8)]
)
def test_round_trip_through_weight_jumps(solver, kw, tol):
    field = piecewise_field()
    y0 = torch.randn(3, 4, dtype=D)
    y1 = integrate(field, y0, [0.0, 1.0], solver, **kw).y
    back = integrate(field, y1, [1.0, 0.0], solver, **kw)
    assert torch.allclose(back.y, y0, atol=tol) and back.ts.tolist() == [1.0, 0.0]


def test_verlet_backwards_retraces_the_forward_states():
    field = piecewise_field()
    y0 = torch.randn(2, 4, dtype=D)
    out = integrate(field, y0, [0.0, 0.5, 1.0], "verlet", step_size=0.05)
    back = integrate(field, out.y, [1.0, 0.5, 0.0], "verlet", step_size=0.05)
    # Verlet is symmetric: stepping back by -h undoes a step by h exactly (up to rounding)
    torch.testing.assert_close(back.ys, out.ys.flip(0), rtol=1e-12, atol=1e-12)


def test_adjoint_backwards_in_time_equals_backprop():
    torch.manual_seed(1)
    field = HamiltonianField(4, "J2", "tanh", n_nodes=3, dt=0.25, time_mode="linear").double()
    y0 = torch.randn(2, 4, dtype=D, requires_grad=True)
    weight = torch.randn(2, 4, dtype=D)
    grads = []
    for gradient in ("backprop", "adjoint"):
        y = integrate(field, y0, [0.5, -0.25], "dopri5", rtol=1e-11, atol=1e-12, gradient=gradient).y
        grads.append(torch.autograd.grad((y * weight).sum(), [y0, *field.parameters()]))
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize(
    "make,solver",
    [
        (lambda: TwoLayerField(6, n_nodes=5, dt=0.2), "symplectic_euler"),
        (lambda: TwoLayerField(6, n_nodes=5, dt=0.2), "verlet"),
        (lambda: SeparableField(6, "relu", kernel_size=3, n_nodes=3, dt=0.3), "verlet"),
        (lambda: SymmetricField(6, n_nodes=4, dt=0.5), "symplectic_euler"),
    ],
)
def test_block_inverse_is_exact(make, solver):
    torch.manual_seed(2)
    field = make().double()
    shape = (3, 6, 5, 5) if field.conv else (3, 6)
    y = torch.randn(*shape, dtype=D)
    block = HamiltonianBlock(field, solver)
    with torch.no_grad():
        out = block(y)
        torch.testing.assert_close(block.inverse(out), y, rtol=0, atol=1e-12)
        assert (out - y).abs().max() > 1e-2  # the block does move the state


def test_inverse_needs_a_split_solver():
    with pytest.raises(ValueError, match="inverse\\(\\) needs a split solver"):
        HamiltonianBlock(HamiltonianField(4, n_nodes=2)).inverse(torch.randn(1, 4))
