"""Weight smoothness regularisation equals the report's eq. A.1-A.3 written as loops."""

import pytest
import torch

from contham import HamiltonianField, TwoLayerField
from contham.models import build
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
