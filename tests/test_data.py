"""Datasets: transforms of the report and the thesis, the torchvision loaders on files in
torchvision's format, balanced seeded subsets, the 2-D point sets."""

import pytest
import torch
from torch.utils.data import TensorDataset
from torchvision.transforms import v2

from contham.data import DATASETS, balanced_subset, labels_of, load_dataset, transform


def test_plain_test_transform_is_standardisation():
    test = load_dataset("digits", train=False)
    raw = test.images[0].float() / 255
    info = DATASETS["digits"]
    torch.testing.assert_close(test[0][0], (raw - info.mean[0]) / info.std[0])


def test_report_training_transform_pads_crops_and_flips():
    steps = transform("stl10", train=True).transforms
    crop = next(s for s in steps if isinstance(s, v2.RandomCrop))
    assert crop.size == (96, 96) and crop.padding == [12, 12, 12, 12]
    assert any(isinstance(s, v2.RandomHorizontalFlip) for s in steps)
    assert (
        next(s for s in transform("cifar10", train=True).transforms if isinstance(s, v2.RandomCrop)).padding == [4] * 4
    )
    assert not any(isinstance(s, v2.RandomCrop) for s in transform("cifar10", train=True, augment=False).transforms)
    train = load_dataset("digits", train=True)
    torch.manual_seed(0)
    views = torch.stack([train[3][0] for _ in range(20)])
    assert views.shape == (20, 1, 8, 8) and len({v.sum().item() for v in views}) > 1  # random views


def test_thesis_transform_upscales_and_crops_to_28():
    train = load_dataset("digits", train=True, preprocessing="thesis")
    test = load_dataset("digits", train=False, preprocessing="thesis")
    assert train[0][0].shape == (1, 28, 28) and test[0][0].shape == (1, 28, 28)
    steps = transform("mnist", train=True, preprocessing="thesis").transforms
    assert [type(s) for s in steps[2:4]] == [v2.Resize, v2.RandomCrop]


def test_mnist_loader_reads_torchvision_files(tiny_mnist):
    train = load_dataset("mnist", tiny_mnist, train=True)
    test = load_dataset("mnist", tiny_mnist, train=False, preprocessing="thesis")
    assert len(train) == 30 and len(test) == 20 and train[0][0].shape == (1, 28, 28) and test[5][1] == 5
    assert labels_of(balanced_subset(train, 0.5, seed=1)).bincount().tolist() == [2] * 10


def test_missing_data_and_bad_names_raise(tmp_path):
    with pytest.raises(ValueError, match=r"dataset='cifar10' not found under root=.*download=True"):
        load_dataset("cifar10", tmp_path)
    with pytest.raises(
        ValueError, match="dataset='mnist' needs root=<a torchvision data folder> .*download=true.*dataset=digits"
    ):
        load_dataset("mnist")
    with pytest.raises(ValueError, match="dataset must be one of 'mnist'"):
        load_dataset("imagenet", tmp_path)
    with pytest.raises(ValueError, match="preprocessing must be one of 'report', 'thesis', 'plain'"):
        load_dataset("digits", preprocessing="chang")


def test_balanced_subsets_are_balanced_and_seeded():
    data = TensorDataset(torch.zeros(1000, 2), torch.arange(1000) % 4)
    a, b, c = (balanced_subset(data, 0.1, seed=s) for s in (0, 0, 1))
    assert labels_of(a).bincount().tolist() == [25, 25, 25, 25]
    assert a.indices == b.indices and a.indices != c.indices
    assert balanced_subset(data, 1.0) is data
    assert len(balanced_subset(data, 0.001)) == 4  # at least one per class
    for bad in (0, 1.5, -0.1):
        with pytest.raises(ValueError, match="fraction"):
            balanced_subset(data, bad)
