"""Every script in examples/ runs, on tiny settings, and shows what it claims."""

import importlib.util
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def load(name: str):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_example_has_a_test():
    tested = {"own_model", "compare_from_python", "stability", "quickstart"}
    assert {p.stem for p in EXAMPLES.glob("*.py")} == tested


def test_own_model(capsys):
    accuracy = load("own_model").main(["--epochs", "2", "--layers", "4"])
    assert accuracy > 0.5  # ten classes: chance is 0.1
    assert "4 field evaluations forward, 4 backward" in capsys.readouterr().out


def test_compare_from_python(tmp_path, capsys):
    rows = load("compare_from_python").main(
        ["--epochs", "1", "--max-batches", "3", "--seeds", "0", "--out", str(tmp_path)]
    )
    out = capsys.readouterr().out  # not silent while it trains: a line as each run ends
    assert "training 4 networks x 1 seeds" in out and "thesis_resnet2 seed 0: finished" in out
    assert [r["model"] for r in rows][-1] == "thesis_hamiltonian" and len(rows) == 4
    assert all(r["status"] == "1 finished" for r in rows)
    assert (tmp_path / "compare.md").exists() and (tmp_path / "compare.png").exists()


def test_stability():
    result = load("stability").main(["--depth", "8", "--steps", "200"])
    assert result["max_real"] < 1e-12
    assert result["min_norm"] >= 1 - 1e-9
    assert result["verlet"] < result["euler"] / 10


def test_quickstart(capsys):
    load("quickstart").main(["--T", "5"])
    out = capsys.readouterr().out
    assert "dopri5" in out and "verlet" in out
