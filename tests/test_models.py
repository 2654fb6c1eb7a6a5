"""Networks: exact parameter counts, the report's network against its written equations, shapes,
modes, state dicts, initialisations and the registry's errors."""

import math

import pytest
import torch
import torch.nn.functional as F

from contham.blocks import collect_stats
from contham.config import HamiltonianParameters, NetworkParameters
from contham.data import input_shape
from contham.models import (
    ChannelPad,
    HamiltonianNet,
    available,
    build,
    count_parameters,
    default_data,
    describe,
    make_field,
)

D = torch.float64

REPORT_COUNTS = {
    "chang": 497_002,
    "nominal": 497_066,
    "nominal_fc100": 659_446,
    "nominal_ks1": 73_130,
    "nominal_ks5": 1_344_938,
    "nominal_2units": 497_738,
    "nominal_4units": 783_458,
    "nominal_18blocks": 1_453_418,
    "j1_relu": 973_994,
    "j1_tanh": 973_994,
    "j2": 973_994,
    "j2_tanh": 973_994,
    "j1_relu_reduced": 485_130,
    "j1_tanh_reduced": 485_130,
    "j2_reduced": 485_130,
}
RESNET_COUNTS = {20: 269_722, 32: 464_154, 44: 658_586, 56: 853_018, 110: 1_727_962, 1202: 19_421_274}
THESIS_COUNTS = [  # (name, in_channels, num_classes, overrides, count): thesis section 5
    ("thesis_resnet2", 1, 10, {}, 280_842),
    ("thesis_resnet4", 1, 10, {}, 428_810),
    ("thesis_resnet8", 1, 10, {}, 724_746),
    ("thesis_resnet4", 3, 10, {}, 429_962),
    ("thesis_resnet8", 3, 10, {}, 725_898),
    ("thesis_resnet4", 3, 100, {}, 435_812),
    ("thesis_resnet8", 3, 100, {}, 731_748),
    ("thesis_resnet2", 1, 10, {"k": 4}, 428_810),
    ("thesis_odenet", 1, 10, {}, 208_266),
    ("thesis_odenet", 3, 10, {}, 209_418),
    ("thesis_odenet", 3, 100, {}, 215_268),
    ("thesis_odenet", 1, 10, {"n_ode_blocks": 2}, 283_658),
    ("thesis_hamiltonian", 1, 10, {}, 280_842),  # = ResNet-2: 8 two-layer blocks of 18,496
    ("thesis_hamiltonian_ode", 1, 10, {}, 280_842),
    ("thesis_hamiltonian", 1, 10, {"function": "J1", "n_blocks": 2}, 132_096 + 2 * 36_928 + 778),
]


@pytest.mark.parametrize("name, count", REPORT_COUNTS.items())
def test_report_parameter_counts(name, count):
    assert count_parameters(build(name)) == count


@pytest.mark.parametrize("depth, count", RESNET_COUNTS.items())
def test_cifar_resnet_parameter_counts(depth, count):
    assert count_parameters(build(f"resnet{depth}")) == count


@pytest.mark.parametrize("name, in_channels, num_classes, overrides, count", THESIS_COUNTS)
def test_thesis_parameter_counts(name, in_channels, num_classes, overrides, count):
    model = build(name, in_channels=in_channels, num_classes=num_classes, **overrides)
    assert count_parameters(model) == count


def test_registry_covers_every_family():
    assert set(REPORT_COUNTS) == set(available("report"))
    assert available("cifar_resnet") == [f"resnet{d}" for d in RESNET_COUNTS]
    assert {n for n, *_ in THESIS_COUNTS} == set(available("thesis"))
    assert available("hdnn") == ["hdnn_2d", "hdnn_mnist"]
    assert len(available()) == len(REPORT_COUNTS) + len(RESNET_COUNTS) + len(available("thesis")) + 2


SHAPE_NAMES = ["nominal", "j2_reduced", "nominal_fc100", "resnet20", "thesis_resnet2", "thesis_odenet"]
SHAPE_NAMES += ["thesis_hamiltonian", "thesis_hamiltonian_ode"]


@pytest.mark.parametrize("name", SHAPE_NAMES)
@pytest.mark.parametrize("shape, num_classes", [((1, 28, 28), 10), ((3, 32, 32), 100), ((3, 96, 96), 10)])
def test_forward_shapes(name, shape, num_classes):
    model = build(name, in_channels=shape[0], num_classes=num_classes, image_size=shape[1])
    out = model(torch.randn(2, *shape))
    assert out.shape == (2, num_classes) and torch.isfinite(out).all()


def lin(K, x, b=None):
    return F.conv2d(x, K, b, padding=K.shape[-1] // 2)


def lin_t(K, x):
    return F.conv_transpose2d(x, K, padding=K.shape[-1] // 2)


def written_unit(field, function, h, x):
    """The report's Hamiltonian layer, step by step (eq. 2.16 with Chang et al.'s sign, eq. 2.21)."""
    for j in range(field.nodes.n):
        if function == "TwoLayersHam":
            K1, b1, K2, b2 = field.node(j)
            y, z = x.chunk(2, dim=1)
            y = y + h * lin_t(K1, F.relu(lin(K1, z, b1)))
            z = z - h * lin_t(K2, F.relu(lin(K2, y, b2)))
            x = torch.cat((y, z), dim=1)
        else:
            K, b = field.node(j)
            g = lin_t(K, F.relu(lin(K, x, b)))
            n = x.shape[1]
            if function == "J1":
                J = torch.zeros(n, n, dtype=D)
                J[: n // 2, n // 2 :] = torch.eye(n // 2)
                J[n // 2 :, : n // 2] = -torch.eye(n // 2)
            else:
                J = torch.triu(torch.ones(n, n, dtype=D), 1) - torch.tril(torch.ones(n, n, dtype=D), -1)
            x = x + h * torch.einsum("ij,bjhw->bihw", J, g)
    return x


@pytest.mark.parametrize("function", ["TwoLayersHam", "J1", "J2"])
@pytest.mark.parametrize("pooling, both_border_pad", [("Avg", True), ("Max", False)])
def test_network_equals_written_equations(function, pooling, both_border_pad):
    ham = HamiltonianParameters(function, n_blocks=2, ks=3, h=0.3)
    params = NetworkParameters(
        ham, nb_units=2, nb_features=[3, 4, 8], pooling=pooling, batchnorm=True,
        both_border_pad=both_border_pad, dropout=[0.1, 0.2], second_final_fc=5,
    )  # fmt: skip
    net = HamiltonianNet(params, num_classes=3, image_size=8).double().eval()
    bn = net.batchnorm
    bn.running_mean.uniform_(-1, 1), bn.running_var.uniform_(0.5, 2), bn.weight.data.uniform_(0.5, 2)
    bn.bias.data.uniform_(-1, 1)
    x = torch.randn(2, 3, 8, 8, dtype=D)

    out = F.conv2d(x, net.conv.weight, net.conv.bias, stride=1, padding=1)
    out = (out - bn.running_mean[:, None, None]) / torch.sqrt(bn.running_var[:, None, None] + bn.eps)
    out = out * bn.weight[:, None, None] + bn.bias[:, None, None]
    pool = F.avg_pool2d if pooling == "Avg" else F.max_pool2d
    for i, unit in enumerate(net.units):
        out = pool(written_unit(unit.block.field, function, 0.3, out), 2, 2)
        if i == 0:  # 4 new zero channels: 2 before and 2 after ("sandwich"), or all 4 after
            zeros = torch.zeros(2, 2, 4, 4, dtype=D)
            parts = (zeros, out, zeros) if both_border_pad else (out, zeros, zeros)
            out = torch.cat(parts, dim=1)
    fc1, fc2 = net.fc
    expected = fc2(fc1(out.flatten(1)))  # two FC layers with nothing between (report A.2.2.3)
    torch.testing.assert_close(net(x), expected, rtol=1e-12, atol=1e-12)


def test_channel_pad():
    x = torch.randn(2, 3, 4, 4)
    both = ChannelPad(3, 8, both_borders=True)(x)
    assert both.shape == (2, 8, 4, 4) and torch.equal(both[:, 2:5], x)
    assert both[:, :2].abs().sum() == 0 and both[:, 5:].abs().sum() == 0
    after = ChannelPad(3, 8)(x)
    assert torch.equal(after[:, :3], x) and after[:, 3:].abs().sum() == 0
    with pytest.raises(ValueError, match="channels_out must be >= channels_in"):
        ChannelPad(4, 3)


def test_units_layout_and_no_padding_after_the_last_unit():
    net = build("nominal_4units")
    assert [u.block.field.features for u in net.units] == [36, 70, 100, 112]
    assert [hasattr(u, "pad") for u in net.units] == [True, True, True, False]
    assert [(u.pad.before, u.pad.after) for u in net.units[:3]] == [(17, 17), (15, 15), (6, 6)]
    assert all(u.block.n_steps == 6 and u.block.h == 0.2 for u in net.units)
    assert net.units[0].block.solver.name == "symplectic_euler"
    assert build("j1_relu").units[0].block.solver.name == "euler"
    assert build("chang").units[0].pad.before == 0


def test_train_and_eval_modes():
    net = build("nominal")
    x = torch.randn(4, 3, 32, 32)
    net.eval()
    with torch.no_grad():
        assert torch.equal(net(x), net(x))
        running = net.batchnorm.running_mean.clone()
        net(x)
    assert torch.equal(net.batchnorm.running_mean, running)
    net.train()
    assert not torch.equal(net(x), net(x))  # dropout [0.1, 0.2]
    assert not torch.equal(net.batchnorm.running_mean, running)


@pytest.mark.parametrize("name", ["nominal", "resnet20", "thesis_resnet2", "thesis_odenet", "thesis_hamiltonian"])
def test_state_dict_round_trip(name):
    torch.manual_seed(1)
    a = build(name).eval()
    torch.manual_seed(2)
    b = build(name).eval()
    x = own_input(name)
    assert not torch.allclose(a(x), b(x))
    b.load_state_dict(a.state_dict())
    torch.testing.assert_close(b(x), a(x), rtol=0, atol=0)


@pytest.mark.parametrize("name", ["nominal", "j2_reduced", "thesis_hamiltonian", "thesis_hamiltonian_ode", "chang"])
def test_channels_last_idiom_converts_every_node_kernel(name):
    """``model.to(memory_format=torch.channels_last)`` works on the networks with node-stacked
    conv weights, puts each node's kernel in NHWC layout and leaves outputs and gradients as they
    were."""
    torch.manual_seed(0)
    a = build(name).eval()
    b = build(name).eval()
    b.load_state_dict(a.state_dict())
    assert b.to(memory_format=torch.channels_last) is b
    stacks = [p for p in b.parameters() if p.dim() == 5]
    assert stacks and all(k.is_contiguous(memory_format=torch.channels_last) for p in stacks for k in p)
    x = own_input(name)
    torch.testing.assert_close(b(x.contiguous(memory_format=torch.channels_last)), a(x))
    for model in (a, b):
        model(x).square().sum().backward()
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-4, atol=1e-5)


def own_input(name, batch=2):
    """A random batch of the data network ``name`` is built for by default."""
    shape = input_shape(*default_data(name))
    if shape["image_size"] == 1:
        return torch.randn(batch, shape["in_channels"])
    return torch.randn(batch, shape["in_channels"], shape["image_size"], shape["image_size"])


@pytest.mark.parametrize("name", ["hdnn_2d", "hdnn_mnist", "thesis_resnet4", "thesis_hamiltonian_ode", "nominal",
                                  "resnet32"])  # fmt: skip
def test_build_with_no_shape_arguments_builds_each_network_for_its_own_data(name):
    dataset, preprocessing = default_data(name)
    net = build(name).eval()
    out = net(own_input(name, batch=3))
    assert out.shape == (3, input_shape(dataset, preprocessing)["num_classes"])
    family_data = {"hdnn_2d": "swiss_roll", "hdnn_mnist": "mnist", "thesis_resnet4": "mnist",
                   "thesis_hamiltonian_ode": "mnist", "nominal": "cifar10", "resnet32": "cifar10"}  # fmt: skip
    assert dataset == family_data[name]
    assert input_shape("swiss_roll") == dict(in_channels=2, num_classes=2, image_size=1)
    with pytest.raises(ValueError, match="in_channels must be an integer >= 1; got 0"):  # the name the user wrote
        build(name, in_channels=0)
    assert input_shape("mnist", "thesis")["image_size"] == 28 and input_shape("cifar10")["in_channels"] == 3


def test_hamiltonian_inits():
    ham = HamiltonianParameters("TwoLayersHam", n_blocks=6, ks=3)
    field = make_field(ham, 112)
    expected = math.sqrt(2 / (112 * 9))  # report eq. A.6, N = the unit's channels
    for name in ("K1", "b1", "K2", "b2"):
        std = getattr(field, name).std().item()
        tolerance = 0.02 if name.startswith("K") else 0.15  # b has only 6 x 56 entries
        assert abs(std / expected - 1) < tolerance, (name, std, expected)
    for init, check in [("Zeros", lambda t: t.eq(0).all()), ("Ones", lambda t: t.eq(1).all())]:
        f = make_field(HamiltonianParameters(init=init), 8)
        assert all(check(getattr(f, n)) for n in f.node_names)
    normal = make_field(HamiltonianParameters("J1", n_blocks=6, init="Normal"), 112)
    assert abs(normal.K.std().item() / 0.01 - 1) < 0.01


def test_network_inits():
    for init, check in [("Zeros", lambda w: w.eq(0).all()), ("Ones", lambda w: w.eq(1).all())]:
        net = build("nominal", init=init)
        assert check(net.conv.weight) and check(net.fc.weight) and net.conv.bias.eq(0).all()
        assert check(net.units[0].block.field.K1)  # "init" sets K and b too, as in the report
    net = build("chang")
    bound = math.sqrt(6 / (112 * 16 + 10))  # Xavier-uniform bound of the FC layer
    assert net.fc.weight.abs().max() <= bound and net.fc.weight.abs().max() > 0.9 * bound
    normal = build("nominal", init="Normal")
    assert abs(normal.fc.weight.std().item() / 0.01 - 1) < 0.02


def test_overrides_reach_the_network():
    net = build("nominal", ks=5, h=0.1, act="tanh", n_blocks=2, pooling="max", in_channels=1, image_size=28)
    block = net.units[0].block
    assert (
        block.field.kernel_size == 5 and block.h == 0.1 and block.n_steps == 2 and block.field.activation.name == "tanh"
    )
    assert isinstance(net.units[0].pool, torch.nn.MaxPool2d) and net.conv.in_channels == 1
    assert net.fc.in_features == 112 * 3 * 3  # 28 -> 14 -> 7 -> 3
    ode = build("thesis_hamiltonian_ode", rtol=1e-5, solver="bosh3", gradient="adjoint")
    assert ode.features.solver.name == "bosh3" and ode.features.solver.rtol == 1e-5
    assert ode.features.t[1] == pytest.approx(8 * 0.125) and ode.features.field.nodes.mode == "linear"


def test_odenet_reports_nfe_forward_and_backward():
    model = build("thesis_odenet", in_channels=1, gradient="adjoint")
    loss = model(torch.randn(2, 1, 28, 28)).sum()
    (stats,) = collect_stats(model)
    assert stats.solver == "dopri5" and stats.nfe_forward > 0 and stats.nfe_backward == 0
    loss.backward()
    assert stats.nfe_backward > 0
    assert all(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: build("resnet21"), "name must be one of 'chang'"),
        (lambda: build("nominal", kss=3), "unknown override.*'kss'.*allowed: nb_units"),
        (lambda: build("resnet20", k=3), "unknown override.*allowed: none"),
        (lambda: build("nominal", image_size=4), "image_size=4 is too small"),
        (lambda: build("nominal", nb_features=[3, 64, 32, 112]), "nb_features must not decrease"),
        (lambda: build("thesis_resnet2", k=0), "k must be an integer >= 1"),
        (lambda: build("thesis_hamiltonian", function="J1", solver="verlet"), "needs a split Hamiltonian"),
        (lambda: build("thesis_odenet", solver="rk45"), "solver must be one of"),
        (lambda: build("nominal", num_classes=0), "num_classes must be an integer >= 1"),
        (lambda: available("vit"), "family must be one of 'cifar_resnet', 'hdnn', 'report', 'thesis'"),
    ],
)
def test_bad_builds_raise(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_describe_and_mutated_parameters_are_checked():
    assert "overrides: n_ode_blocks" in describe("thesis_odenet").lower()
    params = NetworkParameters()
    params.nb_units = 4  # mutated behind the dataclass's back: the network checks again
    with pytest.raises(ValueError, match="nb_features must have nb_units"):
        HamiltonianNet(params)
