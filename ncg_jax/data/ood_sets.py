"""External OOD test sets per in-distribution base, grouped as OpenOOD v1.5 does.

CIFAR-10 (Zhang et al., "OpenOOD v1.5", 2023): near-OOD CIFAR-100 and TinyImageNet (here
TFDS `imagenet_resized/32x32` validation, 1,000 ImageNet classes downsampled; OpenOOD's TIN
also drops the classes that overlap CIFAR, which this does not); far-OOD MNIST, SVHN
(`svhn_cropped`), Textures (`dtd`) and Places365 (`places365_small`). Each set is brought to
the ID image shape the way OpenOOD's test transform does (shorter side resized, centre
crop, grayscale to RGB) and capped at a seeded sample of `max_n` images.
Prepare them once with `python -m ncg_jax.data.prepare cifar10-ood`.
"""
import numpy as np

from ncg_jax.data import images, tfds_io

# base -> group -> set name -> (TFDS name, split)
OOD_SETS = {
    "cifar10": {
        "near": {"cifar100": ("cifar100", "test"),
                 "tin": ("imagenet_resized/32x32", "validation")},
        "far": {"mnist": ("mnist", "test"), "svhn": ("svhn_cropped", "test"),
                "textures": ("dtd", "test"), "places365": ("places365_small", "validation")},
    },
}


def groups(base: str) -> dict[str, list[str]]:
  return {g: list(sets) for g, sets in OOD_SETS.get(base, {}).items()}


def load(base: str, shape: tuple[int, int, int], data_dir: str | None = None,
         max_n: int = 10000, seed: int = 0, log=print) -> dict[str, np.ndarray]:
  """{set name: uint8 images of `shape`} for the external OOD sets of `base` (none for
  bases without an entry)."""
  h, _, c = shape
  out = {}
  for group in OOD_SETS.get(base, {}).values():
    for name, (tfds_name, split) in group.items():
      src = tfds_io.open_split(tfds_name, split, data_dir, f"{base}-ood")
      n = len(src)
      idx = np.sort(np.random.default_rng([seed, n]).permutation(n)[:max_n])
      fit = lambda im: images.resize_crop(im, h, h, c)
      out[name], _ = tfds_io.read(src, transform=fit, indices=idx)
      log(f"OOD set {name}: {len(idx)} of {n} {tfds_name} {split} images")
  return out
