"""Base classes for vector fields whose weights live on a node axis (see `.time`)."""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import Any, Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._checks import check_even, check_int
from .time import TimeNodes

Params = tuple[Tensor, ...]


@runtime_checkable
class CheckedField(Protocol):
    """A field that checks a state before a solve (contham's fields do; `integrate`
    calls it on ``y0``)."""

    def check_input(self, y: Tensor) -> None: ...


@runtime_checkable
class TimedField(Protocol):
    """A field whose weights live on a node axis: solvers put step boundaries at its node times
    (every `NodeField`, and wrappers that expose their field's ``nodes``)."""

    nodes: TimeNodes


def other_half(u: str) -> str:
    """The half that drives half ``u`` of a split state ("y" is driven by "z" and the reverse);
    ``"x"`` (the whole state) drives itself."""
    return {"y": "z", "z": "y", "x": "x"}[u]


def linear_op(K: Tensor, x: Tensor, b: Tensor | None = None) -> Tensor:
    """``K x + b`` for a dense ``K`` of shape ``(out, in)`` or a conv ``K`` of shape
    ``(out, in, k, k)`` (stride 1, same padding, odd k)."""
    if K.dim() == 2:
        return F.linear(x, K, b)
    return F.conv2d(x, K, b, padding=K.shape[-1] // 2)


def linear_op_t(K: Tensor, x: Tensor) -> Tensor:
    """``K^T x``: the adjoint of `linear_op` (``conv_transpose2d`` with the same weight)."""
    if K.dim() == 2:
        return x @ K
    return F.conv_transpose2d(x, K, padding=K.shape[-1] // 2)


def adjoint_weight(K: Tensor) -> Tensor:
    """The node-axis weight of ``K^T`` for a node-axis weight ``K`` of shape ``(n, out, in[, k, k])``:
    the two feature axes swapped (and, for a convolution, the kernel flipped), so that
    ``linear_op(adjoint_weight(K)[j], x) == linear_op_t(K[j], x)``."""
    K_t = K.transpose(1, 2)
    return K_t if K.dim() == 3 else K_t.flip(-2, -1)


class NodeField(nn.Module, ABC):
    """A vector field ``f(t, y)`` with time-dependent weights stored on a node axis.

    ``y`` is ``(batch, features)`` for dense fields (``kernel_size=None``) and
    ``(batch, channels, H, W)`` for convolutional ones. Subclasses name their node-axis
    parameters in ``node_names`` and implement ``_f(params, y)``; the weights at time t are
    found by `params_at` and passed in, so a solver can also pin a step to one node
    with `at_node`.

    Args:
        features: state width n (features of a dense state, channels of a conv state).
        kernel_size: None for dense weights, an odd int for convolutions.
        n_nodes: number of weight nodes (see `TimeNodes`).
        dt: time between nodes.
        time_mode: "constant", "piecewise" or "linear"; default "constant" for one node,
            "piecewise" otherwise.
    """

    node_names: tuple[str, ...] = ()
    is_split = False
    default_solver = "euler"

    @classmethod
    def needs_even_features(cls, **options: object) -> bool:
        """Whether this field, built with ``options``, needs an even state width (a split state
        or J1)."""
        return cls.is_split

    def __init__(
        self,
        features: int,
        kernel_size: int | None = None,
        n_nodes: int = 1,
        dt: float = 1.0,
        time_mode: str | None = None,
    ):
        super().__init__()
        self.features = check_int("features", features)
        if kernel_size is not None:
            check_int("kernel_size", kernel_size)
            if kernel_size % 2 == 0:
                raise ValueError(f"kernel_size must be odd (same padding); got {kernel_size}")
        self.kernel_size = kernel_size
        check_int("n_nodes", n_nodes)
        self.nodes = TimeNodes(n_nodes, dt, time_mode or ("constant" if n_nodes == 1 else "piecewise"))

    @property
    def conv(self) -> bool:
        """True for convolutional weights."""
        return self.kernel_size is not None

    def _weight(self, out: int, inp: int) -> nn.Parameter:
        """A node-axis weight ``(n, out, in[, k, k])`` with N(0, 1/fan_in) entries."""
        k = () if self.kernel_size is None else (self.kernel_size, self.kernel_size)
        fan_in = inp * math.prod(k)
        return nn.Parameter(torch.randn(self.nodes.n, out, inp, *k) / math.sqrt(fan_in))

    def _bias(self, out: int) -> nn.Parameter:
        return nn.Parameter(torch.zeros(self.nodes.n, out))

    @property
    def bias_names(self) -> tuple[str, ...]:
        """The node-axis biases (b): the entries of ``node_names`` of shape ``(n_nodes, width)``."""
        return tuple(name for name in self.node_names if getattr(self, name).dim() == 2)

    def node_params(self) -> Params:
        """The node-axis weights (all nodes), in the order of ``node_names``."""
        return tuple(getattr(self, name) for name in self.node_names)

    def equation_weights(self) -> tuple[tuple[str, Tensor], ...]:
        """The node-axis weights as they enter the H-DNN papers' form ``f = J K^T sigma(K y + b)``:
        each block of K as often as it appears in K, and b, named after the parameter they are made
        of. By default the parameters themselves; a field whose K repeats or combines its
        parameters (MS1, MS2) says how. The smoothness penalty on the papers' K
        (`contham.regularization.smoothness` with ``of="K"``) reads these."""
        return tuple(zip(self.node_names, self.node_params()))

    def node(self, j: int) -> Params:
        """The weights of node ``j``, in the order of ``node_names``."""
        return tuple(p[j] for p in self.node_params())

    def step_weights(self) -> list[Params]:
        """The weights of every node as `_f` takes them, for a run of fixed steps: computed
        once per run for all nodes, and split per node once (``unbind``: backprop then gathers each
        weight's gradient in one stack instead of one full-size scatter per step). Fields add
        derived weights here (H1: ``J`` folded into ``K``) so no step rebuilds them."""
        return list(zip(*(p.unbind(0) for p in self.node_params())))

    def params_at(self, t: float | Tensor) -> Params:
        """The weights at time ``t`` according to the node layout (`TimeNodes.locate`). A
        tensor ``t`` off the CPU, or in a compiled graph, is located on its device (`located`:
        a read-back would synchronise with the device, or break the graph); on the CPU reading
        it is free, and fewer operations."""
        if self.nodes.mode == "constant":
            return self.node(0)
        if isinstance(t, Tensor) and (t.device.type != "cpu" or torch.compiler.is_compiling()):
            return self.located(t)
        j, w = self.nodes.locate(float(t.detach()) if isinstance(t, Tensor) else float(t))
        if w == 0.0:
            return self.node(j)
        weight: float | Tensor = w
        if isinstance(t, Tensor):  # keep df/dt in the graph: solvers may differentiate through t
            weight = ((t - j * self.nodes.dt) / self.nodes.dt).to(self.node(j)[0].dtype)
        return tuple(torch.lerp(a, b, weight) for a, b in zip(self.node(j), self.node(j + 1)))

    def located(self, t: Tensor) -> Params:
        """The weights at the one time in ``t``, found on its device: nothing is read back to the
        host (an adaptive solve on a GPU calls its field at times it keeps there). The node is
        counted from the node times at or before t, as `TimeNodes.locate` counts it; linear
        weights keep their derivative in t (solvers may differentiate through t)."""
        if t.numel() != 1:
            raise ValueError(
                f"a field with weights at nodes takes one time per call; got t of shape {tuple(t.shape)} "
                "(per-sample steps need a field without nodes)"
            )
        nodes, params = self.nodes, self.node_params()
        times = torch.arange(nodes.n, dtype=torch.float64, device=t.device) * nodes.dt  # j * dt, as locate
        j = (times <= t.detach().double().reshape(())).sum(dtype=torch.long) - 1
        if nodes.mode == "piecewise":
            return _gathered(params, j.clamp(0, nodes.n - 1))
        inner = j.clamp(0, nodes.n - 2)
        (start,) = _gathered((times,), inner)
        weight = ((t.reshape(()) - start.to(t.dtype)) / nodes.dt).to(params[0].dtype)
        # before node 0 its weights, from the last node on the last one's (weight 0 or 1: exact);
        # at a node time that node's, without a derivative in t, as `params_at` gives it for a number
        weight = torch.where((j < 0) | (weight == 0), 0.0, torch.where(j >= nodes.n - 1, 1.0, weight))
        return tuple(torch.lerp(a, b, weight) for a, b in zip(_gathered(params, inner), _gathered(params, inner + 1)))

    def at_node(self, j: int) -> FrozenField:
        """This field with its weights pinned to node ``j`` (used by fixed-step solvers)."""
        return FrozenField(self, self.node(j))

    def forward(self, t: float | Tensor, y: Tensor, params: Params | None = None) -> Tensor:
        """``f(t, y)``, with the weights at ``t`` unless ``params`` gives them."""
        return self._f(self.params_at(t) if params is None else params, y)

    @abstractmethod
    def _f(self, params: Params, y: Tensor) -> Tensor:
        """``f`` with the given weights."""

    def check_input(self, y: Tensor) -> None:
        """Raise ``ValueError`` if ``y`` is not a state of this field's shape, dtype and device.
        (Values are not inspected: that would cost a host sync per call on a GPU.)"""
        like = self.node_params()[0] if self.node_names else None
        check_state(y, self.features, 4 if self.conv else 2, like)

    def _apply(self, fn: Any, recurse: bool = True) -> NodeField:
        """`nn.Module._apply` with each conv node weight converted as the 4-D convolution weight it
        is: ``fn`` sees ``(n * out, in, k, k)``, so ``model.to(memory_format=torch.channels_last)``
        puts every node's kernel in channels-last layout (on the 5-D stack, PyTorch's conversion
        raises). Device and dtype conversions are unchanged by the reshape."""
        return super()._apply(_per_node(fn), recurse)

    def extra_repr(self) -> str:
        kind = f"conv {self.kernel_size}x{self.kernel_size}" if self.conv else "dense"
        nodes = self.nodes
        return f"features={self.features}, {kind}, n_nodes={nodes.n}, dt={nodes.dt:g}, time_mode={nodes.mode!r}"


def _gathered(params: Params, j: Tensor) -> Params:
    """Node ``j`` (a 0-d tensor) of each node-axis weight, gathered on the device (indexing by
    a 0-d tensor would read it back)."""
    return tuple(p.index_select(0, j.reshape(1)).squeeze(0) for p in params)


def _per_node(fn: Any) -> Any:
    """``fn`` applied to a 5-D node-axis conv weight as one 4-D weight, the result viewed back."""

    def apply(t: Tensor) -> Tensor:
        if t.dim() != 5:
            return fn(t)
        return fn(t.flatten(0, 1)).unflatten(0, t.shape[:2])

    return apply


def check_state(y: Tensor, features: int, ndim: int, like: Tensor | None = None) -> None:
    """Shared input check: ``y`` of shape ``(batch, features)`` (ndim 2) or
    ``(batch, features, H, W)`` (ndim 4), floating, matching ``like``'s dtype and device."""
    if not isinstance(y, Tensor):
        raise ValueError(f"y must be a torch.Tensor; got {type(y).__name__}")
    layout = "(batch, features)" if ndim == 2 else "(batch, channels, H, W)"
    if y.dim() != ndim or y.shape[1] != features:
        raise ValueError(f"y must have shape {layout} with {features} features; got {tuple(y.shape)}")
    if not y.is_floating_point():
        raise ValueError(f"y must be a floating tensor; got dtype {y.dtype}")
    if like is not None and (y.dtype != like.dtype or y.device != like.device):
        raise ValueError(
            f"y must have the field's dtype and device ({like.dtype}, {like.device}); got ({y.dtype}, {y.device})"
        )


class SplitField(NodeField):
    """A field on a state split channel-wise in halves ``(y, z)`` whose halves drive each other:
    ``y' = f_y(t, z)``, ``z' = f_z(t, y)``. Split solvers (symplectic Euler, Verlet) update one
    half from the other; ``first`` says which half they update first by default."""

    is_split = True
    default_solver = "symplectic_euler"
    first = "y"

    def __init__(self, features: int, *args, **kwargs):
        check_int("features", features)
        check_even("features", features, "the state is split in two halves (y, z)")
        super().__init__(features, *args, **kwargs)
        self.half_features = features // 2

    @staticmethod
    def split(x: Tensor) -> tuple[Tensor, Tensor]:
        y, z = x.chunk(2, dim=1)
        return y, z

    @staticmethod
    def merge(y: Tensor, z: Tensor) -> Tensor:
        return torch.cat((y, z), dim=1)

    def dy(self, t: float | Tensor, z: Tensor, params: Params | None = None) -> Tensor:
        """``y' = f_y(t, z)``."""
        return self._dy(self.params_at(t) if params is None else params, z)

    def dz(self, t: float | Tensor, y: Tensor, params: Params | None = None) -> Tensor:
        """``z' = f_z(t, y)``."""
        return self._dz(self.params_at(t) if params is None else params, y)

    def _f(self, params: Params, x: Tensor) -> Tensor:
        y, z = self.split(x)
        return self.merge(self._dy(params, z), self._dz(params, y))

    @abstractmethod
    def _dy(self, params: Params, z: Tensor) -> Tensor:
        """``f_y`` with the given weights."""

    @abstractmethod
    def _dz(self, params: Params, y: Tensor) -> Tensor:
        """``f_z`` with the given weights."""


def prepared(field: Any, like: Tensor) -> Any:
    """``field.prepared(like)`` where the field offers it (the field on states shaped like
    ``like``, with what its weights alone determine computed once: for a solve's many calls),
    else the field itself."""
    prepare = getattr(field, "prepared", None)
    return field if prepare is None else prepare(like)


class FrozenField:
    """A `NodeField` with fixed weights, callable like the field (``f(t, y)``, and
    ``dy``/``dz``/``split``/``merge`` for split fields)."""

    __slots__ = ("field", "params")

    def __init__(self, field: NodeField, params: Params):
        self.field: Any = field  # a SplitField for dy/dz/split/merge/first
        self.params = params

    def __call__(self, t: float | Tensor, y: Tensor) -> Tensor:
        return self.field._f(self.params, y)

    def dy(self, t: float | Tensor, z: Tensor) -> Tensor:
        return self.field._dy(self.params, z)

    def dz(self, t: float | Tensor, y: Tensor) -> Tensor:
        return self.field._dz(self.params, y)

    @property
    def is_split(self) -> bool:
        return self.field.is_split

    @property
    def first(self) -> str:
        return self.field.first

    def split(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self.field.split(x)

    def merge(self, y: Tensor, z: Tensor) -> Tensor:
        return self.field.merge(y, z)
