"""Accelerator options (amp, channels_last, compile) against fp32 eager on CPU, for the four
network families; the eager fallback of compile; blocks integrate in fp32 under autocast."""

import json
import subprocess
import sys
import warnings

import pytest
import torch
from torch._dynamo import register_backend

from contham import HamiltonianBlock, ODEBlock, TwoLayerField
from contham.experiments import RunConfig, run
from contham.experiments.cli import main

MODELS = ["thesis_resnet2", "thesis_hamiltonian", "thesis_odenet", "nominal"]
# option -> (run fields, relative tolerance of the per-epoch losses against fp32 eager)
OPTIONS = {
    "bf16": ({"amp": "bf16"}, 2e-2),
    "fp16": ({"amp": "fp16"}, 2e-2),
    "channels_last": ({"channels_last": True}, 1e-3),  # adaptive ODE steps move with rounding
    "compile": ({"compile": "aot_eager"}, 1e-5),  # dynamo + AOTAutograd, no code generation
}
# compile also compiles the ODENet's adaptive steps, whose decomposed group norms round otherwise
# in float32, and adaptive steps move with rounding (as for channels_last; in float64 the
# gradients of a training step agree to 2e-15, tests/test_runge_kutta.py compares the steps)
LOOSER = {("thesis_odenet", "compile"): 1e-3}
# A dropout mask is drawn in memory order, so in NHWC layout it drops other elements: channels_last
# is compared on the report network without its dropout (both runs).
WITHOUT_DROPOUT = {"nominal": {"dropout": None}}


def train(model, folder, **options):
    config = RunConfig(
        model=model, dataset="digits", epochs=2, max_batches=4, test_fraction=0.3, device="cpu", **options
    )
    config.set("learning.batch_size", 32)
    config.set("learning.lr", 0.02)
    metrics = run(config, folder, progress=False)
    assert metrics["status"] == "finished"
    return json.loads((folder / "history.json").read_text())


@pytest.fixture(scope="module")
def fp32(tmp_path_factory):
    cache = {}

    def history(model, **fields):
        key = (model, repr(fields))
        if key not in cache:
            cache[key] = train(model, tmp_path_factory.mktemp(f"{model}-fp32"), **fields)
        return cache[key]

    return history


@pytest.mark.parametrize("option", sorted(OPTIONS))
@pytest.mark.parametrize("model", MODELS)
def test_option_trains_like_fp32_eager(model, option, fp32, tmp_path):
    fields, tolerance = OPTIONS[option]
    tolerance = LOOSER.get((model, option), tolerance)
    common = {"model_options": WITHOUT_DROPOUT.get(model, {})} if option == "channels_last" else {}
    history = train(model, tmp_path, **fields, **common)
    for ours, reference in zip(history, fp32(model, **common), strict=True):
        for key in ("train_loss", "test_loss"):
            assert ours[key] == pytest.approx(reference[key], rel=tolerance), key


def test_fp16_checkpoints_its_gradient_scaler(tmp_path):
    train("thesis_resnet2", tmp_path, amp="fp16")
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=False)
    assert state["scaler"]["scale"] > 0 and "_growth_tracker" in state["scaler"]


@register_backend
def contham_test_broken_backend(graph, example_inputs):
    raise RuntimeError("this backend cannot compile anything")


def test_compile_falls_back_to_eager_with_one_warning(fp32, tmp_path):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        history = train("thesis_resnet2", tmp_path, compile="contham_test_broken_backend")
    messages = [str(w.message) for w in caught if "torch.compile failed" in str(w.message)]
    assert len(messages) == 1 and "training eagerly" in messages[0] and "cannot compile anything" in messages[0]
    assert [h["train_loss"] for h in history] == pytest.approx([h["train_loss"] for h in fp32("thesis_resnet2")])


def test_bad_options_name_the_parameter():
    with pytest.raises(ValueError, match="amp must be None \\(off\\), 'bf16' or 'fp16'; got 'fp8'"):
        RunConfig(amp="fp8")
    with pytest.raises(ValueError, match="compile must be true, false or a backend among .*inductor"):
        RunConfig(compile="fast")
    with pytest.raises(ValueError, match="channels_last must be True or False"):
        RunConfig(channels_last="yes")


@pytest.mark.parametrize("kind", ["hamiltonian", "ode"])
def test_blocks_integrate_in_the_field_precision_under_autocast(kind):
    field = TwoLayerField(4, "tanh", kernel_size=3, n_nodes=3, dt=0.1)
    block = HamiltonianBlock(field) if kind == "hamiltonian" else ODEBlock(field, 0.3, "rk4", step_size=0.1)
    x = torch.randn(2, 4, 5, 5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = block(x.bfloat16())
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, block(x.bfloat16().float()), rtol=0, atol=0)


def test_options_in_a_grid_and_under_torchrun(tmp_path):
    fast = [
        "dataset=digits",
        "epochs=1",
        "max_batches=2",
        "test_fraction=0.1",
        "learning.batch_size=16",
        "device=cpu",
        "--quiet",
    ]
    assert main(["grid", "thesis_resnet2", "--param", "amp=null,bf16", "channels_last=true", *fast,
                 "--out", str(tmp_path / "grid")]) == 0  # fmt: skip
    assert (tmp_path / "grid" / "grid.csv").read_text().count(",finished,") == 2
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "contham",
               "train", "thesis_hamiltonian", "amp=bf16", "channels_last=true", "compile=aot_eager", *fast,
               "--out", str(tmp_path / "ddp")]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = json.loads((tmp_path / "ddp" / "metrics.json").read_text())
    assert metrics["status"] == "finished" and metrics["world_size"] == 2
