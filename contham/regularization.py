"""Weight smoothness regularisation of time-dependent weights (report eq. A.1-A.3).

For every `NodeField` in a model, with nodes ``j = 0..N-1`` ``h = dt`` apart:

    R(K) = h~ sum_j ||K_j - K_{j-1}||_F^2,   R(b) = h~ sum_j ||b_j - b_{j-1}||^2,

summed over the field's weights (K1 and K2 of a two-layer field, as in Chang et al.'s eq. 2.17)
and over all fields (the report's units), with ``h~ = 1/h`` (``h_div``: Haber & Ruthotto, Chang et
al.) or ``h~ = h`` (Galimberti et al.). The penalty is ``alpha (R(K) + R(b))`` with ``b_in_reg``,
else ``alpha R(K)``. Differences are taken along the node axis in one operation per tensor.

``of`` says what K is. ``"parameters"`` (the report's): each node-axis weight as stored.
``"K"`` (the H-DNN papers' and their code's): the matrix K of ``f = J K^T sigma(K y + b)``
(`equation_weights`). The two differ only where K is not
its parameters: MS1's K = [[0, K0], [-K0^T, 0]] counts K0 twice, and MS2's K = W - W^T.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ._checks import check_bool, check_choice, check_nonnegative
from .fields.base import NodeField

SMOOTHED = ("parameters", "K")
"""What the smoothness penalty measures the changes of: see the module docstring."""


def smoothness(
    model: nn.Module, alpha: float = 1.0, *, b_in_reg: bool = True, h_div: bool = False, of: str = "parameters"
) -> Tensor:
    """``alpha (R(K) + [b_in_reg] R(b))`` over every node-axis weight in ``model`` (a scalar
    tensor on the model's device; zero if it has no field with two or more nodes); ``of``: one of
    `SMOOTHED`."""
    check_nonnegative("alpha", alpha)
    check_bool("b_in_reg", b_in_reg)
    check_bool("h_div", h_div)
    check_choice("of", of, SMOOTHED)
    terms = []
    for field in model.modules():
        if not isinstance(field, NodeField) or field.nodes.n < 2:
            continue
        h = field.nodes.dt
        scale = 1.0 / h if h_div else h
        weights = field.equation_weights() if of == "K" else zip(field.node_names, field.node_params())
        for name, weight in weights:
            if name in field.bias_names and not b_in_reg:
                continue
            terms.append(scale * torch.diff(weight, dim=0).square().sum())
    if not terms:
        reference = next(model.parameters(), None)
        return torch.zeros((), device=None if reference is None else reference.device)
    return alpha * torch.stack(terms).sum()
