"""Fused dense blocks: the same map and gradients as step-by-step autograd, in one autograd node."""

import copy

import pytest
import torch

from contham import (
    AntisymmetricField,
    Backprop,
    HamiltonianBlock,
    HamiltonianField,
    SeparableField,
    SymmetricField,
    TwoLayerField,
)
from contham.fields import ACTIVATIONS

D = torch.float64
SIGMAS = list(ACTIVATIONS)
CASES = [
    (lambda s: HamiltonianField(4, "J1", s, n_nodes=7, dt=0.1), "euler"),
    (lambda s: HamiltonianField(6, "J2", s, width=9, n_nodes=5, dt=0.2), "euler"),
    (
        lambda s: HamiltonianField(
            5,
            torch.tensor([[0.0, 1, 2, 0, 0], [-1, 0, 0, 3, 0], [-2, 0, 0, 0, 1], [0, -3, 0, 0, 0], [0, 0, -1, 0, 0]]),
            s,
            n_nodes=4,
            dt=0.3,
        ),
        "euler",
    ),
    (lambda s: TwoLayerField(4, s, width=3, n_nodes=6, dt=0.1), "symplectic_euler"),
    (lambda s: TwoLayerField(4, s, n_nodes=6, dt=0.1), "verlet"),
    (lambda s: SeparableField(6, s, n_nodes=6, dt=0.1), "symplectic_euler"),
    (lambda s: SeparableField(6, s, width=5, n_nodes=6, dt=0.1), "verlet"),
    (lambda s: SymmetricField(6, s, n_nodes=5, dt=0.1), "symplectic_euler"),
    (lambda s: SymmetricField(4, s, n_nodes=4, dt=0.2), "verlet"),
    (lambda s: AntisymmetricField(5, s, gamma=0.3, n_nodes=5, dt=0.1), "euler"),
]
IDS = [
    "H1-J1",
    "H1-J2-wide",
    "H1-custom-J",
    "two-layer-SE",
    "two-layer-verlet",
    "separable-SE",
    "separable-verlet",
    "MS1-SE",
    "MS1-verlet",
    "MS2-damped",
]


def pair(make, sigma, solver):
    """A fused block and an unfused copy with the same (non-trivial) float64 weights."""
    field = make(sigma).double()
    with torch.no_grad():
        for p in field.parameters():
            p.normal_(0, 0.7)
    fused, plain = (
        HamiltonianBlock(field, solver),
        HamiltonianBlock(copy.deepcopy(field), solver, gradient=Backprop(higher_order=True)),
    )
    assert fused.fused and not plain.fused
    return fused, plain


@pytest.mark.parametrize("make, solver", CASES, ids=IDS)
@pytest.mark.parametrize("sigma", SIGMAS)
def test_fused_map_and_gradients_equal_autograd(make, solver, sigma):
    fused, plain = pair(make, sigma, solver)
    x = torch.randn(5, fused.field.features, dtype=D)
    weight = torch.randn_like(x)
    results = []
    for block in (fused, plain):
        xg = x.clone().requires_grad_()
        out = block(xg)
        results.append((out, *torch.autograd.grad((out * weight).sum(), (xg, *block.field.parameters()))))
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    with torch.no_grad():
        torch.testing.assert_close(fused(x), plain(x), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("case", [0, 4, 6, 8, 9], ids=lambda i: IDS[i])
def test_gradcheck_fused_block(case):
    make, solver = CASES[case]
    fused, _ = pair(make, "tanh", solver)
    x = torch.randn(3, fused.field.features, dtype=D, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, *p: fused(x), (x, *fused.field.parameters()))


def test_gradients_only_for_weights_or_only_for_the_input():
    fused, plain = pair(CASES[4][0], "tanh", "verlet")
    x = torch.randn(4, 4, dtype=D)
    for block in (fused, plain):
        block(x).sum().backward()
    for p, q in zip(fused.field.parameters(), plain.field.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-12, atol=1e-12)
    fused.field.requires_grad_(False)
    xg = x.clone().requires_grad_()
    (g,) = torch.autograd.grad(fused(xg).sum(), xg)
    xp = x.clone().requires_grad_()
    torch.testing.assert_close(g, torch.autograd.grad(plain(xp).sum(), xp)[0], rtol=1e-12, atol=1e-12)


def test_backward_counts_evaluations():
    block = HamiltonianBlock(TwoLayerField(4, n_nodes=5, dt=0.1), "verlet")
    block(torch.randn(2, 4)).sum().backward()
    assert (block.last_stats.nfe_forward, block.last_stats.nfe_backward) == (15, 15)


def test_double_backward_needs_higher_order():
    field = HamiltonianField(4, n_nodes=3, dt=0.1)
    x = torch.randn(2, 4, requires_grad=True)
    (g,) = torch.autograd.grad(HamiltonianBlock(field)(x).pow(2).sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="once_differentiable"):
        g.sum().backward()
    block = HamiltonianBlock(field, gradient=Backprop(higher_order=True))
    (g,) = torch.autograd.grad(block(x).pow(2).sum(), x, create_graph=True)
    g.sum().backward()  # second derivatives through the step-by-step graph
    assert x.grad is not None and torch.isfinite(x.grad).all()


@pytest.mark.parametrize(
    "block",
    [
        lambda: HamiltonianBlock(HamiltonianField(4, kernel_size=3, n_nodes=2)),  # conv
        lambda: HamiltonianBlock(HamiltonianField(4, sigma=lambda v: v.tanh(), n_nodes=2)),  # unnamed sigma
        lambda: HamiltonianBlock(HamiltonianField(4, n_nodes=2), "rk4"),  # multi-stage solver
        lambda: HamiltonianBlock(TwoLayerField(4, n_nodes=2), "euler"),  # split field, Euler
        lambda: HamiltonianBlock(AntisymmetricField(4, kernel_size=3, n_nodes=2)),  # conv MS2
        lambda: HamiltonianBlock(HamiltonianField(4, n_nodes=2), gradient=Backprop(higher_order=True)),
    ],
    ids=["conv", "custom-sigma", "rk4", "split-euler", "conv-MS2", "off"],
)
def test_unsupported_blocks_run_step_by_step(block):
    assert not block().fused


def test_named_sigma_passed_as_the_torch_function_is_fused():
    assert HamiltonianBlock(HamiltonianField(4, sigma=torch.tanh, n_nodes=2)).fused


def test_higher_order_flag_is_checked():
    with pytest.raises(ValueError, match="higher_order must be True or False; got 'yes'"):
        Backprop(higher_order="yes")


def test_output_can_be_modified_in_place():
    block = HamiltonianBlock(HamiltonianField(4, n_nodes=3, dt=0.1))
    x = torch.randn(2, 4, requires_grad=True)
    out = block(x)
    reference = torch.autograd.grad(out.sum(), x, retain_graph=True)[0]
    out.mul_(2)  # the output is not a view of the saved history
    torch.testing.assert_close(torch.autograd.grad(out.sum(), x)[0], 2 * reference)


@pytest.mark.parametrize("dtype, tol", [(torch.float32, 2e-7), (torch.float64, 4e-16)])
def test_in_place_tanh_matches_tanh(dtype, tol):
    # on CPU the fused path computes tanh as 2 sigmoid(2z) - 1 (see contham.fields.activations)
    z = torch.linspace(-30, 30, 200_001, dtype=dtype)
    exact = torch.tanh(z.double())
    fast = ACTIVATIONS["tanh"].inplace(z.clone())  # large: the sigmoid form
    assert (fast.double() - exact).abs().max() <= tol
    assert fast.abs().max() <= 1
    small = z[::100][:4000]
    assert torch.equal(ACTIVATIONS["tanh"].inplace(small.clone()), torch.tanh(small))  # small: torch's tanh


@pytest.mark.parametrize("make, solver", [CASES[0], CASES[4]], ids=[IDS[0], IDS[4]])
def test_channel_major_input_gives_the_same_map_and_gradients(make, solver):
    # a per-pixel network hands the block its rows laid out feature by feature (contham.models.hdnn)
    fused, _ = pair(make, "tanh", solver)
    x = torch.randn(fused.field.features, 50, dtype=D)
    results = []
    for rows in (x.t(), x.t().contiguous()):
        rows = rows.detach().requires_grad_()
        out = fused(rows)
        results.append((out, *torch.autograd.grad(out.square().sum(), (rows, *fused.field.parameters()))))
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
