"""``torch.compile(..., fullgraph=True)``: forward and backward equal eager for the block paths
(one adaptive step of the Runge-Kutta engine: tests/test_runge_kutta.py)."""

import pytest
import torch

from contham import HamiltonianBlock, HamiltonianField, ODEBlock, TwoLayerField
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


@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
@pytest.mark.parametrize("name", CASES)
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
