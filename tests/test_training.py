"""Trainer: learns, resumes to the same numbers, survives divergence, writes its results."""

import contextlib
import copy
import dataclasses
import json
import math

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

import contham.experiments.loop as training_loop
from contham import HamiltonianBlock, HamiltonianField, blocks
from contham.config import LearningParameters
from contham.data import POINT_SETS, input_shape, load_image_set, points
from contham.experiments import Loop, Recipe, RunConfig, Settings, fit, run
from contham.experiments.checkpoints import seed_everything
from contham.models import available, build, default_data
from contham.models.hdnn import HDNN2d
from contham.regularization import SMOOTHED, smoothness


def hamiltonian_classifier():
    field = HamiltonianField(8, "J1", "tanh", n_nodes=8, dt=0.2)
    return nn.Sequential(nn.Linear(2, 8), HamiltonianBlock(field), nn.Dropout(0.1), nn.Linear(8, 2))


LEARN = LearningParameters(
    training_steps_max=1, batch_size=50, lr=0.1, lr_decay_at=[8], alpha=1e-3, b_in_reg=True, h_div=False
)


def test_trainer_learns_double_moons(tmp_path):
    torch.manual_seed(0)
    metrics = fit(hamiltonian_classifier(), points("double_moons", 400), points("double_moons", 200, seed=1),
                  LEARN, tmp_path, epochs=12, progress=False, gradient_norms=True)  # fmt: skip
    assert metrics["status"] == "finished" and metrics["epochs_done"] == 12
    assert metrics["train_loss"] < 0.3 and metrics["test_accuracy"] > 0.85
    history = json.loads((tmp_path / "history.json").read_text())
    assert [h["lr"] for h in history[7:9]] == pytest.approx([0.1, 0.01])  # decay after epoch 8
    assert sum(map(sum, metrics["confusion"])) == 200
    norms = history[-1]["gradient_norms"]
    assert set(norms) == {"state/1", "param/0.weight", "param/0.bias", "param/1.field.K", "param/1.field.b",
                          "param/3.weight", "param/3.bias"} and all(v > 0 for v in norms.values())  # fmt: skip
    assert json.loads((tmp_path / "metrics.json").read_text()) == metrics


def test_resumed_run_reaches_the_same_numbers(tmp_path, monkeypatch):
    data, test = points("swiss_roll", 300), points("swiss_roll", 100, seed=1)
    torch.manual_seed(0)
    straight = fit(hamiltonian_classifier(), data, test, LEARN, tmp_path / "a", epochs=4, progress=False)

    calls = {"n": 0}
    real_evaluate = training_loop.evaluate

    def interrupt_in_epoch_3(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real_evaluate(*args, **kwargs)

    monkeypatch.setattr(training_loop, "evaluate", interrupt_in_epoch_3)
    torch.manual_seed(0)
    with pytest.raises(KeyboardInterrupt):
        fit(hamiltonian_classifier(), data, test, LEARN, tmp_path / "b", epochs=4, progress=False)
    interrupted = json.loads((tmp_path / "b" / "metrics.json").read_text())
    assert interrupted["status"] == "interrupted" and interrupted["epochs_done"] == 2
    monkeypatch.setattr(training_loop, "evaluate", real_evaluate)
    torch.manual_seed(123)  # the resumed run restores every random state from the checkpoint
    resumed = fit(hamiltonian_classifier(), data, test, LEARN, tmp_path / "b", epochs=4, progress=False)
    for key in ("train_loss", "train_accuracy", "test_loss", "test_accuracy", "confusion"):
        assert resumed[key] == straight[key], key
    weights_a = torch.load(tmp_path / "a" / "checkpoint.pt", weights_only=False)["model"]
    weights_b = torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=False)["model"]
    assert all(torch.equal(weights_a[k], weights_b[k]) for k in weights_a)


def test_divergence_ends_the_run_cleanly(tmp_path):
    torch.manual_seed(0)
    learning = LearningParameters(training_steps_max=1, batch_size=50, lr=1e12, lr_decay_at=[], alpha=0.0)
    metrics = fit(hamiltonian_classifier(), points("double_moons", 200), points("double_moons", 100, seed=1),
                  learning, tmp_path, epochs=5, progress=False)  # fmt: skip
    assert metrics["status"] == "diverged" and metrics["diverged_epoch"] in (1, 2)
    loss = metrics["diverged_loss"]
    assert metrics["epochs_done"] == metrics["diverged_epoch"] - 1 and (not math.isfinite(loss) or loss > 1e15)
    assert json.loads((tmp_path / "metrics.json").read_text())["status"] == "diverged"


def test_early_stops_at_accuracy_or_training_time(tmp_path):
    data, test = points("double_moons", 400), points("double_moons", 200, seed=1)
    torch.manual_seed(0)
    full = fit(hamiltonian_classifier(), data, test, LEARN, tmp_path / "full", epochs=12, progress=False)
    accuracies = [h["test_accuracy"] for h in json.loads((tmp_path / "full" / "history.json").read_text())]
    target = accuracies[5]  # reached first at some epoch <= 6, not at epoch 12 only
    first = next(i for i, a in enumerate(accuracies, 1) if a >= target)
    torch.manual_seed(0)
    stopped = fit(hamiltonian_classifier(), data, test, LEARN, tmp_path / "acc", epochs=12, progress=False,
                  stop_at_accuracy=target)  # fmt: skip
    assert full["stop_reason"] == "epochs" and stopped["stop_reason"] == "accuracy"
    assert stopped["epochs_done"] == first and stopped["test_accuracy"] >= target
    torch.manual_seed(0)
    timed = fit(hamiltonian_classifier(), data, test, LEARN, tmp_path / "time", epochs=12, progress=False,
                max_train_seconds=1e-9)  # fmt: skip
    assert timed["stop_reason"] == "time" and timed["epochs_done"] == 1 and timed["status"] == "finished"
    assert timed["train_seconds"] == pytest.approx(timed["seconds_per_epoch"])
    for bad, message in ((dict(stop_at_accuracy=1.5), "stop_at_accuracy must be a number in \\(0, 1\\]; got 1.5"),
                         (dict(max_train_seconds=0), "max_train_seconds must be a finite number > 0")):  # fmt: skip
        with pytest.raises(ValueError, match=message):
            fit(hamiltonian_classifier(), data, test, LEARN, tmp_path / "bad", epochs=1, progress=False, **bad)
        with pytest.raises(ValueError, match=message):
            RunConfig(**bad)


def test_run_writes_results_and_does_not_rerun(tmp_path, monkeypatch):
    config = RunConfig(
        model="thesis_odenet", dataset="digits", epochs=1, max_batches=2, model_options={"gradient": "adjoint"}
    )
    config.set("learning.batch_size", 16)
    metrics = run(config, tmp_path, progress=False)
    assert metrics["status"] == "finished" and metrics["parameters"] == 208_266
    assert metrics["nfe_forward"] > 0 and metrics["nfe_backward"] > 0
    assert json.loads((tmp_path / "config.json").read_text()) == config.to_dict()
    history = json.loads((tmp_path / "history.json").read_text())
    assert history[0]["batches"] == 2 and history[0]["saved_tensors_mb"] > 0
    monkeypatch.setattr(Loop, "train_epoch", lambda *a, **k: pytest.fail("a finished run was rerun"))
    assert run(config, tmp_path, progress=False) == metrics
    other = RunConfig(model="thesis_resnet2", dataset="digits", epochs=1, max_batches=2)
    with pytest.raises(ValueError, match="holds a different run"):  # finished, but another config
        run(other, tmp_path, progress=False)
    (tmp_path / "metrics.json").unlink()
    with pytest.raises(ValueError, match="holds a different run"):  # its checkpoint
        run(other, tmp_path, progress=False)


def test_run_config_keys_and_defaults():
    config = RunConfig(model="nominal")
    assert config.learning == LearningParameters(lr_decay_at=[80, 120, 150], b_in_reg=True, h_div=False)
    assert config.preprocessing == "report" and RunConfig().preprocessing == "thesis"
    config.set("learning.lr", 0.05)
    config.set("h", 0.1)
    config.set("model.ks", 5)
    config.set("fraction", 0.1)
    assert config.learning.lr == 0.05 and config.model_options == {"h": 0.1, "ks": 5} and config.fraction == 0.1
    with pytest.raises(ValueError, match="unknown key .epoch.: not a run field .*=<protocol> .*learning.<field>"):
        config.set("epoch", 3)
    with pytest.raises(ValueError, match="lr must be a finite number > 0"):
        config.set("learning.lr", "fast")
    with pytest.raises(ValueError, match="fraction must be in"):
        config.set("fraction", 2.0)
    with pytest.raises(ValueError, match="device must be 'auto', 'cpu' or 'cuda"):
        training_loop.select_device("tpu")


@pytest.mark.parametrize(
    "model, options",
    [("thesis_resnet2", {}), ("thesis_hamiltonian", {}), ("nominal", {}), ("hdnn_mnist", {}),
     ("thesis_odenet", {"solver": "rk4", "step_size": 0.5})],
    ids=["thesis_resnet2", "thesis_hamiltonian", "nominal", "hdnn_mnist", "thesis_odenet-rk4"],
)  # fmt: skip
def test_a_training_step_reads_nothing_back_to_the_host(model, options, host_syncs):
    """No copy between the host and the device in a fixed-step network's training step (on CUDA
    each would synchronise, and none could be captured in a CUDA graph)."""
    train_set = load_image_set("digits", train=True, preprocessing="thesis" if "thesis" in model else "report")
    net = build(model, in_channels=1, num_classes=10, image_size=28 if "thesis" in model else 8, **options)
    learning = RunConfig(model=model, dataset="digits").learning
    syncs_per_epoch = []
    for batches in (3, 6):  # fewer than READ_EVERY: the sums are read once, at the end of the epoch
        loop = Loop(net, train_set, train_set, learning, Settings(epochs=1, max_batches=batches, device="cpu"),
                    num_classes=10)  # fmt: skip
        with host_syncs() as syncs:
            entry = loop.train_epoch(1)
        assert entry["batches"] == batches and math.isfinite(entry["train_loss"])
        syncs_per_epoch.append(len(syncs.calls))
    assert syncs_per_epoch == [1, 1], syncs.calls  # 0 per step, 1 per epoch


# every network but the adaptive ones and the deeper CIFAR ResNets (resnet20's blocks, more of them)
LEFT_OUT = ("thesis_odenet", "thesis_hamiltonian_ode", "resnet32", "resnet44", "resnet56", "resnet110", "resnet1202")
FIXED_STEP_CASES = [(name, {}) for name in available() if name not in LEFT_OUT]
FIXED_STEP_CASES += [
    ("thesis_hamiltonian", {"gradient": "reversible"}),
    ("nominal", {"gradient": "reversible"}),
    ("thesis_hamiltonian", {"solver": "verlet", "gradient": "reversible"}),
]
FIXED_STEP_CASES += [
    (name, {"solver": "rk4", "gradient": gradient})
    for name in ("thesis_odenet", "thesis_hamiltonian_ode")
    for gradient in ("backprop", "reversible")
]
FIXED_STEP_CASES += [("hdnn_2d", {"function": f}) for f in ("MS1", "MS2", "MS3", "H1_J2", "H2")]
FIXED_STEP_CASES += [("hdnn_mnist", {"function": f}) for f in ("MS1", "H1_J2")]


@pytest.mark.parametrize("model, options", FIXED_STEP_CASES, ids=lambda v: v if isinstance(v, str) else
                         "-".join(map(str, v.values())) or "default")  # fmt: skip
def test_a_training_step_keeps_every_tensor_on_the_device_of_its_model(model, options, monkeypatch):
    """The training loop's step (forward with the protocol's outputs, loss, smoothness term,
    backward through every gradient strategy's own backward, optimiser step, the sums) and an
    evaluation forward, for every fixed-step network, on a device that is not the CPU: a tensor
    made on the CPU and combined with the model's fails there as on CUDA, which CI does not have.
    That device is ``meta`` (shapes without data, where a read-back fails too), which the blocks
    refuse from users: that check is turned off here (without autocast it changes nothing else)."""
    monkeypatch.setattr(blocks, "field_precision", lambda field, y, name="y": (contextlib.nullcontext(), y))
    dataset, preprocessing = default_data(model)
    shape = input_shape(dataset, preprocessing)
    size, meta = shape["image_size"], torch.device("meta")
    x = torch.randn(4, *((2,) if dataset in POINT_SETS else (shape["in_channels"], size, size)), device=meta)
    labels = torch.zeros(4, dtype=torch.long, device=meta)
    data = TensorDataset(x, labels)
    learning = RunConfig(model=model, dataset=dataset).learning
    loop = Loop(build(model, **shape, **options), data, data, learning, Settings(epochs=1), device=meta,
                num_classes=shape["num_classes"])  # fmt: skip
    sums = loop.train_step(x, labels, 4)
    grads = [p.grad for p in loop.model.parameters() if p.grad is not None]
    assert sums.is_meta and grads and all(g.is_meta for g in grads)
    loop.model.eval()
    with torch.no_grad():
        assert loop.model(x).is_meta


def test_the_sums_are_read_every_read_every_batches(monkeypatch, host_syncs):
    monkeypatch.setattr(training_loop, "READ_EVERY", 2)
    train_set = load_image_set("digits", train=True, preprocessing="report")
    net = build("thesis_resnet2", in_channels=1, num_classes=10, image_size=8)
    learning = RunConfig(model="thesis_resnet2", dataset="digits").learning
    loop = Loop(net, train_set, train_set, learning, Settings(epochs=1, max_batches=5, device="cpu"), num_classes=10)
    with host_syncs() as syncs:
        loop.train_epoch(1)
    assert len(syncs.calls) == 3  # after batches 2 and 4, and at the end


@pytest.mark.parametrize("function", ["MS1", "MS2"])
def test_the_trainer_penalises_the_K_that_smoothness_of_names(tmp_path, function):
    data = points("swiss_roll", 100)
    torch.manual_seed(0)
    start = HDNN2d(function=function, n_layers=4)
    learning = LearningParameters(training_steps_max=1, batch_size=100, lr=0.1, lr_decay_at=[], wd=0.0, alpha=0.5,
                                  b_in_reg=True, h_div=False, momentum=0.0, crop_and_flip=False)  # fmt: skip
    after = {}
    for of in SMOOTHED:
        model = copy.deepcopy(start)
        fit(model, data, data, dataclasses.replace(learning, smoothness_of=of), tmp_path / of, epochs=1,
            progress=False, device="cpu")  # fmt: skip
        after[of] = [weight.detach() for weight in model.block.parameters()]
    # one full-batch SGD step from the same weights on the same data: the two runs differ by lr times
    # the difference of the two penalties' gradients
    difference = 0.5 * (smoothness(start, of="K") - smoothness(start, of="parameters"))
    gradients = torch.autograd.grad(difference, list(start.block.parameters()))
    for by_parameters, by_K, gradient in zip(after["parameters"], after["K"], gradients):
        torch.testing.assert_close(by_parameters - by_K, 0.1 * gradient, atol=1e-5, rtol=1e-4)
    assert max(gradient.abs().max() for gradient in gradients) > 0.1
    with pytest.raises(ValueError, match="smoothness_of must be one of 'parameters', 'K'; got 'W'"):
        dataclasses.replace(learning, smoothness_of="W").validate()


def test_run_hands_the_built_network_to_on_build_before_training(tmp_path):
    config = RunConfig(model="hdnn_2d", dataset="swiss_roll", seed=3, device="cpu", data_size=400,
                       model_options=dict(n_layers=2, function="H1_J1"))  # fmt: skip
    config.set("learning.training_steps_max", 8)
    built = []

    def shift(network):
        built.append(network)
        with torch.no_grad():
            network.block.field.K.add_(0.5)

    shifted = run(config, tmp_path / "a", progress=False, on_build=shift)
    # the same by hand: the network of `run`, shifted, then fitted
    recipe = Recipe(config)
    train_set, test_set = recipe.data()
    seed_everything(config.seed)
    network = build(config.model, **recipe.shape, **config.model_options)
    with torch.no_grad():
        network.block.field.K.add_(0.5)
    by_hand = fit(network, train_set, test_set, config.learning, tmp_path / "b", seed=config.seed, device="cpu",
                  num_classes=2, progress=False)  # fmt: skip
    assert len(built) == 1 and isinstance(built[0], HDNN2d)
    for key in ("train_loss", "test_loss", "test_accuracy"):
        assert shifted[key] == by_hand[key], key
    assert shifted["test_loss"] != run(config, tmp_path / "c", progress=False)["test_loss"]


def test_the_cpu_peak_memory_starts_afresh_with_each_epoch():
    from contham.experiments.instruments import peak_memory_mb, reset_peak_memory

    cpu = torch.device("cpu")
    reset_peak_memory(cpu)
    big = torch.ones(2**27)  # 512 MiB, touched
    del big
    high = peak_memory_mb(cpu)
    reset_peak_memory(cpu)  # as each epoch does: no longer the process's running maximum
    assert peak_memory_mb(cpu) < high - 400
