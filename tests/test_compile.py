"""``torch.compile(..., fullgraph=True)``: forward and backward equal eager for the block paths
(one adaptive step of the Runge-Kutta engine: tests/test_runge_kutta.py); a run's instruments
inside a compiled model."""

import contextlib

import pytest
import torch
from torch import nn
from torch._dynamo.utils import counters

from contham import HamiltonianBlock, HamiltonianField, ODEBlock, ODENetField, TwoLayerField
from contham.experiments import SavedTensors
from contham.solvers import RungeKutta

D = torch.float64
CASES = {
    "step-by-step (conv)": (
        lambda: HamiltonianBlock(HamiltonianField(4, kernel_size=3, n_nodes=3, dt=0.1)),
        (2, 4, 5, 5),
    ),
    "fused (dense)": (lambda: HamiltonianBlock(TwoLayerField(6, n_nodes=4, dt=0.1), "verlet"), (3, 6)),
    "reversible": (lambda: HamiltonianBlock(TwoLayerField(6, n_nodes=4, dt=0.1), gradient="reversible"), (3, 6)),
    "ODEBlock fixed-step": (
        lambda: ODEBlock(HamiltonianField(4, n_nodes=3, dt=0.2, time_mode="linear"), 0.4, "rk4", step_size=0.1),
        (3, 4),
    ),
    "ODEBlock fixed steps of a tableau": (
        lambda: ODEBlock(
            HamiltonianField(4, n_nodes=3, dt=0.2, time_mode="linear"), 0.4, RungeKutta("tsit5"), step_size=0.2
        ),
        (3, 4),
    ),
}


PREPARED = {  # traced whole, the property under test: aot_eager only (inductor adds 15 s of code generation)
    "ODEBlock fixed steps of the prepared ODENet field": (
        lambda: ODEBlock(ODENetField(4, groups=2), 0.5, "rk4", step_size=0.25),
        (2, 4, 5, 5),
    ),
}
CASES.update(PREPARED)


@pytest.mark.parametrize(
    "name, backend",
    [
        (name, backend)
        for name in CASES
        for backend in ("aot_eager", "inductor")
        if name not in PREPARED or backend == "aot_eager"
    ],
)
def test_fullgraph_compile_matches_eager(name, backend):
    make, shape = CASES[name]
    torch.manual_seed(0)
    block = make().double()
    if name.startswith("fused"):
        assert block.fused
    x = torch.randn(*shape, dtype=D, requires_grad=True)
    weight = torch.randn(*shape, dtype=D)
    torch._dynamo.reset()
    compiled = torch.compile(block, fullgraph=True, backend=backend)
    results = []
    for model in (block, compiled):
        out = model(x)
        results.append((out, *torch.autograd.grad((out * weight).sum(), [x, *block.parameters()])))
        assert block.last_stats is not None and block.last_stats.nfe_forward > 0
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_counting_saved_tensors_adds_no_compilation_to_a_compiled_model():
    """A run's first batch counts the memory autograd saves (`SavedTensors`) in a compiled model
    whose adaptive block runs between its graphs: the count equals eager's, and its hook, which
    autograd calls there, is not compiled (it was, once per kind of tensor and address)."""
    torch.manual_seed(0)
    block = ODEBlock(ODENetField(4, groups=2), solver="dopri5", rtol=1e-3, atol=1e-3)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), block, nn.Flatten(), nn.Linear(4 * 25, 3))
    x = torch.randn(2, 1, 5, 5)
    with SavedTensors() as eager:
        model(x).sum().backward()
    frames = []
    for counted in (False, True):
        torch._dynamo.reset()
        counters.clear()
        compiled = torch.compile(model, backend="aot_eager")
        with SavedTensors() if counted else contextlib.nullcontext() as saved:
            compiled(x).sum().backward()
        frames.append(counters["frames"]["total"])
    assert saved.megabytes == eager.megabytes > 0 and frames[0] == frames[1] > 0


@pytest.mark.parametrize("mode", ["piecewise", "linear"])
def test_a_field_with_nodes_at_a_tensor_time_compiles_whole(mode):
    """In a compiled graph a tensor time is located on its device (`NodeField.located`; the CPU
    path's read-back would break the graph): the compiled field equals eager, derivative in t
    included."""
    field = HamiltonianField(4, n_nodes=3, dt=0.2, time_mode=mode).double()
    compiled = torch.compile(lambda t, y: field(t, y), fullgraph=True, backend="eager")
    y = torch.randn(3, 4, dtype=D)
    for s in (-0.1, 0.0, 0.1, 0.2, 0.33, 0.4, 0.7):
        outs = []
        for f in (field, compiled):
            t = torch.tensor(s, dtype=D, requires_grad=True)
            out = f(t, y)
            outs.append((out, *torch.autograd.grad(out.square().sum(), t, materialize_grads=True)))
        for a, b in zip(*outs):
            torch.testing.assert_close(a, b, rtol=1e-14, atol=1e-14)
