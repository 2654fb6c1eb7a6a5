"""Experiments made of runs: :func:`compare` (several networks, several seeds) and :func:`grid`
(1-D or 2-D parameter grids). Both are resumable: each run has its own folder and a finished run
is not rerun. A run that fails is recorded as ``failed`` with its error, and the others go on.
"""

from __future__ import annotations

import copy
import csv
import dataclasses
import itertools
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from .plots import plot_curves, plot_grid
from .training import RunConfig, read_json, run, write_json

COLUMNS = (
    "model",
    "parameters",
    "test_accuracy",
    "test_accuracy_std",
    "runs",
    "seconds_per_epoch",
    "nfe_forward",
    "nfe_backward",
    "saved_tensors_mb",
    "peak_memory_mb",
    "status",
)


def parse_value(text: str) -> Any:
    """A command-line value as YAML: ``0.1`` -> float, ``true`` -> bool, ``[3, 40]`` -> list."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise ValueError(f"cannot read value {text!r}: {error}") from None


def parse_model(spec: str) -> tuple[str, dict[str, Any]]:
    """``"name"`` or ``"name:key=value,key=value"`` -> (name, overrides)."""
    name, _, rest = spec.partition(":")
    overrides = {}
    for item in filter(None, rest.split(",")):
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"model spec {spec!r}: expected name:key=value,...; got {item!r}")
        overrides[key.strip()] = parse_value(value)
    return name.strip(), overrides


def safe_name(text: str) -> str:
    """``text`` as a folder name: letters, digits and ``._=,-`` kept, anything else ``_``."""
    return "".join(c if c.isalnum() or c in "._=,-" else "_" for c in text)


def _run_safely(config: RunConfig, run_dir: Path, progress: bool) -> dict[str, Any]:
    try:
        return run(config, run_dir, progress=progress)
    except (KeyboardInterrupt, ValueError):
        raise
    except Exception as error:  # one failing run must not lose the others
        result = {"status": "failed", "error": f"{type(error).__name__}: {error}", "traceback": traceback.format_exc()}
        run_dir.mkdir(parents=True, exist_ok=True)
        write_json(run_dir / "metrics.json", result)
        return result


def _run_line(label: str, result: dict[str, Any]) -> str:
    line = f"{label}: {result.get('status')}"
    if result.get("test_accuracy") is not None:
        line += f", test accuracy {100 * result['test_accuracy']:.2f}%, {result['seconds_per_epoch']:.1f} s/epoch"
    return line + (f" ({result['error']})" if result.get("error") else "")


def _history(run_dir: Path) -> list[dict[str, Any]]:
    path = run_dir / "history.json"
    return read_json(path) if path.exists() else []


def _mean_std(values: list[float]) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    mean = sum(values) / len(values)
    return mean, (sum((v - mean) ** 2 for v in values) / len(values)) ** 0.5


def _aggregate(label: str, results: list[dict[str, Any]]) -> dict[str, Any]:
    done = [r for r in results if r.get("status") == "finished"]
    row: dict[str, Any] = {"model": label, "runs": len(done)}
    row["test_accuracy"], row["test_accuracy_std"] = _mean_std([r["test_accuracy"] for r in done])
    for key in ("parameters", "seconds_per_epoch", "nfe_forward", "nfe_backward", "saved_tensors_mb", "peak_memory_mb"):
        values = [r[key] for r in done if r.get(key) is not None]
        row[key] = _mean_std(values)[0]
    statuses = [r.get("status", "?") for r in results]
    row["status"] = ", ".join(f"{statuses.count(s)} {s}" for s in sorted(set(statuses)))
    return row


def compare(
    models: Sequence[str], base: RunConfig, seeds: Sequence[int], out_dir: str | Path, *, progress: bool = True
) -> list[dict[str, Any]]:
    """Train every model spec (see :func:`parse_model`) for every seed on ``base``'s data (same
    preprocessing) with ``base``'s protocol (same epochs, batches, optimiser), into
    ``out_dir/<spec>/seed<k>``. Write ``compare.csv``, ``compare.md`` and ``compare.png``
    (curves with mean +/- std bands); return the table rows."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    configs = {}
    for spec in models:  # check every spec before training anything
        name, overrides = parse_model(spec)
        config = dataclasses.replace(copy.deepcopy(base), model=name, model_options={})
        for key, value in overrides.items():
            config.set(key, value)
        configs[spec] = config
    rows, histories = [], {}
    for spec, config in configs.items():
        results, histories[spec] = [], []
        for seed in seeds:
            config.seed = seed
            run_dir = out_dir / safe_name(spec) / f"seed{seed}"
            results.append(_run_safely(copy.deepcopy(config), run_dir, progress))
            histories[spec].append(_history(run_dir))
            if progress:
                print(_run_line(f"{spec} seed {seed}", results[-1]), flush=True)
        rows.append(_aggregate(spec, results))
    _write_table(rows, out_dir / "compare.csv", out_dir / "compare.md")
    plot_curves(histories, out_dir / "compare.png")
    return rows


def grid(
    base: RunConfig,
    axes: Sequence[tuple[str, Sequence[Any]]],
    seeds: Sequence[int],
    out_dir: str | Path,
    *,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """Run ``base`` at every point of a 1-D or 2-D grid (``axes``: (key, values) pairs, keys as in
    :meth:`RunConfig.set`) for every seed; write ``grid.csv`` and ``grid.png`` and return one
    row per run. Points already finished are read back, not rerun."""
    if not 1 <= len(axes) <= 2:
        raise ValueError(f"axes must hold one or two (key, values) pairs; got {len(axes)}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    keys = [key for key, _ in axes]
    points = []
    for values in itertools.product(*(values for _, values in axes)):
        config = copy.deepcopy(base)
        for key, value in zip(keys, values):
            config.set(key, value)  # check every point before training anything
        points.append((values, config))
    rows = []
    for values, config in points:
        name = ",".join(f"{k}={v}" for k, v in zip(keys, values))
        for seed in seeds:
            config.seed = seed
            result = _run_safely(copy.deepcopy(config), out_dir / safe_name(name) / f"seed{seed}", progress)
            if progress:
                print(_run_line(f"{name} seed {seed}", result), flush=True)
            row = {**dict(zip(keys, values)), "seed": seed, "status": result.get("status")}
            row.update({k: result.get(k) for k in ("test_accuracy", "best_test_accuracy", "train_accuracy")})
            row["error"] = result.get("error")
            rows.append(row)
    with open(out_dir / "grid.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    write_json(out_dir / "grid.json", {"keys": keys, "rows": rows})
    plot_grid(rows, keys, out_dir / "grid.png")
    return rows


def _format(value: Any, key: str) -> str:
    if value is None:
        return "-"
    if key in ("test_accuracy", "test_accuracy_std"):
        return f"{100 * value:.2f}"
    if key == "parameters":
        return f"{int(value):,}"
    if isinstance(value, float):
        return f"{value:.1f}"
    return str(value)


def format_table(rows: list[dict[str, Any]]) -> str:
    """The comparison as a Markdown table (accuracy in %, mean +/- std over seeds)."""
    names = ("model", "parameters", "test accuracy (%)", "runs", "s/epoch", "NFE fwd", "NFE bwd")
    names += ("autograd MB", "peak MB", "status")
    lines = ["| " + " | ".join(names) + " |", "|" + "---|" * len(names)]
    for r in rows:
        accuracy = "-" if r["test_accuracy"] is None else f"{_format(r['test_accuracy'], 'test_accuracy')} ± "
        accuracy += "" if r["test_accuracy"] is None else _format(r["test_accuracy_std"], "test_accuracy_std")
        cells = [r["model"], _format(r["parameters"], "parameters"), accuracy, str(r["runs"])]
        keys = ("seconds_per_epoch", "nfe_forward", "nfe_backward", "saved_tensors_mb", "peak_memory_mb")
        cells += [_format(r[k], k) for k in keys]
        cells.append(r["status"])
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _write_table(rows: list[dict[str, Any]], csv_path: Path, md_path: Path) -> None:
    with open(csv_path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    md_path.write_text(format_table(rows) + "\n")
