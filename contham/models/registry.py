"""Every network by name: `build`, `available`, `count_parameters`.

Families:

* ``report``: the report's Hamiltonian classifiers (`.presets`), `HamiltonianNet`.
* ``cifar_resnet``: He et al.'s ``resnet20`` ... ``resnet1202`` (`CifarResNet`).
* ``hdnn``: Galimberti et al.'s H-DNNs, ``hdnn_2d`` (2-D benchmarks) and ``hdnn_mnist``
  (`.hdnn`).
* ``thesis``: the thesis's ``thesis_resnet2/4/8``, ``thesis_odenet``, and the same segments around
  a Hamiltonian layer, ``thesis_hamiltonian`` (discrete) and ``thesis_hamiltonian_ode``.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable
from typing import Any

from torch import nn

from .._checks import check_int
from ..config import HamiltonianParameters, NetworkParameters
from ..data import input_shape
from .hamiltonian_net import HamiltonianNet
from .hdnn import HDNN2d, HDNNMnist
from .presets import PRESETS, preset
from .resnet import CifarResNet
from .thesis import ode_options, thesis_hamiltonian, thesis_odenet, thesis_resnet

_HAM_FIELDS = tuple(f.name for f in dataclasses.fields(HamiltonianParameters))
_NET_FIELDS = tuple(f.name for f in dataclasses.fields(NetworkParameters) if f.name != "ham_params")
_ODE_OPTIONS = tuple(inspect.signature(ode_options).parameters)


@dataclasses.dataclass(frozen=True)
class _Entry:
    family: str
    description: str
    options: tuple[str, ...]
    make: Callable[..., nn.Module]
    dataset: str  # the data of the network's paper: build() shapes it for this by default
    preprocessing: str = "report"


def _keyword_options(cls: Callable[..., nn.Module]) -> tuple[str, ...]:
    """The keyword-only options of a network class (its shape arguments come first)."""
    parameters = inspect.signature(cls).parameters.values()
    return tuple(p.name for p in parameters if p.kind is inspect.Parameter.KEYWORD_ONLY)


def _report(name: str, in_channels: int, num_classes: int, image_size: int, **overrides: Any) -> nn.Module:
    network = preset(name).network
    ham = {k: v for k, v in overrides.items() if k in _HAM_FIELDS and k != "init"}
    net = {k: v for k, v in overrides.items() if k in _NET_FIELDS}
    if "init" in overrides:  # as in the report's "init" experiments: conv, FC, K and b alike
        ham["init"] = overrides["init"]
    features = net.pop("nb_features", network.nb_features)
    if not isinstance(features, (list, tuple)):
        raise ValueError(f"nb_features must be a list of integers (channels per unit); got {features!r}")
    features = list(features)
    features[0] = in_channels
    network = dataclasses.replace(
        network, ham_params=dataclasses.replace(network.ham_params, **ham), nb_features=features, **net
    )
    return HamiltonianNet(network, num_classes, image_size)


def _thesis_ham(continuous: bool) -> Callable[..., nn.Module]:
    def make(in_channels: int, num_classes: int, image_size: int, **overrides: Any) -> nn.Module:
        ode = {k: overrides.pop(k) for k in _ODE_OPTIONS if continuous and k in overrides}
        defaults = dict(n_blocks=8, h=0.125, act="Tanh" if continuous else "ReLU")
        ham = HamiltonianParameters(**{**defaults, **overrides})
        return thesis_hamiltonian(in_channels, num_classes, ham, continuous=continuous, **ode)

    return make


def _ignore_size(make: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    return lambda in_channels, num_classes, image_size, **overrides: make(
        in_channels=in_channels, num_classes=num_classes, **overrides
    )


_REGISTRY: dict[str, _Entry] = {}
for _name in PRESETS:
    _REGISTRY[_name] = _Entry(
        "report",
        f"report preset {_name!r} (HamiltonianNet)",
        (*_NET_FIELDS, *(f for f in _HAM_FIELDS if f not in _NET_FIELDS)),
        lambda *args, _n=_name, **kw: _report(_n, *args, **kw),
        "cifar10",
    )
for _depth in (20, 32, 44, 56, 110, 1202):
    _REGISTRY[f"resnet{_depth}"] = _Entry(
        "cifar_resnet",
        f"He et al.'s CIFAR ResNet-{_depth}, option-A shortcuts",
        (),
        _ignore_size(lambda _d=_depth, **kw: CifarResNet(_d, **kw)),
        "cifar10",
    )
for _k in (2, 4, 8):
    _REGISTRY[f"thesis_resnet{_k}"] = _Entry(
        "thesis",
        f"the thesis's ResNet-{_k}: {_k} pre-activation residual blocks",
        ("k",),
        _ignore_size(lambda _k=_k, **kw: thesis_resnet(**{"k": _k, **kw})),
        "mnist",
        "thesis",
    )
_REGISTRY["thesis_odenet"] = _Entry(
    "thesis",
    "the thesis's ODENet: ODE block(s) of the ODENet field, dopri5 rtol=atol=1e-3",
    ("n_ode_blocks", "activation", *_ODE_OPTIONS),
    _ignore_size(thesis_odenet),
    "mnist",
    "thesis",
)
_REGISTRY["thesis_hamiltonian"] = _Entry(
    "thesis",
    "thesis segments around a discrete two-layer Hamiltonian layer (8 blocks, h=0.125: ResNet-2's size)",
    _HAM_FIELDS,
    _thesis_ham(False),
    "mnist",
    "thesis",
)
_REGISTRY["thesis_hamiltonian_ode"] = _Entry(
    "thesis",
    "thesis segments around an ODE block of a two-layer Hamiltonian field (tanh, weights linear in t)",
    (*(f for f in _HAM_FIELDS if f not in ("solver", "gradient")), *_ODE_OPTIONS),
    _thesis_ham(True),
    "mnist",
    "thesis",
)


_REGISTRY["hdnn_2d"] = _Entry(
    "hdnn",
    "Galimberti et al.'s 2-D H-DNN: points embedded into nf features, n_layers H-DNN layers to t_end, "
    "linear classifier",
    _keyword_options(HDNN2d),
    lambda in_channels, num_classes, image_size, **kw: HDNN2d(in_channels, num_classes, **kw),
    "swiss_roll",
    "plain",
)
_REGISTRY["hdnn_mnist"] = _Entry(
    "hdnn",
    "Galimberti et al.'s MNIST H-DNN: conv3x3 to nf channels, a per-pixel H-DNN, FC to the classes",
    _keyword_options(HDNNMnist),
    HDNNMnist,
    "mnist",
    "plain",
)


def available(family: str | None = None) -> list[str]:
    """Names `build` accepts, optionally of one family ("report", "cifar_resnet", "thesis")."""
    families = sorted({e.family for e in _REGISTRY.values()})
    if family is not None and family not in families:
        raise ValueError(f"family must be one of {', '.join(map(repr, families))}; got {family!r}")
    return [name for name, e in _REGISTRY.items() if family in (None, e.family)]


def describe(name: str) -> str:
    """One line on network ``name`` and the overrides it accepts."""
    entry = _entry(name)
    options = ", ".join(entry.options) or "none"
    return f"{name} [{entry.family}]: {entry.description}. Overrides: {options}"


def options(name: str) -> tuple[str, ...]:
    """The override names `build` accepts for network ``name``."""
    return _entry(name).options


def default_data(name: str) -> tuple[str, str]:
    """The dataset and preprocessing network ``name`` is built for by default: its paper's
    (CIFAR-10 for the report's networks and He et al.'s, MNIST for the thesis's and the MNIST
    H-DNN, the Swiss roll for the 2-D H-DNN)."""
    entry = _entry(name)
    return entry.dataset, entry.preprocessing


def build(
    name: str,
    *,
    in_channels: int | None = None,
    num_classes: int | None = None,
    image_size: int | None = None,
    **overrides: Any,
) -> nn.Module:
    """The network ``name`` (see `available`) for ``in_channels``-channel square images of
    side ``image_size`` (only the report's networks depend on it) and ``num_classes`` classes.
    Each shape argument left out is that of the network's own data (`default_data`):
    ``build("hdnn_2d")`` takes 2 coordinates to 2 classes, ``build("thesis_resnet2")`` MNIST
    digits, ``build("nominal")`` CIFAR-10 images.

    ``overrides`` change the network's own options (see `describe`), e.g.
    ``build("nominal", ks=5)``, ``build("thesis_odenet", gradient="adjoint", seminorm=True)``. For the
    report's networks they are fields of `NetworkParameters` or
    `HamiltonianParameters`; ``init`` sets both the conv/FC and the K/b initialisation.
    """
    entry = _entry(name)
    unknown = sorted(set(overrides) - set(entry.options))
    if unknown:
        raise ValueError(
            f"unknown override(s) {', '.join(map(repr, unknown))} for {name!r}; "
            f"allowed: {', '.join(entry.options) or 'none'}"
        )
    given = dict(in_channels=in_channels, num_classes=num_classes, image_size=image_size)
    for key, value in given.items():
        if value is not None:
            check_int(key, value)
    shape = {**input_shape(entry.dataset, entry.preprocessing), **{k: v for k, v in given.items() if v is not None}}
    return entry.make(shape["in_channels"], shape["num_classes"], shape["image_size"], **overrides)


def count_parameters(model: nn.Module, trainable_only: bool = True) -> int:
    """Number of (trainable) parameters of ``model``."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def _entry(name: str) -> _Entry:
    if name not in _REGISTRY:
        raise ValueError(f"name must be one of {', '.join(map(repr, _REGISTRY))}; got {name!r}")
    return _REGISTRY[name]
