"""Weight smoothness regularisation equals the report's eq. A.1-A.3 written as loops, and with
``of="K"`` the H-DNN papers' regularisation of their K."""

import pytest
import torch

from contham import HamiltonianField, TwoLayerField
from contham.fields import AntisymmetricField, SymmetricField
from contham.fields.base import linear_op, linear_op_t
from contham.models import build
from contham.models.hdnn import FUNCTIONS, HDNN2d
from contham.regularization import smoothness


def written(model, alpha, b_in_reg, h_div):
    """Eq. A.1-A.3: alpha * h~ * sum over units, over j, over each weight, of squared differences."""
    total = 0.0
    for unit in model.units:
        field = unit.block.field
        h = field.nodes.dt
        h_tilde = 1 / h if h_div else h
        for name in field.node_names:
            if name.startswith("b") and not b_in_reg:
                continue
            weight = getattr(field, name)
            for j in range(1, field.nodes.n):
                total += h_tilde * ((weight[j] - weight[j - 1]) ** 2).sum()
    return alpha * total


@pytest.mark.parametrize("name", ["nominal", "j1_relu_reduced"])
@pytest.mark.parametrize("b_in_reg", [True, False])
@pytest.mark.parametrize("h_div", [True, False])
def test_smoothness_equals_written_sum(name, b_in_reg, h_div):
    model = build(name).double()
    for unit in model.units:  # non-zero biases so that R(b) matters
        for bias in unit.block.field.bias_names:
            getattr(unit.block.field, bias).data.normal_()
    got = smoothness(model, 2e-4, b_in_reg=b_in_reg, h_div=h_div)
    torch.testing.assert_close(got, written(model, 2e-4, b_in_reg, h_div), rtol=1e-12, atol=0)


def test_b_and_h_change_the_value():
    model = build("nominal").double()
    for unit in model.units:
        unit.block.field.b1.data.normal_()
    with_b = smoothness(model, b_in_reg=True)
    assert with_b > smoothness(model, b_in_reg=False)
    # h = 0.2: dividing by h instead of multiplying scales the penalty by 1 / h^2 = 25
    torch.testing.assert_close(smoothness(model, h_div=True), 25 * with_b)


def test_constant_weights_cost_nothing_and_gradient_pulls_nodes_together():
    field = TwoLayerField(4, kernel_size=3, n_nodes=5, dt=0.1)
    for name in field.node_names:
        getattr(field, name).data[:] = getattr(field, name).data[0]
    assert smoothness(field) == 0
    field = HamiltonianField(3, "J2", n_nodes=2, dt=0.5)
    penalty = smoothness(field, alpha=1.0)
    penalty.backward()
    torch.testing.assert_close(field.K.grad[0], -field.K.grad[1])
    torch.testing.assert_close(field.K.grad[1], 2 * 0.5 * (field.K[1] - field.K[0]).detach())


def test_models_without_node_fields_and_bad_arguments():
    assert smoothness(build("resnet20")) == 0
    assert smoothness(HamiltonianField(4, n_nodes=1)) == 0
    with pytest.raises(ValueError, match="alpha must be a finite number >= 0"):
        smoothness(build("chang"), alpha=-1.0)
    with pytest.raises(ValueError, match="h_div must be True or False"):
        smoothness(build("chang"), h_div="yes")


def papers_K(field):
    """The K and b of the H-DNN papers' form J K^T sigma(K y + b), node by node, written out from
    the field's parameters in the layout of the papers' code (its networks' getK and getb)."""
    name = type(field).__name__
    if name == "SymmetricField":  # MS1: [[0, K0], [-K0^T, 0]]
        zero = torch.zeros_like(field.K0)
        K = torch.cat((torch.cat((zero, field.K0), 2), torch.cat((-field.K0.transpose(1, 2), zero), 2)), 1)
        return K, field.b
    if name == "AntisymmetricField":  # MS2: W - W^T
        return field.W - field.W.transpose(1, 2), field.b
    if name == "TwoLayerField":  # MS3: [[0, K1], [K2, 0]]
        zero = torch.zeros_like(field.K1)
        return torch.cat((torch.cat((zero, field.K1), 2), torch.cat((field.K2, zero), 2)), 1), torch.cat(
            (field.b1, field.b2), 1
        )
    if name == "SeparableField":  # H2: [[Kp, 0], [0, Kq]]
        zero = torch.zeros_like(field.Kp)
        return torch.cat((torch.cat((field.Kp, zero), 2), torch.cat((zero, field.Kq), 2)), 1), torch.cat(
            (field.bp, field.bq), 1
        )
    return field.K, field.b  # H1


def papers_regularization(alpha, h, K, b):
    """The papers' code's regularization: alpha h sum_j (||K_j+1 - K_j||^2 + ||b_j+1 - b_j||^2) / 2."""
    return sum(alpha * h * (0.5 * (K[j + 1] - K[j]).square().sum() + 0.5 * (b[j + 1] - b[j]).square().sum())
               for j in range(len(K) - 1))  # fmt: skip


@pytest.mark.parametrize("function", list(FUNCTIONS))
def test_smoothness_of_K_is_the_papers_regularization(function):
    model = HDNN2d(nf=6, n_layers=5, t_end=1.0, function=function).double()
    field = model.block.field
    for name in field.bias_names:
        getattr(field, name).data.normal_()
    K, b = papers_K(field)
    expected = papers_regularization(5e-4, 0.2, K, b)  # contham's alpha is half the papers' (no 1/2)
    torch.testing.assert_close(smoothness(model, 2.5e-4, of="K"), expected, rtol=1e-12, atol=0)
    by_parameters = smoothness(model, 2.5e-4, of="parameters")
    # only MS1 (K0 twice) and MS2 (W - W^T) have a K that is not their parameters
    assert (abs(by_parameters - expected) > 1e-3 * expected) == (function in ("MS1", "MS2"))


@pytest.mark.parametrize("kernel_size", [None, 3])
def test_equation_weights_are_the_operators_of_the_fields(kernel_size):
    torch.manual_seed(0)
    y = torch.randn(2, 4) if kernel_size is None else torch.randn(2, 4, 5, 5)
    antisymmetric = AntisymmetricField(4, kernel_size=kernel_size, n_nodes=3)
    (_, K), _ = antisymmetric.equation_weights()
    W = antisymmetric.W[1]
    torch.testing.assert_close(linear_op(K[1], y), linear_op(W, y) - linear_op_t(W, y))
    symmetric = SymmetricField(4, kernel_size=kernel_size, n_nodes=3)
    (_, K0), (_, lower), _ = symmetric.equation_weights()
    z = y[:, :2]
    torch.testing.assert_close(K0, symmetric.K0)
    torch.testing.assert_close(linear_op(lower[2], z), -linear_op_t(symmetric.K0[2], z))
    with pytest.raises(ValueError, match="of must be one of 'parameters', 'K'; got 'k'"):
        smoothness(symmetric, of="k")
