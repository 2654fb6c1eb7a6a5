"""Run folders that survive bad files and concurrency: one clear line and exit 2 (CLI) or a
ValueError (API) for a malformed config, a corrupt checkpoint, an unreadable metrics file or a
folder that cannot be written; --restart; an advisory lock between two processes."""

import json
import subprocess
import sys
import time

import pytest

from contham.experiments import RunBusy, RunConfig, RunFolderError, RunLock, run
from contham.experiments.cli import main

FAST = ["dataset=digits", "epochs=1", "max_batches=2", "test_fraction=0.1", "learning.batch_size=16", "--quiet"]


def one_line_error(capsys, *needles):
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("\n") == 1, err
    for needle in needles:
        assert needle in err, err


@pytest.fixture
def finished_run(tmp_path):
    out = tmp_path / "run"
    assert main(["train", "thesis_resnet2", *FAST, "--out", str(out)]) == 0
    return out


@pytest.mark.parametrize(
    "name, text, needle",
    [
        ("bad.yaml", "model: [thesis_resnet2\nepochs: 1\n", "cannot read RunConfig file"),
        ("bad.json", '{"model": "thesis_resnet2",', "cannot read RunConfig file"),
        ("list.yaml", "- 1\n- 2\n", "must hold a mapping of keys; got list"),
        ("key.yaml", "modle: thesis_resnet2\n", "unknown RunConfig parameter 'modle'"),
    ],
)
def test_malformed_config_files(name, text, needle, tmp_path, capsys):
    path = tmp_path / name
    path.write_text(text)
    assert main(["train", str(path), "--out", str(tmp_path / "r")]) == 2
    one_line_error(capsys, needle, str(path))
    with pytest.raises(ValueError, match=needle):
        RunConfig.load(path)


@pytest.mark.parametrize(
    "name, content, needle",
    [
        ("checkpoint.pt", b"PK\x03\x04 truncated zip", "cannot read checkpoint"),
        ("checkpoint.pt", b"", "cannot read checkpoint"),
        ("metrics.json", b'{"status": "runn', "cannot read"),
        ("metrics.json", b"[1, 2]", "is not a contham metrics file"),
    ],
)
def test_broken_run_files_give_one_line_and_restart_discards_them(name, content, needle, finished_run, capsys):
    if name == "checkpoint.pt":
        (finished_run / "metrics.json").write_text('{"status": "interrupted", "epochs_done": 0}')
    (finished_run / name).write_bytes(content)
    args = ["train", "thesis_resnet2", *FAST, "--out", str(finished_run)]
    assert main(args) == 2
    one_line_error(capsys, needle, str(finished_run / name), "--restart")
    config = RunConfig(model="thesis_resnet2", dataset="digits", epochs=1, max_batches=2, test_fraction=0.1)
    config.set("learning.batch_size", 16)
    with pytest.raises(RunFolderError, match=needle):
        run(config, finished_run, progress=False)
    assert main([*args, "--restart"]) == 0
    assert json.loads((finished_run / "metrics.json").read_text())["status"] == "finished"


def test_plot_of_a_corrupt_history_is_one_line(finished_run, capsys):
    (finished_run / "history.json").write_text("{")
    assert main(["plot", str(finished_run)]) == 2
    one_line_error(capsys, "cannot read", "history.json")


def test_results_folder_that_cannot_be_written(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    assert main(["train", "thesis_resnet2", *FAST, "--out", str(blocker / "run")]) == 2
    one_line_error(capsys, "cannot write results folder", str(blocker / "run"))
    assert main(["grid", "thesis_resnet2", "--param", "learning.lr=0.1", *FAST, "--out", str(blocker / "g")]) == 2
    one_line_error(capsys, "cannot write results folder")


def test_a_second_process_skips_or_waits_for_a_locked_run(tmp_path, capsys):
    out = tmp_path / "run"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from contham.experiments import RunLock\n"
         f"with RunLock({str(out)!r}):\n    print('locked', flush=True); time.sleep(4)"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert holder.stdout.readline().strip() == "locked"
    assert main(["train", "thesis_resnet2", *FAST, "--out", str(out)]) == 75
    err = capsys.readouterr().err
    assert err.count("skipped") == 1 and f"pid {holder.pid}" in err and "--wait" in err and err.count("\n") == 1
    assert not (out / "metrics.json").exists()  # nothing written into the other process's folder
    rows = []
    main(["grid", "thesis_resnet2", "--param", "learning.lr=0.1", *FAST, "--out", str(tmp_path / "g")])
    with RunLock(tmp_path / "g" / "learning.lr=0.1" / "seed0"):
        assert main(["grid", "thesis_resnet2", "--param", "learning.lr=0.1,0.2", *FAST, "--restart",
                     "--out", str(tmp_path / "g")]) == 75  # a point was busy  # fmt: skip
    rows = (tmp_path / "g" / "grid.csv").read_text().splitlines()
    assert rows[1].startswith("0.1,0,busy") and rows[2].startswith("0.2,0,finished")
    capsys.readouterr()
    start = time.monotonic()
    assert main(["train", "thesis_resnet2", *FAST, "--out", str(out), "--wait"]) == 0  # waits, then trains
    assert time.monotonic() - start > 1 and holder.wait(timeout=30) == 0
    assert json.loads((out / "metrics.json").read_text())["status"] == "finished"


def test_lock_api(tmp_path):
    with RunLock(tmp_path):
        with pytest.raises(RunBusy, match="is being trained by pid"):
            RunLock(tmp_path).__enter__()
    with RunLock(tmp_path):  # released on exit
        pass


def _drop_new_fields(run_dir, fields, learning_fields):
    """Make ``run_dir`` look written by an earlier contham, which had no such fields."""
    import torch

    config = json.loads((run_dir / "config.json").read_text())
    for name in fields:
        del config[name]
    for name in learning_fields:
        del config["learning"][name]
    (run_dir / "config.json").write_text(json.dumps(config))
    if (run_dir / "checkpoint.pt").exists():
        state = torch.load(run_dir / "checkpoint.pt", weights_only=False)
        state["config"] = config
        torch.save(state, run_dir / "checkpoint.pt")


def test_a_run_folder_of_an_earlier_contham_resumes_when_new_fields_hold_their_defaults(
    tmp_path, monkeypatch, ctrl_c_in_epoch
):
    config = RunConfig(model="hdnn_2d", data_size=200, epochs=2, seed=1, device="cpu")
    finished = run(config, tmp_path / "done", progress=False)
    _drop_new_fields(tmp_path / "done", ["compile", "deterministic"], ["adam_step_epoch"])
    assert run(config, tmp_path / "done", progress=False) == finished  # read back, not "a different run"

    straight = run(config, tmp_path / "straight", progress=False)
    ctrl_c_in_epoch(2)
    with pytest.raises(KeyboardInterrupt):
        run(config, tmp_path / "old", progress=False)
    monkeypatch.undo()
    _drop_new_fields(tmp_path / "old", ["amp"], ["adam_step_epoch"])
    resumed = run(config, tmp_path / "old", progress=False)  # resumed from epoch 1
    assert resumed["test_loss"] == straight["test_loss"] and resumed["epochs_done"] == 2
    assert json.loads((tmp_path / "old" / "config.json").read_text()) == config.to_dict()

    other = RunConfig(model="hdnn_2d", data_size=200, epochs=2, seed=1, device="cpu", amp="bf16")
    with pytest.raises(RunFolderError, match="holds a different run"):  # a missing field that is not at its default
        run(other, tmp_path / "done", progress=False)


def test_an_interrupted_grid_writes_the_table_of_what_ran(tmp_path, ctrl_c_in_epoch):
    ctrl_c_in_epoch(2)  # in the second run (one epoch each)
    points = ["--param", "learning.lr=0.01,0.02,0.05", "data_size=200"]
    args = ["grid", "hdnn_2d", *points, *FAST[1:], "--out", str(tmp_path)]  # FAST but its dataset
    assert main(args) == 130
    rows = (tmp_path / "grid.csv").read_text().splitlines()
    assert len(rows) == 2 and rows[1].startswith("0.01,0,finished")
    assert json.loads((tmp_path / "grid.json").read_text())["rows"][0]["status"] == "finished"


def test_a_failing_write_leaves_no_temporary_file_and_one_clear_error(tmp_path, monkeypatch):
    from contham.experiments.files import save_checkpoint

    def full_disk(*args, **kwargs):
        raise RuntimeError("[enforce fail at inline_container.cc:659] . PytorchStreamWriter failed writing file")

    monkeypatch.setattr("torch.save", full_disk)
    with pytest.raises(RunFolderError, match="cannot write .*checkpoint.pt.: .* PytorchStreamWriter failed"):
        save_checkpoint(tmp_path / "checkpoint.pt", {"model": {}})
    assert list(tmp_path.iterdir()) == []  # no stale .checkpoint.pt.<pid>.tmp


def test_a_lock_that_cannot_be_taken_is_one_clear_error(tmp_path, capsys):
    out = tmp_path / "run"
    (out / ".lock").mkdir(parents=True)  # as a full disk or a read-only folder would refuse it
    with pytest.raises(RunFolderError, match="cannot lock"):
        RunLock(out).__enter__()
    assert main(["train", "thesis_resnet2", *FAST, "--out", str(out)]) == 2
    one_line_error(capsys, "cannot lock")


def test_a_run_that_cannot_start_leaves_no_folder(tmp_path):
    config = RunConfig(model="thesis_resnet2", dataset="mnist", root=str(tmp_path / "no-data"))
    with pytest.raises(ValueError, match="not found under root"):
        run(config, tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


def test_a_disk_that_fills_during_a_run_leaves_it_resumable(tmp_path, monkeypatch, capsys):
    import torch

    args = ["train", "thesis_resnet2", *FAST, "epochs=3"]
    assert main([*args, "--out", str(tmp_path / "straight")]) == 0
    real_save, saves = torch.save, []

    def full_from_the_second(obj, path, *a, **k):
        saves.append(path)
        if len(saves) >= 2:  # the checkpoint of epoch 2
            raise RuntimeError("[enforce fail at inline_container.cc:603] . unexpected pos 1536 vs 1472")
        return real_save(obj, path, *a, **k)

    monkeypatch.setattr(torch, "save", full_from_the_second)
    out = tmp_path / "run"
    assert main([*args, "--out", str(out)]) == 2
    one_line_error(capsys, "cannot write", "checkpoint.pt")
    assert not list(out.glob(".*.tmp"))  # no stale temporary
    monkeypatch.undo()
    assert main([*args, "--out", str(out)]) == 0  # resumes after epoch 1
    assert f"resuming {out} after epoch 1" in capsys.readouterr().out
    straight = json.loads((tmp_path / "straight" / "history.json").read_text())
    resumed = json.loads((out / "history.json").read_text())
    assert [h["test_loss"] for h in resumed] == [h["test_loss"] for h in straight]
