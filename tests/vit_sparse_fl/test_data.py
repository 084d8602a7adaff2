"""CIFAR-100 pickle reader and on-device batched augmentation."""
from __future__ import annotations

import argparse
import os
import pickle
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from common import cli, synthetic_cifar
from vit_sparse_fl import data as cifar


@pytest.fixture(scope="module")
def cifar_dir(tmp_path_factory):
    return synthetic_cifar.write_cifar100(tmp_path_factory.mktemp("cifar"), n_train_per_class=3, n_test_per_class=1)


def _args(data_dir, **kw):
    base = dict(data="cifar100", data_dir=str(data_dir), download=False, num_classes=0, max_train=0,
                max_test=0, val_fraction=0.1, split_seed=0)
    return argparse.Namespace(**{**base, **kw})


def test_reads_the_python_pickles(cifar_dir):
    root = cifar.find_root(cifar_dir)
    train = cifar.read_split(root, "train")
    assert train.images.dtype == torch.uint8 and train.images.shape == (300, 3, 32, 32)
    assert sorted(train.labels.unique().tolist()) == list(range(100))
    tr, val, test, classes = cifar.load_cifar100(_args(cifar_dir), torch.device("cpu"))
    assert (len(tr), len(val), len(test), classes) == (270, 30, 100, 100)
    _, val2, _, _ = cifar.load_cifar100(_args(cifar_dir), torch.device("cpu"))
    assert torch.equal(val.labels, val2.labels) and torch.equal(val.images, val2.images)   # seeded split
    sub = cifar.load_cifar100(_args(cifar_dir, num_classes=10), torch.device("cpu"))
    assert sub[3] == 10 and int(sub[0].labels.max()) < 10 and len(sub[0]) + len(sub[1]) == 30


def test_folder_without_pickles_fails_in_one_line(tmp_path):
    with pytest.raises(cli.UsageError, match="no CIFAR-100 pickles"):
        cifar.load_cifar100(_args(tmp_path), torch.device("cpu"))
    (tmp_path / "cifar-100-python").mkdir()
    for name in ("train", "test", "meta"):
        (tmp_path / "cifar-100-python" / name).write_bytes(b"not a pickle")
    with pytest.raises(cli.UsageError, match="not a CIFAR-100 pickle"):
        cifar.load_cifar100(_args(tmp_path), torch.device("cpu"))


class _Shell:
    """Unpickling this runs a shell command: what a crafted CIFAR file would carry."""

    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


def _copy_with(cifar_dir, tmp_path, split, obj):
    """A copy of the CIFAR folder whose ``split`` pickle is ``obj``."""
    root = tmp_path / "cifar-100-python"
    shutil.copytree(cifar.find_root(cifar_dir), root)
    with open(root / split, "wb") as f:
        pickle.dump(obj, f, protocol=2)
    return root


def test_crafted_pickle_is_refused_without_running_its_payload(cifar_dir, tmp_path):
    marker = tmp_path / "pwned"
    d = {"data": np.zeros((1, 3072), np.uint8), "fine_labels": [0], "x": _Shell(f"touch {marker}")}
    root = _copy_with(cifar_dir, tmp_path, "train", d)
    with pytest.raises(cli.UsageError) as e:
        cifar.read_split(root, "train")
    assert "system" in str(e.value) and "refused" in str(e.value) and "\n" not in str(e.value)
    assert not marker.exists()


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_python3_pickles_with_numpy_arrays_are_read(cifar_dir, tmp_path, protocol):
    """A re-saved file (Python 3 bytes, NumPy arrays as protocols 2 to 5 write them) holds only what is allowed."""
    data = np.arange(2 * 3072, dtype=np.int64).astype(np.uint8).reshape(2, 3072)
    root = tmp_path / "cifar-100-python"
    shutil.copytree(cifar.find_root(cifar_dir), root)
    with open(root / "train", "wb") as f:
        pickle.dump({"data": data, "fine_labels": np.array([3, 99]), "filenames": [b"a.png", b"b.png"]}, f,
                    protocol=protocol)
    split = cifar.read_split(root, "train")
    assert split.labels.tolist() == [3, 99] and torch.equal(split.images.view(2, -1), torch.from_numpy(data))


@pytest.mark.parametrize("labels, phrase", [
    ([0, 1.5], r"\[1\] is 1.5"), ([0, True], "is True"), ([0, "3"], "is '3'"), (np.array([0.0, 1.0]), "float64"),
    ([0, 100], "label 100 is outside"), ([-1, 0], "label -1 is outside"), ([0, 2**70], "beyond 64 bits"),
    ({"a": 1}, "list of integers"), ([0], "2 images but 1 labels")])
def test_labels_that_are_not_class_ids_are_refused(cifar_dir, tmp_path, labels, phrase):
    root = _copy_with(cifar_dir, tmp_path, "train", {"data": np.zeros((2, 3072), np.uint8), "fine_labels": labels})
    with pytest.raises(cli.UsageError, match=phrase):
        cifar.read_split(root, "train")


@pytest.mark.parametrize("data", [np.zeros((2, 3072), np.float32) + 0.5, np.zeros((2, 3071), np.uint8),
                                  [[0] * 3072] * 2])
def test_image_data_not_in_the_format_is_refused(cifar_dir, tmp_path, data):
    root = _copy_with(cifar_dir, tmp_path, "train", {"data": data, "fine_labels": [0, 1]})
    with pytest.raises(cli.UsageError, match="'data' must be a uint8 array"):
        cifar.read_split(root, "train")


def test_augmentation_is_crop_flip_resize_normalise():
    g = torch.Generator().manual_seed(0)
    imgs = torch.randint(0, 256, (16, 3, 32, 32), generator=g, dtype=torch.uint8)
    out = cifar.augment(imgs, 32, torch.Generator().manual_seed(5))
    assert out.shape == (16, 3, 32, 32) and out.dtype == torch.float32
    # replay the same draws: each output is a 32x32 window of the zero-padded image, maybe mirrored
    g = torch.Generator().manual_seed(5)
    oy, ox = torch.randint(0, 9, (16,), generator=g), torch.randint(0, 9, (16,), generator=g)
    flip = torch.rand(16, generator=g) < 0.5
    padded = F.pad(imgs, (4, 4, 4, 4)).float() / 255
    mean = torch.tensor(cifar.IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(cifar.IMAGENET_STD).view(3, 1, 1)
    for i in range(16):
        win = padded[i, :, oy[i]:oy[i] + 32, ox[i]:ox[i] + 32]
        win = win.flip(2) if flip[i] else win
        torch.testing.assert_close(out[i], (win - mean) / std)
    assert 0 < int(flip.sum()) < 16 and len(set(oy.tolist())) > 1
    # evaluation: no randomness, resized to the model's input size
    ev = cifar.augment(imgs, 224, train=False)
    assert ev.shape == (16, 3, 224, 224)
    torch.testing.assert_close(ev, cifar.augment(imgs, 224, train=False))
    expected = ((imgs.float() / 255 - mean) / std).mean((2, 3))
    torch.testing.assert_close(ev.mean((2, 3)), expected, atol=0.02, rtol=0)


def _indexed_augment(images, image_size, generator):
    """The former implementation: index the crop with four broadcast index tensors, then flip."""
    B, C, H, W = images.shape
    padded = F.pad(images, (4, 4, 4, 4))
    oy = torch.randint(0, 9, (B,), generator=generator)
    ox = torch.randint(0, 9, (B,), generator=generator)
    rows = (oy[:, None] + torch.arange(H))[:, None, :, None]
    cols = (ox[:, None] + torch.arange(W))[:, None, None, :]
    x = padded[torch.arange(B)[:, None, None, None], torch.arange(C)[None, :, None, None], rows, cols]
    flip = torch.rand(B, generator=generator) < 0.5
    x = torch.where(flip[:, None, None, None], x.flip(3), x).float().div_(255.0)
    if image_size != H:
        x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", align_corners=False)
    return (x - torch.tensor(cifar.IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(cifar.IMAGENET_STD).view(1, 3, 1, 1)


@pytest.mark.parametrize("image_size", [32, 160])
def test_gathered_crop_and_flip_equal_the_indexed_ones_bit_for_bit(image_size):
    imgs = torch.randint(0, 256, (37, 3, 32, 32), generator=torch.Generator().manual_seed(1), dtype=torch.uint8)
    for seed in range(5):
        ours, ref = torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed)
        assert torch.equal(cifar.augment(imgs, image_size, ours), _indexed_augment(imgs, image_size, ref))
        assert torch.equal(torch.rand(3, generator=ours), torch.rand(3, generator=ref))   # same draws used


def test_client_batches_stay_in_the_shard():
    split = cifar.Split(torch.zeros(50, 3, 32, 32, dtype=torch.uint8), torch.arange(50))
    shard = torch.tensor([3, 7, 11, 20, 41])
    seen = [y for _, ys in cifar.batches(split, 2, 6, torch.Generator().manual_seed(0), 32, indices=shard)
            for y in ys.tolist()]
    assert len(seen) == 12 and set(seen) <= set(shard.tolist())
    assert len(set(seen[:4])) == 4            # an epoch is a permutation: no repeats before it ends
