"""The contham command end to end on tiny settings, and its exit status 2 on bad input."""

import csv
import json

import pytest
import torch

import contham.experiments.drivers as experiments
from contham.experiments.cli import main

FAST = ["dataset=digits", "epochs=1", "max_batches=2", "test_fraction=0.1", "learning.batch_size=16", "--quiet"]


def test_list(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "thesis_odenet [thesis]" in out and "nominal [report]" in out and "datasets: mnist" in out
    assert "point sets (hdnn_2d): swiss_roll, double_circles, double_moons" in out
    assert "protocols (learning=<name>): thesis, hdnn_2d, hdnn_2d_end_to_end, hdnn_2d_code, hdnn_mnist" in out


def test_train_then_plot(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["train", "nominal", "h=0.1", "n_blocks=2", "gradient_norms=true", *FAST, "--out", str(out)]
    assert main(args) == 0
    out_text = capsys.readouterr().out
    assert "finished after 1 epoch(s)" in out_text
    started = "nominal on digits (report preprocessing), protocol nominal preset, batch_size=16: SGD lr 0.1, x0.1"
    assert started in out_text
    config = json.loads((out / "config.json").read_text())
    assert config["model_options"] == {"h": 0.1, "n_blocks": 2} and config["preprocessing"] == "report"
    assert main(["plot", str(out)]) == 0
    assert {p.name for p in out.glob("*.png")} == {
        "curves.png",
        "confusion.png",
        "feature_maps.png",
        "gradient_norms.png",
    }
    norms = json.loads((out / "history.json").read_text())[0]["gradient_norms"]
    assert {"state/units.0.block", "state/units.2.block", "param/units.0.block.field.K1"} <= set(norms)


def test_every_run_writes_tensorboard_event_files(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "run"
    assert main(["train", "thesis_odenet", *FAST, "epochs=2", "gradient_norms=true", "--out", str(out)]) == 0
    events = EventAccumulator(str(out)).Reload()
    tags = set(events.Tags()["scalars"])
    assert {"loss/train", "loss/test", "accuracy/test", "lr", "nfe/forward", "nfe/backward"} <= tags
    assert any(tag.startswith("gradient_norm/param/") for tag in tags)
    history = json.loads((out / "history.json").read_text())
    test_accuracy = [(e.step, e.value) for e in events.Scalars("accuracy/test")]
    assert test_accuracy == [(h["epoch"], pytest.approx(h["test_accuracy"])) for h in history]
    assert [e.step for e in events.Scalars("nfe/forward")] == [1, 2]
    assert main(["train", "thesis_odenet", *FAST, "--restart", "--out", str(out)]) == 0
    assert len(list(out.glob("events.out.tfevents.*"))) == 1  # --restart discards the old events too


def test_seeds_and_key_value_items_mix(tmp_path):
    out = tmp_path / "g"
    assert (
        main(["grid", "thesis_resnet2", "--param", "learning.lr=0.1", "--seeds", "0", "1", *FAST, "--out", str(out)])
        == 0
    )
    assert sorted(p.name for p in (out / "learning.lr=0.1").iterdir()) == ["seed0", "seed1"]


def test_grid_and_compare_check_every_point_before_training_any(tmp_path, capsys):
    assert main(["grid", "nominal", "--param", "n_blocks=2,0", *FAST, "--out", str(tmp_path / "g")]) == 2
    assert "n_blocks must be an integer >= 1; got 0" in capsys.readouterr().err
    assert not (tmp_path / "g").exists()  # nothing trained, no folder made
    specs = ["thesis_resnet2", "hdnn_mnist:nf=0"]
    assert main(["compare", "--models", *specs, *FAST[:3], "--out", str(tmp_path / "c")]) == 2
    assert "nf must be an integer >= 2; got 0" in capsys.readouterr().err and not (tmp_path / "c").exists()


def test_train_from_a_config_file(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text(
        "model: thesis_resnet2\ndataset: digits\nepochs: 1\nmax_batches: 1\nlearning: {batch_size: 8, lr: 0.01}\n"
    )
    assert main(["train", str(config), "--out", str(tmp_path / "r"), "--quiet"]) == 0
    assert json.loads((tmp_path / "r" / "config.json").read_text())["learning"]["lr"] == 0.01


def test_seminorm_adjoint_from_the_command_line(tmp_path):
    out = tmp_path / "run"
    options = ["gradient=adjoint", "seminorm=true", "adjoint_atol=1e-5", "rtol=0.01", "atol=0.01"]
    assert main(["train", "thesis_odenet", *options, *FAST, "--out", str(out)]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["model_options"] == {
        "gradient": "adjoint",
        "seminorm": True,
        "adjoint_atol": 1e-5,
        "rtol": 0.01,
        "atol": 0.01,
    }
    assert json.loads((out / "metrics.json").read_text())["nfe_backward"] > 0
    assert main(["train", "thesis_odenet", "seminorm=true", *FAST, "--out", str(tmp_path / "bad")]) == 2


def test_compare(tmp_path, capsys):
    models = ["thesis_resnet2", "thesis_odenet:gradient=adjoint,rtol=0.01", "thesis_hamiltonian"]
    args = ["compare", "--models", *models, "--epochs", "2", "--max-batches", "2", "--seeds", "0", "1"]
    assert main([*args, "--batch-size", "16", "test_fraction=0.2", "--out", str(tmp_path), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "protocols: each network's own, with {'batch_size': 16}" in out
    assert "| thesis_odenet:gradient=adjoint,rtol=0.01 | thesis, batch_size=16: SGD lr 0.1, batch 16 | 208,266 |" in out
    rows = list(csv.DictReader(open(tmp_path / "compare.csv")))
    assert [r["model"] for r in rows] == models and all(r["runs"] == "2" for r in rows)
    assert float(rows[1]["nfe_backward"]) > 0 and rows[0]["nfe_forward"] == ""
    assert (tmp_path / "compare.md").exists() and (tmp_path / "compare.png").stat().st_size > 10_000
    assert len(json.loads((tmp_path / "thesis_resnet2" / "seed1" / "history.json").read_text())) == 2
    (tmp_path / "compare.png").unlink()
    assert main(["plot", str(tmp_path)]) == 0 and (tmp_path / "compare.png").exists()


def test_compare_keeps_each_networks_own_protocol_unless_told(tmp_path, capsys):
    common = ["--epochs", "1", "--max-batches", "1", "--seeds", "0", "test_fraction=0.1", "--quiet"]
    models = ["thesis_resnet2", "hdnn_mnist:nf=4,n_layers=2", "nominal:n_blocks=1"]
    assert main(["compare", "--models", *models, *common, "--out", str(tmp_path / "own")]) == 0
    rows = {r["model"]: r["protocol"] for r in csv.DictReader(open(tmp_path / "own" / "compare.csv"))}
    assert rows[models[0]] == "thesis: SGD lr 0.1, batch 128"
    assert (
        rows[models[1]].startswith("hdnn_mnist: Adam lr 0.04, x0.8 after epochs [1, 2,")
        and "batch 100" in rows[models[1]]
    )
    assert rows[models[2]] == "nominal preset: SGD lr 0.1, x0.1 after epochs [80, 120, 150], batch 100"
    one = ["learning=hdnn_mnist", "learning.lr=0.01", "--out", str(tmp_path / "one")]
    assert main(["compare", "--models", *models[:2], *common, *one]) == 0
    assert "protocol: the one given" in capsys.readouterr().out
    protocols = {r["protocol"] for r in csv.DictReader(open(tmp_path / "one" / "compare.csv"))}
    assert len(protocols) == 1 and protocols.pop().startswith("hdnn_mnist, lr=0.01: Adam lr 0.01")


def test_grid_is_resumable_and_survives_a_failing_point(tmp_path, monkeypatch, capsys):
    real_run = experiments.run

    def failing_run(config, run_dir, **kwargs):
        if config.learning.lr == 0.02:
            raise RuntimeError("boom")
        return real_run(config, run_dir, **kwargs)

    monkeypatch.setattr(experiments, "run", failing_run)
    args = ["grid", "thesis_resnet2", "--param", "learning.lr=0.01,0.02,0.05", *FAST, "--out", str(tmp_path)]
    assert main(args) == 1  # a point failed: the exit status says so
    out = capsys.readouterr().out
    assert "2 of 3 runs finished" in out and "failed: learning.lr=0.02 seed 0 RuntimeError: boom" in out
    rows = list(csv.DictReader(open(tmp_path / "grid.csv")))
    assert [r["status"] for r in rows] == ["finished", "failed", "finished"]
    assert (tmp_path / "grid.png").exists()
    calls = []
    monkeypatch.setattr(experiments, "run", lambda c, d, **kwargs: calls.append(d) or real_run(c, d, **kwargs))
    rerun = lambda *a, **k: pytest.fail("finished point rerun")  # noqa: E731
    monkeypatch.setattr("contham.experiments.loop.Loop.train_epoch", rerun)
    with pytest.raises(pytest.fail.Exception):  # the failed point is retried, the finished ones are not
        main(args)
    assert [d.parent.name for d in calls] == ["learning.lr=0.01", "learning.lr=0.02"]


def test_two_dimensional_grid(tmp_path):
    args = ["grid", "thesis_hamiltonian", "--param", "n_blocks=2,4", "--param", "learning.lr=0.01,0.1", *FAST]
    assert main([*args, "--out", str(tmp_path)]) == 0
    assert len(list(csv.DictReader(open(tmp_path / "grid.csv")))) == 4
    assert main(["plot", str(tmp_path)]) == 0


@pytest.mark.parametrize(
    "argv, message",
    [
        (["train", "resnet21"], "model must be one of"),
        (["train", "nominal"], "dataset='cifar10' needs root=<a torchvision data folder> (with download=true"),
        (["train", "nominal", "kss=3"], "unknown key 'kss'"),
        (["train", "nominal", "epochs=two"], "epochs must be an integer >= 1; got 'two'"),
        (["train", "nominal", "epochs"], "expected key=value; got 'epochs'"),
        (["train", "missing.yaml"], "config file 'missing.yaml' does not exist"),
        (["compare", "--dataset", "mnist", "--root", "/nonexistent", "--epochs", "1"], "not found under root"),
        (["compare", "--models", "thesis_odenet:adjoint"], "expected name:key=value"),
        (["grid", "nominal", "--param", "lr"], "--param expects key=v1,v2"),
        (["grid", "nominal", "--param", "learning.lr=0.1,-1"], "lr must be a finite number > 0; got -1"),
        (["grid", "nominal", "--param", "h=0.1,,0.2"], "--param 'h=0.1,,0.2' has an empty value"),
        (["grid", "nominal", "--param", "h=0.1", "--seeds", "0", "one"], "--seeds takes integers >= 0; got 0 one"),
        (["train", "nominal", "learning.lrr=0.1"], "learning.<field> must be one of 'training_steps_max'"),
        (["train", "nominal", "nb_features=3"], "nb_features must be a list of integers"),
        (["train", "hdnn_2d", "nf=3"], "nf must be even for function='H1_J1'"),
        (["train", "hdnn_2d", "inputs=3"], "inputs must be a list of 2 feature indices; got 3"),
        (["train", "thesis_odenet", "gradient=adjoint", "adjoint_rtol=-1"], "adjoint_rtol must be a finite number"),
        (["compare", "--dataset", "mnist", "--root", "/nonexistent", "--epochs", "1"], "download=true"),
    ],
)
def test_bad_input_exits_2_with_one_line(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and err.count("\n") == 1


def test_plot_needs_results(tmp_path, capsys):
    assert main(["plot", str(tmp_path)]) == 2
    assert "holds no run" in capsys.readouterr().err
    for name, text, needle in (("history.json", '{"a": 1}', "is not a run's history"),
                               ("history.json", "[1, 2]", "is not a run's history"),
                               ("grid.json", '{"keys": 3}', "is not a grid's results")):  # fmt: skip
        folder = tmp_path / name.split(".")[0] / text.strip("[]{}").split(":")[0].strip('" ')
        folder.mkdir(parents=True)
        (folder / name).write_text(text)
        assert main(["plot", str(folder)]) == 2
        err = capsys.readouterr().err
        assert needle in err and "Traceback" not in err and err.count("\n") == 1


def test_train_says_when_it_resumes_or_reads_back_and_exits_1_when_it_diverged(
    tmp_path, capsys, monkeypatch, ctrl_c_in_epoch
):
    out = tmp_path / "run"
    args = ["train", "thesis_resnet2", *FAST, "epochs=2", "--out", str(out)]
    ctrl_c_in_epoch(2)
    assert main(args) == 130
    monkeypatch.undo()
    capsys.readouterr()
    assert main(args) == 0
    assert f"resuming {out} after epoch 1" in capsys.readouterr().out
    assert main(args) == 0
    assert "had finished before: read back, not trained again" in capsys.readouterr().out
    diverging = ["train", "thesis_resnet2", "learning.lr=1e12", *FAST, "--out", str(tmp_path / "d")]
    assert main(diverging) == 1
    assert "diverged in epoch 1" in capsys.readouterr().out


def test_the_compare_table_gives_the_sample_std_from_two_seeds_on():
    from contham.experiments.drivers import aggregate, format_table

    run = {"status": "finished", "parameters": 10, "seconds_per_epoch": 1.0}
    two = aggregate("a", [{**run, "test_accuracy": 0.90}, {**run, "test_accuracy": 0.94}])
    one = aggregate("b", [{**run, "test_accuracy": 0.90}, {"status": "failed", "error": "boom"}])
    assert two["test_accuracy_std"] == pytest.approx(0.02 * 2**0.5)  # n - 1: sqrt(2) x the population std
    assert one["test_accuracy_std"] is None and one["failed"] == 1 and one["status"] == "1 failed, 1 finished"
    table = format_table([two, one]).splitlines()
    assert "| 92.00 ± 2.83 |" in table[2] and "| 90.00 |" in table[3]


def test_the_command_does_not_import_what_it_does_not_use():
    import subprocess
    import sys

    heavy = "('torch._dynamo', 'torchvision')"
    probe = f"import sys, contham.experiments.cli; print(sorted(m for m in {heavy} if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "[]", done.stdout + done.stderr


def test_a_constant_feature_map_is_drawn_mid_scale_not_black():
    from contham.experiments.plots import color_limits

    assert color_limits(torch.full((1, 1), 0.3)) == (pytest.approx(-0.7), pytest.approx(1.3))  # 0.3 in the middle
    assert color_limits(torch.tensor([[0.0, 2.0]])) == (0.0, 2.0)


def test_the_plots_say_what_their_bands_and_error_bars_are(tmp_path, monkeypatch):
    from matplotlib.figure import Figure

    from contham.experiments.plots import plot_confusion, plot_curves, plot_grid

    titles = []

    def keep_titles(fig, *args, **kwargs):
        texts = [fig._suptitle.get_text()] if fig._suptitle is not None else []
        titles.append(" / ".join(texts + [ax.get_title() for ax in fig.axes if ax.get_title()]))

    monkeypatch.setattr(Figure, "savefig", keep_titles)
    entry = {"epoch": 1, "train_loss": 1.0, "test_loss": 1.1, "train_accuracy": 0.5, "test_accuracy": 0.4}
    plot_curves({"a": [[entry], [{**entry, "test_accuracy": 0.6}]]}, tmp_path / "c.png")
    rows = [{"h": h, "seed": s, "status": "finished", "test_accuracy": 0.5 + s / 10} for h in (1, 2) for s in (0, 1)]
    plot_grid(rows, ["h"], tmp_path / "g.png")
    plot_confusion([[3, 1], [0, 4]], tmp_path / "m.png")
    assert "shaded band +/- 1 sample std" in titles[0] and "test (solid) and training (dashed)" in titles[0]
    assert "error bars +/- 1 sample std" in titles[1] and "(true, predicted)" in titles[2]
