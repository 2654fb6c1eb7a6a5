"""The batched, on-device data path gives the images and the augmentation distribution of the
per-sample torchvision transforms; image sets decode once (CIFAR cached next to the root)."""

import pickle

import numpy as np
import pytest
import torch
import torchvision
from torchvision.transforms.v2 import functional as TF

from contham.augment import THESIS_CROP, BatchPreprocess
from contham.data import DATASETS, ImageSet, balanced_subset, load_dataset, load_image_set, load_images, transform


def preprocess(name, preprocessing, train=True, augment=True):
    info = DATASETS[name]
    return BatchPreprocess(info.mean, info.std, info.image_size, preprocessing, train=train, augment=augment,
                           crop_padding=info.crop_padding)  # fmt: skip


def per_sample(image, name, preprocessing, top, left, flip):
    """torchvision's functional ops with the given random parameters (what RandomCrop and
    RandomHorizontalFlip do once they have drawn them)."""
    info = DATASETS[name]
    x = TF.to_dtype(TF.to_image(image), torch.float32, scale=True)
    if preprocessing == "thesis":
        x = TF.crop(TF.resize(x, [32]), top, left, 28, 28)
    else:
        x = TF.crop(TF.pad(x, [info.crop_padding]), top, left, info.image_size, info.image_size)
        x = TF.horizontal_flip(x) if flip else x
    return TF.normalize(x, list(info.mean), list(info.std))


@pytest.mark.parametrize(
    "name, preprocessing, channels, size",
    [("mnist", "thesis", 1, 28), ("digits", "thesis", 1, 8), ("cifar10", "report", 3, 32), ("stl10", "report", 3, 96)],
)
def test_batched_crop_and_flip_equal_the_per_sample_transforms(name, preprocessing, channels, size):
    images = torch.randint(0, 256, (6, channels, size, size), dtype=torch.uint8)
    batch = preprocess(name, preprocessing)
    params = batch.draw(6, torch.Generator().manual_seed(1))
    params[0] = torch.tensor([0, params[0, 1], 1 if preprocessing == "report" else 0])  # an edge and a flip
    out = batch(images, params)
    expected = torch.stack([per_sample(images[i], name, preprocessing, *params[i].tolist()) for i in range(6)])
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name, preprocessing", [("digits", "thesis"), ("digits", "report"), ("cifar10", "plain"),
                                                 ("mnist", "thesis"), ("stl10", "report")])  # fmt: skip
@pytest.mark.parametrize("train, augment", [(False, True), (True, False)])
def test_deterministic_splits_equal_the_torchvision_pipeline(name, preprocessing, train, augment):
    info = DATASETS[name]
    images = torch.randint(0, 256, (4, info.channels, info.image_size, info.image_size), dtype=torch.uint8)
    tf = transform(name, train, preprocessing, augment)
    expected = torch.stack([tf(image) for image in images])
    torch.testing.assert_close(preprocess(name, preprocessing, train, augment)(images), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("preprocessing", ["report", "thesis"])
def test_augmented_images_have_the_per_sample_distribution(preprocessing):
    """Mean and spread of 4,000 augmented views of one image, per pixel: batched vs torchvision's
    random transforms (agreement within sampling error), and the offsets uniform."""
    name = "digits" if preprocessing == "report" else "mnist"
    info = DATASETS[name]
    generator = torch.Generator().manual_seed(0)
    image = torch.randint(0, 256, (1, info.image_size, info.image_size), generator=generator, dtype=torch.uint8)
    n = 4000
    batch = preprocess(name, preprocessing)
    params = batch.draw(n, generator)
    ours = batch(image.expand(n, -1, -1, -1).contiguous(), params)
    tf = transform(name, True, preprocessing)
    torch.manual_seed(0)
    theirs = torch.stack([tf(image) for _ in range(n)])
    spread = theirs.std(0).max()
    assert (ours.mean(0) - theirs.mean(0)).abs().max() < 6 * spread / n**0.5
    assert (ours.std(0) - theirs.std(0)).abs().max() < 0.1 * spread
    span = 4 if preprocessing == "thesis" else 2 * info.crop_padding
    counts = torch.bincount(params[:, :2].flatten(), minlength=span + 1).float()
    assert counts.numel() == span + 1 and (counts / counts.mean() - 1).abs().max() < 0.1
    if preprocessing == "report":
        assert abs(params[:, 2].float().mean() - 0.5) < 0.03


def test_image_set_matches_load_dataset_and_subsets_stay_tensors(tiny_mnist):
    tensors = load_image_set("mnist", tiny_mnist, train=False, preprocessing="thesis")
    per_item = load_dataset("mnist", tiny_mnist, train=False, preprocessing="thesis")
    assert len(tensors) == len(per_item) == 20
    for i in (0, 7):
        torch.testing.assert_close(tensors[i][0], per_item[i][0])
        assert tensors[i][1] == per_item[i][1]
    x, y = tensors.batch(torch.tensor([7, 0]), torch.device("cpu"))
    torch.testing.assert_close(x, torch.stack([per_item[7][0], per_item[0][0]]))
    assert y.tolist() == [per_item[7][1], per_item[0][1]]
    half = balanced_subset(tensors, 0.5, seed=1)
    assert isinstance(half, ImageSet) and len(half) == 10 and sorted(half.targets.tolist()) == list(range(10))


def test_cifar_is_decoded_once_and_cached_next_to_the_root(tmp_path, monkeypatch):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, (4, 3072), dtype=np.uint8)
        with open(folder / name, "wb") as handle:
            pickle.dump({"data": data, "labels": list(range(4))}, handle)
    with open(folder / "batches.meta", "wb") as handle:
        pickle.dump({"label_names": [str(i) for i in range(10)]}, handle)
    monkeypatch.setattr(torchvision.datasets.CIFAR10, "_check_integrity", lambda self: True)  # no md5 of real files
    monkeypatch.setattr("torchvision.datasets.cifar.check_integrity", lambda *a, **k: True)
    images, labels = load_images("cifar10", tmp_path, train=True)
    assert images.shape == (20, 3, 32, 32) and images.dtype == torch.uint8 and labels.tolist() == list(range(4)) * 5
    raw = torchvision.datasets.CIFAR10(tmp_path, train=True)
    assert torch.equal(images[5], torch.from_numpy(raw.data[5]).permute(2, 0, 1))  # HWC -> CHW
    assert (tmp_path / "contham-cache" / "cifar10-train.pt").exists()
    monkeypatch.setattr("contham.data.load_dataset", lambda *a, **k: pytest.fail("decoded again"))
    again, _ = load_images("cifar10", tmp_path, train=True)
    assert torch.equal(again, images)
    augmented = load_image_set("cifar10", tmp_path, train=True)
    assert augmented[0][0].shape == (3, 32, 32) and augmented.preprocess.random


@pytest.mark.parametrize("name, preprocessing", [("mnist", "thesis"), ("cifar10", "report"), ("mnist", "plain")])
@pytest.mark.parametrize("train", [True, False], ids=["train", "test"])
def test_a_batch_is_preprocessed_on_its_device(name, preprocessing, train):
    """The images and the drawn augmentation go to the device and the preprocessing runs there: on
    a device that is not the CPU (``meta``: shapes without data), a tensor made on the CPU and
    combined with the batch would fail, as on CUDA, which the tests' machines do not have."""
    info = DATASETS[name]
    images = torch.randint(0, 256, (6, info.channels, info.image_size, info.image_size), dtype=torch.uint8)
    images_set = ImageSet(images, torch.arange(6) % 10, preprocess(name, preprocessing, train=train))
    params = images_set.preprocess.draw(4, torch.Generator().manual_seed(0))
    x, y = images_set.batch(torch.tensor([5, 0, 2, 3]), torch.device("meta"), params)
    size = THESIS_CROP if preprocessing == "thesis" else info.image_size
    assert x.is_meta and y.is_meta and x.shape == (4, info.channels, size, size)
