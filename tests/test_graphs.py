"""Training steps replayed from graphs (``cuda_graphs``): the loop's side of the capture, on the CPU.

CUDA graphs exist only on CUDA; here a graph family for the CPU that replays by calling the
captured function stands in for them, so that everything around the capture runs for real: the
warm-up calls per shape, the static input buffers, the graph per batch shape captured once, the
fused optimiser with its lr tensor filled in place by the schedule, the evaluation forward, and
the fall-back when a step synchronises. (What only a GPU can show, that the recorded kernels
replay to the same numbers, is checked by ``benchmarks/gpu.py``.)"""

import dataclasses
import gc
import warnings
import weakref

import pytest
import torch

from contham.data import load_image_set
from contham.experiments import Loop, RunConfig, Settings, run
from contham.experiments import graphs as graph_module
from contham.experiments.checkpoints import seed_everything
from contham.experiments.graphs import WARMUP, Captured, NotCaptured
from contham.experiments.protocols import load_optimizer_state, make_optimizer
from contham.models import build


class ReplayByCall:
    """A graph family for the CPU: capture records the function without running it; a replay
    calls it (on the static buffers the capture was given)."""

    def __init__(self):
        self.warm_calls = 0

    def warm(self, fn):
        self.warm_calls += 1
        return fn(), None

    def capture(self, fn):
        return fn


class SynchronisingWarmUp(ReplayByCall):
    """As if every warm-up call had read a value back to the host."""

    def warm(self, fn):
        return fn(), "called a synchronizing CUDA operation"


class FailingCapture(ReplayByCall):
    """As if an operation of the step could not be recorded."""

    def capture(self, fn):
        raise RuntimeError("operation not permitted when stream is capturing")


def _loop(model, cuda_graphs, batch_size=128):
    train_set = load_image_set("digits", train=True, preprocessing="report")
    test_set = load_image_set("digits", train=False, preprocessing="report")
    seed_everything(0)
    net = build(model, in_channels=1, num_classes=10, image_size=8)
    learning = dataclasses.replace(RunConfig(model=model, dataset="digits").learning, batch_size=batch_size,
                                   lr_decay_at=[2, 4], lr_decay=0.5)  # fmt: skip
    settings = Settings(epochs=5, seed=3, device="cpu", cuda_graphs=cuda_graphs)
    seed_everything(3)
    return Loop(net, train_set, test_set, learning, settings, num_classes=10, eval_batch_size=100)


@pytest.mark.parametrize("model", ["hdnn_mnist", "nominal"])  # Adam with the smoothness penalty; SGD with batch norm
def test_replayed_steps_give_the_eager_history(monkeypatch, model):
    histories = {}
    for mode in (False, True):
        monkeypatch.setitem(graph_module.GRAPHS, "cpu", ReplayByCall)
        loop = _loop(model, mode)
        lr = loop.optimizer.param_groups[0]["lr"]
        histories[mode] = [loop.epoch(epoch) for epoch in range(1, 6)]
        if mode:
            # 11 full batches and one of 92 per epoch, 2 evaluation batches of 100 and one of 97: the
            # partial shapes are warmed up in epochs 1-3 and captured once, in epoch 4
            assert loop.train_step.captures == 2 and loop.eval_forward.captures == 2
            assert {key[0][0][0] for key in loop.train_step.shapes} == {128, 92}
            # the schedule fills the lr tensor that the captured optimiser step reads
            assert loop.optimizer.param_groups[0]["lr"] is lr
            assert lr.item() == pytest.approx(0.25 * histories[0][0]["lr"])
        else:  # the same capturable optimiser, stepped eagerly
            assert loop.optimizer.param_groups[0]["fused"] and not hasattr(loop.train_step, "captures")
    measured = ("seconds", "peak_memory_mb")  # of the process, which differ from run to run
    for eager, replayed in zip(histories[False], histories[True], strict=True):
        assert {k: v for k, v in eager.items() if k not in measured} == {
            k: v for k, v in replayed.items() if k not in measured
        }


def test_captured_calls_warm_up_per_shape_then_copy_into_the_static_buffers():
    family = ReplayByCall()
    seen = []

    def fn(x, scale):
        seen.append(x)
        return x * scale

    captured = Captured(fn, family, "test function")
    ones, twos = torch.ones(3), torch.full((3,), 2.0)
    outputs = [captured(ones if i % 2 else twos, 10.0) for i in range(WARMUP + 3)]
    assert [o[0].item() for o in outputs] == [20.0, 10.0, 20.0, 10.0, 20.0, 10.0]
    assert family.warm_calls == WARMUP and captured.captures == 1
    static = seen[WARMUP]
    assert all(x is static for x in seen[WARMUP:]) and static is not ones and static is not twos
    captured(torch.ones(4), 10.0)  # another shape: warmed up afresh
    captured(ones, 5.0)  # a constant is part of the key
    assert family.warm_calls == WARMUP + 2 and len(captured.shapes) == 3


def test_a_step_that_synchronises_runs_eagerly_or_raises_when_graphs_were_demanded(monkeypatch):
    monkeypatch.setitem(graph_module.GRAPHS, "cpu", SynchronisingWarmUp)
    loop = _loop("thesis_resnet2", "auto")
    with pytest.warns(RuntimeWarning) as caught:
        entry = loop.epoch(1)
    for what in ("training step", "evaluation forward"):
        assert any(f"the {what} synchronises with the host" in str(w.message) for w in caught), what
    assert loop.train_step.blocked is not None and loop.train_step.captures == 0 and entry["batches"] == 12
    loop = _loop("thesis_resnet2", True)
    with pytest.raises(NotCaptured, match="training step synchronises .*set cuda_graphs=auto"):
        loop.epoch(1)


def test_runs_that_cannot_be_captured_say_why():
    with pytest.raises(ValueError, match="cuda_graphs=true but the device is cpu .graphs exist on cuda"):
        _loop("thesis_resnet2", True)
    with pytest.raises(ValueError, match="cuda_graphs must be 'auto', true or false; got 1"):
        Settings(cuda_graphs=1).validate()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the CPU has no graphs: auto trains eagerly and says nothing
        loop = _loop("thesis_resnet2", "auto")
    assert not loop.captured and loop.eval_forward is None


def test_graph_obstacles_are_named(monkeypatch):
    monkeypatch.setitem(graph_module.GRAPHS, "cpu", ReplayByCall)
    train_set = load_image_set("digits", train=True, preprocessing="report")
    net = build("thesis_resnet2", in_channels=1, num_classes=10, image_size=8)
    learning = RunConfig(model="thesis_resnet2", dataset="digits").learning
    for option, reason in [({"amp": "fp16"}, "amp='fp16'"), ({"gradient_norms": True}, "gradient_norms=true"),
                           ({"compile": True}, "compile is on")]:  # fmt: skip
        settings = Settings(epochs=1, device="cpu", cuda_graphs=True, **option)
        with pytest.raises(ValueError, match=f"cuda_graphs=true but {reason}"):
            Loop(net, train_set, train_set, learning, settings, num_classes=10)


@pytest.mark.parametrize("optimiser", ["SGD", "Adam"])
def test_a_checkpoint_resumes_across_optimiser_implementations(optimiser):
    momentum = 0.9 if optimiser == "SGD" else (0.9, 0.99)
    learning = dataclasses.replace(RunConfig(model="thesis_resnet2").learning, optimiser=optimiser, momentum=momentum)
    model = torch.nn.Linear(3, 2)
    captured = make_optimizer(model, learning, capturable=True)
    model(torch.randn(4, 3)).sum().backward()
    captured.step()
    captured.param_groups[0]["lr"].fill_(0.03)
    eager = make_optimizer(model, learning)
    load_optimizer_state(eager, captured.state_dict())
    group = eager.param_groups[0]
    assert group["lr"] == pytest.approx(0.03) and isinstance(group["lr"], float) and not group.get("fused")
    again = make_optimizer(model, learning, capturable=True)
    lr = again.param_groups[0]["lr"]
    load_optimizer_state(again, eager.state_dict())
    assert again.param_groups[0]["lr"] is lr and lr.item() == pytest.approx(0.03) and again.param_groups[0]["fused"]
    assert again.param_groups[0].get("capturable", optimiser == "SGD")
    for name, value in captured.state[model.weight].items():
        torch.testing.assert_close(again.state[model.weight][name], value)


@pytest.mark.parametrize("cuda_graphs", [False, True])
def test_a_loop_is_freed_when_its_last_reference_goes(monkeypatch, cuda_graphs):
    """No reference cycle through the step functions: a loop, its DDP wrapper and its graphs'
    memory go when the run ends, not at a later garbage collection (a distributed run whose loop
    outlived its process group could abort at exit)."""
    monkeypatch.setitem(graph_module.GRAPHS, "cpu", ReplayByCall)
    loop = _loop("thesis_resnet2", cuda_graphs)
    loop.train_epoch(1)
    gone = weakref.ref(loop)
    gc.disable()
    try:
        del loop
        assert gone() is None
    finally:
        gc.enable()


def test_a_step_that_cannot_be_captured_runs_eagerly_with_the_eager_history(monkeypatch):
    monkeypatch.setitem(graph_module.GRAPHS, "cpu", ReplayByCall)
    eager = _loop("hdnn_mnist", False)
    expected = [eager.epoch(epoch) for epoch in (1, 2)]
    monkeypatch.setitem(graph_module.GRAPHS, "cpu", FailingCapture)
    loop = _loop("hdnn_mnist", "auto")
    with pytest.warns(RuntimeWarning) as caught:
        entries = [loop.epoch(epoch) for epoch in (1, 2)]
    for what in ("training step", "evaluation forward"):
        cause = f"the {what} cannot be captured (RuntimeError: operation not permitted"
        assert any(cause in str(w.message) for w in caught), what
    assert loop.train_step.captures == 0 and loop.train_step.blocked is not None
    for a, b in zip(expected, entries, strict=True):
        assert (a["train_loss"], a["test_loss"], a["batches"]) == (b["train_loss"], b["test_loss"], b["batches"])
    with pytest.raises(NotCaptured, match="cannot be captured") as raised:
        _loop("hdnn_mnist", True).epoch(1)
    assert isinstance(raised.value.__cause__, RuntimeError)


class CountedReplay(ReplayByCall):
    """`ReplayByCall` that counts its captures over all instances."""

    captures = 0

    def capture(self, fn):
        type(self).captures += 1
        return fn


@pytest.mark.parametrize("learning", ["hdnn_2d", "hdnn_2d_code"])  # the code's protocol sets Adam's step per epoch
def test_the_2d_protocol_replays_its_inner_fits_with_the_eager_history(monkeypatch, tmp_path, learning):
    monkeypatch.setitem(graph_module.GRAPHS, "cpu", CountedReplay)
    monkeypatch.setattr(CountedReplay, "captures", 0)
    results = {}
    for mode in (False, True):
        config = RunConfig(model="hdnn_2d", dataset="double_moons", learning=learning, epochs=5, data_size=500,
                           device="cpu", cuda_graphs=mode)  # fmt: skip
        config.set("n_layers", 4)
        assert config.learning.inner_steps > 0
        results[mode] = run(config, tmp_path / str(mode), progress=False)
    # the training step (4 batches of 125 per epoch) and the evaluation forward (one batch per epoch)
    assert CountedReplay.captures == 2
    measured = ("seconds", "peak_memory_mb", "time")
    for key, value in results[False].items():
        if not any(word in key for word in measured):
            assert results[True][key] == value, key


def test_synchronisations_are_listed_with_their_line_and_the_debug_mode_put_back(monkeypatch):
    """`synchronisations` (CUDA's sync debug mode stood in for: the CPU has none) lists each
    synchronisation warning with the line that made it, leaves other warnings out, and puts the
    mode back, also when the call raises."""
    modes = [0]
    monkeypatch.setattr(torch.cuda, "get_sync_debug_mode", lambda: modes[-1])
    monkeypatch.setattr(torch.cuda, "set_sync_debug_mode", modes.append)

    def step():
        warnings.warn("something else", stacklevel=1)
        warnings.warn("called a synchronizing CUDA operation", stacklevel=1)  # as the debug mode words it
        return 7

    out, syncs = graph_module.synchronisations(step)
    line = step.__code__.co_firstlineno + 2
    assert out == 7 and syncs == [f"called a synchronizing CUDA operation, in {__file__}:{line}"]
    assert modes == [0, "warn", 0]
    with pytest.raises(ZeroDivisionError):
        graph_module.synchronisations(lambda: 1 / 0)
    assert modes[-1] == 0
