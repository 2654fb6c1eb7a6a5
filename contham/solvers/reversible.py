"""Exact backprop without stored activations through reversible split schemes.

A split step (symplectic Euler, Verlet/leapfrog) is a sequence of *kicks*
``u <- u + c h f_u(v)`` in which one half ``u`` of the state moves and the other half ``v`` does
not (`Kick`). Each kick is undone by subtracting the same term, so the
state before a step can be rebuilt from the state after it (Chang et al. 2018 note this for their
Verlet network). `reversible_steps` keeps only the final state in the forward pass. In the
backward pass it walks the kicks in reverse order. For each kick it evaluates ``f_u(v)`` once,
recorded by autograd: the value restores ``u``, and its vector-Jacobian product with
``c h dL/du`` gives the gradients for ``v`` and for the step's weights. Activation memory is
that of one kick, whatever the depth. Backward costs one extra evaluation per kick compared with
ordinary backprop. The gradients are those of the computed forward map, up to the rounding of the
reconstruction.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ..fields.base import FrozenField, NodeField, other_half
from .base import Step
from .fixed import SplitSolver


class _ReversibleSteps(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, field: Any, solver: SplitSolver, steps: list[Step], x: Tensor, *params: Tensor):
        halves = solver.enter(field, x)
        for s, h, node in steps:
            halves = solver.advance(FrozenField(field, tuple(p[node] for p in params)), s, h, halves)
        x = solver.leave(field, halves)
        ctx.field, ctx.solver, ctx.steps = field, solver, steps
        ctx.save_for_backward(x, *params)
        return x

    @staticmethod
    def backward(ctx: Any, grad: Tensor):
        x, *params = ctx.saved_tensors
        field, solver = ctx.field, ctx.solver
        grads = [torch.zeros_like(p) for p in params]
        state, adjoint = solver.enter(field, x), solver.enter(field, grad)
        kicks = solver.kicks(field)[::-1]
        for s, h, node in reversed(ctx.steps):
            weights = tuple(p[node] for p in params)
            for kick in kicks:
                u, v = kick.u, other_half(kick.u)

                def term(source: Tensor, *w: Tensor) -> Tensor:
                    return solver.term(FrozenField(field, w), kick, s, h, source)  # noqa: B023

                push, g_source, g_weights = _vjp(term, state[v], weights, (kick.c * h) * adjoint[u])
                state[u] = state[u] - (kick.c * h) * push
                adjoint[v] = adjoint[v] + g_source
                for total, g in zip(grads, g_weights):
                    if g is not None:  # the term of one half reads only its own weights
                        total[node] += g
        return (None, None, None, solver.leave(field, adjoint), *grads)


def _vjp(
    term: Any, source: Tensor, weights: tuple[Tensor, ...], cotangent: Tensor
) -> tuple[Tensor, Tensor, list[Tensor | None]]:
    """``term(source, *weights)`` and its vector-Jacobian products with ``cotangent`` in the source
    and in the weights (None for a weight the term does not read). Eager, through
    ``torch.autograd.grad`` (1.7x less time per kick than ``torch.func.vjp`` on small states);
    under ``torch.compile``, which traces no ``torch.autograd.grad`` in a backward pass, through
    ``torch.func.vjp``."""
    if torch.compiler.is_compiling():
        value, pull = torch.func.vjp(term, source, *weights)  # type: ignore[misc]
        g_source, *g_weights = pull(cotangent)
        return value, g_source, g_weights
    with torch.enable_grad():
        leaves = [t.detach().requires_grad_(True) for t in (source, *weights)]
        value = term(*leaves)
    g_source, *g_weights = torch.autograd.grad(value, leaves, cotangent, allow_unused=True)
    return value.detach(), torch.zeros_like(source) if g_source is None else g_source, list(g_weights)


def reversible_steps(field: NodeField, solver: SplitSolver, x: Tensor, steps: list[Step]) -> Tensor:
    """Run the fixed ``steps`` ``(t, h, node)`` of a split ``solver`` on ``field`` from ``x``,
    storing no intermediate state for backprop (see the module docstring).

    ``field`` must keep all its trainable weights on the node axis (``node_names``), and every
    step must name its node."""
    params = field.node_params()
    if any(all(p is not q for q in params) for p in field.parameters()) or any(node is None for _, _, node in steps):
        raise ValueError(
            "gradient='reversible' needs a field whose parameters all lie on the node axis, with piecewise or "
            "constant weights (one node per step)"
        )
    return _ReversibleSteps.apply(field, solver, steps, x, *params)
