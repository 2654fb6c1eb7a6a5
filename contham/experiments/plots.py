"""Figures of runs, comparisons and grids, written as PNG files (matplotlib's object API: no
pyplot, so the user's backend is left alone).

* `plot_curves`: accuracy and loss per epoch, the mean over seeds with a +/- std band (train
  dashed, test solid), one colour per model: the report's figure 4.3.
* `plot_grid`: test accuracy against a parameter (1-D, error bars over seeds) or a heat map
  (2-D): figures 4.4-4.10.
* `plot_confusion`: the confusion matrix of a run; `plot_gradient_norms`: its
  per-epoch gradient norms across blocks and parameters.
* `plot_feature_maps`: one image after the first conv and after each unit of a
  `HamiltonianNet`: figures 5.2-5.3.
* `plot_points_2d`: a 2-D classifier (``hdnn_2d``): its decision regions with the test
  points, and the propagation of the hidden states through the layers (the H-DNN papers' figures).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from torch import Tensor

from .status import Status


def _band(ax: Any, runs: list[list[float]], label: str, color: Any, style: str) -> None:
    length = min(len(r) for r in runs)
    values = np.array([r[:length] for r in runs])
    epochs = np.arange(1, length + 1)
    mean, std = values.mean(0), values.std(0, ddof=1) if len(runs) > 1 else np.zeros(length)
    ax.plot(epochs, mean, style, color=color, label=label)
    if len(runs) > 1:
        ax.fill_between(epochs, mean - std, mean + std, color=color, alpha=0.2)


def plot_curves(histories: dict[str, list[list[dict[str, Any]]]], path: str | Path) -> Path:
    """``histories[label]`` holds one per-epoch history per seed; writes accuracy and loss panels."""
    fig = Figure(figsize=(11, 4))
    acc, loss = fig.subplots(1, 2)
    for i, (label, runs) in enumerate(histories.items()):
        runs = [r for r in runs if r]
        if not runs:
            continue
        color = f"C{i % 10}"
        for key, ax in (("accuracy", acc), ("loss", loss)):
            _band(ax, [[h[f"test_{key}"] for h in r] for r in runs], f"{label} test", color, "-")
            _band(ax, [[h[f"train_{key}"] for h in r] for r in runs], f"{label} train", color, "--")
    for ax, name in ((acc, "accuracy"), (loss, "loss")):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("epoch")
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
    acc.legend(fontsize=7)
    fig.suptitle(
        "test (solid) and training (dashed) curves: mean over seeds, shaded band +/- 1 sample std", fontsize=10
    )
    fig.tight_layout()
    return _save(fig, path)


def plot_grid(rows: list[dict[str, Any]], keys: Sequence[str], path: str | Path) -> Path:
    """Test accuracy of grid ``rows`` (each with the grid keys, ``seed`` and ``test_accuracy``)."""
    finished = [
        r for r in rows if r.get("test_accuracy") is not None and r.get("status", Status.FINISHED) == Status.FINISHED
    ]
    fig = Figure(figsize=(6, 4.5))
    ax = fig.subplots()
    if len(keys) == 1:
        (key,) = keys
        values = sorted({r[key] for r in rows}, key=_sort_key)
        acc = [[r["test_accuracy"] for r in finished if r[key] == v] for v in values]
        numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
        x = values if numeric else list(range(len(values)))
        means = [np.mean(a) if a else np.nan for a in acc]
        stds = [np.std(a, ddof=1) if len(a) > 1 else 0.0 for a in acc]
        ax.errorbar(x, means, yerr=stds, marker="o", capsize=3)
        ax.set_title("test accuracy: mean over seeds, error bars +/- 1 sample std", fontsize=10)
        if numeric and min(values) > 0 and max(values) / min(values) >= 100:
            ax.set_xscale("log")
        if not numeric:
            ax.set_xticks(x, [str(v) for v in values])
        ax.set_xlabel(key)
        ax.set_ylabel("test accuracy")
        ax.grid(alpha=0.3)
    else:
        kx, ky = keys
        xs = sorted({r[kx] for r in rows}, key=_sort_key)
        ys = sorted({r[ky] for r in rows}, key=_sort_key)
        grid = np.full((len(ys), len(xs)), np.nan)
        for j, yv in enumerate(ys):
            for i, xv in enumerate(xs):
                acc = [r["test_accuracy"] for r in finished if r[kx] == xv and r[ky] == yv]
                if acc:
                    grid[j, i] = np.mean(acc)
        image = ax.imshow(grid, origin="lower", cmap="viridis", aspect="auto")
        for (j, i), value in np.ndenumerate(grid):
            ax.text(
                i, j, Status.FAILED.value if np.isnan(value) else f"{value:.3f}", ha="center", va="center", fontsize=8
            )
        ax.set_xticks(range(len(xs)), [str(v) for v in xs])
        ax.set_yticks(range(len(ys)), [str(v) for v in ys])
        ax.set_xlabel(kx)
        ax.set_ylabel(ky)
        fig.colorbar(image, label="test accuracy")
        ax.set_title("test accuracy, mean over seeds (failed: no finished run)", fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def plot_gradient_norms(history: list[dict[str, Any]], path: str | Path) -> Path:
    """Per-epoch mean gradient norms of a run recorded with ``gradient_norms``: block output
    states (left) and parameters (right), log scale."""
    fig = Figure(figsize=(11, 4))
    states, params = fig.subplots(1, 2)
    epochs = [h["epoch"] for h in history]
    keys = sorted({k for h in history for k in h.get("gradient_norms", {})})
    for key in keys:
        ax = states if key.startswith("state/") else params
        ax.plot(epochs, [h["gradient_norms"].get(key, np.nan) for h in history], marker=".", label=key.split("/", 1)[1])
    for ax, title in ((states, "dL/d(block output)"), (params, "dL/d(parameter)")):
        ax.set_yscale("log")
        ax.set_xlabel("epoch")
        ax.set_title(f"{title}: mean norm over the epoch's batches", fontsize=9)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        if len(ax.lines) <= 12:
            ax.legend(fontsize=6)
    fig.tight_layout()
    return _save(fig, path)


def plot_confusion(confusion: list[list[int]], path: str | Path, classes: Sequence[str] | None = None) -> Path:
    """The confusion matrix (rows: true class, columns: predicted), counts in the cells."""
    matrix = np.array(confusion)
    fig = Figure(figsize=(1 + 0.5 * len(matrix), 0.8 + 0.5 * len(matrix)))
    ax = fig.subplots()
    ax.imshow(matrix, cmap="Blues")
    if len(matrix) <= 20:
        for (i, j), value in np.ndenumerate(matrix):
            ax.text(j, i, str(value), ha="center", va="center", fontsize=7)
    labels = classes or [str(i) for i in range(len(matrix))]
    if len(matrix) <= 20:
        ax.set_xticks(range(len(matrix)), labels)
        ax.set_yticks(range(len(matrix)), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title("test set: images per (true, predicted) class", fontsize=9)
    fig.tight_layout()
    return _save(fig, path)


def plot_feature_maps(model: Any, image: Tensor, path: str | Path, channels: int = 4) -> Path:
    """``image`` (C, H, W) through a `HamiltonianNet`: the input, then
    ``channels`` channels after the first conv and after each unit (rows)."""
    model.eval()
    stages: list[tuple[str, Tensor]] = []
    with torch.no_grad():
        x = model.dropout_in(model.batchnorm(model.conv(image[None])))
        stages.append(("after conv", x[0]))
        for i, unit in enumerate(model.units):
            x = unit(x)
            stages.append((f"after unit {i + 1}", x[0]))
    fig = Figure(figsize=(1.8 * channels, 1.8 * (len(stages) + 1)))
    axes = fig.subplots(len(stages) + 1, channels, squeeze=False)
    shown = image.permute(1, 2, 0).numpy() if image.shape[0] == 3 else image[0].numpy()
    for ax in axes.flat:
        ax.axis("off")
    axes[0, 0].imshow((shown - shown.min()) / (np.ptp(shown) or 1), cmap="gray")
    axes[0, 0].set_title("input", fontsize=8)
    for row, (name, maps) in enumerate(stages, start=1):
        energy = maps.flatten(1).abs().mean(1)  # show the most active channels
        for col, c in enumerate(energy.argsort(descending=True)[:channels].tolist()):
            low, high = color_limits(maps[c])
            axes[row, col].imshow(maps[c].numpy(), cmap="magma", vmin=low, vmax=high)
            size = "x".join(map(str, maps[c].shape))
            constant = f", constant {float(maps[c].max()):.3g}" if high - low == 2 else ""
            axes[row, col].set_title(f"{name}, ch {c} ({size}{constant})", fontsize=7)
    fig.suptitle("the most active channels of one test image, stage by stage (each map on its own scale)", fontsize=9)
    fig.tight_layout()
    return _save(fig, path)


def color_limits(image: Tensor) -> tuple[float, float]:
    """The colour scale of one feature map: its own range; a constant map (a 1 x 1 map after the
    last pooling, a dead channel) gets the range value +/- 1, so that it shows mid-scale instead
    of as the colour map's black."""
    low, high = float(image.min()), float(image.max())
    if high - low <= 1e-12 * max(1.0, abs(high)):
        return high - 1.0, high + 1.0
    return low, high


@torch.no_grad()
def plot_points_2d(
    model: Any, x: Tensor, labels: Tensor, domain: Sequence[float], path: str | Path, snapshots: int = 5
) -> Path:
    """Left: the class ``model`` predicts over ``domain`` = (x_min, x_max, y_min, y_max), with the
    points ``x`` coloured by ``labels``. Then the hidden states at ``snapshots`` layers evenly
    spaced from input to output (``model.hidden_states``), shown in the two features that receive
    the coordinates (``model.inputs``)."""
    model.eval()
    x_min, x_max, y_min, y_max = domain
    u, v = torch.meshgrid(torch.linspace(x_min, x_max, 300), torch.linspace(y_min, y_max, 300), indexing="xy")
    grid = torch.stack((u.flatten(), v.flatten()), 1).to(x.dtype)
    regions = model(grid).argmax(1).view(u.shape)
    states = model.hidden_states(x)
    layers = np.unique(np.linspace(0, len(states) - 1, snapshots).round().astype(int))
    fig = Figure(figsize=(3.2 * (len(layers) + 1), 3.2))
    axes = fig.subplots(1, len(layers) + 1)
    axes[0].contourf(u.numpy(), v.numpy(), regions.numpy(), levels=[-0.5, 0.5, 1.5], colors=["#c6dbef", "#fdd0a2"])
    colors = np.where(labels.numpy() == 0, "tab:blue", "tab:orange")
    axes[0].scatter(x[:, 0].numpy(), x[:, 1].numpy(), c=colors, s=2)
    axes[0].set(xlim=(x_min, x_max), ylim=(y_min, y_max), title="decision regions, test points")
    first, second = model.inputs.tolist()
    for ax, layer in zip(axes[1:], layers):
        ax.scatter(states[layer, :, first].numpy(), states[layer, :, second].numpy(), c=colors, s=2)
        ax.set(title=f"layer {layer}", xlabel=f"feature {first}", ylabel=f"feature {second}")
    fig.tight_layout()
    return _save(fig, path)


def _sort_key(value: Any) -> tuple[int, Any]:
    return (0, value) if isinstance(value, (int, float)) and not isinstance(value, bool) else (1, str(value))


def _save(fig: Any, path: str | Path) -> Path:
    path = Path(path)
    fig.savefig(path, dpi=120)
    return path
