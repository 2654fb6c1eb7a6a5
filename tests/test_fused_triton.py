"""The fused dense blocks' Triton kernels, run by Triton's interpreter on the CPU: the same map and
gradients as step-by-step autograd (1e-10 relative in float64, 1e-5 in float32). conftest.py sets
TRITON_INTERPRET=1 before anything imports Triton."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import triton
from test_fused import CASES, IDS, pair

from contham.fields import ACTIVATIONS
from contham.solvers.fused_triton import ACTIVATIONS as KERNEL_ACTIVATIONS
from contham.solvers.fused_triton import BLOCK, supports, triton_steps

CPU = torch.device("cpu")


def results(run, block, x, weight):
    xg = x.clone().requires_grad_()
    out = run(xg)
    return (out, *torch.autograd.grad((out * weight).sum(), (xg, *block.field.parameters())))


def test_kernels_run_the_dtypes_their_triton_builds_right(monkeypatch):
    """Triton 3.1's build of the kernels gives wrong float32 results and 3.1 to 3.4 reject a
    float64 ``tl.dot``: there the fused path runs those states itself. Half-precision states,
    which the tests do not check, never go to the kernels."""
    make, solver = CASES[0]
    plan = pair(make, "tanh", solver)[0].schedule.fused
    cases = {"3.1.0": set(), "3.4.0": {torch.float32}, "3.5.1": {torch.float32, torch.float64}}
    cases["3.10.0+git5d1a2b"] = cases["3.5.1"]
    for version, dtypes in cases.items():
        monkeypatch.setattr(triton, "__version__", version)
        states = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
        assert {d for d in states if supports(plan, d, CPU)} == dtypes


def test_kernels_compile_for_gpus_and_run_where_their_shared_memory_fits():
    """The kernels compiled for GPUs (Triton's CUDA backend, not the interpreter): at the largest
    tiles of a split state in float64, on an H100 or H200 (compute capability 9.0, 227 KiB of
    shared memory per block) all four fit and run; on an RTX 3090 or A10 (8.6, 99 KiB) the first
    one does not, and the fused path runs the block instead of a launch that would fail. The
    three kernels of a whole state compile too."""
    script = Path(__file__).with_name("kernels_ahead_of_time.py")
    env = {name: value for name, value in os.environ.items() if name != "TRITON_INTERPRET"}
    cases = ["90:232448:float64:split", "86:101376:float64:split", "90:232448:float32:whole"]
    result = subprocess.run([sys.executable, str(script), *cases], env=env, capture_output=True, text=True, check=True)
    hopper, ampere, whole = map(json.loads, result.stdout.splitlines())
    assert hopper["runs"] and len(hopper["shared"]) == 4 and max(hopper["shared"]) <= 232448
    assert not ampere["runs"] and ampere["shared"][0] > 101376 and len(ampere["shared"]) == 1
    assert whole["runs"] and len(whole["shared"]) == 3


@pytest.mark.parametrize("make, solver", CASES, ids=IDS)
@pytest.mark.parametrize("sigma", list(KERNEL_ACTIVATIONS))
def test_kernels_equal_autograd_in_float64(make, solver, sigma):
    fused, plain = pair(make, sigma, solver)
    plan = fused.schedule.fused
    assert supports(plan, torch.float64, CPU)
    # more rows than one program's block, the last one partial: several programs' partial sums
    x = torch.randn(2 * BLOCK + 7, fused.field.features, dtype=torch.float64)
    weight = torch.randn_like(x)
    ours = results(lambda v: triton_steps(plan, v), fused, x, weight)
    for a, b in zip(ours, results(plain, plain, x, weight)):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
    with torch.no_grad():
        torch.testing.assert_close(triton_steps(plan, x), plain(x), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("case, rebuild", [(0, False), (4, False), (4, True)], ids=["H1-J1", "two-layer", "reversible"])
def test_kernels_read_and_write_states_in_any_layout(case, rebuild):
    """The kernels read the state where it lies and write the result in the same layout: row form,
    column form (the per-pixel states of the MNIST H-DNN, one feature after another), a slice of
    a wider tensor; the gradient of a sum arrives expanded (stride 0) and is read as it is."""
    fused, plain = pair(*CASES[case][:1], "tanh", CASES[case][1])
    plan = fused.schedule.fused
    n, features = BLOCK + 5, fused.field.features
    layouts = {
        "rows": torch.randn(n, features, dtype=torch.float64),
        "columns": torch.randn(features, n, dtype=torch.float64).t(),
        "slice": torch.randn(n, features + 3, dtype=torch.float64)[:, 2 : 2 + features],
    }
    for name, x in layouts.items():
        xg = x.detach().requires_grad_()  # the same layout (a clone of the slice would be contiguous)
        out = triton_steps(plan, xg, rebuild=rebuild)
        assert out.stride() == (x.stride() if name != "slice" else (features, 1)), name
        ours = (out, *torch.autograd.grad(out.sum(), (xg, *fused.field.parameters())))
        for a, b in zip(ours, results(plain, plain, x, torch.ones_like(x))):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize(
    "make, solver, rebuild",
    [(*CASES[1], False), (*CASES[4], False), (*CASES[4], True), (*CASES[7], True)],
    ids=[IDS[1], IDS[4], IDS[4] + "-reversible", IDS[7] + "-reversible"],
)
def test_kernels_equal_autograd_in_float32(make, solver, rebuild):
    fused, plain = pair(make, "tanh", solver)
    fused.float(), plain.float()
    plan = fused.schedule.fused
    x = torch.randn(BLOCK + 3, fused.field.features)
    weight = torch.randn_like(x)
    ours = results(lambda v: triton_steps(plan, v, rebuild=rebuild), fused, x, weight)
    for a, b in zip(ours, results(plain, plain, x, weight)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("case", [i for i, name in enumerate(IDS) if not name.startswith(("H1", "MS2"))],
                         ids=lambda i: IDS[i])  # fmt: skip
@pytest.mark.parametrize("sigma", ["tanh", "relu"])
def test_reversible_kernels_rebuild_the_states_and_equal_autograd(case, sigma):
    make, solver = CASES[case]
    fused, plain = pair(make, sigma, solver)
    plan = fused.schedule.fused
    assert plan.split
    x = torch.randn(2 * BLOCK + 7, fused.field.features, dtype=torch.float64)
    weight = torch.randn_like(x)
    ours = results(lambda v: triton_steps(plan, v, rebuild=True), fused, x, weight)
    for a, b in zip(ours, results(plain, plain, x, weight)):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def test_kernels_compute_every_named_activation_the_fused_path_takes():
    assert set(KERNEL_ACTIVATIONS) == {name for name, a in ACTIVATIONS.items() if a.fusable}
