"""Training protocols: the named ones (``learning=<name>``) and the strategies a protocol adds to
the training loop.

A protocol is a `LearningParameters` (optimiser, lr schedule, batches,
penalties). Some protocols also change what the loop does around each update; those changes are
strategy objects (`TrainingProtocol`) that the loop calls at fixed points, so the loop
itself has no protocol flags:

* `InnerClassifierFits` (``learning.inner_steps``): the H-DNN papers' 2-D protocol, a fresh
  classifier fitted to each batch's frozen features before the update, and refitted on all the
  data after the last epoch;
* `EpochAdamStep` (``learning.adam_step_epoch``): the papers' code's Adam step count, the
  epoch instead of the number of updates.

`strategies` reads them off a protocol.
"""

from __future__ import annotations

import dataclasses
import fnmatch
from collections.abc import Iterable, Iterator
from typing import Any, cast

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from .._checks import check_choice
from ..config import LearningParameters
from ..models import PRESETS, preset
from .batches import in_order
from .distributed import GlobalBatches, Ranks

THESIS_LEARNING = LearningParameters(
    training_steps_max=14_070,  # 30 epochs of 60,000 images in batches of 128
    batch_size=128,
    lr=0.1,
    lr_decay_at=[],
    wd=0.0,
    alpha=0.0,
)
"""The thesis's protocol (section 5.3): SGD, momentum 0.9, lr 0.1, 30 epochs on MNIST; its
augmentation (``crop_and_flip``) is the "thesis" preprocessing's upscale-and-crop."""


HDNN_2D_LEARNING = LearningParameters(
    training_steps_max=1_600,  # 50 epochs of 4,000 points in batches of 125
    batch_size=125,
    lr=0.05,
    lr_decay_at=[10, 20, 30, 40],  # in place of the papers' code's Adam step count (docs/hdnn.md)
    lr_decay=0.5,
    wd=0.0,
    alpha=2.5e-4,  # the papers' 5e-4 on (||dK||^2 + ||db||^2) / 2
    b_in_reg=True,
    h_div=False,
    smoothness_of="K",  # K of J K^T sigma(K y + b), as the papers' code penalises it
    optimiser="Adam",
    momentum=(0.9, 0.999),
    crop_and_flip=False,
    inner_steps=10,
    classifier_penalty=1e-4,
)
"""The H-DNN papers' 2-D protocol (their ``train_2d_example``): Adam lr 0.05, batches of 125,
50 epochs; per batch 10 Adam iterations of a fresh classifier on the frozen features, then one
step of the H-DNN; the classifier refitted on all the data at the end; smoothness
``alpha h (||K_j+1 - K_j||^2 + ||b_j+1 - b_j||^2) / 2`` with alpha 5e-4 on the K of the papers'
form ``J K^T sigma(K y + b)`` (``smoothness_of="K"``), classifier penalty 1e-4.
The lr is halved after epochs 10, 20, 30 and 40: the papers' code sets Adam's step count to the
epoch, which shrinks its steps over the first 10 epochs (docs/hdnn.md); contham runs standard
Adam with this decay instead (`HDNN_2D_CODE` runs the code's step count)."""

HDNN_2D_CODE = dataclasses.replace(
    HDNN_2D_LEARNING,
    lr_decay_at=[],
    adam_step_epoch=["block.field.K*", "block.field.W", "block.field.b", "block.field.bp", "block.field.bq"],
)
"""The papers' 2-D protocol to the letter of their code: `HDNN_2D_LEARNING` with a constant
lr 0.05 and Adam's step count set to the epoch before every update of the first two parameters of
their network, which are, in contham's names: K and b (H1), K0 and b (MS1), W and b (MS2), K1 and K2
but not b1 and b2 (MS3), Kp, Kq, bp and bq (H2, whose K and b hold both halves)."""

HDNN_MNIST_LEARNING = LearningParameters(
    training_steps_max=6_000,  # 10 epochs of 60,000 images in batches of 100
    batch_size=100,
    lr=0.04,
    lr_decay_at=list(range(1, 10)),
    lr_decay=0.8,
    wd=4e-3,
    alpha=4e-3,  # the papers' 8e-3 on (||dK||^2 + ||db||^2) / 2
    b_in_reg=True,
    h_div=False,
    smoothness_of="K",
    optimiser="Adam",
    momentum=(0.9, 0.999),
    crop_and_flip=False,
)
"""The H-DNN papers' MNIST protocol for H1_J1 (their ``run_MNIST``): Adam lr 0.04 with weight
decay 4e-3, lr x 0.8 after every epoch, batches of 100, 10 epochs, smoothness alpha 8e-3 (h 0.5 is
the network's default). MS1 and H1_J2 use other values: see docs/hdnn.md."""


HDNN_2D_END_TO_END = dataclasses.replace(
    HDNN_2D_LEARNING,
    training_steps_max=6_400,  # 200 epochs
    lr=0.01,
    lr_decay_at=[100, 150],
    inner_steps=0,
    classifier_penalty=0.0,
)
"""contham's best protocol for the 2-D H-DNNs: the network and its classifier trained together
by one Adam, lr 0.01 halved after epochs 100 and 150, 200 epochs, batches of 125, the papers'
smoothness penalty (alpha 2.5e-4, as above). At 64 layers and the papers' nf 4 it reaches 99 % test
accuracy on every seed tried for MS3, H1_J1 and H2 on both point sets (docs/hdnn.md)."""

PROTOCOLS = {
    "thesis": THESIS_LEARNING,
    "hdnn_2d": HDNN_2D_LEARNING,
    "hdnn_2d_end_to_end": HDNN_2D_END_TO_END,
    "hdnn_2d_code": HDNN_2D_CODE,
    "hdnn_mnist": HDNN_MNIST_LEARNING,
}
"""Training protocols by name: ``learning=<name>`` in a run config or on the command line (then
``learning.<field>=`` overrides apply on top of it)."""


def protocol(name: str) -> LearningParameters:
    """A fresh copy of the protocol called ``name`` (see `PROTOCOLS`)."""
    return dataclasses.replace(PROTOCOLS[check_choice("learning", name, PROTOCOLS)])


def describe_protocol(learning: LearningParameters, model: str | None = None) -> str:
    """A short description of ``learning``: the protocol it is or starts from (one of
    :data:`PROTOCOLS`, or the report preset of ``model``) with the fields it changes (up to
    three; else "custom"), then its optimiser, lr and batch size."""
    named = dict(PROTOCOLS)
    if model in PRESETS:
        named[f"{model} preset"] = preset(model).learning
    fields = [f.name for f in dataclasses.fields(LearningParameters)]
    changes = {
        name: {f: getattr(learning, f) for f in fields if getattr(learning, f) != getattr(p, f)}
        for name, p in named.items()
    }
    name, changed = min(changes.items(), key=lambda item: len(item[1]))
    if len(changed) > 3:
        name, changed = "custom", {}
    label = name + "".join(f", {k}={v}" for k, v in changed.items())
    decay = f", x{learning.lr_decay:g} after epochs {learning.lr_decay_at}" if learning.lr_decay_at else ""
    return f"{label}: {learning.optimiser} lr {learning.lr:g}{decay}, batch {learning.batch_size}"


class TrainingProtocol:
    """A change a protocol makes to the training loop; every hook does nothing by default.

    The loop calls, in this order: `check` once, `trained_parameters` to build the
    optimiser, `start` once the optimiser exists, `network` for what the batches run
    through; per batch `outputs` and `before_update`; `after_training` once
    after the last epoch's updates."""

    def check(self, model: nn.Module, ranks: Ranks) -> None:
        """Raise ``ValueError`` if this protocol cannot train ``model`` on ``ranks``."""

    def trained_parameters(self, model: nn.Module, params: list[nn.Parameter]) -> list[nn.Parameter]:
        """The parameters the optimiser trains, out of ``params``."""
        return params

    def start(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        """Called once the optimiser of ``model`` exists."""

    def network(self, model: nn.Module, wrapped: nn.Module) -> nn.Module:
        """What the training batches run through: ``wrapped`` (``model``, or its DDP wrapper)."""
        return wrapped

    def outputs(self, network: nn.Module, model: nn.Module, x: Tensor, y: Tensor) -> Tensor | None:
        """The logits of batch ``(x, y)``, or None: ``network(x)``."""
        return None

    def before_update(self, optimizer: torch.optim.Optimizer, epoch: int) -> None:
        """Called before each optimiser update of ``epoch`` (1-based)."""

    def after_training(self, model: nn.Module, data: FinalData) -> None:
        """Called after the last epoch's updates, before its evaluation."""


@dataclasses.dataclass
class FinalData:
    """What `TrainingProtocol.after_training` may use: the training set, read in batches
    of ``batch_size`` on ``device``, and the run's seed and number of epochs."""

    train_set: Dataset
    batch_size: int
    device: torch.device
    seed: int
    epochs: int


class Features(nn.Module):
    """``model.features`` as a module, to be compiled like a network."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> Tensor:
        return cast(Any, self.model).features(x)


@dataclasses.dataclass
class InnerClassifierFits(TrainingProtocol):
    """The H-DNN papers' 2-D protocol (``learning.inner_steps > 0``): before each update of the
    rest of the network, a fresh ``model.classifier`` is fitted to the batch's frozen features by
    ``inner_steps`` Adam iterations; after the last epoch it is fitted afresh on all the training
    data (as many epochs, one Adam step per batch). The optimiser trains every parameter but the
    classifier's."""

    learning: LearningParameters

    def check(self, model: nn.Module, ranks: Ranks) -> None:
        classifier(model)
        if ranks.distributed:
            raise ValueError(
                "learning.inner_steps > 0 (the H-DNN 2-D protocol) runs in one process only; run without torchrun"
            )

    def trained_parameters(self, model: nn.Module, params: list[nn.Parameter]) -> list[nn.Parameter]:
        own = {id(p) for p in classifier(model).parameters()}
        return [p for p in params if id(p) not in own]

    def network(self, model: nn.Module, wrapped: nn.Module) -> nn.Module:
        return Features(model)  # the fits read the features, then the classifier maps them

    def outputs(self, network: nn.Module, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        features = network(x)
        fit_classifier(model, [(features, y)], self.learning, self.learning.inner_steps)
        return classifier(model)(features)

    def after_training(self, model: nn.Module, data: FinalData) -> None:
        refit = torch.Generator().manual_seed(data.seed * 100_003 + 2**41)
        features, labels = frozen_features(model, data)
        passes = _passes(features, labels, self.learning.batch_size, data.epochs, refit)
        fit_classifier(model, passes, self.learning, 1)


@dataclasses.dataclass
class EpochAdamStep(TrainingProtocol):
    """The papers' 2-D code's Adam step count (``learning.adam_step_epoch``): for the trained
    parameters that the patterns name, Adam's step count is set to the epoch before every update,
    so that each update in epoch e corrects its moments' bias with t = e."""

    patterns: list[str]
    chosen: list[Tensor] = dataclasses.field(default_factory=list)

    def start(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        self.chosen = adam_step_epoch_parameters(model, optimizer, self.patterns)

    def before_update(self, optimizer: torch.optim.Optimizer, epoch: int) -> None:
        set_adam_step(optimizer, self.chosen, epoch - 1)  # Adam adds one before its update: t = epoch


class Strategies(TrainingProtocol):
    """Several strategies as one: each hook calls them in turn (`outputs`: the first that
    gives logits)."""

    def __init__(self, parts: list[TrainingProtocol]):
        self.parts = parts

    def check(self, model: nn.Module, ranks: Ranks) -> None:
        for part in self.parts:
            part.check(model, ranks)

    def trained_parameters(self, model: nn.Module, params: list[nn.Parameter]) -> list[nn.Parameter]:
        for part in self.parts:
            params = part.trained_parameters(model, params)
        return params

    def start(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        for part in self.parts:
            part.start(model, optimizer)

    def network(self, model: nn.Module, wrapped: nn.Module) -> nn.Module:
        for part in self.parts:
            wrapped = part.network(model, wrapped)
        return wrapped

    def outputs(self, network: nn.Module, model: nn.Module, x: Tensor, y: Tensor) -> Tensor | None:
        return next((out for part in self.parts if (out := part.outputs(network, model, x, y)) is not None), None)

    def before_update(self, optimizer: torch.optim.Optimizer, epoch: int) -> None:
        for part in self.parts:
            part.before_update(optimizer, epoch)

    def after_training(self, model: nn.Module, data: FinalData) -> None:
        for part in self.parts:
            part.after_training(model, data)


def strategies(learning: LearningParameters) -> Strategies:
    """The strategies that ``learning`` adds to the training loop (none for most protocols)."""
    parts: list[TrainingProtocol] = []
    if learning.inner_steps:
        parts.append(InnerClassifierFits(learning))
    if learning.adam_step_epoch:
        parts.append(EpochAdamStep(learning.adam_step_epoch))
    return Strategies(parts)


def make_optimizer(
    model: nn.Module,
    learning: LearningParameters,
    protocol: TrainingProtocol | None = None,
    *,
    fused: bool = False,
    capturable: bool = False,
) -> torch.optim.Optimizer:
    """SGD with momentum or Adam with betas = ``momentum``; weight decay ``wd`` inside; the
    parameters ``protocol`` trains (default: those of `strategies`). ``fused``: the fused
    implementation (one kernel per step) with the lr as a tensor on the parameters' device, which
    a captured step reads and the schedule fills; ``capturable``: fused, and marked for capture in
    a CUDA graph (`contham.experiments.graphs`; the mark changes nothing in the arithmetic)."""
    momentum = learning.momentum  # validate(): a float for SGD, a pair for Adam
    params = (protocol or strategies(learning)).trained_parameters(model, list(model.parameters()))
    lr: float | Tensor = learning.lr
    kind: dict[str, Any] = {}
    if fused or capturable:
        lr, kind = torch.tensor(learning.lr, device=params[0].device), {"fused": True}
    if learning.optimiser == "SGD":  # SGD keeps no step count and needs no mark
        assert isinstance(momentum, float)
        return torch.optim.SGD(params, lr, momentum=momentum, weight_decay=learning.wd, **kind)
    assert isinstance(momentum, tuple)
    return torch.optim.Adam(params, lr, betas=momentum, weight_decay=learning.wd, capturable=capturable, **kind)


IMPLEMENTATION = ("fused", "foreach", "capturable")
"""The optimiser options that choose an implementation, not the optimisation."""


def load_optimizer_state(optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    """Load ``state`` (an optimiser's ``state_dict``) into ``optimizer`` but keep its
    implementation and the type of its lr (a float, or a tensor that a captured step reads and
    the schedule fills): a checkpoint of a run with CUDA graphs resumes in one without, and back."""
    own = [{key: group[key] for key in IMPLEMENTATION if key in group} for group in optimizer.param_groups]
    lrs = [group["lr"] for group in optimizer.param_groups]
    # loaded with this optimiser's implementation, which places its state (Adam's step count)
    groups = [{**saved, **kept} for saved, kept in zip(state["param_groups"], own)]
    optimizer.load_state_dict({**state, "param_groups": groups})
    for group, lr in zip(optimizer.param_groups, lrs):
        if isinstance(lr, Tensor):
            group["lr"] = lr.fill_(float(group["lr"]))
        else:
            group["lr"] = float(group["lr"])


def adam_step_epoch_parameters(model: nn.Module, optimizer: torch.optim.Optimizer, patterns: list[str]) -> list[Tensor]:
    """The parameters of ``model`` that ``optimizer`` trains and the ``fnmatch`` ``patterns``
    name; an error names the trained parameters when the patterns match none of them."""
    if not patterns:
        return []
    trained = {id(p) for group in optimizer.param_groups for p in group["params"]}
    named = [(name, p) for name, p in model.named_parameters() if id(p) in trained]
    chosen: list[Tensor] = [p for name, p in named if any(fnmatch.fnmatchcase(name, pat) for pat in patterns)]
    if not chosen:
        raise ValueError(
            f"learning.adam_step_epoch={patterns!r} names none of the trained parameters "
            f"({', '.join(name for name, _ in named)})"
        )
    return chosen


def set_adam_step(optimizer: torch.optim.Optimizer, params: list[Tensor], step: int) -> None:
    """Set Adam's step count of ``params`` to ``step`` (its next update then uses t = step + 1);
    parameters not yet updated keep their fresh state (t = 1 at their first update)."""
    for p in params:
        state = optimizer.state.get(p)
        if state:
            state["step"].fill_(step)


def classifier(model: nn.Module) -> Any:
    """``model.classifier``, checked to have a ``fit`` method beside ``model.features``."""
    found = getattr(model, "classifier", None)
    if not callable(getattr(found, "fit", None)) or not callable(getattr(model, "features", None)):
        raise ValueError(
            "learning.inner_steps > 0 needs a network with a `features` method and a `classifier` with a `fit` "
            f"method (e.g. hdnn_2d); got {type(model).__name__}"
        )
    return found


def fit_classifier(
    model: nn.Module, features: Iterable[tuple[Tensor, Tensor]], learning: LearningParameters, steps_per_batch: int
) -> None:
    """Fit ``model.classifier`` afresh to batches ``(model.features(x), y)`` (frozen: detached),
    ``steps_per_batch`` Adam iterations per batch at ``learning.lr`` and betas ``learning.momentum``,
    with ``learning.classifier_penalty``."""
    betas = learning.momentum if isinstance(learning.momentum, tuple) else (0.9, 0.999)
    frozen = ((f.detach(), y) for f, y in features)
    classifier(model).fit(frozen, steps_per_batch, learning.lr, betas, learning.classifier_penalty)


@torch.no_grad()
def frozen_features(model: nn.Module, data: FinalData) -> tuple[Tensor, Tensor]:
    """``(model.features(x), y)`` of the whole training set (un-augmented, in eval mode), computed
    once for the final refit of the classifier: n x nf numbers."""
    model.eval()
    features = Features(model)
    parts = [(features(x), y) for x, y in in_order(data.train_set, data.batch_size, data.device)]
    return torch.cat([f for f, _ in parts]), torch.cat([y for _, y in parts])


def _passes(
    features: Tensor, labels: Tensor, batch_size: int, epochs: int, generator: torch.Generator
) -> Iterator[tuple[Tensor, Tensor]]:
    """``epochs`` shuffled passes over ``(features, labels)`` in batches of ``batch_size``."""
    for _ in range(epochs):
        for rows, _ in GlobalBatches(len(labels), batch_size, generator, Ranks()).shards():
            rows = rows.to(labels.device)
            yield features[rows], labels[rows]
