"""Stability analysis of fields, blocks and networks.

Hamiltonian networks have two provable properties (Galimberti et al. 2021, 2023). The forward map
is marginally stable: the Jacobian of a Hamiltonian field has eigenvalues on the imaginary axis,
up to its time dependence. With a symplectic (semi-implicit) discretisation, every backward
sensitivity matrix ``dy_N / dy_l`` is symplectic, so its spectral norm is >= 1 at any depth and
gradients cannot vanish. This module measures both:

* `jacobian`, `eigenvalues` (dense, small states), `top_eigenvalues` (a few
  eigenvalues through Jacobian-vector products and ``scipy.sparse.linalg.eigs``, for conv states),
  `max_real_part` along a trajectory;
* `sensitivities` (exact ``dy_N / dy_l`` for every step l of a block, small states) and
  `sensitivity_norms` (spectral norms by power iteration with JVP/VJP, any state);
* `energy_drift`, `reversibility_error`, `symplecticity_defect`;
* `GradientNorms`: hooks that record the gradient norm of every block's output state and
  of every parameter during training.

Functions analyse one sample: a state ``y`` of shape ``(1, features)`` or ``(1, C, H, W)``; the
sensitivity functions also take a batch and return one result per sample.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import numpy as np
import scipy.sparse.linalg
import torch
from torch import Tensor, nn

from ._checks import check_choice, check_int
from .blocks import HamiltonianBlock, ODEBlock
from .fields.skew import j1_matrix

Map = Callable[[Tensor], Tensor]


def _one_sample(y: Tensor) -> None:
    if not isinstance(y, Tensor) or y.dim() < 2 or y.shape[0] != 1:
        shape = tuple(y.shape) if isinstance(y, Tensor) else type(y).__name__
        raise ValueError(f"y must be one sample, shape (1, features) or (1, C, H, W); got {shape}")


def _flat(fn: Map, shape: torch.Size) -> Map:
    return lambda v: fn(v.reshape(shape)).reshape(-1)


def jacobian(fn: Map, y: Tensor) -> Tensor:
    """Dense Jacobian ``d fn(y) / dy`` of a map between states of ``y``'s shape, as an
    ``(n, n)`` matrix, n = ``y.numel()`` (small states only)."""
    _one_sample(y)
    return torch.autograd.functional.jacobian(_flat(fn, y.shape), y.detach().reshape(-1))


def field_map(field: nn.Module, t: float = 0.0) -> Map:
    """``y -> f(t, y)`` for `jacobian` and friends."""
    return lambda y: field(t, y)


def eigenvalues(fn: Map, y: Tensor) -> np.ndarray:
    """All eigenvalues of the Jacobian of ``fn`` at ``y`` (dense; complex array)."""
    return np.linalg.eigvals(jacobian(fn, y).detach().cpu().double().numpy())


def top_eigenvalues(
    fn: Map, y: Tensor, k: int = 6, which: str = "LR", tol: float = 1e-6, maxiter: int | None = None
) -> np.ndarray:
    """The ``k`` eigenvalues of the Jacobian at ``y`` of largest real part (``which="LR"``) or
    modulus (``"LM"``), from Jacobian-vector products only (ARPACK through
    ``scipy.sparse.linalg.eigs``, at most ``maxiter`` restarts): no dense Jacobian is formed."""
    _one_sample(y)
    check_choice("which", which, ("LR", "LM"))
    n = y.numel()
    check_int("k", k)
    if k > n - 2:
        raise ValueError(f"k must be at most n - 2 = {n - 2} for the iterative solver; use eigenvalues()")
    flat = _flat(fn, y.shape)
    point = y.detach().reshape(-1)

    def matvec(v: np.ndarray) -> np.ndarray:
        tangent = torch.as_tensor(np.real(v), dtype=y.dtype, device=y.device)
        _, out = torch.func.jvp(flat, (point,), (tangent,))  # type: ignore[misc]
        return out.detach().cpu().double().numpy()

    operator = scipy.sparse.linalg.LinearOperator((n, n), matvec=matvec, dtype=np.float64)
    try:
        return scipy.sparse.linalg.eigs(
            operator,
            k=k,
            which=which,
            tol=tol,
            ncv=min(n, max(2 * k + 1, 30)),
            maxiter=maxiter,
            return_eigenvectors=False,
        )
    except scipy.sparse.linalg.ArpackNoConvergence:
        raise ValueError(
            f"ARPACK found no {k} eigenvalues with which={which!r}: they are too clustered (the spectrum of a "
            "Hamiltonian field lies on the imaginary axis, so 'LR' cannot separate it). Use which='LM' or the "
            "dense eigenvalues() on a smaller state."
        ) from None


def max_real_part(field: nn.Module, times: Sequence[float], states: Tensor, k: int = 1) -> np.ndarray:
    """Largest real part of the field's Jacobian eigenvalues at each ``(times[i], states[i])``
    (``states``: a trajectory ``(len(times), 1, ...)``); dense up to 1,024 state entries, else
    ARPACK (which cannot separate the purely imaginary spectrum of a Hamiltonian field)."""
    values = []
    for t, y in zip(times, states):
        fn = field_map(field, float(t))
        spectrum = eigenvalues(fn, y) if y.numel() <= 1024 else top_eigenvalues(fn, y, k=max(k, 1), which="LR")
        values.append(float(np.max(spectrum.real)))
    return np.array(values)


def _states(block: Any, y: Tensor) -> list[Tensor]:
    states = [y.detach()]
    with torch.no_grad():
        for j in range(block.n_steps):
            states.append(block.step(j, states[-1]))
    return states


def sensitivities(block: Any, y: Tensor) -> Tensor:
    """Exact backward sensitivity matrices ``dy_N / dy_l`` for ``l = 0..N`` of a stack of steps
    (a `HamiltonianBlock`, or anything with ``n_steps`` and ``step(j, y)``) from the single
    sample ``y`` (small states): a tensor ``(N + 1, n, n)``, the last one the identity. Built from
    the step Jacobians ``A_l = dy_{l+1} / dy_l`` as ``A_{N-1} ... A_l``. For a batch ``y`` of B
    samples, the per-sample results stacked: ``(B, N + 1, n, n)`` (average with ``.mean(0)``)."""
    if isinstance(y, Tensor) and y.dim() >= 2 and y.shape[0] > 1:
        return torch.stack([sensitivities(block, sample[None]) for sample in y])
    _one_sample(y)
    states = _states(block, y)
    n = y.numel()
    out = [torch.eye(n, dtype=y.dtype, device=y.device)]
    for j in reversed(range(block.n_steps)):
        step = jacobian(partial(block.step, j), states[j])
        out.append(out[-1] @ step)
    return torch.stack(out[::-1])


def _power_norm(forward: Map, backward: Map, shape: torch.Size, like: Tensor, iterations: int) -> float:
    v = torch.randn(shape, dtype=like.dtype, generator=torch.Generator().manual_seed(0)).to(like.device)
    v = v / v.norm()
    sigma = 0.0
    for _ in range(iterations):
        u = forward(v).detach()
        sigma = float(u.norm())
        if sigma == 0.0:
            return 0.0
        v = backward(u / sigma).detach()
        v = v / v.norm()
    return sigma


def sensitivity_norms(block: Any, y: Tensor, layers: Sequence[int] | None = None, iterations: int = 30) -> np.ndarray:
    """Spectral norms ``||dy_N / dy_l||_2`` for the steps ``layers`` (default all ``0..N``) of a
    stack of steps (as in `sensitivities`), by power iteration on ``A^T A`` with JVPs and
    VJPs through steps ``l..N-1``; for any state size. A batch gives one row per sample."""
    if isinstance(y, Tensor) and y.dim() >= 2 and y.shape[0] > 1:
        return np.stack([sensitivity_norms(block, sample[None], layers, iterations) for sample in y])
    _one_sample(y)
    check_int("iterations", iterations)
    states = _states(block, y)
    layers = range(block.n_steps + 1) if layers is None else layers
    norms = []
    for layer in layers:
        if not 0 <= layer <= block.n_steps:
            raise ValueError(f"layers must lie in [0, {block.n_steps}]; got {layer}")

        def rest(v: Tensor, layer: int = layer) -> Tensor:
            for j in range(layer, block.n_steps):
                v = block.step(j, v)
            return v

        point = states[layer]
        forward = lambda v, rest=rest, point=point: torch.func.jvp(rest, (point,), (v,))[1]  # noqa: E731
        backward = lambda u, rest=rest, point=point: torch.func.vjp(rest, point)[1](u)[0]  # noqa: E731
        norms.append(_power_norm(forward, backward, point.shape, point, iterations))
    return np.array(norms)


def symplecticity_defect(step: Map, y: Tensor) -> float:
    """``||Phi^T J Phi - J||_F`` with Phi the Jacobian of ``step`` at ``y`` and J the canonical
    J1 on the (flattened, channel-split) state: 0 for a symplectic step."""
    phi = jacobian(step, y)
    J = _canonical_j(y)
    return float((phi.T @ J @ phi - J).norm())


def _canonical_j(y: Tensor) -> Tensor:
    """J1 acting on the flattened state whose first half of channels is y and second half z."""
    channels = y.shape[1]
    per_channel = y[0, 0].numel()
    J = j1_matrix(channels).to(y.dtype).to(y.device)
    return torch.kron(J, torch.eye(per_channel, dtype=y.dtype, device=y.device))


def energy_drift(field: Any, times: Sequence[float], states: Tensor) -> np.ndarray:
    """``H(t_i, y_i) - H(t_0, y_0)`` along a trajectory (per time, averaged over the batch)."""
    energies = torch.stack([field.energy(float(t), y).mean() for t, y in zip(times, states)])
    return (energies - energies[0]).detach().cpu().double().numpy()


def reversibility_error(block: HamiltonianBlock, y: Tensor) -> float:
    """Run the block forward, then its steps backward with ``-h`` (the adjoint method's
    reconstruction), and return ``max |y_0 - y_0'|``. Zero up to rounding for symmetric schemes
    (Verlet) on time-reversible fields; O(h) for the others."""
    y_end = block(y)
    x = y_end
    for s, h, node in reversed(block.schedule.steps):
        assert node is not None  # a block's steps are pinned to its nodes
        x = block.solver.step(block.field.at_node(node), s + h, -h, x)
    return float((x - y).abs().max())


class GradientNorms:
    """Records, at every backward pass, the norm of the loss's gradient with respect to the output
    state of every `HamiltonianBlock` / `ODEBlock` (and, optionally, any module given)
    and of every parameter. Use as a context manager or call `remove`.

    ``history["state/<name>"]`` and ``history["param/<name>"]`` are lists with one value per
    backward pass; the hooks cost one norm per tensor.
    """

    def __init__(self, model: nn.Module, modules: Sequence[str] | None = None):
        self.history: dict[str, list[float]] = {}
        self._handles = []
        named = dict(model.named_modules())
        names = modules or [n for n, m in named.items() if isinstance(m, (HamiltonianBlock, ODEBlock))]
        for name in names:
            if name not in named:
                raise ValueError(f"modules: no module named {name!r} in the model")
            self._handles.append(named[name].register_forward_hook(self._state_hook(f"state/{name}")))
        for name, p in model.named_parameters():
            if p.requires_grad:
                self._handles.append(p.register_hook(self._grad_hook(f"param/{name}")))

    def _record(self, key: str, grad: Tensor) -> None:
        self.history.setdefault(key, []).append(float(grad.detach().norm()))

    def _grad_hook(self, key: str) -> Callable[[Tensor], None]:
        return lambda grad: self._record(key, grad)

    def _state_hook(self, key: str) -> Callable:
        def hook(module: nn.Module, inputs: tuple, output: Tensor) -> None:
            if isinstance(output, Tensor) and output.requires_grad:
                output.register_hook(self._grad_hook(key))

        return hook

    def latest(self) -> dict[str, float]:
        """The values of the latest backward pass."""
        return {k: v[-1] for k, v in self.history.items()}

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def __enter__(self) -> GradientNorms:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()
