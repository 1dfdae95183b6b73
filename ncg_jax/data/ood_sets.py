"""External OOD test sets per in-distribution base, grouped as OpenOOD v1.5 does.

CIFAR-10 (Zhang et al., "OpenOOD v1.5", 2023): near-OOD CIFAR-100 and TinyImageNet (here
TFDS `imagenet_resized/32x32` validation, 1,000 ImageNet classes downsampled; OpenOOD's TIN
also drops the classes that overlap CIFAR, which this does not); far-OOD MNIST, SVHN
(`svhn_cropped`), Textures (`dtd`) and Places365 (`places365_small`). Each set is brought to
the ID image shape the way OpenOOD's test transform does (shorter side resized, centre
crop, grayscale to RGB) and capped at a seeded sample of `max_n` images.
Prepare them once with `python -m ncg_jax.data.prepare cifar10-ood`.
"""

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
         max_n: int = 10000, seed: int = 0, log=print) -> dict:
  """{set name: images of `shape`, read lazily (`imagesets.open_spec`)} for the external
  OOD sets of `base` (none for bases without an entry)."""
  from ncg_jax.data import imagesets
  out = {}
  for group in OOD_SETS.get(base, {}).values():
    for name, (tfds_name, split) in group.items():
      out[name] = imagesets.open_spec(f"{tfds_name}:{split}", shape, name=name, data_dir=data_dir,
                                      max_n=max_n, seed=seed, prepare_as=f"{base}-ood")
      log(f"OOD set {name}: {len(out[name])} {tfds_name} {split} images")
  return out
