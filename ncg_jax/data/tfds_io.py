"""Reading prepared TFDS datasets with `tfds.data_source` (array_record; no TensorFlow).

Preparing a TFDS dataset (download, decode, write array_record) needs TensorFlow; reading it
does not. When a dataset is missing, or prepared in a format without random access, the
error names the one command that prepares it.
"""
import numpy as np

from ncg_jax.registry import ConfigError

PREPARE = "pip install '.[tf]' && python -m ncg_jax.data.prepare {name}{data_dir}"
CHUNK = 4096


class NotPrepared(ConfigError):
  """A TFDS dataset is not prepared (as array_record) in the data directory."""


def prepare_command(name: str, data_dir: str | None) -> str:
  return PREPARE.format(name=name, data_dir=f" --data_dir={data_dir}" if data_dir else "")


def builder(tfds_name: str, data_dir: str | None):
  import tensorflow_datasets as tfds
  return tfds.builder(tfds_name, data_dir=data_dir, file_format="array_record")


def label_names(tfds_name: str, data_dir: str | None, key: str = "label") -> list[str]:
  """The class names of a TFDS dataset's ClassLabel feature `key` (from its metadata)."""
  return builder(tfds_name, data_dir).info.features[key].names


def open_split(tfds_name: str, split: str, data_dir: str | None, prepare_as: str, decoders=None):
  """`tfds.data_source` of one split, or `NotPrepared` naming the command to run."""
  b = builder(tfds_name, data_dir)
  try:
    return b.as_data_source(split=split, decoders=decoders)
  except (KeyError, ValueError, NotImplementedError, FileNotFoundError) as e:
    said = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    raise NotPrepared(
        f"TFDS dataset '{tfds_name}' (split '{split}') is not prepared as array_record in "
        f"{b.data_dir}; prepare it once with: {prepare_command(prepare_as, data_dir)} "
        f"(needs TensorFlow, and network or the manual download TFDS names; TFDS said: {said})"
    ) from None


def read(source, image_key: str = "image", label_key: str = "label", keep=None,
         transform=None, indices=None, log=None) -> tuple[np.ndarray, np.ndarray]:
  """All records of a data source as (uint8 images [N,H,W,C], int32 labels [N]), read in
  chunks (in the order of an `index` feature where the records have one). `keep(labels) -> bool mask` filters records, `transform(image) -> image` maps the
  kept images (both optional); `indices` reads only those records."""
  indices = np.arange(len(source)) if indices is None else np.asarray(indices)
  n = len(indices)
  xs, ys, order = [], [], []
  for start in range(0, n, CHUNK):
    records = source.__getitems__([int(i) for i in indices[start:start + CHUNK]])
    labels = np.asarray([r[label_key] for r in records], np.int64)
    mask = np.ones(len(records), bool) if keep is None else keep(labels)
    order.extend(r["index"] for r, m in zip(records, mask) if m and "index" in r)
    images = [records[i][image_key] for i in np.flatnonzero(mask)]
    if transform is not None:
      images = [transform(im) for im in images]
    if images:
      xs.append(np.stack(images).astype(np.uint8))
    ys.append(labels[mask])
    if log is not None and n > 4 * CHUNK:
      log(f"  read {min(n, start + CHUNK)}/{n}")
  if not xs:
    raise ConfigError("no records left after filtering")
  x, y = np.concatenate(xs), np.concatenate(ys).astype(np.int32)
  if len(order) == len(y):  # records that carry their original index come back in that order
    perm = np.argsort(order, kind="stable")
    x, y = x[perm], y[perm]
  return x, y
