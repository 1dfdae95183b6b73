"""The base datasets: where each one's images and labels come from.

Named bases are registered in `data.BASES`; user data (`npz:`, `folder:`) in `USER_SOURCES`.
Every source reads `((train_x, train_y), (test_x, test_y), class_names)` with uint8 NHWC
images and int labels 0..K-1.
"""
import os
import zipfile

import numpy as np

from ncg_jax.data import BASES, Source, split_per_class, tfds_io
from ncg_jax.registry import ConfigError


def _tfds_splits(tfds_name: str, splits: tuple[str, str], data_dir, prepare_as: str,
                 label_key: str = "label", log=print):
  out = []
  for split in splits:
    src = tfds_io.open_split(tfds_name, split, data_dir, prepare_as)
    if len(src) > 4 * tfds_io.CHUNK:
      log(f"reading {tfds_name} {split} ({len(src)} records)")
    out.append(tfds_io.read(src, label_key=label_key, log=log))
  return out[0], out[1], tfds_io.label_names(tfds_name, data_dir, label_key)


class TfdsSource(Source):
  """A TFDS dataset prepared as array_record (`python -m ncg_jax.data.prepare <name>`)."""

  def __init__(self, name: str, tfds_name: str, num_classes: int, label_key: str = "label",
               splits: tuple[str, str] = ("train", "test")):
    self.name, self.tfds_name, self.num_classes = name, tfds_name, num_classes
    self.label_key, self.splits = label_key, splits

  def read(self, data_dir: str | None):
    return _tfds_splits(self.tfds_name, self.splits, data_dir, self.name, self.label_key)

  def prepare(self, data_dir: str | None) -> None:
    tfds_io.builder(self.tfds_name, data_dir).download_and_prepare()


@BASES.register("digits")
class DigitsSource(Source):
  """The embedded default: prepared from scikit-learn on first use (offline, seconds)."""
  num_classes = 10

  def read(self, data_dir: str | None):
    self.prepare(data_dir)
    return _tfds_splits("digits", ("train", "test"), data_dir, "digits")

  def prepare(self, data_dir: str | None) -> None:
    import tensorflow_datasets as tfds
    from ncg_jax.data.digits import Digits
    builder = Digits(data_dir=data_dir, file_format="array_record")
    if not builder.is_prepared():
      print(f"preparing TFDS dataset 'digits' in {builder.data_dir} ...", flush=True)
      tfds.disable_progress_bar()
      builder.download_and_prepare()


@BASES.register("imgnet100")
class Imgnet100Source(Source):
  """The CMC ImageNet-100 subset at 112x112 (`imgnet100.py`), built from `imagenet2012`."""
  num_classes = 100

  def read(self, data_dir: str | None):
    from ncg_jax.data import imgnet100  # noqa: F401 (registers the builder with TFDS)
    return _tfds_splits("imgnet100", ("train", "test"), data_dir, "imgnet100")

  def prepare(self, data_dir: str | None) -> None:
    from ncg_jax.data.imgnet100 import Imgnet100
    Imgnet100(data_dir=data_dir, file_format="array_record").download_and_prepare()


BASES.register("mnist", lambda: TfdsSource("mnist", "mnist", 10))
BASES.register("cifar10", lambda: TfdsSource("cifar10", "cifar10", 10))
BASES.register("cifar100", lambda: TfdsSource("cifar100", "cifar100", 100))
BASES.register("cifar100coarse",
               lambda: TfdsSource("cifar100coarse", "cifar100", 20, label_key="coarse_label"))


# ----------------------------------------------------------------------------- user data
def _check_images(x: np.ndarray, y: np.ndarray, what: str) -> None:
  if x.dtype != np.uint8 or x.ndim != 4:
    raise ConfigError(f"{what}: images must be uint8 [N, H, W, C], got {x.dtype} {x.shape}")
  if y.ndim != 1 or len(y) != len(x) or not np.issubdtype(y.dtype, np.integer):
    raise ConfigError(f"{what}: labels must be integers [N] matching {len(x)} images, "
                      f"got {y.dtype} {y.shape}")
  if len(y) and y.min() < 0:
    raise ConfigError(f"{what}: labels must be >= 0")


def _user_splits(x, y, x_test, y_test, names, what: str):
  if x_test is None:  # no test split given: a fixed, seeded 80/20 per-class split
    idx = split_per_class(y)
    x, y, x_test, y_test = x[idx["train"]], y[idx["train"]], x[idx["test"]], y[idx["test"]]
  if x.shape[1:] != x_test.shape[1:]:
    raise ConfigError(f"{what}: train images are {x.shape[1:]} but test images {x_test.shape[1:]}")
  return (x, y.astype(np.int32)), (x_test, y_test.astype(np.int32)), names


def read_npz(path: str) -> dict[str, np.ndarray]:
  """Every array of an npz archive, or one ConfigError line: not an npz archive, or arrays
  that need pickle (object dtype) and are refused."""
  try:
    f = np.load(path, allow_pickle=False)
  except ValueError:  # numpy reads an unknown file as a pickle, and refuses it
    raise ConfigError(f"{path} is not an npz archive (numpy would have to unpickle it, "
                      "which is not done here)") from None
  except (OSError, EOFError, zipfile.BadZipFile) as e:
    raise ConfigError(f"{path} is not a readable npz archive ({type(e).__name__}: "
                      f"{str(e).splitlines()[0] if str(e) else ''})") from None
  if isinstance(f, np.ndarray):
    raise ConfigError(f"{path} holds one bare array (.npy), not an npz archive of named arrays")
  try:
    return {k: f[k] for k in f.files}
  except ValueError:  # object arrays need pickle
    raise ConfigError(f"{path} holds object arrays, which need pickle and are not "
                      "loaded; save numeric arrays (uint8 images, integer labels)") from None
  finally:
    f.close()


class NpzSource(Source):
  """`npz:PATH`: arrays `x` (uint8 NHWC) and `y` (int), optional `x_test`/`y_test` (else a
  seeded 80/20 split per class) and `class_names`. Loaded without pickle."""

  def __init__(self, path: str):
    self.path = path
    if not os.path.isfile(path):
      raise ConfigError(f"npz dataset {path} does not exist")
    arrays = self._arrays()
    if "x" not in arrays or "y" not in arrays:
      raise ConfigError(f"{path} must hold arrays 'x' and 'y' (has {', '.join(arrays)})")
    labels = [arrays["y"]] + ([arrays["y_test"]] if "y_test" in arrays else [])
    if not all(np.issubdtype(l.dtype, np.integer) for l in labels):
      raise ConfigError(f"{path}: 'y' and 'y_test' must be integer labels")
    self.num_classes = int(max(int(l.max()) for l in labels if len(l)) + 1)

  def _arrays(self) -> dict[str, np.ndarray]:
    return read_npz(self.path)

  def read(self, data_dir: str | None):
    del data_dir
    arrays = self._arrays()
    x, y = arrays["x"], arrays["y"]
    _check_images(x, y, self.path)
    x_test, y_test = arrays.get("x_test"), arrays.get("y_test")
    if (x_test is None) != (y_test is None):
      raise ConfigError(f"{self.path}: give both 'x_test' and 'y_test' or neither")
    if x_test is not None:
      _check_images(x_test, y_test, self.path)
    names = [str(n) for n in arrays["class_names"]] if "class_names" in arrays else \
        [str(i) for i in range(self.num_classes)]
    if len(names) != self.num_classes:
      raise ConfigError(f"{self.path}: {len(names)} class_names for {self.num_classes} classes")
    return _user_splits(x, y, x_test, y_test, names, self.path)


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
TEST_SPLITS = ("test", "val", "validation")


class FolderSource(Source):
  """`folder:PATH` in TFDS ImageFolder layout, PATH/<split>/<class name>/<image file>:
  split `train` plus one of `test`/`val`/`validation` (else a seeded 80/20 split of train).
  Classes are the sorted class directories of all splits; images must share one size
  (grayscale kept as 1 channel when every image is grayscale, otherwise RGB)."""

  def __init__(self, path: str):
    self.path = path
    train = os.path.join(path, "train")
    if not os.path.isdir(train):
      raise ConfigError(f"image folder {path} needs a 'train' directory "
                        "(layout PATH/<split>/<class>/<image>)")
    test = [os.path.join(path, s) for s in TEST_SPLITS if os.path.isdir(os.path.join(path, s))]
    self.split_dirs = [train] + test[:1]
    self.class_names = sorted({c for d in self.split_dirs for c in os.listdir(d)
                               if os.path.isdir(os.path.join(d, c))})
    if not self.class_names:
      raise ConfigError(f"{train} has no class directories")
    self.num_classes = len(self.class_names)

  def _read_dir(self, directory: str):
    from PIL import Image
    files, labels = [], []
    for i, c in enumerate(self.class_names):
      cdir = os.path.join(directory, c)
      if os.path.isdir(cdir):
        for f in sorted(os.listdir(cdir)):
          if f.lower().endswith(IMAGE_SUFFIXES):
            files.append(os.path.join(cdir, f))
            labels.append(i)
    images = []
    for f in files:
      with Image.open(f) as im:
        images.append(im.copy())
    return images, np.asarray(labels, np.int64), files

  def read(self, data_dir: str | None):
    del data_dir
    splits = [self._read_dir(d) for d in self.split_dirs]
    all_images = [im for images, _, _ in splits for im in images]
    if not all_images:
      raise ConfigError(f"no images ({', '.join(IMAGE_SUFFIXES)}) under {self.path}")
    mode = "L" if all(im.mode in ("L", "1", "I;16") for im in all_images) else "RGB"
    ref = np.asarray(all_images[0].convert(mode)).shape
    arrays = []
    for images, labels, files in splits:
      xs = [np.asarray(im.convert(mode), np.uint8) for im in images]
      odd = [(f, x.shape) for f, x in zip(files, xs) if x.shape != ref]
      if odd:
        raise ConfigError(f"images under {self.path} differ in size ({odd[0][0]}: {odd[0][1]}, "
                          f"first image: {ref}); resize them to one size first")
      x = np.stack(xs)
      arrays.append((x[..., None] if mode == "L" else x, labels))
    (x, y), (x_test, y_test) = arrays[0], (arrays[1] if len(arrays) > 1 else (None, None))
    return _user_splits(x, y, x_test, y_test, list(self.class_names), self.path)


USER_SOURCES = {"npz": NpzSource, "folder": FolderSource}
