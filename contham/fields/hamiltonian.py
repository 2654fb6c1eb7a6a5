"""Hamiltonian vector fields ``f(t, y) = J K(t)^T sigma(K(t) y + b(t))``.

Notation (Galimberti et al. 2021, eq. 2.20 of the report):

* ``y``: the state, ``(batch, n)`` dense or ``(batch, C, H, W)`` convolutional.
* ``K(t)``: a linear operator, an ``m x n`` matrix or a ``C -> m`` convolution (stride 1,
  same padding); ``K^T`` is its adjoint (``conv_transpose2d`` with the same weight).
* ``b(t)``: a bias of width m; ``sigma``: an element-wise activation.
* ``J``: a constant skew-symmetric matrix acting on features/channels.

The field is the gradient flow ``y' = J dH/dy`` of the energy
``H(t, y) = 1^T sigma~(K(t) y + b(t))`` with ``sigma~`` the antiderivative of sigma
(log cosh for tanh, relu(x)^2/2 for relu).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import Tensor

from .activations import resolve_activation
from .base import Params, linear_op, linear_op_t, other_half
from .kicks import KickTerms, Operands
from .registry import register_field
from .skew import SkewMatrix


class SigmaTerm(NamedTuple):
    """A term ``sign * J K^T sigma(K v + b)`` of a field, by the indices of its K and b in
    ``node_names``; ``skew``: whether the field's J multiplies it (else J is the identity).

    A field made of such terms declares them once in ``sigma_terms``, keyed by the half u they
    drive ("y", "z", or "x" for the whole state); v is the other half (`other_half`).
    Evaluation, energy, the fused path (`contham.solvers.fused`) and the reversible path all read
    this declaration."""

    K: int
    b: int
    sign: float = 1.0
    skew: bool = False


class SigmaTermField(KickTerms):
    """Base of the fields made of `SigmaTerm`: ``f``, its halves, the energy
    ``H = sum over terms of 1^T sigma~(K v + b)`` and the kicks of the fused path (`KickTerms`,
    ``M = K J^T`` for a skew term, else K) all follow from ``sigma_terms``.

    A term with ``skew=True`` is read with ``K J^T`` (J on the small weight rather than on the
    activation); `step_weights` computes it for every node at once and passes it after the
    node weights."""

    sigma_terms: dict[str, SigmaTerm]
    J: SkewMatrix

    def _init_sigma(self, sigma: str | Callable[[Tensor], Tensor], antiderivative: Callable | None) -> None:
        self.activation = resolve_activation(sigma, antiderivative)
        self.sigma = self.activation.fn

    def drive(self, params: Params, u: str, v: Tensor) -> Tensor:
        """The term driving half ``u`` (see `SigmaTerm`) evaluated on half ``v``."""
        term = self.sigma_terms[u]
        K = params[term.K]
        back = K
        if term.skew:
            back = params[len(self.node_names)] if len(params) > len(self.node_names) else self.J(K)
        if term.sign != 1.0:  # on the small weight, not on the state: one fewer pass over the state
            back = term.sign * back
        return linear_op_t(back, self.sigma(linear_op(K, v, params[term.b])))

    def step_weights(self) -> list[Params]:
        weights = super().step_weights()
        skew = [t for t in self.sigma_terms.values() if t.skew]
        if not skew:
            return weights
        K = getattr(self, self.node_names[skew[0].K])
        KJ = self.J(K.flatten(0, 1)).view_as(K)  # every node's K J^T at once
        return [(*w, kj) for w, kj in zip(weights, KJ.unbind(0))]

    def kick_signs(self) -> dict[str, float]:
        return {u: t.sign for u, t in self.sigma_terms.items()}

    def kick_shapes(self) -> dict[str, tuple[int, int]]:
        shapes = {}
        for u, t in self.sigma_terms.items():
            K = getattr(self, self.node_names[t.K])  # (nodes, width, features[, k, k])
            shapes[u] = (K.shape[1], K.shape[2])
        return shapes

    def kick_operands(self, params: tuple[Tensor, ...]) -> Operands:
        out: Operands = {}
        for u, t in self.sigma_terms.items():
            K = params[t.K]
            out[u] = (K, params[t.b], K @ self.J.J.to(K.dtype).T if t.skew else K)
        return out

    def kick_grads(self, grads: Operands) -> list[Tensor | None]:
        out: list[Tensor | None] = [None] * len(self.node_names)
        for u, t in self.sigma_terms.items():
            gK, gb, gM = grads[u]
            assert gM is not None  # M = K J^T or K: never the identity
            out[t.b] = gb
            out[t.K] = gK + (gM @ self.J.J.to(gM.dtype) if t.skew else gM)
        return out

    def energy(self, t: float | Tensor, y: Tensor) -> Tensor:
        """``H(t, y)``, one value per sample (shape ``(batch,)``)."""
        if self.activation.antiderivative is None:
            raise ValueError(
                f"energy() needs the antiderivative of sigma={self.activation.name!r}: "
                "pass sigma_antiderivative for a custom sigma"
            )
        return self._energy(self.params_at(t), y)

    def _energy(self, params: Params, y: Tensor) -> Tensor:
        antiderivative = self.activation.antiderivative
        assert antiderivative is not None  # energy() checked
        halves = {"x": y}
        if "x" not in self.sigma_terms:
            halves = dict(zip("yz", y.chunk(2, dim=1)))
        terms = [
            antiderivative(linear_op(params[t.K], halves[other_half(u)], params[t.b])).flatten(1).sum(1)
            for u, t in self.sigma_terms.items()
        ]
        return torch.stack(terms).sum(0)


@register_field("J2", aliases=("H1_J2",), J="J2")
@register_field("J1", aliases=("H1_J1",), J="J1")
class HamiltonianField(SigmaTermField):
    """``f(t, y) = J K(t)^T sigma(K(t) y + b(t))`` with a free K ("H1" of Galimberti et al.).

    Node-axis parameters: ``K`` of shape ``(n_nodes, m, n)`` (dense) or
    ``(n_nodes, m, C, k, k)`` (conv), ``b`` of shape ``(n_nodes, m)``. ``J`` is a buffer.

    Args:
        features: n, the state width (features or channels).
        J: ``"J1"`` (``[[0, I], [-I, 0]]``, needs even n), ``"J2"`` (+1 above the diagonal,
            -1 below) or a skew-symmetric ``(n, n)`` matrix.
        sigma: a name of `ACTIVATIONS` or a callable.
        width: m, the output width of K (default n).
        kernel_size: None (dense) or an odd kernel size (convolutional K).
        n_nodes: number of weight nodes (see `TimeNodes`).
        dt: time between nodes.
        time_mode: "constant", "piecewise" or "linear" (default by ``n_nodes``).
        sigma_antiderivative: sigma~ for a callable sigma (needed only by `energy`).
    """

    node_names = ("K", "b")
    sigma_terms = {"x": SigmaTerm(0, 1, 1.0, skew=True)}

    def __init__(
        self,
        features: int,
        J: str | Tensor = "J1",
        sigma: str | Callable[[Tensor], Tensor] = "tanh",
        *,
        width: int | None = None,
        kernel_size: int | None = None,
        n_nodes: int = 1,
        dt: float = 1.0,
        time_mode: str | None = None,
        sigma_antiderivative: Callable[[Tensor], Tensor] | None = None,
    ):
        super().__init__(features, kernel_size, n_nodes, dt, time_mode)
        self._init_sigma(sigma, sigma_antiderivative)
        self.J = SkewMatrix(J, features)
        self.width = features if width is None else width
        self.K = self._weight(self.width, features)
        self.b = self._bias(self.width)

    @classmethod
    def needs_even_features(cls, **options: object) -> bool:
        return options.get("J", "J1") == "J1"

    def _f(self, params: Params, y: Tensor) -> Tensor:
        return self.drive(params, "x", y)

    def extra_repr(self) -> str:
        return f"J={self.J.kind}, sigma={self.activation.name}, width={self.width}, " + super().extra_repr()
