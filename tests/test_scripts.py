"""The analysis and benchmark scripts run end to end on tiny settings and write what they promise."""

import csv
import importlib
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]


def run_script(path, *args):
    result = subprocess.run([sys.executable, str(ROOT / path), *map(str, args)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


def rows(path):
    with open(path) as handle:
        return list(csv.DictReader(handle))


def test_gradient_vs_depth(tmp_path):
    run_script(
        "analysis/gradient_vs_depth.py", "--depths", 8, "--trained-depth", 4, "--iterations", 3, "--out", tmp_path
    )
    table = rows(tmp_path / "gradient_vs_depth.csv")
    assert len(table) == 6 * 9 + 6 * 5 and (tmp_path / "gradient_vs_depth.png").exists()
    symplectic = [float(r["norm"]) for r in table if "Verlet" in r["network"] or "symplectic" in r["network"]]
    assert min(symplectic) >= 1 - 1e-9


def test_counterexample_sensitivities_grow_but_never_fall_below_one(tmp_path):
    out = run_script("analysis/counterexample.py", "--T", 5, "--out", tmp_path)
    table = rows(tmp_path / "counterexample.csv")
    norms = [float(r["norm"]) for r in table]
    assert len(table) == 101 and min(norms) >= 1 - 1e-9 and norms[0] > 1.5 and "written" in out


@pytest.mark.parametrize(
    "script, args, outputs",
    [
        ("analysis/classification_2d.py", ["--layers", 4, "--epochs", 1],
         ["classification_2d_swiss_roll_H1_J1.png", "classification_2d_double_circles_H2.png",
          "classification_2d.csv"]),
        ("analysis/odenet_tolerance.py", ["--tolerances", 0.1, "--epochs", 1, "--max-batches", 1],
         ["odenet_tolerance.png", "odenet_tolerance.csv"]),
    ],
)  # fmt: skip
def test_other_analysis_scripts(tmp_path, script, args, outputs):
    run_script(script, *args, "--out", tmp_path)
    assert all((tmp_path / name).stat().st_size > 0 for name in outputs)


def test_jacobian_spectra_hamiltonian_rows_are_imaginary(tmp_path):
    run_script("analysis/jacobian_spectra.py", "--out", tmp_path)
    assert (tmp_path / "jacobian_spectra.png").stat().st_size > 0
    table = rows(tmp_path / "jacobian_spectra.csv")
    hamiltonian = [abs(float(r["real"])) for r in table if r["field"] in ("J1, tanh", "J2, ReLU", "two-layer, tanh")]
    others = [abs(float(r["real"])) for r in table if r["field"] == "ODENet field"]
    assert max(hamiltonian) < 1e-10 < max(others)


def test_blocks_benchmark(tmp_path):
    out = run_script("benchmarks/blocks.py", "--batch", 2, "--repeats", 1)
    assert out.count("x |") >= 3 and "| 112 | 8x8 |" in out


def test_memory_benchmark_shows_flat_reversible_memory():
    out = run_script("benchmarks/memory.py", "--depths", 4, 16, "--batch", 2, "--repeats", 1)
    table = [line.split("|")[1:-1] for line in out.splitlines() if line.startswith("| ") and "mode" not in line]
    ratio = {(row[0].strip(), row[1].strip()): float(row[3].strip().rstrip("x")) for row in table}
    assert ratio["16", "reversible"] == pytest.approx(1.0) and ratio["16", "adjoint"] == pytest.approx(1.0)
    assert ratio["16", "backprop"] == pytest.approx(4.0, rel=0.05)


def test_odenet_benchmark(tmp_path):
    out = run_script("benchmarks/odenet.py", "--tolerances", 0.1, "--batch", 4, "--repeats", 1)
    assert "| ResNet-4 | - | - |" in out and "| ODENet tol=0.1 adjoint |" in out


def test_torchode_benchmark_takes_torchodes_steps_per_sample():
    out = run_script("benchmarks/torchode_per_sample.py", "--tols", 0.1, 1e-3, "--batch", 3, "--repeats", 1)
    lines = [line.split("|")[1:-1] for line in out.splitlines() if line.startswith("| 0.")]
    assert [(tol.strip(), same.strip()) for tol, same, *_ in lines] == [("0.1", "True"), ("0.001", "True")]
    assert all(float(row[4]) < 1e-4 for row in lines)  # the final states, relative to their largest entry


def test_runge_kutta_benchmark_solves_with_torchdiffeq_s_steps(tmp_path):
    out = run_script("benchmarks/runge_kutta.py", "--tol", 0.1, "--batch", 2, "--repeats", 1, "--outputs", 2, 11)
    lines = [line for line in out.splitlines() if line.startswith("| ") and "dopri5" in line]
    rows = {tuple(c.strip() for c in line.split("|")[1:4]) for line in lines}
    nfe = {name: calls for name, graph, calls in rows if graph == "no graph"}
    solvers = {"contham dopri5", "torchdiffeq dopri5", "torchdiffeq dopri5, concatenating field"}
    assert set(nfe) == solvers and len(set(nfe.values())) == 1  # the same steps, and the same map
    assert "x the field's |" in out
    steps = out.split("Training step of thesis_odenet")[1].split("\n\n")[0].splitlines()[5:]
    launches = {row.split("|")[1].strip(): int(row.split("|")[4]) for row in steps}
    assert set(launches) == {"backprop", "adjoint", "reversible", "torchdiffeq backprop"}
    assert launches["backprop"] < launches["torchdiffeq backprop"]  # the same field calls, fewer launches
    assert all(any(line.startswith(f"| {n} | ") for line in out.splitlines()) for n in (2, 11))  # --outputs
    table = out.split("The loop's own cost")[1].splitlines()[3:]
    small = {tuple(c.strip() for c in line.split("|")[1:5]) for line in table}
    steps = {(method, name): int(n) for method, name, n, _ in small}
    assert set(steps) == {(m, s) for m in ("dopri5", "adaptive_heun") for s in ("contham", "torchdiffeq")}
    assert abs(steps["dopri5", "contham"] - steps["dopri5", "torchdiffeq"]) <= 1  # the same step rule


def test_gpu_benchmark_runs_small_on_the_cpu_and_checks_the_kernels(tmp_path):
    out = run_script("benchmarks/gpu.py", "--small", "--repeats", 1, "--networks", "hdnn_mnist", "thesis_resnet2")
    assert "| hdnn_mnist | eager |" in out and "| thesis_resnet2 | eager |" in out
    assert "Triton kernels = step-by-step autograd (1e-10 float64, 1e-5 float32; stored and reversible): passed" in out
    assert "GB/s at the least" in out and "rebuilt (gradient='reversible'" in out
    assert out.count("the operations that took the most time") == 2
    assert "| 112 | 8x8 |" in out and "2-D H-DNN training step (H1_J1, nf 4, 64 layers, batch 125, Adam): eager" in out
    assert out.rstrip().splitlines()[-1].startswith("[compiled: ")  # the last section, CUDA only
    epochs = out.split("One epoch through RunConfig + run (digits, cpu)")[1]
    assert "| hdnn_mnist |" in epochs and "| thesis_resnet2 |" in epochs


def test_gpu_benchmark_reports_a_failing_section_runs_the_next_and_exits_with_1(tmp_path):
    """One run measures all that works: here the epoch times fail (the root holds no MNIST), and
    the adaptive section after its table of the ODENet's steps (compiled by aot_eager here)."""
    args = ["--small", "--repeats", 1, "--only", "epochs", "adaptive", "hdnn", "--networks", "hdnn_mnist",
            "thesis_odenet", "--root", tmp_path]  # fmt: skip
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks/gpu.py"), *map(str, args)],
                            capture_output=True, text=True)  # fmt: skip
    assert result.returncode == 1
    assert "[epochs: " in result.stdout and "2-D H-DNN training step" in result.stdout.split("[adaptive: ")[1]
    steps = result.stdout.split("(compiled steps: backend aot_eager)")[1].split("\n\n")[0].splitlines()[5:]
    cells = [[cell.strip() for cell in row.split("|")[1:5]] for row in steps]
    assert [row[:2] for row in cells] == [["thesis_odenet", "eager"], ["thesis_odenet", "compiled steps"]]
    assert all(int(row[3]) > 0 for row in cells)  # the kernels (on the CPU: operations) of each step
    failed, *listed = result.stderr.splitlines()[-3:]
    assert failed == "FAILED:" and [line.split(": ")[0] for line in listed] == ["epochs", "adaptive"]
    assert all("dataset='mnist' not found" in line and line in result.stdout for line in listed)
    assert "Traceback" in result.stderr and "Training step" not in result.stdout  # --only: no other section


@pytest.mark.parametrize("nf", [4, 8])
def test_dense_benchmark_checks_equal_outputs(tmp_path, nf):
    out = run_script("benchmarks/dense.py", "--nf", nf, "--layers", 8, "--batch", 5, "--repeats", 1)
    assert (
        f"nf {nf}, 8 layers" in out
        and out.count("x |") == 13
        and all(
            f"| {name} |" in out
            for name in ("H1 (J1, Euler)", "two-layer (SE)", "separable (SE)", "MS1 (SE)", "MS2 (Euler)")
        )
    )


def test_time_to_accuracy_benchmark_runs_and_resumes(tiny_mnist, tmp_path):
    args = ["--root", tiny_mnist, "--periods", 1, "--batches-per-period", 1, "--out", tmp_path / "runs"]
    only = ["--only", "ODENet, rk4, 1 step"]
    out = run_script("benchmarks/mnist_time_to_accuracy.py", *args, *only)
    assert "| ResNet-4 | 428,810 |" in out and "| ODENet, rk4, 1 step | 208,266 | 4.0 / 4.0 |" in out
    assert out.count("| yes |") + out.count("| no |") == 1 and "A within limit" in out
    assert run_script("benchmarks/mnist_time_to_accuracy.py", *args, *only) == out  # finished runs are read back


def test_scaling_benchmark_prints_both_ratios():
    out = run_script("benchmarks/scaling.py", "--repeats", 1, "--epochs", 1, "--max-batches", 2)
    assert "grid speed-up, sequential / Ray:" in out and "torchrun 2 ranks / 1 process, s/epoch:" in out


def test_data_benchmark_prints_the_speed_up(tiny_mnist):
    out = run_script("benchmarks/data.py", tiny_mnist, "--repeats", 1, "--batch", 8)
    assert "(30 images, batch 8" in out and out.strip().splitlines()[-1].startswith("speed-up of the batched path:")
    assert out.strip().endswith("x")


def test_options_benchmark_prints_ratios():
    out = run_script("benchmarks/options.py", "--repeats", 1, "--epochs", 2, "--max-batches", 2,
                     "--models", "thesis_resnet2", "--options", "amp=bf16")  # fmt: skip
    assert "| thesis_resnet2 | fp32 eager |" in out and "| thesis_resnet2 | amp=bf16 |" in out and "1.00x" in out


def test_hdnn_reproduction_writes_resumes_and_tabulates(tmp_path):
    args = ["--out", tmp_path, "--datasets", "swiss_roll", "--functions", "H1_J1", "MS3", "--layers", 2,
            "--seeds", 1, 2, "--set", "learning.training_steps_max=8", "data_size=400"]  # fmt: skip
    out = run_script("analysis/hdnn_2d_reproduction.py", *args)
    table = rows(tmp_path / "hdnn_2d.csv")
    assert [(r["function"], r["seed"]) for r in table] == [("H1_J1", "1"), ("H1_J1", "2"), ("MS3", "1"), ("MS3", "2")]
    assert all(0 <= float(r["test_accuracy"]) <= 1 for r in table)
    means = {f: 100 * sum(float(r["test_accuracy"]) for r in table if r["function"] == f) / 2 for f in ("H1_J1", "MS3")}
    assert "| swiss_roll | 2 | H1_J1 |" in out
    assert f"| {means['H1_J1']:.1f} |" in out and f"| {means['MS3']:.1f} |" in out
    again = run_script("analysis/hdnn_2d_reproduction.py", *args)  # resumes: every row is there
    assert not any(line.startswith("{") for line in again.splitlines()) and len(rows(tmp_path / "hdnn_2d.csv")) == 4


def test_hdnn_reproduction_nudges_both_codes_and_equals_contham_run_without(tmp_path):
    from contham.experiments import RunConfig
    from contham.experiments.trainer import run

    args = ["--out", tmp_path, "--datasets", "swiss_roll", "--functions", "H1_J1", "--layers", 2, "--seeds", 1,
            "--set", "learning.training_steps_max=8", "data_size=400"]  # fmt: skip
    run_script("analysis/hdnn_2d_reproduction.py", *args)
    out = run_script("analysis/hdnn_2d_reproduction.py", *args, "--nudge", 3)
    assert [r["implementation"] for r in rows(tmp_path / "hdnn_2d.csv")] == ["contham", "contham+3ulp"]
    assert "| swiss_roll | 2 | H1_J1 |" in out and " contham+3ulp | mean | s |" in out
    config = RunConfig(model="hdnn_2d", dataset="swiss_roll", seed=1, device="cpu", data_size=400,
                       model_options=dict(nf=4, t_end=1.2, n_layers=2, function="H1_J1"))  # fmt: skip
    config.set("learning.training_steps_max", 8)
    plain = run(config, tmp_path / "run", progress=False)["test_accuracy"]
    assert float(rows(tmp_path / "hdnn_2d.csv")[0]["test_accuracy"]) == pytest.approx(plain, abs=1e-12)
    bad = subprocess.run([sys.executable, str(ROOT / "analysis/hdnn_2d_reproduction.py"), *map(str, args), "--nudge",
                          "-1"], capture_output=True, text=True)  # fmt: skip
    assert bad.returncode == 2 and "--nudge must be a number of ulps >= 0; got -1" in bad.stderr


def test_the_nudge_moves_every_nonzero_weight_by_whole_ulps_towards_infinity(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "analysis"))
    nudge = importlib.import_module("hdnn_2d_reproduction").nudge
    network = nn.Linear(4, 3)
    with torch.no_grad():
        network.weight[0, 0] = 0.0  # a masked entry: stays zero
    before = [weight.detach().clone() for weight in network.parameters()]
    nudge(network, 2)
    for old, new in zip(before, network.parameters()):
        # float32 bit patterns are ordered like the values for positive numbers, reversed for negative ones
        steps = (new.detach().view(torch.int32).long() - old.view(torch.int32).long()) * old.sign().long()
        assert torch.equal(steps, 2 * old.ne(0).long())
        assert (new[old == 0] == 0).all() and (new > old).eq(old != 0).all()


def test_hdnn_statistics_tests_each_case_over_the_seeds_of_all_files(tmp_path):
    fields = "implementation,dataset,function,layers,seed,test_accuracy,seconds"

    def write(name, lines):
        (tmp_path / name).write_text("\n".join([fields, *lines]) + "\n")

    # swiss roll: contham above on all 5 seeds (exact Mann-Whitney p = 2 / C(10, 5) = 0.0079);
    # double circles: the same accuracies in both codes (p = 1); seeds 1-2 in one file, 2-5 in the other
    levels = {("swiss_roll", "contham"): 0.9, ("swiss_roll", "reference"): 0.8}

    def lines(seeds):
        return [f"{code},{dataset},H1_J1,16,{seed},{levels.get((dataset, code), 0.7) + seed / 100},1.0"
                for dataset in ("swiss_roll", "double_circles") for code in ("contham", "reference")
                for seed in seeds]  # fmt: skip

    first, second = lines([1, 2]), lines([2, 3, 4, 5])
    write("a.csv", first)
    write("b.csv", second)  # seed 2 again: counted once
    out = run_script("analysis/hdnn_2d_statistics.py", tmp_path / "a.csv", tmp_path / "b.csv")
    assert "| swiss_roll | 16 | H1_J1 | 5 | 93.0 | 83.0 | 93.0 | 83.0 | 0.0079 |" in out
    assert "| double_circles | 16 | H1_J1 | 5 | 73.0 | 73.0 | 73.0 | 73.0 | 1 | 1 |" in out
    assert "contham's mean >= reference's in 2 of 2 cases; Mann-Whitney p < 0.05: 1 above, 0 below." in out
    assert "Same case and seed" not in out
    paired = run_script("analysis/hdnn_2d_statistics.py", tmp_path / "a.csv", tmp_path / "b.csv", "--paired")
    assert ("Same case and seed in both: 10 runs; the accuracy changed in 5 (5 up, 0 down); |change| median 5.00, "
            "mean 5.00, largest 10.00 points.") in paired  # fmt: skip
    two_seeds = run_script("analysis/hdnn_2d_statistics.py", tmp_path / "a.csv", tmp_path / "b.csv", "--seeds", 4, 5)
    assert "| swiss_roll | 16 | H1_J1 | 2 | 94.5 | 84.5 |" in two_seeds
    bad = subprocess.run([sys.executable, str(ROOT / "analysis/hdnn_2d_statistics.py"), str(tmp_path / "a.csv"),
                          "--second", "papers"], capture_output=True, text=True)  # fmt: skip
    assert bad.returncode == 2 and "--second must be one of ['contham', 'reference']; got 'papers'" in bad.stderr


def test_hdnn_mnist_reproduction_runs_both_codes_and_resumes(tiny_mnist, tmp_path):
    # a stand-in for the papers' checkout with run_MNIST.py's interface: Net, train, test
    examples = tmp_path / "reference" / "examples"
    examples.mkdir(parents=True)
    (examples / "__init__.py").write_text("")
    (examples / "run_MNIST.py").write_text(
        "import torch\n"
        "class Net(torch.nn.Module):\n"
        "    def __init__(self, nf, n_layers, h, net_type):\n"
        "        super().__init__()\n"
        "        self.fc = torch.nn.Linear(784, 10)\n"
        "    def forward(self, x):\n"
        "        return self.fc(x.flatten(1)).log_softmax(1)\n"
        "def train(model, device, loader, optimizer, epoch, alpha, out):\n"
        "    assert h > 0\n"  # the global the driver sets
        "    for x, y in loader:\n"
        "        optimizer.zero_grad()\n"
        "        torch.nn.functional.nll_loss(model(x), y).backward()\n"
        "        optimizer.step()\n"
        "def test(model, device, loader, out):\n"
        "    return sum((model(x).argmax(1) == y).sum().item() for x, y in loader)\n"
    )
    args = ["--root", tiny_mnist, "--out", tmp_path, "--functions", "H1_J1", "MS1", "--epochs", 2,
            "--reference", tmp_path / "reference"]  # fmt: skip
    out = run_script("analysis/hdnn_mnist_reproduction.py", *args)
    table = rows(tmp_path / "hdnn_mnist.csv")
    assert [(r["implementation"], r["function"]) for r in table] == [
        ("contham", "H1_J1"), ("reference", "H1_J1"), ("contham", "MS1"), ("reference", "MS1")
    ]  # fmt: skip
    for r in table:
        assert 0 <= float(r["final_test_accuracy"]) <= float(r["best_test_accuracy"]) <= 1 and r["epochs"] == "2"
        final = 100 * float(r["final_test_accuracy"])
        assert f"| {r['function']} | {r['implementation']} | 1 | 2 | {final:.2f} |" in out
    again = run_script("analysis/hdnn_mnist_reproduction.py", *args)
    assert not any(line.startswith("{") for line in again.splitlines()) and len(rows(tmp_path / "hdnn_mnist.csv")) == 4
