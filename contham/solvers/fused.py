"""Fused dense blocks: all steps of a `HamiltonianBlock` in one autograd node.

On dense states each step is a few small matrix products: on a 2-D benchmark (125 rows of 4
features, tens of layers) eager autograd spends more time recording and replaying them than
computing them, and on the per-pixel H-DNN (78,400 rows of 8 features) each product is memory
bound. Fields made of terms ``sign * M^T sigma(K v + b)`` (`KickTerms`: H1 with any J, the
two-layer and the separable fields with ``M = K J^T``; MS1 and MS2 with ``M = I``) integrated by
forward Euler (whole-state fields) or a split solver (the split fields) are a sequence of *kicks*
``u <- u + c h sign * M^T sigma(K v + b)``. The fused path runs them in column form, a state
``(features, batch)``, where every product is a short-and-wide matrix times the state (several
times faster than the row form on tall states). Each state carries a last feature of ones, so
that ``[K | b]`` times it is ``K v + b``. Each kick costs three kernels forward (``mm``, sigma in
place, ``addmm``; ``add`` for ``M = I``); the backward pass walks the kicks back with
``w = sigma(z)``:

* ``dL/dz = c h sign * (M dL/du) * sigma'(z)``, with sigma' read off w;
* ``dL/d[K | b] += dL/dz [v; 1]^T``, ``dL/dM += c h sign * w (dL/du)^T``;
* ``dL/dv += K^T dL/dz``, in place;

so it allocates nothing the size of the history (on CPU, fresh memory costs page faults). Kept
for the backward pass: the state after every kick (with its row of ones) and every w, as
step-by-step autograd keeps. With ``gradient="reversible"`` a split plan keeps only the final
state, and the backward pass rebuilds each kick's w and v from it, undoing the kicks in reverse
order (`reversible_fused_steps`). The gradients are those of the same forward map (tests compare
them with autograd in float64); they cannot be differentiated again (no double backward, no
``torch.func`` transforms): use ``gradient=Backprop(higher_order=True)`` for those.
"""

from __future__ import annotations

import importlib.util
from typing import Any

import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from ..fields.base import other_half
from ..fields.kicks import KickTerms
from .base import Kick, Step

# One kick of the plan: (half moved u, half read v, coefficient c h sign); the term driving u is named u
PlanKick = tuple[str, str, float]


class FusedPlan:
    """The bookkeeping of a fused block: its kicks over all steps and where each reads and writes.

    Every kick writes the half it moves into the next row of that half's *history* of states, so
    nothing is stacked afterwards. ``kicks[k]`` is ``(u, v, coef, j, i, row_u, row_v)``: step j,
    the kick's index i among u's kicks (``j * per_step[u] + slot``, slot its place among them
    within a step), and the history rows of u (after the kick) and of v (read). Build it with
    `fused_plan`."""

    field: Any  # a KickTerms field (split for split steps)

    def __init__(self, field: KickTerms, step: list[PlanKick]):
        self.field, n = field, field.nodes.n
        # sigma in place, and sigma' from sigma's output (plain attributes: torch.compile traces them)
        self.inplace, self.derivative = field.activation.inplace, field.activation.derivative
        parts = sorted({u for u, _, _ in step})
        self.per_step = {u: sum(k[0] == u for k in step) for u in parts}
        self.split = "x" not in parts  # the kicks move the halves of a split state
        self.rows = {h: 1 + n * sum(k[0] == h for k in step) for h in parts}  # states of h
        self.coef = {}  # (u, slot) -> c h sign
        row = dict.fromkeys(parts, 0)
        self.kicks: list[tuple[str, str, float, int, int, int, int]] = []
        for j in range(n):
            slot = dict.fromkeys(parts, 0)
            for u, v, coef in step:
                self.coef[u, slot[u]] = coef
                self.kicks.append((u, v, coef, j, j * self.per_step[u] + slot[u], row[u] + 1, row[v]))
                row[u] += 1
                slot[u] += 1

    def halves(self, x: Tensor) -> dict[str, Tensor]:
        """The halves of a row-form state ``(batch, features)``, in column form ``(features, batch)``
        (views)."""
        parts = {"x": x} if "x" in self.rows else dict(zip("yz", self.field.split(x)))
        return {h: part.t() for h, part in parts.items()}

    def whole(self, halves: dict[str, Tensor]) -> Tensor:
        """The row-form state of column-form halves (a view of ``halves["x"]`` for a whole state)."""
        return halves["x"].t() if "x" in halves else self.field.merge(halves["y"].t(), halves["z"].t())

    def histories(self, x: Tensor, keep: bool = True) -> dict[str, Tensor]:
        """New column-form histories ``(rows[h], features of h + 1, batch)`` for the halves h of
        the row-form ``x``, with ``x``'s in row 0 and a last feature of ones (it multiplies b).
        ``keep=False``: 2 rows per half, used in turn (row r is row ``r % 2``): a kick reads only
        the latest states."""
        hist = {}
        for h, part in self.halves(x).items():
            hist[h] = x.new_empty(self.rows[h] if keep else 2, part.shape[0] + 1, part.shape[1])
            hist[h][0, :-1] = part
            hist[h][:, -1] = 1
        return hist


def fused_plan(field: nn.Module, kicks: list[Kick] | None, steps: list[Step]) -> FusedPlan | None:
    """The `FusedPlan` of ``steps`` of a solver whose step on ``field`` is ``kicks``, or
    None if the fused path cannot run it. It runs dense `KickTerms` fields
    with a fusable activation (`Activation`) whose step is a sequence of
    kicks on the halves the field's terms drive (forward Euler on a whole-state field, a split
    method on a split field), in the discrete mode: step j on node j with ``h = dt``."""
    if not isinstance(field, KickTerms) or field.conv or not field.activation.fusable or kicks is None:
        return None
    signs, nodes = field.kick_signs(), field.nodes
    if {k.u for k in kicks} != set(signs) or len(steps) != nodes.n:
        return None
    if any(node != j or abs(h - nodes.dt) > 1e-9 * nodes.dt for j, (_, h, node) in enumerate(steps)):
        return None
    return FusedPlan(field, [(k.u, other_half(k.u), k.c * nodes.dt * signs[k.u]) for k in kicks])


def _augmented(K: Tensor, b: Tensor) -> Tensor:
    """``[K | b]`` (``(steps, width, features of v + 1)``), which multiplies a state with a last
    feature of ones."""
    return torch.cat((K, b.unsqueeze(-1)), 2)


class _Kicker:
    """The kicks of a plan in column form, per term and node: ``[K | b]`` and ``M^T`` (None for
    ``M = I``), from the field's operands."""

    def __init__(self, plan: FusedPlan, operands: Any):
        self.Kb = {u: _augmented(K, b).unbind(0) for u, (K, b, _) in operands.items()}
        self.Mt = {u: None if M is None else M.transpose(1, 2).unbind(0) for u, (_, _, M) in operands.items()}
        assert plan.inplace is not None  # fused_plan checked that the activation is fusable
        self.act = plan.inplace

    def __call__(self, u: str, j: int, coef: float, v: Tensor, before: Tensor, after: Tensor,
                 w: Tensor | None = None) -> Tensor:  # fmt: skip
        """The kick of u at node j read on ``v`` (``[v; 1]``): ``w = sigma([K | b] [v; 1])`` (into
        ``w`` if given), ``after = before + coef M^T w`` (``after`` may be ``before``); returns w."""
        w = self.act(torch.mm(self.Kb[u][j], v, out=w))
        mt = self.Mt[u]
        if mt is None:  # M = I
            torch.add(before, w, alpha=coef, out=after)
        else:
            torch.addmm(before, mt[j], w, alpha=coef, out=after)
        return w


def _run(plan: FusedPlan, x: Tensor, params: tuple[Tensor, ...], keep: bool = True) -> tuple[Tensor, dict, dict]:
    """The forward pass: the final state, the column-form state histories and, per term, the
    activations w of its kicks ``(n_steps, kicks per step, width, batch)``. ``keep=False`` (no
    backward pass to come) keeps only the latest state of each half and the latest w."""
    operands = plan.field.kick_operands(params)
    hist = plan.histories(x, keep)
    n, per = (params[0].shape[0], plan.per_step) if keep else (1, dict.fromkeys(operands, 1))
    W = {u: x.new_empty(n, per[u], K.shape[1], x.shape[0]) for u, (K, _, _) in operands.items()}
    kick = _Kicker(plan, operands)
    w = {u: t.flatten(0, 1).unbind(0) for u, t in W.items()}
    rows = {h: t.unbind(0) for h, t in hist.items()}
    for u, v, coef, j, i, row_u, row_v in plan.kicks:
        if not keep:
            i, row_u, row_v = 0, row_u % 2, row_v % 2
        kick(u, j, coef, rows[v][row_v], rows[u][row_u - 1][:-1], rows[u][row_u][:-1], w=w[u][i])
    last = {h: (r - 1) % len(hist[h]) for h, r in plan.rows.items()}
    y = plan.whole({h: r[last[h]][:-1] for h, r in rows.items()})
    return (y.clone() if "x" in rows else y), hist, W  # not a view of the history


class _FusedSteps(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, plan: FusedPlan, x: Tensor, *params: Tensor) -> Tensor:
        terms = list(plan.field.kick_signs())
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
        hist = {h: t.unbind(0) for h, t in zip(terms, ctx.saved_tensors[k : k + m])}  # [v; 1]
        w = {u: t.flatten(0, 1).unbind(0) for u, t in zip(terms, ctx.saved_tensors[k + m :])}

        def stored(kick: tuple) -> tuple[Tensor, Tensor]:
            u, v, _, _, i, _, row_v = kick
            return w[u][i], hist[v][row_v]

        return (None, *_walk_back(plan, plan.field.kick_operands(params), grad, stored))


class _ReversibleFusedSteps(torch.autograd.Function):
    """The fused steps of a split scheme keeping only the final state: the backward pass undoes
    each kick (``u -= c h sign M^T w`` with ``w = sigma(K v + b)`` evaluated again on v, which
    the kick did not move) before it uses its operands."""

    @staticmethod
    def forward(ctx: Any, plan: FusedPlan, x: Tensor, *params: Tensor) -> Tensor:
        y = _run(plan, x, params, keep=False)[0]
        ctx.plan = plan
        ctx.save_for_backward(y, *params)
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: Tensor):
        plan = ctx.plan
        y, *params = ctx.saved_tensors
        operands = plan.field.kick_operands(params)
        state = {h: rows[0] for h, rows in plan.histories(y, keep=False).items()}  # [h; 1], updated in place
        kick = _Kicker(plan, operands)

        def rebuilt(step: tuple) -> tuple[Tensor, Tensor]:
            u, v, coef, j, *_ = step
            return kick(u, j, -coef, state[v], state[u][:-1], state[u][:-1]), state[v]  # the kick undone

        return (None, *_walk_back(plan, operands, grad, rebuilt))


def _walk_back(plan: FusedPlan, operands: Any, grad: Tensor, kick_inputs: Any) -> tuple[Tensor, ...]:
    """The gradients of the initial state and of the node parameters from ``grad``, that of the
    final state, walking the kicks back; ``kick_inputs(kick)`` gives the kick's ``w`` and the
    ``[v; 1]`` it read (stored, or rebuilt), in reverse kick order."""
    derivative = plan.derivative
    assert derivative is not None  # fused_plan checked that the activation is fusable
    M = {u: m for u, (_, _, m) in operands.items()}
    cM = {(u, slot): (c * M[u]).unbind(0) for (u, slot), c in plan.coef.items() if M[u] is not None}  # c h sign M
    Kt = {u: K.transpose(1, 2).unbind(0) for u, (K, _, _) in operands.items()}
    # the adjoints dL/dh of the halves, updated in place kick by kick, and the weight
    # gradients, accumulated while each kick's operands are at hand: dL/d[K | b] and dL/dM
    adj = {h: a.clone(memory_format=torch.contiguous_format) for h, a in plan.halves(grad).items()}
    gKb = {u: K.new_zeros(K.shape[0], K.shape[1], K.shape[2] + 1) for u, (K, _, _) in operands.items()}
    gM = {u: None if m is None else torch.zeros_like(m) for u, m in M.items()}
    gKb_ = {u: t.unbind(0) for u, t in gKb.items()}
    gM_ = {u: None if t is None else t.unbind(0) for u, t in gM.items()}
    for kick in reversed(plan.kicks):
        u, v, coef, j, i, _, _ = kick
        w, v_ones = kick_inputs(kick)
        gm = gM_[u]
        if gm is None:  # M = I
            g = torch.mul(adj[u], derivative(w)).mul_(coef)  # dL/dz
        else:
            gm[j].addmm_(w, adj[u].T, alpha=coef)
            g = torch.mm(cM[u, i % plan.per_step[u]][j], adj[u]).mul_(derivative(w))
        gKb_[u][j].addmm_(g, v_ones.T)
        adj[v].addmm_(Kt[u][j], g)
    grads = plan.field.kick_grads({u: (g[..., :-1], g[..., -1], gM[u]) for u, g in gKb.items()})
    return (plan.whole(adj), *grads)


def fused_steps(plan: FusedPlan, x: Tensor) -> Tensor:
    """Run the steps of `fused_plan` from ``x``: one autograd node when gradients are
    needed. On CUDA (outside ``torch.compile``) the Triton kernels of
    `contham.solvers.fused_triton` run it where they support the plan."""
    if _on_kernels(plan, x):
        from .fused_triton import triton_steps

        return triton_steps(plan, x)
    params = plan.field.node_params()
    if torch.is_grad_enabled() and (x.requires_grad or any(p.requires_grad for p in params)):
        return _FusedSteps.apply(plan, x, *params)
    return _run(plan, x, params, keep=False)[0]


def reversible_fused_steps(plan: FusedPlan, x: Tensor) -> Tensor:
    """The steps of a split ``plan`` from ``x`` with gradients and no stored states: the
    backward pass rebuilds them by undoing the kicks (``gradient="reversible"`` on a dense split
    block). Memory: the final state and two halves, whatever the depth; time: one more ``K v``
    product and sigma per kick than the stored backward pass. On CUDA the Triton kernels run it
    where they support the plan, undoing the kicks on chip."""
    if _on_kernels(plan, x):
        from .fused_triton import triton_steps

        return triton_steps(plan, x, rebuild=True)
    return _ReversibleFusedSteps.apply(plan, x, *plan.field.node_params())


def _on_kernels(plan: FusedPlan, x: Tensor) -> bool:
    """Whether the Triton kernels (`contham.solvers.fused_triton`) run ``plan`` on ``x``: on CUDA,
    outside ``torch.compile``, with Triton installed, where they support the plan and x's dtype
    (Triton is imported only then)."""
    if not x.is_cuda or torch.compiler.is_compiling() or importlib.util.find_spec("triton") is None:
        return False
    from .fused_triton import supports

    return supports(plan, x.dtype, x.device)
