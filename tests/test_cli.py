"""The contham command end to end on tiny settings, and its exit status 2 on bad input."""

import csv
import json

import pytest

import contham.experiments.drivers as experiments
from contham.experiments.cli import main

FAST = ["epochs=1", "max_batches=2", "test_fraction=0.1", "learning.batch_size=16", "--quiet"]


def test_list(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "thesis_odenet [thesis]" in out and "nominal [report]" in out and "datasets: mnist" in out
    assert "point sets (hdnn_2d): swiss_roll, double_circles, double_moons" in out
    assert "protocols (learning=<name>): thesis, hdnn_2d, hdnn_2d_end_to_end, hdnn_2d_code, hdnn_mnist" in out


def test_train_then_plot(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "nominal", "h=0.1", "gradient_norms=true", *FAST, "--out", str(out)]) == 0
    assert "finished after 1 epoch(s)" in capsys.readouterr().out
    config = json.loads((out / "config.json").read_text())
    assert config["model_options"] == {"h": 0.1} and config["preprocessing"] == "report"
    assert main(["plot", str(out)]) == 0
    assert {p.name for p in out.glob("*.png")} == {
        "curves.png",
        "confusion.png",
        "feature_maps.png",
        "gradient_norms.png",
    }
    norms = json.loads((out / "history.json").read_text())[0]["gradient_norms"]
    assert {"state/units.0.block", "state/units.2.block", "param/units.0.block.field.K1"} <= set(norms)


def test_train_from_a_config_file(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text("model: thesis_resnet2\nepochs: 1\nmax_batches: 1\nlearning: {batch_size: 8, lr: 0.01}\n")
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
    assert "| thesis_odenet:gradient=adjoint,rtol=0.01 | 208,266 |" in out
    rows = list(csv.DictReader(open(tmp_path / "compare.csv")))
    assert [r["model"] for r in rows] == models and all(r["runs"] == "2" for r in rows)
    assert float(rows[1]["nfe_backward"]) > 0 and rows[0]["nfe_forward"] == ""
    assert (tmp_path / "compare.md").exists() and (tmp_path / "compare.png").stat().st_size > 10_000
    assert len(json.loads((tmp_path / "thesis_resnet2" / "seed1" / "history.json").read_text())) == 2
    (tmp_path / "compare.png").unlink()
    assert main(["plot", str(tmp_path)]) == 0 and (tmp_path / "compare.png").exists()


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
        (["train", "nominal", "kss=3"], "unknown key 'kss'"),
        (["train", "nominal", "epochs=two"], "epochs must be an integer >= 1; got 'two'"),
        (["train", "nominal", "epochs"], "expected key=value; got 'epochs'"),
        (["train", "missing.yaml"], "config file 'missing.yaml' does not exist"),
        (["compare", "--dataset", "mnist", "--root", "/nonexistent", "--epochs", "1"], "not found under root"),
        (["compare", "--models", "thesis_odenet:adjoint"], "expected name:key=value"),
        (["grid", "nominal", "--param", "lr"], "--param expects key=v1,v2"),
        (["grid", "nominal", "--param", "learning.lr=0.1,-1"], "lr must be a finite number > 0; got -1"),
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
