"""Skew-symmetric interconnection matrices J (acting on features or channels, dim 1)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .._checks import check_even

J_NAMES = ("J1", "J2")


def j1_matrix(n: int) -> Tensor:
    """``J1 = [[0, I], [-I, 0]]`` on the two halves of ``n`` (even) coordinates."""
    check_even("features", n, "J1 acts on two halves")
    half = n // 2
    J = torch.zeros(n, n)
    J[:half, half:] = torch.eye(half)
    J[half:, :half] = -torch.eye(half)
    return J


def j2_matrix(n: int) -> Tensor:
    """``J2``: +1 above the diagonal, -1 below (Galimberti et al.)."""
    return torch.triu(torch.ones(n, n), 1) - torch.tril(torch.ones(n, n), -1)


class SkewMatrix(nn.Module):
    """A constant skew-symmetric J applied along dim 1 of a ``(batch, n, ...)`` tensor.

    ``J`` is ``"J1"``, ``"J2"`` or a user ``(n, n)`` matrix checked to satisfy ``J = -J^T``.
    The matrix is a registered buffer (moves with ``.to()``, saved in the state dict). J1 and J2
    are applied in O(n) per position (a swap, a cumulative sum) instead of a matrix product.
    """

    J: Tensor

    def __init__(self, J: str | Tensor, n: int):
        super().__init__()
        if isinstance(J, str):
            if J not in J_NAMES:
                raise ValueError(
                    f"J must be one of {', '.join(map(repr, J_NAMES))} or a skew-symmetric matrix; got {J!r}"
                )
            matrix = j1_matrix(n) if J == "J1" else j2_matrix(n)
            self.kind = J
        else:
            matrix = torch.as_tensor(J)
            if matrix.shape != (n, n) or not matrix.is_floating_point():
                raise ValueError(f"J must be a floating ({n}, {n}) matrix; got shape {tuple(matrix.shape)}")
            scale = max(1.0, float(matrix.abs().max()))
            if float((matrix + matrix.T).abs().max()) > 1e-6 * scale:
                raise ValueError("J must be skew-symmetric (J = -J^T); the given matrix is not")
            self.kind = "custom"
        self.register_buffer("J", matrix.detach().clone())

    def forward(self, x: Tensor) -> Tensor:
        """``J x`` along dim 1."""
        if self.kind == "J1":
            first, second = x.chunk(2, dim=1)
            return torch.cat((second, -first), dim=1)
        if self.kind == "J2":
            # (J2 x)_i = sum_{k>i} x_k - sum_{k<i} x_k = S - 2 C_i + x_i with C the inclusive cumsum.
            c = x.cumsum(dim=1)
            return c[:, -1:] - 2.0 * c + x
        return torch.einsum("ij,bj...->bi...", self.J.to(x.dtype), x)

    def extra_repr(self) -> str:
        return f"{self.kind}, n={self.J.shape[0]}"
