"""Image sets read on demand, for OOD sets and benchmarks of any size.

`LazyImages` looks like a uint8 array [N, H, W, C] to `batching.map_batches` (`len`,
`shape`, `dtype`, `x[indices]`), but holds only a way to load image i: reading rows decodes
them and brings each to the model's input size as OpenOOD's test transform does
(`images.resize_crop`: shorter side to `pre_size`, centre crop, grey to RGB). Image files
are decoded by a pool of worker processes (PIL holds Python's lock for much of a decode,
so threads do not scale), other sources on a thread pool. So 50,000 ImageNet images are
never in host memory at once: `map_batches` asks for one fixed-shape batch at a time and
prefetches the next while the devices run.

Specs (`--ood=NAME=SPEC`, `--ood_val=SPEC`, `--id_val=SPEC`, `open_spec`):
  folder:PATH        every image file under PATH (directly or in subfolders; labels ignored)
  npz:PATH           the archive's `x` (uint8 [N, H, W(, C)]), resized likewise
  imglist:LIST@ROOT  the files named in an OpenOOD image list (`path label` lines)
  TFDS[:split]       a prepared TFDS dataset's `image` feature (split `test` by default)
"""
import concurrent.futures
import concurrent.futures.process
import os
from typing import Callable

import numpy as np

from ncg_jax.data import images as images_lib
from ncg_jax.data.sources import IMAGE_SUFFIXES, read_npz
from ncg_jax.registry import ConfigError

_POOL = concurrent.futures.ThreadPoolExecutor(max_workers=min(32, (os.cpu_count() or 2) * 2),
                                              thread_name_prefix="decode")
_PROCESSES = None
WORKERS = min(os.cpu_count() or 1, 32)


def _processes() -> concurrent.futures.ProcessPoolExecutor | None:
  """The decoding processes (spawned: forking a process that runs JAX is unsafe); None on
  machines with fewer than 4 cores, where threads do as well."""
  global _PROCESSES
  if _PROCESSES is None and WORKERS >= 4:
    import multiprocessing
    _PROCESSES = concurrent.futures.ProcessPoolExecutor(
        max_workers=WORKERS, mp_context=multiprocessing.get_context("spawn"))
  return _PROCESSES


def _disable_processes() -> None:
  """Worker processes could not start (e.g. a main script they cannot re-import): decode
  on threads from now on."""
  global WORKERS, _PROCESSES
  import warnings
  warnings.warn("image decoding processes failed to start; decoding on threads instead")
  WORKERS, _PROCESSES = 1, None


def decode_files(paths: list[str], shape: tuple[int, int, int], resize: int) -> np.ndarray:
  """[len(paths), *shape] uint8: each file decoded, resized and cropped (a worker's task)."""
  h, _, c = shape
  return np.stack([images_lib.resize_crop(_read_file(p), resize, h, c) for p in paths])


def pre_size(size: int) -> int:
  """OpenOOD's test-time resize before the centre crop: the crop itself for small images
  (CIFAR: Resize(32), CenterCrop(32)), 256 for 224 (ImageNet: Resize(256), CenterCrop(224)),
  the same 8/7 ratio for other large sizes."""
  return size if size <= 64 else int(round(size * 256 / 224))


class LazyImages:
  """N images loaded on demand as uint8 [size, size, channels] (see the module docstring)."""

  def __init__(self, load: Callable[[int], np.ndarray], n: int, shape: tuple[int, int, int],
               name: str = "", labels: np.ndarray | None = None, resize: int | None = None,
               paths: list[str] | None = None):
    self.load, self.n, self.image_shape, self.name = load, n, tuple(shape), name
    self.labels, self.paths = labels, paths  # paths: image i is the file paths[i]
    self.resize = resize or pre_size(shape[0])
    self.dtype = np.dtype(np.uint8)

  def __len__(self) -> int:
    return self.n

  @property
  def shape(self) -> tuple[int, ...]:
    return (self.n, *self.image_shape)

  def _one(self, i: int) -> np.ndarray:
    h, _, c = self.image_shape
    try:
      return images_lib.resize_crop(self.load(int(i)), self.resize, h, c)
    except (OSError, ValueError) as e:
      raise ConfigError(f"{self.name}: image {i} cannot be read ({type(e).__name__}: {e})") from None

  def __getitem__(self, idx) -> np.ndarray:
    idx = np.asarray(idx)
    if idx.ndim == 0:
      return self._one(int(idx))
    if len(idx) == 0:
      return np.zeros((0, *self.image_shape), np.uint8)
    pool = _processes() if self.paths is not None and len(idx) >= 16 else None
    if pool is not None:
      chunks = np.array_split(idx, min(len(idx), 2 * WORKERS))
      try:
        parts = pool.map(decode_files, [[self.paths[i] for i in c] for c in chunks],
                         [self.image_shape] * len(chunks), [self.resize] * len(chunks))
        return np.concatenate(list(parts))
      except (OSError, ValueError) as e:
        raise ConfigError(f"{self.name}: an image cannot be read ({type(e).__name__}: {e})") from None
      except concurrent.futures.process.BrokenProcessPool:
        _disable_processes()
    return np.stack(list(_POOL.map(self._one, idx.tolist())))

  def subset(self, idx) -> "LazyImages":
    idx = np.asarray(idx)
    return LazyImages(lambda i: self.load(int(idx[i])), len(idx), self.image_shape, self.name,
                      None if self.labels is None else self.labels[idx], self.resize,
                      None if self.paths is None else [self.paths[i] for i in idx])


def _read_file(path: str) -> np.ndarray:
  from PIL import Image
  with Image.open(path) as im:
    return np.asarray(im.convert("RGB") if im.mode not in ("L", "RGB") else im, np.uint8)


def files(path: str, name: str = "") -> list[str]:
  """The image files under `path` (any depth), sorted."""
  if not os.path.isdir(path):
    raise ConfigError(f"{name or 'image folder'}: {path} is not a directory")
  found = sorted(os.path.join(root, f) for root, _, names in os.walk(path, followlinks=True)
                 for f in names if f.lower().endswith(IMAGE_SUFFIXES))
  if not found:
    raise ConfigError(f"{name or 'image folder'}: no images ({', '.join(IMAGE_SUFFIXES)}) under {path}")
  return found


def imglist(list_path: str, root: str, name: str = "") -> tuple[list[str], np.ndarray]:
  """An OpenOOD image list: one `relative/path label` per line, relative to `root`."""
  if not os.path.isfile(list_path):
    raise ConfigError(f"{name or 'image list'}: {list_path} does not exist")
  paths, labels = [], []
  with open(list_path) as f:
    for line_no, line in enumerate(f, 1):
      parts = line.strip().split(" ")
      if not parts or not parts[0]:
        continue
      try:
        labels.append(int(parts[1]) if len(parts) > 1 else -1)
      except ValueError:
        raise ConfigError(f"{list_path}:{line_no}: expected 'path label', got {line.strip()!r}") from None
      paths.append(os.path.join(root, parts[0]))
  if not paths:
    raise ConfigError(f"{list_path} lists no images")
  return paths, np.asarray(labels, np.int64)


def from_files(paths: list[str], shape, name: str, labels=None) -> LazyImages:
  return LazyImages(lambda i: _read_file(paths[i]), len(paths), shape, name, labels, paths=paths)


def sample(n: int, max_n: int | None, seed: int) -> np.ndarray:
  """All of 0..n-1, or a sorted seeded sample of `max_n` of them."""
  if max_n is None or n <= max_n:
    return np.arange(n)
  return np.sort(np.random.default_rng([seed, n]).permutation(n)[:max_n])


def open_spec(spec: str, shape: tuple[int, int, int], *, name: str = "", data_dir=None,
              max_n: int | None = None, seed: int = 0,
              prepare_as: str | None = None) -> LazyImages | np.ndarray:
  """The images of one SPEC (module docstring) at `shape`, capped at a seeded `max_n`.
  `prepare_as`: the name a missing TFDS dataset's error tells `data.prepare` to prepare
  (default `tfds:<name>`)."""
  kind, _, rest = spec.partition(":")
  label = f"{name}={spec}" if name else spec
  if kind == "folder" and rest:
    paths = files(rest, label)
    return from_files(paths, shape, label).subset(sample(len(paths), max_n, seed))
  if kind == "imglist" and rest:
    list_path, _, root = rest.partition("@")
    paths, labels = imglist(list_path, root or os.path.dirname(list_path), label)
    return from_files(paths, shape, label, labels).subset(sample(len(paths), max_n, seed))
  if kind == "npz" and rest:
    arrays = read_npz(rest)
    x = arrays.get("x", next(iter(arrays.values())) if len(arrays) == 1 else None)
    if x is None or x.dtype != np.uint8 or x.ndim not in (3, 4):
      raise ConfigError(f"{label}: needs a uint8 image array 'x' [N, H, W(, C)]")
    x = x[sample(len(x), max_n, seed)]
    if x.shape[1:] == tuple(shape):
      return x
    return LazyImages(lambda i: x[i], len(x), shape, label)[np.arange(len(x))]
  from ncg_jax.data import tfds_io
  tfds_name, _, split = spec.partition(":")
  src = tfds_io.open_split(tfds_name, split or "test", data_dir, prepare_as or f"tfds:{tfds_name}")
  idx = sample(len(src), max_n, seed)
  return LazyImages(lambda i: src[int(idx[i])]["image"], len(idx), shape, label)
