"""The report's parameter dataclasses (tables 3.1-3.3): what to build and how to train it.

* `HamiltonianParameters` (table 3.3): the Hamiltonian layer of each unit.
* `NetworkParameters` (table 3.2): the image classifier of the report's figure 3.1.
* `LearningParameters` (table 3.1): the training protocol (algorithm 1).
* `Preset`: a network and its training protocol, as in tables 4.1-4.5.

Every value is checked on construction; a bad one raises ``ValueError`` naming the parameter and
the allowed values. Names (activation, init, pooling, optimiser, Hamiltonian) match in any case
and are stored in the report's spelling. Change a parameter with `dataclasses.replace`, which
checks again; networks and trainers also re-check what they receive.

Python names follow the report except where it breaks PEP 8; `from_dict` accepts both:

| report | contham |
|---|---|
| hamiltonianFunction(s) | ``function`` |
| hamParams | ``ham_params`` |
| second_final_FC | ``second_final_fc`` |
| batchnorm_bool | ``batchnorm`` |

All four classes save to and load from YAML (``.yaml``/``.yml``) or JSON (``.json``).
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import yaml

from ._checks import (
    check_bool,
    check_choice,
    check_int,
    check_name,
    check_nonnegative,
    check_positive,
    check_probability,
)
from .fields import ACTIVATIONS, field_entry, field_names
from .gradients import get_gradient, gradient_names
from .regularization import SMOOTHED
from .solvers import SOLVERS, FixedStepSolver, get_solver

INITS = ("Zeros", "Ones", "Normal", "Xavier")
POOLINGS = ("Avg", "Max")
OPTIMISERS = ("SGD", "Adam")

REPORT_NAMES = {
    "hamiltonianFunction": "function",
    "hamiltonianFunctions": "function",
    "hamParams": "ham_params",
    "second_final_FC": "second_final_fc",
    "batchnorm_bool": "batchnorm",
    "memory": "gradient",
}
"""The report's parameter names that differ from contham's (and ``memory``, contham's earlier
name for ``gradient``)."""

P = TypeVar("P", bound="Parameters")


class Parameters:
    """Base of the parameter dataclasses: checking on construction, dict conversion, YAML/JSON files."""

    _nested: ClassVar[dict[str, type[Parameters]]] = {}

    def __post_init__(self) -> None:
        for name, cls in self._nested.items():
            value = getattr(self, name)
            if isinstance(value, dict):
                setattr(self, name, cls.from_dict(value))
            elif not isinstance(value, cls):
                raise ValueError(f"{name} must be a {cls.__name__} or a dict; got {type(value).__name__}")
        self.validate()

    def validate(self) -> None:
        """Check (and normalise) every value; raise ``ValueError`` on the first bad one."""

    def to_dict(self) -> dict[str, Any]:
        """Plain dict of lists, numbers, strings and nested dicts (YAML/JSON-ready)."""
        return plain(dataclasses.asdict(self))  # type: ignore[call-overload]

    @classmethod
    def from_dict(cls: type[P], data: dict[str, Any]) -> P:
        """Build from a dict with contham's or the report's names (see `REPORT_NAMES`)."""
        if not isinstance(data, dict):
            raise ValueError(f"{cls.__name__} data must be a dict; got {type(data).__name__}")
        names = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
        kwargs = {}
        for key, value in data.items():
            name = REPORT_NAMES.get(key, key)
            if name not in names:
                raise ValueError(f"unknown {cls.__name__} parameter {key!r}; allowed: {', '.join(names)}")
            kwargs[name] = value
        return cls(**kwargs)

    def save(self, path: str | Path) -> Path:
        """Write to ``path`` as YAML or JSON (by its suffix)."""
        path = Path(path)
        data = self.to_dict()
        text = json.dumps(data, indent=2) + "\n" if _format(path) == "json" else yaml.safe_dump(data, sort_keys=False)
        path.write_text(text)
        return path

    @classmethod
    def load(cls: type[P], path: str | Path) -> P:
        """Read a file written by `save` (or by hand, with the report's names)."""
        path = Path(path)
        file_format = _format(path)
        try:
            text = path.read_text()
            data = json.loads(text) if file_format == "json" else read_yaml(text)
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, yaml.YAMLError) as error:
            detail = " ".join(str(error).split())
            raise ValueError(f"cannot read {cls.__name__} file {str(path)!r}: {detail}") from None
        if not isinstance(data, dict):
            found = type(data).__name__
            raise ValueError(f"{cls.__name__} file {str(path)!r} must hold a mapping of keys; got {found}")
        try:
            return cls.from_dict(data)
        except (TypeError, ValueError) as error:
            raise ValueError(f"{str(path)!r}: {error}") from None


class _Loader(yaml.SafeLoader):
    """YAML 1.1 reads ``2e-4`` (no dot) as a string; this loader reads it as a float, like JSON."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def read_yaml(text: str) -> Any:
    """YAML as contham reads it: safe, and ``2e-4`` (no dot) a float as in JSON."""
    return yaml.load(text, _Loader)


def _format(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix in (".yaml", ".yml"):
        return "yaml"
    if suffix == ".json":
        return "json"
    raise ValueError(f"path must end in .yaml, .yml or .json; got {str(path)!r}")


def plain(value: Any) -> Any:
    """``value`` with tuples as lists, as YAML and JSON give it back."""
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


def _int_list(name: str, value: Any, minimum: int) -> list[int]:
    if not isinstance(value, (list, tuple)):
        raise ValueError(f"{name} must be a list of integers; got {value!r}")
    return [check_int(f"{name}[{i}]", v, minimum) for i, v in enumerate(value)]


@dataclasses.dataclass
class HamiltonianParameters(Parameters):
    """The Hamiltonian layer of a unit (report table 3.3): ``n_blocks`` steps of size ``h``.

    Attributes:
        function: a registered Hamiltonian layer (`contham.fields.field_names`: Chang et al.'s
            two-layer, Galimberti et al.'s J1, J2 and H2 (separable), Haber & Ruthotto's symmetric
            (MS1) and antisymmetric (MS2) networks) or an alias such as the H-DNN papers' names
            (report: ``hamiltonianFunction``).
        n_blocks: number of successive Hamiltonian blocks (steps, weight nodes).
        ks: odd kernel size of the convolutional operator K.
        h: the step size (discretisation timestep).
        act: sigma, "ReLU", "Tanh", "Sigmoid" or "Identity".
        init: initialisation of K and b, one of `INITS` ("Xavier" is the report's
            N(0, 2 / (N ks^2)) with N the unit's channels, eq. A.6).
        solver: a fixed-step solver name (contham's addition); None takes the report's scheme:
            forward Euler for J1/J2/antisymmetric, the symplectic Euler (Verlet) of Chang et al.
            for the split Hamiltonians.
        gradient: a strategy name of `contham.gradients` that serves the solver (contham's
            addition): "backprop", or "reversible" (backprop without stored activations: split
            solvers undo their own steps; forward Euler, midpoint and RK4 run McCallum & Foster's
            reversible pair instead, see `contham.solvers.reversible_rk`).
    """

    function: str = "TwoLayersHam"
    n_blocks: int = 6
    ks: int = 3
    h: float = 0.05
    act: str = "ReLU"
    init: str = "Xavier"
    solver: str | None = None
    gradient: str = "backprop"

    def validate(self) -> None:
        entry = field_entry(self.function)
        self.function = entry.name
        check_int("n_blocks", self.n_blocks)
        check_int("ks", self.ks)
        if self.ks % 2 == 0:
            raise ValueError(f"ks must be odd (K is a same-padding convolution); got {self.ks}")
        self.h = check_positive("h", self.h)
        self.act = check_name("act", self.act, tuple(a.title for a in ACTIVATIONS.values()))
        self.init = check_name("init", self.init, INITS)
        if self.solver is not None:
            fixed = [name for name, cls in SOLVERS.items() if issubclass(cls, FixedStepSolver)]
            check_choice("solver", self.solver, fixed)
        solver = get_solver(self.solver or entry.default_solver)
        if isinstance(solver, FixedStepSolver) and solver.needs_split and not entry.is_split:
            raise ValueError(
                f"solver={self.solver!r} needs a split Hamiltonian ({', '.join(_split_names())}); "
                f"got function={self.function!r}"
            )
        check_choice("gradient", self.gradient, gradient_names())
        try:
            get_gradient(self.gradient).check(solver)
        except ValueError as error:
            raise ValueError(
                f"{error} (function={self.function!r}, solver={self.solver!r}; the split Hamiltonians: "
                f"{', '.join(_split_names())})"
            ) from None


def _split_names() -> list[str]:
    return [name for name in field_names() if field_entry(name).is_split]


@dataclasses.dataclass
class NetworkParameters(Parameters):
    """The image classifier of the report's figure 3.1 (table 3.2).

    conv(ks_conv, strd_conv, pd_conv) -> [batch norm] -> [dropout[0]] -> nb_units x (Hamiltonian
    layer -> pooling -> zero-channel padding, none after the last) -> flatten -> [dropout[1]] ->
    FC, or FC -> FC when ``second_final_fc`` is set. Defaults are Chang et al. as replicated
    (table 4.1).

    Attributes:
        ham_params: the `HamiltonianParameters` of every unit (report: ``hamParams``).
        nb_units: number of units.
        nb_features: channels of the input image, then at the input of each unit
            (``nb_units + 1`` values, never decreasing; even for J1 and the split Hamiltonians).
        ks_conv: kernel size of the first conv.
        strd_conv: stride of the first conv.
        pd_conv: zero padding of the first conv.
        pooling: "Avg" or "Max"; ks_pool, strd_pool: its kernel size and stride.
        init: initialisation of the conv and FC weights, one of `INITS` ("Xavier" is
            PyTorch's Xavier-uniform; biases start at zero).
        second_final_fc: width of an extra FC layer before the classifier, or None
            (report: ``second_final_FC``).
        batchnorm: batch normalisation after the first conv (report: ``batchnorm_bool``).
        both_border_pad: pad new zero channels half before and half after the existing ones
            (True) or after them (False).
        dropout: None, or the probabilities ``[after the first conv, before the classifier]``.
    """

    _nested: ClassVar[dict[str, type[Parameters]]] = {"ham_params": HamiltonianParameters}

    ham_params: HamiltonianParameters = dataclasses.field(default_factory=HamiltonianParameters)
    nb_units: int = 3
    nb_features: list[int] = dataclasses.field(default_factory=lambda: [3, 32, 64, 112])
    ks_conv: int = 3
    strd_conv: int = 1
    pd_conv: int = 1
    pooling: str = "Avg"
    ks_pool: int = 2
    strd_pool: int = 2
    init: str = "Xavier"
    second_final_fc: int | None = None
    batchnorm: bool = False
    both_border_pad: bool = False
    dropout: list[float] | None = None

    def validate(self) -> None:
        self.ham_params.validate()
        check_int("nb_units", self.nb_units)
        self.nb_features = _int_list("nb_features", self.nb_features, 1)
        if len(self.nb_features) != self.nb_units + 1:
            raise ValueError(
                f"nb_features must have nb_units + 1 = {self.nb_units + 1} values (input channels, then one per "
                f"unit); got {len(self.nb_features)}: {self.nb_features}"
            )
        if any(b < a for a, b in zip(self.nb_features[1:], self.nb_features[2:])):
            raise ValueError(f"nb_features must not decrease from unit to unit; got {self.nb_features}")
        function = self.ham_params.function
        if field_entry(function).needs_even_features and any(c % 2 for c in self.nb_features[1:]):
            raise ValueError(
                f"nb_features[1:] must be even for function={function!r} (the state is split in two halves); "
                f"got {self.nb_features}"
            )
        check_int("ks_conv", self.ks_conv)
        check_int("strd_conv", self.strd_conv)
        check_int("pd_conv", self.pd_conv, 0)
        self.pooling = check_name("pooling", self.pooling, POOLINGS)
        check_int("ks_pool", self.ks_pool)
        check_int("strd_pool", self.strd_pool)
        self.init = check_name("init", self.init, INITS)
        if self.second_final_fc is not None:
            check_int("second_final_fc", self.second_final_fc)
        check_bool("batchnorm", self.batchnorm)
        check_bool("both_border_pad", self.both_border_pad)
        if self.dropout is not None:
            if not isinstance(self.dropout, (list, tuple)) or len(self.dropout) != 2:
                raise ValueError(f"dropout must be None or two probabilities in [0, 1); got {self.dropout!r}")
            self.dropout = [check_probability(f"dropout[{i}]", p) for i, p in enumerate(self.dropout)]


@dataclasses.dataclass
class LearningParameters(Parameters):
    """The training protocol of the report's algorithm 1 (table 3.1). Defaults: table 4.1.

    Attributes:
        training_steps_max: total number of optimiser updates; the number of epochs is
            ``training_steps_max * batch_size / len(training set)``.
        batch_size: images per update.
        lr: initial learning rate; ``lr_decay_at``: epochs after which it is multiplied by
            ``lr_decay``.
        wd: weight decay (inside the optimiser).
        alpha: weight of the smoothness regularisation (eq. A.1-A.3, see
            `contham.regularization.smoothness`).
        b_in_reg: include the biases b in the regularisation.
        h_div: divide the differences between layers by h.
        smoothness_of: "parameters" (the report's) or "K" (the H-DNN papers': the K of
            ``J K^T sigma(K y + b)``, which differs for MS1 and MS2), see
            `contham.regularization.smoothness`.
        optimiser: "SGD" or "Adam"; momentum: SGD's momentum, or Adam's ``(beta1, beta2)``.
        adam_step_epoch: Adam only: names of trained parameters (``fnmatch`` patterns such as
            ``"block.field.K*"``) whose Adam step count is the epoch: every update in epoch e
            corrects the bias of their moment estimates with t = e instead of the number of
            updates so far. The H-DNN papers' 2-D driver does this to the first two parameters of
            its network (the ``hdnn_2d_code`` protocol).
        crop_and_flip: random crop (after zero padding) and horizontal flip of training images.
        inner_steps: 0, or the H-DNN papers' 2-D protocol for a network with a ``classifier``
            (`HDNN2d`): before each update of the rest of the
            network, a fresh classifier is fitted to the batch's features by ``inner_steps``
            Adam iterations; after the last epoch the classifier is fitted afresh on all the
            training data (as many epochs, one Adam step per batch). The optimiser then trains
            every parameter but the classifier's.
        classifier_penalty: weight of ``(||W||^2 + ||mu||^2) / 2`` in those classifier fits.
    """

    training_steps_max: int = 80_000
    batch_size: int = 100
    lr: float = 0.1
    lr_decay_at: list[int] = dataclasses.field(default_factory=lambda: [80, 120, 160])
    lr_decay: float = 0.1
    wd: float = 2e-4
    alpha: float = 2e-4
    b_in_reg: bool = False
    h_div: bool = True
    smoothness_of: str = "parameters"
    optimiser: str = "SGD"
    momentum: float | tuple[float, float] = 0.9
    adam_step_epoch: list[str] = dataclasses.field(default_factory=list)
    crop_and_flip: bool = True
    inner_steps: int = 0
    classifier_penalty: float = 0.0

    def validate(self) -> None:
        check_int("training_steps_max", self.training_steps_max)
        check_int("batch_size", self.batch_size)
        self.lr = check_positive("lr", self.lr)
        self.lr_decay_at = _int_list("lr_decay_at", self.lr_decay_at, 1)
        if self.lr_decay_at != sorted(self.lr_decay_at):
            raise ValueError(f"lr_decay_at must be epochs in increasing order; got {self.lr_decay_at}")
        self.lr_decay = check_positive("lr_decay", self.lr_decay)
        self.wd = check_nonnegative("wd", self.wd)
        self.alpha = check_nonnegative("alpha", self.alpha)
        check_bool("b_in_reg", self.b_in_reg)
        check_bool("h_div", self.h_div)
        check_choice("smoothness_of", self.smoothness_of, SMOOTHED)
        self.optimiser = check_name("optimiser", self.optimiser, OPTIMISERS)
        if self.optimiser == "SGD":
            self.momentum = check_probability("momentum", self.momentum)
        else:
            if not isinstance(self.momentum, (list, tuple)) or len(self.momentum) != 2:
                raise ValueError(f"momentum must be a pair (beta1, beta2) for optimiser 'Adam'; got {self.momentum!r}")
            beta1, beta2 = (check_probability(f"momentum[{i}]", b) for i, b in enumerate(self.momentum))
            self.momentum = (beta1, beta2)
        if not isinstance(self.adam_step_epoch, (list, tuple)) or not all(
            isinstance(name, str) for name in self.adam_step_epoch
        ):
            raise ValueError(f"adam_step_epoch must be a list of parameter names; got {self.adam_step_epoch!r}")
        self.adam_step_epoch = list(self.adam_step_epoch)
        if self.adam_step_epoch and self.optimiser != "Adam":
            raise ValueError(f"adam_step_epoch needs optimiser 'Adam'; got optimiser={self.optimiser!r}")
        check_bool("crop_and_flip", self.crop_and_flip)
        check_int("inner_steps", self.inner_steps, 0)
        self.classifier_penalty = check_nonnegative("classifier_penalty", self.classifier_penalty)


@dataclasses.dataclass
class Preset(Parameters):
    """A network and the protocol it was trained with (one of the report's tables 4.1-4.5)."""

    _nested: ClassVar[dict[str, type[Parameters]]] = {
        "network": NetworkParameters,
        "learning": LearningParameters,
    }

    network: NetworkParameters = dataclasses.field(default_factory=NetworkParameters)
    learning: LearningParameters = dataclasses.field(default_factory=LearningParameters)
