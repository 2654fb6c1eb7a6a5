import os

# Triton kernels run on CPU tensors through Triton's interpreter (tests/test_fused_triton.py). It
# must be set before anything imports Triton: its library functions (tl.sum, ...) are made
# interpretable when Triton is first imported, and some tests import torch's inductor, which imports it.
os.environ.setdefault("TRITON_INTERPRET", "1")

import struct
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.overrides import TorchFunctionMode

import contham


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def write_idx(path, array):
    """An IDX file (MNIST's format) of uint8 ``array``."""
    dims = array.shape
    header = struct.pack(">I", (0x08 << 8) | len(dims)) + struct.pack(f">{len(dims)}I", *dims)
    with open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


@pytest.fixture
def tiny_mnist(tmp_path):
    """A torchvision MNIST root with 30 training and 20 test images of noise (labels 0..9 in turn)."""
    raw = tmp_path / "data" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for split, n in (("train", 30), ("t10k", 20)):
        write_idx(raw / f"{split}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28)))
        write_idx(raw / f"{split}-labels-idx1-ubyte", np.arange(n) % 10)
    return tmp_path / "data"


@pytest.fixture
def ctrl_c_in_epoch(monkeypatch):
    """``ctrl_c_in_epoch(n)``: from then on, the n-th epoch that any run starts raises
    KeyboardInterrupt (as Ctrl-C would) before it trains."""
    from contham.experiments import Loop

    def arm(n):
        started = []
        real_epoch = Loop.epoch

        def epoch(self, number):
            started.append(number)
            if len(started) == n:
                raise KeyboardInterrupt
            return real_epoch(self, number)

        monkeypatch.setattr(Loop, "epoch", epoch)

    return arm


class ContHamHostSyncs(TorchFunctionMode):
    """Counts the calls made from contham's own code that copy a tensor's value to the host, or
    host data into a new tensor (``torch.tensor``): on CUDA each synchronises with the host, and
    none can be captured in a CUDA graph."""

    NAMES = {"item", "tolist", "numpy", "cpu", "__bool__", "__float__", "__int__", "__index__", "nonzero", "unique",
             "tensor", "as_tensor"}  # fmt: skip
    ROOT = str(Path(contham.__file__).parent)

    def __init__(self):
        super().__init__()
        self.calls = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if getattr(func, "__name__", "") in self.NAMES:
            caller = sys._getframe(1)
            if caller.f_code.co_filename.startswith(self.ROOT):
                self.calls.append(f"{func.__name__} at {caller.f_code.co_filename}:{caller.f_lineno}")
        return func(*args, **(kwargs or {}))


@pytest.fixture
def host_syncs():
    """``with host_syncs() as syncs:`` records in ``syncs.calls`` each copy between the host and a
    tensor (a device sync on CUDA) that contham's own code makes."""
    return ContHamHostSyncs
