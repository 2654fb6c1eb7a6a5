"""The H-DNN networks of Galimberti et al. ("A unified framework for Hamiltonian deep neural
networks", L4DC 2021, and the journal version "Hamiltonian deep neural networks guaranteeing
non-vanishing gradients by design"), on contham's fields and blocks.

``function`` names the discretised Hamiltonian of a layer, as in the papers and their code:

=========  ==========================================  ==================================
function   field (`contham.fields`)               step
=========  ==========================================  ==================================
``MS1``    `SymmetricField`     symplectic Euler, z first
``MS2``    `AntisymmetricField`  forward Euler
``MS3``    `TwoLayerField`      symplectic Euler, z first
``H1_J1``  `HamiltonianField`   forward Euler
``H1_J2``  the same with J2                            forward Euler
``H2``     `SeparableField`     symplectic Euler, z first
=========  ==========================================  ==================================

A network of ``n_layers`` layers to final time ``t_end`` takes steps ``h = t_end / n_layers``,
layer j with its own weights (K_j, b_j). The code of the papers calls its MS1 and MS3 steps
"Verlet"; they are one kick of z then one of y per layer, i.e. symplectic Euler with z first
(leapfrog up to the half steps at the ends), which is what contham runs.

* `HDNN2d` (``hdnn_2d``): the 2-D benchmarks. The two input coordinates are written into
  features ``inputs`` (default the first and the last) of an otherwise zero state of ``nf``
  features, propagated by the H-DNN and read by a linear classifier ``W y + mu`` with one output
  per class, or one logit for two classes (the papers' logistic classifier; the network then
  returns the logits ``[0, W y + mu]``, so that cross-entropy is the papers' binary
  cross-entropy).
* `HDNNMnist` (``hdnn_mnist``): a 3x3 convolution from the image to ``nf`` channels, the
  H-DNN applied to the ``nf`` channels of every pixel independently (a dense field on
  ``(batch * H * W, nf)``), and a fully connected layer to the classes.

``init="normal"`` draws K and b from N(0, 1) as the papers' code does; ``init="scaled"`` keeps
contham's default (K from N(0, 1/fan_in), b = 0).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor, nn

from .._checks import check_choice, check_int, check_positive
from ..blocks import HamiltonianBlock
from ..fields import SeparableField, field_entry
from ..solvers import FixedStepSolver, SymplecticEuler

FUNCTIONS: dict[str, tuple[str, str | FixedStepSolver]] = {
    "MS1": ("MS1", SymplecticEuler(first="z")),
    "MS2": ("MS2", "euler"),
    "MS3": ("MS3", SymplecticEuler(first="z")),
    "H1_J1": ("H1_J1", "euler"),
    "H1_J2": ("H1_J2", "euler"),
    "H2": ("H2", SymplecticEuler(first="z")),
}
"""The H-DNN layer types by the papers' names: the registered field and the step."""

INITS = ("normal", "scaled")


def hdnn_block(
    function: str,
    nf: int,
    n_layers: int,
    h: float,
    *,
    init: str = "normal",
    K_mask: Tensor | None = None,
    gradient: str = "backprop",
) -> HamiltonianBlock:
    """``n_layers`` H-DNN layers of type ``function`` (see `FUNCTIONS`) on ``nf`` features
    with step ``h``. ``K_mask`` (H2 only): a 0/1 mask on K, see
    `SeparableField`."""
    field_name, solver = FUNCTIONS[check_choice("function", function, FUNCTIONS)]
    check_int("nf", nf, 2)
    if field_entry(field_name).needs_even_features and nf % 2:
        raise ValueError(f"nf must be even for function={function!r} (the state is split in two halves); got {nf}")
    check_int("n_layers", n_layers)
    check_positive("h", h)
    check_choice("init", init, INITS)
    options = {} if K_mask is None else {"K_mask": K_mask}
    field = field_entry(field_name).build(nf, sigma="tanh", n_nodes=n_layers, dt=h, **options)
    if init == "normal":
        with torch.no_grad():
            for weight in field.parameters():
                weight.normal_()
        if isinstance(field, SeparableField):
            field.apply_mask()  # masked entries start (and stay) at zero
    return HamiltonianBlock(field, solver, gradient=gradient)


class LinearClassifier(nn.Module):
    """``W y + mu`` with zero initial weights (the papers' classifier). With ``classes == 2`` it
    has one row (a logit s) and returns ``[0, s]``: softmax cross-entropy on these equals the
    binary cross-entropy of s."""

    def __init__(self, features: int, classes: int):
        super().__init__()
        self.classes = check_int("num_classes", classes, 2)
        rows = 1 if classes == 2 else classes
        self.W = nn.Parameter(torch.zeros(rows, check_int("nf", features)))
        self.mu = nn.Parameter(torch.zeros(rows))

    def reset_parameters(self) -> None:
        """Back to the zero initial weights."""
        with torch.no_grad():
            self.W.zero_()
            self.mu.zero_()

    def penalty(self) -> Tensor:
        """``(||W||^2 + ||mu||^2) / 2``, the papers' classifier regularisation (before its weight)."""
        return 0.5 * (self.W.square().sum() + self.mu.square().sum())

    def forward(self, y: Tensor) -> Tensor:
        out = nn.functional.linear(y, self.W, self.mu)
        return torch.cat((torch.zeros_like(out), out), 1) if self.classes == 2 else out

    @torch.no_grad()
    def fit(
        self,
        batches: Iterable[tuple[Tensor, Tensor]],
        steps_per_batch: int,
        lr: float,
        betas: tuple[float, float] = (0.9, 0.999),
        penalty: float = 0.0,
        eps: float = 1e-8,
    ) -> None:
        """Fit afresh: from zero weights, ``steps_per_batch`` Adam iterations on each
        ``(features, labels)`` batch in turn (one Adam state throughout) on the cross-entropy plus
        ``penalty * self.penalty()``.

        These are the numbers of ``torch.optim.Adam`` on autograd's gradients, with the gradient
        written out (d cross-entropy / d logits = softmax - one-hot; for two classes
        sigmoid(s) - label), which makes the papers' 10 inner iterations per batch about ten
        times cheaper than through autograd on these tiny tensors."""
        check_int("steps_per_batch", steps_per_batch)
        beta1, beta2 = betas
        self.reset_parameters()
        params = torch.cat((self.W, self.mu[:, None]), 1)  # rows: [W_i, mu_i]
        m, v = torch.zeros_like(params), torch.zeros_like(params)
        step = 0
        for features, labels in batches:
            inputs = torch.cat((features, features.new_ones(len(features), 1)), 1)
            for _ in range(steps_per_batch):
                step += 1
                scores = inputs @ params.T
                if self.classes == 2:
                    residual = torch.sigmoid(scores) - labels[:, None].to(scores.dtype)
                else:
                    residual = torch.softmax(scores, 1)
                    # minus one-hot, on the device (an index made on the host cannot be captured)
                    residual.scatter_add_(1, labels[:, None], residual.new_full((len(labels), 1), -1.0))
                grad = residual.T @ inputs / len(labels)
                if penalty:
                    grad += penalty * params
                m.lerp_(grad, 1 - beta1)
                v.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                denom = (v / (1 - beta2**step)).sqrt_().add_(eps)
                params.addcdiv_(m, denom, value=-lr / (1 - beta1**step))
        self.W.copy_(params[:, :-1])
        self.mu.copy_(params[:, -1])


class HDNN2d(nn.Module):
    """The 2-D benchmark network (see the module docstring): embedding, H-DNN, classifier.

    Args:
        in_features: coordinates of a point (2).
        num_classes: classes (2 for the benchmarks).
        nf: state width; n_layers: H-DNN layers; t_end: final time (h = t_end / n_layers).
        function: a name of `FUNCTIONS`.
        inputs: the features that receive the coordinates (default: 0 and nf - 1).
        init: "normal" or "scaled" (see the module docstring).
        mask: H2 only: None, or "sparse"/"full", the K masks of `sparse_H2_mask`.
    """

    inputs: Tensor

    def __init__(
        self,
        in_features: int = 2,
        num_classes: int = 2,
        *,
        nf: int = 4,
        n_layers: int = 16,
        t_end: float = 1.2,
        function: str = "H1_J1",
        inputs: list[int] | None = None,
        init: str = "normal",
        mask: str | None = None,
    ):
        super().__init__()
        check_int("nf", nf, 2)
        if mask is not None and function != "H2":
            raise ValueError(f"mask is an option of function 'H2' only; got function={function!r}")
        K_mask = None if mask is None else sparse_H2_mask(nf, mask)
        check_int("n_layers", n_layers)
        if inputs is not None and not isinstance(inputs, (list, tuple)):
            raise ValueError(f"inputs must be a list of {in_features} feature indices; got {inputs!r}")
        inputs = [0, nf - 1] if inputs is None else list(inputs)
        if (
            len(inputs) != in_features
            or len(set(inputs)) != len(inputs)
            or not all(isinstance(i, int) and 0 <= i < nf for i in inputs)
        ):
            raise ValueError(f"inputs must be {in_features} distinct feature indices in [0, {nf}); got {inputs!r}")
        self.register_buffer("inputs", torch.tensor(inputs), persistent=False)
        self.nf = nf
        self.block = hdnn_block(function, nf, n_layers, check_positive("t_end", t_end) / n_layers, init=init,
                                K_mask=K_mask)  # fmt: skip
        self.classifier = LinearClassifier(nf, num_classes)

    def embed(self, x: Tensor) -> Tensor:
        """The initial state: the coordinates at features ``inputs``, zeros elsewhere."""
        y0 = x.new_zeros(x.shape[0], self.nf)
        return y0.index_copy(1, self.inputs, x)

    def features(self, x: Tensor) -> Tensor:
        """The H-DNN's output state (what the classifier reads)."""
        return self.block(self.embed(x))

    def hidden_states(self, x: Tensor) -> Tensor:
        """The states after every layer, ``(n_layers + 1, batch, nf)`` (layer 0: the input)."""
        return self.block.trajectory(self.embed(x))

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x))


class HDNNMnist(nn.Module):
    """The MNIST H-DNN (see the module docstring): conv 3x3 (in -> nf, padding 1), an H-DNN of
    ``n_layers`` steps ``h`` on every pixel's ``nf`` channels, FC ``nf * H * W -> classes``."""

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 10,
        image_size: int = 28,
        *,
        nf: int = 8,
        n_layers: int = 8,
        h: float = 0.5,
        function: str = "H1_J1",
        init: str = "normal",
    ):
        super().__init__()
        check_int("image_size", image_size)
        self.conv = nn.Conv2d(check_int("in_channels", in_channels), check_int("nf", nf, 2), 3, padding=1)
        self.block = hdnn_block(function, nf, n_layers, h, init=init)
        self.fc = nn.Linear(nf * image_size * image_size, check_int("num_classes", num_classes, 2))

    def forward(self, x: Tensor) -> Tensor:
        y = self.conv(x)
        n, c, height, width = y.shape
        # every pixel's channels, one row each, laid out channel by channel: the column form of
        # the fused block (contham.solvers.fused), which then reads it without a transposing copy
        pixels = y.transpose(0, 1).reshape(c, -1).t()
        y = self.block(pixels).t().reshape(c, n, height, width).transpose(0, 1)
        return self.fc(y.flatten(1))


def sparse_H2_mask(nf: int = 16, pattern: str = "sparse") -> Tensor:
    """The K masks of the papers' distributed-control example (nf = 16: two halves of 8
    subsystems): ``"sparse"``, each subsystem coupled to its two ring neighbours; ``"full"``,
    every subsystem to every other. Shape ``(2, nf/2, nf/2)``: the masks of Kp and Kq."""
    check_choice("mask", pattern, ("sparse", "full"))
    half = check_int("nf", nf, 4) // 2
    if nf % 2:
        raise ValueError(f"nf must be even; got {nf}")
    if pattern == "full":
        ring = torch.ones(half, half)
    else:
        i = torch.arange(half)
        distance = (i[:, None] - i[None, :]).abs()
        ring = (torch.minimum(distance, half - distance) <= 1).float()
    return torch.stack((ring, ring))


__all__ = [
    "FUNCTIONS",
    "HDNN2d",
    "HDNNMnist",
    "LinearClassifier",
    "hdnn_block",
    "sparse_H2_mask",
]
