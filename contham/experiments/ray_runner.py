"""Many runs at once with Ray: every (grid point or model, seed) of `compare`
and `grid` becomes a Ray task, or with early stopping a Ray Tune trial.

Without an address `RayRunner` starts a Ray instance on this machine and stops it at the
end; with one (``ray start --head`` on one node prints it, ``ray start --address=...`` joins the
others) it sends the runs to that cluster. Each run reserves ``cpus_per_run`` CPUs (and sets
torch's thread count to match) and ``gpus_per_run`` GPUs. The runs write the same folders as
sequential ones, so every node must see ``out_dir`` (a shared filesystem) and have contham
installed. Finished runs are read back, not retrained; interrupted ones resume from their
checkpoint; a failing run is recorded as ``failed`` and the others go on. On Ctrl-C the runs in
flight are cancelled; every finished run and every finished epoch stays on disk.

With ``early_stop=True`` the runs are Ray Tune trials under an ASHA scheduler on test accuracy:
a trial that ranks in the bottom part of its rung (epochs ``grace_epochs``, ``grace_epochs *
reduction_factor``, ...) is stopped, and its run folder is recorded with status
``stopped_early`` and the epoch it stopped at (``stopped_epoch``). Such a run is not resumed by a
later call (use ``restart`` to train it again).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import socket
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from .._checks import check_int, check_nonnegative
from .drivers import Job, OnResult, run_job
from .files import RunLock, read_json, write_json
from .loop import summarize
from .runconfig import RunConfig
from .status import Status


def reachable(address: str, timeout_s: float = 10.0) -> None:
    """Raise ``ValueError`` naming ``address`` unless a ``host:port`` (or ``ray://host:port``)
    address accepts a connection within ``timeout_s`` (Ray itself would retry for minutes).
    ``"auto"`` (the cluster this machine belongs to) is left to Ray."""
    if address == "auto":
        return
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"--ray address must be 'auto' or host:port; got {address!r}")
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except OSError as error:
        raise ValueError(f"cannot reach the Ray cluster at address={address!r}: {error.strerror or error}") from None


def _run_remote(
    config: dict[str, Any],
    label: str,
    run_dir: str,
    threads: float,
    wait: bool,
    restart: bool,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """One run in a Ray task or Tune trial, torch limited to the CPUs Ray reserved for it."""
    torch.set_num_threads(max(1, int(threads)))
    return run_job(Job(label, RunConfig.from_dict(config), Path(run_dir)), wait=wait, restart=restart,
                   on_epoch=on_epoch)  # fmt: skip


@dataclasses.dataclass
class RayRunner:
    """An executor for `compare` and `grid`
    that runs every job on Ray.

    Args:
        address: a Ray cluster's address (``"auto"`` or ``host:port``); None starts a local Ray
            instance for the experiment. An already initialised Ray (``ray.init`` in the caller's
            script) is used as it is.
        cpus_per_run: CPUs each run reserves.
        gpus_per_run: GPUs each run reserves (fractions allowed).
        early_stop: ASHA early stopping on test accuracy (Ray Tune); grace_epochs: epochs every
            run gets before it can be stopped; reduction_factor: ASHA's rung ratio.
        wait: as in `fit`, for every run.
        restart: as in `fit`, for every run.
    """

    address: str | None = None
    cpus_per_run: float = 1.0
    gpus_per_run: float = 0.0
    early_stop: bool = False
    grace_epochs: int = 1
    reduction_factor: int = 2
    wait: bool = False
    restart: bool = False

    def __post_init__(self) -> None:
        cpus = check_nonnegative("cpus_per_run", self.cpus_per_run)
        if cpus + check_nonnegative("gpus_per_run", self.gpus_per_run) == 0:
            raise ValueError("cpus_per_run and gpus_per_run cannot both be 0")
        check_int("grace_epochs", self.grace_epochs, 1)
        check_int("reduction_factor", self.reduction_factor, 2)

    def execute(self, jobs: Sequence[Job], on_result: OnResult) -> list[dict[str, Any]]:
        try:
            import ray
        except ImportError:
            raise ValueError("running on Ray needs the ray package: pip install 'contham[ray]'") from None
        if self.address is not None:
            reachable(self.address)
        started = not ray.is_initialized()
        if started:
            if self.address is None:
                ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
            else:
                try:
                    ray.init(address=self.address, log_to_driver=False)
                except ConnectionError as error:
                    raise ValueError(f"cannot reach the Ray cluster at address={self.address!r}: {error}") from None
        try:
            return (
                self._tune(jobs, on_result)
                if self.early_stop
                else self._tasks(ray, jobs, on_result, own_instance=started)
            )
        finally:
            if started:
                ray.shutdown()

    def _tasks(self, ray: Any, jobs: Sequence[Job], on_result: OnResult, own_instance: bool) -> list[dict[str, Any]]:
        remote = ray.remote(_run_remote).options(num_cpus=self.cpus_per_run, num_gpus=self.gpus_per_run, max_retries=0)
        refs = {
            remote.remote(
                job.config.to_dict(), job.label, str(job.run_dir.resolve()), self.cpus_per_run, self.wait, self.restart
            ): i
            for i, job in enumerate(jobs)
        }
        results: list[dict[str, Any]] = [{} for _ in jobs]
        pending = list(refs)
        try:
            while pending:
                done, pending = ray.wait(pending, num_returns=1)
                i = refs[done[0]]
                try:
                    results[i] = ray.get(done[0])
                except ValueError:  # bad input that fails every run, as in a sequential run
                    raise
                except ray.exceptions.RayError as error:  # a worker died (out of memory, node lost)
                    results[i] = {"status": Status.FAILED, "error": f"{type(error).__name__}: {error}"}
                on_result(jobs[i], results[i])
        except BaseException:
            # A Ray instance of our own is stopped by ray.shutdown(). Cancelling its tasks first
            # races with the replies of runs that Ctrl-C already stopped, and Ray 2.x then aborts
            # the driver ("Tried to complete task that was not pending"). Tasks on a caller's Ray
            # are cancelled; a plain cancel interrupts each run, which then checkpoints.
            if not own_instance:
                for ref in pending:
                    ray.cancel(ref)
            raise
        return results

    def _tune(self, jobs: Sequence[Job], on_result: OnResult) -> list[dict[str, Any]]:
        from ray import tune
        from ray.tune.schedulers import ASHAScheduler

        payload = [(job.config.to_dict(), job.label, str(job.run_dir.resolve())) for job in jobs]
        threads, wait, restart = self.cpus_per_run, self.wait, self.restart

        def trial(params: dict[str, Any]) -> None:
            reported = []

            def report(entry: dict[str, Any]) -> None:
                reported.append(entry["epoch"])
                tune.report(
                    {"test_accuracy": entry["test_accuracy"], "epoch": entry["epoch"], "status": Status.RUNNING.value}
                )

            result = _run_remote(*payload[params["job"]], threads, wait, restart, report)  # type: ignore[call-arg]
            if not reported or result.get("status") != Status.FINISHED:
                tune.report({"test_accuracy": result.get("test_accuracy") or 0.0,
                             "epoch": result.get("epochs_done") or 0, "status": str(result.get("status"))})  # fmt: skip

        # beyond the last epoch, so that a trial ends by itself and writes its final metrics
        max_epochs = max(job.config.epochs or 10_000 for job in jobs) + 1
        scheduler = ASHAScheduler(
            time_attr="epoch",
            metric="test_accuracy",
            mode="max",
            max_t=max_epochs,
            grace_period=min(self.grace_epochs, max_epochs - 1),
            reduction_factor=self.reduction_factor,
        )
        storage = tempfile.mkdtemp(prefix="contham-tune-")  # Tune's own records; the run folders are ours
        tuner = tune.Tuner(
            tune.with_resources(trial, {"cpu": self.cpus_per_run, "gpu": self.gpus_per_run}),
            param_space={"job": tune.grid_search(list(range(len(jobs))))},
            tune_config=tune.TuneConfig(scheduler=scheduler, max_concurrent_trials=None),
            run_config=tune.RunConfig(storage_path=storage, name="asha", verbose=0),
        )
        try:
            with _quiet_tune():
                grid = tuner.fit()
        finally:
            shutil.rmtree(storage, ignore_errors=True)
        results: list[dict[str, Any]] = [{} for _ in jobs]
        for outcome in grid:  # type: ignore[attr-defined]
            i = outcome.config["job"]
            results[i] = _settle(jobs[i], outcome.error)
            on_result(jobs[i], results[i])
        return results


@contextlib.contextmanager
def _quiet_tune() -> Iterator[None]:
    """Ray Tune's own console output off (``verbose=0`` leaves its "View detailed results here"
    line, which names the temporary records folder deleted right after)."""
    before = os.environ.get("RAY_AIR_NEW_OUTPUT")
    os.environ["RAY_AIR_NEW_OUTPUT"] = "0"
    try:
        yield
    finally:
        if before is None:
            del os.environ["RAY_AIR_NEW_OUTPUT"]
        else:
            os.environ["RAY_AIR_NEW_OUTPUT"] = before


def _settle(job: Job, error: Exception | None) -> dict[str, Any]:
    """The result of a Tune trial, from its run folder. A run that Tune ended before its last
    epoch is recorded as ``stopped_early`` with the epoch it stopped at; one that Tune ended
    after its last epoch, before it wrote its final metrics, is finished here (from its
    checkpoint, without training)."""
    metrics_path = job.run_dir / "metrics.json"
    if error is not None and not metrics_path.exists():
        return {"status": Status.FAILED, "error": f"{type(error).__name__}: {error}"}
    with RunLock(job.run_dir, wait=True):  # the stopped trial's process may still be exiting
        metrics = read_json(metrics_path)
        if metrics.get("status") not in (Status.RUNNING, Status.INTERRUPTED):
            return metrics
        history_path = job.run_dir / "history.json"
        history = read_json(history_path) if history_path.exists() else []
        if len(history) < metrics.get("epochs", len(history) + 1):
            metrics = {**metrics, **summarize(history), "status": Status.STOPPED_EARLY, "stopped_epoch": len(history)}
            metrics["epochs_done"] = len(history)
            write_json(metrics_path, metrics)
            return metrics
    return run_job(job)
