"""Distributed training: 2 gloo ranks under torchrun reproduce the 1-process run (with and without
batch norm), resume exactly, and DDP gradients through reversible and adjoint blocks equal the
1-process gradients of the same global batch."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from contham import HamiltonianBlock, HamiltonianField, ODEBlock, TwoLayerField
from contham.experiments.distributed import (
    GlobalBatches,
    GlooSyncBatchNorm,
    Ranks,
    convert_sync_batchnorm,
    weighted_cross_entropy,
)
from contham.solvers import RungeKutta

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
COMMON = [
    "dataset=digits",
    "device=cpu",
    "learning.batch_size=32",
    "test_fraction=0.5",
    "--quiet",
]  # with random augmentation
THESIS = ["thesis_resnet2", "learning.lr=0.02"]  # no batch norm (GroupNorm); a stable lr: chaos amplifies rounding
NOMINAL = ["nominal", "dropout=null"]  # batch norm


def train(ranks, args, out, **popen):
    launcher = [sys.executable, "-m", "contham"]
    if ranks > 1:
        launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={ranks}", "-m",
                    "contham"]  # fmt: skip
    command = [*launcher, "train", *args, *COMMON, "--out", str(out)]
    if popen:
        return subprocess.Popen(command, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, **popen)
    done = subprocess.run(command, env=ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "contham" not in "".join(line for line in done.stderr.splitlines() if "Warning" in line), done.stderr
    return done


def history(out):
    return json.loads((out / "history.json").read_text())


def assert_same_history(a, b, rel):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        for key in ("train_loss", "train_accuracy", "test_loss", "test_accuracy"):
            assert x[key] == pytest.approx(y[key], rel=rel, abs=0), key


@pytest.mark.parametrize(
    "model",
    [
        THESIS,
        [*NOMINAL, "sync_batchnorm=true"],
    ],
    ids=["no-batchnorm", "sync-batchnorm"],
)
def test_two_ranks_reproduce_one_process(model, tmp_path):
    args = [*model, "epochs=2", "max_batches=5"]
    train(1, args, tmp_path / "one")
    train(2, args, tmp_path / "two")
    assert_same_history(history(tmp_path / "one"), history(tmp_path / "two"), rel=1e-5)
    metrics = json.loads((tmp_path / "two" / "metrics.json").read_text())
    assert metrics["world_size"] == 2 and metrics["status"] == "finished"
    single = json.loads((tmp_path / "one" / "metrics.json").read_text())
    assert metrics["confusion"] == single["confusion"]  # the whole test subset, reduced over ranks
    # rank 0 alone writes: the run's files and its lock, no stray temporaries
    names = [p.name for p in (tmp_path / "two").iterdir()]
    events = [n for n in names if n.startswith("events.out.tfevents.")]  # TensorBoard's, one file
    assert len(events) == 1 and set(names) - set(events) == {
        "config.json", "history.json", "metrics.json", "checkpoint.pt", ".lock"}  # fmt: skip


def test_per_rank_batch_norm_differs_from_one_process(tmp_path):
    """The control of the test above: without sync_batchnorm each rank normalises its own half."""
    args = [*NOMINAL, "epochs=2", "max_batches=3"]
    train(1, args, tmp_path / "one")
    train(2, args, tmp_path / "two")
    with pytest.raises(AssertionError, match="train_loss|test_loss"):
        assert_same_history(history(tmp_path / "one"), history(tmp_path / "two"), rel=1e-5)


def test_interrupted_distributed_run_resumes_exactly(tmp_path):
    args = [*THESIS, "epochs=3", "max_batches=40"]
    train(2, args, tmp_path / "straight")
    run = train(2, args, tmp_path / "resumed", start_new_session=True)
    deadline = time.monotonic() + 240
    while not (tmp_path / "resumed" / "history.json").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    os.killpg(run.pid, signal.SIGINT)  # Ctrl-C in the middle of epoch 2
    run.communicate(timeout=120)
    metrics = json.loads((tmp_path / "resumed" / "metrics.json").read_text())
    assert metrics["status"] in ("interrupted", "running") and metrics["epochs_done"] == 1
    train(2, args, tmp_path / "resumed")
    assert_same_history(history(tmp_path / "resumed"), history(tmp_path / "straight"), rel=0)
    a = torch.load(tmp_path / "straight" / "checkpoint.pt", weights_only=False)["model"]
    b = torch.load(tmp_path / "resumed" / "checkpoint.pt", weights_only=False)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def reversible_model():
    field = TwoLayerField(6, "tanh", n_nodes=5, dt=0.2)
    return nn.Sequential(nn.Linear(3, 6), HamiltonianBlock(field, gradient="reversible"), nn.Linear(6, 4))


def adjoint_model():
    field = HamiltonianField(6, "J1", "tanh", n_nodes=3, dt=1 / 3)
    block = ODEBlock(field, T=1.0, solver="dopri5", rtol=1e-11, atol=1e-11, gradient="adjoint")
    return nn.Sequential(nn.Linear(3, 6), block, nn.Linear(6, 4))


def reversible_rk_model():
    """dopri5 by McCallum & Foster's reversible scheme, each sample with its own steps: a shard
    takes the steps its samples take in the whole batch."""
    field = HamiltonianField(6, "J1", "tanh", n_nodes=3, dt=1 / 3)
    solver = RungeKutta("dopri5", rtol=1e-6, atol=1e-8, per_sample=True)
    return nn.Sequential(nn.Linear(3, 6), ODEBlock(field, T=1.0, solver=solver, gradient="reversible"), nn.Linear(6, 4))


MODELS = {"reversible": reversible_model, "adjoint": adjoint_model, "reversible_rk": reversible_rk_model}


def data():
    generator = torch.Generator().manual_seed(1)
    return torch.randn(10, 3, generator=generator, dtype=torch.float64), torch.arange(10) % 4


def gradients(model):
    return {name: p.grad.clone() for name, p in model.named_parameters()}


def ddp_worker(rank, world, kind, init_file, out_file):
    import torch._dynamo  # noqa: F401  # before the process group, as distributed.setup does (see there)

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    torch.manual_seed(0)
    model = MODELS[kind]().double()
    ddp = nn.parallel.DistributedDataParallel(model)
    x, y = data()
    ranks = Ranks(rank, world, rank)
    out = ddp(x.tensor_split(world)[rank])
    weighted_cross_entropy(out, y.tensor_split(world)[rank], len(y), ranks).backward()
    if rank == 0:
        torch.save(gradients(model), out_file)
    dist.destroy_process_group()


@pytest.mark.parametrize("kind", sorted(MODELS))
def test_ddp_gradients_through_reversible_and_adjoint_blocks(kind, tmp_path):
    torch.manual_seed(0)
    model = MODELS[kind]().double()
    x, y = data()
    nn.functional.cross_entropy(model(x), y).backward()
    expected = gradients(model)
    mp.spawn(ddp_worker, args=(2, kind, str(tmp_path / "init"), str(tmp_path / "grads.pt")), nprocs=2)
    got = torch.load(tmp_path / "grads.pt")
    tolerance = 1e-7 if kind == "adjoint" else 1e-12  # adaptive steps shared by a shard differ per shard
    for name, grad in expected.items():
        assert torch.allclose(got[name], grad, rtol=tolerance, atol=tolerance), name


def test_global_batches_follow_the_one_process_order_and_split_it():
    dataset = TensorDataset(torch.arange(23))
    plain = [b[0].tolist() for b in DataLoader(dataset, 5, shuffle=True, generator=torch.Generator().manual_seed(7))]

    def batches(ranks, limit=None):
        generator = torch.Generator().manual_seed(7)
        sampler = GlobalBatches(23, 5, generator, ranks, limit)
        return sampler, [b[0].tolist() for b in DataLoader(dataset, batch_sampler=sampler, generator=generator)]

    one, got = batches(Ranks())
    assert got == plain and one.global_sizes == [5, 5, 5, 5, 3]
    shards = [batches(Ranks(r, 2, r))[1] for r in (0, 1)]
    assert [a + b for a, b in zip(*shards)] == plain
    assert [len(s) for s in shards[0]] == [3, 3, 3, 3, 2] and [len(s) for s in shards[1]] == [2, 2, 2, 2, 1]
    four = GlobalBatches(23, 5, torch.Generator().manual_seed(7), Ranks(0, 4, 0), limit=2)
    assert four.global_sizes == [5, 5] and len(list(four)) == 2
    assert GlobalBatches(21, 5, torch.Generator(), Ranks(0, 4, 0)).global_sizes == [5, 5, 5, 5]  # 1 < 4 ranks


def test_sync_batchnorm_conversion_keeps_the_state_and_the_single_process_result():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 3, 3), nn.BatchNorm2d(3), nn.Sequential(nn.Flatten(), nn.BatchNorm1d(12)))
    x = torch.randn(5, 2, 4, 4)
    reference = model(x)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    converted = convert_sync_batchnorm(model, torch.device("cpu"))
    assert isinstance(converted[1], GlooSyncBatchNorm) and isinstance(converted[2][1], GlooSyncBatchNorm)
    assert converted.state_dict().keys() == before.keys()
    assert torch.allclose(converted(x), reference)  # not distributed: plain batch norm
