"""OpenOOD v1.5's benchmarks read from OpenOOD's own files.

`--openood_root` is the folder OpenOOD's download script fills (`scripts/download/download.py`
of Jingkang50/OpenOOD): `benchmark_imglist/<id>/*.txt` (one `relative/path label` per line)
and the images under `images_classic/` and `images_largescale/`. The splits are those of
`openood/evaluation_api/datasets.py::DATA_INFO` (v1.5): the ID train, validation and test
lists, the OOD-validation list (TinyImageNet's held-out classes for CIFAR, OpenImage-O's
validation part for ImageNet), and the near- and far-OOD test lists, so every row of a table
lines up with OpenOOD's leaderboard. Images are brought to the model's input size by
OpenOOD's test transform (`imagesets.pre_size`, centre crop; 32x32 CIFAR images are kept).
"""
import dataclasses
import os

import numpy as np

from ncg_jax.data import imagesets
from ncg_jax.registry import ConfigError


@dataclasses.dataclass(frozen=True)
class Benchmark:
  id: str
  num_classes: int
  ood_val: str                   # list stem under benchmark_imglist/<id>/
  near: tuple[str, ...]
  far: tuple[str, ...]
  image_dir: str                 # images_classic or images_largescale
  classic_sets: tuple[str, ...] = ()  # OOD sets whose images live in images_classic

  def lists(self) -> dict[str, str]:
    """{split: list file (relative to the root)} for id_train, id_val, id_test, ood_val and
    each near and far set."""
    d = f"benchmark_imglist/{self.id}"
    out = {"id_train": f"{d}/train_{self.id}.txt", "id_val": f"{d}/val_{self.id}.txt",
           "id_test": f"{d}/test_{self.id}.txt", "ood_val": f"{d}/{self.ood_val}.txt"}
    out.update({name: f"{d}/test_{name}.txt" for name in self.near + self.far})
    return out

  def image_root(self, split: str) -> str:
    return "images_classic" if split in self.classic_sets else self.image_dir


_IMAGENET_OOD = dict(ood_val="val_openimage_o", near=("ssb_hard", "ninco"),
                     far=("inaturalist", "textures", "openimage_o"),
                     image_dir="images_largescale", classic_sets=("textures",))
BENCHMARKS = {
    "cifar10": Benchmark("cifar10", 10, "val_tin", ("cifar100", "tin"),
                         ("mnist", "svhn", "texture", "places365"), "images_classic"),
    "cifar100": Benchmark("cifar100", 100, "val_tin", ("cifar10", "tin"),
                          ("mnist", "svhn", "texture", "places365"), "images_classic"),
    "imagenet200": Benchmark("imagenet200", 200, **_IMAGENET_OOD),
    "imagenet": Benchmark("imagenet", 1000, **_IMAGENET_OOD),
}


def parse(spec: str) -> Benchmark:
  """`openood:<id>` -> its Benchmark, or a ConfigError naming the valid ones."""
  kind, _, name = spec.partition(":")
  if kind != "openood" or name not in BENCHMARKS:
    raise ConfigError(f"unknown benchmark '{spec}'; valid: "
                      f"{', '.join(f'openood:{b}' for b in BENCHMARKS)}")
  return BENCHMARKS[name]


@dataclasses.dataclass
class Splits:
  """Every split of a benchmark as lazily read images (labels on the ID splits)."""
  id_train: imagesets.LazyImages
  id_val: imagesets.LazyImages
  id_test: imagesets.LazyImages
  ood_val: imagesets.LazyImages
  ood: dict[str, imagesets.LazyImages]
  groups: dict[str, list[str]]


def load(bench: Benchmark, root: str, shape: tuple[int, int, int], max_ood: int | None = None,
         seed: int = 0) -> Splits:
  """The benchmark's lists under `root` as `LazyImages` of `shape`; OOD test sets capped
  at a seeded `max_ood` (None: all, as OpenOOD)."""
  if not root or not os.path.isdir(root):
    raise ConfigError(f"--openood_root={root} is not a directory; point it at the folder "
                      "OpenOOD's scripts/download/download.py fills (benchmark_imglist/, "
                      "images_classic/, images_largescale/)")
  sets = {}
  for split, rel in bench.lists().items():
    paths, labels = imagesets.imglist(os.path.join(root, rel),
                                      os.path.join(root, bench.image_root(split)), f"openood:{split}")
    images = imagesets.from_files(paths, shape, f"{bench.id} {split}",
                                  labels if split.startswith("id_") else None)
    if split.startswith("id_") and (labels.min() < 0 or labels.max() >= bench.num_classes):
      raise ConfigError(f"{rel}: ID labels must lie in 0..{bench.num_classes - 1}")
    if not split.startswith("id_") and split != "ood_val":
      images = images.subset(imagesets.sample(len(images), max_ood, seed))
    sets[split] = images
  return Splits(sets["id_train"], sets["id_val"], sets["id_test"], sets["ood_val"],
                {n: sets[n] for n in bench.near + bench.far},
                {"near": list(bench.near), "far": list(bench.far)})
