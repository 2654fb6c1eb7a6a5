"""The tensors a field reads get their gradients from the strategies that rebuild or re-solve the
field's calls (reversible, adjoint), as they would as the field's parameters."""

import pytest
import torch
from torch import nn

from contham import HamiltonianField, ODEBlock, integrate
from contham.solvers import RungeKutta, grad_inputs

D = torch.float64


class Held(nn.Module):
    """y' = tanh(y W) + a with W a parameter (the reference) or a tensor set on the module."""

    def __init__(self, W: torch.Tensor, parameter: bool):
        super().__init__()
        self.a = nn.Parameter(torch.linspace(-0.2, 0.3, W.shape[0], dtype=D))
        self.W = nn.Parameter(W.detach().clone()) if parameter else W

    def forward(self, t, y):
        return torch.tanh(y @ self.W) + self.a


STRATEGIES = {
    "reversible, adaptive": dict(solver=RungeKutta("dopri5", rtol=1e-6, atol=1e-8), gradient="reversible"),
    "reversible, per-sample steps": dict(solver=RungeKutta("bosh3", per_sample=True), gradient="reversible"),
    "reversible, fixed steps": dict(solver="rk4", step_size=0.25, gradient="reversible"),
    "adjoint": dict(solver="dopri5", rtol=1e-6, atol=1e-8, gradient="adjoint"),
}


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("read", ["closed over", "set on the module", "a module's method"])
@pytest.mark.parametrize("y0_grad", [False, True], ids=["y0 constant", "y0 trained"])
def test_a_tensor_the_field_reads_gets_the_gradient_it_would_as_a_parameter(strategy, read, y0_grad):
    torch.manual_seed(0)
    w = torch.randn(4, 4, dtype=D, requires_grad=True)
    y0 = torch.randn(3, 4, dtype=D, requires_grad=y0_grad)
    W = 2 * w  # made outside the field, with a graph back to w
    reference = Held(W, parameter=True)
    if read == "closed over":
        a = reference.a
        field = lambda t, y: torch.tanh(y @ W) + a  # noqa: E731
    else:
        field = Held(W, parameter=False)
        field.a = reference.a
        if read == "a module's method":  # not a module: its parameter a is read like W
            field = field.forward
    options = STRATEGIES[strategy]
    inputs = [reference.a, *([y0] if y0_grad else [])]
    loss = integrate(reference, y0, [0.0, 1.0], **options).y.pow(2).sum()
    expected = torch.autograd.grad(loss, [reference.W, *inputs])
    solution = integrate(field, y0, [0.0, 1.0], **options)
    got = torch.autograd.grad(solution.y.pow(2).sum(), [w, *inputs])
    assert solution.stats.nfe_backward > 0  # the strategy's own backward pass, not autograd through the steps
    torch.testing.assert_close(got[0], 2 * expected[0], rtol=1e-12, atol=1e-14)  # W = 2 w
    for a, b in zip(got[1:], expected[1:]):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)


def test_grad_inputs_are_the_parameters_then_the_other_tensors_made_before_the_call():
    field = HamiltonianField(4, n_nodes=3, dt=0.2)  # reads views of its node weights
    y = torch.randn(2, 4, requires_grad=True)  # the state is not among them
    assert grad_inputs(field, 0.1, y) == tuple(field.parameters())
    field.b.requires_grad_(False)
    assert grad_inputs(field, 0.1, y) == (field.K,)
    a, b, c = (torch.randn(2, requires_grad=True) for _ in range(3))
    frozen = torch.randn(4)
    # through lists, and a view made inside the call (which requires grad too) is not an input
    found = grad_inputs(lambda t, y: y * torch.cat([a, b]) * frozen + c[0], 0.0, y)
    assert [id(v) for v in found] == [id(a), id(b), id(c)]


def test_without_gradients_nothing_is_probed_and_with_them_one_uncounted_call():
    calls = []
    W = torch.randn(3, 3, dtype=D, requires_grad=True)

    def field(t, y):
        calls.append(t)
        return torch.tanh(y @ W)

    y0 = torch.randn(2, 3, dtype=D)
    with torch.no_grad():
        assert grad_inputs(field, 0.0, y0) == () and not calls
        stats = integrate(field, y0, [0.0, 1.0], "dopri5", gradient="reversible").stats
    assert len(calls) == stats.nfe_forward
    calls.clear()
    solution = integrate(field, y0, [0.0, 1.0], "dopri5", gradient="reversible")
    solution.y.sum().backward()
    assert len(calls) == solution.stats.nfe_forward + solution.stats.nfe_backward + 1 and W.grad is not None


def test_a_compiled_model_probes_outside_its_graph():
    """torch.compile runs the probe as it is (a graph break): the reversible block's values and
    gradients, its context's included, equal eager's."""
    torch.manual_seed(1)
    w = torch.randn(4, 4, dtype=D, requires_grad=True)
    field = Held(2 * w, parameter=False)
    block = ODEBlock(field, 0.5, "euler", step_size=0.25, gradient="reversible")
    x = torch.randn(3, 4, dtype=D, requires_grad=True)
    torch._dynamo.reset()
    compiled = torch.compile(block, backend="aot_eager")
    results = []
    for model in (block, compiled):
        field.W = 2 * w  # a fresh graph back to w for each pass
        out = model(x)
        results.append((out, *torch.autograd.grad(out.pow(2).sum(), [x, w, field.a])))
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)


def test_the_probe_leaves_batch_statistics_alone_and_gives_t_as_the_steps_do():
    """The call runs in eval mode (no batch statistics updated), each module's mode put back,
    with t as the solve's steps give it: a number for fixed steps (no copy to the device, which a
    captured step could not make), a tensor for the adaptive engine."""
    calls = []

    class Normed(nn.Module):
        def __init__(self):
            super().__init__()
            self.norm, self.drop = nn.BatchNorm1d(3).double(), nn.Dropout(0.5)

        def forward(self, t, y):
            calls.append((type(t), self.norm.training))
            return torch.tanh(self.norm(y))

    field = Normed()
    field.drop.eval()
    mean = field.norm.running_mean.clone()
    y0 = torch.randn(4, 3, dtype=D, requires_grad=True)
    assert grad_inputs(field, 0.25, y0) == tuple(field.norm.parameters())
    assert calls == [(float, False)] and torch.equal(field.norm.running_mean, mean)
    assert field.training and field.norm.training and not field.drop.training
    for steps, kind in (({"step_size": 0.5}, float), ({}, torch.Tensor)):
        for f in (field, field.forward):  # a module, or its method
            calls.clear()
            integrate(f, y0, [0.0, 1.0], "rk4" if steps else "dopri5", gradient="reversible", **steps)
            assert calls[0] == (kind, False) and all(c == (kind, True) for c in calls[1:])
