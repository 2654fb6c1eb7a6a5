"""Fused dense blocks: all steps of a :class:`~contham.blocks.HamiltonianBlock` in one autograd node.

On dense states (the 2-D protocol: a handful of features, tens of layers) each step is a few tiny
matrix products, and eager autograd spends more time recording and replaying them than computing
them. Fields made of terms ``sign * J K^T sigma(K v + b)`` (H1 with any J, the two-layer and the
separable fields; :class:`~contham.fields.SigmaTerm`) integrated by forward Euler
(H1) or a split solver (the split fields) are a sequence of *kicks*
``u <- u + c h sign * sigma(v K^T + b) K J^T`` in row form. Here each kick costs three kernels
forward (``addmm``, sigma in place, ``addmm``) and three backward: with ``w = sigma(z)``,

* ``dL/dz = c h sign * (dL/du (K J^T)^T) * sigma'(z)``, with sigma' read off w;
* ``dL/dv += dL/dz K``;

and the weight gradients of all steps come at the end from a few batched products
(``dL/dK = dL/dz^T v + (c h sign * w^T dL/du) J``, ``dL/db = sum dL/dz``). Kept for the backward
pass: the state after every kick and every w, as step-by-step autograd keeps. The gradients are
those of the same forward map (tests compare them with autograd in float64); they cannot be
differentiated again (no double backward, no ``torch.func`` transforms): use
``gradient=Backprop(higher_order=True)`` for those.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from .fields.base import other_half
from .fields.hamiltonian import SigmaTermField

if TYPE_CHECKING:
    from .solvers.base import Kick
    from .solvers.fixed import Step

FUSED_MAX_ROWS = 1024
"""Blocks take the fused path on states of at most this many rows. Above, step-by-step autograd
is as fast or faster: one training step (forward and backward) of 8 H1 layers on 8 features,
1 CPU thread, fused against step-by-step: 1.5x faster at 125 rows, 0.99x at 1,000, 0.82x at
16,000, 0.54x at 78,400 (the per-pixel H-DNN on a batch of 100 MNIST images)."""

# One kick of the plan: (half moved u, half read v, coefficient c h sign); the term driving u is named u
PlanKick = tuple[str, str, float]


class FusedPlan:
    """The bookkeeping of a fused block: its kicks over all steps and where each reads and writes.

    Every kick writes the half it moves into the next row of that half's *history* (forward:
    the states, backward: the adjoints), so nothing is stacked afterwards. ``kicks[k]`` is
    ``(u, v, coef, j, i, row_u, row_v)``: step j, the kick's index i among u's kicks
    (``j * per_step[u] + slot``, slot its place among them within a step), and the history rows
    of u (after the kick) and of v (read). ``reads[u]``: the rows of v read by u's kicks.
    Build it with :func:`fused_plan`."""

    field: Any  # a SigmaTermField (split for split steps)

    def __init__(self, field: SigmaTermField, step: list[PlanKick]):
        self.field, n = field, field.nodes.n
        # sigma in place, and sigma' from sigma's output (plain attributes: torch.compile traces them)
        self.inplace, self.derivative = field.activation.inplace, field.activation.derivative
        parts = sorted({u for u, _, _ in step})
        self.per_step = {u: sum(k[0] == u for k in step) for u in parts}
        self.rows = {h: 1 + n * sum(k[0] == h for k in step) for h in parts}  # states of h
        self.adjoint_rows = {h: 1 + n * sum(k[1] == h for k in step) for h in parts}  # dL/dh
        self.coef = {}  # (u, slot) -> c h sign
        row = dict.fromkeys(parts, 0)
        self.kicks: list[tuple[str, str, float, int, int, int, int]] = []
        self.reads: dict[str, list[int]] = {u: [] for u in parts}
        for j in range(n):
            slot = dict.fromkeys(parts, 0)
            for u, v, coef in step:
                self.coef[u, slot[u]] = coef
                self.reads[u].append(row[v])
                self.kicks.append((u, v, coef, j, j * self.per_step[u] + slot[u], row[u] + 1, row[v]))
                row[u] += 1
                slot[u] += 1
        self.source = {u: v for u, v, _ in step}

    def halves(self, x: Tensor) -> dict[str, Tensor]:
        return {"x": x} if "x" in self.rows else dict(zip("yz", self.field.split(x)))

    def whole(self, halves: dict[str, Tensor]) -> Tensor:
        return halves["x"].clone() if "x" in halves else self.field.merge(halves["y"], halves["z"])

    def histories(self, x: Tensor, rows: dict[str, int]) -> dict[str, Tensor]:
        """Empty histories of ``rows[h]`` rows for the halves h of ``x``, with ``x``'s in row 0."""
        hist = {}
        for h, part in self.halves(x).items():
            hist[h] = x.new_empty(rows[h], *part.shape)
            hist[h][0] = part
        return hist


def fused_plan(field: SigmaTermField, kicks: list[Kick] | None, steps: list[Step]) -> FusedPlan | None:
    """The :class:`FusedPlan` of ``steps`` of a solver whose step on ``field`` is ``kicks``, or
    None if the fused path cannot run it. It runs dense :class:`~contham.fields.SigmaTermField` s
    with a fusable activation (:class:`~contham.fields.Activation`) whose step is a sequence of
    kicks on the halves the field's terms drive (forward Euler on H1, a split method on a split
    field), in the discrete mode: step j on node j with ``h = dt``."""
    if not isinstance(field, SigmaTermField) or field.conv or not field.activation.fusable or kicks is None:
        return None
    terms, nodes = field.sigma_terms, field.nodes
    if {k.u for k in kicks} != set(terms) or len(steps) != nodes.n:
        return None
    if any(node != j or abs(h - nodes.dt) > 1e-9 * nodes.dt for j, (_, h, node) in enumerate(steps)):
        return None
    return FusedPlan(field, [(k.u, other_half(k.u), k.c * nodes.dt * terms[k.u].sign) for k in kicks])


def _outputs(field: SigmaTermField, params: tuple[Tensor, ...]) -> dict[str, Tensor]:
    """Per term, the matrices ``M = K J^T`` that map sigma's output back (row form)."""
    out = {}
    for u, term in field.sigma_terms.items():
        K = params[term.K]
        out[u] = K @ field.J.J.to(K.dtype).T if term.skew else K
    return out


def _run(plan: FusedPlan, x: Tensor, params: tuple[Tensor, ...]) -> tuple[Tensor, dict, dict]:
    """The forward pass: the final state, the state histories and, per term, the activations w
    of its kicks ``(n_steps, kicks per step, batch, width)``."""
    terms = plan.field.sigma_terms
    hist = plan.histories(x, plan.rows)
    n = params[0].shape[0]
    W = {u: x.new_empty(n, plan.per_step[u], x.shape[0], params[t.K].shape[1]) for u, t in terms.items()}
    M = {u: m.unbind(0) for u, m in _outputs(plan.field, params).items()}
    Kt = {u: params[t.K].transpose(1, 2).unbind(0) for u, t in terms.items()}
    b = {u: params[t.b].unbind(0) for u, t in terms.items()}
    w = {u: t.flatten(0, 1).unbind(0) for u, t in W.items()}
    rows = {h: t.unbind(0) for h, t in hist.items()}
    act = plan.inplace
    assert act is not None  # fused_plan checked that the activation is fusable
    for u, v, coef, j, i, row_u, row_v in plan.kicks:
        out = act(torch.addmm(b[u][j], rows[v][row_v], Kt[u][j], out=w[u][i]))
        torch.addmm(rows[u][row_u - 1], out, M[u][j], alpha=coef, out=rows[u][row_u])
    return plan.whole({h: r[-1] for h, r in rows.items()}), hist, W


class _FusedSteps(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, plan: FusedPlan, x: Tensor, *params: Tensor) -> Tensor:
        terms = plan.field.sigma_terms
        y, hist, W = _run(plan, x, params)
        ctx.plan, ctx.terms = plan, terms
        ctx.save_for_backward(*params, *(hist[h] for h in terms), *(W[u] for u in terms))
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: Tensor):
        plan, terms = ctx.plan, ctx.terms
        k, m = len(ctx.saved_tensors) - 2 * len(terms), len(terms)
        params = ctx.saved_tensors[:k]
        hist = dict(zip(terms, ctx.saved_tensors[k : k + m]))
        W = dict(zip(terms, ctx.saved_tensors[k + m :]))
        # D = c h sign * sigma'(z) per kick; GZ receives dL/dz per kick
        derivative = plan.derivative
        assert derivative is not None  # fused_plan checked that the activation is fusable
        D = {u: derivative(w) for u, w in W.items()}
        for (u, slot), c in plan.coef.items():
            D[u][:, slot] *= c
        GZ = {u: torch.empty_like(w) for u, w in W.items()}
        Mt = {u: m.transpose(1, 2).unbind(0) for u, m in _outputs(plan.field, params).items()}
        K = {u: params[t.K].unbind(0) for u, t in terms.items()}
        d = {u: t.flatten(0, 1).unbind(0) for u, t in D.items()}
        gz = {u: t.flatten(0, 1).unbind(0) for u, t in GZ.items()}
        # adjoint histories: the adjoint of half h changes at every kick that reads h
        adj = plan.histories(grad, plan.adjoint_rows)
        rows = {h: t.unbind(0) for h, t in adj.items()}
        at = dict.fromkeys(adj, 0)
        seen: dict[str, list[int]] = {u: [] for u in terms}  # adjoint row of u at each kick
        for u, v, _, j, i, _, _ in reversed(plan.kicks):
            seen[u].append(at[u])
            g = torch.mm(rows[u][at[u]], Mt[u][j], out=gz[u][i]).mul_(d[u][i])
            at[v] += 1
            torch.addmm(rows[v][at[v] - 1], g, K[u][j], out=rows[v][at[v]])
        grads: list[Tensor | None] = [None] * k
        for u, term in terms.items():
            steps, per, batch, width = W[u].shape
            A = adj[u].index_select(0, torch.tensor(seen[u][::-1], device=grad.device))
            S = hist[plan.source[u]].index_select(0, torch.tensor(plan.reads[u], device=grad.device))
            wc = W[u].clone()
            for slot in range(per):
                wc[:, slot] *= plan.coef[u, slot]
            gM = torch.bmm(wc.view(steps, per * batch, width).transpose(1, 2), A.view(steps, per * batch, -1))
            if term.skew:
                gM = gM @ plan.field.J.J.to(gM.dtype)
            g = GZ[u].view(steps, per * batch, width)
            grads[term.K] = torch.baddbmm(gM, g.transpose(1, 2), S.view(steps, per * batch, -1))
            grads[term.b] = g.sum(1)
        return (None, plan.whole({h: r[at[h]] for h, r in rows.items()}), *grads)


def fused_steps(plan: FusedPlan, x: Tensor) -> Tensor:
    """Run the steps of :func:`fused_plan` from ``x``: one autograd node when gradients are
    needed."""
    params = plan.field.node_params()
    if torch.is_grad_enabled() and (x.requires_grad or any(p.requires_grad for p in params)):
        return _FusedSteps.apply(plan, x, *params)
    return _run(plan, x, params)[0]
