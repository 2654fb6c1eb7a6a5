"""The ``contham`` command: ``train``, ``compare``, ``grid``, ``plot`` and ``list``.

Bad input (unknown network or key, a value of the wrong type, missing data, a malformed config,
checkpoint or results file, a results folder that cannot be written) prints one clear line and
exits with status 2. A run folder that another process is training is skipped with a message and
exit status 75 (``--wait`` waits for it instead). Ctrl-C exits with 130 after the last finished
epoch is saved; the same command resumes from there (and says so), and ``--restart`` starts
afresh. ``train`` exits with 1 when the run diverged; ``compare`` and ``grid`` with 1 when a run
failed, 75 when one was busy, after writing their tables for the runs that ran.

``compare`` and ``grid`` take ``--ray [ADDRESS]`` to run every (model or point, seed) on Ray
(`contham.experiments.ray_runner`); ``torchrun --nproc_per_node=N -m contham train ...``
trains one run on N processes (`contham.experiments.distributed`).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from ..data import DATASETS, POINT_DOMAINS, POINT_SETS, tensors_of
from ..models import HamiltonianNet, available, describe
from .distributed import ranks_from_env, shutdown
from .drivers import Executor, Sequential, compare, failed, format_table, grid, parse_model, parse_value, safe_name
from .files import RunBusy, read_json
from .plots import plot_confusion, plot_curves, plot_feature_maps, plot_gradient_norms, plot_grid, plot_points_2d
from .protocols import PROTOCOLS, describe_protocol
from .ray_runner import RayRunner
from .recipe import Recipe
from .runconfig import RunConfig
from .status import Status
from .trainer import run

DEFAULT_MODELS = ("thesis_resnet2", "thesis_odenet", "thesis_hamiltonian")


class UsageError(Exception):
    """Bad command-line input: reported in one line, exit status 2."""


def _seeds(items: list[str]) -> list[int]:
    try:
        seeds = [int(item) for item in items]
    except ValueError:
        raise UsageError(f"--seeds takes integers >= 0; got {' '.join(items)}") from None
    if not seeds or min(seeds) < 0:
        raise UsageError(f"--seeds takes integers >= 0; got {' '.join(items) or 'none'}")
    return seeds


def _key_values(items: list[str]) -> list[tuple[str, Any]]:
    pairs = []
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UsageError(f"expected key=value; got {item!r}")
        pairs.append((key, parse_value(value)))
    return pairs


def _base_config(target: str) -> RunConfig:
    """A network name, or a YAML/JSON file of a `RunConfig`."""
    path = Path(target)
    if path.suffix.lower() in (".yaml", ".yml", ".json"):
        if not path.is_file():
            raise UsageError(f"config file {target!r} does not exist")
        return RunConfig.load(path)
    return RunConfig(model=target)


def _apply(config: RunConfig, pairs: list[tuple[str, Any]]) -> RunConfig:
    for key, value in pairs:
        config.set(key, value)
    return config


def _folder_name(target: str, pairs: list[tuple[str, Any]]) -> str:
    return safe_name(Path(target).stem + "".join(f",{k}={v}" for k, v in pairs))


def cmd_train(args: argparse.Namespace) -> int:
    pairs = _key_values(args.overrides)
    config = _apply(_base_config(args.target), pairs)
    out = Path(args.out) if args.out else Path("runs") / "train" / _folder_name(args.target, pairs)
    main_rank = ranks_from_env().main
    if main_rank:
        print(f"{config.model} on {config.dataset} ({config.preprocessing} preprocessing), protocol "
              f"{describe_protocol(config.learning, config.model)} -> {out}", flush=True)  # fmt: skip
    before = None if args.restart else _progress_of(out)
    if main_rank and before is not None and not before[0].done:
        print(f"resuming {out} after epoch {before[1]} (--restart trains it afresh)", flush=True)
    metrics = run(config, out, progress=not args.quiet, wait=args.wait, restart=args.restart)
    if main_rank:
        if before is not None and before[0].done:
            print(f"{out} had {before[0]} before: read back, not trained again (--restart trains it afresh)")
        _print_run(out, metrics)
    return 1 if metrics["status"] == Status.DIVERGED else 0


def _progress_of(run_dir: Path) -> tuple[Status, int] | None:
    """The status and finished epochs a run folder holds, or None (no run, or unreadable)."""
    try:
        metrics = read_json(run_dir / "metrics.json")
        return Status(metrics["status"]), int(metrics.get("epochs_done", 0))
    except (ValueError, KeyError, TypeError):
        return None


def _executor(args: argparse.Namespace) -> Executor:
    if args.ray is None:
        for flag in ("cpus_per_run", "gpus_per_run", "early_stop"):
            if getattr(args, flag) not in (None, False):
                raise UsageError(f"--{flag.replace('_', '-')} needs --ray")
        return Sequential(progress=not args.quiet, wait=args.wait, restart=args.restart)
    return RayRunner(
        address=None if args.ray == "local" else args.ray,
        cpus_per_run=1.0 if args.cpus_per_run is None else args.cpus_per_run,
        gpus_per_run=0.0 if args.gpus_per_run is None else args.gpus_per_run,
        early_stop=args.early_stop,
        grace_epochs=args.grace_epochs,
        wait=args.wait,
        restart=args.restart,
    )


def _print_run(out: Path, metrics: dict[str, Any]) -> None:
    status = metrics["status"]
    line = f"{status} after {metrics.get('epochs_done', 0)} epoch(s): {out}"
    if metrics.get("test_accuracy") is not None:
        line += (
            f"\ntest accuracy {100 * metrics['test_accuracy']:.2f}% (best {100 * metrics['best_test_accuracy']:.2f}%)"
        )
    if status == Status.DIVERGED:
        line += f"\ndiverged in epoch {metrics['diverged_epoch']} (loss {metrics['diverged_loss']})"
    print(line)


def _compare_base(args: argparse.Namespace) -> tuple[RunConfig, dict[str, Any] | None]:
    """The shared config of a comparison, and the protocol changes for every network (None:
    ``learning=<name>`` gave all of them that protocol)."""
    dataset = args.dataset or ("mnist" if args.root else "digits")
    first = parse_model(args.models[0])[0]  # its family sets the preprocessing shared by all
    config = RunConfig(model=first, dataset=dataset, root=args.root, download=args.download)
    settings = [("epochs", args.epochs), ("max_batches", args.max_batches), ("fraction", args.fraction),
                ("device", args.device)]  # fmt: skip
    pairs = _key_values(args.overrides)
    shared = [(k, v) for k, v in pairs if not k.startswith("learning")]
    config = _apply(config, [(k, v) for k, v in settings if v is not None] + shared)
    learning = {k.removeprefix("learning."): v for k, v in pairs if k.startswith("learning.")}
    for key, value in (("batch_size", args.batch_size), ("lr", args.lr)):
        if value is not None:
            learning[key] = value
    named = [v for k, v in pairs if k == "learning"]
    if named:  # one protocol for all, with the changes on top
        config = _apply(config, [("learning", named[-1]), *((f"learning.{k}", v) for k, v in learning.items())])
        return config, None
    return config, learning


def cmd_compare(args: argparse.Namespace) -> int:
    base, learning = _compare_base(args)
    out = Path(args.out)
    print(f"comparing {', '.join(args.models)} on {base.dataset}, {base.epochs} epochs, seeds {args.seeds} -> {out}")
    print("protocols: each network's own" + (f", with {learning}" if learning else "") if learning is not None
          else "protocol: the one given (learning=...) for every network")  # fmt: skip
    rows = compare(args.models, base, args.seeds, out, learning=learning, progress=not args.quiet,
                   executor=_executor(args))  # fmt: skip
    print(format_table(rows))
    print(f"written: {out / 'compare.csv'}, {out / 'compare.md'}, {out / 'compare.png'}")
    return _exit_status(any(row["failed"] for row in rows), any("busy" in row["status"] for row in rows))


def _exit_status(failed: bool, busy: bool) -> int:
    """1 when a run failed, else 75 when one was skipped because another process held it."""
    return 1 if failed else 75 if busy else 0


def cmd_grid(args: argparse.Namespace) -> int:
    base = _apply(_base_config(args.target), _key_values(args.overrides))
    axes = []
    for spec in args.param:
        key, sep, values = spec.partition("=")
        if not sep or not values:
            raise UsageError(f"--param expects key=v1,v2,...; got {spec!r}")
        items = values.split(",")
        if not all(item.strip() for item in items):
            raise UsageError(f"--param {spec!r} has an empty value; expected key=v1,v2,...")
        axes.append((key, [parse_value(v) for v in items]))
    out = (
        Path(args.out)
        if args.out
        else Path("runs") / "grid" / _folder_name(args.target, [(k, "grid") for k, _ in axes])
    )
    rows = grid(base, axes, args.seeds, out, progress=not args.quiet, executor=_executor(args))
    bad = [r for r in rows if r["status"] not in (Status.FINISHED, Status.STOPPED_EARLY)]
    stopped = sum(r["status"] == Status.STOPPED_EARLY for r in rows)
    done = len(rows) - len(bad) - stopped
    print(
        f"{done} of {len(rows)} runs finished"
        + (f", {stopped} stopped early" if stopped else "")
        + f"; written: {out / 'grid.csv'}, {out / 'grid.png'}"
    )
    for r in bad:
        print(
            f"  {r['status']}: " + ", ".join(f"{k}={r[k]}" for k, _ in axes) + f" seed {r['seed']} {r['error'] or ''}"
        )
    return _exit_status(bool(failed(rows)), any(r["status"] == Status.BUSY for r in rows))


def cmd_plot(args: argparse.Namespace) -> int:
    for folder in map(Path, args.dirs):
        if not folder.is_dir():
            raise UsageError(f"{str(folder)!r} is not a folder")
        written = []
        if (folder / "grid.json").exists():
            data = _results(folder / "grid.json", dict, "a grid's results", "keys", "rows")
            written.append(plot_grid(data["rows"], data["keys"], folder / "grid.png"))
        if (folder / "compare.csv").exists():
            histories: dict[str, list] = {}
            for path in sorted(folder.glob("*/seed*/history.json")):
                histories.setdefault(path.parent.parent.name, []).append(_history(path))
            written.append(plot_curves(histories, folder / "compare.png"))
        if (folder / "history.json").exists():
            history = _history(folder / "history.json")
            written.append(plot_curves({folder.name: [history]}, folder / "curves.png"))
            if any("gradient_norms" in h for h in history):
                written.append(plot_gradient_norms(history, folder / "gradient_norms.png"))
            metrics = _results(folder / "metrics.json", dict, "a run's metrics", "status")
            if "confusion" in metrics:
                written.append(plot_confusion(metrics["confusion"], folder / "confusion.png"))
            written += _model_figures(folder)
        if not written:
            raise UsageError(
                f"{str(folder)!r} holds no run (history.json), comparison (compare.csv) or grid (grid.json)"
            )
        print("\n".join(map(str, written)))
    return 0


def _results(path: Path, kind: type, what: str, *keys: str) -> Any:
    """A results file of ``kind`` (a list or a dict) holding ``keys``, or a one-line error."""
    data = read_json(path)
    entries = data if isinstance(data, list) else [data]
    if not isinstance(data, kind) or not all(isinstance(e, dict) and set(keys) <= set(e) for e in entries):
        raise UsageError(f"{str(path)!r} is not {what} (expected {', '.join(keys)}); fix or delete it")
    return data


def _history(path: Path) -> list[dict[str, Any]]:
    return _results(path, list, "a run's history", "epoch", "train_loss", "test_accuracy")


def _model_figures(folder: Path) -> list[Path]:
    """Report figures 5.2-5.3 for a finished HamiltonianNet run (one test image through the units),
    the H-DNN papers' figures for a 2-D run: the network rebuilt by the run's recipe (its
    ``model_options`` included) with its checkpoint's weights."""
    recipe = Recipe(RunConfig.from_dict(read_json(folder / "config.json")))
    model = recipe.trained(folder)
    if model is None:
        return []
    dataset = recipe.config.dataset
    if dataset in POINT_SETS:
        x, labels = tensors_of(recipe.data()[1]) or (None, None)
        assert x is not None and labels is not None and dataset is not None
        return [plot_points_2d(model, x, labels, POINT_DOMAINS[dataset], folder / "points_2d.png")]
    if not isinstance(model, HamiltonianNet):
        return []
    test = recipe.data()[1]
    return [plot_feature_maps(model, test[0][0], folder / "feature_maps.png")]


def cmd_list(args: argparse.Namespace) -> int:
    for name in available():
        print(describe(name))
    print("datasets: " + ", ".join(DATASETS))
    print("point sets (hdnn_2d): " + ", ".join(POINT_SETS))
    print("protocols (learning=<name>): " + ", ".join(PROTOCOLS))
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="contham", description="Train and compare Hamiltonian, ODE and residual networks.")
    sub = p.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="train one network: a name from 'contham list' or a YAML/JSON run config")
    train.add_argument("target", help="network name or run config file")
    train.add_argument(
        "overrides", nargs="*", help="key=value: run fields, learning=<protocol>, learning.<field>, network options"
    )
    train.add_argument("--out", help="results folder (default runs/train/<target,overrides>)")
    train.set_defaults(run=cmd_train)

    comp = sub.add_parser("compare", help="train several networks on the same data and budget over seeds")
    comp.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS), help="specs name[:key=value,...]")
    comp.add_argument("--dataset", choices=[*DATASETS, *POINT_SETS], help="default: mnist with --root, else digits")
    comp.add_argument("--root", help="torchvision data folder (writable)")
    comp.add_argument("--download", action="store_true", help="let torchvision download missing data")
    comp.add_argument("--epochs", type=int, default=5)
    comp.add_argument("--seeds", nargs="+", default=["0", "1"], help="integers (default 0 1)")
    comp.add_argument("--max-batches", type=int, help="batches per epoch (short runs)")
    comp.add_argument("--fraction", type=float, help="class-balanced fraction of the training set")
    comp.add_argument("--batch-size", type=int, help="for every network (default: each network's own protocol)")
    comp.add_argument("--lr", type=float, help="for every network (default: each network's own protocol)")
    comp.add_argument("--device", help="auto, cpu, cuda[:i]")
    comp.add_argument("--out", default="runs/compare")
    comp.add_argument("overrides", nargs="*", help="key=value for every run (e.g. learning.wd=1e-4)")
    comp.set_defaults(run=cmd_compare)

    gr = sub.add_parser("grid", help="1-D or 2-D grid over any run field, resumable")
    gr.add_argument("target", help="network name or run config file")
    gr.add_argument("--param", action="append", required=True, help="key=v1,v2,... (once or twice)")
    gr.add_argument("--seeds", nargs="+", default=["0"], help="integers (default 0)")
    gr.add_argument("--out", help="results folder (default runs/grid/<target,keys>)")
    gr.add_argument("overrides", nargs="*", help="key=value for every point")
    gr.set_defaults(run=cmd_grid)

    pl = sub.add_parser("plot", help="plot run, compare or grid folders")
    pl.add_argument("dirs", nargs="+")
    pl.set_defaults(run=cmd_plot)

    ls = sub.add_parser("list", help="networks and datasets")
    ls.set_defaults(run=cmd_list)
    for command in (train, comp, gr):
        command.add_argument("--quiet", action="store_true", help="no progress bars")
        command.add_argument("--wait", action="store_true", help="wait for a run folder another process is training")
        command.add_argument(
            "--restart", action="store_true", help="discard what the run folder(s) hold and start afresh"
        )
    for command in (comp, gr):
        command.add_argument(
            "--ray",
            nargs="?",
            const="local",
            metavar="ADDRESS",
            help="run every (model or point, seed) on Ray: a local instance, or the cluster at ADDRESS",
        )
        command.add_argument("--cpus-per-run", type=float, help="CPUs each Ray run reserves (default 1)")
        command.add_argument("--gpus-per-run", type=float, help="GPUs each Ray run reserves (default 0)")
        command.add_argument(
            "--early-stop", action="store_true", help="with --ray: stop clearly worse runs early (Ray Tune ASHA)"
        )
        command.add_argument("--grace-epochs", type=int, default=1, help="with --early-stop: epochs before a stop")
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``contham`` command; returns the exit status."""
    p = parser()
    args, extra = p.parse_known_args(argv)
    if extra and (not hasattr(args, "overrides") or any(e.startswith("-") for e in extra)):
        p.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        if hasattr(args, "overrides"):  # key=value items may come before or after the options
            if hasattr(args, "models"):  # "--models a b key=value": items with "=" before any ":" are overrides
                moved = [m for m in args.models if "=" in m.split(":")[0]]
                args.models = [m for m in args.models if m not in moved]
                extra = moved + extra
            if hasattr(args, "seeds"):  # "--seeds 0 1 key=value": the items with "=" are overrides
                extra = [s for s in args.seeds if "=" in s] + extra
                args.seeds = _seeds([s for s in args.seeds if "=" not in s])
            args.overrides = [*args.overrides, *extra]
        return args.run(args)
    except RunBusy as error:
        print(f"contham {args.command}: skipped: {error}", file=sys.stderr)
        return 75
    except (UsageError, ValueError) as error:
        print(f"contham {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted; the last finished epoch is saved, run the same command to resume", file=sys.stderr)
        return 130
    finally:
        shutdown()


if __name__ == "__main__":
    sys.exit(main())
