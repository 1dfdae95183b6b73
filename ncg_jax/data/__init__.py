"""Datasets by name: `<base>` (all classes) or `<base>wo<k>` (class k held out).

Bases (`sources.py`): `digits` (embedded, offline), `mnist`, `cifar10`, `cifar100coarse`,
`imgnet100` (prepared TFDS datasets, read with `tfds.data_source`), and a user's own data as
`npz:PATH[:wo<k>]` or `folder:PATH[:wo<k>]` (TFDS ImageFolder layout). Corrupted versions
(`<name>-c`) live in `corruptions.py`.

`load(name)` returns a `Dataset` of uint8 NHWC images held in host memory:
  train: the base train split without class k, labels re-indexed to 0..K-2;
  test:  the base test split without class k, same re-indexing (in-distribution test);
  ood:   every class-k image of both splits (train first, then test), original labels.
Re-indexing (documented and invertible): new = old if old < k else old - 1, and back
old = new if new < k else new + 1 (`Dataset.to_original`).
"""
import dataclasses
import hashlib
import os
import re

import numpy as np

from ncg_jax.registry import ConfigError, Registry

BASES = Registry("dataset")


@dataclasses.dataclass(frozen=True)
class Split:
  x: np.ndarray  # uint8 [N, H, W, C] or float32 features [N, D]
  y: np.ndarray  # int32 [N]

  def __len__(self) -> int:
    return len(self.y)


@dataclasses.dataclass(frozen=True)
class Dataset:
  name: str
  base: str
  held_out: int | None
  train: Split
  test: Split
  ood: Split | None          # labels in the original (base) numbering
  num_classes: int           # K: classes the model is trained on
  class_names: tuple[str, ...]  # names of the K training classes

  def to_original(self, labels: np.ndarray) -> np.ndarray:
    labels = np.asarray(labels)
    return labels if self.held_out is None else labels + (labels >= self.held_out)

  def from_original(self, labels: np.ndarray) -> np.ndarray:
    labels = np.asarray(labels)
    if self.held_out is not None and np.any(labels == self.held_out):
      raise ValueError(f"class {self.held_out} is held out and has no training label")
    return labels if self.held_out is None else labels - (labels > self.held_out)


class Source:
  """A registered base dataset: its class count (known before any data is read) and a
  `read(data_dir) -> ((train_x, train_y), (test_x, test_y), class_names)`."""
  num_classes: int

  def read(self, data_dir: str | None):
    raise NotImplementedError


_USER = re.compile(r"(?P<kind>npz|folder):(?P<path>.+?)(?::wo(?P<k>\d+))?")
_NAMED = re.compile(r"(?P<base>[a-z0-9_]+?)(?:wo(?P<k>\d+))?")


def _available() -> str:
  return (f"{', '.join(BASES.names())} (each also as <name>wo<k>, k a class index), "
          "npz:PATH[:wo<k>] or folder:PATH[:wo<k>]")


def resolve(name: str) -> tuple[str, Source, int | None]:
  """'digitswo9' -> ('digits', <digits source>, 9); 'npz:/d/x.npz:wo3' -> ('npz', <npz
  source>, 3). The first item keys the training recipe. Validates k."""
  user = _USER.fullmatch(name)
  named = _NAMED.fullmatch(name)
  if user:
    base, k = user["kind"], user["k"]
    source = USER_SOURCES[base](user["path"])
  elif named and named["base"] in BASES:
    base, k = named["base"], named["k"]
    source = BASES.get(base)
  else:
    raise ConfigError(f"unknown dataset '{name}'; available: {_available()}")
  k = None if k is None else int(k)
  if k is not None and not 0 <= k < source.num_classes:
    raise ConfigError(f"held-out class {k} out of range for '{name}'; "
                      f"valid: 0..{source.num_classes - 1}")
  return base, source, k


def parse_name(name: str) -> tuple[str, int | None]:
  """'digitswo9' -> ('digits', 9); 'digits' -> ('digits', None); 'npz:x.npz:wo1' -> ('npz', 1)."""
  base, _, k = resolve(name)
  return base, k


def num_classes(name: str) -> int | None:
  """K of a registered dataset name (known before reading data), or None for a name that
  is no registered dataset or whose class count is only known from its files (npz:,
  folder:). Bad held-out indices are still errors."""
  if _USER.fullmatch(name) or not (_NAMED.fullmatch(name) and _NAMED.fullmatch(name)["base"] in BASES):
    return None
  _, source, k = resolve(name)
  return source.num_classes - (k is not None)


def held_out_name(base: str, k: int) -> str:
  """The name of `base` with class k held out: 'digits' -> 'digitswo3', 'npz:x.npz' ->
  'npz:x.npz:wo3'."""
  if re.search(r"wo\d+$", base) and not _USER.fullmatch(base):
    raise ConfigError(f"{base} already holds a class out; give the base dataset")
  return f"{base}:wo{k}" if _USER.fullmatch(base) else f"{base}wo{k}"


def dir_name(name: str) -> str:
  """A dataset name as one directory name: user datasets become
  `<kind>-<file stem>-<hash of the absolute path>[wo<k>]`, others stay as they are."""
  user = _USER.fullmatch(name)
  if not user:
    return name
  path = os.path.abspath(user["path"])
  stem = re.sub(r"[^A-Za-z0-9_.-]", "_", os.path.splitext(os.path.basename(path.rstrip("/")))[0])
  digest = hashlib.sha1(path.encode()).hexdigest()[:8]
  return f"{user['kind']}-{stem}-{digest}" + (f"wo{user['k']}" if user["k"] else "")


def split_per_class(labels: np.ndarray, test_fraction: float = 0.2, seed: int = 0
                    ) -> dict[str, np.ndarray]:
  """A fixed train/test split: per class, a permutation from `seed` puts `test_fraction`
  of the indices in test. Returns sorted index arrays."""
  rng = np.random.default_rng(seed)
  train, test = [], []
  for c in np.unique(labels):
    idx = rng.permutation(np.flatnonzero(labels == c))
    n_test = int(round(test_fraction * len(idx)))
    test.append(idx[:n_test])
    train.append(idx[n_test:])
  return {"train": np.sort(np.concatenate(train)), "test": np.sort(np.concatenate(test))}


def hold_out(name: str, base: str, k: int | None, train: Split, test: Split,
             class_names) -> Dataset:
  """The `Dataset` of `name` from a base dataset's splits: class k (if any) moves to `ood`."""
  n_cls = len(class_names)
  if k is None:
    return Dataset(name, base, None, train, test, None, n_cls, tuple(class_names))
  keep_tr, keep_te = train.y != k, test.y != k
  shift = lambda y: (y - (y > k)).astype(np.int32)
  ood = Split(np.concatenate([train.x[~keep_tr], test.x[~keep_te]]),
              np.concatenate([train.y[~keep_tr], test.y[~keep_te]]).astype(np.int32))
  return Dataset(name, base, k,
                 Split(train.x[keep_tr], shift(train.y[keep_tr])),
                 Split(test.x[keep_te], shift(test.y[keep_te])),
                 ood, n_cls - 1, tuple(c for i, c in enumerate(class_names) if i != k))


def load(name: str, data_dir: str | None = None) -> Dataset:
  base, source, k = resolve(name)
  (train_x, train_y), (test_x, test_y), class_names = source.read(data_dir)
  return hold_out(name, base, k, Split(train_x, train_y), Split(test_x, test_y), class_names)


from ncg_jax.data.sources import USER_SOURCES  # noqa: E402  (registers the named bases)
