"""integrate(): adaptive solvers respect weight jumps, adjoint equals direct backprop,
statistics, step limit, gradients, bad input."""

import math

import pytest
import torch

import contham
from contham import IntegrationError, ODEBlock, integrate
from contham.fields import AntisymmetricField, HamiltonianField, ODENetField, SymmetricField, TwoLayerField
from contham.solvers import TorchDiffEq

D = torch.float64


class Recorder(torch.nn.Module):
    """Records the time and the node used at every evaluation of a piecewise field."""

    def __init__(self, field):
        super().__init__()
        self.field, self.nodes, self.calls = field, field.nodes, []

    def forward(self, t, y):
        self.calls.append(float(t.detach()))
        return self.field(t, y)


@pytest.mark.parametrize(
    "method,tol", [("dopri5", 1e-10), ("dopri8", 1e-10), ("bosh3", 1e-10), ("fehlberg2", 1e-8), ("adaptive_heun", 1e-7)]
)
def test_adaptive_steps_stop_at_weight_jumps(method, tol):
    f = HamiltonianField(4, "J1", "tanh", n_nodes=4, dt=0.25).double()
    torch.nn.init.normal_(f.b)
    rec = Recorder(f)
    y0 = torch.randn(3, 4, dtype=D)
    y = integrate(rec, y0, [0.0, 1.0], method, rtol=tol, atol=tol / 100).y
    times = rec.calls
    for jump in f.nodes.jumps:
        # evaluated at the boundary from the left (just below) and from the right
        assert any(jump - 1e-12 < s < jump for s in times) and any(s == jump or jump < s < jump + 1e-12 for s in times)
    # reference: one constant-weight solve per node interval, chained
    ref = y0
    for j in range(4):
        g = HamiltonianField(4, "J1", "tanh").double()
        with torch.no_grad():
            g.K.copy_(f.K[j : j + 1])
            g.b.copy_(f.b[j : j + 1])
        ref = integrate(g, ref, [0.0, 0.25], "dopri5", rtol=1e-12, atol=1e-14).y
    assert torch.allclose(y, ref, atol=100 * tol)


def test_fixed_steps_align_with_jumps_and_outputs():
    f = HamiltonianField(4, "J1", n_nodes=3, dt=0.2).double()
    y0 = torch.randn(2, 4, dtype=D)
    sol = integrate(f, y0, [0.0, 0.3, 0.6], "rk4", step_size=0.07)
    # steps: [0, .2] in 3, [.2, .3] in 2, [.3, .4] in 2, [.4, .6] in 3
    assert sol.stats.steps_accepted == 10 and sol.stats.nfe_forward == 40
    ref = integrate(f, y0, [0.0, 0.3, 0.6], "dopri5", rtol=1e-12, atol=1e-14)
    assert torch.allclose(sol.ys, ref.ys, atol=1e-6)
    assert sol.ys.shape == (3, 2, 4) and torch.equal(sol.ys[0], y0)


def test_node_times_within_rounding_of_output_times_add_no_steps():
    f = HamiltonianField(4, "J1", n_nodes=6, dt=0.1).double()
    y0 = torch.randn(2, 4, dtype=D)
    sol = integrate(f, y0, [0.0, 0.3, 0.6], "euler")  # 3 * 0.1 == 0.30000000000000004
    assert sol.stats.steps_accepted == 6
    assert torch.allclose(sol.y, contham.HamiltonianBlock(f)(y0), atol=1e-14)


def params_grad(field, y0, **kw):
    field.zero_grad()
    y0 = y0.clone().requires_grad_(True)
    sol = integrate(field, y0, [0.0, 1.0], **kw)
    (sol.y**2).sum().backward()
    return torch.cat([p.grad.flatten() for p in field.parameters()] + [y0.grad.flatten()]), sol.stats


@pytest.mark.parametrize(
    "make,shape",
    [
        (lambda: HamiltonianField(4, "J2", "tanh", n_nodes=3, dt=1 / 3), (3, 4)),
        (lambda: TwoLayerField(4, "tanh", n_nodes=2, dt=0.5, time_mode="linear"), (3, 4)),
        (lambda: AntisymmetricField(3, "tanh", kernel_size=3, n_nodes=2, dt=0.5), (2, 3, 4, 4)),
    ],
)
def test_adjoint_equals_direct_backprop(make, shape):
    field = make().double()
    y0 = torch.randn(*shape, dtype=D)
    kw = dict(solver="dopri5", rtol=1e-11, atol=1e-12)
    direct, s1 = params_grad(field, y0, **kw)
    adjoint, s2 = params_grad(field, y0, gradient="adjoint", **kw)
    assert torch.allclose(adjoint, direct, rtol=1e-6, atol=1e-9 * direct.abs().max())
    assert s1.nfe_backward == s1.nfe_forward > 0
    assert s2.nfe_backward > 0 and s2.steps_accepted_backward > 0


def test_adjoint_on_smooth_odenet_field():
    # With ReLU (the thesis's choice) the field is non-smooth and the two gradients agree only to
    # ~1e-3; a smooth activation restores the agreement (docs/solvers.md).
    field = ODENetField(4, groups=2, activation="softplus").double()
    y0 = torch.randn(2, 4, 5, 5, dtype=D)
    kw = dict(solver="dopri5", rtol=1e-9, atol=1e-10)
    direct, _ = params_grad(field, y0, **kw)
    adjoint, stats = params_grad(field, y0, gradient="adjoint", **kw)
    assert torch.allclose(adjoint, direct, rtol=1e-6, atol=1e-7 * direct.abs().max())
    assert stats.nfe_backward > 0


def test_stats_of_fixed_and_adaptive_solvers():
    f = TwoLayerField(4, n_nodes=5, dt=0.2).double()
    y0 = torch.randn(2, 4, dtype=D, requires_grad=True)
    sol = integrate(f, y0, [0, 1], "verlet")
    assert (sol.stats.steps_accepted, sol.stats.nfe_forward, sol.stats.nfe_backward) == (5, 15, 15)
    with torch.no_grad():
        assert integrate(f, y0, [0, 1], "verlet").stats.nfe_backward == 0  # nothing to backpropagate
    g = HamiltonianField(4).double()
    s = integrate(g, y0.detach(), [0, 5], "dopri5", rtol=1e-9, atol=1e-9).stats
    assert s.steps_accepted > 0 and s.steps_rejected >= 0
    # dopri5: 2 evaluations to pick the first step, then 6 per attempted step (FSAL)
    assert s.nfe_forward == 2 + 6 * (s.steps_accepted + s.steps_rejected)


def test_step_limit_raises_instead_of_hanging():
    f = HamiltonianField(4).double()
    with torch.no_grad():
        f.K.mul_(30.0)  # fast oscillation: many steps at tight tolerance
    with pytest.raises(IntegrationError, match="max_nfe=50"):
        integrate(f, torch.randn(2, 4, dtype=D), [0, 10], "dopri5", rtol=1e-10, atol=1e-10, max_nfe=50)
    with pytest.raises(IntegrationError, match="max_nfe=10"):
        integrate(f, torch.randn(2, 4, dtype=D), [0, 10], "rk4", step_size=0.5, max_nfe=10)


@pytest.mark.parametrize(
    "make,shape",
    [
        (lambda: HamiltonianField(4, "J1", "tanh", n_nodes=2, dt=0.5), (2, 4)),
        (lambda: HamiltonianField(3, "J2", "sigmoid", kernel_size=3), (1, 3, 3, 3)),
        (lambda: TwoLayerField(4, "tanh", kernel_size=3, n_nodes=2, dt=0.5), (1, 4, 3, 3)),
        (lambda: contham.SeparableField(4, "tanh", n_nodes=2, dt=0.5, time_mode="linear"), (2, 4)),
        (lambda: SymmetricField(4, "tanh", n_nodes=2, dt=0.5), (2, 4)),
        (lambda: AntisymmetricField(4, "tanh", gamma=0.1, kernel_size=3), (1, 4, 3, 3)),
        (lambda: ODENetField(2, groups=1), (1, 2, 3, 3)),
    ],
)
def test_gradcheck_fields(make, shape):
    field = make().double()
    y = torch.randn(*shape, dtype=D, requires_grad=True)
    params = [p for p in field.parameters()]
    names = [n for n, _ in field.named_parameters()]

    def fn(y, *ps):
        return torch.func.functional_call(field, dict(zip(names, ps)), (0.3, y))

    assert torch.autograd.gradcheck(fn, (y, *params))


@pytest.mark.parametrize("bad", [[0.0, 0.0], [0.0, 1.0, 0.5], [0.0], [0.0, math.inf], "ab"])
def test_bad_times(bad):
    with pytest.raises(ValueError, match="t must"):
        integrate(HamiltonianField(4), torch.randn(2, 4), bad, "rk4")


def test_bad_input_errors():
    f = HamiltonianField(4)
    y = torch.randn(2, 4)
    cases = [
        (lambda: integrate(f, y, [0, 1], "runge"), "solver must be one of"),
        (lambda: integrate(f, torch.randn(2, 5), [0, 1], "rk4"), r"y must have shape \(batch, features\)"),
        (lambda: integrate(f, torch.randn(2, 4, 3, 3), [0, 1], "rk4"), "y must have shape"),
        (lambda: integrate(f, y.double(), [0, 1], "rk4"), "y must have the field's dtype"),
        (lambda: integrate(f, y.long(), [0, 1], "rk4"), "y must be a floating tensor"),
        (lambda: integrate(f, y * math.nan, [0, 1], "rk4"), "y0 must be finite"),
        (lambda: integrate(f, y, [0, 1], "rk4", step_size=-0.1), "step_size must be"),
        (lambda: integrate(f, y, [0, 1], "rk4", gradient="adjoint"), "gradient='adjoint' needs a torchdiffeq method"),
        (lambda: integrate(f, y, [0, 1], "dopri8", gradient="reversible"), "gradient='reversible' needs a split"),
        (lambda: integrate(f, y, [0, 1], "rk4", gradient="checkpoint"), "gradient must be one of"),
        (lambda: integrate(f, y, [0, 1], "rk4", rtol=1e-3), "rtol/atol apply to adaptive"),
        (lambda: integrate(f, y, [0, 1], "dopri5", rtol=-1.0), "rtol must be"),
        (lambda: integrate(HamiltonianField(4, n_nodes=2), y, [0, 2], TorchDiffEq("rk4")), "cannot align"),
        (lambda: HamiltonianField(5, "J1"), "features must be even"),
        (lambda: TwoLayerField(5), "features must be even"),
        (lambda: HamiltonianField(3, torch.ones(3, 3)), "J must be skew-symmetric"),
        (lambda: HamiltonianField(4, "J3"), "J must be one of 'J1', 'J2'"),
        (lambda: HamiltonianField(4, sigma="swish"), "sigma must be one of"),
        (lambda: HamiltonianField(4, n_nodes=3, dt=0.0), "dt must be"),
        (lambda: HamiltonianField(4, n_nodes=3, dt=-0.1), "dt must be"),
        (lambda: HamiltonianField(4, n_nodes=0), "n_nodes must be"),
        (lambda: HamiltonianField(4, n_nodes=2, time_mode="cubic"), "time_mode must be one of"),
        (lambda: HamiltonianField(4, kernel_size=2), "kernel_size must be odd"),
        (lambda: AntisymmetricField(4, gamma=-1), "gamma must be"),
        (lambda: contham.get_solver("verlet").__class__(first="x"), "first must be one of"),
        (lambda: ODENetField(4, activation="gelu"), "activation must be one of"),
        (lambda: ODENetField(6, groups=4), "groups must divide"),
    ]
    for call, message in cases:
        with pytest.raises(ValueError, match=message):
            call()


def test_a_block_reads_nothing_back_to_check_its_input(host_syncs):
    """``check_finite=False`` (as `ODEBlock` solves): a fixed-step solve makes no read-back to
    the host, and a non-finite y0 comes out non-finite instead of raising; `Solution.ts` is made
    only when read."""
    f, y = HamiltonianField(4), torch.randn(2, 4)
    with host_syncs() as syncs:
        solution = integrate(f, y * math.nan, [0, 1], "rk4", step_size=0.5, check_finite=False)
        out = ODEBlock(f, solver="rk4", step_size=0.5)(y * math.nan)
    assert syncs.calls == [] and solution.ys.isnan().all() and out.isnan().all()
    with host_syncs() as syncs:
        assert solution.ts.tolist() == [0.0, 1.0]
    assert [call.split(" at ")[0] for call in syncs.calls] == ["tensor"]
    with pytest.raises(ValueError, match="y0 must be finite"):  # an adaptive solve still checks, on the device
        ODEBlock(f, solver="dopri5")(y * math.nan)
