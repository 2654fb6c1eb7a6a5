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

from torch import Tensor

from .activations import resolve_activation
from .base import NodeField, Params, linear_op, linear_op_t
from .skew import SkewMatrix


class SigmaTerm(NamedTuple):
    """A term ``sign * J K^T sigma(K v + b)`` of a field, by the indices of its K and b in
    ``node_names`` (J None: the identity). Fields made only of such terms list them in
    ``_sigma_terms()`` (keyed by the half they drive: "y", "z", or "x" for the whole state), which
    lets :mod:`contham.fused` run their dense blocks with hand-written gradients."""

    K: int
    b: int
    sign: float
    J: Tensor | None


class EnergyMixin:
    """``energy(t, y)``: the Hamiltonian H per sample, for fields that define ``_energy``."""

    def _init_sigma(self, sigma: str | Callable, antiderivative: Callable | None) -> None:
        self.sigma, self._sigma_integral, self.sigma_name = resolve_activation(sigma, antiderivative)

    def energy(self, t: float | Tensor, y: Tensor) -> Tensor:
        """``H(t, y) = 1^T sigma~(K(t) y + b(t))``, one value per sample (shape ``(batch,)``)."""
        if self._sigma_integral is None:
            raise ValueError("energy() needs sigma_antiderivative for a custom sigma")
        return self._energy(self.params_at(t), y)

    def _sum(self, pre_activation: Tensor) -> Tensor:
        return self._sigma_integral(pre_activation).flatten(1).sum(1)


class HamiltonianField(EnergyMixin, NodeField):
    """``f(t, y) = J K(t)^T sigma(K(t) y + b(t))`` with a free K ("H1" of Galimberti et al.).

    Node-axis parameters: ``K`` of shape ``(n_nodes, m, n)`` (dense) or
    ``(n_nodes, m, C, k, k)`` (conv), ``b`` of shape ``(n_nodes, m)``. ``J`` is a buffer.

    Args:
        features: n, the state width (features or channels).
        J: ``"J1"`` (``[[0, I], [-I, 0]]``, needs even n), ``"J2"`` (+1 above the diagonal,
            -1 below) or a skew-symmetric ``(n, n)`` matrix.
        sigma: ``"tanh"``, ``"relu"``, ``"sigmoid"``, ``"identity"`` or a callable.
        width: m, the output width of K (default n).
        kernel_size: None (dense) or an odd kernel size (convolutional K).
        n_nodes, dt, time_mode: the node layout (:class:`~contham.fields.TimeNodes`).
        sigma_antiderivative: sigma~ for a callable sigma (needed only by :meth:`energy`).
    """

    node_names = ("K", "b")

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

    def _f(self, params: Params, y: Tensor) -> Tensor:
        # J K^T v = (K J^T)^T v, and K J^T is J applied along K's input axis (dim 1): J acts on
        # the small weight instead of on the whole activation. step_weights() passes K J^T along.
        K, b, *KJ = params
        return linear_op_t(KJ[0] if KJ else self.J(K), self.sigma(linear_op(K, y, b)))

    def step_weights(self) -> list[Params]:
        KJ = self.J(self.K.flatten(0, 1)).view_as(self.K)  # every node's K J^T at once
        return list(zip(self.K.unbind(0), self.b.unbind(0), KJ.unbind(0)))

    def _energy(self, params: Params, y: Tensor) -> Tensor:
        K, b, *_ = params
        return self._sum(linear_op(K, y, b))

    def _sigma_terms(self) -> dict[str, SigmaTerm]:
        return {"x": SigmaTerm(0, 1, 1.0, self.J.J)}

    def extra_repr(self) -> str:
        return f"J={self.J.kind}, sigma={self.sigma_name}, width={self.width}, " + super().extra_repr()
