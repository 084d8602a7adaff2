"""CIFAR-100 python pickles (``cifar-100-python/{train,test,meta}``) with the real class and superclass
names, pickled as the real files are (Python 2 ``str`` keys, so readers using ``encoding="bytes"`` and
``encoding="latin1"`` both work), and images that are learnable: each class has a template (superclass
colour, smooth field, oriented stripes) seen through random flips, contrast, shifts and noise.
"""
from __future__ import annotations

import pickle
import struct
from pathlib import Path

import numpy as np

from common.seed import numpy_rng

_CIFAR_COARSE = {
    "aquatic_mammals": "beaver dolphin otter seal whale",
    "fish": "aquarium_fish flatfish ray shark trout",
    "flowers": "orchid poppy rose sunflower tulip",
    "food_containers": "bottle bowl can cup plate",
    "fruit_and_vegetables": "apple mushroom orange pear sweet_pepper",
    "household_electrical_devices": "clock keyboard lamp telephone television",
    "household_furniture": "bed chair couch table wardrobe",
    "insects": "bee beetle butterfly caterpillar cockroach",
    "large_carnivores": "bear leopard lion tiger wolf",
    "large_man-made_outdoor_things": "bridge castle house road skyscraper",
    "large_natural_outdoor_scenes": "cloud forest mountain plain sea",
    "large_omnivores_and_herbivores": "camel cattle chimpanzee elephant kangaroo",
    "medium_mammals": "fox porcupine possum raccoon skunk",
    "non-insect_invertebrates": "crab lobster snail spider worm",
    "people": "baby boy girl man woman",
    "reptiles": "crocodile dinosaur lizard snake turtle",
    "small_mammals": "hamster mouse rabbit shrew squirrel",
    "trees": "maple_tree oak_tree palm_tree pine_tree willow_tree",
    "vehicles_1": "bicycle bus motorcycle pickup_truck train",
    "vehicles_2": "lawn_mower rocket streetcar tank tractor",
}
CIFAR100_COARSE_NAMES = sorted(_CIFAR_COARSE)
CIFAR100_FINE_NAMES = sorted(w for ws in _CIFAR_COARSE.values() for w in ws.split())
CIFAR100_FINE_TO_COARSE = [  # fine label id -> coarse label id
    next(c for c, g in enumerate(CIFAR100_COARSE_NAMES) if f in _CIFAR_COARSE[g].split())
    for f in CIFAR100_FINE_NAMES]


class _Py2Pickler(pickle._Pickler):
    """Writes ``bytes`` as Python 2 ``str`` opcodes, as the real CIFAR pickles hold them, so a reader
    gets b"data" keys with ``encoding="bytes"`` and "data" keys with ``encoding="latin1"``."""
    dispatch = pickle._Pickler.dispatch.copy()

    def save_py2_str(self, obj: bytes) -> None:
        n = len(obj)
        head = pickle.SHORT_BINSTRING + bytes([n]) if n < 256 else pickle.BINSTRING + struct.pack("<i", n)
        self.write(head + obj)
        self.memoize(obj)

    dispatch[bytes] = save_py2_str


def _cifar_templates(rng: np.random.Generator) -> np.ndarray:
    """[100, 3, 32, 32] float32 class templates: a colour shared within the superclass, a smooth random
    field (4x4 upsampled) and oriented stripes of class-specific frequency."""
    coarse_rgb = rng.uniform(50, 205, size=(20, 3))
    rgb = coarse_rgb[CIFAR100_FINE_TO_COARSE] + rng.normal(0, 15, size=(100, 3))
    field = np.kron(rng.normal(0, 22, size=(100, 3, 4, 4)), np.ones((8, 8)))
    yy, xx = np.mgrid[0:32, 0:32] / 32.0
    theta, freq = rng.uniform(0, np.pi, 100), rng.uniform(1, 4, 100)
    c, s = np.cos(theta)[:, None, None], np.sin(theta)[:, None, None]
    phase = 2 * np.pi * freq[:, None, None] * (c * xx + s * yy)
    stripes = 18 * np.sin(phase)[:, None] * rng.choice([-1, 1], size=(100, 3))[:, :, None, None]
    return (rgb[:, :, None, None] + field + stripes).astype(np.float32)


def _cifar_images(templates: np.ndarray, fine: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """uint8 [n, 3072]: templates flipped at random, contrast-scaled, shifted and noised (float32 math)."""
    n = len(fine)
    imgs = templates[fine]                                                            # [n, 3, 32, 32]
    flip = rng.random(n) < 0.5                                      # horizontal flips, as in photos
    imgs[flip] = imgs[flip, :, :, ::-1]
    mean = imgs.mean(axis=(1, 2, 3), keepdims=True)
    imgs = mean + rng.uniform(0.6, 1.4, (n, 1, 1, 1)).astype(np.float32) * (imgs - mean)        # contrast
    shift = rng.integers(-4, 5, size=(n, 2))                        # cyclic shifts of up to 4 pixels
    iy = (np.arange(32)[None] - shift[:, :1]) % 32                                    # [n, 32]
    ix = (np.arange(32)[None] - shift[:, 1:]) % 32
    imgs = imgs[np.arange(n)[:, None, None, None], np.arange(3)[None, :, None, None],
                iy[:, None, :, None], ix[:, None, None, :]]
    imgs += rng.normal(0, 20, (n, 1, 1, 1)).astype(np.float32)                          # brightness
    imgs += 50 * rng.standard_normal((n, 3, 32, 32), dtype=np.float32)                  # pixel noise
    return np.clip(np.rint(imgs), 0, 255).astype(np.uint8).reshape(n, 3072)


def write_cifar100(out_dir, n_train_per_class: int = 20, n_test_per_class: int = 5, seed: int = 0) -> Path:
    """``out_dir/cifar-100-python/{train,test,meta}`` as the real pickles: dicts with b"data" (uint8 [N, 3072],
    R, G, B planes of 32x32), b"fine_labels", b"coarse_labels", b"filenames", b"batch_label"; meta with the
    real b"fine_label_names", b"coarse_label_names". Images (``_cifar_images``, N(0, 50) pixel noise) are
    learnable (a nearest class mean beats 1% chance by far), not trivially separable. Returns ``out_dir``
    (torchvision's ``CIFAR100`` root)."""
    out = Path(out_dir)
    folder = out / "cifar-100-python"
    folder.mkdir(parents=True, exist_ok=True)
    templates = _cifar_templates(numpy_rng(seed, "cifar100", "templates"))
    for split, per_class, label in (("train", n_train_per_class, b"training batch 1 of 1"),
                                    ("test", n_test_per_class, b"testing batch 1 of 1")):
        rng = numpy_rng(seed, "cifar100", split)
        fine = rng.permutation(np.repeat(np.arange(100), per_class))
        data = np.empty((len(fine), 3072), dtype=np.uint8)
        for lo in range(0, len(fine), 2048):                 # chunks keep the float copies small
            data[lo:lo + 2048] = _cifar_images(templates, fine[lo:lo + 2048], rng)
        names = [f"{CIFAR100_FINE_NAMES[f]}_s_{rng.integers(1000000):06d}.png".encode() for f in fine]
        obj = {b"filenames": names, b"batch_label": label, b"fine_labels": fine.tolist(),
               b"coarse_labels": [CIFAR100_FINE_TO_COARSE[f] for f in fine], b"data": data}
        with open(folder / split, "wb") as f:
            _Py2Pickler(f, protocol=2).dump(obj)
    with open(folder / "meta", "wb") as f:
        _Py2Pickler(f, protocol=2).dump({b"fine_label_names": [n.encode() for n in CIFAR100_FINE_NAMES],
                                         b"coarse_label_names": [n.encode() for n in CIFAR100_COARSE_NAMES]})
    return out

