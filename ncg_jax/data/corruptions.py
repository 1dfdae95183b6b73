"""Corrupted test sets: `<name>-c` selects a family of (corruption, severity) cells.

Where TFDS has the corrupted family it is used (prepared as array_record like every TFDS
dataset):
  mnist-c     `mnist_corrupted/<corruption>` (Mu & Gilmer 2019; one severity each, reported as 1)
  cifar10-c   `cifar10_corrupted/<corruption>_<1..5>` (Hendrycks & Dietterich, ICLR 2019)
  imgnet100-c `imagenet2012_corrupted/<corruption>_<1..5>` validation images of the 100
              classes, resized 128 and centre-cropped 112 like clean ImgNet100
Every other base (`digits`, `cifar100coarse`, user data) gets the built-in corruptions below
applied to its test split, so `digits-c` works offline. With `<base>wo<k>-c` the held-out
class is dropped and labels re-indexed like the clean dataset.

Built-in corruptions: numpy/scipy/PIL re-implementations of Hendrycks & Dietterich's
definitions with the severity constants of their CIFAR-10-C script (`make_cifar_c.py`),
deterministic given (seed, corruption, severity).
"""
import dataclasses
import io
from typing import Callable

import numpy as np
from scipy import ndimage

from ncg_jax.data import Dataset, images, tfds_io
from ncg_jax.registry import ConfigError

SEVERITIES = (1, 2, 3, 4, 5)


def _float(x):
  return x.astype(np.float64) / 255.0


def _uint8(x):
  return np.clip(np.rint(x * 255.0), 0, 255).astype(np.uint8)


def gaussian_noise(x, c, rng):
  return _uint8(_float(x) + rng.normal(0.0, c, x.shape))


def shot_noise(x, c, rng):
  return _uint8(rng.poisson(_float(x) * c) / c)


def impulse_noise(x, c, rng):  # salt and pepper: a fraction c of values, half 0 and half 1
  out = _float(x)
  hit = rng.random(x.shape) < c
  out[hit] = (rng.random(int(hit.sum())) < 0.5).astype(np.float64)
  return _uint8(out)


def speckle_noise(x, c, rng):
  f = _float(x)
  return _uint8(f + f * rng.normal(0.0, c, x.shape))


def gaussian_blur(x, c, rng):
  del rng
  return _uint8(ndimage.gaussian_filter(_float(x), sigma=(0, c, c, 0), mode="nearest"))


def contrast(x, c, rng):
  del rng
  f = _float(x)
  mean = f.mean(axis=(1, 2, 3), keepdims=True)
  return _uint8((f - mean) * c + mean)


def brightness(x, c, rng):
  """Adds c to HSV value (to the intensity of grayscale images)."""
  del rng
  f = _float(x)
  if x.shape[-1] == 1:
    return _uint8(f + c)
  from matplotlib.colors import hsv_to_rgb, rgb_to_hsv
  hsv = rgb_to_hsv(f)
  hsv[..., 2] = np.clip(hsv[..., 2] + c, 0, 1)
  return _uint8(hsv_to_rgb(hsv))


def _per_image(x, fn):
  from PIL import Image
  out = np.empty_like(x)
  for i, img in enumerate(x):
    im = Image.fromarray(img[..., 0] if x.shape[-1] == 1 else img)
    res = np.asarray(fn(im), np.uint8)
    out[i] = res[..., None] if x.shape[-1] == 1 else res
  return out


def pixelate(x, c, rng):
  del rng
  from PIL import Image
  h, w = x.shape[1:3]
  small = (max(1, int(w * c)), max(1, int(h * c)))
  return _per_image(x, lambda im: im.resize(small, Image.BOX).resize((w, h), Image.BOX))


def jpeg_compression(x, c, rng):
  del rng
  from PIL import Image

  def fn(im):
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=int(c))
    return Image.open(buf).copy()
  return _per_image(x, fn)


# name -> (function, constants for severities 1..5), as make_cifar_c.py
BUILTIN: dict[str, tuple[Callable, tuple]] = {
    "gaussian_noise": (gaussian_noise, (0.04, 0.06, 0.08, 0.09, 0.10)),
    "shot_noise": (shot_noise, (500, 250, 100, 75, 50)),
    "impulse_noise": (impulse_noise, (0.01, 0.02, 0.03, 0.05, 0.07)),
    "speckle_noise": (speckle_noise, (0.06, 0.10, 0.12, 0.16, 0.20)),
    "gaussian_blur": (gaussian_blur, (0.4, 0.6, 0.7, 0.8, 1.0)),
    "contrast": (contrast, (0.75, 0.5, 0.4, 0.3, 0.15)),
    "brightness": (brightness, (0.05, 0.1, 0.15, 0.2, 0.3)),
    "pixelate": (pixelate, (0.95, 0.9, 0.85, 0.75, 0.65)),
    "jpeg_compression": (jpeg_compression, (80, 65, 58, 50, 40)),
}


def corrupt(x: np.ndarray, name: str, severity: int, seed: int = 0) -> np.ndarray:
  """A built-in corruption of uint8 NHWC images at severity 1..5."""
  if name not in BUILTIN:
    raise ConfigError(f"unknown corruption '{name}'; built-in: {', '.join(BUILTIN)}")
  if severity not in SEVERITIES:
    raise ConfigError(f"severity must be 1..5, got {severity}")
  fn, constants = BUILTIN[name]
  rng = np.random.default_rng([seed, list(BUILTIN).index(name), severity])
  return fn(np.asarray(x, np.uint8), constants[severity - 1], rng)


# --------------------------------------------------------------------------- families
@dataclasses.dataclass(frozen=True)
class Family:
  tfds_name: str
  split: str
  severities: tuple[int, ...]  # () when the TFDS configs carry no severity
  label_map: Callable | None = None  # TFDS label names -> base label array (-1: drop)
  transform: Callable | None = None  # per kept image
  encoded: bool = False  # keep images encoded until filtered (transform decodes them)


def _imgnet100_family() -> Family:
  from ncg_jax.data import imgnet100
  return Family("imagenet2012_corrupted", "validation", SEVERITIES,
                label_map=imgnet100.imagenet_labels, encoded=True,
                transform=lambda b: imgnet100.resize_crop(images.decode(b)))


TFDS_FAMILIES: dict[str, Callable[[], Family]] = {
    "mnist": lambda: Family("mnist_corrupted", "test", ()),
    "cifar10": lambda: Family("cifar10_corrupted", "test", SEVERITIES),
    "imgnet100": _imgnet100_family,
}


def base_name(name: str) -> str:
  """'cifar10wo0-c' -> 'cifar10wo0'; names without '-c' are returned unchanged."""
  return name[:-2] if name.endswith("-c") else name


def tfds_corruptions(family: Family) -> list[str]:
  """The corruption names of a TFDS family, from its builder configs (no data read)."""
  import tensorflow_datasets as tfds
  names = [c.name for c in tfds.builder_cls(family.tfds_name).BUILDER_CONFIGS]
  if family.severities:
    names = [n.rsplit("_", 1)[0] for n in names]
  return list(dict.fromkeys(names))


@dataclasses.dataclass(frozen=True)
class Cell:
  corruption: str
  severity: int
  load: Callable[[], tuple[np.ndarray, np.ndarray]]  # -> (uint8 images, training labels)


def cells(ds: Dataset, data_dir: str | None = None, corruptions=None, seed: int = 0
          ) -> list[Cell]:
  """The (corruption, severity) cells of `<ds.name>-c`, each loaded on demand, with labels
  in `ds`'s training numbering (the held-out class, if any, dropped)."""
  make = TFDS_FAMILIES.get(ds.base)
  if make is None:
    available = list(BUILTIN)
  else:
    family = make()
    available = tfds_corruptions(family)
  chosen = list(corruptions) if corruptions else available
  unknown = [c for c in chosen if c not in available]
  if unknown:
    raise ConfigError(f"unknown corruption(s) {', '.join(unknown)} for {ds.base}-c; "
                      f"available: {', '.join(available)}")
  if make is None:
    return [Cell(c, s, lambda c=c, s=s: (corrupt(ds.test.x, c, s, seed), ds.test.y))
            for c in chosen for s in SEVERITIES]

  def load(config: str):
    import tensorflow_datasets as tfds
    decoders = {"image": tfds.decode.SkipDecoding()} if family.encoded else None
    src = tfds_io.open_split(f"{family.tfds_name}/{config}", family.split, data_dir,
                             f"{ds.base}-c", decoders=decoders)
    names = tfds_io.label_names(f"{family.tfds_name}/{config}", data_dir)
    to_base = family.label_map(names) if family.label_map else np.arange(len(names))
    held = ds.held_out if ds.held_out is not None else -2
    keep = lambda labels: (to_base[labels] >= 0) & (to_base[labels] != held)
    x, y = tfds_io.read(src, keep=keep, transform=family.transform)
    return x, ds.from_original(to_base[y])

  if not family.severities:
    return [Cell(c, 1, lambda c=c: load(c)) for c in chosen]
  return [Cell(c, s, lambda c=c, s=s: load(f"{c}_{s}")) for c in chosen for s in family.severities]
