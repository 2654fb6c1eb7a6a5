"""The seeds' image preprocessing applied to whole batches as tensor ops, on any device.

`BatchPreprocess` takes a batch of uint8 images ``(B, C, H, W)`` (already on the training
device) and returns the float batch that the per-sample torchvision pipeline of
`contham.data.transform` would give, image by image:

* ``"report"``: with augmentation, zero-pad by ``p`` (4; 12 for STL-10), crop back to size at a
  random offset ``(top, left)`` in ``[0, 2p]^2`` and flip horizontally with probability 1/2;
* ``"thesis"``: with augmentation, upscale to 32 (bilinear, antialiased) and crop 28 at a random
  offset in ``[0, 4]^2``; without, resize to 28;
* ``"plain"``: nothing;

then standardise per channel. The random parameters are drawn on the host by `draw`, three
integers per image from a ``torch.Generator``, so that a run gets the same augmentations on CPU
and on CUDA, after a resumption, and split over any number of ranks (each rank takes its rows of
the global batch's parameters). Crop and flip are one gather.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._checks import check_bool, check_choice

PREPROCESSINGS = ("report", "thesis", "plain")
THESIS_UPSCALE, THESIS_CROP = 32, 28


class BatchPreprocess(nn.Module):
    """The preprocessing of one split of an image set, for batches.

    Args:
        mean: per-channel means for the standardisation.
        std: per-channel standard deviations for the standardisation.
        image_size: the set's image height and width.
        preprocessing: "report", "thesis" or "plain".
        train: the training split (random augmentation where the preprocessing has one).
        augment: False turns the augmentation off (``learning.crop_and_flip``).
        crop_padding: the report's zero padding.
    """

    mean: Tensor
    std: Tensor

    def __init__(
        self,
        mean: tuple[float, ...],
        std: tuple[float, ...],
        image_size: int,
        preprocessing: str = "report",
        *,
        train: bool = True,
        augment: bool = True,
        crop_padding: int = 4,
    ):
        super().__init__()
        self.preprocessing = check_choice("preprocessing", preprocessing, PREPROCESSINGS)
        self.train_split, self.image_size, self.crop_padding = check_bool("train", train), image_size, crop_padding
        self.random = train and check_bool("augment", augment) and preprocessing != "plain"
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)

    @property
    def output_size(self) -> int:
        """Height and width of the preprocessed images."""
        return THESIS_CROP if self.preprocessing == "thesis" else self.image_size

    def draw(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """Random parameters of ``n`` images: int64 ``(n, 3)`` rows ``(top, left, flip)``, drawn on
        the host from the distributions of torchvision's ``RandomCrop`` (offsets uniform over all
        positions) and ``RandomHorizontalFlip`` (p = 1/2); zeros without augmentation."""
        if not self.random:
            return torch.zeros(n, 3, dtype=torch.long)
        span = THESIS_UPSCALE - THESIS_CROP if self.preprocessing == "thesis" else 2 * self.crop_padding
        params = torch.randint(0, span + 1, (n, 2), generator=generator)
        flip = torch.zeros(n, dtype=torch.long)
        if self.preprocessing == "report":
            flip = (torch.rand(n, generator=generator) < 0.5).long()
        return torch.cat([params, flip[:, None]], 1)

    def forward(self, images: Tensor, params: Tensor | None = None) -> Tensor:
        """The float batch from uint8 ``images`` ``(B, C, H, W)`` and ``params`` from `draw`
        (on any device; None: drawn from torch's global generator)."""
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise ValueError(f"images must be a uint8 batch (B, C, H, W); got {images.dtype} {tuple(images.shape)}")
        x = images.float() / 255
        if self.preprocessing == "thesis":
            size = THESIS_UPSCALE if self.random else THESIS_CROP
            if x.shape[-1] != size or x.shape[-2] != size:
                x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        if self.random:
            if params is None:
                params = self.draw(len(x))
            params = params.to(x.device, non_blocking=True)
            if self.preprocessing == "report":
                p = self.crop_padding
                x = F.pad(x, (p, p, p, p))
            x = _crop_and_flip(x, params, self.output_size)
        return (x - self.mean) / self.std

    def extra_repr(self) -> str:
        return f"{self.preprocessing}, train={self.train_split}, random={self.random}, size={self.output_size}"


def _crop_and_flip(x: Tensor, params: Tensor, size: int) -> Tensor:
    """``x[b, :, top_b : top_b + size, left_b : left_b + size]``, mirrored where ``flip_b``: one gather."""
    steps = torch.arange(size, device=x.device)
    rows = params[:, :1] + steps  # (B, size)
    cols = params[:, 1:2] + torch.where(params[:, 2:3].bool(), size - 1 - steps, steps)
    b = torch.arange(len(x), device=x.device)[:, None, None, None]
    c = torch.arange(x.shape[1], device=x.device)[None, :, None, None]
    return x[b, c, rows[:, None, :, None], cols[:, None, None, :]]
