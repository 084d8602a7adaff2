"""CIFAR-100 from the python-pickle distribution, kept as uint8 on the device, with batched augmentation.

The tarball unpacks to ``cifar-100-python/{train,test,meta}``: pickled dicts with ``data`` (uint8 [N, 3072],
channel-major 32x32 RGB) and ``fine_labels``. Images stay uint8 [N, 3, 32, 32] on the device; ``augment`` turns
a batch into normalised floats with tensor ops (no PIL, no per-image Python).
"""
from __future__ import annotations

import contextlib
import importlib
import pickle
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from common import cli
from common import distributed as D

CIFAR100_URL = "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"
NUM_CLASSES = 100
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class Split:
    images: torch.Tensor   # uint8 [N, 3, 32, 32]; --data ag_news: int64 token ids [N, L]
    labels: torch.Tensor   # int64 [N]

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def to(self, device) -> Split:
        return Split(self.images.to(device), self.labels.to(device))

    def subset(self, idx) -> Split:
        idx = torch.as_tensor(idx, dtype=torch.long, device=self.labels.device)
        return Split(self.images[idx], self.labels[idx])


def find_root(data_dir: str | Path) -> Path:
    """The folder holding train/test/meta: ``data_dir`` itself or ``data_dir/cifar-100-python``."""
    data_dir = Path(data_dir)
    for cand in (data_dir / "cifar-100-python", data_dir):
        if all((cand / f).is_file() for f in ("train", "test", "meta")):
            return cand
    raise cli.UsageError(f"--data-dir {data_dir}: no CIFAR-100 pickles (cifar-100-python/train, test, meta); "
                         "pass the folder that holds cifar-100-python, or --download when online")


def download(data_dir: str | Path) -> Path:
    """Fetch and unpack the official tarball into ``data_dir`` unless already there."""
    data_dir = Path(data_dir)
    with contextlib.suppress(cli.UsageError):
        return find_root(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    archive = data_dir / "cifar-100-python.tar.gz"
    try:
        torch.hub.download_url_to_file(CIFAR100_URL, str(archive), progress=False)
    except Exception as e:
        raise cli.UsageError(f"--download: could not fetch {CIFAR100_URL} ({type(e).__name__}); "
                             "download it by hand and pass --data-dir") from None
    with tarfile.open(archive, "r:gz") as tar:
        tar.extractall(data_dir, filter="data")
    return find_root(data_dir)


def _latin1_encode(text: str, encoding: str = "latin1") -> bytes:
    """``_codecs.encode`` as Python 3 protocol-2 pickles use it for ``bytes``, for latin-1 only."""
    if encoding.replace("-", "").replace("_", "").lower() != "latin1" or not isinstance(text, str):
        raise pickle.UnpicklingError(f"_codecs.encode with encoding {encoding!r} is not in the CIFAR format")
    return text.encode("latin1")


def _numpy_private(module: str, name: str):
    """``numpy._core.<module>.<name>`` (NumPy 2), else ``numpy.core.<module>.<name>`` (NumPy 1)."""
    try:
        return getattr(importlib.import_module(f"numpy._core.{module}"), name)
    except ImportError:
        return getattr(importlib.import_module(f"numpy.core.{module}"), name)


# Every global a CIFAR-100 pickle may name: NumPy's array reconstruction (protocols 2-4: _reconstruct; 5:
# _frombuffer; NumPy 1 and 2 module names) and protocol-2 bytes; any other name is refused before it is looked up.
_CIFAR_GLOBALS = {
    **{(f"numpy.{core}.{module}", name): _numpy_private(module, name) for core in ("core", "_core")
       for module, name in (("multiarray", "_reconstruct"), ("numeric", "_frombuffer"))},
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): _latin1_encode,
}


class _CifarUnpickler(pickle.Unpickler):
    """Builds only containers, strings, numbers and NumPy arrays: a crafted file runs none of its code."""

    def find_class(self, module: str, name: str):
        try:
            return _CIFAR_GLOBALS[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"it asks for {module}.{name}, which a CIFAR-100 pickle never holds; "
                                         "refused without running it (was it crafted?)") from None


def _labels(values, path: Path) -> torch.Tensor:
    """``fine_labels`` as int64, refusing what is not an integer (1.5 would otherwise be truncated to 1)."""
    if isinstance(values, np.ndarray):
        cli.check(values.ndim == 1 and values.dtype.kind in "iu",
                  f"{path}: 'fine_labels' must be integers, got a {values.dtype} array of shape {values.shape}")
        values = values.tolist()
    cli.check(isinstance(values, (list, tuple)), f"{path}: 'fine_labels' must be a list of integers, "
                                                 f"got {type(values).__name__}")
    for i, v in enumerate(values):
        cli.check(type(v) is int, f"{path}: 'fine_labels'[{i}] is {v!r}; labels must be integers")
    try:
        return torch.tensor(values, dtype=torch.long)
    except (RuntimeError, OverflowError, ValueError):  # an integer beyond int64
        raise cli.UsageError(f"{path}: 'fine_labels' holds an integer beyond 64 bits") from None


def read_split(root: Path, name: str) -> Split:
    """``name`` in {train, test} -> Split on the CPU (fine labels)."""
    path = root / name
    try:
        with open(path, "rb") as f:
            d = _CifarUnpickler(f, encoding="latin1").load()
    except Exception as e:  # noqa: BLE001 -- whatever a broken pickle raises, the file is not usable
        raise cli.UsageError(f"{path}: not a CIFAR-100 pickle ({type(e).__name__}: {e})") from None
    cli.check(isinstance(d, dict), f"{path}: not a CIFAR-100 pickle (a {type(d).__name__}, not a dict)")
    cli.check("data" in d and "fine_labels" in d, f"{path}: missing 'data' or 'fine_labels'")
    data = d["data"]
    cli.check(isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 2 and data.shape[1] == 3072,
              f"{path}: 'data' must be a uint8 array [N, 3072], got "
              + (f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__))
    images = torch.from_numpy(data.reshape(-1, 3, 32, 32).copy())
    labels = _labels(d["fine_labels"], path)
    cli.check(len(labels) == len(images), f"{path}: {len(images)} images but {labels.numel()} labels")
    cli.check(len(labels) > 0, f"{path}: no images; expected a CIFAR-100 split")
    lo, hi = int(labels.min()), int(labels.max())
    cli.check(0 <= lo and hi < NUM_CLASSES, f"{path}: fine label {lo if lo < 0 else hi} is outside "
                                            f"0..{NUM_CLASSES - 1} (CIFAR-100 has {NUM_CLASSES} classes)")
    return Split(images, labels)


def data_root(args) -> Path:
    """The folder holding the train/test/meta pickles the run reads (the embedded data made if needed)."""
    if args.data == "synthetic":
        from common import synthetic
        n_train, n_test = getattr(args, "synthetic_per_class", None) or (100, 20)
        return find_root(synthetic.ensure("cifar100", n_train_per_class=n_train, n_test_per_class=n_test))
    cli.check(args.data_dir is not None, "--data cifar100 needs --data-dir (or --download)")
    return download(args.data_dir) if args.download else find_root(args.data_dir)


def fingerprint(args, train: Split, val: Split, test: Split) -> dict:
    """``common.runlog.data_fingerprint`` of the files read and the split sizes (for --resume)."""
    from common import runlog
    if args.data == "ag_news":
        from vit_sparse_fl import text
        root, files = Path(args.data_dir), text.csv_files(args.data_dir)
    else:
        root = data_root(args)
        files = [root / "train", root / "test"]
    return runlog.data_fingerprint(args.data, root if args.data != "synthetic" else None, files=files,
                                   splits={"train": len(train), "val": len(val), "test": len(test)})


def load_cifar100(args, device) -> tuple[Split, Split, Split, int]:
    """(train, val, test, num_classes) on ``device``; validation is a ``--val-fraction`` of the training set
    keyed by ``--split-seed`` (the same for every run seed)."""
    if args.data == "ag_news":       # token ids in place of the images (vit_sparse_fl/text.py)
        from vit_sparse_fl import text
        full, test = (Split(*pair) for pair in text.read_splits(args))
    else:  # embedded data: default 100 train / 20 test images per class (20 clients each hold a few dozen images)
        root = data_root(args)
        full, test = read_split(root, "train"), read_split(root, "test")
    num_classes = int(max(full.labels.max(), test.labels.max())) + 1
    first, last = class_range(args, num_classes)
    if (first, last) != (0, num_classes):
        full, test = keep_classes(full, first, last), keep_classes(test, first, last)
        num_classes = last - first
    if args.max_train:
        full = full.subset(torch.arange(min(args.max_train, len(full))))
    if args.max_test:
        test = test.subset(torch.arange(min(args.max_test, len(test))))
    perm = torch.randperm(len(full), generator=torch.Generator().manual_seed(args.split_seed))
    n_val = int(round(args.val_fraction * len(full)))
    val, train = full.subset(perm[:n_val].sort().values), full.subset(perm[n_val:].sort().values)
    return train.to(device), val.to(device), test.to(device), num_classes


def class_range(args, num_classes: int) -> tuple[int, int]:
    """[first, last) of the classes kept: ``--classes FIRST LAST``, else ``--num-classes N`` (0..N-1), else all."""
    classes = getattr(args, "classes", None)
    if classes:
        first, last = classes
        cli.check(0 <= first < last <= num_classes,
                  f"--classes {first} {last}: need 0 <= FIRST < LAST <= {num_classes} (the classes of the data)")
        cli.check(not args.num_classes, "--classes and --num-classes are alternatives; pass one")
        return first, last
    if args.num_classes:
        cli.check(args.num_classes <= num_classes,
                  f"--num-classes {args.num_classes} exceeds the {num_classes} classes of the data")
        return 0, args.num_classes
    return 0, num_classes


def keep_classes(split: Split, first: int, last: int) -> Split:
    """The images of classes first..last-1, relabelled 0..last-first-1 (order kept)."""
    keep = (split.labels >= first) & (split.labels < last)
    return Split(split.images[keep], split.labels[keep] - first)


def augment(images: torch.Tensor, image_size: int, generator: torch.Generator | None = None,
            train: bool = True) -> torch.Tensor:
    """uint8 [B, 3, 32, 32] -> normalised float [B, 3, S, S]; token ids (``--data ag_news``) pass through.

    Training: random crop with zero padding 4 and horizontal flip with probability 1/2 (from ``generator``),
    done as one ``gather`` of the padded batch (a quarter of the cost of cropping then flipping; the same
    pixels from the same draws); then, as in evaluation, bilinear resize and ImageNet normalisation."""
    if images.dtype != torch.uint8:
        return images
    B, C, H, W = images.shape
    dev = images.device
    if train:
        pad = 4
        padded = F.pad(images, (pad, pad, pad, pad))                     # [B, C, H+8, W+8], zeros
        oy = torch.randint(0, 2 * pad + 1, (B,), generator=generator, device=dev)
        ox = torch.randint(0, 2 * pad + 1, (B,), generator=generator, device=dev)
        flip = torch.rand(B, generator=generator, device=dev) < 0.5
        row, col = _made_once(("ramps", H, W, dev), lambda: (torch.arange(H, device=dev), torch.arange(W, device=dev)))
        cols = ox[:, None] + torch.where(flip[:, None], col.flip(0), col)               # [B, W]
        src = (oy[:, None, None] + row[:, None]) * (W + 2 * pad) + cols[:, None, :]      # [B, H, W]
        images = padded.view(B, C, -1).gather(2, src.view(B, 1, H * W).expand(B, C, H * W)).view(B, C, H, W)
    x = images.float().div_(255.0)
    if image_size != H:
        x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", align_corners=False)
    mean, std = _made_once(("mean_std", dev), lambda: (torch.tensor(IMAGENET_MEAN, device=dev).view(1, 3, 1, 1),
                                                       torch.tensor(IMAGENET_STD, device=dev).view(1, 3, 1, 1)))
    return (x - mean) / std


_CONSTANTS: dict = {}


def _made_once(key: tuple, make):
    """``make()``, made once per ``key`` (constant tensors on a device)."""
    if key not in _CONSTANTS:
        with torch.inference_mode(False):                    # ordinary tensors, even when first made in eval
            _CONSTANTS[key] = make()
    return _CONSTANTS[key]


def batches(split: Split, batch_size: int, steps: int, generator: torch.Generator, image_size: int,
            augment_train: bool = True, indices: torch.Tensor | None = None):
    """``steps`` training batches (inputs [B, 3, S, S], labels [B]) drawn by epochs of a seeded permutation of
    the split or of ``indices`` (one client's shard)."""
    dev = split.labels.device
    n = len(split) if indices is None else len(indices)
    perm, pos = torch.randperm(n, generator=generator, device=dev), 0
    for _ in range(steps):
        if pos + batch_size > n and pos > 0:
            perm, pos = torch.randperm(n, generator=generator, device=dev), 0
        idx = perm[pos:pos + batch_size]
        pos += batch_size
        if indices is not None:
            idx = indices[idx]
        yield augment(split.images[idx], image_size, generator, train=augment_train), split.labels[idx]


def eval_batches(split: Split, batch_size: int, image_size: int, shard: bool = False):
    """(images, labels) batches in order, unaugmented; ``shard``: under torchrun only this rank's share."""
    for i in D.my_batch_starts(len(split), batch_size, shard):
        yield augment(split.images[i:i + batch_size], image_size, train=False), split.labels[i:i + batch_size]
