"""The report's Hamiltonian image classifier (figure 3.1), built from `NetworkParameters`."""

from __future__ import annotations

import math
from collections import OrderedDict

import torch.nn.functional as F
from torch import Tensor, nn

from .._checks import check_int
from ..blocks import HamiltonianBlock
from ..config import HamiltonianParameters, NetworkParameters
from ..fields import NodeField, field_entry


def make_field(ham: HamiltonianParameters, channels: int, time_mode: str | None = None) -> NodeField:
    """The convolutional field of ``ham.function`` on ``channels`` channels: ``n_blocks`` weight
    nodes ``dt = h`` apart (piecewise constant unless ``time_mode`` says otherwise), K of kernel
    size ``ks``, sigma ``act``, K and b initialised by ``ham.init`` (see `init_field`)."""
    ham.validate()
    layout = dict(kernel_size=ham.ks, n_nodes=ham.n_blocks, dt=ham.h, time_mode=time_mode)
    field = field_entry(ham.function).build(channels, sigma=ham.act.lower(), **layout)
    init_field(field, ham.init, channels)
    return field


def make_block(ham: HamiltonianParameters, channels: int) -> HamiltonianBlock:
    """The discrete Hamiltonian layer of a unit: ``n_blocks`` steps of ``ham.solver``."""
    return HamiltonianBlock(make_field(ham, channels), ham.solver, gradient=ham.gradient)


def init_field(field: NodeField, method: str, channels: int) -> None:
    """Initialise every node-axis weight and bias of ``field`` (report appendix A.2.3).

    "Zeros", "Ones", "Normal" (mean 0, std 0.01), or "Xavier": the report's (and Chang et al.'s)
    N(0, sigma^2) with ``sigma = sqrt(2 / (N ks^2))``, N = ``channels`` (eq. A.6).
    """
    ks = field.kernel_size or 1
    for weight in field.node_params():
        _init_tensor(weight, method, math.sqrt(2.0 / (channels * ks * ks)))


def init_layer(layer: nn.Conv2d | nn.Linear, method: str) -> None:
    """Initialise a conv or FC weight by the report's ``init`` (appendix A.2.2); bias to zero.
    "Xavier" is PyTorch's Xavier-uniform."""
    if method == "Xavier":
        nn.init.xavier_uniform_(layer.weight)
    else:
        _init_tensor(layer.weight, method, None)
    if layer.bias is not None:
        nn.init.zeros_(layer.bias)


def _init_tensor(tensor: Tensor, method: str, xavier_std: float | None) -> None:
    if method == "Zeros":
        nn.init.zeros_(tensor)
    elif method == "Ones":
        nn.init.ones_(tensor)
    elif method == "Normal":
        nn.init.normal_(tensor, 0.0, 0.01)
    elif method == "Xavier" and xavier_std is not None:
        nn.init.normal_(tensor, 0.0, xavier_std)
    else:
        raise ValueError(f"init must be one of 'Zeros', 'Ones', 'Normal', 'Xavier'; got {method!r}")


class ChannelPad(nn.Module):
    """Zero channels from ``channels_in`` up to ``channels_out``: after the existing ones, or
    half before and half after (``both_borders``, the report's "sandwich"; an odd extra one goes
    after)."""

    def __init__(self, channels_in: int, channels_out: int, both_borders: bool = False):
        super().__init__()
        extra = channels_out - channels_in
        if extra < 0:
            raise ValueError(f"channels_out must be >= channels_in ({channels_in}); got {channels_out}")
        self.before = extra // 2 if both_borders else 0
        self.after = extra - self.before

    def forward(self, x: Tensor) -> Tensor:
        return F.pad(x, (0, 0, 0, 0, self.before, self.after))

    def extra_repr(self) -> str:
        return f"before={self.before}, after={self.after}"


class HamiltonianNet(nn.Module):
    """The report's classifier: conv -> [batch norm] -> [dropout] -> units -> flatten ->
    [dropout] -> FC [-> FC].

    A unit ``units[i]`` is ``block`` (a `HamiltonianBlock` of
    ``ham_params.n_blocks`` steps on ``nb_features[i + 1]`` channels), ``pool`` (average or max)
    and, except in the last unit, ``pad`` (zero channels up to the next unit's width). With
    ``second_final_fc`` the classifier is two linear layers with nothing between them, as the
    report describes it.

    Args:
        params: the `NetworkParameters` (checked again here).
        num_classes: outputs of the classifier.
        image_size: side of the (square) input images; the FC layer's width depends on it.
    """

    def __init__(self, params: NetworkParameters, num_classes: int = 10, image_size: int = 32):
        super().__init__()
        params.validate()
        self.params = params
        check_int("num_classes", num_classes)
        size = _conv_size(check_int("image_size", image_size), params.ks_conv, params.strd_conv, params.pd_conv)
        widths = params.nb_features
        self.conv = nn.Conv2d(widths[0], widths[1], params.ks_conv, params.strd_conv, params.pd_conv)
        self.batchnorm = nn.BatchNorm2d(widths[1]) if params.batchnorm else nn.Identity()
        p_in, p_out = params.dropout if params.dropout is not None else (None, None)
        self.dropout_in = nn.Identity() if p_in is None else nn.Dropout(p_in)
        pool = nn.AvgPool2d if params.pooling == "Avg" else nn.MaxPool2d
        units = []
        for i, channels in enumerate(widths[1:]):
            unit: OrderedDict[str, nn.Module] = OrderedDict(
                block=make_block(params.ham_params, channels), pool=pool(params.ks_pool, params.strd_pool)
            )
            if i + 1 < params.nb_units:
                unit["pad"] = ChannelPad(channels, widths[i + 2], params.both_border_pad)
            units.append(nn.Sequential(unit))
            size = _conv_size(size, params.ks_pool, params.strd_pool, 0)
        if size < 1:
            raise ValueError(
                f"image_size={image_size} is too small for the first conv and {params.nb_units} poolings "
                f"(ks_pool={params.ks_pool}, strd_pool={params.strd_pool})"
            )
        self.units = nn.ModuleList(units)
        self.dropout_out = nn.Identity() if p_out is None else nn.Dropout(p_out)
        flat = widths[-1] * size * size
        self.fc: nn.Module
        if params.second_final_fc is None:
            self.fc = nn.Linear(flat, num_classes)
        else:
            self.fc = nn.Sequential(
                nn.Linear(flat, params.second_final_fc), nn.Linear(params.second_final_fc, num_classes)
            )
        for layer in self.modules():
            if isinstance(layer, (nn.Conv2d, nn.Linear)):
                init_layer(layer, params.init)

    def features(self, x: Tensor) -> Tensor:
        """The output of the last unit."""
        x = self.dropout_in(self.batchnorm(self.conv(x)))
        for unit in self.units:
            x = unit(x)
        return x

    def forward(self, x: Tensor) -> Tensor:
        """Class scores (logits)."""
        return self.fc(self.dropout_out(self.features(x).flatten(1)))


def _conv_size(size: int, kernel: int, stride: int, padding: int) -> int:
    return (size + 2 * padding - kernel) // stride + 1
