"""Experiments made of runs: `compare` (several networks, several seeds) and `grid`
(1-D or 2-D parameter grids).

Both are resumable: each run has its own folder and a finished run is not rerun. A run that fails
is recorded as ``failed`` with its error, and the others go on; a run whose folder another process
is training is reported as ``busy`` and left alone. The runs are carried out by an executor:
`Sequential` (one after another in this process, the default) or
`RayRunner` (Ray tasks on this machine or a cluster). Both
write the same folders, files and tables.
"""

from __future__ import annotations

import copy
import csv
import dataclasses
import itertools
import statistics
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

import yaml

from ..config import read_yaml
from .files import RunBusy, RunFolderError, prepare_folder, read_json, write_json
from .plots import plot_curves, plot_grid
from .protocols import describe_protocol
from .runconfig import RunConfig
from .status import Status
from .trainer import run

COLUMNS = (
    "model",
    "protocol",
    "parameters",
    "test_accuracy",
    "test_accuracy_std",
    "runs",
    "failed",
    "seconds_per_epoch",
    "nfe_forward",
    "nfe_backward",
    "saved_tensors_mb",
    "peak_memory_mb",
    "status",
)


def parse_value(text: str) -> Any:
    """A command-line value as YAML: ``0.1`` and ``1e-5`` -> float, ``true`` -> bool, ``[3, 40]`` -> list."""
    try:
        return read_yaml(text)
    except yaml.YAMLError as error:
        raise ValueError(f"cannot read value {text!r}: {' '.join(str(error).split())}") from None


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


@dataclasses.dataclass
class Job:
    """One run of an experiment: its label (for messages), config and folder."""

    label: str
    config: RunConfig
    run_dir: Path


OnResult = Callable[[Job, dict[str, Any]], None]


class Executor(Protocol):
    """Carries out the runs of an experiment; calls ``on_result`` as each one ends and returns
    the results in the order of ``jobs``."""

    def execute(self, jobs: Sequence[Job], on_result: OnResult) -> list[dict[str, Any]]: ...


def run_job(
    job: Job,
    *,
    progress: bool = False,
    wait: bool = False,
    restart: bool = False,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """`run` one job, never raising for the job's own failure: an
    error inside the run is returned (and written to its ``metrics.json``) as ``failed``, a folder
    held by another process as ``busy``. Bad input that would fail every run (``ValueError``
    other than a broken run folder) and Ctrl-C are raised."""
    try:
        return run(job.config, job.run_dir, progress=progress, wait=wait, restart=restart, on_epoch=on_epoch)
    except RunBusy as error:
        return {"status": Status.BUSY, "error": str(error)}
    except KeyboardInterrupt:
        raise
    except ValueError as error:
        if not isinstance(error, RunFolderError):
            raise
        return _failed(job, error)
    except Exception as error:  # one failing run must not lose the others
        return _failed(job, error)


def _failed(job: Job, error: Exception) -> dict[str, Any]:
    result = {"status": Status.FAILED, "error": f"{type(error).__name__}: {error}", "traceback": traceback.format_exc()}
    try:
        write_json(job.run_dir / "metrics.json", result)
    except RunFolderError:
        pass  # the folder cannot be written: the result still reaches the table
    return result


@dataclasses.dataclass
class Sequential:
    """Runs one after another in this process (progress bars with ``progress``); ``wait`` and
    ``restart`` as in `fit`."""

    progress: bool = True
    wait: bool = False
    restart: bool = False

    def execute(self, jobs: Sequence[Job], on_result: OnResult) -> list[dict[str, Any]]:
        results = []
        for job in jobs:
            results.append(run_job(job, progress=self.progress, wait=self.wait, restart=self.restart))
            on_result(job, results[-1])
        return results


def _run_line(label: str, result: dict[str, Any]) -> str:
    line = f"{label}: {result.get('status')}"
    if result.get("test_accuracy") is not None:
        line += f", test accuracy {100 * result['test_accuracy']:.2f}%"
    if result.get("seconds_per_epoch") is not None:
        line += f", {result['seconds_per_epoch']:.1f} s/epoch"
    if result.get("stopped_epoch") is not None:
        line += f", stopped after epoch {result['stopped_epoch']}"
    return line + (f" ({result['error']})" if result.get("error") else "")


def _history(run_dir: Path) -> list[dict[str, Any]]:
    path = run_dir / "history.json"
    try:
        return read_json(path) if path.exists() else []
    except RunFolderError:
        return []


def _mean_std(values: list[float]) -> tuple[float | None, float | None]:
    """The mean and the sample standard deviation (n - 1; None for fewer than two values)."""
    if not values:
        return None, None
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None


def aggregate(label: str, results: list[dict[str, Any]]) -> dict[str, Any]:
    """One row of the comparison table from the results of one spec's runs (means over the
    finished ones; the status of every run counted)."""
    done = [r for r in results if r.get("status") == Status.FINISHED]
    row: dict[str, Any] = {"model": label, "runs": len(done)}
    row["test_accuracy"], row["test_accuracy_std"] = _mean_std([r["test_accuracy"] for r in done])
    for key in ("parameters", "seconds_per_epoch", "nfe_forward", "nfe_backward", "saved_tensors_mb", "peak_memory_mb"):
        values = [r[key] for r in done if r.get(key) is not None]
        row[key] = _mean_std(values)[0]
    row["failed"] = len(failed(results))
    statuses = [str(r.get("status", "?")) for r in results]
    row["status"] = ", ".join(f"{statuses.count(s)} {s}" for s in sorted(set(statuses)))
    return row


def execute(jobs: Sequence[Job], executor: Executor, progress: bool, results: list[dict[str, Any] | None]) -> None:
    """Carry out ``jobs``, putting the result of job i into ``results[i]`` as it ends; a job
    that an error or Ctrl-C kept from running keeps its None (the callers write the tables of
    what ran, then the error goes on)."""
    index = {id(job): i for i, job in enumerate(jobs)}

    def on_result(job: Job, result: dict[str, Any]) -> None:
        results[index[id(job)]] = result
        if progress:
            print(_run_line(job.label, result), flush=True)

    executor.execute(jobs, on_result)


def failed(results: Sequence[dict[str, Any] | None]) -> list[dict[str, Any]]:
    """The results of runs that an error ended."""
    return [r for r in results if r is not None and r.get("status") == Status.FAILED]


def compare(
    models: Sequence[str],
    base: RunConfig,
    seeds: Sequence[int],
    out_dir: str | Path,
    *,
    learning: dict[str, Any] | None = None,
    progress: bool = True,
    executor: Executor | None = None,
) -> list[dict[str, Any]]:
    """Train every model spec (see `parse_model`) for every seed on ``base``'s data (same
    preprocessing, epochs and run options) into ``out_dir/<spec>/seed<k>``. Write
    ``compare.csv``, ``compare.md`` and ``compare.png`` (curves with mean +/- std bands); return
    the table rows, each naming the protocol its network ran. ``executor``: default `Sequential`.

    ``learning``: None, every network trains with ``base``'s protocol; a dict of
    `LearningParameters` fields, every network trains with its own protocol (its paper's, as
    `RunConfig` chooses it) with these fields replaced (``{}``: its own as it is)."""
    out_dir = Path(out_dir)
    jobs = []
    for spec in models:  # check every spec before training anything
        name, overrides = parse_model(spec)
        own = learning is not None  # None: the network's default protocol
        config = dataclasses.replace(copy.deepcopy(base), model=name, model_options={},
                                     learning=None if own else base.learning)  # type: ignore[arg-type]  # fmt: skip
        for key, value in (learning or {}).items():
            config.set(f"learning.{key}", value)
        for key, value in overrides.items():
            config.set(key, value)
        for seed in seeds:
            run_dir = out_dir / safe_name(spec) / f"seed{seed}"
            jobs.append(Job(f"{spec} seed {seed}", dataclasses.replace(copy.deepcopy(config), seed=seed), run_dir))
    prepare_folder(out_dir)
    results: list[dict[str, Any] | None] = [None] * len(jobs)
    try:
        execute(jobs, executor or Sequential(progress), progress, results)
    finally:
        if any(results):  # what ran, also when an error or Ctrl-C stopped the others
            rows = _compare_tables(models, jobs, results, out_dir)
    return rows


def _compare_tables(
    models: Sequence[str], jobs: Sequence[Job], results: Sequence[dict[str, Any] | None], out_dir: Path
) -> list[dict[str, Any]]:
    """Write ``compare.csv``, ``compare.md`` and ``compare.png`` for the runs that ran."""
    rows, histories = [], {}
    per_spec = len(jobs) // len(models)
    for i, spec in enumerate(models):
        ran = [(job, r) for job, r in zip(jobs[i * per_spec : (i + 1) * per_spec], results[i * per_spec :]) if r]
        histories[spec] = [_history(job.run_dir) for job, _ in ran]
        rows.append(aggregate(spec, [r for _, r in ran]))
        rows[-1]["protocol"] = describe_protocol(jobs[i * per_spec].config.learning, jobs[i * per_spec].config.model)
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
    executor: Executor | None = None,
) -> list[dict[str, Any]]:
    """Run ``base`` at every point of a 1-D or 2-D grid (``axes``: (key, values) pairs, keys as in
    `RunConfig.set`) for every seed; write ``grid.csv`` and ``grid.png`` and return one
    row per run. Points already finished are read back, not rerun. ``executor``: default
    `Sequential`."""
    if not 1 <= len(axes) <= 2:
        raise ValueError(f"axes must hold one or two (key, values) pairs; got {len(axes)}")
    out_dir = Path(out_dir)
    keys = [key for key, _ in axes]
    jobs, points = [], []
    for values in itertools.product(*(values for _, values in axes)):
        config = copy.deepcopy(base)
        for key, value in zip(keys, values):
            config.set(key, value)  # check every point before training anything
        name = ",".join(f"{k}={v}" for k, v in zip(keys, values))
        for seed in seeds:
            run_config = dataclasses.replace(copy.deepcopy(config), seed=seed)
            jobs.append(Job(f"{name} seed {seed}", run_config, out_dir / safe_name(name) / f"seed{seed}"))
            points.append(values)
    prepare_folder(out_dir)
    results: list[dict[str, Any] | None] = [None] * len(jobs)
    try:
        execute(jobs, executor or Sequential(progress), progress, results)
    finally:
        if any(results):  # what ran, also when an error or Ctrl-C stopped the others
            rows = _grid_tables(keys, jobs, points, results, out_dir)
    return rows


def _grid_tables(
    keys: list[str], jobs: Sequence[Job], points: list[Any], results: Sequence[dict[str, Any] | None], out_dir: Path
) -> list[dict[str, Any]]:
    """Write ``grid.csv``, ``grid.json`` and ``grid.png`` for the runs that ran; one row each."""
    rows = []
    for job, values, result in zip(jobs, points, results):
        if result is None:
            continue
        row = {**dict(zip(keys, values)), "seed": job.config.seed, "status": str(result.get("status"))}
        row.update({k: result.get(k) for k in ("test_accuracy", "best_test_accuracy", "train_accuracy")})
        row["epochs_done"] = result.get("epochs_done")
        row["error"] = result.get("error")
        rows.append(row)
    fields = [*keys, "seed", "status", "test_accuracy", "best_test_accuracy", "train_accuracy", "epochs_done", "error"]
    with open(out_dir / "grid.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
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
    """The comparison as a Markdown table (accuracy in %: the mean over the finished seeds +/- their
    sample standard deviation, shown from two seeds on; the columns are defined in
    docs/experiments.md)."""
    names: tuple[str, ...] = ("model", "protocol", "parameters", "test accuracy (%)", "runs", "s/epoch")
    names += ("NFE fwd", "NFE bwd")
    names += ("autograd MB", "peak MB", "status")
    lines = ["| " + " | ".join(names) + " |", "|" + "---|" * len(names)]
    for r in rows:
        accuracy = _format(r["test_accuracy"], "test_accuracy")
        if r["test_accuracy_std"] is not None:
            accuracy += f" ± {_format(r['test_accuracy_std'], 'test_accuracy_std')}"
        cells = [r["model"], r.get("protocol", "-"), _format(r["parameters"], "parameters"), accuracy, str(r["runs"])]
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
