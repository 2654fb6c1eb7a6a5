"""The ResNet-vs-ODENet thesis's networks (its section 4.1), and a Hamiltonian one of the same shape.

Every network is three segments on 64 channels:

* downsampling: conv3x3(in, 64, stride 1, padding 0) -> GN -> ReLU -> conv4x4(64, 64, stride 2,
  padding 1) -> GN -> ReLU -> conv4x4(64, 64, stride 2, padding 1) (convs with bias);
* features: k full-pre-activation residual blocks (ResNet-k), one or more ODE blocks of the
  `ODENetField` (ODENet), or a Hamiltonian layer (contham's addition);
* classification: GN -> ReLU -> adaptive average pooling -> flatten -> Linear(64, classes).

GN is GroupNorm with ``min(32, C)`` groups.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from .._checks import check_choice, check_int, check_positive
from ..blocks import ODEBlock
from ..config import HamiltonianParameters
from ..fields import ODENetField
from ..gradients import Adjoint, get_gradient, gradient_names
from ..solvers import FixedStepSolver, get_solver
from .hamiltonian_net import make_block, make_field

CHANNELS = 64


def group_norm(channels: int) -> nn.GroupNorm:
    """GroupNorm with ``min(32, channels)`` groups."""
    return nn.GroupNorm(min(32, channels), channels)


def downsampling(in_channels: int, channels: int = CHANNELS) -> nn.Sequential:
    """The downsampling segment (a 28x28 image becomes 6x6, a 32x32 one 7x7)."""
    return nn.Sequential(
        nn.Conv2d(check_int("in_channels", in_channels), channels, 3, 1),
        group_norm(channels),
        nn.ReLU(inplace=True),
        nn.Conv2d(channels, channels, 4, 2, 1),
        group_norm(channels),
        nn.ReLU(inplace=True),
        nn.Conv2d(channels, channels, 4, 2, 1),
    )


def classification(num_classes: int, channels: int = CHANNELS) -> nn.Sequential:
    """The classification segment."""
    return nn.Sequential(
        group_norm(channels),
        nn.ReLU(inplace=True),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(channels, check_int("num_classes", num_classes)),
    )


class PreActBlock(nn.Module):
    """Full pre-activation residual block: ``x + conv(ReLU(GN(conv(ReLU(GN(x))))))``, 3x3 convs
    without bias."""

    def __init__(self, channels: int = CHANNELS):
        super().__init__()
        self.norm1 = group_norm(channels)
        self.conv1 = nn.Conv2d(channels, channels, 3, 1, 1, bias=False)
        self.norm2 = group_norm(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, 1, 1, bias=False)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv1(self.relu(self.norm1(x)))
        return x + self.conv2(self.relu(self.norm2(out)))


class ThesisNet(nn.Sequential):
    """``downsampling -> features -> classification`` (children of those names)."""

    def __init__(self, features: nn.Module, in_channels: int = 1, num_classes: int = 10):
        super().__init__()
        self.downsampling = downsampling(in_channels)
        self.features = features
        self.classification = classification(num_classes)


def thesis_resnet(k: int = 2, in_channels: int = 1, num_classes: int = 10) -> ThesisNet:
    """ResNet-k: k `PreActBlock` s."""
    blocks = [PreActBlock() for _ in range(check_int("k", k))]
    return ThesisNet(nn.Sequential(*blocks), in_channels, num_classes)


def thesis_odenet(
    in_channels: int = 1,
    num_classes: int = 10,
    *,
    n_ode_blocks: int = 1,
    activation: str = "relu",
    **ode: Any,
) -> ThesisNet:
    """ODENet: ``n_ode_blocks`` `ODEBlock` s of the ODENet field on [0, 1].

    ``ode``: the solver options of `ode_options`. The thesis used dopri5 with relative
    tolerance 1e-3 (and the same absolute tolerance, as Chen et al.'s code), with and without
    the adjoint method.
    """
    options = ode_options(**ode)
    blocks = [
        ODEBlock(ODENetField(CHANNELS, activation=activation), 1.0, **options)
        for _ in range(check_int("n_ode_blocks", n_ode_blocks))
    ]
    return ThesisNet(nn.Sequential(*blocks), in_channels, num_classes)


def thesis_hamiltonian(
    in_channels: int = 1,
    num_classes: int = 10,
    ham: HamiltonianParameters | None = None,
    *,
    continuous: bool = False,
    **ode: Any,
) -> ThesisNet:
    """The thesis's segments around a convolutional Hamiltonian layer of ``ham`` on 64 channels.

    Discrete (default): a `HamiltonianBlock` of ``ham.n_blocks`` steps of size
    ``ham.h``, exactly as in a unit of the report's network. Continuous: an
    `ODEBlock` of the same field with weights linear in t between its nodes
    (``t_j = j h``; the last node holds on ``[(n-1) h, n h]``), integrated over
    ``[0, n_blocks h]`` as ``ode`` says (`ode_options`). Both have the parameter count of
    the discrete layer: with the two-layer Hamiltonian that is ``n_blocks x 18,496``, so 8 blocks
    match ResNet-2's two residual blocks (147,968) exactly.
    """
    ham = HamiltonianParameters(n_blocks=8, h=0.125) if ham is None else ham
    if not continuous:
        if ode:
            raise ValueError(f"solver options ({', '.join(ode)}) apply to continuous=True only")
        return ThesisNet(make_block(ham, CHANNELS), in_channels, num_classes)
    field = make_field(ham, CHANNELS, time_mode="linear" if ham.n_blocks > 1 else None)
    return ThesisNet(ODEBlock(field, ham.n_blocks * ham.h, **ode_options(**ode)), in_channels, num_classes)


def ode_options(
    solver: str = "dopri5",
    rtol: float | None = 1e-3,
    atol: float | None = 1e-3,
    gradient: str = "backprop",
    step_size: float | None = None,
    adjoint_rtol: float | None = None,
    adjoint_atol: float | None = None,
    seminorm: bool = False,
) -> dict[str, Any]:
    """The keyword arguments of an `ODEBlock` of the thesis's networks.

    ``rtol``/``atol`` apply to adaptive solvers and are ignored by fixed-step ones (which take
    ``step_size``). ``gradient`` is a strategy name that serves ``solver``
    (`contham.gradients.gradient_names`: ``"backprop"``, ``"reversible"`` (McCallum & Foster's
    reversible scheme for Runge-Kutta methods), ``"adjoint"`` for the methods torchdiffeq has); with the adjoint,
    ``adjoint_rtol``/``adjoint_atol`` (default: the forward ones) are the backward solve's
    tolerances and ``seminorm`` turns on the seminorm (`Adjoint`).
    """
    check_choice("gradient", gradient, gradient_names(get_solver(solver)))
    for name, value in (("adjoint_rtol", adjoint_rtol), ("adjoint_atol", adjoint_atol)):
        if value is not None:
            check_positive(name, value)
    adjoint_only = {"adjoint_rtol": adjoint_rtol, "adjoint_atol": adjoint_atol, "seminorm": seminorm or None}
    if gradient != "adjoint" and any(v is not None for v in adjoint_only.values()):
        given = ", ".join(k for k, v in adjoint_only.items() if v is not None)
        raise ValueError(f"{given} apply to gradient='adjoint'; got gradient={gradient!r}")
    if isinstance(get_solver(solver), FixedStepSolver):
        rtol = atol = None
    chosen = Adjoint(adjoint_rtol, adjoint_atol, seminorm) if gradient == "adjoint" else get_gradient(gradient)
    return dict(solver=solver, rtol=rtol, atol=atol, gradient=chosen, step_size=step_size)
