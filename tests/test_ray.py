"""Ray: a grid on a local 2-CPU Ray instance equals the sequential grid, isolates failures,
resumes, survives Ctrl-C, and stops clearly worse points early with ASHA."""

import csv
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import ray
import torch

from contham.experiments import RayRunner, RunConfig, Sequential, compare, grid
from contham.experiments.cli import main

AXES = [("learning.lr", [0.01, 0.05])]


def base():
    config = RunConfig(
        model="thesis_resnet2", dataset="digits", epochs=2, max_batches=3, test_fraction=0.2, device="cpu"
    )
    config.set("learning.batch_size", 16)
    return config


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture
def one_thread():
    """The sequential runs use one thread, as each Ray run does (same float reductions)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def files(folder):
    """The files under ``folder`` but figures; TensorBoard's event files by folder (their names
    hold the time and the process)."""

    def name(p):
        events = p.name.startswith("events.out.tfevents.")
        return str(p.parent.relative_to(folder) / "events") if events else str(p.relative_to(folder))

    return sorted(name(p) for p in folder.rglob("*") if p.is_file() and p.suffix != ".png")


def test_ray_grid_equals_the_sequential_grid(local_ray, one_thread, tmp_path):
    sequential = grid(base(), AXES, [0, 1], tmp_path / "seq", progress=False, executor=Sequential(progress=False))
    parallel = grid(base(), AXES, [0, 1], tmp_path / "ray", progress=False, executor=RayRunner(cpus_per_run=1))
    assert parallel == sequential and all(r["status"] == "finished" for r in parallel)
    assert files(tmp_path / "ray") == files(tmp_path / "seq")
    for run in (tmp_path / "seq").glob("*/seed*"):
        twin = tmp_path / "ray" / run.relative_to(tmp_path / "seq")
        strip = lambda h: [{k: v for k, v in e.items() if k not in ("seconds", "peak_memory_mb")} for e in h]  # noqa: E731
        assert strip(json.loads((run / "history.json").read_text())) == strip(
            json.loads((twin / "history.json").read_text())
        )


def test_ray_compare_writes_the_sequential_table(local_ray, tmp_path):
    rows = compare(["thesis_resnet2", "thesis_hamiltonian"], base(), [0], tmp_path, progress=False,
                   executor=RayRunner())  # fmt: skip
    assert [r["model"] for r in rows] == ["thesis_resnet2", "thesis_hamiltonian"]
    assert all(r["runs"] == 1 and r["status"] == "1 finished" for r in rows)
    assert (tmp_path / "compare.md").exists() and (tmp_path / "compare.png").exists()


def test_ray_isolates_a_failing_run_and_resumes(local_ray, tmp_path):
    broken = tmp_path / "learning.lr=0.05" / "seed0"
    broken.mkdir(parents=True)
    (broken / "checkpoint.pt").write_bytes(b"truncated")
    rows = grid(base(), AXES, [0], tmp_path, progress=False, executor=RayRunner())
    assert [r["status"] for r in rows] == ["finished", "failed"]
    assert "cannot read checkpoint" in rows[1]["error"] and str(broken / "checkpoint.pt") in rows[1]["error"]
    assert json.loads((broken / "metrics.json").read_text())["status"] == "failed"
    finished = tmp_path / "learning.lr=0.01" / "seed0" / "history.json"
    stamp = finished.stat().st_mtime_ns
    rows = grid(base(), AXES, [0], tmp_path, progress=False, executor=RayRunner())
    assert [r["status"] for r in rows] == ["finished", "failed"] and finished.stat().st_mtime_ns == stamp
    rows = grid(base(), [("learning.lr", [0.05])], [0], tmp_path, progress=False, executor=RayRunner(restart=True))
    assert rows[0]["status"] == "finished"  # --restart discards the broken folder on purpose


def test_ray_early_stopping_records_the_stopped_runs(local_ray, tmp_path, capfd):
    config = RunConfig(model="thesis_resnet2", dataset="digits", epochs=3, test_fraction=0.3, device="cpu")
    axes = [("learning.lr", [0.05, 1e-6])]  # the good points start first and set the bar
    rows = grid(config, axes, [0, 1], tmp_path, progress=False, executor=RayRunner(early_stop=True))
    assert "View detailed results" not in capfd.readouterr().out  # no link to Tune's deleted records
    bad = [r for r in rows if r["learning.lr"] == 1e-6]
    assert all(r["status"] == "stopped_early" and r["epochs_done"] == 1 for r in bad)
    assert any(r["status"] == "finished" and r["epochs_done"] == 3 for r in rows if r["learning.lr"] == 0.05)
    metrics = json.loads((tmp_path / "learning.lr=1e-06" / "seed0" / "metrics.json").read_text())
    assert metrics["status"] == "stopped_early" and metrics["stopped_epoch"] == 1 and metrics["test_accuracy"] < 0.3
    stamps = {p: p.stat().st_mtime_ns for p in tmp_path.glob("*/seed*/history.json")}
    again = grid(config, axes, [0, 1], tmp_path, progress=False, executor=RayRunner(early_stop=True))
    assert [r["status"] for r in again] == [r["status"] for r in rows]  # nothing retrained
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps


def test_ctrl_c_on_a_ray_grid_keeps_finished_runs(tmp_path):
    args = ["grid", "thesis_resnet2", "--param", "learning.lr=0.01,0.02,0.03,0.04,0.05,0.06", "dataset=digits",
            "epochs=2", "max_batches=30", "learning.batch_size=16", "test_fraction=0.2", "device=cpu", "--quiet",
            "--ray", "--out", str(tmp_path)]  # fmt: skip
    command = [sys.executable, "-m", "contham", *args]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 240

    def finished():
        done = []
        for path in tmp_path.glob("*/seed0/metrics.json"):
            try:
                done += [path.parent] if json.loads(path.read_text())["status"] == "finished" else []
            except (ValueError, KeyError):
                pass
        return done

    while not finished() and time.monotonic() < deadline:
        time.sleep(0.1)
    os.killpg(process.pid, signal.SIGINT)
    output = process.communicate(timeout=120)[0].decode()
    assert process.returncode == 130, output[-2000:]
    done = finished()
    assert 1 <= len(done) < 6
    stamps = {d: (d / "checkpoint.pt").stat().st_mtime_ns for d in done}
    assert main([*args]) == 0  # resumes: the rest is trained, the finished runs are read back
    rows = list(csv.DictReader(open(tmp_path / "grid.csv")))
    assert [r["status"] for r in rows] == ["finished"] * 6
    assert {d: (d / "checkpoint.pt").stat().st_mtime_ns for d in done} == stamps


def test_an_unreachable_ray_address_is_one_clear_line(tmp_path, capsys):
    import socket

    from contham.experiments.cli import main

    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    args = ["grid", "thesis_resnet2", "--param", "learning.lr=0.1", "epochs=1", "--quiet", "--out", str(tmp_path)]
    assert main([*args, "--ray", f"127.0.0.1:{port}"]) == 2
    err = capsys.readouterr().err
    assert f"cannot reach the Ray cluster at address='127.0.0.1:{port}'" in err and err.count("\n") == 1
    assert main([*args, "--ray", "nowhere"]) == 2
    assert "--ray address must be 'auto' or host:port; got 'nowhere'" in capsys.readouterr().err
