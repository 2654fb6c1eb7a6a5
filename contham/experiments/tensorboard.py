"""TensorBoard event files of a run, when TensorBoard is installed (``pip install
"contham[tensorboard]"``): per epoch the training and test loss and accuracy, the learning rate,
seconds, field evaluations per batch, peak memory and (with ``gradient_norms``) every gradient
norm, so that ``tensorboard --logdir runs`` shows the runs of a grid or a comparison side by side.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

SCALARS = {
    "train_loss": "loss/train",
    "test_loss": "loss/test",
    "train_accuracy": "accuracy/train",
    "test_accuracy": "accuracy/test",
    "lr": "lr",
    "seconds": "seconds",
    "nfe_forward": "nfe/forward",
    "nfe_backward": "nfe/backward",
    "peak_memory_mb": "memory/peak_mb",
    "saved_tensors_mb": "memory/autograd_mb",
}
"""History keys and their TensorBoard tags."""


def available() -> bool:
    """Whether TensorBoard is installed."""
    return importlib.util.find_spec("tensorboard") is not None


class EpochLog:
    """Writes each epoch's history entry to event files in ``run_dir`` (nothing when TensorBoard
    is not installed). A run resumed after epoch ``start`` drops events of later epochs that an
    interrupted process had written."""

    def __init__(self, run_dir: Path, start: int = 0):
        self.writer: Any = None
        if available():
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(run_dir), purge_step=start + 1 if start else None)

    def write(self, entry: dict[str, Any]) -> None:
        """Add the scalars of one history entry at its epoch."""
        if self.writer is None:
            return
        epoch = entry["epoch"]
        for key, tag in SCALARS.items():
            if entry.get(key) is not None:
                self.writer.add_scalar(tag, entry[key], epoch)
        for name, norm in entry.get("gradient_norms", {}).items():
            self.writer.add_scalar(f"gradient_norm/{name}", norm, epoch)
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
