"""The H-DNN experiments: point sets, the hdnn_2d / hdnn_mnist networks against the papers'
layer equations (written out here in the papers' weight layout), parameter counts, the sparse H2
mask, the classifier fit, and the 2-D protocols (the papers', their code's Adam step count, end to
end) in the trainer."""

import dataclasses
import json
import math
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch._dynamo import register_backend

from contham.config import LearningParameters
from contham.data import point_set, points
from contham.experiments import RunConfig
from contham.experiments.protocols import (
    HDNN_2D_LEARNING,
    HDNN_MNIST_LEARNING,
    PROTOCOLS,
    adam_step_epoch_parameters,
    make_optimizer,
    set_adam_step,
)
from contham.experiments.trainer import fit, run
from contham.models import build, count_parameters
from contham.models.hdnn import FUNCTIONS, HDNN2d, HDNNMnist, LinearClassifier

torch.set_default_dtype(torch.float32)


# ---- point sets -----------------------------------------------------------------------------


def test_swiss_roll_is_two_spirals_of_two_turns():
    x, labels = points("swiss_roll", 800, seed=1).tensors
    assert x.shape == (800, 2) and labels.bincount().tolist() == [400, 400]
    radius, angle = x.double().norm(dim=1), torch.atan2(x[:, 1].double(), x[:, 0].double())
    for label, r0 in ((0, 0.2), (1, 0.0)):
        r = radius[labels == label]
        assert r.min() >= r0 - 1e-6 and r.max() <= r0 + 1 + 1e-6
        # r grows linearly with the angle over two turns: the angle is 4 pi (r - r0) mod 2 pi, up to
        # one angle step (the papers' radii include both ends, their angles stop short of 4 pi)
        phase = torch.remainder(angle[labels == label] - 4 * math.pi * (r - r0), 2 * math.pi)
        assert torch.minimum(phase, 2 * math.pi - phase).max() <= 4 * math.pi / 400 + 1e-6


def test_double_circles_are_four_alternating_rings():
    x, labels = points("double_circles", 800, seed=1).tensors
    radius = x.norm(dim=1)
    ring = torch.round(radius).long()
    assert set(ring.tolist()) == {1, 2, 3, 4}
    assert ((radius - ring).abs() <= 0.3 * math.sqrt(2) + 1e-6).all()
    assert torch.equal(labels, (ring - 1) % 2) and ring.bincount()[1:].tolist() == [200] * 4


def test_double_moons_are_two_pairs_of_moons():
    x, labels = points("double_moons", 800, seed=1).tensors
    assert labels.bincount().tolist() == [400, 400]
    assert x[:, 0].min() > -1.2 and x[:, 0].max() < 4.2 and x[:, 1].min() > -0.7 and x[:, 1].max() < 1.2


@pytest.mark.parametrize("name", ["swiss_roll", "double_circles", "double_moons"])
def test_point_sets_are_seeded_split_even_odd_and_noisy_on_demand(name):
    a, b, c = (points(name, 400, seed=s).tensors[0] for s in (3, 3, 4))
    assert torch.equal(a, b) and not torch.equal(a, c)
    noisy = points(name, 400, seed=3, noise=0.1).tensors[0]
    assert 0.05 < (noisy - a).std() < 0.15
    train, test = point_set(name, 400, seed=3)
    assert train.indices == list(range(0, 400, 2)) and test.indices == list(range(1, 400, 2))
    with pytest.raises(ValueError, match="name must be one of"):
        points("spiral")
    with pytest.raises(ValueError, match="noise"):
        points(name, noise=-1.0)


# ---- the layers against the papers' equations ------------------------------------------------


def papers_layers(function, nf, layers, h, generator):
    """Random weights in the papers' layout and their layer map y_j -> y_{j+1} on rows y
    (batch, nf), written from the papers' equations (J1 = [[0, I], [-I, 0]], J2 = +1 above the
    diagonal), together with the same weights in contham's layout."""
    n = nf // 2
    randn = lambda *shape: torch.randn(*shape, generator=generator, dtype=torch.float64)  # noqa: E731
    tanh = torch.tanh
    if function in ("H1_J1", "H1_J2"):
        K, b = randn(layers, nf, nf), randn(layers, nf)
        J = torch.zeros(nf, nf, dtype=torch.float64)
        if function == "H1_J1":
            J[:n, n:], J[n:, :n] = torch.eye(n), -torch.eye(n)
        else:
            J = torch.ones(nf, nf, dtype=torch.float64).triu(1) - torch.ones(nf, nf, dtype=torch.float64).tril(-1)

        def step(j, y):  # y' = J K sigma(K^T y + b)
            return y + h * tanh(y @ K[j] + b[j]) @ (J @ K[j]).T

        return step, {"K": K.transpose(1, 2), "b": b}
    if function == "MS1":
        K, b = randn(layers, n, n), randn(layers, nf)

        def step(j, y):  # z' = sigma(K y + b_z) first, then y' = sigma(-K^T z + b_y) from the new z
            y1, z = y[:, :n], y[:, n:]
            z = z + h * tanh(y1 @ K[j].T + b[j, n:])
            y1 = y1 + h * tanh(z @ -K[j] + b[j, :n])
            return torch.cat((y1, z), 1)

        return step, {"K0": -K.transpose(1, 2), "b": b}
    if function == "MS2":
        K = randn(layers, nf, nf)
        K = K - K.transpose(1, 2)  # antisymmetric
        b = randn(layers, nf)

        def step(j, y):  # y' = sigma(K^T y + b)
            return y + h * tanh(y @ K[j] + b[j])

        return step, {"W": K.transpose(1, 2).triu(1), "b": b}
    if function == "MS3":
        K1, K2, b1, b2 = randn(layers, n, n), randn(layers, n, n), randn(layers, n), randn(layers, n)

        def step(j, y):  # z' = -K1 sigma(K1^T y + b2) first, then y' = K2 sigma(K2^T z + b1)
            y1, z = y[:, :n], y[:, n:]
            z = z - h * tanh(y1 @ K1[j] + b2[j]) @ K1[j].T
            y1 = y1 + h * tanh(z @ K2[j] + b1[j]) @ K2[j].T
            return torch.cat((y1, z), 1)

        return step, {"K1": K2.transpose(1, 2), "b1": b1, "K2": K1.transpose(1, 2), "b2": b2}
    # H2 with J1: z' = -Kp^T sigma(Kp y + bp) first, then y' = Kq^T sigma(Kq z + bq)
    Kp, Kq, bp, bq = randn(layers, n, n), randn(layers, n, n), randn(layers, n), randn(layers, n)

    def step(j, y):
        y1, z = y[:, :n], y[:, n:]
        z = z - h * tanh(y1 @ Kp[j].T + bp[j]) @ Kp[j]
        y1 = y1 + h * tanh(z @ Kq[j].T + bq[j]) @ Kq[j]
        return torch.cat((y1, z), 1)

    return step, {"Kp": Kp, "bp": bp, "Kq": Kq, "bq": bq}


@pytest.mark.parametrize("function", list(FUNCTIONS))
@pytest.mark.parametrize("nf", [4, 6])
def test_hdnn_2d_layers_are_the_papers_equations(function, nf):
    generator = torch.Generator().manual_seed(0)
    layers, t_end = 7, 1.2
    step, weights = papers_layers(function, nf, layers, t_end / layers, generator)
    model = HDNN2d(function=function, nf=nf, n_layers=layers, t_end=t_end).double()
    field = model.block.field
    with torch.no_grad():
        for name, value in weights.items():
            getattr(field, name).copy_(value)
    x = torch.randn(9, 2, generator=generator, dtype=torch.float64)
    y = torch.zeros(9, nf, dtype=torch.float64)
    y[:, 0], y[:, nf - 1] = x[:, 0], x[:, 1]  # the coordinates enter features 0 and nf - 1
    states = [y]
    for j in range(layers):
        states.append(step(j, states[-1]))
    torch.testing.assert_close(model.features(x), states[-1], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(model.hidden_states(x), torch.stack(states), rtol=1e-12, atol=1e-12)


# per layer on nf = 4 features, as the papers' code stores them: MS1 K (2 x 2) and b (4); MS3
# K1, K2 (2 x 2) and b (4); H1 K (4 x 4) and b (4)
PAPERS_PER_LAYER = {"MS1": 4 + 4, "MS3": 8 + 4, "H1_J1": 16 + 4, "H1_J2": 16 + 4}


@pytest.mark.parametrize("function", list(PAPERS_PER_LAYER))
def test_parameter_counts_equal_the_papers_code(function):
    model = HDNN2d(function=function, nf=4, n_layers=64)
    assert count_parameters(model.block) == 64 * PAPERS_PER_LAYER[function]
    assert count_parameters(model.classifier) == 4 + 1  # W (1 x nf) and mu


def test_h2_and_ms2_counts_against_the_papers_code():
    # the papers' H2 stores a full nf x nf K per layer (16 + 4 on nf = 4) and uses its two
    # diagonal blocks, which contham stores alone; the papers' MS2 stores the nf^2 - nf entries of
    # an antisymmetric K (12 + 4), contham the nf^2 of W (K = W - W^T)
    assert count_parameters(HDNN2d(function="H2", nf=4, n_layers=16).block) == 16 * (2 * 2 * 2 + 4)
    assert count_parameters(HDNN2d(function="MS2", nf=4, n_layers=16).block) == 16 * (16 + 4)


def test_sparse_h2_masked_entries_stay_zero_through_training():
    model = HDNN2d(function="H2", nf=16, n_layers=3, mask="sparse", inputs=[0, 12])
    field = model.block.field
    masked = field.K_mask == 0
    assert int(masked[0].sum()) == 64 - 24  # a ring of 8 subsystems: each coupled to itself and 2 neighbours
    # the papers' count of free entries: 2 x 24 of K and 16 of b per layer
    assert field.effective_parameters() == 3 * (2 * 24 + 16)
    optimizer = torch.optim.Adam(model.parameters(), 0.05, weight_decay=1e-3)
    x, labels = points("swiss_roll", 64, seed=0).tensors
    for _ in range(5):
        optimizer.zero_grad()
        F.cross_entropy(model(x), labels).backward()
        optimizer.step()
    for K, mask in ((field.Kp, masked[0]), (field.Kq, masked[1])):
        assert torch.all(K.detach()[:, mask] == 0) and torch.all(K.detach()[:, ~mask] != 0)
    # init="normal" draws the free entries of the stored K from N(0, 1)
    sparse = HDNN2d(function="H2", nf=16, n_layers=64, mask="sparse").block.field
    free = torch.cat(
        [K.detach()[:, mask == 1] for K, mask in ((sparse.Kp, sparse.K_mask[0]), (sparse.Kq, sparse.K_mask[1]))]
    )
    assert 0.9 < free.std() < 1.1
    full = HDNN2d(function="H2", nf=16, n_layers=3, mask="full")
    assert full.block.field.effective_parameters() == 3 * (2 * 64 + 16)


def test_bad_hdnn_options_raise():
    with pytest.raises(ValueError, match="function must be one of"):
        HDNN2d(function="H3")
    with pytest.raises(ValueError, match="mask is an option of function 'H2' only"):
        HDNN2d(function="H1_J1", mask="sparse")
    with pytest.raises(ValueError, match="mask must be one of"):
        HDNN2d(function="H2", nf=16, mask="ring")
    with pytest.raises(ValueError, match="inputs must be 2 distinct feature indices"):
        HDNN2d(inputs=[0, 4])
    with pytest.raises(ValueError, match="init must be one of"):
        HDNN2d(init="xavier")


def test_hdnn_mnist_applies_the_hdnn_to_every_pixel():
    torch.manual_seed(0)
    model = HDNNMnist(n_layers=3).double()
    x = torch.randn(2, 1, 28, 28, dtype=torch.float64)
    y = model.conv(x)
    pixels = torch.stack([model.block(y[:, :, i, j]) for i in range(28) for j in range(28)], 2).view(2, 8, 28, 28)
    torch.testing.assert_close(model(x), model.fc(pixels.flatten(1)), rtol=1e-12, atol=1e-12)
    # conv 1 -> 8 (3x3), 3 layers of H1 on 8 features, FC 8*28*28 -> 10
    assert count_parameters(model) == (8 * 9 + 8) + 3 * (64 + 8) + (8 * 28 * 28 * 10 + 10)


# ---- the classifier fit and the 2-D protocol ---------------------------------------------------


@pytest.mark.parametrize("classes", [2, 3])
def test_classifier_fit_is_adam_on_autograd_gradients(classes):
    generator = torch.Generator().manual_seed(0)
    batches = [
        (torch.randn(40, 4, generator=generator, dtype=torch.float64), torch.randint(0, classes, (40,)))
        for _ in range(3)
    ]
    fitted = LinearClassifier(4, classes).double()
    fitted.W.data.fill_(7.0)  # fit starts afresh
    fitted.fit(batches, 4, 0.05, (0.8, 0.99), penalty=1e-2)
    reference = LinearClassifier(4, classes).double()
    optimizer = torch.optim.Adam(reference.parameters(), 0.05, betas=(0.8, 0.99))
    for x, y in batches:
        for _ in range(4):
            optimizer.zero_grad()
            (F.cross_entropy(reference(x), y) + 1e-2 * reference.penalty()).backward()
            optimizer.step()
    torch.testing.assert_close(fitted.W, reference.W, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(fitted.mu, reference.mu, rtol=1e-12, atol=1e-12)


def test_two_class_logits_give_the_binary_cross_entropy():
    classifier = LinearClassifier(4, 2)
    torch.nn.init.normal_(classifier.W)
    y, labels = torch.randn(10, 4), torch.randint(0, 2, (10,))
    score = F.linear(y, classifier.W, classifier.mu)[:, 0]
    torch.testing.assert_close(
        F.cross_entropy(classifier(y), labels), F.binary_cross_entropy_with_logits(score, labels.float())
    )


def test_the_2d_protocol_trains_the_hdnn_and_refits_the_classifier(tmp_path, monkeypatch):
    calls = []  # (training mode, grad enabled, rows) of every features computation
    features = HDNN2d.features

    def counted(self, x):
        calls.append((self.training, torch.is_grad_enabled(), len(x)))
        return features(self, x)

    monkeypatch.setattr(HDNN2d, "features", counted)
    assert RunConfig(model="hdnn_2d").dataset == "swiss_roll"
    config = RunConfig(model="hdnn_2d", dataset="double_moons", epochs=3, data_size=1000, device="cpu")
    config.set("n_layers", 4)
    assert config.learning.inner_steps == 10
    model = build("hdnn_2d", in_channels=2, num_classes=2, n_layers=4)
    optimizer_params = {id(p) for group in make_optimizer(model, config.learning).param_groups for p in group["params"]}
    assert optimizer_params == {id(p) for p in model.block.parameters()}  # the classifier is fitted on its own
    metrics = run(config, tmp_path / "run", progress=False)
    assert metrics["status"] == "finished" and metrics["parameters"] == 4 * 20 + 5
    assert metrics["test_accuracy"] > 0.85
    state = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=False)["model"]
    assert state["classifier.W"].abs().sum() > 0  # the refitted classifier is saved
    # each epoch: 4 batches of 125 with the graph, then the 500 test points without; after the last
    # epoch the frozen features of the 500 training points, once for the 3 passes of the refit
    train, frozen = [(True, True, 125)] * 4, [(False, False, 500)]
    assert calls == (train + frozen) * 2 + train + frozen + frozen


@register_backend
def contham_test_refusing_backend(graph, example_inputs):
    raise RuntimeError("this backend compiles nothing")


def test_the_2d_protocol_compiles_the_features(tmp_path):
    """With inner fits the trainer runs ``model.features`` itself; ``compile`` must reach it."""

    def train(name, **options):
        config = RunConfig(model="hdnn_2d", dataset="double_moons", epochs=2, data_size=500, device="cpu", **options)
        config.set("n_layers", 4)
        return run(config, tmp_path / name, progress=False)

    eager = train("eager")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fallback = train("fallback", compile="contham_test_refusing_backend")
    messages = [str(w.message) for w in caught if "torch.compile failed" in str(w.message)]
    assert len(messages) == 1 and "failed for Features" in messages[0] and "compiles nothing" in messages[0]
    assert fallback["train_loss"] == eager["train_loss"] and fallback["test_accuracy"] == eager["test_accuracy"]
    compiled = train("compiled", compile="aot_eager")
    assert compiled["train_loss"] == pytest.approx(eager["train_loss"], rel=1e-4)


def test_the_end_to_end_protocol_trains_the_classifier_with_the_hdnn(tmp_path):
    config = RunConfig(model="hdnn_2d", dataset="double_moons", learning="hdnn_2d_end_to_end", epochs=10,
                       data_size=1000, device="cpu")  # fmt: skip
    config.set("n_layers", 4)
    assert config.learning == dataclasses.replace(
        HDNN_2D_LEARNING, training_steps_max=6400, lr=0.01, lr_decay_at=[100, 150], inner_steps=0,
        classifier_penalty=0.0,
    )  # fmt: skip
    model = build("hdnn_2d", in_channels=2, num_classes=2, n_layers=4)
    optimizer_params = {id(p) for group in make_optimizer(model, config.learning).param_groups for p in group["params"]}
    assert optimizer_params == {id(p) for p in model.parameters()}
    metrics = run(config, tmp_path / "run", progress=False)
    assert metrics["status"] == "finished" and metrics["test_accuracy"] > 0.85


# the parameters of the papers' networks whose Adam step count their 2-D driver sets to the epoch
# (the first two each network registers), in contham's names
CODE_EPOCH_COUNTED = {
    "MS1": {"K0", "b"}, "MS2": {"W", "b"}, "MS3": {"K1", "K2"}, "H1_J1": {"K", "b"}, "H1_J2": {"K", "b"},
    "H2": {"Kp", "Kq", "bp", "bq"},
}  # fmt: skip


@pytest.mark.parametrize("function", FUNCTIONS)
def test_the_code_protocol_counts_epochs_for_the_papers_first_two_parameters(function):
    learning = PROTOCOLS["hdnn_2d_code"]
    assert learning == dataclasses.replace(HDNN_2D_LEARNING, lr_decay_at=[], adam_step_epoch=learning.adam_step_epoch)
    model = HDNN2d(function=function, n_layers=4)
    optimizer = make_optimizer(model, learning)
    chosen = {id(p) for p in adam_step_epoch_parameters(model, optimizer, learning.adam_step_epoch)}
    assert {name.removeprefix("block.field.") for name, p in model.named_parameters() if id(p) in chosen} == (
        CODE_EPOCH_COUNTED[function]
    )


def test_set_adam_step_makes_the_next_update_use_t_step_plus_one():
    lr, (beta1, beta2), eps = 0.1, (0.9, 0.999), 1e-8
    weight = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.Adam([weight], lr, betas=(beta1, beta2), eps=eps)
    expected, m, v = 0.0, 0.0, 0.0
    for g, t in zip((1.0, -2.0, 0.5, 3.0), (1, 1, 2, 2)):  # two epochs of two updates
        set_adam_step(optimizer, [weight], t - 1)
        weight.grad = torch.tensor([g], dtype=torch.float64)
        optimizer.step()
        m, v = beta1 * m + (1 - beta1) * g, beta2 * v + (1 - beta2) * g * g
        expected -= lr * (m / (1 - beta1**t)) / (math.sqrt(v / (1 - beta2**t)) + eps)
        assert weight.item() == pytest.approx(expected, rel=1e-12, abs=0)


def test_the_trainer_sets_the_step_count_of_the_named_parameters_to_the_epoch(tmp_path, monkeypatch):
    torch.manual_seed(0)
    model = HDNN2d(function="MS3", n_layers=4)
    names = {id(p): name.removeprefix("block.field.") for name, p in model.named_parameters()}
    seen = []  # before each update of the H-DNN: the step counts of K1, K2, b1, b2 (None before the first)
    step = torch.optim.Adam.step

    def spy(self, *args, **kwargs):
        counts = {names[id(p)]: self.state[p]["step"].item() if p in self.state else None
                  for p in self.param_groups[0]["params"]}  # fmt: skip
        seen.append((counts["K1"], counts["K2"], counts["b1"], counts["b2"]))
        return step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.Adam, "step", spy)
    train, test = point_set("double_moons", 1000, seed=1)  # 4 batches of 125 an epoch
    fit(model, train, test, PROTOCOLS["hdnn_2d_code"], tmp_path / "run", epochs=2, progress=False, device="cpu")
    K = [None, 0, 0, 0, 1, 1, 1, 1]  # Adam adds one before its update: t = 1 in epoch 1, 2 in epoch 2
    b = [None, 1, 2, 3, 4, 5, 6, 7]  # MS3's biases count their updates
    assert seen == list(zip(K, K, b, b))


def test_bad_adam_step_epoch_raises():
    model = HDNN2d(function="H1_J1", n_layers=4)
    learning = dataclasses.replace(PROTOCOLS["hdnn_2d_code"], adam_step_epoch=["block.field.K1"])
    with pytest.raises(ValueError, match=r"adam_step_epoch=\['block.field.K1'\] names none of the trained parameters "
                                         r"\(block.field.K, block.field.b\)"):  # fmt: skip
        adam_step_epoch_parameters(model, make_optimizer(model, learning), learning.adam_step_epoch)
    with pytest.raises(ValueError, match="adam_step_epoch needs optimiser 'Adam'; got optimiser='SGD'"):
        LearningParameters(adam_step_epoch=["block.field.K"])
    with pytest.raises(ValueError, match="adam_step_epoch must be a list of parameter names; got 'K'"):
        LearningParameters(optimiser="Adam", momentum=(0.9, 0.999), adam_step_epoch="K")


def test_protocols_are_chosen_by_name():
    config = RunConfig(model="hdnn_2d")
    config.set("learning", "hdnn_2d_end_to_end")
    config.set("learning.lr", 0.02)  # on top of the named protocol
    assert config.learning == dataclasses.replace(PROTOCOLS["hdnn_2d_end_to_end"], lr=0.02)
    assert PROTOCOLS["hdnn_2d_end_to_end"].lr == 0.01  # a copy was changed, not the protocol
    assert RunConfig.from_dict({"model": "hdnn_mnist", "learning": "hdnn_mnist"}).learning == HDNN_MNIST_LEARNING
    names = "'thesis', 'hdnn_2d', 'hdnn_2d_end_to_end', 'hdnn_2d_code', 'hdnn_mnist'"
    with pytest.raises(ValueError, match=f"learning must be one of {names}"):
        config.set("learning", "fast")
    with pytest.raises(ValueError, match="learning must be one of .*; got 3"):
        RunConfig(model="hdnn_2d", learning=3)


def test_the_2d_protocol_needs_a_network_with_a_classifier(tmp_path):
    config = RunConfig(model="thesis_resnet2", dataset="digits", epochs=1, max_batches=1, device="cpu")
    config.set("learning.inner_steps", 2)
    with pytest.raises(ValueError, match="needs a network with a `features` method and a `classifier`"):
        run(config, tmp_path / "run", progress=False)


def test_run_config_pairs_point_sets_with_hdnn_2d():
    assert RunConfig(model="hdnn_mnist").dataset == "mnist" and RunConfig(model="hdnn_mnist").preprocessing == "plain"
    with pytest.raises(ValueError, match="dataset must be a point set"):
        RunConfig(model="hdnn_2d", dataset="mnist")
    with pytest.raises(ValueError, match="dataset must be a point set"):
        RunConfig(model="thesis_resnet2", dataset="swiss_roll")
    with pytest.raises(ValueError, match="data_size is an option of the point sets"):
        RunConfig(model="thesis_resnet2", data_size=100)
    with pytest.raises(ValueError, match="noise must be"):
        RunConfig(model="hdnn_2d", noise=-0.1)
    with pytest.raises(ValueError, match="inner_steps must be an integer >= 0"):
        RunConfig(model="hdnn_2d").set("learning.inner_steps", -1)


def test_cli_trains_and_plots_a_2d_run(tmp_path):
    from contham.experiments.cli import main

    out = tmp_path / "run"
    args = ["train", "hdnn_2d", "dataset=double_moons", "data_size=400", "n_layers=4", "epochs=1",
            "learning=hdnn_2d_end_to_end", "learning.lr=0.02", "--quiet"]  # fmt: skip
    assert main([*args, "--out", str(out)]) == 0
    learning = json.loads((out / "config.json").read_text())["learning"]
    assert learning["inner_steps"] == 0 and learning["lr"] == 0.02 and learning["training_steps_max"] == 6400
    assert main(["plot", str(out)]) == 0
    assert (out / "points_2d.png").stat().st_size > 10_000
