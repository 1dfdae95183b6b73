"""Datasets by name: `<base>` (all classes) or `<base>wo<k>` (class k held out).

`load(name)` returns a `Dataset` of uint8 NHWC images held in host memory:
  train: the base train split without class k, labels re-indexed to 0..K-2;
  test:  the base test split without class k, same re-indexing (in-distribution test);
  ood:   every class-k image of both splits (train first, then test), original labels.
Re-indexing (documented and invertible): new = old if old < k else old - 1, and back
old = new if new < k else new + 1 (`Dataset.to_original`).
"""
import dataclasses
import re

import numpy as np

from ncg_jax.data.batching import eval_batches, map_batches, train_batches  # noqa: F401 (re-export)
from ncg_jax.registry import ConfigError, Registry

BASES = Registry("dataset")
_RESERVED = ("mnist", "cifar10", "cifar100coarse", "imgnet100")


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


def parse_name(name: str) -> tuple[str, int | None]:
  """'digitswo9' -> ('digits', 9); 'digits' -> ('digits', None). Validates k."""
  m = re.fullmatch(r"(?P<base>[a-z0-9_]+?)(?:wo(?P<k>\d+))?", name)
  base = m["base"] if m else name
  if base in _RESERVED and base not in BASES:
    raise ConfigError(f"dataset '{base}' is not yet available; available: "
                      f"{', '.join(BASES.names())} (each also as <name>wo<k>)")
  if not m or base not in BASES:
    raise ConfigError(f"unknown dataset '{name}'; available: {', '.join(BASES.names())} "
                      f"(each also as <name>wo<k>, k a class index)")
  k = None if m["k"] is None else int(m["k"])
  n_cls = BASES.get(base).num_classes
  if k is not None and not 0 <= k < n_cls:
    raise ConfigError(f"held-out class {k} out of range for '{base}'; valid: 0..{n_cls - 1}")
  return base, k


def load(name: str, data_dir: str | None = None) -> Dataset:
  base, k = parse_name(name)
  (train_x, train_y), (test_x, test_y), class_names = BASES.get(base).read(data_dir)
  n_cls = len(class_names)
  if k is None:
    return Dataset(name, base, None, Split(train_x, train_y), Split(test_x, test_y), None,
                   n_cls, tuple(class_names))
  keep_tr, keep_te = train_y != k, test_y != k
  shift = lambda y: (y - (y > k)).astype(np.int32)
  ood = Split(np.concatenate([train_x[~keep_tr], test_x[~keep_te]]),
              np.concatenate([train_y[~keep_tr], test_y[~keep_te]]).astype(np.int32))
  return Dataset(name, base, k,
                 Split(train_x[keep_tr], shift(train_y[keep_tr])),
                 Split(test_x[keep_te], shift(test_y[keep_te])),
                 ood, n_cls - 1, tuple(c for i, c in enumerate(class_names) if i != k))


def _read_tfds(builder, split: str) -> tuple[np.ndarray, np.ndarray]:
  source = builder.as_data_source(split=split)
  records = source.__getitems__(list(range(len(source))))
  order = np.argsort([r.get("index", i) for i, r in enumerate(records)], kind="stable")
  x = np.stack([records[i]["image"] for i in order]).astype(np.uint8)
  y = np.asarray([records[i]["label"] for i in order], np.int32)
  return x, y


@BASES.register("digits")
class DigitsSource(Source):
  """The embedded default: prepared from scikit-learn on first use (offline, seconds)."""
  num_classes = 10

  def read(self, data_dir: str | None):
    import tensorflow_datasets as tfds
    from ncg_jax.data.digits import Digits
    builder = Digits(data_dir=data_dir, file_format="array_record")
    if not builder.is_prepared():
      print(f"preparing TFDS dataset 'digits' in {builder.data_dir} ...", flush=True)
      tfds.disable_progress_bar()
      builder.download_and_prepare()
    names = builder.info.features["label"].names
    return _read_tfds(builder, "train"), _read_tfds(builder, "test"), names
