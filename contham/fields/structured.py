"""Structured Hamiltonian fields of the literature, in the notation of `.hamiltonian`.

With the state split channel-wise in halves ``x = (y, z)``:

* `TwoLayerField` (Chang et al. 2018, the report's "TwoLayersHam"):
  ``K = [[0, K1], [K2, 0]]``, ``J = J1``, i.e. ``y' = K1^T sigma(K1 z + b1)``,
  ``z' = -K2^T sigma(K2 y + b2)``.
* `SeparableField` ("H2", Galimberti et al.): ``K = blockdiag(Kp, Kq)``, ``J = J1``, i.e.
  ``y' = Kq^T sigma(Kq z + bq)``, ``z' = -Kp^T sigma(Kp y + bp)``.
* `SymmetricField` ("MS1", Haber & Ruthotto 2017): ``K = [[0, K0], [-K0^T, 0]]`` with
  ``J K^T = I``, i.e. ``f = sigma(K x + b)``: ``y' = sigma(K0 z + b_y)``,
  ``z' = sigma(-K0^T y + b_z)``. Not a canonical Hamiltonian field: no energy.
* `AntisymmetricField` ("MS2", Haber & Ruthotto 2017):
  ``f = sigma((W - W^T - gamma I) y + b)``.

A free K with J1 or J2 ("H1") is `HamiltonianField`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from .activations import resolve_activation
from .base import Params, SplitField, adjoint_weight, linear_op, linear_op_t
from .hamiltonian import SigmaTerm, SigmaTermField
from .kicks import KickTerms, Operands
from .registry import register_field
from .skew import SkewMatrix


class _SplitHamiltonian(SigmaTermField, SplitField):
    """Shared constructor of the canonical split Hamiltonians: one (K, b) reads z and drives y,
    the other reads y and drives z, as their ``sigma_terms`` say."""

    def __init__(
        self,
        features: int,
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
        self.width = self.half_features if width is None else width
        self.J = SkewMatrix("J1", features)
        for name in self.node_names:
            setattr(
                self,
                name,
                self._weight(self.width, self.half_features) if name.startswith("K") else self._bias(self.width),
            )

    def _dy(self, params: Params, z: Tensor) -> Tensor:
        return self.drive(params, "y", z)

    def _dz(self, params: Params, y: Tensor) -> Tensor:
        return self.drive(params, "z", y)

    def extra_repr(self) -> str:
        return f"sigma={self.activation.name}, width={self.width}, " + super().extra_repr()


@register_field("TwoLayersHam", aliases=("MS3",))
class TwoLayerField(_SplitHamiltonian):
    """Two-layer Hamiltonian of Chang et al. 2018: ``y' = K1^T sigma(K1 z + b1)``,
    ``z' = -K2^T sigma(K2 y + b2)``.

    Node-axis parameters ``K1``, ``K2``: ``(n_nodes, m, n/2[, k, k])``; ``b1``, ``b2``:
    ``(n_nodes, m)``; m = ``width`` (default n/2). Split solvers update y first (Chang et al.).
    Arguments as `HamiltonianField` without ``J`` (always J1).
    """

    node_names = ("K1", "b1", "K2", "b2")
    sigma_terms = {"y": SigmaTerm(0, 1, 1.0), "z": SigmaTerm(2, 3, -1.0)}
    first = "y"


@register_field("H2")
class SeparableField(_SplitHamiltonian):
    """Separable Hamiltonian "H2" (Galimberti et al.): ``K = blockdiag(Kp, Kq)``, ``J = J1``;
    ``y' = Kq^T sigma(Kq z + bq)``, ``z' = -Kp^T sigma(Kp y + bp)``.

    Node-axis parameters ``Kp``, ``Kq``: ``(n_nodes, m, n/2[, k, k])``; ``bp``, ``bq``:
    ``(n_nodes, m)``. Split solvers update z first (the semi-implicit Euler of H2-DNN).
    """

    node_names = ("Kp", "bp", "Kq", "bq")
    sigma_terms = {"y": SigmaTerm(2, 3, 1.0), "z": SigmaTerm(0, 1, -1.0)}
    first = "z"
    Kp: nn.Parameter
    bp: nn.Parameter
    Kq: nn.Parameter
    bq: nn.Parameter
    K_mask: Tensor | None

    def __init__(
        self,
        features: int,
        sigma: str | Callable[[Tensor], Tensor] = "tanh",
        *,
        K_mask: Tensor | None = None,
        **options: Any,
    ):
        """Arguments as `TwoLayerField`, and ``K_mask``: None, or a 0/1 tensor of shape
        ``(2, m, n/2[, k, k])`` that zeroes entries of Kp (``K_mask[0]``) and Kq (``K_mask[1]``)
        at every node: the sparse H2 of Galimberti et al.'s distributed-control example. Masked
        entries start at zero and get no gradient, so they stay zero through training;
        `effective_parameters` counts the others."""
        super().__init__(features, sigma, **options)
        if K_mask is not None:
            shape = (2, *self.Kp.shape[1:])
            if not isinstance(K_mask, Tensor) or tuple(K_mask.shape) != shape:
                got = tuple(K_mask.shape) if isinstance(K_mask, Tensor) else type(K_mask).__name__
                raise ValueError(f"K_mask must be a 0/1 tensor of shape {shape}; got {got}")
            if not bool(((K_mask == 0) | (K_mask == 1)).all()):
                raise ValueError("K_mask must hold only 0 and 1")
            self.register_buffer("K_mask", K_mask.to(self.Kp.dtype))
        else:
            self.K_mask = None
        self.apply_mask()

    @torch.no_grad()
    def apply_mask(self) -> None:
        """Zero the masked entries of the stored Kp and Kq (after an in-place initialisation)."""
        if self.K_mask is not None:
            self.Kp.mul_(self.K_mask[0])
            self.Kq.mul_(self.K_mask[1])

    def node_params(self) -> Params:
        if self.K_mask is None:
            return super().node_params()
        return (self.Kp * self.K_mask[0], self.bp, self.Kq * self.K_mask[1], self.bq)

    def effective_parameters(self) -> int:
        """Trainable entries that the mask leaves free (all of them without a mask)."""
        total: int = sum(p.numel() for p in (self.Kp, self.bp, self.Kq, self.bq))
        if self.K_mask is None:
            return total
        return total - self.nodes.n * int((self.K_mask == 0).sum())


@register_field("Symmetric", aliases=("MS1",))
class SymmetricField(SplitField, KickTerms):
    """ "MS1" of Haber & Ruthotto 2017: ``y' = sigma(K0 z + b_y)``, ``z' = sigma(-K0^T y + b_z)``.

    Node-axis parameters ``K0``: ``(n_nodes, n/2, n/2[, k, k])``, ``b``: ``(n_nodes, n)``
    (``b_y`` its first half). Split solvers update z first (their Verlet network).
    """

    node_names = ("K0", "b")
    first = "z"

    def __init__(
        self,
        features: int,
        sigma: str | Callable[[Tensor], Tensor] = "tanh",
        *,
        kernel_size: int | None = None,
        n_nodes: int = 1,
        dt: float = 1.0,
        time_mode: str | None = None,
    ):
        super().__init__(features, kernel_size, n_nodes, dt, time_mode)
        self.activation = resolve_activation(sigma)
        self.sigma = self.activation.fn
        self.K0 = self._weight(self.half_features, self.half_features)
        self.b = self._bias(features)

    def _dy(self, params: Params, z: Tensor) -> Tensor:
        K0, b = params
        return self.sigma(linear_op(K0, z, b[: self.half_features]))

    def _dz(self, params: Params, y: Tensor) -> Tensor:
        K0, b = params
        return self.sigma(_add_bias(-linear_op_t(K0, y), b[self.half_features :]))

    def kick_signs(self) -> dict[str, float]:
        return {"y": 1.0, "z": 1.0}

    def kick_shapes(self) -> dict[str, tuple[int, int]]:
        half = self.half_features
        return {"y": (half, half), "z": (half, half)}

    def kick_operands(self, params: tuple[Tensor, ...]) -> Operands:
        """``y' = sigma(K0 z + b_y)``, ``z' = sigma(-K0^T y + b_z)``, M = I."""
        K0, b = params
        half = self.half_features
        return {"y": (K0, b[:, :half], None), "z": (-K0.transpose(1, 2), b[:, half:], None)}

    def kick_grads(self, grads: Operands) -> list[Tensor | None]:
        (gK_y, gb_y, _), (gK_z, gb_z, _) = grads["y"], grads["z"]
        return [gK_y - gK_z.transpose(1, 2), torch.cat((gb_y, gb_z), 1)]

    def equation_weights(self) -> tuple[tuple[str, Tensor], ...]:
        """K = [[0, K0], [-K0^T, 0]]: K0 appears twice."""
        return ("K0", self.K0), ("K0", -adjoint_weight(self.K0)), ("b", self.b)

    def extra_repr(self) -> str:
        return f"sigma={self.activation.name}, " + super().extra_repr()


@register_field("Antisymmetric", aliases=("MS2",))
class AntisymmetricField(KickTerms):
    """ "MS2" of Haber & Ruthotto 2017: ``f(t, y) = sigma((W - W^T - gamma I) y + b)``.

    ``K = W - W^T`` is antisymmetric (for a conv, ``W - W^T`` is the convolution minus its
    adjoint); ``gamma >= 0`` adds their optional damping. Node-axis parameters ``W``:
    ``(n_nodes, n, n[, k, k])``, ``b``: ``(n_nodes, n)``.
    """

    node_names = ("W", "b")

    def __init__(
        self,
        features: int,
        sigma: str | Callable[[Tensor], Tensor] = "tanh",
        *,
        gamma: float = 0.0,
        kernel_size: int | None = None,
        n_nodes: int = 1,
        dt: float = 1.0,
        time_mode: str | None = None,
    ):
        super().__init__(features, kernel_size, n_nodes, dt, time_mode)
        if isinstance(gamma, bool) or not isinstance(gamma, (int, float)) or not gamma >= 0:
            raise ValueError(f"gamma must be a number >= 0; got {gamma!r}")
        self.gamma = float(gamma)
        self.activation = resolve_activation(sigma)
        self.sigma = self.activation.fn
        self.W = self._weight(features, features)
        self.b = self._bias(features)

    def _f(self, params: Params, y: Tensor) -> Tensor:
        W, b = params
        Ky = linear_op(W, y, b) - linear_op_t(W, y)
        if self.gamma:
            Ky = Ky - self.gamma * y
        return self.sigma(Ky)

    def kick_signs(self) -> dict[str, float]:
        return {"x": 1.0}

    def kick_shapes(self) -> dict[str, tuple[int, int]]:
        return {"x": (self.features, self.features)}

    def kick_operands(self, params: tuple[Tensor, ...]) -> Operands:
        """``y' = sigma((W - W^T - gamma I) y + b)``, M = I."""
        W, b = params
        K = W - W.transpose(1, 2)
        if self.gamma:
            K = K - self.gamma * torch.eye(self.features, dtype=K.dtype, device=K.device)
        return {"x": (K, b, None)}

    def kick_grads(self, grads: Operands) -> list[Tensor | None]:
        gK, gb, _ = grads["x"]
        return [gK - gK.transpose(1, 2), gb]

    def equation_weights(self) -> tuple[tuple[str, Tensor], ...]:
        """K = W - W^T (the damping gamma I is not a weight)."""
        return ("W", self.W - adjoint_weight(self.W)), ("b", self.b)

    def extra_repr(self) -> str:
        return f"sigma={self.activation.name}, gamma={self.gamma:g}, " + super().extra_repr()


def _add_bias(x: Tensor, b: Tensor) -> Tensor:
    return x + (b if x.dim() == 2 else b[:, None, None])
