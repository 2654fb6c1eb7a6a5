"""The fused dense blocks (`contham.solvers.fused`) as two Triton kernels: all kicks of a block's
forward pass in one launch, and all of its backward pass in another.

A program owns a block of ``BLOCK`` columns of the column-form state (a column is one row of the
user's batch) and keeps both halves of it on chip for the whole block: for each kick it reads the
kick's weights (a few KiB, served from cache), computes ``w = sigma(K v + b)`` and adds
``c h sign M^T w`` to the half it moves. The state never goes back to memory between kicks, so a
block's forward pass reads and writes the state once, whatever its depth: the kernels read it
where it lies (any strides: the row form, or the column form in which the MNIST H-DNN hands over
its per-pixel states) and write the result in the same layout, its real features only (the
padding below exists on chip only), so no copy is made before or after. For the backward pass
the forward kernel stores, per kick, the real rows of the half the kick read and of w.

The backward kernel walks the kicks back over the same column blocks with the adjoints on chip
(the formulas of `contham.solvers.fused`). For ``gradient="reversible"`` on a split plan the
forward kernel stores nothing and the backward kernel starts from the final state instead: it
computes each kick's w again from the half the kick read, which the kick did not move, and undoes
the kick on chip before using its operands. The weight gradients are sums over columns: each
program adds its columns' share into its own slice of a partial buffer (a fixed number of
programs, each looping over column blocks), and the slices are summed afterwards, so the result
does not depend on scheduling (no atomics) and runs are deterministic.

Feature counts and widths are padded with zeros to powers of two (at least 16, what ``tl.dot``
takes) up to `MAX_FEATURES`; padded rows of K, b and M are zero, so they add nothing. Tested on
the CPU with Triton's interpreter (``TRITON_INTERPRET=1``) against the fused path. The module
keeps its annotations evaluated (no ``from __future__ import annotations``): the interpreters of
Triton 3.1 and 3.2 recognise a ``tl.constexpr`` parameter by its evaluated annotation only.
"""

import functools
import re
import weakref
from typing import Any

import torch
import triton
import triton.language as tl
from torch import Tensor
from torch.autograd.function import once_differentiable

from .fused import FusedPlan

MAX_FEATURES = 64
"""The largest padded half or width the kernels take (the weights of a kick stay on chip)."""

ACTIVATIONS = {"relu": 0, "tanh": 1, "sigmoid": 2, "softplus": 3, "identity": 4}
"""The activations the kernels compute, by contham's name, with their code in the kernels."""

BLOCK = 32
"""Columns per program."""

SINCE = {torch.float32: (3, 2), torch.float64: (3, 5)}
"""The first Triton version whose build of the kernels runs each state dtype, as found under its
interpreter (Triton 3.1, 3.2, 3.4, 3.5, 3.6 and 3.8 tried): 3.1 gives wrong float32 results, and
``tl.dot`` takes float64 from 3.5 on (3.4 and before reject it when they compile). Other dtypes
(float16, bfloat16) are not checked, so the fused path runs them itself."""


@triton.jit
def _sigma(z, ACT: tl.constexpr):
    if ACT == 0:
        out = tl.maximum(z, 0.0)
    elif ACT == 1:
        out = 1.0 - 2.0 / (tl.exp(2.0 * z) + 1.0)  # tanh
    elif ACT == 2:
        out = 1.0 / (1.0 + tl.exp(-z))
    elif ACT == 3:
        out = tl.where(z > 20.0, z, tl.log(1.0 + tl.exp(tl.minimum(z, 20.0))))  # softplus
    else:
        out = z
    return out


@triton.jit
def _sigma_prime(w, ACT: tl.constexpr):
    """sigma' from sigma's output w."""
    if ACT == 0:
        out = tl.where(w > 0.0, 1.0, 0.0)
    elif ACT == 1:
        out = 1.0 - w * w
    elif ACT == 2:
        out = w * (1.0 - w)
    elif ACT == 3:
        out = tl.where(w > 20.0, 1.0, 1.0 - tl.exp(-w))
    else:
        out = w * 0.0 + 1.0
    return out.to(w.dtype)


@triton.jit
def _load(P, rows, cols, s_row, s_col, mask):
    """The ``(rows, BLOCK)`` tile at ``P`` of a column-form half (row r of column c at
    ``r s_row + c s_col``), zero where ``mask`` is not."""
    return tl.load(P + rows[:, None].to(tl.int64) * s_row + cols[None, :].to(tl.int64) * s_col, mask=mask, other=0.0)


@triton.jit
def _store(P, rows, cols, s_row, s_col, value, mask):
    """Store a `_load` tile where ``mask`` is."""
    tl.store(P + rows[:, None].to(tl.int64) * s_row + cols[None, :].to(tl.int64) * s_col, value, mask=mask)


@triton.jit
def _forward(Y, Z, y_row, y_col, OY, OZ, o_row, o_col, V, WS, KP, BP, MP, KU, KV, KJ, COEF, n_kicks, N, n_nodes, half,
             width, F: tl.constexpr, W: tl.constexpr, BLOCK: tl.constexpr, ACT: tl.constexpr, KEEP: tl.constexpr,
             SPLIT: tl.constexpr):  # fmt: skip
    cols = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    fs, ws = tl.arange(0, F), tl.arange(0, W)
    live = (cols < N)[None, :]
    in_f, in_w = live & (fs < half)[:, None], live & (ws < width)[:, None]  # the tiles' real rows
    at_k = ws[:, None] * F + fs[None, :]  # (W, F) in a kick's weights
    y = _load(Y, fs, cols, y_row, y_col, in_f)
    if SPLIT:
        z = _load(Z, fs, cols, y_row, y_col, in_f)
    else:  # a whole state: no kick reads or moves z
        z = tl.zeros_like(y)
    for k in range(n_kicks):
        u, v, j, c = tl.load(KU + k), tl.load(KV + k), tl.load(KJ + k), tl.load(COEF + k)
        slab = (u * n_nodes + j).to(tl.int64)
        read = tl.where(v == 0, y, z)
        pre = tl.dot(tl.load(KP + slab * W * F + at_k), read, input_precision="ieee")
        w = _sigma(pre + tl.load(BP + slab * W + ws)[:, None], ACT).to(y.dtype)
        kick = tl.dot(tl.trans(tl.load(MP + slab * W * F + at_k)), w, input_precision="ieee") * c
        y = tl.where(u == 0, y + kick, y)
        z = tl.where(u == 0, z, z + kick)
        if KEEP:
            _store(V + tl.cast(k, tl.int64) * half * N, fs, cols, N, 1, read, in_f)
            _store(WS + tl.cast(k, tl.int64) * width * N, ws, cols, N, 1, w, in_w)
    _store(OY, fs, cols, o_row, o_col, y, in_f)
    if SPLIT:
        _store(OZ, fs, cols, o_row, o_col, z, in_f)


@triton.jit
def _backward(AY, AZ, a_row, a_col, DY, DZ, d_row, d_col, SY, SZ, s_row, s_col, V, WS, KP, BP, MP, KU, KV, KJ, COEF,
              GK, GB, GM, n_kicks, N, n_nodes, n_blocks, half, width, F: tl.constexpr, W: tl.constexpr,
              BLOCK: tl.constexpr, ACT: tl.constexpr, REBUILD: tl.constexpr, SPLIT: tl.constexpr):  # fmt: skip
    pid = tl.program_id(0)
    fs, ws = tl.arange(0, F), tl.arange(0, W)
    at_k = ws[:, None] * F + fs[None, :]
    mine = pid.to(tl.int64) * 2 * n_nodes  # this program's slice of the partial sums
    for block in range(pid, n_blocks, tl.num_programs(0)):
        cols = block * BLOCK + tl.arange(0, BLOCK)
        live = (cols < N)[None, :]
        in_f, in_w = live & (fs < half)[:, None], live & (ws < width)[:, None]
        a_y = _load(AY, fs, cols, a_row, a_col, in_f)
        if SPLIT:
            a_z = _load(AZ, fs, cols, a_row, a_col, in_f)
        else:
            a_z = tl.zeros_like(a_y)
        if REBUILD:  # the final state (of a split plan), undone kick by kick on chip
            y = _load(SY, fs, cols, s_row, s_col, in_f)
            z = _load(SZ, fs, cols, s_row, s_col, in_f)
        for back in range(n_kicks):
            k = n_kicks - 1 - back
            u, v, j, c = tl.load(KU + k), tl.load(KV + k), tl.load(KJ + k), tl.load(COEF + k)
            slab = (u * n_nodes + j).to(tl.int64)
            a_u = tl.where(u == 0, a_y, a_z)
            K = tl.load(KP + slab * W * F + at_k)
            M = tl.load(MP + slab * W * F + at_k)
            if REBUILD:  # v did not move in this kick: w again from it, then u before the kick
                read = tl.where(v == 0, y, z)
                pre = tl.dot(K, read, input_precision="ieee") + tl.load(BP + slab * W + ws)[:, None]
                w = _sigma(pre, ACT).to(a_y.dtype)
                undo = tl.dot(tl.trans(M), w, input_precision="ieee") * c
                y = tl.where(u == 0, y - undo, y)
                z = tl.where(u == 0, z, z - undo)
            else:  # the padding rows of w were not stored: zero (their rows of K, b and M are)
                w = _load(WS + tl.cast(k, tl.int64) * width * N, ws, cols, N, 1, in_w)
                read = _load(V + tl.cast(k, tl.int64) * half * N, fs, cols, N, 1, in_f)
            g = tl.dot(M, a_u, input_precision="ieee") * c * _sigma_prime(w, ACT)  # dL/d(K v + b)
            to = (mine + slab) * W * F + at_k
            tl.store(GM + to, tl.load(GM + to) + tl.dot(w, tl.trans(a_u), input_precision="ieee") * c)
            tl.store(GK + to, tl.load(GK + to) + tl.dot(g, tl.trans(read), input_precision="ieee"))
            tb = (mine + slab) * W + ws
            tl.store(GB + tb, tl.load(GB + tb) + tl.sum(g, axis=1))
            into_v = tl.dot(tl.trans(K), g, input_precision="ieee")
            a_y = tl.where(v == 0, a_y + into_v, a_y)
            a_z = tl.where(v == 0, a_z, a_z + into_v)
        _store(DY, fs, cols, d_row, d_col, a_y, in_f)
        if SPLIT:
            _store(DZ, fs, cols, d_row, d_col, a_z, in_f)


def _padded(n: int) -> int:
    return max(16, triton.next_power_of_2(n))


def supports(plan: FusedPlan, dtype: torch.dtype, device: torch.device) -> bool:
    """True when the kernels can run ``plan`` on a state of ``dtype`` on ``device``: one of
    `kernel_dtypes`, a named activation they compute, halves and widths of at most
    `MAX_FEATURES`, and on CUDA kernels that `fit` the device."""
    name, (half, width) = plan.field.activation.name, extent(plan)
    if not (dtype in kernel_dtypes() and name in ACTIVATIONS and max(half, width) <= MAX_FEATURES):
        return False
    return device.type != "cuda" or fit(_padded(half), _padded(width), ACTIVATIONS[name], plan.split, dtype, device)


def extent(plan: FusedPlan) -> tuple[int, int]:
    """The features of a half and the largest width of ``plan``'s kick terms."""
    shapes = plan.field.kick_shapes().values()
    return max(features for _, features in shapes), max(width for width, _ in shapes)


def tiles(plan: FusedPlan) -> tuple[int, int]:
    """The padded half ``F`` and width ``W`` of the kernels' tiles for ``plan``."""
    half, width = extent(plan)
    return _padded(half), _padded(width)


@functools.cache
def fit(F: int, W: int, act: int, split: bool, dtype: torch.dtype, device: torch.device) -> bool:
    """Whether the kernels of these tiles and state (the forward pass storing the kicks'
    operands or not, the backward pass reading them or, for a split state, rebuilding them) fit
    in the shared memory a block may take on the CUDA ``device``, where they hold ``tl.dot``'s
    operands: a launch that asks for more fails (Triton's ``OutOfResources``). The largest tiles
    in float64 take 144 KiB (Triton 3.8), more than GPUs of compute capability 7.5, 8.6 and 8.9
    give a block (64 and 99 KiB); the fused path runs those. Compiles the kernels (for the first
    launch, which then finds them compiled), the backward ones first: they take the most."""
    limit = shared_memory_limit(device)
    needs = (compiled(kernel, device, *args).metadata.shared for kernel, args in _variants(F, W, act, split, dtype))
    return all(need <= limit for need in needs)


def shared_memory_limit(device: torch.device) -> int:
    """The shared memory (bytes) a block may take on the CUDA ``device``, the limit Triton checks
    at a launch."""
    return triton.runtime.driver.active.utils.get_device_properties(device.index)["max_shared_mem"]


def compiled(kernel: Any, device: torch.device, *args: Any) -> Any:
    """``kernel`` compiled for ``device`` and ``args`` (a torch dtype for a pointer), not launched."""
    with torch.cuda.device(device):
        return kernel.warmup(*args, grid=(1,))


def _variants(F: int, W: int, act: int, split: bool, dtype: torch.dtype) -> list[tuple[Any, tuple[Any, ...]]]:
    """The kernels and arguments of every launch of these tiles; counts and strides 2 (not 1,
    which Triton makes a constant; specialising on a multiple of 16 leaves the shared memory as
    it is)."""
    i32, n = torch.int32, 2
    io = (dtype, dtype, n, n)  # a state's halves and strides
    tables = (dtype, dtype, dtype, i32, i32, i32, dtype)  # KP, BP, MP, KU, KV, KJ, COEF
    backward = [(_backward, (*io, *io, *io, dtype, dtype, *tables, dtype, dtype, dtype, n, n, n, n, n, n, F, W, BLOCK,
                             act, rebuild, split)) for rebuild in (False, True)[: 1 + split]]  # fmt: skip
    forward = [(_forward, (*io, *io, dtype, dtype, *tables, n, n, n, n, n, F, W, BLOCK, act, keep, split))
               for keep in (True, False)]  # fmt: skip
    return backward + forward


def kernel_dtypes() -> set[torch.dtype]:
    """The state dtypes the kernels run with the installed Triton (see `SINCE`)."""
    found = re.match(r"(\d+)\.(\d+)", triton.__version__)
    version = (int(found[1]), int(found[2])) if found else (0, 0)
    return {dtype for dtype, first in SINCE.items() if version >= first}


def half_index(plan: FusedPlan) -> dict[str, int]:
    """The slab index of each half the plan moves: "x" (a whole state) or "y", "z" -> 0, 1."""
    return {h: i for i, h in enumerate(sorted(plan.rows))}


_TABLES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def kick_table(plan: FusedPlan, x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The kicks of ``plan`` on ``x``'s device: half moved, half read (0 or 1), node (int32) and
    coefficient (``x``'s dtype); made once per plan, device and dtype (no copy to the device per
    call)."""
    tables = _TABLES.setdefault(plan, {})
    key = (x.device, x.dtype)
    if key not in tables:
        index = half_index(plan)
        kicks = plan.kicks
        rows = [[index[u] for u, *_ in kicks], [index[v] for _, v, *_ in kicks], [k[3] for k in kicks]]
        KU, KV, KJ = torch.tensor(rows, dtype=torch.int32, device=x.device)
        tables[key] = (KU, KV, KJ, torch.tensor([k[2] for k in kicks], dtype=x.dtype, device=x.device))
    return tables[key]


class Packed:
    """A plan's weights and kicks as the kernels read them: ``KP``, ``MP`` ``(2, nodes, W, F)``
    and ``BP`` ``(2, nodes, W)`` (the term driving half 0 or 1, zero-padded), and the kick table
    (half moved, half read, node, coefficient)."""

    def __init__(self, plan: FusedPlan, params: tuple[Tensor, ...], x: Tensor):
        field, self.plan = plan.field, plan
        self.index = half_index(plan)
        self.n = n = params[0].shape[0]
        operands = field.kick_operands(params)
        # per term: its width and the features of a half (M has K's shape: the halves are equal)
        self.shapes = field.kick_shapes()
        self.half, self.width = extent(plan)
        self.F, self.W = _padded(self.half), _padded(self.width)
        self.KP = x.new_zeros(2, n, self.W, self.F)
        self.MP, self.BP = torch.zeros_like(self.KP), x.new_zeros(2, n, self.W)
        for u, (K, b, M) in operands.items():
            i = self.index[u]
            self.KP[i, :, : K.shape[1], : K.shape[2]] = K
            self.BP[i, :, : K.shape[1]] = b
            self.MP[i, :, : K.shape[1], : K.shape[2]] = (
                torch.eye(K.shape[1], K.shape[2], dtype=K.dtype, device=K.device) if M is None else M
            )
        self.identity = {u for u, (_, _, M) in operands.items() if M is None}  # M = I: no gradient
        self.KU, self.KV, self.KJ, self.COEF = kick_table(plan, x)
        self.act = ACTIVATIONS[field.activation.name]

    def halves(self, x: Tensor) -> tuple[Any, ...]:
        """The row-form ``x`` as the kernels take a state: its column-form halves (views; the whole
        state twice if it has no halves) and their row and column strides."""
        parts = self.plan.halves(x)
        first, *rest = (parts[h] for h in sorted(parts, key=self.index.__getitem__))
        return first, rest[0] if rest else first, first.stride(0), first.stride(1)

    def forward(self, x: Tensor, keep: bool) -> tuple[Tensor, Tensor, Tensor]:
        """The final state and, with ``keep``, the half each kick read and its w (their real rows,
        ``(kicks, half, batch)`` and ``(kicks, width, batch)``)."""
        out, N, kicks = torch.empty_like(x), x.shape[0], len(self.plan.kicks)
        # without keep the kernel never touches V and WS: out stands in (no null pointer handed to it)
        V = x.new_empty(kicks, self.half, N) if keep else out
        WS = x.new_empty(kicks, self.width, N) if keep else out
        grid = (triton.cdiv(N, BLOCK),)
        _forward[grid](*self.halves(x), *self.halves(out), V, WS, self.KP, self.BP, self.MP, self.KU, self.KV,
                       self.KJ, self.COEF, kicks, N, self.n, self.half, self.width, self.F, self.W, BLOCK, self.act,
                       keep, self.plan.split)  # fmt: skip
        return out, V, WS

    def backward(self, grad: Tensor, kept: tuple[Tensor, ...]) -> tuple[Tensor, list[Tensor | None]]:
        """The gradients of the initial state and of the node parameters from those of the final
        state: ``kept`` is what `forward` kept (``V``, ``WS``), or the final state alone (a split
        plan's reversible pass: the kernel undoes the kicks from it)."""
        dx, N, n_blocks = torch.empty_like(grad), grad.shape[0], triton.cdiv(grad.shape[0], BLOCK)
        rebuild = len(kept) == 1
        # the kernel never touches the tensors of the other mode: grad stands in (no null pointer)
        S, V, WS = (kept[0], grad, grad) if rebuild else (grad, *kept)
        programs = min(n_blocks, 4 * _processors(grad.device))
        GK = grad.new_zeros(programs, *self.KP.shape)
        GM, GB = torch.zeros_like(GK), grad.new_zeros(programs, *self.BP.shape)
        _backward[(programs,)](*self.halves(grad), *self.halves(dx), *self.halves(S), V, WS, self.KP, self.BP,
                               self.MP, self.KU, self.KV, self.KJ, self.COEF, GK, GB, GM, len(self.plan.kicks), N,
                               self.n, n_blocks, self.half, self.width, self.F, self.W, BLOCK, self.act, rebuild,
                               self.plan.split)  # fmt: skip
        GK, GM, GB = GK.sum(0), GM.sum(0), GB.sum(0)
        grads = {}
        for u, (width, features) in self.shapes.items():
            i = self.index[u]
            gM = None if u in self.identity else GM[i, :, :width, :features]
            grads[u] = (GK[i, :, :width, :features], GB[i, :, :width], gM)
        return dx, self.plan.field.kick_grads(grads)


def _processors(device: torch.device) -> int:
    """Streaming multiprocessors of a CUDA device (1 elsewhere: the interpreter runs serially)."""
    return torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 1


class _TritonSteps(torch.autograd.Function):
    """The kernels' forward and backward passes: ``rebuild`` keeps only the final state (the
    reversible pass), else every kick's input and w."""

    @staticmethod
    def forward(ctx: Any, plan: FusedPlan, rebuild: bool, x: Tensor, *params: Tensor) -> Tensor:
        packed = Packed(plan, params, x)
        y, V, WS = packed.forward(x, keep=not rebuild)
        ctx.packed = packed
        ctx.save_for_backward(*((y,) if rebuild else (V, WS)))
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: Tensor) -> Any:
        dx, grads = ctx.packed.backward(grad, ctx.saved_tensors)
        return (None, None, dx, *grads)


def triton_steps(plan: FusedPlan, x: Tensor, rebuild: bool = False) -> Tensor:
    """`contham.solvers.fused.fused_steps` by the kernels (check `supports` first); with
    ``rebuild``, `contham.solvers.fused.reversible_fused_steps` (a split plan): the backward
    kernel undoes the kicks from the final state instead of reading them back."""
    params = tuple(plan.field.node_params())
    if torch.is_grad_enabled() and (x.requires_grad or any(p.requires_grad for p in params)):
        return _TritonSteps.apply(plan, rebuild, x, *params)
    return Packed(plan, params, x).forward(x, keep=False)[0]
